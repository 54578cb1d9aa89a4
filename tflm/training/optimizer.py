"""Optimizer construction: AdamW with weight decay off for biases and norm scales."""

from tflm.models.finetuning import layer_lr_multipliers
from tflm.models.task import make_adamw, no_decay_variables
from tflm.training.adamw import AdamW
from tflm.training.schedules import WarmupDecay


def make_schedule(trainer_config):
    """The `WarmupDecay` schedule a `TrainerConfig` describes."""
    return WarmupDecay(
        peak=trainer_config.learning_rate,
        total_steps=trainer_config.train_steps,
        warmup_steps=trainer_config.warmup_steps,
        decay=trainer_config.decay,
        end_ratio=trainer_config.end_learning_rate_ratio,
        power=trainer_config.decay_power,
    )


def make_optimizer(trainer_config, model, clip=True):
    """Keras AdamW with the configured schedule, for `model.fit` (`clip=False`: no clipping)."""
    return make_adamw(
        model,
        learning_rate=make_schedule(trainer_config),
        weight_decay=trainer_config.weight_decay,
        beta_1=trainer_config.beta_1,
        beta_2=trainer_config.beta_2,
        epsilon=trainer_config.epsilon,
        clipnorm=trainer_config.clipnorm if clip else None,
    )


def make_trainer_optimizer(trainer_config, model):
    """The trainer's `AdamW` (same update as Keras'), with the configured schedule and,
    with `trainer.layer_decay < 1`, layer-wise learning rates."""
    multipliers = None
    if trainer_config.layer_decay != 1.0:
        multipliers = layer_lr_multipliers(model, trainer_config.layer_decay)
    return AdamW(
        model.trainable_variables,
        learning_rate=make_schedule(trainer_config),
        weight_decay=trainer_config.weight_decay,
        beta_1=trainer_config.beta_1,
        beta_2=trainer_config.beta_2,
        epsilon=trainer_config.epsilon,
        exclude_from_decay=no_decay_variables(model),
        lr_multipliers=multipliers,
    )
