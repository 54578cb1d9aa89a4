"""Optimizer construction: AdamW with weight decay off for biases and norm scales."""

import keras


def no_decay_variables(model):
    """Variables that weight decay must not touch: biases and norm scales/offsets.

    These are exactly the rank-1 trainable variables of a transformer (BERT's
    rule excludes "bias", "LayerNorm.weight" and "LayerNorm.bias"); embedding
    tables and kernels are rank 2 and are decayed.
    """
    return [v for v in model.trainable_variables if len(v.shape) <= 1]


def make_adamw(model, learning_rate=1e-3, weight_decay=0.01, beta_1=0.9, beta_2=0.999,
               epsilon=1e-6, clipnorm=None):
    """AdamW for `model`, its biases and norm parameters excluded from decay."""
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
