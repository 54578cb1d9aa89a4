"""Labelled data: reading JSONL/CSV with errors naming file:line, label ids, in-graph encoding
(BERT's pair truncation), batches for training and evaluation."""

import json

import numpy as np
import pytest
import tensorflow as tf

from tflm.experiment import load_experiment
from tflm.data import ByteTokenizer, InputStats
from tflm.tasks import make_dataset
from tflm.data.classification import (
    LabelledDataError,
    classification_batches,
    encode_classification,
    label_ids,
    label_names_of,
    read_labelled,
    resolve_label_names,
)

PAD, CLS, SEP, EOT = 0, 2, 3, 5


@pytest.fixture(scope="module")
def tokenizer():
    return ByteTokenizer()


def _write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def test_reads_jsonl_and_csv(tmp_path):
    jsonl = _write_jsonl(tmp_path / "a.jsonl", [
        {"text": "good", "label": "pos", "other": 1}, {"text": "bad", "label": "neg"}, "",
        {"text": "fine", "label": 1}])
    records = read_labelled([jsonl])
    assert records.texts == ["good", "bad", "fine"] and records.labels == ["pos", "neg", "1"]
    assert records.locations == [f"{jsonl}:1", f"{jsonl}:2", f"{jsonl}:4"]
    assert records.pairs is None
    csv_path = tmp_path / "b.csv"
    csv_path.write_text('sentence1,sentence2,gold\n"a, quoted\nline",b,yes\nc,d,no\n')
    records = read_labelled([str(csv_path)], "csv", "sentence1", "gold", "sentence2")
    assert records.texts == ["a, quoted\nline", "c"] and records.pairs == ["b", "d"]
    assert records.labels == ["yes", "no"]
    assert records.locations == [f"{csv_path}:2", f"{csv_path}:4"]


@pytest.mark.parametrize("line, why", [
    ({"txt": "typo", "label": "pos"}, "the text field 'text' is missing"),
    ({"text": 3, "label": "pos"}, "the text field 'text' is a int, not a string"),
    ({"text": "no label"}, "the label field 'label' is missing"),
    ("{not json", "not a JSON object"),
    ("[1, 2]", "not a JSON object but list"),
])
def test_a_bad_jsonl_line_names_file_and_line(tmp_path, line, why):
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"text": "ok", "label": "pos"}, line])
    with pytest.raises(LabelledDataError, match=f"bad.jsonl:2: {why}"):
        read_labelled([path])
    stats = InputStats()
    records = read_labelled([path], on_bad_record="count", stats=stats)
    assert len(records) == 1 and stats.as_dict()["records_missing_field"] == 1


def test_csv_without_the_column_names_the_header(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("review,label\nnice,pos\n")
    with pytest.raises(LabelledDataError, match=r"c.csv:1: the CSV header \['review', 'label'\] "
                                                r"has no column 'text'"):
        read_labelled([str(path)], "csv")


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_bytes(b'{"text": "caf\xc3 ok \xef\xbf\xbd", "label": "pos"}\n')
    stats = InputStats()
    records = read_labelled([str(path)], stats=stats)
    assert records.texts == ["caf\ufffd ok \ufffd"]
    counts = stats.as_dict()
    assert counts["invalid_utf8_documents"] == 1 and counts["invalid_utf8_replacements"] == 1


def test_label_names_and_an_unknown_label(tmp_path):
    assert label_names_of(["b", "a", "b"]) == ["a", "b"]
    assert label_names_of(["10", "2", "1"]) == ["1", "2", "10"]
    path = _write_jsonl(tmp_path / "eval.jsonl", [{"text": "x", "label": "pos"},
                                                  {"text": "y", "label": "neutral"}])
    records = read_labelled([path])
    with pytest.raises(LabelledDataError,
                       match=r"eval.jsonl:2: unknown label 'neutral'; the model knows "
                             r"\['neg', 'pos'\]"):
        label_ids(records, ["neg", "pos"])


def _python_truncate_pair(a, b, budget):
    """BERT's `_truncate_seq_pair`, as in its run_classifier.py."""
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        if len(a) > len(b):
            a.pop()
        else:
            b.pop()
    return a, b


def test_pair_truncation_is_berts(tokenizer):
    rng = np.random.default_rng(0)
    texts = ["".join(rng.choice(list("abcdef"), n)) for n in rng.integers(0, 20, 60)]
    pairs = ["".join(rng.choice(list("uvwxyz"), n)) for n in rng.integers(0, 20, 60)]
    length = 17
    features, truncated = encode_classification(tokenizer, tf.constant(texts), tf.constant(pairs),
                                                length)
    ids = features["token_ids"].numpy()
    for i, (a, b) in enumerate(zip(texts, pairs)):
        ta, tb = _python_truncate_pair(a.encode(), b.encode(), length - 3)
        row = [CLS] + [c + 6 for c in ta] + [SEP] + [c + 6 for c in tb] + [SEP]
        np.testing.assert_array_equal(ids[i], row + [PAD] * (length - len(row)), err_msg=str(i))
        segments = [0] * (len(ta) + 2) + [1] * (len(tb) + 1) + [0] * (length - len(row))
        np.testing.assert_array_equal(features["segment_ids"].numpy()[i], segments)
        np.testing.assert_array_equal(features["padding_mask"].numpy()[i],
                                      [1] * len(row) + [0] * (length - len(row)))
        assert truncated.numpy()[i] == (len(a) + len(b) > length - 3)


def test_decoder_rows_end_with_end_of_text(tokenizer):
    features, truncated = encode_classification(tokenizer, tf.constant(["hello", "x" * 20]),
                                                tf.constant(["yo", ""]), 12, causal=True,
                                                pad_to_length=False)
    hello = [c + 6 for c in b"hello"]
    assert features["token_ids"].numpy().tolist() == [
        hello + [EOT] + [c + 6 for c in b"yo"] + [EOT] + [PAD] * 3,
        [c + 6 for c in b"x" * 10] + [EOT, EOT]]
    assert truncated.numpy().tolist() == [False, True]


def test_batches_for_training_and_evaluation(tokenizer):
    texts = [f"text {i}" for i in range(10)]
    labels = np.arange(10) % 3
    train = classification_batches(texts, labels, tokenizer, 16, 4, training=True, seed=1)
    seen = []
    for features, batch_labels, weights in train.take(5):  # two epochs
        assert features["token_ids"].shape == (4, 16)
        np.testing.assert_array_equal(weights, 1.0)
        decoded = tokenizer.detokenize(features["token_ids"]).numpy()
        seen += [int(t.decode().split()[1]) for t in decoded]
        np.testing.assert_array_equal(batch_labels, np.array(seen[-4:]) % 3)
    assert sorted(seen[:10]) == list(range(10)) and seen[:10] != list(range(10))
    evaluation = list(classification_batches(texts, labels, tokenizer, 16, 4, training=False))
    assert len(evaluation) == 3
    weights = np.concatenate([w for _, _, w in evaluation])
    np.testing.assert_array_equal(weights, [1.0] * 10 + [0.0] * 2)  # final batch padded
    order = [int(t.decode().split()[1]) for f, _, _ in evaluation
             for t in tokenizer.detokenize(f["token_ids"]).numpy()][:10]
    assert sorted(order) == list(range(10)) and order != list(range(10))  # a fixed sample order
    np.testing.assert_array_equal(np.concatenate([y for _, y, _ in evaluation])[:10],
                                  labels[order])

    class Context:  # two input pipelines each read every other record
        num_input_pipelines, input_pipeline_id = 2, 1

    shard = list(classification_batches(texts, labels, tokenizer, 16, 5, training=False,
                                        input_context=Context()))
    assert len(shard) == 1
    rows = [int(t.decode().split()[1]) for t in tokenizer.detokenize(shard[0][0]["token_ids"]).numpy()]
    assert len(rows) == 5 and len(set(rows)) == 5


def _config(tmp_path, records, extra=""):
    path = _write_jsonl(tmp_path / "data.jsonl", records)
    return load_experiment("configs/tiny_bert.yaml", ",".join(filter(None, [
        "model.task=classification,data.input_format=jsonl,data.sequence_length=16,"
        f"data.global_batch_size=2,data.input_path={path},data.eval_every_nth_document=3", extra])))


def test_make_dataset_holds_out_every_nth_record(tmp_path):
    records = [{"text": f"r{i}", "label": ["neg", "pos"][i % 2]} for i in range(9)]
    config = _config(tmp_path, records)
    assert resolve_label_names(config) == ["neg", "pos"]
    stats = InputStats()
    evaluation = list(make_dataset(config, training=False, split="eval", stats=stats))
    texts = [t.decode() for f, _, w in evaluation
             for t, keep in zip(ByteTokenizer().detokenize(f["token_ids"]).numpy(), w) if keep]
    assert sorted(texts) == ["r0", "r3", "r6"]
    # Tokens of the real rows: [CLS] r N [SEP]; not the padding, nor the weight-0 final row.
    assert stats.as_dict()["tokens"] == 3 * 4
    assert stats.as_dict()["documents"] == 9
    train = make_dataset(config, split="train")
    trained = {t.decode() for f, _, _ in train.take(6)
               for t in ByteTokenizer().detokenize(f["token_ids"]).numpy()}
    assert trained == {"r1", "r2", "r4", "r5", "r7", "r8"}


def test_an_empty_split_is_an_error(tmp_path):
    config = _config(tmp_path, ["", "  "])
    with pytest.raises(LabelledDataError, match="no labelled records for the train split"):
        make_dataset(config)
