"""What a fine-tuning run trains: full, frozen bottom layers, feature extraction, adapters,
LoRA.

`apply_finetuning(model, mode)` sets `trainable` on the parts of a task's
backbone; the task head (classifier, masked-LM head) always trains:

    full                 everything (optionally not the embeddings and the lowest N blocks)
    feature_extraction   the head only; the backbone is frozen and runs in inference
                         mode (no dropout), as Keras' transfer-learning guide does
    adapters             the head and the `Adapter`s inside every block (the backbone
                         must be built with `adapter_dim > 0`); dropout stays on
    lora                 the head and the low-rank factors of every `LoraDense` (the
                         backbone must be built with `lora`); every base weight is
                         frozen, so it stays bit-identical; dropout stays on

Call it before `compile`/`fit` (or before the trainer builds its optimizer):
the optimizer keeps slots for the variables that are trainable then.

`layer_lr_multipliers(model, decay)` gives discriminative learning rates
(layer-wise decay as in ELECTRA): the head and the backbone's final norm and
pooler 1, block `i` of `L` `decay^(L - i)`, the embeddings `decay^(L + 1)`;
adapters train at the full rate, being new; LoRA factors at their block's rate, being
that block's weight update. An encoder-decoder's blocks count as one stack, the encoder's
below the decoder's (the decoder reads the encoder's output), their embeddings at the bottom.

Example:
>>> model = SequenceClassifier(backbone, num_classes=3)
>>> apply_finetuning(model, "full", freeze_bottom_layers=4)
>>> model.compile()
"""

from tflm.config import FINETUNE_MODES
from tflm.layers.lora import LoraDense
from tflm.models.seq2seq_lm import Seq2SeqBackbone


def stacks(backbone):
    """The `TransformerBackbone`s of a task's backbone, bottom first: itself, or an
    encoder-decoder's encoder and decoder."""
    if isinstance(backbone, Seq2SeqBackbone):
        return [backbone.encoder, backbone.decoder]
    return [backbone]


def _blocks(backbone):
    return [block for stack in stacks(backbone) for block in stack.blocks]


def embedding_layers(backbone):
    """The layers that turn ids into the first hidden states (each only once: an
    encoder-decoder's halves may share the token embedding)."""
    layers = {}
    for stack in stacks(backbone):
        for layer in (stack.token_embedding, stack.position_embedding,
                      stack.segment_embedding, stack.embedding_norm_layer):
            if layer is not None:
                layers[id(layer)] = layer
    return list(layers.values())


def _adapters(block):
    return [a for a in (block.attention_adapter, block.feed_forward_adapter) if a is not None]


def apply_finetuning(model, mode="full", freeze_bottom_layers=0):
    """Sets which parts of `model` (a task with `.backbone`) train; returns `model`."""
    if mode not in FINETUNE_MODES:
        raise ValueError(f"Unknown fine-tuning mode {mode!r}; expected one of {FINETUNE_MODES}.")
    backbone = model.backbone
    blocks = _blocks(backbone)
    if not 0 <= freeze_bottom_layers <= len(blocks):
        raise ValueError(f"freeze_bottom_layers={freeze_bottom_layers} must be in "
                         f"[0, {len(blocks)}] (the backbone's blocks).")
    if freeze_bottom_layers and mode != "full":
        raise ValueError(f"freeze_bottom_layers is for mode='full', not {mode!r}.")
    backbone.trainable = True  # sets every sublayer; the modes below turn parts off
    if mode == "feature_extraction":
        backbone.trainable = False
    elif mode == "adapters":
        if not all(stack.adapter_dim for stack in stacks(backbone)):
            raise ValueError("mode='adapters' needs a backbone built with adapter_dim > 0 "
                             "(model.finetune=adapters in a config does that).")
        frozen = embedding_layers(backbone) + [
            layer for stack in stacks(backbone)
            for layer in (stack.final_norm_layer, stack.pooler_dense) if layer is not None]
        for block in blocks:
            frozen += [block.attention, block.attention_norm, block.feed_forward,
                       block.feed_forward_norm]
        for layer in frozen:
            layer.trainable = False
    elif mode == "lora":
        if not _has_lora(backbone):
            raise ValueError("mode='lora' needs a backbone built with lora "
                             "(model.finetune=lora in a config does that).")
        # Freeze every layer that holds no factors; a LoraDense's own kernel and bias
        # are frozen variables, so only its factors train.
        for layer in backbone._flatten_layers(include_self=False):
            if not _has_lora(layer):
                layer.trainable = False
    elif freeze_bottom_layers:
        for layer in embedding_layers(backbone) + blocks[:freeze_bottom_layers]:
            layer.trainable = False
    return model


def _has_lora(layer):
    return any(isinstance(sub, LoraDense) for sub in layer._flatten_layers())


def layer_lr_multipliers(model, decay):
    """Learning-rate multipliers for `model.trainable_variables`, in that order."""
    backbone = model.backbone
    blocks = _blocks(backbone)
    num_layers = len(blocks)
    depth = {}
    for layer in embedding_layers(backbone):
        for v in layer.weights:
            depth[id(v)] = 0
    for i, block in enumerate(blocks):
        adapter_weights = {id(v) for a in _adapters(block) for v in a.weights}
        for v in block.weights:
            if id(v) not in adapter_weights:
                depth[id(v)] = i + 1
    return [float(decay) ** (num_layers + 1 - depth.get(id(v), num_layers + 1))
            for v in model.trainable_variables]
