import numpy as np
import pytest
import tensorflow as tf

from tflm.data import mask_tokens

VOCAB = 262
PAD, CLS, SEP, MASK = 0, 2, 3, 4
SPECIAL = list(range(6))
LENGTH = 128


def _masker(max_predictions, mask_rate=0.15):
    @tf.function(
        input_signature=[tf.TensorSpec([None], tf.int32), tf.TensorSpec([2], tf.int64)],
        reduce_retracing=True,
    )
    def fn(token_ids, seed):
        out = mask_tokens(
            token_ids,
            seed=seed,
            vocabulary_size=VOCAB,
            mask_id=MASK,
            special_ids=SPECIAL,
            max_predictions=max_predictions,
            mask_rate=mask_rate,
        )
        return {k: tf.ensure_shape(v, [max_predictions]) if k != "token_ids" else v
                for k, v in out.items()}

    def call(token_ids, seed):
        out = fn(tf.constant(token_ids, tf.int32), tf.constant(seed, tf.int64))
        return {k: v.numpy() for k, v in out.items()}

    return call


def _sequence(num_real, length=LENGTH, rng=None):
    """`[CLS] real... [SEP] [PAD]...`, with real (non-special) tokens."""
    rng = rng or np.random.default_rng(num_real)
    real = rng.integers(6, VOCAB, num_real)
    ids = np.concatenate([[CLS], real, [SEP]])
    return np.pad(ids, (0, length - len(ids)), constant_values=PAD).astype(np.int32)


def _check_invariants(original, out, max_predictions):
    """The contract of one `mask_tokens` output against its input."""
    special = np.isin(original, SPECIAL)
    positions, ids, weights = out["mask_positions"], out["mask_ids"], out["mask_weights"]
    corrupted = out["token_ids"]
    assert positions.shape == ids.shape == weights.shape == (max_predictions,)
    assert corrupted.shape == original.shape
    count = int(weights.sum())
    np.testing.assert_array_equal(weights, (np.arange(max_predictions) < count).astype(np.float32))
    real = positions[:count]
    assert np.all(np.diff(real) > 0), "positions sorted and unique"
    assert not special[real].any(), "special tokens never chosen"
    np.testing.assert_array_equal(ids[:count], original[real])
    np.testing.assert_array_equal(positions[count:], 0)
    np.testing.assert_array_equal(ids[count:], 0)
    unchosen = np.ones(len(original), bool)
    unchosen[real] = False
    np.testing.assert_array_equal(corrupted[unchosen], original[unchosen])
    replaced = corrupted[real]
    assert np.all((replaced == MASK) | (replaced >= len(SPECIAL))), "random tokens never special"
    assert np.all(replaced < VOCAB)
    return count


def _expected_count(num_maskable, max_predictions, rate=0.15):
    if num_maskable == 0:
        return 0
    return min(max(round(rate * num_maskable), 1), max_predictions, num_maskable)


@pytest.mark.parametrize("max_predictions", [5, 20])
def test_count_matches_spec_for_every_length(max_predictions):
    mask = _masker(max_predictions)
    for num_real in range(0, LENGTH - 1):
        original = _sequence(num_real)
        out = mask(original, [1, num_real])
        count = _check_invariants(original, out, max_predictions)
        assert count == _expected_count(num_real, max_predictions), num_real
        assert count <= max_predictions


def test_rounding_follows_python_round():
    # 30 * 0.15 = 4.5 rounds to 4 (half to even, as BERT's round()); 70 * 0.15 = 10.5 -> 10.
    mask = _masker(max_predictions=40)
    for num_real, expected in [(30, 4), (70, 10), (10, 2), (50, 8), (3, 1), (7, 1)]:
        out = mask(_sequence(num_real), [0, 1])
        assert out["mask_weights"].sum() == expected, num_real


def test_mask_rate_argument():
    mask = _masker(max_predictions=64, mask_rate=0.4)
    out = mask(_sequence(100), [0, 0])
    assert out["mask_weights"].sum() == 40


def test_invariants_with_special_tokens_scattered():
    rng = np.random.default_rng(0)
    mask = _masker(max_predictions=12)
    for i in range(40):
        original = rng.integers(0, VOCAB, 96).astype(np.int32)
        original[rng.random(96) < 0.3] = rng.choice(SPECIAL)  # many special ids, anywhere
        out = mask(original, [i, 3])
        count = _check_invariants(original, out, 12)
        assert count == _expected_count(int((~np.isin(original, SPECIAL)).sum()), 12)


def test_only_special_tokens_gives_no_predictions():
    mask = _masker(max_predictions=4)
    original = np.array([CLS, SEP, PAD, PAD, MASK, 5, 1], np.int32)
    out = mask(original, [0, 0])
    np.testing.assert_array_equal(out["mask_weights"], 0)
    np.testing.assert_array_equal(out["token_ids"], original)


def test_same_seed_same_output_different_seed_differs():
    mask = _masker(max_predictions=20)
    original = _sequence(120)
    first, again = mask(original, [5, 9]), mask(original, [5, 9])
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    eager = mask_tokens(original, tf.constant([5, 9], tf.int64), VOCAB, MASK, SPECIAL, 20)
    np.testing.assert_array_equal(eager["mask_positions"].numpy(), first["mask_positions"])
    np.testing.assert_array_equal(eager["token_ids"].numpy(), first["token_ids"])
    others = [mask(original, seed) for seed in ([5, 10], [6, 9], [0, 0])]
    for other in others:
        assert not np.array_equal(other["mask_positions"], first["mask_positions"])


def test_80_10_10_split_and_random_tokens():
    length, max_predictions, draws = 512, 77, 260  # 77 = round(0.15 * 512); ~20k predictions
    original = np.random.default_rng(1).integers(6, VOCAB, length).astype(np.int32)
    mask = _masker(max_predictions)
    replaced, before = [], []
    for i in range(draws):
        out = mask(original, [11, i])
        count = int(out["mask_weights"].sum())
        assert count == max_predictions
        positions = out["mask_positions"][:count]
        replaced.append(out["token_ids"][positions])
        before.append(out["mask_ids"][:count])
    replaced, before = np.concatenate(replaced), np.concatenate(before)
    total = len(replaced)
    assert total == draws * max_predictions
    is_mask = replaced == MASK
    unchanged = replaced == before
    is_random = ~is_mask & ~unchanged
    # A random token equals the original with probability 1/256: it then counts as unchanged.
    assert abs(is_mask.mean() - 0.8) < 0.015
    assert abs(is_random.mean() - 0.1 * 255 / 256) < 0.012
    assert abs(unchanged.mean() - (0.1 + 0.1 / 256)) < 0.012
    randoms = replaced[is_random]
    assert randoms.min() >= len(SPECIAL) and randoms.max() < VOCAB
    # Random tokens spread over the whole non-special range.
    assert len(np.unique(randoms)) > 200


def test_whole_word_masking_fills_the_budget_with_whole_words():
    """Words that do not fit are skipped, later ones still taken (BERT's rule)."""
    rng = np.random.default_rng(5)
    # Words of 1 to 6 tokens: a 1 starts a word.
    lengths = rng.integers(1, 7, 40)
    starts = np.concatenate([[1] + [0] * (n - 1) for n in lengths]).astype(bool)
    ids = np.concatenate([[CLS], rng.integers(6, VOCAB, len(starts)), [SEP]]).astype(np.int32)
    starts = np.concatenate([[True], starts, [True]])
    word = np.cumsum(starts)
    expected = round(0.15 * (len(ids) - 2))
    for seed in range(20):
        out = mask_tokens(ids, seed=[seed, 0], vocabulary_size=VOCAB, mask_id=MASK,
                          special_ids=SPECIAL, max_predictions=40, word_starts=starts)
        count = int(out["mask_weights"].numpy().sum())
        positions = out["mask_positions"].numpy()[:count]
        assert expected - 2 <= count <= expected
        for p in positions:
            assert set(np.flatnonzero(word == word[p])) <= set(positions)
