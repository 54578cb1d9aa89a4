"""Helpers shared by the layers: fresh initializers and pre-built Dense sublayers."""

import keras

from tflm.layers.lora import LoraDense


def clone_initializer(initializer):
    """A fresh copy of `initializer`, so that two weights never share draws.

    A Keras initializer object with a fixed seed returns the same values at
    every call; each weight gets its own copy instead.
    """
    initializer = keras.initializers.get(initializer)
    return initializer.__class__.from_config(initializer.get_config())


def build_dense(units, input_shape, use_bias, kernel_initializer, bias_initializer, dtype, name,
                lora=None):
    """A `keras.layers.Dense` built for `input_shape`, with its own initializer copies; a
    `LoraDense` with the arguments `lora` (see `tflm.layers.lora.lora_spec_for`) if given."""
    dense = (LoraDense if lora else keras.layers.Dense)(
        units,
        use_bias=use_bias,
        kernel_initializer=clone_initializer(kernel_initializer),
        bias_initializer=clone_initializer(bias_initializer),
        dtype=dtype,
        name=name,
        **(lora or {}),
    )
    dense.build(input_shape)
    return dense
