import json
import os

import numpy as np
import pytest

from tflm.data import ByteTokenizer, prepare_corpus, read_documents, read_prepared
from tflm.data.pipeline import tokenize_documents
from tflm.data.prepared import MANIFEST, ManifestError, load_manifest, prepared_files


class _OtherVocabulary(ByteTokenizer):
    """Same ids, different fingerprint: stands for a tokenizer trained on other text."""

    def config(self):
        return {"trained_on": "something else"}


@pytest.fixture
def corpus(tmp_path):
    paths = []
    for i, text in enumerate([b"alpha beta\n\ngamma", b"\xff broken\n\n\n\n", "中文 text\n\ndelta".encode()]):
        path = tmp_path / f"in{i}.txt"
        path.write_bytes(text)
        paths.append(str(path))
    return paths


def test_prepare_writes_shards_and_manifest(corpus, tmp_path):
    tokenizer = ByteTokenizer()
    out = str(tmp_path / "prepared")
    manifest = prepare_corpus(corpus, out, tokenizer, num_shards=2, document_split="blank_line")
    assert sorted(os.listdir(out)) == [MANIFEST, "shard-00000-of-00002.tfrecord",
                                       "shard-00001-of-00002.tfrecord"]
    assert manifest == json.loads(open(os.path.join(out, MANIFEST)).read())
    assert manifest["documents"] == 5
    assert manifest["repaired"]["invalid_utf8_replacements"] == 1
    assert manifest["tokenizer"]["fingerprint"] == tokenizer.fingerprint()
    assert [s["documents"] for s in manifest["shards"]] == [3, 2]  # round-robin

    expected = [list(t) for t in tokenize_documents(
        read_documents(corpus, document_split="blank_line"), tokenizer).as_numpy_iterator()]
    assert manifest["tokens"] == sum(len(t) for t in expected)
    read_back = [list(t) for t in read_prepared(prepared_files(out, tokenizer)).as_numpy_iterator()]
    # Shard 0 holds documents 0, 2, 4 and shard 1 documents 1, 3.
    assert read_back == [expected[i] for i in (0, 2, 4, 1, 3)]


def test_prepare_tokenizes_in_batches_in_order(corpus, tmp_path, monkeypatch):
    from tflm.data import prepared

    monkeypatch.setattr(prepared, "PREPARE_BATCH", 2)  # 5 documents: batches of 2, 2, 1
    tokenizer = ByteTokenizer()
    out = str(tmp_path / "prepared")
    manifest = prepare_corpus(corpus, out, tokenizer, num_shards=1, document_split="blank_line")
    expected = [list(t) for t in tokenize_documents(
        read_documents(corpus, document_split="blank_line"), tokenizer).as_numpy_iterator()]
    read_back = [list(t) for t in read_prepared(prepared_files(out, tokenizer)).as_numpy_iterator()]
    assert read_back == expected and manifest["tokens"] == sum(map(len, expected))


def test_vocabulary_mismatch_is_a_clear_error(corpus, tmp_path):
    out = str(tmp_path / "prepared")
    prepare_corpus(corpus, out, ByteTokenizer(), num_shards=1)
    with pytest.raises(ManifestError, match="fingerprint"):
        prepared_files(out, _OtherVocabulary())


def test_interrupted_prepare_is_detected_and_rerun_cleans_up(corpus, tmp_path):
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "shard-00000-of-00001.tfrecord.tmp").write_bytes(b"partial")
    with pytest.raises(ManifestError, match="did not finish"):
        load_manifest(str(out))
    prepare_corpus(corpus, str(out), ByteTokenizer(), num_shards=1)
    assert sorted(os.listdir(out)) == [MANIFEST, "shard-00000-of-00001.tfrecord"]


def test_missing_shard_is_named(corpus, tmp_path):
    out = tmp_path / "prepared"
    prepare_corpus(corpus, str(out), ByteTokenizer(), num_shards=2)
    os.remove(out / "shard-00001-of-00002.tfrecord")
    with pytest.raises(ManifestError, match="shard-00001-of-00002"):
        prepared_files(str(out), ByteTokenizer())


def test_workers_read_disjoint_shards(corpus, tmp_path):
    import tensorflow as tf

    out = str(tmp_path / "prepared")
    prepare_corpus(corpus, out, ByteTokenizer(), num_shards=2, document_split="blank_line")
    files = prepared_files(out, ByteTokenizer())
    reads = []
    for i in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i)
        reads.append([tuple(t) for t in read_prepared(files, context).as_numpy_iterator()])
    everything = [tuple(t) for t in read_prepared(files).as_numpy_iterator()]
    assert set(reads[0]).isdisjoint(reads[1])
    assert sorted(reads[0] + reads[1]) == sorted(everything)
    assert np.all([len(r) > 0 for r in reads])
