import dataclasses
import pathlib
import re
import types
import typing

import pytest

from tflm import config as config_lib
from tflm.config import ConfigError, parse_overrides, save_experiment
from tflm.experiment import load_experiment
from tflm.tasks import build_task, config_keys_of, get_task, task_names
from tflm.training.strategy import WorkerInfo
from tflm.training.trainer import Trainer

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO_ROOT / "configs").glob("*.yaml"))
TINY_GPT = str(REPO_ROOT / "configs" / "tiny_gpt.yaml")


def test_there_are_configs():
    names = {p.name for p in CONFIGS}
    assert {"tiny_gpt.yaml", "tiny_bert.yaml", "bert_base.yaml", "gpt2_small.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads_and_validates(path):
    config = load_experiment(str(path))
    assert isinstance(config, config_lib.ExperimentConfig)
    assert config.model.task in task_names()
    assert config.data.sequence_length <= config.model.max_sequence_length
    assert config.model.hidden_dim % config.model.num_heads == 0
    config_lib.validate(config)


def test_config_values_come_from_the_file():
    gpt = load_experiment(TINY_GPT)
    assert (gpt.model.task, gpt.model.norm_first, gpt.trainer.learning_rate) == (
        "causal_lm", True, 2e-3)
    bert = load_experiment(str(REPO_ROOT / "configs" / "bert_base.yaml"))
    assert bert.model.norm_epsilon == 1e-12 and isinstance(bert.model.norm_epsilon, float)
    assert bert.model.vocabulary_size == 30522 and bert.runtime.mixed_precision == "mixed_bfloat16"
    assert bert.trainer.weight_decay == config_lib.TrainerConfig().weight_decay  # a default


# --params_override parsing


def test_parse_key_value_list_with_types():
    parsed = parse_overrides(
        "trainer.train_steps=20, trainer.learning_rate=0.5,model.norm_first=false,"
        "trainer.clipnorm=null,runtime.mixed_precision=mixed_bfloat16,data.input_path="
    )
    assert parsed == {
        "trainer": {"train_steps": 20, "learning_rate": 0.5, "clipnorm": None},
        "model": {"norm_first": False},
        "runtime": {"mixed_precision": "mixed_bfloat16"},
        "data": {"input_path": ""},
    }
    assert isinstance(parsed["trainer"]["train_steps"], int)


def test_parse_yaml_mapping():
    assert parse_overrides("{trainer: {train_steps: 3, clipnorm: ~}, model: {use_bias: true}}") == {
        "trainer": {"train_steps": 3, "clipnorm": None},
        "model": {"use_bias": True},
    }
    assert parse_overrides("trainer:\n  log_every: 2\n") == {"trainer": {"log_every": 2}}


@pytest.mark.parametrize("text", ["", None, "   "])
def test_parse_empty(text):
    assert parse_overrides(text) == {}


def test_parse_exponent_floats():
    # PyYAML alone reads "1e-3" as a string; learning rates are written that way.
    assert parse_overrides("trainer.learning_rate=1e-3") == {"trainer": {"learning_rate": 1e-3}}
    assert parse_overrides("{trainer: {learning_rate: 2E-4}}") == {"trainer": {"learning_rate": 2e-4}}
    config = load_experiment(TINY_GPT, "trainer.learning_rate=3e-4,model.norm_epsilon=1e-6")
    assert config.trainer.learning_rate == 3e-4 and config.model.norm_epsilon == 1e-6


def test_parse_value_with_commas():
    parsed = parse_overrides("data.input_path=a/*.txt,b/*.txt,trainer.train_steps=2")
    assert parsed == {"data": {"input_path": "a/*.txt,b/*.txt"}, "trainer": {"train_steps": 2}}


def test_parse_errors():
    with pytest.raises(ConfigError, match="'oops' is not of the form key=value"):
        parse_overrides("oops,trainer.train_steps=2")
    # A stray item after a value becomes part of that value, which then fails its type check.
    with pytest.raises(ConfigError, match=r"^trainer\.train_steps: expected int, got '2,oops'"):
        load_experiment(None, "trainer.train_steps=2,oops")
    with pytest.raises(ConfigError, match="invalid YAML"):
        parse_overrides("{trainer: [")
    with pytest.raises(ConfigError, match="expected key=value pairs or YAML"):
        parse_overrides("just_a_word")
    with pytest.raises(ConfigError, match="'model.x'"):
        parse_overrides("model=1,model.x=2")


def test_overrides_apply_over_file_and_defaults():
    config = load_experiment(
        TINY_GPT,
        "trainer.train_steps=7,trainer.learning_rate=0.25,model.norm_first=false,"
        "trainer.clipnorm=null,model.final_norm=true,data.sequence_length=64",
    )
    assert config.trainer.train_steps == 7
    assert config.trainer.learning_rate == 0.25
    assert config.model.norm_first is False
    assert config.trainer.clipnorm is None
    assert config.model.final_norm is True
    assert config.data.sequence_length == 64
    assert config.model.num_layers == 2  # from the file
    assert config.data.max_predictions_per_seq == 20  # a default
    as_yaml = load_experiment(TINY_GPT, "{trainer: {train_steps: 7, learning_rate: 0.25}}")
    assert as_yaml.trainer == dataclasses.replace(config.trainer, clipnorm=1.0)


def test_int_is_accepted_for_float():
    config = load_experiment(None, "trainer.learning_rate=1")
    assert config.trainer.learning_rate == 1.0 and isinstance(config.trainer.learning_rate, float)


# Errors name the key


def test_unknown_key_names_path_and_suggests():
    with pytest.raises(ConfigError) as info:
        load_experiment(TINY_GPT, "trainer.train_step=5")
    message = str(info.value)
    assert "trainer.train_step" in message
    assert "did you mean 'train_steps'" in message


def test_unknown_nested_key_and_section():
    with pytest.raises(ConfigError, match=r"'model\.num_layer'.*'num_layers'"):
        load_experiment(None, "model.num_layer=3")
    with pytest.raises(ConfigError, match=r"'trainr'.*'trainer'"):
        load_experiment(None, "trainr.train_steps=3")
    with pytest.raises(ConfigError, match=r"'zzz'.*valid keys: model, data, trainer, runtime"):
        load_experiment(None, "zzz=1")


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  hiden_dim: 64\n")
    with pytest.raises(ConfigError) as info:
        load_experiment(str(path))
    message = str(info.value)
    assert str(path) in message and "model.hiden_dim" in message and "'hidden_dim'" in message


@pytest.mark.parametrize(
    "override, key, expected",
    [
        ("trainer.train_steps=abc", "trainer.train_steps", "int"),
        ("trainer.train_steps=2.5", "trainer.train_steps", "int"),
        ("trainer.train_steps=true", "trainer.train_steps", "int"),
        ("trainer.train_steps=null", "trainer.train_steps", "int"),
        ("model.norm_first=1", "model.norm_first", "bool"),
        ("model.norm_first=abc", "model.norm_first", "bool"),
        ("trainer.learning_rate=fast", "trainer.learning_rate", "float"),
        ("trainer.learning_rate=false", "trainer.learning_rate", "float"),
        ("trainer.clipnorm=big", "trainer.clipnorm", "float"),
        ("model.activation=3", "model.activation", "str"),
        ("trainer.sample_prompt=1984", "trainer.sample_prompt", "str"),
        ("trainer.sample_tokens=many", "trainer.sample_tokens", "int"),
    ],
)
def test_wrong_type_names_key(override, key, expected):
    with pytest.raises(ConfigError) as info:
        load_experiment(TINY_GPT, override)
    message = str(info.value)
    assert message.startswith(key + ":"), message
    assert f"expected {expected}" in message


def test_section_given_a_scalar():
    with pytest.raises(ConfigError, match=r"^trainer: expected a mapping"):
        load_experiment(None, "trainer=5")


@pytest.mark.parametrize(
    "override, key, hint",
    [
        ("model.task=causal", "model.task", "causal_lm"),
        ("model.position_encoding=rope", "model.position_encoding", None),
        ("model.activation=gelu_tan", "model.activation", "gelu_tanh"),
        ("model.normalization=rmsnorm", "model.normalization", "rms_norm"),
        ("runtime.mixed_precision=mixed_bf16", "runtime.mixed_precision", "mixed_bfloat16"),
        ("data.tokenizer=wordpeice", "data.tokenizer", "wordpiece"),
    ],
)
def test_bad_enum_value_names_key(override, key, hint):
    with pytest.raises(ConfigError) as info:
        load_experiment(TINY_GPT, override)
    message = str(info.value)
    assert message.startswith(key + ":"), message
    assert "is not one of" in message
    if hint:
        assert f"did you mean {hint!r}" in message


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.num_heads=3", "model.hidden_dim"),
        ("data.sequence_length=256", "data.sequence_length"),
        ("trainer.train_steps=0", "trainer.train_steps"),
        ("data.global_batch_size=-1", "data.global_batch_size"),
        ("model.dropout=1.5", "model.dropout"),
        ("model.attention_dropout=-0.1", "model.attention_dropout"),
        ("data.mask_rate=0", "data.mask_rate"),
        ("data.max_predictions_per_seq=0", "data.max_predictions_per_seq"),
        ("trainer.log_every=0", "trainer.log_every"),
        ("model.task=masked_lm,data.sequence_length=2", "data.sequence_length"),
    ],
)
def test_value_checks_name_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_experiment(TINY_GPT, override)


# Values out of each numeric key's range, the task's own keys under their task.
OUT_OF_RANGE = {
    "model.vocabulary_size": ["0"], "model.num_layers": ["0"], "model.num_heads": ["-2"],
    "model.hidden_dim": ["0"], "model.intermediate_dim": ["0"],
    "model.max_sequence_length": ["0"], "model.num_segments": ["-1"],
    "model.head_dim": ["-1"], "model.relative_num_buckets": ["3"],
    "model.relative_max_distance": ["0"], "model.num_key_value_heads": ["-1"],
    "model.rope_theta": ["0", ".inf"], "model.sliding_window": ["-1"],
    "model.loss_chunk_size": ["-1"],
    "model.norm_epsilon": ["0", ".nan"], "model.dropout": ["1", "-0.1", ".nan"],
    "model.attention_dropout": ["1"], "model.initializer_range": ["0", ".inf"],
    "model.freeze_bottom_layers": ["-1"], "model.adapter_dim": ["0"],
    "model.lora_rank": ["0"], "model.lora_alpha": ["0"], "model.lora_dropout": ["1"],
    "model.num_classes": ["-1"], "model.classifier_dropout": ["1.5"],
    "data.max_document_bytes": ["1", "63"], "data.sequence_length": ["0"],
    "data.global_batch_size": ["0", "-1"], "data.shuffle_buffer_size": ["-1"],
    "data.max_predictions_per_seq": ["0"], "data.mask_rate": ["0", "1.5"],
    "data.eval_every_nth_document": ["1", "-1"],
    "trainer.train_steps": ["0"], "trainer.steps_per_loop": ["0"],
    "trainer.learning_rate": ["0", "-1e-3", ".nan", ".inf"], "trainer.warmup_steps": ["-1"],
    "trainer.end_learning_rate_ratio": ["1.5"], "trainer.decay_power": ["0"],
    "trainer.weight_decay": ["-0.1"], "trainer.beta_1": ["1"], "trainer.beta_2": ["-0.5"],
    "trainer.epsilon": ["0"], "trainer.clipnorm": ["0", "-1"],
    "trainer.gradient_accumulation_steps": ["0"], "trainer.label_smoothing": ["1"],
    "trainer.layer_decay": ["0", "1.5"], "trainer.log_every": ["0"],
    "trainer.checkpoint_every": ["0"], "trainer.keep_checkpoints": ["0"],
    "trainer.eval_every": ["-1"], "trainer.eval_steps": ["-1"], "trainer.sample_tokens": ["0"],
    "trainer.max_nan_recoveries": ["-1"], "trainer.distill_temperature": ["0", "-1"],
    "trainer.distill_weight": ["-0.1", "1.5"], "runtime.seed": ["-1", str(2**32)],
    "runtime.peak_tflops": ["-1"], "runtime.initial_loss_scale": ["0"],
    "runtime.loss_scale_growth_interval": ["0"],
    "masked_lm:model.next_sentence_weight": ["-1"],
    "regression:model.target_mean": [".nan"], "regression:model.target_scale": ["0", ".inf"],
    "multi_label_classification:model.threshold": ["0", "1"],
    "sentence_embedding:model.temperature": ["0"],
    "seq2seq:data.target_length": ["1"], "seq2seq:model.num_decoder_layers": ["-1"],
    "seq2seq:data.eval_max_examples": ["-1"], "seq2seq:data.eval_num_beams": ["0"],
    "seq2seq:data.eval_max_new_tokens": ["-1"],
    "denoising:data.target_length": ["1", "-1"], "denoising:model.num_decoder_layers": ["-1"],
    "denoising:data.noise_density": ["0", "1"], "denoising:data.mean_noise_span_length": ["0.5"],
    "denoising:data.num_sentinels": ["0"], "denoising:data.mask_ratio": ["-0.1", "1.5"],
    "denoising:data.poisson_lambda": ["0"],
}


def _ranged_keys():
    """`[task:]section.key` of every int or float key, with its field: the shared ones and
    each registered task's own."""
    def numeric(sections, prefix=""):
        for section, keys in sections.items():
            for field in dataclasses.fields(keys):
                if {int, float} & {field.type, *typing.get_args(field.type)}:
                    yield f"{prefix}{section}.{field.name}", field

    shared = {f.name: f.type for f in dataclasses.fields(config_lib.ExperimentConfig)}
    yield from numeric(shared)
    for name in task_names():
        yield from numeric(config_keys_of(name), prefix=f"{name}:")


def test_every_numeric_key_has_a_range_and_out_of_range_cases():
    keys = dict(_ranged_keys())
    assert [key for key, field in keys.items() if "range" not in field.metadata] == []
    assert sorted(keys) == sorted(OUT_OF_RANGE)


@pytest.mark.parametrize("key, value", [(k, v) for k, values in OUT_OF_RANGE.items()
                                        for v in values])
def test_out_of_range_values_are_errors_naming_the_key_and_range(key, value):
    task, _, key = key.rpartition(":")
    override = (f"model.task={task}," if task else "") + f"{key}={value}"
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: \S+; must be ") as info:
        load_experiment(TINY_GPT, override)
    if value in (".nan", ".inf"):
        assert "must be finite" in str(info.value)


def test_num_heads_zero_is_a_config_error_not_a_division():
    with pytest.raises(ConfigError) as info:
        load_experiment(TINY_GPT, "model.num_heads=0")
    assert str(info.value) == "model.num_heads: 0; must be >= 1"


@pytest.mark.parametrize("override", [
    "data.eval_every_nth_document=0", "data.eval_every_nth_document=2", "model.dropout=0",
    "data.mask_rate=1", "trainer.end_learning_rate_ratio=0", "trainer.layer_decay=1",
    "trainer.clipnorm=null", "data.max_document_bytes=64", f"runtime.seed={2**32 - 1}",
])
def test_range_bounds_are_allowed(override):
    load_experiment(TINY_GPT, override)


def test_rotary_needs_an_even_head_size():
    with pytest.raises(ConfigError, match="head size .* = 3 must be even"):
        load_experiment(TINY_GPT, "model.position_encoding=rotary,model.hidden_dim=12")


def test_global_batch_must_split_over_the_replicas(tmp_path):
    two_by_two = WorkerInfo(num_workers=2, worker_index=0, is_chief=True, num_local_replicas=2)
    two_by_two.check_global_batch_size(8)
    with pytest.raises(ConfigError) as info:
        two_by_two.check_global_batch_size(6)
    assert str(info.value) == ("data.global_batch_size: 6 does not split over 4 replicas "
                               "(2 worker(s) x 2 device(s)); use a multiple of 4, e.g. 4 or 8.")
    with pytest.raises(ConfigError, match="e.g. 4.$"):
        two_by_two.check_global_batch_size(3)
    # The trainer checks before it builds anything (a strategy of two devices, of which it
    # reads only the devices before the check).
    config = load_experiment(TINY_GPT, "data.global_batch_size=5")
    two_devices = types.SimpleNamespace(
        extended=types.SimpleNamespace(worker_devices=("/cpu:0", "/cpu:1")))
    with pytest.raises(ConfigError, match=r"^data\.global_batch_size: 5 .* 2 replicas .* 4 or 6"):
        Trainer(get_task(config), str(tmp_path / "run"), strategy=two_devices)
    assert not (tmp_path / "run").exists()


# Files


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_save_then_load_round_trips(path, tmp_path):
    config = load_experiment(str(path), "trainer.clipnorm=null,trainer.learning_rate=1e-5")
    saved = tmp_path / "params.yaml"
    save_experiment(config, str(saved))
    restored = load_experiment(str(saved))
    assert restored == config
    assert config_lib.to_dict(restored) == config_lib.to_dict(config)


def test_missing_config_file_names_path(tmp_path):
    path = str(tmp_path / "no_such_config.yaml")
    with pytest.raises(ConfigError, match="no_such_config.yaml") as info:
        load_experiment(path)
    assert path in str(info.value)


def test_invalid_yaml_names_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: invalid YAML"):
        load_experiment(str(path))


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("alias, name", [("bfloat16", "mixed_bfloat16"), ("float16", "mixed_float16")])
def test_precision_aliases_of_model_garden(alias, name):
    assert load_experiment(TINY_GPT, f"runtime.mixed_precision={alias}").runtime.mixed_precision == name


def test_later_config_files_override_earlier(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("trainer:\n  train_steps: 7\n")
    config = load_experiment([TINY_GPT, str(extra)], "trainer.log_every=7")
    assert config.trainer.train_steps == 7 and config.model.task == "causal_lm"


# Fine-tuning keys

CLASSIFY = "model.task=classification,data.input_format=jsonl,data.input_path=labels.jsonl"


@pytest.mark.parametrize("override, message", [
    ("model.task=classification", "classification reads labelled 'jsonl' or 'csv'"),
    ("model.task=classification,data.input_format=jsonl", "needs data.input_path"),
    ("data.input_format=csv", "for labelled data"),
    (CLASSIFY + ",model.freeze_bottom_layers=3", r"freeze_bottom_layers=3 must be in \[0, "),
    (CLASSIFY + ",model.finetune=adapters,model.freeze_bottom_layers=1", "is for model.finetune"),
    (CLASSIFY + ",model.finetune=adapters,model.adapter_dim=0", r"model\.adapter_dim: 0; must be >= 1"),
    (CLASSIFY + ",model.finetune=prefix_tuning", "model.finetune: 'prefix_tuning' is not one of"),
    (CLASSIFY + ",trainer.layer_decay=0", r"trainer\.layer_decay: 0\.0; must be in \(0, 1\]"),
    (CLASSIFY + ",data.label_names=[a,a]", "repeats a name"),
    (CLASSIFY + ",data.label_names=[a,b],model.num_classes=3", "num_classes=3, but"),
    (CLASSIFY + ",data.label_names=a", "expected a list of names"),
    (CLASSIFY + ",model.pooling=pooled", "needs model.pooler=true"),
])
def test_fine_tuning_checks_name_keys(override, message):
    with pytest.raises(ConfigError, match=message):
        load_experiment(TINY_GPT, override)


def test_label_names_are_a_list_of_strings():
    config = load_experiment(TINY_GPT, CLASSIFY + ",data.label_names=[neg, 1, pos]")
    assert config.data.label_names == ["neg", "1", "pos"]


def _pretrained_dir(tmp_path, **model):
    """A model_dir as tflm-train or the converter leaves it (only what the config reads)."""
    folder = tmp_path / "pretrained"
    (folder / "tokenizer").mkdir(parents=True)
    (folder / "tokenizer" / "tokenizer.json").write_text('{"kind": "wordpiece"}')
    source = load_experiment(str(REPO_ROOT / "configs" / "tiny_bert.yaml"),
                             ",".join(f"model.{k}={v}" for k, v in model.items()))
    save_experiment(source, str(folder / "params.yaml"))
    return folder


def test_init_checkpoint_fills_the_architecture_and_tokenizer(tmp_path):
    folder = _pretrained_dir(tmp_path, num_layers=3, hidden_dim=64, norm_epsilon=1e-7)
    config = load_experiment(None, f"{CLASSIFY},model.init_checkpoint={folder}")
    assert (config.model.num_layers, config.model.hidden_dim) == (3, 64)
    assert config.model.norm_epsilon == 1e-7 and config.model.causal is False
    assert config.model.norm_first is False and config.model.pooler is True  # not the defaults
    assert (config.data.tokenizer, config.data.vocab_path) == ("wordpiece",
                                                               str(folder / "tokenizer"))
    # A key the experiment sets must agree with the checkpoint.
    with pytest.raises(ConfigError, match=r"model.num_layers=2, but model.init_checkpoint=.* has 3"):
        load_experiment(None, f"{CLASSIFY},model.init_checkpoint={folder},model.num_layers=2")
    same = load_experiment(None, f"{CLASSIFY},model.init_checkpoint={folder},model.num_layers=3")
    assert same.model.num_layers == 3


def test_init_checkpoint_must_be_a_tflm_model_dir(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="is a Hugging Face checkpoint: convert it first"):
        load_experiment(TINY_GPT, f"{CLASSIFY},model.init_checkpoint={hf}")
    with pytest.raises(ConfigError, match="has no params.yaml"):
        load_experiment(TINY_GPT, f"{CLASSIFY},model.init_checkpoint={tmp_path}")


@pytest.mark.parametrize("override, message", [
    ("model.num_key_value_heads=3", r"model.num_key_value_heads=3 must divide model.num_heads=4"),
    ("model.rotary_layout=split", r"model.rotary_layout: 'split' is not one of"),
])
def test_decoder_architecture_keys_are_checked(override, message):
    with pytest.raises(ConfigError, match=message):
        load_experiment(None, override)


@pytest.mark.parametrize("override, message", [
    # A bidirectional task has no "last W keys".
    ("model.task=masked_lm,model.sliding_window=8", r"model.sliding_window=8 is for causal"),
    # The encoder-decoder does not take the decoder-only keys (yet): not silently ignored.
    ("model.task=seq2seq,model.num_key_value_heads=2",
     r"model.num_key_value_heads=2 is not supported by the encoder-decoder"),
])
def test_keys_a_task_cannot_honour_stop_the_model_build(override, message):
    config = load_experiment(None, override)
    with pytest.raises(ConfigError, match=message):
        build_task(config.model)
