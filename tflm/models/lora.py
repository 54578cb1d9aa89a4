"""LoRA models: merging the factors for serving, and the factors file of a LoRA run.

A model built with `model.finetune=lora` has a `tflm.layers.lora.LoraDense` in place of
each targeted projection. Around it:

- `merge_lora(model)`: a new model of the same task with plain `Dense` layers whose
  kernels are `W + A B * alpha / rank`; it computes what `model` computes (to float
  rounding) with no LoRA ops or variables. `model` itself is left untouched, so it can
  keep training or be saved as it was. `tflm.experiment.export_saved_model` calls it first.
- `save_lora(model, path)` / `load_lora(model, path)`: what LoRA fine-tuning trained (the
  factors, and the task head: the weights outside the backbone) as one small `.safetensors` file,
  with the rank, alpha, dropout and targets in its metadata. Loaded onto a model built
  from the same config and holding the base weights (`model.init_checkpoint`), it gives
  the trained model back: several variants of one base each keep only their file.

Example:
>>> save_lora(model, "runs/lora_a/lora.safetensors")
>>> served = merge_lora(model)          # plain Dense kernels; `model` is unchanged
"""

import json

import numpy as np

from tflm.errors import TflmError
from tflm.layers.lora import LoraDense
from tflm.models.pretrained import backbone_relative_path
from tflm.models.safetensors_file import (read_safetensors, read_safetensors_metadata,
                                          write_safetensors)


class LoraError(TflmError, ValueError):
    """A LoRA factors file does not fit the model it is loaded onto; names the file."""


def lora_layers(model):
    """The `LoraDense` layers of `model`, in build order."""
    return [layer for layer in model._flatten_layers() if isinstance(layer, LoraDense)]


def has_lora(model):
    return bool(lora_layers(model))


def merge_lora(model):
    """A copy of `model` (a tflm task model) with the LoRA factors folded into the base
    kernels, or `model` itself if it has none.

    The copy is the same task rebuilt from `model`'s config without `lora`; every weight
    is copied, each adapted kernel as `W + A B * alpha / rank`. `model` is not changed.
    """
    layers = lora_layers(model)
    if not layers:
        return model
    merged_kernels = {id(layer._kernel): layer.merged_kernel() for layer in layers}
    factors = {id(v) for layer in layers for v in layer.lora_a + layer.lora_b}
    config = model.get_config()
    config["backbone"] = dict(config["backbone"], config=dict(config["backbone"]["config"],
                                                              lora=None))
    merged = model.__class__.from_config(config)
    sources = [v for v in model.weights if id(v) not in factors]
    if len(sources) != len(merged.weights):
        raise LoraError(f"merge_lora: {len(sources)} base weights, but the model rebuilt "
                        f"without LoRA has {len(merged.weights)}.")
    for source, target in zip(sources, merged.weights):
        if tuple(source.shape) != tuple(target.shape):
            raise LoraError(f"merge_lora: {source.path} {tuple(source.shape)} does not fit "
                            f"{target.path} {tuple(target.shape)}.")
        value = merged_kernels.get(id(source), source.value)
        target.assign(np.asarray(value).astype(target.dtype))
    return merged


def lora_config(model):
    """The `lora` argument `model`'s backbone was built with (rank, alpha, dropout,
    targets), or None."""
    return model.backbone.get_config().get("lora")


def _names(model):
    """`{name: variable}` of what LoRA fine-tuning trains: the factors ("backbone/<path
    below the backbone>") and the head, every weight outside the backbone ("head/<path
    below the model>")."""
    names = {}
    for layer in lora_layers(model.backbone):
        for variable in layer.lora_a + layer.lora_b:
            names["backbone/" + backbone_relative_path(variable, model.backbone)] = variable
    in_backbone = {id(v) for v in model.backbone.weights}
    prefix = model.name + "/"
    for variable in model.weights:
        if id(variable) not in in_backbone:
            path = variable.path
            names["head/" + (path[len(prefix):] if path.startswith(prefix) else path)] = variable
    return names


def save_lora(model, path):
    """Writes what LoRA fine-tuning trained of `model` to `path` (a .safetensors file);
    returns its size in bytes."""
    config = lora_config(model)
    if not config:
        raise LoraError(f"save_lora({path!r}): the model has no LoRA factors.")
    tensors = {name: np.asarray(v.numpy()) for name, v in _names(model).items()}
    write_safetensors(path, tensors, metadata={"format": "tflm-lora",
                                               "lora": json.dumps(config, sort_keys=True)})
    return sum(t.nbytes for t in tensors.values())


def read_lora_config(path):
    """The `lora` config (rank, alpha, dropout, targets) a factors file was trained with."""
    metadata = read_safetensors_metadata(path)
    if metadata.get("format") != "tflm-lora" or "lora" not in metadata:
        raise LoraError(f"{path}: not a tflm LoRA factors file (no 'tflm-lora' metadata).")
    return json.loads(metadata["lora"])


def load_lora(model, path):
    """Assigns the factors (and head) of the file at `path` to `model`, which must be built
    with the same LoRA config; its other weights (the base) are left as they are."""
    theirs, mine = read_lora_config(path), lora_config(model)
    if mine is None:
        raise LoraError(f"{path}: the model to load it onto has no LoRA factors "
                        "(build it with model.finetune=lora).")
    for key in sorted(set(theirs) | set(mine)):
        if theirs.get(key) != mine.get(key):
            raise LoraError(f"{path}: trained with model.lora_{key}={theirs.get(key)!r}, the "
                            f"model has {mine.get(key)!r}.")
    tensors = read_safetensors(path)
    names = _names(model)
    for name, variable in names.items():
        if name not in tensors:
            raise LoraError(f"{path}: has no tensor {name!r} of the model.")
        if tuple(tensors[name].shape) != tuple(variable.shape):
            raise LoraError(f"{path}: tensor {name!r} {tuple(tensors[name].shape)} does not "
                            f"fit the model's {tuple(variable.shape)}.")
    extra = sorted(set(tensors) - set(names))
    if extra:
        raise LoraError(f"{path}: tensor {extra[0]!r} has no place in the model.")
    for name, variable in names.items():
        variable.assign(tensors[name].astype(variable.dtype))
    return model
