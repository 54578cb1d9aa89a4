import dataclasses
import pathlib

import pytest

from tflm import config as config_lib
from tflm.config import ConfigError, parse_overrides, save_experiment
from tflm.experiment import load_experiment
from tflm.tasks import task_names

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
    (CLASSIFY + ",model.finetune=adapters,model.adapter_dim=0", "adapter_dim must be positive"),
    (CLASSIFY + ",model.finetune=lora", "model.finetune: 'lora' is not one of"),
    (CLASSIFY + ",trainer.layer_decay=0", r"layer_decay must be in \(0, 1\]"),
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
