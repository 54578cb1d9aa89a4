"""The task registry: names, the closest-name error, config keys a task adds, the task of a
model, and a task added from outside the package going through load_experiment."""

import dataclasses

import pytest

from tflm.config import ConfigError
from tflm.experiment import load_experiment
from tflm.models import CausalLM, MaskedLM, SequenceClassifier, TransformerBackbone
from tflm.tasks import Task, get_task, register_task, task_class, task_for_model, task_names
from tflm.tasks import registry
from tflm.tasks.causal_lm import CausalLMTask

TINY_GPT = "configs/tiny_gpt.yaml"


def test_the_built_in_tasks_are_registered():
    assert {"causal_lm", "masked_lm", "classification"} <= set(task_names())
    assert task_class("causal_lm") is CausalLMTask
    assert task_class("causal_lm").causal and not task_class("masked_lm").causal


def test_an_unknown_task_names_the_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"model.task: 'causal_llm' is not one of .*did you "
                                          r"mean 'causal_lm'\?"):
        load_experiment(TINY_GPT, "model.task=causal_llm")


def test_the_task_of_a_model():
    small = dict(vocabulary_size=64, num_layers=1, num_heads=2, hidden_dim=8,
                 intermediate_dim=16, max_sequence_length=16)
    assert task_for_model(CausalLM(TransformerBackbone(**small, causal=True))).name == "causal_lm"
    assert task_for_model(MaskedLM(TransformerBackbone(**small))).name == "masked_lm"
    classifier = SequenceClassifier(TransformerBackbone(**small), num_classes=2)
    assert task_for_model(classifier).name == "classification"
    with pytest.raises(Exception, match="not the model of any tflm task"):
        task_for_model(TransformerBackbone(**small))


@dataclasses.dataclass
class _ProbeData:
    probe_field: str = "probe"
    probe_count: int = 3


@pytest.fixture
def probe_task():
    """A task registered from outside the package, with keys of its own in `data`."""

    @register_task
    class ProbeTask(CausalLMTask):
        name = "probe_lm"
        config_keys = {"data": _ProbeData}

        @classmethod
        def validate(cls, config):
            super().validate(config)
            if config.data.probe_count < 1:
                raise ConfigError(f"data.probe_count must be positive, got "
                                  f"{config.data.probe_count}.")

    yield ProbeTask
    registry._REGISTRY.pop("probe_lm")


def test_a_task_adds_its_own_config_keys(probe_task, tmp_path):
    config = load_experiment(TINY_GPT, "model.task=probe_lm,data.probe_field=x")
    assert config.data.probe_field == "x" and config.data.probe_count == 3
    assert isinstance(get_task(config), probe_task)
    # The same task's configs are of one class, so they compare (a saved params.yaml).
    assert config == load_experiment(TINY_GPT, "model.task=probe_lm,data.probe_field=x")
    with pytest.raises(ConfigError, match="probe_count must be positive"):
        load_experiment(TINY_GPT, "model.task=probe_lm,data.probe_count=0")
    with pytest.raises(ConfigError, match="Unknown config key 'data.probe_feild'.*probe_field"):
        load_experiment(TINY_GPT, "model.task=probe_lm,data.probe_feild=x")
    # Another task does not have them.
    with pytest.raises(ConfigError, match="Unknown config key 'data.probe_field'"):
        load_experiment(TINY_GPT, "data.probe_field=x")


def test_a_name_is_registered_once():
    class Twin(Task):
        name = "causal_lm"

    with pytest.raises(ValueError, match="registered twice"):
        register_task(Twin)


@pytest.mark.parametrize("config_file,overrides", [
    (TINY_GPT, "data.document_mask=true"),
    ("configs/tiny_bert.yaml", "data.sentence_pairs=true,data.whole_word_masking=true"),
    ("configs/tiny_denoising.yaml", ""),
])
def test_the_datasets_are_built_without_autograph(config_file, overrides,
                                                  autograph_conversions):
    """tf.data's functions are plain graph code, kept from autograph: converting them (it
    parses and rewrites the source of everything they call) took seconds of each binary's
    start."""
    task = get_task(load_experiment(config_file, overrides))
    for training, split in ((True, "train"), (False, "eval")):
        next(iter(task.dataset(training=training, split=split)))
    assert autograph_conversions == []
