"""Counter-based random numbers: each value a hash of its coordinates.

`uniform(row_keys, width, seed, stream)` gives `(batch, width)` floats in
(0, 1) where entry `[r, c]` depends only on `(row_keys[r], c, seed, stream)`:
a row's numbers never change with the rows batched around it, any order of
evaluation gives the same numbers, and it is integer ops only (compiles with
XLA). Used for masking in the data pipeline and for sampling in decoding.
"""

import tensorflow as tf


def _const(value):
    return tf.constant(value, tf.uint64)


def hash_uint64(x):
    """SplitMix64's finalizer: a bijective mix of 64-bit integers."""
    shift, xor = tf.bitwise.right_shift, tf.bitwise.bitwise_xor
    x = xor(x, shift(x, _const(30))) * _const(0xBF58476D1CE4E5B9)
    x = xor(x, shift(x, _const(27))) * _const(0x94D049BB133111EB)
    return xor(x, shift(x, _const(31)))


def uniform(row_keys, width, seed, stream=0):
    """`(batch, width)` float32 uniforms in (0, 1); see the module docstring.

    Args:
        row_keys: `(batch,)` integer keys of the rows.
        width: number of columns.
        seed: an integer seed (tensor or Python).
        stream: an integer telling independent uses apart (a step, a purpose).
    """
    columns = tf.cast(tf.range(width, dtype=tf.int64), tf.uint64)[None, :]
    x = tf.cast(row_keys, tf.uint64)[:, None] * _const(0x9E3779B97F4A7C15) + columns
    x = tf.bitwise.bitwise_xor(
        x, tf.cast(seed, tf.uint64) * _const(0xBF58476D1CE4E5B9)
        + tf.cast(stream, tf.uint64) * _const(0x94D049BB133111EB))
    x = hash_uint64(x)
    # The top 24 bits, centred in their bin: never exactly 0 or 1.
    return (tf.cast(tf.bitwise.right_shift(x, _const(40)), tf.float32) + 0.5) / 16777216.0
