"""Initializer helpers shared by the layers."""

import keras


def clone_initializer(initializer):
    """A fresh copy of `initializer`, so that two weights never share draws.

    A Keras initializer object with a fixed seed returns the same values at
    every call; each weight gets its own copy instead.
    """
    initializer = keras.initializers.get(initializer)
    return initializer.__class__.from_config(initializer.get_config())
