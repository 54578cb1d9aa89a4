"""Dynamic masking for masked-LM pretraining (BERT), as stateless TF ops."""

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
):
    """Chooses positions to predict and corrupts them, BERT style.

    `mask_rate` of the maskable tokens (not special, not padding), at least
    one and at most `max_predictions`, are chosen uniformly; of those,
    `mask_token_rate` become `[MASK]`, `random_token_rate` a random
    non-special token, and the rest stay unchanged. The draw depends only on
    `seed`, so a pipeline that derives the seed from (run seed, element index)
    is deterministic and redraws masks every epoch.

    Args:
        token_ids: `(T,)` int32, one sequence.
        seed: `(2,)` int32/int64 stateless seed.
        vocabulary_size: size of the vocabulary.
        mask_id: id of `[MASK]`.
        special_ids: ids never chosen and never drawn as random tokens; the
            non-special ids must be `[len(special_ids), vocabulary_size)`.
        max_predictions: `P`, the fixed size of the outputs.
        mask_rate, mask_token_rate, random_token_rate: the rates above.

    Returns:
        A dict: `token_ids` `(T,)` corrupted, `mask_positions` `(P,)`,
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

    # A random ranking of the maskable positions; the first num_to_mask are chosen.
    scores = tf.random.stateless_uniform([length], seed=seeds[0])
    scores = tf.where(maskable, scores, 2.0)
    k = tf.minimum(max_predictions, length)
    _, order = tf.math.top_k(-scores, k=k)
    chosen = tf.sort(order[:num_to_mask])

    original = tf.gather(token_ids, chosen)
    action = tf.random.stateless_uniform(tf.shape(chosen), seed=seeds[1])
    num_special = len(special_ids)
    random_tokens = tf.random.stateless_uniform(
        tf.shape(chosen), seed=seeds[2], minval=num_special, maxval=vocabulary_size, dtype=tf.int32
    )
    replacement = tf.where(
        action < mask_token_rate,
        tf.fill(tf.shape(chosen), tf.constant(mask_id, tf.int32)),
        tf.where(action < mask_token_rate + random_token_rate, random_tokens, original),
    )
    corrupted = tf.tensor_scatter_nd_update(token_ids, chosen[:, None], replacement)

    pad = max_predictions - num_to_mask
    return {
        "token_ids": corrupted,
        "mask_positions": tf.pad(chosen, [[0, pad]]),
        "mask_ids": tf.pad(original, [[0, pad]]),
        "mask_weights": tf.pad(tf.ones_like(chosen, tf.float32), [[0, pad]]),
    }
