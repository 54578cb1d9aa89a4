"""The `denoising` task: static-shape batches that decode back to the packed rows (span
corruption) or whose targets are the rows (text infilling); the same noise for the same
seed and new noise the next epoch; reserved ids checked; the tiny config trains (the loss
falls) and evaluates."""

import pathlib

import numpy as np
import pytest
import tensorflow as tf

from tflm.config import ConfigError
from tflm.data.byte_tokenizer import ByteTokenizer
from tflm.data.pipeline import pack_token_stream, token_documents
from tflm.data.stats import InputStats
from tflm.experiment import load_experiment, run_experiment
from tflm.tasks import get_task
from tflm.tasks.denoising import denoising_batches, denoising_lengths

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = str(REPO_ROOT / "configs" / "tiny_denoising.yaml")
# Small rows and batches; the eval pass (one ordered pass, no shuffling) is the reference.
# Rows of 48: span corruption's rows are 52 tokens with 3 noise spans (a row with one span
# has it at its end, T5's rule: no randomness to test).
SMALL = "data.sequence_length=48,data.global_batch_size=4,data.shuffle_buffer_size=0"


def _config(extra=""):
    return load_experiment(TINY, ",".join(filter(None, [SMALL, extra])))


def _packed_rows(config, tokenizer, count):
    """The first `count` packed rows of the eval split, in order (NumPy)."""
    row_length, _ = denoising_lengths(config.data)
    documents = token_documents(config, tokenizer, training=False, split="eval")
    rows = pack_token_stream(documents, row_length, tokenizer.end_of_text_id)
    return [row.numpy() for row in rows.take(count)]


def _batches(config, count, training=False):
    batches = get_task(config).dataset(ByteTokenizer(), training=training, split="eval")
    return [(features, labels.numpy(), weights.numpy())
            for features, labels, weights in batches.take(count)]


def _rows(features, name):
    """The real (unpadded) ids of each row of `features[name]`."""
    ids, mask = features[f"{name}_token_ids"].numpy(), features[f"{name}_padding_mask"].numpy()
    return [row[m.astype(bool)].tolist() for row, m in zip(ids, mask)]


def test_span_corruption_decodes_back_to_the_packed_rows():
    config = _config()
    tokenizer = ByteTokenizer()
    start, end = tokenizer.cls_id, tokenizer.end_of_text_id
    sentinels = list(range(277, 261, -1))  # the top 16 ids of model.vocabulary_size 278
    (features, labels, weights), = _batches(config, 1)
    _, targets_length = denoising_lengths(config.data)
    assert features["encoder_token_ids"].shape == (4, 48)
    assert features["decoder_token_ids"].shape == labels.shape == (4, targets_length)
    for i, (inputs, decoder, row) in enumerate(zip(
            _rows(features, "encoder"), _rows(features, "decoder"),
            _packed_rows(config, tokenizer, 4))):
        # Every row's inputs fill the encoder row; labels are the decoder's ids shifted.
        assert len(inputs) == 48 and inputs[-1] == end
        target = labels[i][weights[i] > 0].tolist()
        assert decoder == [start] + target[:-1] and target[-1] == end
        # Inputs: kept tokens with sentinel n for span n; targets: sentinel n, then span n.
        spans, current = {}, None
        for token in target[:-1]:
            if token in sentinels:
                current = token
                spans[current] = []
            else:
                spans[current].append(token)
        assert list(spans) == sentinels[:len(spans)]
        decoded = []
        for token in inputs[:-1]:
            decoded += spans[token] if token in sentinels else [token]
        assert decoded == row.tolist()
        assert all(spans.values())


def test_text_infilling_targets_are_the_rows():
    config = _config("data.noise=text_infilling,data.target_length=48")
    tokenizer = ByteTokenizer()
    stats = InputStats()
    batches = get_task(config).dataset(tokenizer, stats=stats, training=False, split="eval")
    features, labels, weights = next(iter(batches))
    assert features["encoder_token_ids"].shape == (4, 48)
    assert labels.shape == features["decoder_token_ids"].shape == (4, 48)
    rows = _packed_rows(config, tokenizer, 4)
    row_length = len(rows[0])
    assert row_length == 46  # 48 less [end] and a slack of 1
    assert stats.as_dict()["noised_rows_too_long"] == 0
    for i, (inputs, row) in enumerate(zip(_rows(features, "encoder"), rows)):
        target = labels.numpy()[i][weights.numpy()[i] > 0].tolist()
        assert target == row.tolist() + [tokenizer.end_of_text_id]
        # ceil(0.3 * 46) = 14 tokens masked, each span one [MASK].
        assert tokenizer.mask_id in inputs
        kept = [t for t in inputs[:-1] if t != tokenizer.mask_id]
        assert len(kept) == row_length - 14
        # The kept tokens are the row's, in order.
        it = iter(row.tolist())
        assert all(token in it for token in kept)


@pytest.mark.parametrize("noise", ["span_corruption", "text_infilling"])
def test_the_same_seed_gives_the_same_noise_and_the_next_epoch_another(noise):
    extra = f"data.noise={noise}"
    # The training stream runs on over epochs: the same text comes again with other noise.
    first = _batches(_config(extra), 3, training=True)
    again = _batches(_config(extra), 3, training=True)
    for (a, labels_a, _), (b, labels_b, _) in zip(first, again):
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
        np.testing.assert_array_equal(labels_a, labels_b)
    other_seed = _batches(_config(extra + ",runtime.seed=1"), 1, training=True)
    assert not np.array_equal(first[0][0]["encoder_token_ids"],
                              other_seed[0][0]["encoder_token_ids"])


def test_a_repeated_row_is_noised_anew():
    # One short document read over and over: the same packed rows, redrawn noise.
    config = _config("data.eval_every_nth_document=0")
    tokenizer = ByteTokenizer()
    row_length, _ = denoising_lengths(config.data)
    text = tokenizer.tokenize("x" * (row_length - 1))  # with [end]: exactly one row
    documents = tf.data.Dataset.from_tensors(text).repeat(8)
    (features, _, _), = denoising_batches(documents, tokenizer, config, 8, training=True).take(1)
    inputs = features["encoder_token_ids"].numpy()
    assert len({tuple(row) for row in inputs}) > 1


def test_reserved_ids_name_the_keys():
    with pytest.raises(ConfigError, match=r"model.vocabulary_size=270 must hold the byte "
                                          r"tokenizer's 262 ids and data.num_sentinels=16"):
        get_task(_config("model.vocabulary_size=270")).dataset(ByteTokenizer())
    with pytest.raises(ConfigError, match=r"data.num_sentinels=2 is fewer than the 3 noise"):
        _config("data.num_sentinels=2")
    with pytest.raises(ConfigError, match=r"data.target_length=3 is shorter than the"):
        _config("data.target_length=3")
    with pytest.raises(ConfigError, match=r"data.noise: 'spans' is not one of"):
        _config("data.noise=spans")


def test_the_tiny_config_trains_and_evaluates(tmp_path):
    config = load_experiment(TINY, "trainer.train_steps=20,trainer.log_every=5,"
                                   "trainer.steps_per_loop=5,trainer.eval_steps=2,"
                                   "trainer.jit_compile=false,data.sequence_length=32,"
                                   "trainer.checkpoint_every=20")
    trainer = run_experiment(config, str(tmp_path / "run"), mode="train_and_eval",
                             print_fn=lambda line: None)
    assert trainer.status == "completed"
    losses = [entry["loss"] for entry in trainer.history]
    assert losses[-1] < 0.8 * losses[0], losses
    results = trainer.eval_results
    assert set(results) >= {"loss", "perplexity", "accuracy", "tokens"}
    assert results["perplexity"] == pytest.approx(np.exp(results["loss"]), rel=1e-6)
    assert 0 < results["accuracy"] <= 1 and results["tokens"] > 0


def test_infilled_rows_that_outgrow_the_encoder_are_dropped_and_counted():
    # Poisson(1) spans are often empty: each adds a [MASK], and some rows outgrow the slack.
    config = _config("data.noise=text_infilling,data.poisson_lambda=1.0")
    stats = InputStats()
    batches = get_task(config).dataset(ByteTokenizer(), stats=stats, training=False,
                                       split="eval")
    kept = sum(int(features["encoder_token_ids"].shape[0]) for features, _, _ in batches)
    dropped = stats.as_dict()["noised_rows_too_long"]
    assert dropped > 0 and kept > 0
