"""Builds backbones and tasks from a `ModelConfig`."""

import dataclasses

from tflm.models.backbone import TransformerBackbone
from tflm.models.causal_lm import CausalLM
from tflm.models.masked_lm import MaskedLM
from tflm.models.sequence_classifier import SequenceClassifier

# ModelConfig fields that are not TransformerBackbone arguments.
_TASK_FIELDS = ("task", "num_classes", "causal", "init_checkpoint", "finetune",
                "freeze_bottom_layers", "adapter_dim", "pooling", "classifier_dropout")


def build_backbone(model_config, dtype=None):
    """The `TransformerBackbone` of `model_config` (with adapters if `finetune="adapters"`)."""
    from tflm.config import architecture_value

    kwargs = {
        k: v for k, v in dataclasses.asdict(model_config).items() if k not in _TASK_FIELDS
    }
    kwargs["causal"] = architecture_value(model_config, "causal")
    if model_config.finetune == "adapters":
        kwargs["adapter_dim"] = model_config.adapter_dim
    return TransformerBackbone(dtype=dtype, **kwargs)


def build_task(model_config, dtype=None, label_names=None):
    """A compiled `CausalLM`, `MaskedLM` or `SequenceClassifier`, as the config names.

    A classifier has `model_config.num_classes` classes, or one per name of
    `label_names` when that is 0.
    """
    backbone = build_backbone(model_config, dtype=dtype)
    if model_config.task == "causal_lm":
        return CausalLM(backbone)
    if model_config.task == "masked_lm":
        return MaskedLM(backbone)
    if model_config.task == "classification":
        num_classes = model_config.num_classes or len(label_names or ())
        if not num_classes:
            raise ValueError("A classifier needs model.num_classes or label names.")
        return SequenceClassifier(backbone, num_classes=num_classes,
                                  pooling=model_config.pooling or None,
                                  dropout=model_config.classifier_dropout,
                                  label_names=label_names)
    raise ValueError(f"Unknown task {model_config.task!r}.")
