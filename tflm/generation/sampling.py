"""Choosing the next token from logits: greedy, temperature, top-k, top-p, with a seed.

The settings are tensors, so a single compiled decode loop serves any mix of
them, and a SavedModel takes them as inputs; conditionals on them skip the
work a setting does not need (no vocabulary sort when greedy, or when
sampling without top-k or top-p). Sampling is stateless and per row: the draw for a row at step `i`
depends only on `(seed, i, the row's prompt)`, so the same prompt and seed give
the same text whatever else shares its batch (a server may batch requests).
"""

import tensorflow as tf

from tflm.random import uniform as counter_uniform


def next_token(logits, step, temperature=0.0, top_k=0, top_p=1.0, seed=0, row_keys=None):
    """`(batch,)` int32 next tokens from `(batch, vocab)` float32 logits.

    Args:
        logits: scores of the next token.
        step: the decoding step (part of the random seed).
        temperature: 0 (or less) chooses the most likely token (greedy);
            otherwise logits are divided by it before sampling.
        top_k: if > 0, sample only among the `top_k` most likely tokens.
        top_p: if < 1, sample only among the smallest set of most likely
            tokens whose probabilities add up to at least `top_p` (nucleus).
        seed: an integer seed of the draws.
        row_keys: `(batch,)` int64 per-row keys (see `prompt_keys`); rows with
            the same key and seed draw the same noise. Default: all zero.
    """
    logits = tf.cast(logits, tf.float32)
    temperature = tf.cast(temperature, tf.float32)
    vocab = tf.shape(logits)[-1]
    if row_keys is None:
        row_keys = tf.zeros(tf.shape(logits)[:1], tf.int64)

    def sample():
        scaled = logits / tf.maximum(temperature, 1e-6)

        def cut():
            # One descending sort gives both cut-offs.
            ordered = tf.sort(scaled, axis=-1, direction="DESCENDING")
            k = tf.cast(top_k, tf.int32)
            k = tf.where(k > 0, tf.minimum(k, vocab), vocab)
            kth_best = tf.gather(ordered, k - 1, axis=-1)[:, None]
            probs = tf.nn.softmax(ordered, axis=-1)
            # Keep a token while the mass of the tokens before it is below top_p.
            mass_before = tf.cumsum(probs, axis=-1, exclusive=True)
            keep = tf.reduce_sum(tf.cast(mass_before < tf.cast(top_p, tf.float32), tf.int32),
                                 axis=-1)
            nucleus_cut = tf.gather(ordered, tf.maximum(keep, 1) - 1, axis=-1, batch_dims=1)
            threshold = tf.maximum(kth_best, nucleus_cut[:, None])
            return tf.where(scaled >= threshold, scaled, tf.float32.min)

        # The sort over the vocabulary runs only when top-k or top-p asks for it.
        filtered = tf.cond((tf.cast(top_k, tf.int32) > 0) | (tf.cast(top_p, tf.float32) < 1.0),
                           cut, lambda: scaled)
        # Gumbel-max: argmax(logits + Gumbel noise) is a draw from softmax(logits).
        uniform = counter_uniform(row_keys, vocab, seed, step)
        return tf.argmax(filtered - tf.math.log(-tf.math.log(uniform)), axis=-1,
                         output_type=tf.int32)

    # Greedy decoding skips the sampling work altogether.
    return tf.cond(temperature > 0.0, sample,
                   lambda: tf.argmax(logits, axis=-1, output_type=tf.int32))


def prompt_keys(prompts):
    """`(batch,)` int64 keys of ragged prompt ids: equal prompts, equal keys."""
    text = tf.strings.reduce_join(tf.strings.as_string(prompts), axis=1, separator=",")
    return tf.strings.to_hash_bucket_fast(text, 2**62)
