"""Builds backbones and tasks from a `ModelConfig`."""

import dataclasses

from tflm.models.backbone import TransformerBackbone
from tflm.models.causal_lm import CausalLM
from tflm.models.masked_lm import MaskedLM
from tflm.models.sequence_classifier import SequenceClassifier

# ModelConfig fields that are not TransformerBackbone arguments.
_TASK_FIELDS = ("task", "num_classes")


def build_backbone(model_config, dtype=None):
    kwargs = {
        k: v for k, v in dataclasses.asdict(model_config).items() if k not in _TASK_FIELDS
    }
    kwargs["causal"] = model_config.task == "causal_lm"
    return TransformerBackbone(dtype=dtype, **kwargs)


def build_task(model_config, dtype=None):
    """A compiled `CausalLM`, `MaskedLM` or `SequenceClassifier`, as the config names."""
    backbone = build_backbone(model_config, dtype=dtype)
    if model_config.task == "causal_lm":
        return CausalLM(backbone)
    if model_config.task == "masked_lm":
        return MaskedLM(backbone)
    if model_config.task == "classification":
        return SequenceClassifier(backbone, num_classes=model_config.num_classes)
    raise ValueError(f"Unknown task {model_config.task!r}.")
