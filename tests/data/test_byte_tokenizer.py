import numpy as np
import pytest
import tensorflow as tf

from tflm.data import ByteTokenizer

TEXTS = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune,"
    " must be in want of a wife.",
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
    "mixed: héllo, 世界, emoji 🙂, tab\tand newline\n",
    "",
]
RAW = [b"\xff\xfe", b"valid \xe4\xb8 truncated UTF-8", b"\x00\x01\x7f\x80", bytes(range(256))]


@pytest.fixture(scope="module")
def tokenizer():
    return ByteTokenizer()


def test_vocabulary_and_special_ids(tokenizer):
    assert tokenizer.vocabulary_size == 262
    assert tokenizer.special_ids == [0, 1, 2, 3, 4, 5]
    assert (tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id) == (0, 2, 3, 4)
    assert tokenizer.end_of_text_id == 5
    assert tokenizer.byte_offset == 6


@pytest.mark.parametrize("text", TEXTS)
def test_scalar_round_trip_and_ids_are_bytes(tokenizer, text):
    ids = tokenizer.tokenize(text)
    assert isinstance(ids, tf.Tensor) and ids.dtype == tf.int32 and ids.shape.rank == 1
    expected = [b + 6 for b in text.encode("utf-8")]
    assert ids.numpy().tolist() == expected
    assert tokenizer.detokenize(ids).numpy().decode("utf-8") == text


@pytest.mark.parametrize("data", RAW)
def test_undecodable_bytes_round_trip(tokenizer, data):
    ids = tokenizer.tokenize(tf.constant(data))
    assert ids.numpy().tolist() == [b + 6 for b in data]
    assert tokenizer.detokenize(ids).numpy() == data


def test_batched_ragged_round_trip(tokenizer):
    batch = [t.encode("utf-8") for t in TEXTS] + RAW
    ids = tokenizer.tokenize(batch)
    assert isinstance(ids, tf.RaggedTensor)
    assert ids.dtype == tf.int32 and ids.shape.rank == 2
    assert ids.row_lengths().numpy().tolist() == [len(b) for b in batch]
    values = ids.flat_values.numpy()
    assert values.min() >= 6 and values.max() < 262
    out = tokenizer.detokenize(ids)
    assert out.shape == (len(batch),)
    assert out.numpy().tolist() == batch


def test_ids_cover_exactly_6_to_261(tokenizer):
    ids = tokenizer.tokenize(bytes(range(256))).numpy()
    np.testing.assert_array_equal(ids, np.arange(6, 262))


def test_detokenize_dense_rank_1_and_2(tokenizer):
    ids = tokenizer.tokenize(["abc", "xy"])
    dense = ids.to_tensor(default_value=tokenizer.pad_id)  # pads "xy" with [PAD]
    assert dense.shape == (2, 3)
    assert tokenizer.detokenize(dense).numpy().tolist() == [b"abc", b"xy"]
    assert tokenizer.detokenize(dense.numpy()).numpy().tolist() == [b"abc", b"xy"]
    scalar = tokenizer.detokenize(dense[0])
    assert scalar.shape == () and scalar.numpy() == b"abc"
    assert tokenizer.detokenize([ord("h") + 6, ord("i") + 6]).numpy() == b"hi"
    assert tokenizer.detokenize(tf.constant([], tf.int32)).numpy() == b""
    assert tokenizer.detokenize(tf.constant([[104, 105]], tf.int64)).numpy().tolist() == [b"bc"]


def test_detokenize_drops_special_tokens(tokenizer):
    h, i = ord("h") + 6, ord("i") + 6
    special = list(range(6))
    dense = [[tokenizer.cls_id, h, tokenizer.mask_id, i, tokenizer.sep_id, 0]]
    assert tokenizer.detokenize(dense).numpy().tolist() == [b"hi"]
    ragged = tf.ragged.constant([special + [h] + special + [i] + [5], special, []], dtype=tf.int32)
    assert tokenizer.detokenize(ragged).numpy().tolist() == [b"hi", b"", b""]


def test_tokenize_inside_tf_function(tokenizer):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def round_trip(texts):
        ids = tokenizer.tokenize(texts)
        return ids.to_tensor(), tokenizer.detokenize(ids)

    batch = [t.encode("utf-8") for t in TEXTS[:3]] + [b"\xff\xfe"]
    dense, out = round_trip(tf.constant(batch))
    assert out.numpy().tolist() == batch
    assert dense.shape == (len(batch), max(len(b) for b in batch))


def test_tokenize_in_tf_data_map(tokenizer):
    texts = ["abc", "日本", "", "\xff"]
    scalar = tf.data.Dataset.from_tensor_slices(texts).map(tokenizer.tokenize)
    got = [x.tolist() for x in scalar.as_numpy_iterator()]
    assert got == [[b + 6 for b in t.encode("utf-8")] for t in texts]

    batched = tf.data.Dataset.from_tensor_slices(texts).batch(3).map(tokenizer.tokenize)
    rows = [row for batch in batched for row in batch.to_list()]
    assert rows == got

    round_trip = tf.data.Dataset.from_tensor_slices(texts).batch(2).map(
        lambda t: tokenizer.detokenize(tokenizer.tokenize(t))
    )
    assert [s for b in round_trip.as_numpy_iterator() for s in b.tolist()] == [
        t.encode("utf-8") for t in texts
    ]


@pytest.mark.parametrize("name", ["austen_6novels.txt", "zh_tang_song_poems.txt"])
def test_round_trip_on_real_text(tokenizer, shared_data, name):
    with open(shared_data / name, "rb") as f:
        data = f.read(200_000)
    lines = data.split(b"\n")  # the cut may leave a partial UTF-8 character at the end: fine
    ids = tokenizer.tokenize(lines)
    assert ids.flat_values.shape[0] == sum(len(line) for line in lines)
    assert tokenizer.detokenize(ids).numpy().tolist() == lines
    whole = tokenizer.tokenize(data)
    assert tokenizer.detokenize(whole).numpy() == data
