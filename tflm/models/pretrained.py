"""Pretrained models as tflm model_dirs: converting Hugging Face checkpoints, loading, and
initializing a new model (a classifier, say) from one.

A model_dir, as `tflm-train` leaves it and `convert_checkpoint` writes it::

    params.yaml      the experiment: model architecture and task, tokenizer
    tokenizer/       the tokenizer (`Tokenizer.save`), so the folder stands alone
    model.keras      the task model (a tflm-train run also has checkpoints/, preferred)
    conversion.json  (converted only) the source, the tensors left out, whether the head loaded

Example:
>>> convert_checkpoint("hf/bert-base-uncased", "runs/bert")   # or tools/convert_checkpoint.py
>>> model, tokenizer, config = load_pretrained("runs/bert")
>>> classifier = SequenceClassifier(build_backbone(config.model), num_classes=2)
>>> init_from_pretrained(classifier, "runs/bert")             # backbone weights copied
"""

import dataclasses
import json
import os
import shutil

from tflm.models.huggingface import CheckpointError

MODEL_FILE = "model.keras"
CONVERSION_FILE = "conversion.json"


def model_config_of(backbone, task):
    """The `ModelConfig` that rebuilds `backbone` for `task`."""
    from tflm.config import ModelConfig

    values = backbone.get_config()
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    config = ModelConfig(task=task, **{k: v for k, v in values.items()
                                       if k in fields and k not in ("task", "adapter_dim")})
    config.causal = backbone.causal
    return config


def _task_name(model):
    from tflm.models.causal_lm import CausalLM
    from tflm.models.masked_lm import MaskedLM

    if isinstance(model, CausalLM):
        return "causal_lm"
    if isinstance(model, MaskedLM):
        return "masked_lm"
    return "classification"


def save_pretrained(model, tokenizer, output_dir, extra=None):
    """Writes `model` (a tflm task) and `tokenizer` as a model_dir; returns its params.

    The folder is written under a temporary name and renamed when complete;
    an existing `output_dir` is never overwritten.
    """
    from tflm import config as config_lib

    if os.path.exists(output_dir) and os.listdir(output_dir):
        raise FileExistsError(f"{output_dir} exists and is not empty; pick a new folder.")
    partial = output_dir.rstrip("/") + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    try:
        experiment = config_lib.ExperimentConfig()
        experiment.model = model_config_of(model.backbone, _task_name(model))
        if experiment.model.task == "classification":
            experiment.model.num_classes = model.num_classes
            experiment.data.label_names = list(model.label_names or [])
        experiment.data.tokenizer = tokenizer.kind
        experiment.data.vocab_path = os.path.join(output_dir, config_lib.TOKENIZER_DIR)
        experiment.data.sequence_length = min(experiment.data.sequence_length,
                                              experiment.model.max_sequence_length)
        tokenizer.save(os.path.join(partial, config_lib.TOKENIZER_DIR))
        model.save(os.path.join(partial, MODEL_FILE))
        if extra is not None:
            with open(os.path.join(partial, CONVERSION_FILE), "w") as f:
                f.write(json.dumps(extra, indent=2) + "\n")
        config_lib.save_experiment(experiment, os.path.join(partial, config_lib.PARAMS_FILE))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if os.path.exists(output_dir):
        os.rmdir(output_dir)
    os.rename(partial, output_dir)
    return experiment


def convert_checkpoint(input_dir, output_dir, dtype=None, print_fn=print):
    """Converts a Hugging Face BERT or GPT-2 checkpoint folder into a tflm model_dir.

    Returns the `ImportedCheckpoint` (see `tflm.models.huggingface.load_huggingface`).
    """
    from tflm.models.huggingface import load_huggingface
    from tflm.version import __version__

    imported = load_huggingface(input_dir, dtype=dtype)
    extra = {"source": os.path.abspath(input_dir), "kind": imported.kind,
             "head_loaded": imported.head_loaded, "unused_tensors": imported.unused_tensors,
             "tflm_version": __version__}
    save_pretrained(imported.model, imported.tokenizer, output_dir, extra=extra)
    backbone = imported.model.backbone
    print_fn(f"convert_checkpoint: {input_dir} ({imported.kind}, {backbone.num_layers} layers, "
             f"width {backbone.hidden_dim}, {imported.model.count_params():,} parameters, "
             f"{imported.tokenizer.kind} vocabulary of {imported.tokenizer.vocabulary_size}) "
             f"-> {output_dir}")
    if not imported.head_loaded:
        print_fn("convert_checkpoint: the checkpoint has no masked-LM head; the MaskedLM head "
                 "is freshly initialized (fine for fine-tuning and `encode`, not `fill_mask`).")
    if imported.unused_tensors:
        shown = ", ".join(imported.unused_tensors[:5])
        more = len(imported.unused_tensors) - 5
        print_fn(f"convert_checkpoint: {len(imported.unused_tensors)} tensors are not part of "
                 f"the model and were left out: {shown}{f' and {more} more' if more > 0 else ''}")
    return imported


def load_model_dir(model_dir, dtype=None):
    """`(model, config)` of a tflm model_dir: the latest checkpoint, else model.keras."""
    import tensorflow as tf

    from tflm.config import load_model_dir_config
    from tflm.models.factory import build_task

    config = load_model_dir_config(model_dir)
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    saved = os.path.join(model_dir, MODEL_FILE)
    if latest is not None:
        model = build_task(config.model, dtype=dtype, label_names=config.data.label_names or None)
        try:
            tf.train.Checkpoint(model=model).restore(latest).expect_partial() \
                .assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            raise CheckpointError(f"{latest}: does not fit the model of {model_dir}/params.yaml: "
                                  f"{str(e).strip().splitlines()[0]}") from None
    elif tf.io.gfile.exists(saved):
        model = load_saved_model(saved)
    else:
        raise CheckpointError(f"{model_dir}: neither checkpoints/ nor {MODEL_FILE}.")
    return model, config


def load_saved_model(path):
    """`keras.saving.load_model` of a tflm task, quiet about a never-built optimizer (a
    converted checkpoint has no optimizer state, and Keras warns that it skips it)."""
    import warnings

    import keras

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        return keras.saving.load_model(path)


def load_tokenizer_of(model_dir, config):
    """The model_dir's own tokenizer/ folder, else the one its config names."""
    from tflm.config import TOKENIZER_DIR
    from tflm.data.tokenizers import load_tokenizer, make_tokenizer

    folder = os.path.join(model_dir, TOKENIZER_DIR)
    if os.path.isdir(folder):
        return load_tokenizer(folder)
    return make_tokenizer(config.data.tokenizer, config.data.vocab_path)


def _is_huggingface_folder(path):
    """A Hugging Face checkpoint folder (config.json), not a tflm model_dir (params.yaml)."""
    from tflm.config import PARAMS_FILE
    from tflm.models.huggingface import CONFIG_FILE

    if not os.path.isdir(path):
        raise FileNotFoundError(f"Pretrained model folder {path!r} does not exist.")
    return (not os.path.exists(os.path.join(path, PARAMS_FILE))
            and os.path.exists(os.path.join(path, CONFIG_FILE)))


def load_pretrained(path, dtype=None):
    """`(model, tokenizer, config)` from a tflm model_dir or a Hugging Face checkpoint folder."""
    from tflm import config as config_lib
    from tflm.models.huggingface import load_huggingface

    if _is_huggingface_folder(path):
        imported = load_huggingface(path, dtype=dtype)
        config = config_lib.ExperimentConfig()
        config.model = model_config_of(imported.model.backbone, _task_name(imported.model))
        config.data.tokenizer = imported.tokenizer.kind
        return imported.model, imported.tokenizer, config
    model, config = load_model_dir(path, dtype=dtype)
    return model, load_tokenizer_of(path, config), config


def load_pretrained_model(path):
    """The model alone of `load_pretrained` (no tokenizer is built)."""
    from tflm.models.huggingface import load_huggingface

    if _is_huggingface_folder(path):
        return load_huggingface(path).model
    return load_model_dir(path)[0]


def _relative(variable):
    """A backbone variable's path below the backbone (its own name differs per instance)."""
    return variable.path.split("/", 1)[1]


def architecture_differences(source, target):
    """`[(key, source value, target value)]` of the backbones' architecture keys."""
    from tflm.config import ARCHITECTURE_KEYS

    a, b = source.get_config(), target.get_config()
    a["causal"], b["causal"] = source.causal, target.causal
    return [(key, a[key], b[key]) for key in ARCHITECTURE_KEYS if a[key] != b[key]]


def copy_pretrained_weights(source, model, where="the checkpoint"):
    """Copies `source`'s backbone weights (and head, for the same task) into `model`.

    Returns the paths of `model`'s variables that were not copied (new:
    adapters, a classification head).

    Raises:
        CheckpointError: the architectures differ (naming the config key) or a
            tensor has no place in `model` (naming it).
    """
    differences = architecture_differences(source.backbone, model.backbone)
    if differences:
        key, theirs, mine = differences[0]
        raise CheckpointError(f"{where} has model.{key}={theirs!r}, the model to initialize "
                              f"{mine!r}: a checkpoint of another architecture.")
    targets = {_relative(v): v for v in model.backbone.weights}
    copied = set()
    for variable in source.backbone.weights:
        name = _relative(variable)
        target = targets.get(name)
        if target is None or tuple(target.shape) != tuple(variable.shape):
            raise CheckpointError(f"{where}: tensor {name!r} {tuple(variable.shape)} has no "
                                  "counterpart in the model to initialize.")
        target.assign(variable.value)
        copied.add(id(target))
    if type(source) is type(model):  # the same head: continue from it too
        heads = []
        for m in (source, model):
            in_backbone = {id(v) for v in m.backbone.weights}
            heads.append([v for v in m.weights if id(v) not in in_backbone])
        for variable, target in zip(*heads):
            if tuple(target.shape) != tuple(variable.shape):
                raise CheckpointError(f"{where}: head tensor {variable.path!r} "
                                      f"{tuple(variable.shape)} does not fit {target.path!r} "
                                      f"{tuple(target.shape)}.")
            target.assign(variable.value)
            copied.add(id(target))
    return [v.path for v in model.weights if id(v) not in copied]


def init_from_pretrained(model, path, print_fn=None, source=None):
    """Initializes `model` from the pretrained model at `path` (model_dir or Hugging Face
    folder); returns the paths of the variables left at their initial values.

    `source`: the model `load_pretrained_model(path)` returns, when already loaded (the
    trainer loads it outside its strategy's scope).
    """
    source = load_pretrained_model(path) if source is None else source
    fresh = copy_pretrained_weights(source, model, where=f"model.init_checkpoint={path!r}")
    if print_fn is not None:
        print_fn(f"tflm-train: initialized from {path}: {len(model.weights) - len(fresh)} "
                 f"tensors copied, {len(fresh)} new")
    return fresh
