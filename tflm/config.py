"""Experiment configs: dataclasses, YAML files and `--params_override`.

An experiment is four sections, as in TF Model Garden::

    model:   the architecture and task
    data:    where text comes from and how it becomes batches
    trainer: steps, learning rate, logging
    runtime: precision, seed

`load_experiment("configs/tiny_gpt.yaml", "trainer.train_steps=20")` reads a
YAML file over the defaults, applies overrides, and validates: an unknown key
or a value of the wrong type is an error naming the key and suggesting the
closest valid one.
"""

import dataclasses
import difflib
import functools
import math
import re
import typing

import yaml

from tflm.errors import TflmError


# The allowed values of the keys that choose a layer, a model part or a schedule, defined once:
# the layers and models import them from here, and `validate` checks against them.
POSITION_ENCODINGS = ("learned", "sinusoidal", "rotary", "relative")
# Which channels the rotary embedding pairs: i with i + d/2 (Hugging Face Llama), 2i with 2i + 1.
ROTARY_LAYOUTS = ("half", "interleaved")
ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "swiglu", "geglu")
NORMALIZATIONS = ("layer_norm", "rms_norm")
FINETUNE_MODES = ("full", "feature_extraction", "adapters", "lora")
# The projections of a block that `model.finetune=lora` can adapt (`model.lora_targets`).
LORA_TARGETS = ("query", "key", "value", "attention_output", "feed_forward_in",
                "feed_forward_out")
POOLINGS = ("pooled", "first", "last", "mean")
DECAYS = ("cosine", "linear", "polynomial", "constant")
DOCUMENT_SPLITS = ("file", "line", "blank_line", "delimiter")
# How workers split the input: `files` (each reads its share of the files or documents) or
# `global_batch` (each reads the whole stream of global batches and keeps its rows, so a run
# can resume on another number of workers with the same batches).
DATA_SHARDINGS = ("files", "global_batch")
# A resumed run whose input position cannot be restored (another number of workers with
# data.sharding=files): stop with an error, or start the input again from its beginning.
INPUT_POSITION_MISMATCH = ("error", "restart")


class ConfigError(TflmError, ValueError):
    """A config key or value is invalid; the message names it."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, also reading `1e-3` as a float (YAML 1.2), not a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _load_yaml(text_or_stream):
    return yaml.load(text_or_stream, Loader=_Loader)


@dataclasses.dataclass(frozen=True)
class Range:
    """The allowed values of a numeric key: an interval (either end closed, open or absent),
    plus the values of `also` (e.g. 0 for "off"). A float must also be finite."""

    at_least: typing.Optional[float] = None
    above: typing.Optional[float] = None
    at_most: typing.Optional[float] = None
    below: typing.Optional[float] = None
    also: tuple = ()

    def __contains__(self, value):
        if value in self.also:
            return True
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return ((self.at_least is None or value >= self.at_least)
                and (self.above is None or value > self.above)
                and (self.at_most is None or value <= self.at_most)
                and (self.below is None or value < self.below))

    def __str__(self):
        bounds = [(op, v) for op, v in ((">=", self.at_least), (">", self.above),
                                        ("<=", self.at_most), ("<", self.below)) if v is not None]
        if len(bounds) == 2:
            (low_op, low), (high_op, high) = bounds
            opening = "(" if low_op == ">" else "["
            closing = ")" if high_op == "<" else "]"
            text = f"in {opening}{low}, {high}{closing}"
        elif bounds:
            text = " ".join(map(str, bounds[0]))
        else:
            text = "finite"
        return " or ".join([str(v) for v in self.also] + [text])


def ranged(default, **bounds):
    """A numeric config field with its `Range`, which `validate` checks (None passes)."""
    return dataclasses.field(default=default, metadata={"range": Range(**bounds)})


# split_long_document looks back up to max_document_bytes // 2 bytes for a place to cut:
# that window must hold a whole UTF-8 character (4 bytes) or more, and pieces shorter
# than a line of text would cut nearly every sentence.
MIN_DOCUMENT_BYTES = 64


@dataclasses.dataclass
class ModelConfig:
    """Architecture (see `TransformerBackbone`) and task."""

    task: str = "causal_lm"  # a registered task: tflm.tasks.task_names()
    vocabulary_size: int = ranged(262, at_least=1)
    num_layers: int = ranged(2, at_least=1)
    num_heads: int = ranged(4, at_least=1)
    hidden_dim: int = ranged(128, at_least=1)
    intermediate_dim: int = ranged(512, at_least=1)
    max_sequence_length: int = ranged(128, at_least=1)
    position_encoding: str = "learned"  # learned | sinusoidal | rotary | relative (T5)
    # relative: the distance buckets, and the distance from which they share the last
    relative_num_buckets: int = ranged(32, at_least=4)
    relative_max_distance: int = ranged(128, at_least=1)
    head_dim: int = ranged(0, at_least=0)  # 0: hidden_dim // num_heads (T5's d_kv may differ)
    # Grouped-query attention: key/value heads, a divisor of num_heads (1: multi-query);
    # 0: num_heads (multi-head). The decoding cache holds only these.
    num_key_value_heads: int = ranged(0, at_least=0)
    # rotary: the frequencies' base, and the channel pairs: half (i, i + d/2: Hugging Face
    # Llama's rotate_half) | interleaved (2i, 2i + 1)
    rope_theta: float = ranged(10000.0, above=0)
    rotary_layout: str = "half"
    # Causal models: a query sees at most the last sliding_window keys (Mistral); 0: all.
    sliding_window: int = ranged(0, at_least=0)
    num_segments: int = ranged(0, at_least=0)
    activation: str = "gelu_tanh"  # relu | gelu | gelu_tanh | swiglu | geglu
    normalization: str = "layer_norm"  # layer_norm | rms_norm
    norm_first: bool = True
    norm_epsilon: float = ranged(1e-5, above=0)
    embedding_norm: bool = False
    final_norm: typing.Optional[bool] = None  # None: same as norm_first
    pooler: bool = False
    dropout: float = ranged(0.0, at_least=0, below=1)
    attention_dropout: float = ranged(0.0, at_least=0, below=1)
    use_bias: bool = True  # every projection's bias; Llama, Mistral: false
    qkv_bias: typing.Optional[bool] = None  # query/key/value biases; None: use_bias (Qwen2: true)
    tie_embeddings: bool = True  # false: an output projection of its own (Llama)
    # causal_lm, masked_lm: training computes the vocabulary projection and its loss this
    # many positions at a time, never the whole float32 logits (memory, speed at large
    # vocabularies); 0: the whole logits at once.
    loss_chunk_size: int = ranged(0, at_least=0)
    initializer_range: float = ranged(0.02, above=0)
    # None: causal for causal_lm, bidirectional otherwise (a classifier on GPT-2: true).
    causal: typing.Optional[bool] = None
    # Fine-tuning: start from a tflm model_dir (a tflm-train run, or a Hugging Face
    # checkpoint converted by tools/convert_checkpoint.py). Architecture keys this config
    # does not set are taken from it; keys it sets must agree with it.
    init_checkpoint: str = ""
    finetune: str = "full"  # full | feature_extraction (frozen backbone) | adapters | lora
    # full: also freeze the embeddings and the lowest N blocks
    freeze_bottom_layers: int = ranged(0, at_least=0)
    adapter_dim: int = ranged(64, at_least=1)  # adapters: bottleneck width
    # lora: trainable low-rank factors A B * lora_alpha / lora_rank added to the frozen
    # kernels of lora_targets (any of LORA_TARGETS; cross-attention's count as the same)
    lora_rank: int = ranged(8, at_least=1)
    lora_alpha: float = ranged(16.0, above=0)
    lora_dropout: float = ranged(0.0, at_least=0, below=1)
    lora_targets: typing.List[str] = dataclasses.field(
        default_factory=lambda: ["query", "value"])
    # classification only:
    # 0: one per label name (data.label_names or the training labels)
    num_classes: int = ranged(0, at_least=0)
    pooling: str = ""  # pooled | first | last | mean; "": pooled with a pooler, else first/last
    classifier_dropout: float = ranged(0.1, at_least=0, below=1)


@dataclasses.dataclass
class DataConfig:
    """Input text and batching (see `tflm.tasks.make_dataset`)."""

    # Where text comes from: a glob (comma-separated globs allowed) of text or
    # JSONL files, or a folder written by tflm-prepare; empty: the embedded corpus.
    input_path: str = ""
    input_format: str = "text"  # text | jsonl | csv (labelled) | tfrecord (from tflm-prepare)
    document_split: str = "file"  # text: file | line | blank_line | delimiter
    document_delimiter: str = ""  # a line holding only this separates documents
    text_field: str = "text"  # jsonl, csv (a column of the header row)
    # auto: count for language-model text, error for labelled data |
    # count (skip and count) | error (stop, naming file:line)
    on_bad_record: str = "auto"
    # Longer documents are cut (at whitespace) into pieces of about this many bytes.
    max_document_bytes: int = ranged(65536, at_least=MIN_DOCUMENT_BYTES)
    tokenizer: str = "byte"  # byte | wordpiece | sentencepiece | byte_bpe
    vocab_path: str = ""  # folder written by tflm-vocab (not needed for byte)
    sequence_length: int = ranged(128, at_least=1)
    global_batch_size: int = ranged(16, at_least=1)
    shuffle_buffer_size: int = ranged(1000, at_least=0)
    max_predictions_per_seq: int = ranged(20, at_least=1)  # masked_lm only
    mask_rate: float = ranged(0.15, above=0, at_most=1)  # masked_lm only
    whole_word_masking: bool = False  # masked_lm only
    sentence_pairs: bool = False  # masked_lm only: [CLS] A [SEP] B [SEP] + next_sentence_labels
    # Labelled data (classification): the label, an optional second text (pairs) and the
    # label names in id order (empty: the sorted labels of the training data).
    label_field: str = "label"
    text_pair_field: str = ""
    label_names: typing.List[str] = dataclasses.field(default_factory=list)
    csv_delimiter: str = ","
    # Held-out text for evaluation: its own path, or every n-th document of the input.
    eval_input_path: str = ""
    # Held out for evaluation: about 1 document in n of the language models, chosen by a hash
    # of the document (the same in every epoch); every n-th record of labelled data. 0: none.
    eval_every_nth_document: int = ranged(0, at_least=2, also=(0,))
    # Multi-worker input: files (each worker its share of the files or documents) |
    # global_batch (each reads every global batch and keeps its rows: elastic resume)
    sharding: str = "files"


@dataclasses.dataclass
class TrainerConfig:
    """Optimization, checkpoints, evaluation and logging."""

    train_steps: int = ranged(100, at_least=1)
    steps_per_loop: int = ranged(10, at_least=1)  # steps per compiled call (fewer host round trips)
    learning_rate: float = ranged(1e-3, above=0)  # peak, reached at the end of warmup
    warmup_steps: int = ranged(0, at_least=0)  # linear warmup from 0
    decay: str = "cosine"  # cosine | linear | polynomial | constant, after warmup
    # The final learning rate / the peak.
    end_learning_rate_ratio: float = ranged(0.1, at_least=0, at_most=1)
    decay_power: float = ranged(2.0, above=0)  # polynomial decay only
    weight_decay: float = ranged(0.01, at_least=0)  # AdamW; never on biases and norm parameters
    beta_1: float = ranged(0.9, at_least=0, below=1)
    beta_2: float = ranged(0.999, at_least=0, below=1)
    epsilon: float = ranged(1e-6, above=0)
    # Global-norm clipping of the whole gradient; null: none.
    clipnorm: typing.Optional[float] = ranged(1.0, above=0)
    gradient_accumulation_steps: int = ranged(1, at_least=1)  # micro-batches per update
    # Recompute each transformer block in the backward pass: activation memory of one block,
    # not all of them, for about one more forward pass of time; the same gradients.
    gradient_checkpointing: bool = False
    label_smoothing: float = ranged(0.0, at_least=0, below=1)
    # Discriminative learning rates: block i of L gets decay^(L - i), the embeddings
    # decay^(L + 1), the head 1 (layer-wise decay as in ELECTRA); 1.0: off.
    layer_decay: float = ranged(1.0, above=0, at_most=1)
    # XLA for the training step; None: on, except mixed_bfloat16 on CPUs (faster without)
    jit_compile: typing.Optional[bool] = None
    log_every: int = ranged(10, at_least=1)
    checkpoint_every: int = ranged(100, at_least=1)
    keep_checkpoints: int = ranged(3, at_least=1)
    # train_and_eval: steps between evaluations (0: at the end only)
    eval_every: int = ranged(0, at_least=0)
    eval_steps: int = ranged(0, at_least=0)  # batches per evaluation (0: the whole held-out split)
    # After the final evaluation (train_and_eval, eval), a task that generates text prints
    # the model's greedy continuation of this prompt: at most sample_tokens new tokens (fewer
    # where the model's positions end); "": none. Other tasks ignore it.
    sample_prompt: str = ""
    sample_tokens: int = ranged(32, at_least=1)
    recover_on_nan: bool = False  # restore the last checkpoint and skip the bad batch
    max_nan_recoveries: int = ranged(3, at_least=0)
    # A model_dir whose checkpoints are all unreadable stops with an error naming them;
    # true starts training over from step 0 instead (the old files are moved aside).
    start_over_if_unrestorable: bool = False
    # Resuming on another number of workers with data.sharding=files: error | restart
    # (the input starts again from its beginning; the model state is kept).
    on_input_position_mismatch: str = "error"
    # Knowledge distillation: a teacher model_dir (same tokenizer, same task) whose outputs,
    # softened by the temperature, the model also learns; "" off. The loss is
    # (1 - distill_weight) * the task's loss + distill_weight * T^2 * KL(teacher || model).
    distill_from: str = ""
    distill_temperature: float = ranged(2.0, above=0)
    distill_weight: float = ranged(0.5, at_least=0, at_most=1)


@dataclasses.dataclass
class RuntimeConfig:
    """Devices, precision and reproducibility."""

    # one_device | mirrored | multi_worker | parameter_server | tpu
    distribution_strategy: str = "one_device"
    mixed_precision: str = "float32"  # float32 | mixed_bfloat16 | mixed_float16 (bfloat16, float16)
    seed: int = ranged(0, at_least=0, at_most=2**32 - 1)  # NumPy takes 32-bit seeds
    tpu: str = ""  # TPU name or address for distribution_strategy=tpu ("" = local)
    # Per device, for MFU; 0: known accelerators, else no MFU.
    peak_tflops: float = ranged(0.0, at_least=0)
    # mixed_float16: dynamic loss scaling starts here
    initial_loss_scale: float = ranged(32768.0, above=0)
    # Finite steps before the loss scale doubles.
    loss_scale_growth_interval: int = ranged(2000, at_least=1)


@dataclasses.dataclass
class ExperimentConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)


def _suggest(key, valid):
    close = difflib.get_close_matches(key, valid, n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"


def _check_type(value, annotation, key):
    """Returns `value` as the annotated type, or raises `ConfigError` naming `key`."""
    if typing.get_origin(annotation) is list:
        if isinstance(value, list) and all(
                isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
            return [str(v) for v in value]
        raise ConfigError(f"{key}: expected a list of names, got {value!r}.")
    if typing.get_origin(annotation) is typing.Union:
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        return _check_type(value, options[0], key)
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ConfigError(
        f"{key}: expected {annotation.__name__}, got {value!r} ({type(value).__name__})."
    )


def update_dataclass(instance, values, prefix=""):
    """Sets `values` (a nested dict) on a config dataclass, validating each key."""
    if not isinstance(values, dict):
        where = prefix.rstrip(".") or "config"
        raise ConfigError(f"{where}: expected a mapping, got {values!r}.")
    hints = typing.get_type_hints(type(instance))
    valid = [f.name for f in dataclasses.fields(instance)]
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in valid:
            raise ConfigError(f"Unknown config key {path!r}{_suggest(key, valid)}")
        current = getattr(instance, key)
        if dataclasses.is_dataclass(current):
            update_dataclass(current, value, prefix=f"{path}.")
        else:
            setattr(instance, key, _check_type(value, hints[key], path))
    return instance


_OVERRIDE_SEPARATOR = re.compile(r",(?=\s*[A-Za-z_][\w.]*\s*=)")


def parse_overrides(text):
    """`"a.b=1,c.d=x"` (values as YAML scalars) or a YAML mapping → nested dict."""
    text = (text or "").strip()
    if not text:
        return {}
    if "=" not in text:
        try:
            parsed = _load_yaml(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"--params_override: invalid YAML: {e}") from None
        if not isinstance(parsed, dict):
            raise ConfigError(f"--params_override: expected key=value pairs or YAML, got {text!r}.")
        return parsed
    nested = {}
    # Split only at commas that start a new `key=`, so that a value may hold commas
    # (`data.input_path=a.txt,b.txt`: comma-separated globs).
    for item in _OVERRIDE_SEPARATOR.split(text):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise ConfigError(f"--params_override: {item!r} is not of the form key=value.")
        key, value = item.split("=", 1)
        key = key.strip()
        node = nested
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(
                    f"--params_override: {key!r} conflicts with "
                    f"{'.'.join(parts[: i + 1])!r} set to a value."
                )
        try:
            node[parts[-1]] = _load_yaml(value) if value.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"--params_override: {key}: invalid value {value!r}: {e}") from None
    return nested


# tflm-vocab's training kinds name the SentencePiece algorithm; the tokenizer is the same.
TOKENIZER_ALIASES = {"sentencepiece_unigram": "sentencepiece",
                     "sentencepiece_bpe": "sentencepiece"}

# Model Garden spells precisions by their compute dtype.
PRECISION_ALIASES = {"bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def _dotted_keys(values, prefix=""):
    """The leaf keys of a nested mapping, dotted: {"model": {"num_layers": 2}} -> model.num_layers."""
    keys = set()
    for key, value in (values or {}).items():
        if isinstance(value, dict):
            keys |= _dotted_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def _read_yaml_file(path):
    try:
        with open(path) as f:
            values = _load_yaml(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"Config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {values!r}.")
    return values


def experiment_config_class(extensions=None):
    """`ExperimentConfig`, with each section extended by the keys of `extensions`.

    `extensions` maps a section name ("model", "data", "trainer", "runtime") to a
    dataclass whose fields (all with defaults) are added to that section: a task's own
    keys (`tflm.tasks.Task.config_keys`). The same extensions give the same class, so
    configs of one task compare equal.
    """
    if not extensions:
        return ExperimentConfig
    return _extended_class(tuple(sorted(extensions.items())))


@functools.lru_cache(maxsize=None)
def _extended_class(extensions):
    extensions = dict(extensions)
    sections = []
    for field in dataclasses.fields(ExperimentConfig):
        base = field.default_factory
        extra = extensions.get(field.name)
        if extra is not None:
            base = dataclasses.make_dataclass(base.__name__, [], bases=(base, extra))
        sections.append((field.name, base, dataclasses.field(default_factory=base)))
    unknown = set(extensions) - {name for name, _, _ in sections}
    if unknown:
        raise ValueError(f"No config section {sorted(unknown)}.")
    return dataclasses.make_dataclass("ExperimentConfig", sections, bases=(ExperimentConfig,))


def read_experiment(config_file=None, params_override=None, extensions_of=None):
    """Defaults, then the YAML file(s) in order, then the overrides; not yet validated.

    `extensions_of(task_name)`: the config keys of the task that `model.task` names
    (see `experiment_config_class`), so that a task's own keys are known keys.

    Returns `(config, explicit)`: `explicit` holds the dotted keys that a file or an
    override set (`model.num_layers`, ...), which fine-tuning from `model.init_checkpoint`
    needs (see `tflm.experiment.load_experiment`).
    """
    files = [config_file] if isinstance(config_file, str) else list(config_file or [])
    layers = [(path, _read_yaml_file(path)) for path in files]
    layers.append((None, parse_overrides(params_override)))
    task = ModelConfig.task
    for _, values in layers:
        model = values.get("model")
        if isinstance(model, dict) and isinstance(model.get("task"), str):
            task = model["task"]
    config = experiment_config_class(extensions_of(task) if extensions_of else None)()
    explicit = set()
    for path, values in layers:
        try:
            update_dataclass(config, values)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}" if path else str(e)) from None
        explicit |= _dotted_keys(values)
    config.runtime.mixed_precision = PRECISION_ALIASES.get(
        config.runtime.mixed_precision, config.runtime.mixed_precision
    )
    return config, explicit


def load_experiment(config_file=None, params_override=None, extensions_of=None):
    """Defaults, then the YAML file(s) in order, then the overrides; validated.

    `config_file` is one path or a list of paths; later files override earlier ones.
    This checks what every experiment shares; `tflm.experiment.load_experiment` also
    checks the task's own keys and fills the architecture from `model.init_checkpoint`.
    """
    config, _ = read_experiment(config_file, params_override, extensions_of)
    validate(config)
    return config


# ModelConfig keys that fix the weights' shapes or the function they compute; a
# checkpoint and the model it initializes must agree on all of them.
ARCHITECTURE_KEYS = (
    "vocabulary_size", "num_layers", "num_heads", "hidden_dim", "intermediate_dim",
    "max_sequence_length", "position_encoding", "num_segments", "activation", "normalization",
    "norm_first", "norm_epsilon", "embedding_norm", "final_norm", "pooler", "use_bias",
    "tie_embeddings", "causal", "head_dim", "relative_num_buckets", "relative_max_distance",
    "num_key_value_heads", "rope_theta", "rotary_layout", "sliding_window", "qkv_bias",
)
# The same for the encoder-decoder tasks' own `model` keys (only their configs have them).
ENCODER_DECODER_KEYS = ("num_decoder_layers", "shared_embeddings")


def architecture_keys(*configs):
    """`ARCHITECTURE_KEYS`, and the `ENCODER_DECODER_KEYS` that all of `configs` (model
    configs, or backbones' `get_config()` dicts) have."""
    def has(config, key):
        return key in config if isinstance(config, dict) else hasattr(config, key)

    return ARCHITECTURE_KEYS + tuple(key for key in ENCODER_DECODER_KEYS
                                     if all(has(c, key) for c in configs))


def validate(config):
    """Checks values that the types alone do not: each numeric key's range first, then
    the choices and the keys that must agree with each other."""
    _check_ranges(config)
    choices = {
        "model.position_encoding": (config.model.position_encoding, POSITION_ENCODINGS),
        "model.activation": (config.model.activation, ACTIVATIONS),
        "model.normalization": (config.model.normalization, NORMALIZATIONS),
        "model.rotary_layout": (config.model.rotary_layout, ROTARY_LAYOUTS),
        "data.tokenizer": (config.data.tokenizer, ("byte", "wordpiece", "sentencepiece", "byte_bpe")),
        "data.input_format": (config.data.input_format, ("text", "jsonl", "csv", "tfrecord")),
        "data.document_split": (config.data.document_split, DOCUMENT_SPLITS),
        "data.on_bad_record": (config.data.on_bad_record, ("auto", "count", "error")),
        "model.finetune": (config.model.finetune, FINETUNE_MODES),
        "model.pooling": (config.model.pooling, ("",) + POOLINGS),
        "trainer.decay": (config.trainer.decay, DECAYS),
        "data.sharding": (config.data.sharding, DATA_SHARDINGS),
        "trainer.on_input_position_mismatch": (config.trainer.on_input_position_mismatch,
                                               INPUT_POSITION_MISMATCH),
        "runtime.distribution_strategy": (
            config.runtime.distribution_strategy,
            ("one_device", "mirrored", "multi_worker", "parameter_server", "tpu"),
        ),
        "runtime.mixed_precision": (
            config.runtime.mixed_precision,
            ("float32", "mixed_bfloat16", "mixed_float16"),
        ),
    }
    for key, (value, options) in choices.items():
        if value not in options:
            close = difflib.get_close_matches(str(value), options, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{key}: {value!r} is not one of {options}{hint}")
    model = config.model
    if model.hidden_dim % model.num_heads:
        raise ConfigError(
            f"model.hidden_dim={model.hidden_dim} is not divisible by "
            f"model.num_heads={model.num_heads}."
        )
    if model.num_key_value_heads and model.num_heads % model.num_key_value_heads:
        raise ConfigError(
            f"model.num_key_value_heads={model.num_key_value_heads} must divide "
            f"model.num_heads={model.num_heads} (each key/value head serves a group of query "
            "heads); 0: as many as model.num_heads.")
    if model.position_encoding == "rotary" and (model.hidden_dim // model.num_heads) % 2:
        raise ConfigError(
            f"model.position_encoding='rotary' rotates pairs of dimensions: the head size "
            f"model.hidden_dim / model.num_heads = {model.hidden_dim // model.num_heads} must "
            "be even.")
    if config.data.sequence_length > model.max_sequence_length:
        raise ConfigError(
            f"data.sequence_length={config.data.sequence_length} exceeds "
            f"model.max_sequence_length={model.max_sequence_length}."
        )
    _validate_finetuning(config)
    if (config.runtime.distribution_strategy == "parameter_server"
            and config.data.sharding == "global_batch"):
        raise ConfigError(
            "data.sharding=global_batch needs workers that step together "
            "(runtime.distribution_strategy=multi_worker); parameter-server workers each "
            "train whole global batches of their own share of the input (data.sharding=files).")
    if config.data.document_split == "delimiter" and not config.data.document_delimiter:
        raise ConfigError('data.document_split="delimiter" needs data.document_delimiter.')
    if config.data.tokenizer != "byte" and not config.data.vocab_path:
        raise ConfigError(
            f"data.tokenizer={config.data.tokenizer!r} needs data.vocab_path (a folder written "
            "by tflm-vocab)."
        )
    if config.data.input_format == "tfrecord" and not config.data.input_path:
        raise ConfigError('data.input_format="tfrecord" needs data.input_path (a tflm-prepare folder).')


def _check_ranges(config):
    """Each numeric key of every section (a task's own keys too) within the `Range` its field
    declares (see `ranged`); a float key without one must still be finite."""
    for section in dataclasses.fields(config):
        values = getattr(config, section.name)
        for field in dataclasses.fields(values):
            value = getattr(values, field.name)
            allowed = field.metadata.get("range")
            if allowed is None and isinstance(value, float):
                allowed = Range()
            if allowed is None or value is None or value in allowed:
                continue
            expected = str(allowed)
            if isinstance(value, float) and not math.isfinite(value) and expected != "finite":
                expected = f"finite and {expected}"
            raise ConfigError(f"{section.name}.{field.name}: {value!r}; must be {expected}")


def _validate_finetuning(config):
    model = config.model
    if model.freeze_bottom_layers > model.num_layers:
        raise ConfigError(f"model.freeze_bottom_layers={model.freeze_bottom_layers} must be in "
                          f"[0, model.num_layers={model.num_layers}].")
    if model.freeze_bottom_layers and model.finetune != "full":
        raise ConfigError(f"model.freeze_bottom_layers is for model.finetune='full'; "
                          f"{model.finetune!r} already chooses what trains.")
    if model.finetune == "lora":
        unknown = [t for t in model.lora_targets if t not in LORA_TARGETS]
        if unknown or not model.lora_targets:
            raise ConfigError(f"model.lora_targets={model.lora_targets!r}: expected a non-empty "
                              f"list of {LORA_TARGETS}" + (f"; unknown {unknown!r}" if unknown
                                                          else "") + ".")
        if len(set(model.lora_targets)) != len(model.lora_targets):
            raise ConfigError(f"model.lora_targets={model.lora_targets!r} names a target twice.")


def labelled_on_bad_record(data):
    """`data.on_bad_record` for labelled data: "auto" is an error naming file:line."""
    return "error" if data.on_bad_record == "auto" else data.on_bad_record


def text_on_bad_record(data):
    """`data.on_bad_record` for language-model text: "auto" skips and counts."""
    return "count" if data.on_bad_record == "auto" else data.on_bad_record


def to_dict(config):
    return dataclasses.asdict(config)


def save_experiment(config, path):
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(config), f, sort_keys=False)
