"""Pretrained weights into new models: the architecture a backbone has, and copying a
pretrained model's weights into a model of the same backbone (a classifier, say).

Reading and writing whole pretrained model_dirs (and converting Hugging Face checkpoints
into them) is `tflm.tasks.pretrained`.

Example:
>>> classifier = SequenceClassifier(build_backbone(config.model), num_classes=2)
>>> fresh = copy_pretrained_weights(masked_lm, classifier)   # backbone weights copied
"""

import dataclasses

from tflm.config import ModelConfig, architecture_keys
from tflm.models.huggingface import CheckpointError


def model_config_of(backbone, task, config=None):
    """The `ModelConfig` that rebuilds `backbone` for `task`: `config` (a task's extended
    `model` section, say) filled in, else a new `ModelConfig`."""
    config = ModelConfig() if config is None else config
    fields = {f.name for f in dataclasses.fields(config)}
    for key, value in backbone.get_config().items():
        if key in fields and key not in ("task", "adapter_dim"):
            setattr(config, key, value)
    config.task = task
    # An encoder-decoder has no one direction: its task's default (see `architecture_value`).
    config.causal = getattr(backbone, "causal", None)
    return config


def backbone_relative_path(variable, backbone):
    """A backbone variable's path below the backbone (its own name differs per instance).

    An encoder-decoder's variables are already below its halves ("encoder/...",
    "decoder/..."): those names are what tells its two `block_0`s apart.
    """
    prefix = backbone.name + "/"
    return variable.path[len(prefix):] if variable.path.startswith(prefix) else variable.path


def architecture_differences(source, target):
    """`[(key, source value, target value)]` of the backbones' architecture keys (a key one
    kind of backbone lacks, e.g. an encoder-decoder's `pooler`, reads None)."""
    a, b = source.get_config(), target.get_config()
    a["causal"], b["causal"] = getattr(source, "causal", None), getattr(target, "causal", None)
    return [(key, a.get(key), b.get(key)) for key in architecture_keys(a, b)
            if a.get(key) != b.get(key)]


def copy_pretrained_weights(source, model, where="the checkpoint"):
    """Copies `source`'s backbone weights (and head, for the same task) into `model`.

    Returns the paths of `model`'s variables that were not copied (new:
    adapters, a classification head).

    Raises:
        CheckpointError: the architectures differ (naming the config key) or a
            tensor has no place in `model` (naming it).
    """
    differences = architecture_differences(source.backbone, model.backbone)
    if differences:
        key, theirs, mine = differences[0]
        raise CheckpointError(f"{where} has model.{key}={theirs!r}, the model to initialize "
                              f"{mine!r}: a checkpoint of another architecture.")
    targets = {backbone_relative_path(v, model.backbone): v for v in model.backbone.weights}
    copied = set()
    for variable in source.backbone.weights:
        name = backbone_relative_path(variable, source.backbone)
        target = targets.get(name)
        if target is None or tuple(target.shape) != tuple(variable.shape):
            raise CheckpointError(f"{where}: tensor {name!r} {tuple(variable.shape)} has no "
                                  "counterpart in the model to initialize.")
        target.assign(variable.value)
        copied.add(id(target))
    if type(source) is type(model):  # the same head: continue from it too
        heads = []
        for m in (source, model):
            in_backbone = {id(v) for v in m.backbone.weights}
            heads.append([v for v in m.weights if id(v) not in in_backbone])
        for variable, target in zip(*heads):
            if tuple(target.shape) != tuple(variable.shape):
                raise CheckpointError(f"{where}: head tensor {variable.path!r} "
                                      f"{tuple(variable.shape)} does not fit {target.path!r} "
                                      f"{tuple(target.shape)}.")
            target.assign(variable.value)
            copied.add(id(target))
    return [v.path for v in model.weights if id(v) not in copied]
