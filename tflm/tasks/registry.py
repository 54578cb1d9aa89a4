"""The task registry: task classes by name, and what depends on the task of a config.

A task module registers its class with `@register_task`; `model.task` names it.
Nothing outside `tflm/tasks/` decides by task name: it asks the registry.

Example:
>>> task_names()
['causal_lm', 'classification', 'masked_lm', ...]
>>> task_class("causal_lm").causal
True
"""

import difflib

from tflm.config import ConfigError
from tflm.errors import TflmError

_REGISTRY = {}


def register_task(cls):
    """Class decorator: makes `cls` the task of `model.task: <cls.name>`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no task name.")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"Task {cls.name!r} is registered twice ({_REGISTRY[cls.name].__name__} "
                         f"and {cls.__name__}).")
    _REGISTRY[cls.name] = cls
    return cls


def task_names():
    return sorted(_REGISTRY)


def task_class(name):
    """The task class registered as `name`; a `ConfigError` with the closest name if none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), task_names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"model.task: {name!r} is not one of {tuple(task_names())}"
                          f"{hint}") from None


def config_keys_of(name):
    """The config keys task `name` adds to the sections (`Task.config_keys`)."""
    return task_class(name).config_keys


def get_task(config):
    """The task object of an `ExperimentConfig` (`model.task`)."""
    return task_class(config.model.task)(config)


def task_for_model(model):
    """The task class whose model `model` is (a `CausalLM` -> causal_lm, ...)."""
    for cls in _REGISTRY.values():
        if type(model) is cls.model_class:
            return cls
    raise TflmError(f"A {type(model).__name__} is not the model of any tflm task "
                    f"({', '.join(task_names())}).")


def architecture_value(model_config, key):
    """`model_config.<key>` with the defaults that depend on other keys filled in: `causal`
    unset is the task's own direction, `final_norm` unset follows `norm_first`,
    `num_decoder_layers` 0 is `num_layers`."""
    if key == "causal":
        if model_config.causal is None:
            return task_class(model_config.task).causal
        return model_config.causal
    if key == "final_norm":
        return model_config.norm_first if model_config.final_norm is None else \
            model_config.final_norm
    if key == "num_decoder_layers":
        return model_config.num_decoder_layers or model_config.num_layers
    return getattr(model_config, key)


def build_task(model_config, dtype=None, label_names=None):
    """The compiled model of `model_config.task` (a `CausalLM`, `MaskedLM`, ...).

    `label_names`: the class names of a classifier (its `num_classes`, when
    `model_config.num_classes` is 0).
    """
    cls = task_class(model_config.task)
    return cls.create_model(model_config, cls.create_backbone(model_config, dtype),
                            label_names)
