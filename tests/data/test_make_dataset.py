import numpy as np
import pytest
import tensorflow as tf

from tflm.experiment import load_experiment
from tflm.data import ByteTokenizer, prepare_corpus, resolve_files
from tflm.tasks import make_dataset

CLS, SEP, MASK = 2, 3, 4
SPECIAL = set(range(6))


def _config(task="causal_lm", **data):
    overrides = [f"data.{k}={v}" for k, v in data.items()]
    config = load_experiment(
        f"configs/{'tiny_gpt' if task == 'causal_lm' else 'tiny_bert'}.yaml",
        ",".join(["data.sequence_length=32", "data.global_batch_size=8"] + overrides),
    )
    return config


def _take(dataset, n):
    return list(dataset.take(n).as_numpy_iterator())


def test_causal_lm_from_config_has_static_shapes():
    dataset = make_dataset(_config())
    features, labels, weights = dataset.element_spec
    assert features["token_ids"].shape == (8, 32)
    assert labels.shape == weights.shape == (8, 32)


def test_per_replica_batch_from_input_context():
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                         num_replicas_in_sync=4)
    features, _, _ = make_dataset(_config(), input_context=context).element_spec
    assert features["token_ids"].shape == (2, 32)


def test_same_seed_same_batches():
    a = _take(make_dataset(_config(task="masked_lm")), 3)
    b = _take(make_dataset(_config(task="masked_lm")), 3)
    for x, y in zip(a, b):
        for key in x[0]:
            np.testing.assert_array_equal(x[0][key], y[0][key])
        np.testing.assert_array_equal(x[1], y[1])


def test_prepared_shards_give_the_same_batches_as_raw_text(tmp_path):
    config = _config()
    out = str(tmp_path / "prepared")
    # As tflm-prepare does: the config's documents (the tiny configs hold out paragraphs).
    prepare_corpus(resolve_files(config.data.input_path), out, ByteTokenizer(), num_shards=1,
                   document_split=config.data.document_split)
    prepared = _config(input_format="tfrecord", input_path=out)
    for raw, shards in zip(_take(make_dataset(config), 5), _take(make_dataset(prepared), 5)):
        np.testing.assert_array_equal(raw[0]["token_ids"], shards[0]["token_ids"])
        np.testing.assert_array_equal(raw[1], shards[1])


def test_masking_statistics_over_many_batches():
    dataset = make_dataset(_config(task="masked_lm", max_predictions_per_seq=10,
                                   sequence_length=64, global_batch_size=32))
    chosen = masked = randomized = kept = maskable = 0
    for features, labels, weights in _take(dataset, 40):
        ids = features["token_ids"]
        for row in range(len(ids)):
            count = int(weights[row].sum())
            positions = features["mask_positions"][row, :count]
            originals = labels[row, :count]
            now = ids[row, positions]
            assert not SPECIAL & set(originals.tolist()), "special tokens are never masked"
            chosen += count
            masked += int((now == MASK).sum())
            kept += int((now == originals).sum())
            randomized += int(((now != MASK) & (now != originals)).sum())
            maskable += int((~np.isin(ids[row], [CLS, SEP]) | (ids[row] == MASK)).sum())
    rate = chosen / maskable
    assert abs(rate - 0.15) < 0.01, rate
    # A random replacement equal to the original counts as unchanged (1 in 256).
    assert abs(masked / chosen - 0.8) < 0.02
    assert abs(randomized / chosen - 0.1) < 0.02
    assert abs(kept / chosen - 0.1) < 0.02


def test_whole_word_masking_masks_whole_words():
    tokenizer = ByteTokenizer()
    dataset = make_dataset(_config(task="masked_lm", whole_word_masking=True,
                                   sequence_length=64, max_predictions_per_seq=12))
    for features, labels, weights in _take(dataset, 5):
        for row in range(len(labels)):
            count = int(weights[row].sum())
            ordered = features["mask_positions"][row, :count]
            positions = set(ordered.tolist())
            original = features["token_ids"][row].copy()
            original[ordered] = labels[row, :count]
            starts = tokenizer.word_starts(tf.constant(original)).numpy()
            word = np.cumsum(starts)
            for position in positions:
                same_word = np.flatnonzero(word == word[position])
                assert set(same_word.tolist()) <= positions, "a word is masked whole"


def test_sentence_pairs_have_segments_and_next_sentence_labels():
    dataset = make_dataset(_config(task="masked_lm", sentence_pairs=True, sequence_length=48))
    labels_seen = []
    for features, labels, weights in _take(dataset, 10):
        for row in range(len(features["token_ids"])):
            ids, segments = features["token_ids"][row], features["segment_ids"][row]
            seps = np.flatnonzero(ids == SEP)
            assert ids[0] == CLS and ids[-1] == SEP and len(seps) >= 2
            first_sep = np.flatnonzero(segments == 1)[0] - 1
            assert ids[first_sep] == SEP
            np.testing.assert_array_equal(segments[: first_sep + 1], 0)
            np.testing.assert_array_equal(segments[first_sep + 1 :], 1)
        # Continuation (0) or a random B (1), as BERT's; every row carries its label.
        labels_seen.extend(labels["next_sentence"].tolist())
        np.testing.assert_array_equal(weights["next_sentence"], 1.0)
        assert labels["masked_lm"].shape == weights["masked_lm"].shape
    assert set(labels_seen) == {0, 1} and 0.3 < np.mean(labels_seen) < 0.7


def test_vocabulary_too_large_for_model():
    config = _config()
    config.model.vocabulary_size = 100
    with pytest.raises(ValueError, match="vocabulary_size=100"):
        make_dataset(config)


def test_classification_needs_labelled_files():
    """Pretraining text has no labels: a classifier's dataset says which formats it reads."""
    config = _config()
    config.model.task = "classification"
    with pytest.raises(ValueError, match="labelled data is read from jsonl or csv files"):
        make_dataset(config)


def test_masked_lm_needs_mask_tokens_in_the_vocabulary():
    from tflm.data.pipeline import masked_lm_batches

    class NoMask(ByteTokenizer):
        @property
        def mask_id(self):
            return None

    with pytest.raises(ValueError, match=r"\[MASK\]"):
        masked_lm_batches(tf.data.Dataset.from_tensors(tf.constant([7, 8])), NoMask(), 16, 2, 4)


def test_held_out_documents_are_the_same_batched_or_one_by_one():
    from tflm.data import read_documents
    from tflm.data.pipeline import _held_out, tokenize_documents

    tokenizer = ByteTokenizer()
    documents = read_documents(resolve_files(""), document_split="blank_line")
    for keep in (True, False):
        single = [tuple(t) for t in _held_out(tokenize_documents(documents, tokenizer), 7,
                                              keep).as_numpy_iterator()]
        batched = _held_out(tokenize_documents(documents, tokenizer, batched=True), 7, keep)
        rows = [tuple(r) for b in batched for r in b.numpy()]
        assert rows == single and len(rows) > 10


def test_train_and_eval_splits_are_disjoint():
    """Every document is in exactly one split (compared as documents: packed rows of two
    different documents can be equal where the documents begin alike)."""
    from tflm.data.pipeline import token_documents

    def documents(split, every_nth=5):
        config = _config(eval_every_nth_document=every_nth, shuffle_buffer_size=0)
        batches = token_documents(config, ByteTokenizer(), training=False, split=split)
        return [tuple(row) for batch in batches for row in batch.to_list()]

    train, held, everything = documents("train"), documents("eval"), documents("train", 0)
    assert sorted(train + held) == sorted(everything)
    assert not set(train) & set(held)
    assert 0.1 < len(held) / len(everything) < 0.3


@pytest.mark.parametrize("layout", ["one_file", "three_files", "prepared"])
def test_held_out_documents_are_never_trained_on_in_any_epoch(tmp_path, layout):
    """The split is a property of the document: across epochs, pipelines and shard layouts
    no held-out document is ever in a training batch (40 documents, about 1 in 3 held out:
    the count is not a multiple of 3, which once shifted the choice every epoch)."""
    import re

    documents = [f"d{i:02d} lorem ipsum {i}" for i in range(40)]
    folder = tmp_path / "text"
    folder.mkdir()
    parts = 1 if layout == "one_file" else 3
    for part in range(parts):
        (folder / f"part{part}.txt").write_text("".join(d + "\n" for d in documents[part::parts]))
    options = dict(tokenizer="byte", document_split="line", eval_every_nth_document=3,
                   input_path=folder, shuffle_buffer_size=4)
    if layout == "prepared":
        out = tmp_path / "prepared"
        prepare_corpus(resolve_files(str(folder)), str(out), ByteTokenizer(), num_shards=3,
                       document_split="line")
        options.update(input_format="tfrecord", input_path=out)

    def text_of(row):
        offset = ByteTokenizer().byte_offset  # special ids (end of text) become spaces
        return bytes(max(int(i) - offset, 32) for i in row).decode("latin-1")

    def markers(dataset):
        return {m for features, _, _ in dataset.as_numpy_iterator()
                for row in features["token_ids"]
                for m in re.findall(r"d\d\d", text_of(row))}

    held = markers(make_dataset(_config(**options), training=False, split="eval"))
    assert 5 <= len(held) <= 25
    for pipelines in (1, 2):
        trained = set()
        for pipeline_id in range(pipelines):
            context = tf.distribute.InputContext(pipelines, pipeline_id, pipelines)
            # 16 batches of 8 x 32 bytes: about four epochs of this pipeline's documents.
            trained |= markers(make_dataset(_config(**options), input_context=context).take(16))
        assert not trained & held, (pipelines, sorted(trained & held))
        assert len(trained) >= 0.9 * (40 - len(held))
