"""Builds a backbone from a `ModelConfig` (an encoder or decoder, or an encoder-decoder)."""

import dataclasses
import inspect

from tflm.config import ConfigError
from tflm.models.backbone import TransformerBackbone
from tflm.models.seq2seq_lm import Seq2SeqBackbone

# The ModelConfig keys that are TransformerBackbone arguments (the others are the task's).
_BACKBONE_ARGUMENTS = set(inspect.signature(TransformerBackbone.__init__).parameters) - {
    "self", "causal", "adapter_dim", "lora", "dtype", "kwargs"}
# The same for `Seq2SeqBackbone` (the seq2seq task adds `num_decoder_layers` and
# `shared_embeddings` to its `model` section).
_SEQ2SEQ_ARGUMENTS = set(inspect.signature(Seq2SeqBackbone.__init__).parameters) - {
    "self", "lora", "dtype", "kwargs"}

# The ModelConfig keys of the decoder-only models that an encoder-decoder does not take yet.
_DECODER_ONLY_KEYS = ("num_key_value_heads", "rope_theta", "rotary_layout", "sliding_window",
                      "qkv_bias")


def build_backbone(model_config, dtype=None, causal=None):
    """The `TransformerBackbone` of `model_config` (with adapters if `finetune="adapters"`,
    LoRA factors if `finetune="lora"`).

    `causal`: the attention direction when `model_config.causal` is unset (each task
    has its own default, see `tflm.tasks.architecture_value`); False if both are unset.
    """
    kwargs = {k: v for k, v in dataclasses.asdict(model_config).items()
              if k in _BACKBONE_ARGUMENTS}
    kwargs["causal"] = bool(causal) if model_config.causal is None else model_config.causal
    if model_config.sliding_window and not kwargs["causal"]:
        raise ConfigError(f"model.sliding_window={model_config.sliding_window} is for causal "
                          f"models; model.task={model_config.task!r} here is bidirectional.")
    if model_config.finetune == "adapters":
        kwargs["adapter_dim"] = model_config.adapter_dim
    return TransformerBackbone(dtype=dtype, lora=lora_of(model_config), **kwargs)


def lora_of(model_config):
    """The backbones' `lora` argument of `model_config` (None unless `finetune="lora"`)."""
    if model_config.finetune != "lora":
        return None
    return {"rank": model_config.lora_rank, "alpha": float(model_config.lora_alpha),
            "dropout": float(model_config.lora_dropout),
            "targets": list(model_config.lora_targets)}


def build_seq2seq_backbone(model_config, dtype=None):
    """The `Seq2SeqBackbone` of `model_config` (`num_decoder_layers` 0 or unset: as many
    decoder blocks as `num_layers`)."""
    kwargs = {k: v for k, v in dataclasses.asdict(model_config).items()
              if k in _SEQ2SEQ_ARGUMENTS}
    for key in _DECODER_ONLY_KEYS:
        if getattr(model_config, key) != getattr(type(model_config), key):
            raise ConfigError(f"model.{key}={getattr(model_config, key)!r} is not supported by "
                              f"the encoder-decoder task {model_config.task!r}; remove the key.")
    return Seq2SeqBackbone(dtype=dtype, lora=lora_of(model_config), **kwargs)
