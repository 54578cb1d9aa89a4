"""Builds a backbone from a `ModelConfig`."""

import dataclasses
import inspect

from tflm.models.backbone import TransformerBackbone

# The ModelConfig keys that are TransformerBackbone arguments (the others are the task's).
_BACKBONE_ARGUMENTS = set(inspect.signature(TransformerBackbone.__init__).parameters) - {
    "self", "causal", "adapter_dim", "dtype", "kwargs"}


def build_backbone(model_config, dtype=None, causal=None):
    """The `TransformerBackbone` of `model_config` (with adapters if `finetune="adapters"`).

    `causal`: the attention direction when `model_config.causal` is unset (each task
    has its own default, see `tflm.tasks.architecture_value`); False if both are unset.
    """
    kwargs = {k: v for k, v in dataclasses.asdict(model_config).items()
              if k in _BACKBONE_ARGUMENTS}
    kwargs["causal"] = bool(causal) if model_config.causal is None else model_config.causal
    if model_config.finetune == "adapters":
        kwargs["adapter_dim"] = model_config.adapter_dim
    return TransformerBackbone(dtype=dtype, **kwargs)
