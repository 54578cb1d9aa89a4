"""Dynamic masking for masked-LM pretraining (BERT), as stateless TF ops."""

import numpy as np
import tensorflow as tf


def mask_tokens(
    token_ids,
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
    """Chooses positions to predict and corrupts them, BERT style.

    `round(mask_rate * n)` of the `n` maskable tokens (not special, not
    padding), at least one and at most `max_predictions`, are chosen
    uniformly; of those, `mask_token_rate` become `[MASK]`,
    `random_token_rate` a random non-special token, and the rest stay
    unchanged. The draw depends only on `seed`, so a pipeline that derives
    the seed from (run seed, element index) is deterministic and redraws
    masks every epoch.

    With `word_starts` (whole-word masking), whole words are chosen: words
    are taken in a random order while the total of their tokens stays within
    the count above, so all pieces of a word are masked together or none.

    Args:
        token_ids: `(T,)` int32, one sequence.
        seed: `(2,)` int32/int64 stateless seed.
        vocabulary_size: size of the vocabulary.
        mask_id: id of `[MASK]`.
        special_ids: ids never chosen and never drawn as random tokens.
        max_predictions: `P`, the fixed size of the outputs.
        mask_rate, mask_token_rate, random_token_rate: the rates above.
        word_starts: optional `(T,)` bool, True where a token begins a word
            (see `Tokenizer.word_starts`); `None` masks single tokens.

    Returns:
        A dict: `token_ids` `(T,)` corrupted, `mask_positions` `(P,)` sorted,
        `mask_ids` `(P,)` original ids, `mask_weights` `(P,)` float32, 1 for
        real predictions and 0 for padding.
    """
    token_ids = tf.convert_to_tensor(token_ids, tf.int32)
    length = tf.shape(token_ids)[0]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=3)
    special = tf.reduce_any(token_ids[:, None] == tf.constant(special_ids, tf.int32)[None], axis=1)
    maskable = tf.logical_not(special)
    num_maskable = tf.reduce_sum(tf.cast(maskable, tf.int32))
    # In float64, as BERT's `int(round(n * rate))`: float32 rounds e.g. 30 * 0.15 up to 5.
    rate = tf.cast(mask_rate, tf.float64) if tf.is_tensor(mask_rate) else tf.constant(
        mask_rate, tf.float64
    )
    num_to_mask = tf.cast(tf.round(tf.cast(num_maskable, tf.float64) * rate), tf.int32)
    num_to_mask = tf.minimum(tf.maximum(num_to_mask, 1), tf.minimum(max_predictions, num_maskable))

    # Words (single tokens unless word_starts says otherwise); a word is
    # maskable when all its tokens are. Special tokens always stand alone.
    if word_starts is None:
        starts = tf.ones([length], tf.bool)
    else:
        starts = tf.convert_to_tensor(word_starts, tf.bool) | special
        starts = tf.concat([[True], starts[1:]], axis=0)  # the first token starts a word
    word_ids = tf.cumsum(tf.cast(starts, tf.int32)) - 1
    num_words = tf.reduce_max(word_ids) + 1
    word_maskable = tf.math.unsorted_segment_min(tf.cast(maskable, tf.int32), word_ids, num_words) > 0
    word_length = tf.math.unsorted_segment_sum(tf.ones([length], tf.int32), word_ids, num_words)

    # Words in a random order; like BERT, take each word whose tokens still fit
    # within num_to_mask and skip the ones that do not. The sequential rule is
    # computed in passes: each pass takes, in order, the prefix of the words
    # not yet taken that fit the remaining budget (single tokens: one pass).
    scores = tf.random.stateless_uniform([num_words], seed=seeds[0])
    order = tf.argsort(tf.where(word_maskable, scores, 2.0))
    ordered_length = tf.gather(tf.where(word_maskable, word_length, length + 1), order)
    taken = tf.zeros([num_words], tf.bool)
    for _ in range(1 if word_starts is None else 4):
        budget = num_to_mask - tf.reduce_sum(tf.where(taken, ordered_length, 0))
        candidate_length = tf.where(taken | (ordered_length > budget), 0, ordered_length)
        fits = (tf.cumsum(candidate_length) <= budget) & (candidate_length > 0)
        taken = taken | fits
    word_chosen = tf.scatter_nd(order[:, None], taken, [num_words])
    chosen = tf.cast(tf.where(tf.gather(word_chosen, word_ids) & maskable)[:, 0], tf.int32)
    num_chosen = tf.shape(chosen)[0]

    original = tf.gather(token_ids, chosen)
    action = tf.random.stateless_uniform([num_chosen], seed=seeds[1])
    # Random replacements are drawn from the non-special ids only, wherever those sit.
    ordinary = np.setdiff1d(np.arange(vocabulary_size), np.asarray(special_ids)).astype(np.int32)
    random_tokens = tf.gather(
        tf.constant(ordinary),
        tf.random.stateless_uniform(
            [num_chosen], seed=seeds[2], minval=0, maxval=len(ordinary), dtype=tf.int32
        ),
    )
    replacement = tf.where(
        action < mask_token_rate,
        tf.fill([num_chosen], tf.constant(mask_id, tf.int32)),
        tf.where(action < mask_token_rate + random_token_rate, random_tokens, original),
    )
    corrupted = tf.tensor_scatter_nd_update(token_ids, chosen[:, None], replacement)

    pad = max_predictions - num_chosen
    return {
        "token_ids": corrupted,
        "mask_positions": tf.pad(chosen, [[0, pad]]),
        "mask_ids": tf.pad(original, [[0, pad]]),
        "mask_weights": tf.pad(tf.ones([num_chosen], tf.float32), [[0, pad]]),
    }
