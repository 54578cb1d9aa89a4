"""Denoising objectives for encoder-decoder pretraining: T5 span corruption and
BART text infilling, vectorized over a batch.

As in `tflm.data.masking`, every random number comes from `tflm.random.uniform`
keyed by each row's key: a row's noise depends only on `(seed, row key)`, never
on the rows batched with it, so a pipeline that keys rows by their position in
the (repeated) stream is deterministic and draws new noise every epoch. Both
functions are TF ops only and run inside `tf.data.Dataset.map`.

Rows are token ids without padding: a `(T,)` row, a `(batch, T)` batch of
full rows, or a `tf.RaggedTensor` `(batch, None)` of rows of any lengths.
Outputs are ragged (one row per input row, or a 1-D tensor for a 1-D row)
unless static lengths are asked for; then they are dense, padded with `pad_id`
after each row's end, and a row that does not fit fails with an
`InvalidArgumentError` naming the length argument (nothing is cut silently).

tflm's vocabularies have no T5 sentinels (`<extra_id_N>`): the tokenizer must
reserve their ids (as special tokens, so that text never produces them) and
the caller passes them in. BART's `<mask>` can be the tokenizer's `mask_id`.
"""

import math

import numpy as np
import tensorflow as tf

from tflm.config import ConfigError
from tflm.random import uniform

# Independent random streams of one row.
_NOISE_SPANS, _KEPT_SPANS, _SPAN_LENGTHS, _PLACES, _SENTENCES = 11, 12, 13, 14, 15


# --- T5 span corruption ------------------------------------------------------------------


def _span_counts(length, noise_density, mean_noise_span_length):
    """T5's counts for a row of `length` (>= 2): (noise tokens, noise spans).

    Python floats are float64 and `round` rounds half to even, as `tf.round` on
    the float64 tensors of `_t5_noise_mask`: the static lengths always match.
    """
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = max(round(num_noise / mean_noise_span_length), 1)
    # T5 has no such bound; without it a mean below 1 would ask for more spans than tokens.
    return num_noise, min(num_spans, num_noise, length - num_noise)


def span_corruption_lengths(length, noise_density=0.15, mean_noise_span_length=3.0,
                            end_token=True):
    """The exact `(inputs, targets)` lengths that `span_corruption` makes of a row.

    A row's lengths depend on its length only, so rows of one length give
    batches of static shape. As T5's `random_spans_helper` (the other way
    round: `span_corruption_row_length`).

    Args:
        length: the number of tokens in the row.
        noise_density, mean_noise_span_length: as for `span_corruption`.
        end_token: whether an end id is appended to both (`end_id` given).
    """
    _check_t5_args(noise_density, mean_noise_span_length)
    end = int(bool(end_token))
    if length < 2:  # T5: a row of one token keeps it, the targets are one sentinel
        return length + end, length + end
    num_noise, num_spans = _span_counts(length, noise_density, mean_noise_span_length)
    return length - num_noise + num_spans + end, num_noise + num_spans + end


def span_corruption_row_length(inputs_length, noise_density=0.15, mean_noise_span_length=3.0,
                               end_token=True):
    """The longest row whose corrupted inputs fit `inputs_length`, and its targets' length.

    T5's `random_spans_helper`: pack the text into rows of the returned
    length and the inputs fill `inputs_length` (T5's default: 512 -> rows of
    568 tokens, targets of 114).

    Returns:
        `(row_length, targets_length)`.
    """
    row_length = 1
    while span_corruption_lengths(row_length + 1, noise_density, mean_noise_span_length,
                                  end_token)[0] <= inputs_length:
        row_length += 1
    if span_corruption_lengths(row_length, noise_density, mean_noise_span_length,
                               end_token)[0] > inputs_length:
        raise ConfigError(f"inputs_length={inputs_length} is too short for span corruption.")
    return row_length, span_corruption_lengths(
        row_length, noise_density, mean_noise_span_length, end_token)[1]


def _check_t5_args(noise_density, mean_noise_span_length):
    if not 0.0 < noise_density < 1.0:
        raise ConfigError(f"noise_density={noise_density} must be in (0, 1).")
    if not mean_noise_span_length >= 1.0:
        raise ConfigError(f"mean_noise_span_length={mean_noise_span_length} must be >= 1.")


def _random_segmentation(num_items, num_segments, width, keys, seed, stream):
    """T5's `_random_segmentation`, per row: `num_items` split into `num_segments`
    non-empty segments uniformly at random; `(batch, width)` segment lengths,
    zero after the last segment.

    T5 shuffles `num_segments - 1` ones among the `num_items - 1` gaps
    between items; here the same uniform choice of gaps: those ranked first
    by a random score.
    """
    batch = tf.shape(keys)[0]
    gap = tf.range(width - 1)[None, :]
    scores = tf.where(gap < num_items[:, None] - 1, uniform(keys, width - 1, seed, stream), 2.0)
    # Stable: ties of the scores broken by position, the same in any batch.
    rank = tf.argsort(tf.argsort(scores, axis=1, stable=True), axis=1)
    starts = tf.cast(rank < num_segments[:, None] - 1, tf.int32)
    segment = tf.cumsum(tf.pad(starts, [[0, 0], [1, 0]]), axis=1)  # (batch, width)
    present = tf.cast(tf.range(width)[None, :] < num_items[:, None], tf.int32)
    # Per-segment sums over all rows at once: row r's segment s is r * width + s.
    lengths = tf.math.unsorted_segment_sum(
        present, segment + tf.range(batch)[:, None] * width, batch * width)
    return tf.reshape(lengths, [batch, width])


def _t5_noise_mask(lengths, width, keys, seed, noise_density, mean_noise_span_length):
    """T5's `random_spans_noise_mask` for each row: `(batch, width)` bool, True on noise.

    A row alternates kept and noise spans, kept first and noise last, with
    span lengths from `_random_segmentation`.
    """
    batch = tf.shape(keys)[0]
    full = tf.maximum(lengths, 2)  # as T5: a row of one token is a row of two, cut back
    # T5's counts, in float64 so that they agree with `span_corruption_lengths`.
    num_noise = tf.cast(tf.round(tf.cast(full, tf.float64) * noise_density), tf.int32)
    num_noise = tf.clip_by_value(num_noise, 1, full - 1)
    num_spans = tf.cast(
        tf.round(tf.cast(num_noise, tf.float64) / mean_noise_span_length), tf.int32)
    num_spans = tf.minimum(tf.maximum(num_spans, 1), tf.minimum(num_noise, full - num_noise))
    wide = tf.maximum(width, 2)
    noise = _random_segmentation(num_noise, num_spans, wide, keys, seed, _NOISE_SPANS)
    kept = _random_segmentation(full - num_noise, num_spans, wide, keys, seed, _KEPT_SPANS)
    interleaved = tf.reshape(tf.stack([kept, noise], axis=2), [batch, 2 * wide])
    # A position's span number counts the span starts at or before it; odd spans are noise.
    span_starts = tf.cumsum(interleaved, axis=1)[:, :-1]
    positions = tf.broadcast_to(tf.range(wide)[None, :], [batch, wide])
    span_number = tf.searchsorted(span_starts, positions, side="right")
    return tf.equal(span_number % 2, 1)[:, :width]


def _to_unique_sentinels(token_ids, noise, sentinel_ids):
    """T5's `noise_span_to_unique_sentinel`: each noise span becomes its sentinel.

    Returns `(values, keep)`: the row with each span's first token replaced
    by the span's sentinel (the n-th span's is `sentinel_ids[n]`), and True
    where the result keeps a position (all but a span's later tokens).
    """
    previous = tf.pad(noise[:, :-1], [[0, 0], [1, 0]])
    first = noise & ~previous
    index = tf.cumsum(tf.cast(first, tf.int32), axis=1) - 1
    needed = tf.reduce_max(index) + 1
    with tf.control_dependencies([tf.debugging.assert_less_equal(
            needed, tf.size(sentinel_ids),
            message="span_corruption: more noise spans than sentinel_ids; pass more sentinels")]):
        sentinels = tf.gather(sentinel_ids, tf.maximum(index, 0))
    return tf.where(first, sentinels, token_ids), ~(noise & previous)


def span_corruption(token_ids, row_keys, seed, sentinel_ids, noise_density=0.15,
                    mean_noise_span_length=3.0, end_id=None, pad_id=0, inputs_length=None,
                    targets_length=None):
    """T5's span corruption (`t5.data.preprocessors.span_corruption`) of rows.

    Per row of `n` tokens, `round(n * noise_density)` tokens (at least 1, at
    most `n - 1`) are noise, in `max(1, round(noise / mean_noise_span_length))`
    spans; kept and noise spans alternate, kept first, with lengths from a
    uniformly random segmentation, exactly as T5's `random_spans_noise_mask`
    (the same distribution; the random numbers are tflm's own). Then

        inputs:  the kept tokens, each noise span replaced by one sentinel,
        targets: each sentinel followed by the tokens of its span,

    e.g. `a b c d e f` with noise `c d` and `f` gives inputs
    `a b <s0> e <s1>` and targets `<s0> c d <s1> f`. The n-th span (from 0)
    gets `sentinel_ids[n]`, so the targets alone read back the spans in order.

    Args:
        token_ids: a `(T,)` row, a `(batch, T)` batch or a ragged `(batch, None)`
            batch of token ids, without padding.
        row_keys: the row's integer key, or `(batch,)` keys (e.g. stream indices).
        seed: an integer seed.
        sentinel_ids: ids the tokenizer reserves for sentinels (a list or a 1-D
            tensor), at least one per noise span of the longest row:
            `round(round(T * noise_density) / mean_noise_span_length)`.
        noise_density, mean_noise_span_length: T5's 0.15 and 3.0 by default.
        end_id: an id appended to both inputs and targets (T5's EOS), or None.
        pad_id: fills padded outputs.
        inputs_length, targets_length: static lengths to pad the outputs to;
            `span_corruption_lengths` gives the exact ones for a row length.

    Returns:
        A dict with `inputs` and `targets`: ragged `(batch, None)` (1-D for a
        1-D row), or dense `(batch, inputs_length)` / `(batch, targets_length)`
        padded with `pad_id`.
    """
    _check_t5_args(noise_density, mean_noise_span_length)
    sentinel_ids = tf.convert_to_tensor(sentinel_ids, tf.int32)
    if sentinel_ids.shape.rank != 1 or sentinel_ids.shape[0] == 0:
        raise ConfigError("sentinel_ids must be a non-empty list of token ids.")
    token_ids, lengths, keys, single = _as_batch(token_ids, row_keys)
    width = tf.shape(token_ids)[1]
    valid = tf.range(width)[None, :] < lengths[:, None]
    noise = _t5_noise_mask(lengths, width, keys, seed, noise_density,
                           mean_noise_span_length) & valid
    inputs, keep_inputs = _to_unique_sentinels(token_ids, noise, sentinel_ids)
    targets, keep_targets = _to_unique_sentinels(token_ids, valid & ~noise, sentinel_ids)
    return {
        "inputs": _finish(inputs, keep_inputs & valid, end_id, pad_id, inputs_length,
                          "inputs_length", single),
        "targets": _finish(targets, keep_targets & valid, end_id, pad_id, targets_length,
                           "targets_length", single),
    }


# --- BART text infilling -----------------------------------------------------------------


def _poisson(u, rate):
    """Poisson(`rate`) samples from uniforms `u`, by inverting the CDF (a table
    running until its tail is below the uniforms' 2**-24 resolution)."""
    last = int(rate + 12.0 * math.sqrt(rate) + 12.0)
    k = np.arange(last + 1)
    log_pmf = k * math.log(rate) - rate - np.array([math.lgamma(i + 1.0) for i in k])
    cdf = tf.constant(np.cumsum(np.exp(log_pmf))[:-1], tf.float32)
    # The sample is the number of CDF steps below u.
    return tf.searchsorted(tf.broadcast_to(cdf, [tf.shape(u)[0], last]), u, side="left")


def _permute_sentences(token_ids, valid, keys, seed, sentence_end_ids):
    """BART's sentence permutation: sentences (each ending at one of
    `sentence_end_ids`, the last one wherever the row ends) in a random order."""
    ends = tf.reduce_any(
        token_ids[:, :, None] == tf.constant(sentence_end_ids, tf.int32), axis=2) & valid
    sentence = tf.cumsum(tf.cast(ends, tf.int32), axis=1, exclusive=True)
    scores = tf.gather(uniform(keys, tf.shape(token_ids)[1], seed, _SENTENCES), sentence,
                       batch_dims=1)
    # A stable sort by the sentences' scores keeps each sentence's tokens in order.
    order = tf.argsort(tf.where(valid, scores, 2.0), axis=1, stable=True)
    return tf.gather(token_ids, order, batch_dims=1)


def text_infilling(token_ids, row_keys, seed, mask_id, mask_ratio=0.3, poisson_lambda=3.0,
                   sentence_end_ids=None, end_id=None, pad_id=0, inputs_length=None,
                   targets_length=None):
    """BART's text infilling (with optional sentence permutation) of rows.

    Per row of `n` tokens, `ceil(n * mask_ratio)` tokens are masked, in spans
    with lengths drawn from Poisson(`poisson_lambda`) until they cover that
    many (the last span cut to fit), as fairseq's BART denoising does. Each
    span becomes ONE `mask_id`; a span of length 0 inserts a `mask_id`. Spans
    are placed uniformly at random without overlapping (two may touch: then
    two masks stand together, one per span), so exactly that many tokens are
    masked. Spans are over tokens, not whole words.

    With `sentence_end_ids`, the row's sentences are first shuffled (BART's
    sentence permutation); the targets are always the original row.

    Args:
        token_ids: a `(T,)` row, a `(batch, T)` batch or a ragged `(batch, None)`
            batch of token ids, without padding.
        row_keys: the row's integer key, or `(batch,)` keys (e.g. stream indices).
        seed: an integer seed.
        mask_id: the tokenizer's mask id (BART's `<mask>`).
        mask_ratio: the fraction of tokens to mask (BART: 0.3).
        poisson_lambda: the mean span length (BART: 3).
        sentence_end_ids: a list of ids that end a sentence (e.g. the id of ".") to
            permute sentences, or None for no permutation.
        end_id: an id appended to both inputs and targets, or None.
        pad_id: fills padded outputs.
        inputs_length, targets_length: static lengths to pad the outputs to.
            The inputs are `n - masked + spans` long, shorter than the row
            unless zero-length spans outnumber the others (short rows):
            leave a few positions of slack.

    Returns:
        A dict with `inputs` and `targets`: ragged `(batch, None)` (1-D for a
        1-D row), or dense `(batch, inputs_length)` / `(batch, targets_length)`
        padded with `pad_id`.
    """
    if not 0.0 <= mask_ratio <= 1.0:
        raise ConfigError(f"mask_ratio={mask_ratio} must be in [0, 1].")
    if not poisson_lambda > 0.0:
        raise ConfigError(f"poisson_lambda={poisson_lambda} must be positive.")
    token_ids, lengths, keys, single = _as_batch(token_ids, row_keys)
    width = tf.shape(token_ids)[1]
    valid = tf.range(width)[None, :] < lengths[:, None]
    source = token_ids
    if sentence_end_ids is not None:
        source = _permute_sentences(token_ids, valid, keys, seed, list(sentence_end_ids))

    # Span lengths: Poisson draws until their sum reaches the budget, at most one
    # per token of the row (were those all too short, the last takes the rest:
    # rare, and then still a function of the row alone, not of the batch's width).
    num_masked = tf.cast(tf.math.ceil(tf.cast(lengths, tf.float64) * mask_ratio), tf.int32)
    draws = _poisson(uniform(keys, width, seed, _SPAN_LENGTHS), poisson_lambda)
    before = tf.cumsum(draws, axis=1, exclusive=True)
    slot = tf.range(width)[None, :]
    num_spans = tf.reduce_sum(
        tf.cast((before < num_masked[:, None]) & (slot < lengths[:, None]), tf.int32), axis=1)
    span_lengths = tf.where(slot < num_spans[:, None] - 1, draws,
                            tf.where(slot == num_spans[:, None] - 1,
                                     num_masked[:, None] - before, 0))

    # The infilled row is a sequence of items, each span one mask and each kept
    # token itself; the spans take a uniformly random subset of the item slots.
    num_items = lengths - num_masked + num_spans
    item = tf.range(2 * width)[None, :]
    present = item < num_items[:, None]
    scores = tf.where(present, uniform(keys, 2 * width, seed, _PLACES), 2.0)
    is_span = tf.argsort(tf.argsort(scores, axis=1, stable=True), axis=1) < num_spans[:, None]
    span_index = tf.cumsum(tf.cast(is_span, tf.int32), axis=1) - 1
    consumed = tf.where(is_span, tf.gather(span_lengths, tf.maximum(span_index, 0),
                                           batch_dims=1), 1)
    start = tf.cumsum(tf.where(present, consumed, 0), axis=1, exclusive=True)
    kept = tf.gather(source, tf.minimum(start, width - 1), batch_dims=1)
    inputs = tf.where(is_span, tf.cast(mask_id, tf.int32), kept)
    return {
        "inputs": _finish(inputs, present, end_id, pad_id, inputs_length, "inputs_length",
                          single),
        "targets": _finish(token_ids, valid, end_id, pad_id, targets_length, "targets_length",
                           single),
    }


# --- shared ------------------------------------------------------------------------------


def _as_batch(token_ids, row_keys):
    """`(batch, T)` int32 ids, `(batch,)` lengths, `(batch,)` int64 keys, and
    whether the input was one 1-D row."""
    if isinstance(token_ids, tf.RaggedTensor):
        lengths = tf.cast(token_ids.row_lengths(), tf.int32)
        token_ids = tf.cast(token_ids.to_tensor(0), tf.int32)
        single = False
    else:
        token_ids = tf.convert_to_tensor(token_ids)
        if token_ids.shape.rank not in (1, 2):
            raise ConfigError(f"token_ids must be a row or a batch of rows, not shape "
                              f"{token_ids.shape}.")
        single = token_ids.shape.rank == 1
        token_ids = tf.cast(token_ids[None] if single else token_ids, tf.int32)
        lengths = tf.fill([tf.shape(token_ids)[0]], tf.shape(token_ids)[1])
    keys = tf.reshape(tf.cast(row_keys, tf.int64), [-1])
    keys = tf.broadcast_to(keys, tf.shape(lengths))
    return token_ids, lengths, keys, single


def _finish(values, keep, end_id, pad_id, length, name, single):
    """The kept entries of each row, then `end_id`; ragged, or padded to `length`."""
    rows = tf.ragged.boolean_mask(values, keep)
    if end_id is not None:
        end = tf.fill([rows.nrows(), 1], tf.cast(end_id, tf.int32))
        rows = tf.concat([rows, tf.RaggedTensor.from_tensor(end)], axis=1)
    if length is not None:
        check = tf.debugging.assert_less_equal(
            tf.reduce_max(tf.concat([rows.row_lengths(), [0]], 0)), tf.cast(length, tf.int64),
            message=f"a noised row is longer than {name}={length}")
        with tf.control_dependencies([check]):
            rows = rows.to_tensor(tf.cast(pad_id, tf.int32), shape=[None, length])
    return rows[0] if single else rows
