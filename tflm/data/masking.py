"""Dynamic masking for masked-LM pretraining (BERT), vectorized over a batch.

`mask_batch` masks a whole `(batch, T)` batch with one set of ops (no
per-row work), drawing its randomness from a counter-based generator keyed
by each row's key: a row's masks depend only on `(seed, row key)`, so a
pipeline that keys rows by their position in the stream is deterministic
and redraws masks every epoch.
"""

import numpy as np
import tensorflow as tf

from tflm.random import hash_uint64, uniform

# Independent random streams of one row.
_WORDS, _ACTIONS, _REPLACEMENTS = 1, 2, 3


def mask_batch(
    token_ids,
    row_keys,
    seed,
    vocabulary_size,
    mask_id,
    special_ids,
    max_predictions,
    mask_rate=0.15,
    mask_token_rate=0.8,
    random_token_rate=0.1,
    word_starts=None,
):
    """Chooses positions to predict and corrupts them, BERT style, for a batch.

    Per row, `round(mask_rate * n)` of the `n` maskable tokens (not special,
    not padding), at least one and at most `max_predictions`, are chosen
    uniformly; of those, `mask_token_rate` become `[MASK]`,
    `random_token_rate` a random non-special token, and the rest stay
    unchanged.

    With `word_starts` (whole-word masking), whole words are chosen, as BERT
    does: words in a random order, each taken if its tokens still fit within
    the count and skipped otherwise, so all pieces of a word are masked
    together or none.

    Args:
        token_ids: `(batch, T)` int32.
        row_keys: `(batch,)` integer keys of the rows (e.g. their stream index).
        seed: an integer seed.
        vocabulary_size, mask_id, special_ids: the tokenizer's.
        max_predictions: `P`, the fixed size of the outputs.
        mask_rate, mask_token_rate, random_token_rate: the rates above.
        word_starts: optional `(batch, T)` bool, True where a token begins a word.

    Returns:
        A dict: `token_ids` `(batch, T)` corrupted, `mask_positions`
        `(batch, P)` sorted, `mask_ids` `(batch, P)` original ids,
        `mask_weights` `(batch, P)` float32, 1 for real predictions and 0 for padding.
    """
    token_ids = tf.convert_to_tensor(token_ids, tf.int32)
    batch, length = tf.shape(token_ids)[0], tf.shape(token_ids)[1]
    special = tf.reduce_any(token_ids[:, :, None] == tf.constant(special_ids, tf.int32), axis=2)
    maskable = tf.logical_not(special)
    num_maskable = tf.reduce_sum(tf.cast(maskable, tf.int32), axis=1)
    # In float64, as BERT's `int(round(n * rate))`: float32 rounds e.g. 30 * 0.15 up to 5.
    rate = (tf.cast(mask_rate, tf.float64) if tf.is_tensor(mask_rate)
            else tf.constant(mask_rate, tf.float64))
    num_to_mask = tf.cast(tf.round(tf.cast(num_maskable, tf.float64) * rate), tf.int32)
    num_to_mask = tf.minimum(tf.maximum(num_to_mask, 1), tf.minimum(max_predictions, num_maskable))

    # Words (single tokens unless word_starts says otherwise); a word is
    # maskable when all its tokens are. Special tokens always stand alone.
    if word_starts is None:
        starts = tf.ones_like(special)
    else:
        starts = tf.convert_to_tensor(word_starts, tf.bool) | special
        starts = tf.concat([tf.ones_like(starts[:, :1]), starts[:, 1:]], axis=1)
    word_ids = tf.cumsum(tf.cast(starts, tf.int32), axis=1) - 1  # (batch, T), < T
    # Per-word sums over all rows at once: row r's word w is segment r * T + w.
    segments = word_ids + tf.range(batch)[:, None] * length
    num_segments = batch * length
    word_maskable = tf.reshape(tf.math.unsorted_segment_min(
        tf.cast(maskable, tf.int32), segments, num_segments), [batch, length]) > 0
    word_length = tf.reshape(tf.math.unsorted_segment_sum(
        tf.ones_like(word_ids), segments, num_segments), [batch, length])
    exists = word_length > 0  # slots beyond a row's last word are empty

    keys = tf.cast(row_keys, tf.int64)
    scores = uniform(keys, length, seed, _WORDS)
    order = tf.argsort(tf.where(word_maskable & exists, scores, 2.0), axis=1)
    ordered_length = tf.gather(tf.where(word_maskable & exists, word_length, length + 1), order,
                               batch_dims=1)
    # BERT's sequential rule, in passes: each takes, in order, the prefix of the
    # words not yet taken that fit the remaining budget (single tokens: one pass).
    taken = tf.zeros_like(ordered_length, tf.bool)
    for _ in range(1 if word_starts is None else 4):
        used = tf.reduce_sum(tf.where(taken, ordered_length, 0), axis=1, keepdims=True)
        budget = num_to_mask[:, None] - used
        candidate = tf.where(taken | (ordered_length > budget), 0, ordered_length)
        taken = taken | ((tf.cumsum(candidate, axis=1) <= budget) & (candidate > 0))
    word_chosen = tf.gather(taken, tf.argsort(order, axis=1), batch_dims=1)
    chosen = tf.gather(word_chosen, word_ids, batch_dims=1) & maskable  # (batch, T)

    # The chosen positions first, in order; then padding.
    count = tf.reduce_sum(tf.cast(chosen, tf.int32), axis=1)
    index = tf.range(length)[None, :]
    first_chosen = tf.argsort(tf.where(chosen, index, length + index), axis=1)
    positions = first_chosen[:, :max_predictions]
    positions = tf.pad(positions, [[0, 0], [0, max_predictions - tf.shape(positions)[1]]])
    valid = tf.range(max_predictions)[None, :] < count[:, None]
    positions = tf.where(valid, positions, 0)
    original = tf.where(valid, tf.gather(token_ids, positions, batch_dims=1), 0)

    action = uniform(keys, max_predictions, seed, _ACTIONS)
    # Random replacements are drawn from the non-special ids only, wherever those sit.
    ordinary = np.setdiff1d(np.arange(vocabulary_size), np.asarray(special_ids)).astype(np.int32)
    pick = uniform(keys, max_predictions, seed, _REPLACEMENTS) * len(ordinary)
    random_tokens = tf.gather(tf.constant(ordinary),
                              tf.minimum(tf.cast(pick, tf.int32), len(ordinary) - 1))
    replacement = tf.where(
        action < mask_token_rate,
        tf.cast(mask_id, tf.int32),
        tf.where(action < mask_token_rate + random_token_rate, random_tokens, original),
    )
    # Padding entries write back the token already there (position 0's).
    replacement = tf.where(valid, replacement, tf.gather(token_ids, positions, batch_dims=1))
    rows = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(positions))
    corrupted = tf.tensor_scatter_nd_update(
        token_ids, tf.stack([rows, positions], axis=-1), replacement)
    return {
        "token_ids": corrupted,
        "mask_positions": positions,
        "mask_ids": original,
        "mask_weights": tf.cast(valid, tf.float32),
    }


def mask_tokens(token_ids, seed, vocabulary_size, mask_id, special_ids, max_predictions,
                mask_rate=0.15, mask_token_rate=0.8, random_token_rate=0.1, word_starts=None):
    """`mask_batch` for one `(T,)` sequence; `seed` is a `(2,)` pair (seed, row key)."""
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    key = tf.cast(hash_uint64(tf.cast(seed[1:2], tf.uint64)), tf.int64)
    masked = mask_batch(
        tf.convert_to_tensor(token_ids, tf.int32)[None], key, seed[0], vocabulary_size, mask_id,
        special_ids, max_predictions, mask_rate, mask_token_rate, random_token_rate,
        None if word_starts is None else tf.convert_to_tensor(word_starts)[None],
    )
    return {name: value[0] for name, value in masked.items()}
