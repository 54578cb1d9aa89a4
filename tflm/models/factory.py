"""Builds a backbone from a `ModelConfig` (an encoder or decoder, or an encoder-decoder)."""

import dataclasses
import inspect

from tflm.models.backbone import TransformerBackbone
from tflm.models.seq2seq_lm import Seq2SeqBackbone

# The ModelConfig keys that are TransformerBackbone arguments (the others are the task's).
_BACKBONE_ARGUMENTS = set(inspect.signature(TransformerBackbone.__init__).parameters) - {
    "self", "causal", "adapter_dim", "lora", "dtype", "kwargs"}
# The same for `Seq2SeqBackbone` (the seq2seq task adds `num_decoder_layers` and
# `shared_embeddings` to its `model` section).
_SEQ2SEQ_ARGUMENTS = set(inspect.signature(Seq2SeqBackbone.__init__).parameters) - {
    "self", "lora", "dtype", "kwargs"}


def build_backbone(model_config, dtype=None, causal=None):
    """The `TransformerBackbone` of `model_config` (with adapters if `finetune="adapters"`,
    LoRA factors if `finetune="lora"`).

    `causal`: the attention direction when `model_config.causal` is unset (each task
    has its own default, see `tflm.tasks.architecture_value`); False if both are unset.
    """
    kwargs = {k: v for k, v in dataclasses.asdict(model_config).items()
              if k in _BACKBONE_ARGUMENTS}
    kwargs["causal"] = bool(causal) if model_config.causal is None else model_config.causal
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
    return Seq2SeqBackbone(dtype=dtype, lora=lora_of(model_config), **kwargs)
