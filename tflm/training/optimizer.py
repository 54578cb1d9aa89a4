"""Optimizer construction: AdamW with weight decay off for biases and norm scales."""

import keras

from tflm.training.schedules import WarmupDecay


def no_decay_variables(model):
    """Variables that weight decay must not touch: biases and norm scales/offsets.

    These are exactly the rank-1 trainable variables of a transformer (BERT's
    rule excludes "bias", "LayerNorm.weight" and "LayerNorm.bias"); embedding
    tables and kernels are rank 2 and are decayed.
    """
    return [v for v in model.trainable_variables if len(v.shape) <= 1]


def make_adamw(model, learning_rate=1e-3, weight_decay=0.01, beta_1=0.9, beta_2=0.999,
               epsilon=1e-6, clipnorm=None):
    """AdamW for `model`, its biases and norm parameters excluded from decay.

    `learning_rate` is a float or a schedule; `clipnorm` clips by the global
    norm of the gradient (as `model.fit` sees it; the trainer clips itself,
    after summing gradients over replicas).
    """
    optimizer = keras.optimizers.AdamW(
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        beta_1=beta_1,
        beta_2=beta_2,
        epsilon=epsilon,
        global_clipnorm=clipnorm,
    )
    optimizer.exclude_from_weight_decay(var_list=no_decay_variables(model))
    return optimizer


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
    from tflm.training.adamw import AdamW

    multipliers = None
    if trainer_config.layer_decay != 1.0:
        from tflm.models.finetuning import layer_lr_multipliers

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
