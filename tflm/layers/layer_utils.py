"""Helpers shared by the layers: fresh initializers and pre-built Dense sublayers."""

import keras


def clone_initializer(initializer):
    """A fresh copy of `initializer`, so that two weights never share draws.

    A Keras initializer object with a fixed seed returns the same values at
    every call; each weight gets its own copy instead.
    """
    initializer = keras.initializers.get(initializer)
    return initializer.__class__.from_config(initializer.get_config())


def build_dense(units, input_shape, use_bias, kernel_initializer, bias_initializer, dtype, name):
    """A `keras.layers.Dense` built for `input_shape`, with its own initializer copies."""
    dense = keras.layers.Dense(
        units,
        use_bias=use_bias,
        kernel_initializer=clone_initializer(kernel_initializer),
        bias_initializer=clone_initializer(bias_initializer),
        dtype=dtype,
        name=name,
    )
    dense.build(input_shape)
    return dense
