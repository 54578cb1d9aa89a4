import math

import numpy as np
import pytest
import tensorflow as tf

from tflm.config import ConfigError
from tflm.data import (
    span_corruption,
    span_corruption_lengths,
    span_corruption_row_length,
    text_infilling,
)
from tflm.data.noising import _poisson

SENTINELS = list(range(1, 65))  # ids 1..64 reserved; ordinary tokens are >= 100
END, PAD, MASK = 99, 0, 70


def _rows(count, max_length, seed=0, min_length=0):
    """Ragged rows of distinct ordinary tokens (so positions can be read back)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_length, max_length + 1, count)
    return [100 + rng.permutation(1000)[:n] for n in lengths]


def _split_t5(sequence):
    """`[(sentinel, tokens after it up to the next sentinel)]` and the tokens before the first."""
    head, parts = [], []
    for token in sequence:
        if token in SENTINELS:
            parts.append((token, []))
        elif parts:
            parts[-1][1].append(token)
        else:
            head.append(token)
    return head, parts


def _reconstruct_t5(inputs, targets):
    """The original row from T5 inputs and targets: each sentinel in the inputs
    replaced by the tokens that follow the same sentinel in the targets."""
    head, spans = _split_t5(targets)
    assert head == [], "targets start with a sentinel"
    spans = dict(spans)
    row = []
    for token in inputs:
        row.extend(spans[token] if token in SENTINELS else [token])
    return row


def test_span_corruption_reconstructs_every_row_with_the_predicted_lengths():
    rows = _rows(300, 120) + [np.array([], int), np.array([123]), np.array([124, 125])]
    out = span_corruption(tf.ragged.constant(rows, tf.int32), tf.range(len(rows)), seed=3,
                          sentinel_ids=SENTINELS, end_id=END)
    for i, row in enumerate(rows):
        inputs, targets = out["inputs"][i].numpy().tolist(), out["targets"][i].numpy().tolist()
        assert (len(inputs), len(targets)) == span_corruption_lengths(len(row)), len(row)
        assert inputs[-1] == END and targets[-1] == END
        inputs, targets = inputs[:-1], targets[:-1]
        assert _reconstruct_t5(inputs, targets) == row.tolist()
        # The n-th span gets the n-th sentinel, in the inputs and in the targets.
        used = [t for t in inputs if t in SENTINELS]
        assert used == SENTINELS[: len(used)]
        if len(row) == 1:  # as T5: the token kept, the targets one empty span's sentinel
            assert inputs == row.tolist() and targets == SENTINELS[:1]
        else:
            assert [t for t in targets if t in SENTINELS] == used
        if len(row) >= 2:
            num_noise = min(max(round(len(row) * 0.15), 1), len(row) - 1)
            assert len(targets) - len(used) == num_noise
            assert len(used) == min(max(round(num_noise / 3.0), 1), num_noise)
            assert inputs[-1] in SENTINELS, "as in T5, the row ends with a noise span"


def test_span_lengths_follow_a_uniform_random_segmentation():
    # Rows of 100: 15 noise tokens in 5 spans. T5's segmentation makes every split
    # into 5 non-empty spans equally likely: P(span = j) = C(N-1-j, k-2) / C(N-1, k-1).
    draws, length, noise, spans = 2000, 100, 15, 5
    out = span_corruption(tf.broadcast_to(tf.range(100, 100 + length), [draws, length]),
                          tf.range(draws), seed=1, sentinel_ids=SENTINELS)
    targets = out["targets"].numpy()  # rows of one length: dense after all
    first_span = []
    for row in targets:
        _, parts = _split_t5(row.tolist())
        assert len(parts) == spans and sum(len(p) for _, p in parts) == noise
        first_span.append(len(parts[0][1]))
    first_span = np.array(first_span)
    for j in range(1, 7):
        p = math.comb(noise - 1 - j, spans - 2) / math.comb(noise - 1, spans - 1)
        tolerance = 4 * math.sqrt(p * (1 - p) / draws)
        assert abs(np.mean(first_span == j) - p) < tolerance, j
    # The realised density and mean span length over all rows: the config's.
    assert abs(noise / length - 0.15) < 1e-9 and noise / spans == 3.0


def test_span_corruption_static_shapes_and_one_row():
    inputs_length, targets_length = span_corruption_lengths(64, end_token=True)
    assert (inputs_length, targets_length) == (64 - 10 + 3 + 1, 10 + 3 + 1)
    batch = tf.reshape(tf.range(100, 100 + 4 * 64), [4, 64])
    out = span_corruption(batch, tf.range(4), 0, SENTINELS, end_id=END,
                          inputs_length=inputs_length, targets_length=targets_length)
    assert out["inputs"].shape == (4, inputs_length) and out["targets"].shape == (4, targets_length)
    assert np.all(out["inputs"].numpy() != PAD), "rows of the helper's length fill it exactly"
    # A 1-D row gives the 1-D result of the same row key in a batch.
    one = span_corruption(batch[2], 2, 0, SENTINELS, end_id=END)
    np.testing.assert_array_equal(one["inputs"].numpy(), out["inputs"][2].numpy())
    np.testing.assert_array_equal(one["targets"].numpy(), out["targets"][2].numpy())
    # Shorter rows are padded; a row longer than asked is an error, not cut.
    short = span_corruption(tf.ragged.constant([list(range(100, 110))]), [0], 0, SENTINELS,
                            inputs_length=20, targets_length=20)
    assert short["inputs"].shape == (1, 20) and short["inputs"][0, -1] == PAD
    with pytest.raises(tf.errors.InvalidArgumentError, match="inputs_length=50"):
        span_corruption(batch, tf.range(4), 0, SENTINELS, inputs_length=50, targets_length=20)


def test_t5_row_length_helper_matches_t5():
    # t5.data.preprocessors.random_spans_helper(512, 0.15, 3.0): tokens_length 568, targets 114.
    assert span_corruption_row_length(512) == (568, 114)
    row_length, targets_length = span_corruption_row_length(128)
    assert span_corruption_lengths(row_length)[0] <= 128 < span_corruption_lengths(row_length + 1)[0]
    assert span_corruption_lengths(row_length)[1] == targets_length


def test_noise_is_keyed_by_seed_and_row_key_only():
    rows = tf.reshape(tf.range(100, 100 + 8 * 60), [8, 60])
    keys = tf.constant([5, 6, 7, 8, 9, 10, 11, 12], tf.int64)
    for noise in (lambda r, k, s: span_corruption(r, k, s, SENTINELS),
                  lambda r, k, s: text_infilling(r, k, s, MASK, sentence_end_ids=[110])):
        first = noise(rows, keys, 1)["inputs"].to_list()
        assert noise(rows, keys, 1)["inputs"].to_list() == first
        # The same row key gives the same noise whatever else is in the batch.
        alone = noise(rows[3:4], keys[3:4], 1)["inputs"].to_list()
        assert alone == first[3:4]
        rows_again = tf.broadcast_to(rows[0], [8, 60])
        by_key = noise(rows_again, keys, 1)["inputs"].to_list()
        assert len({tuple(r) for r in by_key}) > 4, "different keys, different noise"
        assert noise(rows, keys, 2)["inputs"].to_list() != first, "another seed"
    # Short rows alone, or ragged beside a long one: each row's noise is its own.
    for short in ([[100]] * 80, [list(range(100, 100 + n)) for n in range(1, 5)] * 20):
        keys = tf.range(len(short))
        for noise in (lambda r: span_corruption(r, keys, 1, SENTINELS)["inputs"],
                      lambda r: text_infilling(r, keys, 1, MASK)["inputs"]):
            wide = noise(tf.ragged.constant(short[:-1] + [list(range(100, 160))])).to_list()
            assert wide[:-1] == noise(tf.ragged.constant(short)).to_list()[:-1]


def test_inside_dataset_map_static_shapes_and_new_noise_each_epoch():
    length = 40
    rows = np.arange(100, 100 + 6 * length, dtype=np.int32).reshape(6, length)
    inputs_length, targets_length = span_corruption_lengths(length, end_token=True)
    # Rows keyed by their index in the repeated stream: epoch 2 has keys 6..11.
    ds = tf.data.Dataset.from_tensor_slices(rows).repeat(2).enumerate().batch(3)

    def corrupt(index, batch):
        return span_corruption(batch, index, 4, SENTINELS, end_id=END,
                               inputs_length=inputs_length, targets_length=targets_length)

    ds = ds.map(corrupt)
    assert ds.element_spec["inputs"].shape.as_list() == [None, inputs_length]
    assert ds.element_spec["targets"].shape.as_list() == [None, targets_length]
    batches = list(ds.as_numpy_iterator())
    inputs = np.concatenate([b["inputs"] for b in batches])
    direct = corrupt(tf.range(12), np.concatenate([rows, rows]))["inputs"].numpy()
    np.testing.assert_array_equal(inputs, direct)
    assert not np.array_equal(inputs[:6], inputs[6:]), "epoch 2 draws new noise"

    infill = tf.data.Dataset.from_tensor_slices(rows).enumerate().map(
        lambda i, row: text_infilling(row, i, 4, MASK, inputs_length=length,
                                      targets_length=length))
    assert infill.element_spec["inputs"].shape.as_list() == [length]
    first = next(iter(infill))
    np.testing.assert_array_equal(first["targets"].numpy(), rows[0])


def _expected_span_count(num_masked, rate, draws, rng):
    """The mean number of spans by the same rule, with NumPy's Poisson."""
    counts = []
    for _ in range(draws):
        total, spans = 0, 0
        while total < num_masked:
            total += rng.poisson(rate)
            spans += 1
        counts.append(spans)
    return np.mean(counts), np.std(counts)


def test_text_infilling_masks_the_ratio_one_mask_per_span():
    draws, length = 1000, 50
    rows = [100 + np.random.default_rng(i).permutation(1000)[:length] for i in range(draws)]
    out = text_infilling(tf.constant(np.stack(rows)), tf.range(draws), seed=9, mask_id=MASK,
                         end_id=END)
    num_masked = math.ceil(length * 0.3)
    span_counts = []
    for row, inputs, targets in zip(rows, out["inputs"].to_list(), out["targets"].to_list()):
        assert targets == row.tolist() + [END], "the target is the original row"
        assert inputs[-1] == END
        inputs = inputs[:-1]
        kept = [t for t in inputs if t != MASK]
        position = {t: i for i, t in enumerate(row)}
        kept_at = [position[t] for t in kept]
        assert kept_at == sorted(kept_at), "kept tokens keep their order"
        assert len(row) - len(kept) == num_masked, "exactly ceil(n * ratio) masked"
        # Every stretch of removed tokens is marked by at least one mask in its place.
        marks = np.cumsum([t != MASK for t in inputs])
        bounds = [-1] + kept_at + [len(row)]
        masks_in_gap = np.bincount(marks[[t == MASK for t in inputs]], minlength=len(bounds) - 1)
        for gap, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            assert b - a - 1 == 0 or masks_in_gap[gap] >= 1
        span_counts.append(inputs.count(MASK))
    mean, std = _expected_span_count(num_masked, 3.0, 4000, np.random.default_rng(0))
    assert abs(np.mean(span_counts) - mean) < 4 * std * math.sqrt(1 / draws + 1 / 4000)


def test_poisson_span_lengths():
    u = tf.random.stateless_uniform([1, 100_000], seed=[0, 1])
    for rate in (3.0, 0.5):
        samples = _poisson(u, rate).numpy()
        tolerance = 4 * math.sqrt(rate / samples.size)
        assert abs(samples.mean() - rate) < tolerance
        assert abs(samples.var() - rate) < 10 * tolerance
        assert abs(np.mean(samples == 0) - math.exp(-rate)) < 0.01


def test_sentence_permutation_shuffles_whole_sentences():
    full_stop = 110
    row = [101, 102, full_stop, 103, full_stop, 104, 105, 106, full_stop, 107, full_stop, 108]
    out = text_infilling(tf.broadcast_to(tf.constant(row), [50, len(row)]), tf.range(50), 0,
                         MASK, mask_ratio=0.0, sentence_end_ids=[full_stop])

    def sentences(tokens):
        parts, current = [], []
        for t in tokens:
            current.append(t)
            if t == full_stop:
                parts.append(tuple(current))
                current = []
        return parts + ([tuple(current)] if current else [])

    orders = set()
    for inputs in out["inputs"].to_list():
        assert inputs.count(MASK) == 0 and len(inputs) == len(row)
        # The same sentences, in some order (the unfinished last one may end up inside).
        assert sorted(sentences(inputs[: inputs.index(108)] + inputs[inputs.index(108) + 1:])
                      + [(108,)]) == sorted(sentences(row))
        orders.add(tuple(inputs))
    assert len(orders) > 10


def test_text_infilling_static_length_error_and_bad_arguments():
    rows = tf.reshape(tf.range(100, 140), [2, 20])
    out = text_infilling(rows, [0, 1], 0, MASK, inputs_length=20, targets_length=20)
    assert out["inputs"].shape == (2, 20) and out["targets"].shape == (2, 20)
    with pytest.raises(tf.errors.InvalidArgumentError, match="inputs_length=5"):
        text_infilling(rows, [0, 1], 0, MASK, inputs_length=5)
    with pytest.raises(ConfigError, match="poisson_lambda"):
        text_infilling(rows, [0, 1], 0, MASK, poisson_lambda=0)
    with pytest.raises(ConfigError, match="noise_density"):
        span_corruption(rows, [0, 1], 0, SENTINELS, noise_density=1.5)
    with pytest.raises(ConfigError, match="sentinel_ids"):
        span_corruption(rows, [0, 1], 0, [])
    with pytest.raises(tf.errors.InvalidArgumentError, match="sentinel"):
        span_corruption(tf.reshape(tf.range(100, 200), [1, 100]), [0], 0, SENTINELS[:2])
