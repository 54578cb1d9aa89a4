import itertools
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tflm.data import (
    ByteTokenizer,
    causal_lm_dataset,
    classification_dataset,
    default_corpus_path,
    masked_lm_dataset,
    pack_token_stream,
    resolve_files,
)
from tflm.data.pipeline import causal_lm_batches, document_features, tokenize_documents
from tflm.data.sources import worker_files

PAD, CLS, SEP, MASK, EOT = 0, 2, 3, 4, 5


@pytest.fixture(scope="module")
def tokenizer():
    return ByteTokenizer()


@pytest.fixture
def text_files(tmp_path):
    """Three small documents of different lengths (one Chinese, one with raw bytes)."""
    contents = [
        b"It is a truth universally acknowledged, that a single man in possession of a good"
        b" fortune, must be in want of a wife. " * 4,
        "床前明月光，疑是地上霜。举头望明月，低头思故乡。".encode("utf-8") * 3,
        b"\xff\xfe short one",
    ]
    paths = []
    for i, data in enumerate(contents):
        path = tmp_path / f"doc{i}.txt"
        path.write_bytes(data)
        paths.append(str(path))
    return paths, contents


def _stream(contents, separator=EOT):
    """The token stream of documents joined by `separator` (EOT for CLM, SEP for MLM)."""
    ids = []
    for data in contents:
        # The pipeline replaces undecodable bytes with U+FFFD, as Python's "replace" does.
        data = data.decode("utf-8", "replace").encode("utf-8")
        ids.extend(b + 6 for b in data)
        ids.append(separator)
    return np.array(ids, np.int32)


def _documents(lengths):
    def gen():
        start = 0
        for n in lengths:
            yield np.arange(start, start + n, dtype=np.int32)
            start += n

    return tf.data.Dataset.from_generator(gen, output_signature=tf.TensorSpec([None], tf.int32))


def _rows(dataset):
    return np.stack([row for row in dataset.as_numpy_iterator()])


def _concat_batches(dataset, take=None):
    """Unbatched numpy (features, labels, weights) of a batched dataset."""
    batches = list(dataset.take(take).as_numpy_iterator() if take else dataset.as_numpy_iterator())
    features = {k: np.concatenate([b[0][k] for b in batches]) for k in batches[0][0]}
    labels = np.concatenate([b[1] for b in batches])
    weights = np.concatenate([b[2] for b in batches])
    return features, labels, weights


# pack_token_stream


@pytest.mark.parametrize("window", [1, 4, 7, 16])
def test_pack_token_stream_keeps_order_without_padding(window):
    lengths = [3, 10, 0, 1, 7, 16, 2, 33, 5]
    total = sum(lengths)  # the documents are 0, 1, 2, ... in order
    rows = _rows(pack_token_stream(_documents(lengths), window))
    assert rows.shape == (total // window, window)
    np.testing.assert_array_equal(rows.reshape(-1), np.arange(total // window * window))


def test_pack_token_stream_drops_only_final_partial_row():
    rows = _rows(pack_token_stream(_documents([5, 5, 3]), 4))  # 13 tokens: 3 rows, 1 dropped
    np.testing.assert_array_equal(rows, np.arange(12).reshape(3, 4))
    assert not list(pack_token_stream(_documents([2, 1]), 4))


@pytest.mark.parametrize("pad_id", [None, 0])
def test_pack_token_stream_same_rows_from_documents_or_batches_of_them(pad_id):
    lengths = [3, 10, 0, 1, 7, 16, 2, 33, 5] * 20  # several batches of PACK_BATCH documents
    batches = _documents(lengths).ragged_batch(7)  # as tokenize_documents(..., batched=True)
    expected = _rows(pack_token_stream(_documents(lengths), 9, separator_id=-1, pad_id=pad_id))
    rows = _rows(pack_token_stream(batches, 9, separator_id=-1, pad_id=pad_id))
    np.testing.assert_array_equal(rows, expected)
    stream = sum(lengths) + len(lengths)  # tokens and separators
    assert len(rows) == (-(-stream // 9) if pad_id == 0 else stream // 9)


def test_pack_token_stream_positions_give_documents_and_positions():
    # Documents 0-2 | 3-7 | (empty) | 8-9 | 10-18, each followed by -1, in rows of 6.
    lengths = [3, 5, 0, 2, 9]
    packed = list(pack_token_stream(_documents(lengths), 6, separator_id=-1, positions=True)
                  .as_numpy_iterator())
    tokens, positions = (np.stack(column) for column in zip(*packed))
    np.testing.assert_array_equal(
        tokens, _rows(pack_token_stream(_documents(lengths), 6, separator_id=-1)))
    np.testing.assert_array_equal(positions, [[0, 1, 2, 3, 0, 1],   # 0 1 2 -1 | 3 4
                                              [2, 3, 4, 5, 0, 0],   # 5 6 7 -1 | -1 | 8
                                              [1, 2, 0, 1, 2, 3],   # 9 -1 | 10 11 12 13
                                              [4, 5, 6, 7, 8, 9]])  # 14 ... 18 -1
    features = document_features(tf.constant(positions))
    # A row's first document is 0 when it began in an earlier row; positions then restart.
    np.testing.assert_array_equal(features["document_ids"], [[1, 1, 1, 1, 2, 2],
                                                             [0, 0, 0, 0, 1, 2],
                                                             [0, 0, 1, 1, 1, 1],
                                                             [0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(features["positions"], [[0, 1, 2, 3, 0, 1],
                                                          [0, 1, 2, 3, 0, 0],
                                                          [0, 1, 0, 1, 2, 3],
                                                          [0, 1, 2, 3, 4, 5]])


@pytest.mark.parametrize("training", [True, False])
def test_causal_lm_document_mask_adds_documents_and_keeps_the_rest(tokenizer, training):
    """Same tokens, labels and weights (perplexity counts the same tokens); a document
    starts after each end-of-text token, its positions counting from 0 (NumPy reference)."""
    documents = tf.data.Dataset.from_tensor_slices(
        [f"doc {i} " * (i % 5) for i in range(12)]).map(tokenizer.tokenize)
    kwargs = dict(shuffle_buffer_size=0, training=training, drop_remainder=False)
    if training:
        documents = documents.repeat(2)
    plain = _concat_batches(causal_lm_batches(documents, tokenizer, 10, 4, **kwargs))
    masked = _concat_batches(causal_lm_batches(documents, tokenizer, 10, 4, document_mask=True,
                                               **kwargs))
    for a, b in zip(plain[1:], masked[1:]):
        np.testing.assert_array_equal(a, b)
    assert sorted(masked[0]) == ["document_ids", "padding_mask", "positions", "token_ids"]
    for key in plain[0]:
        np.testing.assert_array_equal(plain[0][key], masked[0][key])
    features = masked[0]
    for row, real, documents_of, positions in zip(
            features["token_ids"], features["padding_mask"] == 1, features["document_ids"],
            features["positions"]):
        expected_documents, expected_positions = [documents_of[0]], [0]
        for t in range(1, len(row)):
            starts = row[t - 1] == EOT
            expected_documents.append(expected_documents[-1] + starts)
            expected_positions.append(0 if starts else expected_positions[-1] + 1)
        # Padding (the final row of evaluation) is masked out whatever its documents.
        np.testing.assert_array_equal(documents_of[real], np.array(expected_documents)[real])
        np.testing.assert_array_equal(positions[real], np.array(expected_positions)[real])
    assert features["document_ids"].max() > 1  # rows hold several documents


def test_tokenize_documents_batched_holds_the_same_documents(tokenizer):
    documents = tf.data.Dataset.from_tensor_slices([f"document {i} " * (i % 7) for i in range(150)])
    one_by_one = [list(t) for t in tokenize_documents(documents, tokenizer).as_numpy_iterator()]
    batches = list(tokenize_documents(documents, tokenizer, batched=True, batch_size=64))
    assert [b.shape[0] for b in batches] == [64, 64, 22]
    assert [list(t) for b in batches for t in b.to_list()] == one_by_one


# causal_lm_dataset


def test_causal_lm_static_shapes(text_files, tokenizer):
    paths, _ = text_files
    dataset = causal_lm_dataset(paths, tokenizer, 16, 3, shuffle_buffer_size=10)
    features, labels, weights = dataset.element_spec
    assert features["token_ids"].shape == (3, 16) and features["token_ids"].dtype == tf.int32
    assert features["padding_mask"].shape == (3, 16)
    assert labels.shape == (3, 16) and labels.dtype == tf.int32
    assert weights.shape == (3, 16) and weights.dtype == tf.float32


def test_causal_lm_rows_are_the_stream_shifted_by_one(text_files, tokenizer):
    """Read once (evaluation): every token kept, the final row padded, no label on padding."""
    paths, contents = text_files
    length, batch = 16, 3
    dataset = causal_lm_dataset(paths, tokenizer, length, batch, shuffle_buffer_size=0, repeat=False)
    features, labels, weights = _concat_batches(dataset)
    stream = _stream(contents)
    num_rows = -(-len(stream) // (length + 1))
    padded = np.pad(stream, (0, num_rows * (length + 1) - len(stream)), constant_values=PAD)
    windows = padded.reshape(num_rows, length + 1)
    assert len(labels) == num_rows  # the final partial batch is kept too
    np.testing.assert_array_equal(features["token_ids"], windows[:, :-1])
    np.testing.assert_array_equal(labels, windows[:, 1:])
    np.testing.assert_array_equal(features["padding_mask"], windows[:, :-1] != PAD)
    np.testing.assert_array_equal(weights, (windows[:, 1:] != PAD).astype(np.float32))
    # No token is wasted: the weighted labels plus the first token are the whole stream.
    assert weights.sum() == len(stream) - num_rows
    assert (windows[:-1] != PAD).all() and (windows[-1] == PAD).any()
    # Rows run across documents, which the end-of-text id separates.
    assert (windows == EOT).sum() == len(contents)


def _is_epochs_of(flat, contents):
    """Whether `flat` is a prefix of epochs of the documents' streams, each epoch the
    documents in some order (the training pipeline reshuffles files every epoch)."""
    docs = [_stream([c]) for c in contents]
    position = 0
    while position < len(flat):
        for order in itertools.permutations(docs):
            epoch = np.concatenate(order)
            part = flat[position:position + len(epoch)]
            if np.array_equal(part, epoch[:len(part)]):
                position += len(epoch)
                break
        else:
            return False
    return True


def test_causal_lm_training_rows_are_shuffled_stream_rows(text_files, tokenizer):
    paths, contents = text_files
    length, buffer = 8, 20
    # One seed for both: the file order (seeded, and so also depending on TensorFlow's
    # global seed) is the same, only the row shuffle differs.
    unshuffled = causal_lm_dataset(paths, tokenizer, length, 1, seed=3, shuffle_buffer_size=0)
    shuffled = causal_lm_dataset(paths, tokenizer, length, 1, seed=3, shuffle_buffer_size=buffer)
    n = 30

    def rows(dataset, count):
        features, labels, _ = _concat_batches(dataset, take=count)
        np.testing.assert_array_equal(features["token_ids"][:, 1:], labels[:, :-1])
        return [tuple(r) for r in np.concatenate([features["token_ids"], labels[:, -1:]], axis=1)]

    ordered, mixed = rows(unshuffled, n + buffer), rows(shuffled, n)
    assert set(mixed) <= set(ordered), "shuffling only reorders rows of the stream"
    assert mixed != ordered[:n], "shuffled"
    # Training rows continue across epochs: the stream repeats with no token dropped.
    ordered = rows(unshuffled, 3 * len(_stream(contents)) // (length + 1))
    assert _is_epochs_of(np.concatenate([np.array(r) for r in ordered]), contents)
    assert not _is_epochs_of(np.concatenate([np.array(r) for r in ordered])[1:], contents)


def test_causal_lm_deterministic_per_seed(tokenizer):
    files = [default_corpus_path()]

    def first_batches(seed):
        dataset = causal_lm_dataset(files, tokenizer, 32, 4, seed=seed, shuffle_buffer_size=200)
        return [b[1] for b in dataset.take(3).as_numpy_iterator()]

    a, b, c = first_batches(0), first_batches(0), first_batches(1)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, z) for x, z in zip(a, c))


def test_causal_lm_repeats(text_files, tokenizer):
    paths, contents = text_files
    rows_per_epoch = len(_stream(contents)) // 17
    dataset = causal_lm_dataset(paths, tokenizer, 16, 2, shuffle_buffer_size=0)
    batches = list(dataset.take(rows_per_epoch + 3).as_numpy_iterator())
    assert len(batches) == rows_per_epoch + 3  # more than two epochs of rows, no end


def test_causal_lm_on_real_text_across_documents(tmp_path, shared_data, tokenizer):
    contents = []
    paths = []
    for name in ("shakespeare.txt", "zh_tang_song_poems.txt", "austen_6novels.txt"):
        with open(shared_data / name, "rb") as f:
            data = f.read(3001)  # may cut a UTF-8 character in half: still round trips
        contents.append(data)
        paths.append(str(tmp_path / name))
        with open(paths[-1], "wb") as f:
            f.write(data)
    length, batch = 63, 8
    dataset = causal_lm_dataset(paths, tokenizer, length, batch, shuffle_buffer_size=0, repeat=False)
    features, labels, _ = _concat_batches(dataset)
    stream = _stream(contents)
    rows = np.concatenate([features["token_ids"], labels[:, -1:]], axis=1).reshape(-1)
    np.testing.assert_array_equal(rows[: len(stream)], stream)
    np.testing.assert_array_equal(rows[len(stream):], PAD)
    text = tokenizer.detokenize(rows).numpy()
    assert text == b"".join(c.decode("utf-8", "replace").encode("utf-8") for c in contents)


# masked_lm_dataset


def _unmask(features, labels, weights):
    """Original rows: mask_ids put back at mask_positions."""
    ids = features["token_ids"].copy()
    for row, (positions, originals, w) in enumerate(
        zip(features["mask_positions"], labels, weights)
    ):
        count = int(w.sum())
        ids[row, positions[:count]] = originals[:count]
    return ids


def test_masked_lm_shapes_and_cls_sep(text_files, tokenizer):
    paths, contents = text_files
    length, batch, predictions = 32, 2, 5
    dataset = masked_lm_dataset(paths, tokenizer, length, batch, predictions,
                                shuffle_buffer_size=0, repeat=True)
    features_spec, labels_spec, weights_spec = dataset.element_spec
    for key in ("token_ids", "padding_mask", "segment_ids"):
        assert features_spec[key].shape == (batch, length), key
    assert features_spec["mask_positions"].shape == (batch, predictions)
    assert labels_spec.shape == (batch, predictions)
    assert weights_spec.shape == (batch, predictions) and weights_spec.dtype == tf.float32

    # The files of the first epoch, in the order seed 0 shuffles them.
    order, _ = worker_files(paths, shuffle_seed=0, repeat=True)
    order = [paths.index(name.decode()) for name in order.take(len(paths)).as_numpy_iterator()]
    stream = _stream([contents[i] for i in order], separator=SEP)
    rows = len(stream) // (length - 2)
    features, labels, weights = _concat_batches(dataset, take=rows // batch)
    np.testing.assert_array_equal(features["token_ids"][:, 0], CLS)
    np.testing.assert_array_equal(features["token_ids"][:, -1], SEP)
    np.testing.assert_array_equal(features["padding_mask"], 1)
    np.testing.assert_array_equal(features["segment_ids"], 0)
    # round(0.15 * 30) = 4 predictions per row (clipped by max_predictions=5).
    np.testing.assert_array_equal(weights.sum(axis=1), 4)
    # Unmasked, the rows are the token stream (documents joined by [SEP]), cut every length - 2.
    original = _unmask(features, labels, weights)
    np.testing.assert_array_equal(
        original[:, 1:-1].reshape(-1), stream[: len(original) * (length - 2)]
    )
    masked = (features["token_ids"] == MASK).sum()
    assert 0 < masked <= weights.sum()


def test_masked_lm_masks_redrawn_each_epoch(tmp_path, tokenizer):
    length, rows_per_epoch = 32, 12
    # One document whose stream (text + [SEP]) is a whole number of rows, so
    # that every epoch cuts the same rows.
    text = (b"abcdefghij klmnopq rstuvwxyz " * 20)[: rows_per_epoch * (length - 2) - 1]
    path = tmp_path / "doc.txt"
    path.write_bytes(text)
    dataset = masked_lm_dataset([str(path)], tokenizer, length, 1, 5, shuffle_buffer_size=0)
    features, labels, weights = _concat_batches(dataset, take=2 * rows_per_epoch)
    original = _unmask(features, labels, weights)
    first, second = slice(0, rows_per_epoch), slice(rows_per_epoch, 2 * rows_per_epoch)
    np.testing.assert_array_equal(original[first], original[second])  # same rows, same order
    same = [
        np.array_equal(a, b)
        for a, b in zip(features["mask_positions"][first], features["mask_positions"][second])
    ]
    assert sum(same) <= rows_per_epoch // 4, "masks must be redrawn on the second epoch"


def test_masked_lm_deterministic_per_seed(tokenizer):
    files = [default_corpus_path()]

    def batches(seed):
        dataset = masked_lm_dataset(files, tokenizer, 64, 4, 10, seed=seed, shuffle_buffer_size=100)
        return list(dataset.take(3).as_numpy_iterator())

    a, b, c = batches(7), batches(7), batches(8)
    for x, y in zip(a, b):
        for key in x[0]:
            np.testing.assert_array_equal(x[0][key], y[0][key])
        np.testing.assert_array_equal(x[1], y[1])
        np.testing.assert_array_equal(x[2], y[2])
    assert any(
        not np.array_equal(x[0]["token_ids"], z[0]["token_ids"]) for x, z in zip(a, c)
    )


# classification_dataset


def test_classification_truncates_and_pads(tokenizer):
    texts = ["a" * 50, "hi", "", "日本語", "exactly8"]
    labels = [1, 0, 1, 0, 1]
    length = 10
    dataset = classification_dataset(texts, labels, tokenizer, length, batch_size=2)
    batches = list(dataset.as_numpy_iterator())
    assert [len(b[1]) for b in batches] == [2, 2, 1]  # no drop_remainder by default
    token_ids = np.concatenate([b[0]["token_ids"] for b in batches])
    padding_mask = np.concatenate([b[0]["padding_mask"] for b in batches])
    segment_ids = np.concatenate([b[0]["segment_ids"] for b in batches])
    assert token_ids.shape == padding_mask.shape == (5, length)
    np.testing.assert_array_equal(segment_ids, 0)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), labels)
    for text, ids, mask in zip(texts, token_ids, padding_mask):
        body = [b + 6 for b in text.encode("utf-8")][: length - 2]
        expected = [CLS] + body + [SEP]
        expected += [PAD] * (length - len(expected))
        np.testing.assert_array_equal(ids, expected, err_msg=text)
        np.testing.assert_array_equal(mask, [1] * (len(body) + 2) + [0] * (length - len(body) - 2))
    assert token_ids[0, -1] == SEP  # truncated text still ends with [SEP]


def test_classification_static_batch_with_drop_remainder(tokenizer):
    dataset = classification_dataset(
        ["x"] * 5, [0] * 5, tokenizer, 8, batch_size=2, drop_remainder=True
    )
    features, labels = dataset.element_spec
    assert features["token_ids"].shape == (2, 8)
    assert labels.shape == (2,)
    assert len(list(dataset)) == 2


def test_classification_on_real_reviews(shared_data, tokenizer):
    texts, labels = [], []
    with open(shared_data / "zh_review_sentiment.jsonl", encoding="utf-8") as f:
        for line, _ in zip(f, range(64)):
            record = json.loads(line)
            texts.append(record["text"])
            labels.append(int(record["label"] == "pos"))
    dataset = classification_dataset(texts, labels, tokenizer, 48, batch_size=16)
    token_ids = np.concatenate([b[0]["token_ids"] for b in dataset.as_numpy_iterator()])
    assert token_ids.shape == (64, 48)
    for text, ids in zip(texts, token_ids):
        data = text.encode("utf-8")[:46]
        real = ids[ids != PAD]
        assert real[0] == CLS and real[-1] == SEP
        assert tokenizer.detokenize(real).numpy() == data


# resolve_files


def test_resolve_files_empty_pattern_is_embedded_corpus():
    files = resolve_files("")
    assert files == [default_corpus_path()]
    assert os.path.getsize(files[0]) > 100_000
    assert resolve_files(None) == files


def test_resolve_files_globs(tmp_path):
    for name in ("b.txt", "a.txt", "c.md"):
        (tmp_path / name).write_text("x")
    assert resolve_files(str(tmp_path / "*.txt")) == [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]
    both = resolve_files(f"{tmp_path / 'c.md'},{tmp_path / '*.txt'}")
    assert [os.path.basename(f) for f in both] == ["c.md", "a.txt", "b.txt"]


def test_resolve_files_missing_glob_names_pattern(tmp_path):
    pattern = str(tmp_path / "nothing_here_*.txt")
    with pytest.raises(FileNotFoundError, match="nothing_here_"):
        resolve_files(pattern)
    with pytest.raises(FileNotFoundError) as info:
        resolve_files(f"{default_corpus_path()},{pattern}")
    assert pattern in str(info.value)
