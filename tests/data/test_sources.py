import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tflm.data import InputStats, read_documents, resolve_files
from tflm.data.sources import (bad_record_error, shard_for_worker, split_long_document,
                               worker_files)
from tflm.data.text_cleaning import replace_invalid_utf8


def _docs(dataset):
    return [d.decode("utf-8") for d in dataset.as_numpy_iterator()]


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return str(path)


def test_document_splits(tmp_path):
    text = "first para\nstill first\n\n\nsecond para\n  \nthird\n"
    path = _write(tmp_path, "a.txt", text)
    assert _docs(read_documents([path])) == [text]
    assert _docs(read_documents([path], document_split="blank_line")) == [
        "first para\nstill first", "second para", "third\n"]
    stats = InputStats()
    assert _docs(read_documents([path], document_split="line", stats=stats)) == [
        "first para", "still first", "second para", "third"]
    # Three empty or blank lines skipped and counted; the final newline ends a line, no document.
    assert stats.as_dict()["empty_documents_skipped"] == 3
    assert stats.as_dict()["documents"] == 7


def test_delimiter_split_on_chinese_poems(shared_data):
    stats = InputStats()
    docs = _docs(read_documents([str(shared_data / "zh_tang_song_poems.txt")],
                                document_split="delimiter", delimiter="%", stats=stats))
    raw = (shared_data / "zh_tang_song_poems.txt").read_text(encoding="utf-8")
    # Some separator lines carry trailing spaces ("%    "): still separators.
    expected = [d for d in re.split(r"(?m)^[ \t]*%[ \t]*\n", raw) if d.strip()]
    assert len(docs) == len(expected) > 100
    assert docs[1].startswith("《") and all(d.strip() != "%" for d in docs)
    assert [d.strip() for d in docs] == [d.strip() for d in expected]


def test_undecodable_bytes_replaced_and_counted(tmp_path):
    path = _write(tmp_path, "bad.txt", b"ok line\nbad \xff\xfe bytes\ntruncated \xe4\xb8\n")
    stats = InputStats()
    docs = _docs(read_documents([path], document_split="line", stats=stats))
    assert docs == ["ok line", "bad \ufffd\ufffd bytes", "truncated \ufffd"]
    counts = stats.as_dict()
    assert counts["invalid_utf8_replacements"] == 3
    assert counts["invalid_utf8_documents"] == 2


def test_existing_replacement_characters_are_not_counted_as_repairs():
    repaired, count = replace_invalid_utf8(tf.constant(["already \ufffd here".encode(), b"new \xff"]))
    assert list(count.numpy()) == [0, 1]
    assert repaired.numpy()[1].decode() == "new \ufffd"


def test_empty_files_and_lines_skipped_and_counted(tmp_path):
    empty = _write(tmp_path, "empty.txt", b"")
    blank = _write(tmp_path, "blank.txt", b"  \n\t\n")
    real = _write(tmp_path, "real.txt", b"words")
    stats = InputStats()
    assert _docs(read_documents([empty, blank, real], stats=stats)) == ["words"]
    assert stats.as_dict()["empty_documents_skipped"] == 2


def test_jsonl_missing_field_counted_or_named(tmp_path):
    path = _write(tmp_path, "data.jsonl",
                  b'{"text": "one"}\n{"label": 1}\n\n{"text": "caf\\u00e9 \xff"}\nnot json\n')
    stats = InputStats()
    assert _docs(read_documents([path], input_format="jsonl", stats=stats)) == ["one", "café \ufffd"]
    counts = stats.as_dict()
    assert counts["records_missing_field"] == 2
    assert counts["empty_documents_skipped"] == 1
    assert counts["invalid_utf8_replacements"] == 1
    error = r"data\.jsonl:2: not a JSON object with a string value for the key text"
    with pytest.raises(tf.errors.InvalidArgumentError, match=error) as raised:
        _docs(read_documents([path], input_format="jsonl", on_bad_record="error"))
    # The binaries print this one line instead of TensorFlow's error.
    assert str(bad_record_error(raised.value)) == f"{path}:2: " + error.split(":2: ")[1]
    assert bad_record_error(ValueError("another error")) is None


def test_long_document_cut_at_whitespace_or_characters(tmp_path):
    for text in ["word " * 5000, "中文字符" * 3000, "x" * 20000]:
        pieces = [p.decode("utf-8") for p in split_long_document(tf.constant(text), 1000).numpy()]
        assert "".join(pieces) == text
        assert max(len(p.encode()) for p in pieces) <= 1000 + 256
        if text.startswith("word"):
            assert all(p.endswith(" ") for p in pieces[:-1])
    path = _write(tmp_path, "long.txt", "word " * 5000)
    stats = InputStats()
    docs = _docs(read_documents([path], max_document_bytes=1000, stats=stats))
    assert "".join(docs) == "word " * 5000 and len(docs) > 20
    assert stats.as_dict()["long_documents_split"] == 1


def test_a_50_megabyte_line_stays_within_bounded_memory(tmp_path):
    """A single 50 MB line is read, cut and tokenized with memory of a few times its size."""
    path = tmp_path / "one_line.txt"
    with open(path, "w") as f:
        f.write(("lorem ipsum dolor sit amet 中文 " * 1_700_000)[:50_000_000] + "\n")
    script = textwrap.dedent(f"""
        import os, resource
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        from tflm.data import ByteTokenizer, read_documents
        from tflm.data.pipeline import tokenize_documents
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        docs = read_documents([{str(path)!r}], document_split="line")
        tokens = sum(len(t) for t in tokenize_documents(docs, ByteTokenizer()).as_numpy_iterator())
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(tokens, (peak - base) // 1024)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert result.returncode == 0, result.stderr[-2000:]
    tokens, growth_mb = map(int, result.stdout.split())
    assert tokens == os.path.getsize(path) - 1  # every byte but the newline
    assert growth_mb < 600, f"reading a 50 MB line grew memory by {growth_mb} MB"


def test_missing_path_and_empty_glob_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        resolve_files(str(tmp_path / "nowhere.txt"))
    with pytest.raises(FileNotFoundError, match=r"\*\.jsonl"):
        resolve_files(str(tmp_path / "*.jsonl"))


def test_bad_arguments():
    with pytest.raises(ValueError, match="csv"):
        read_documents(["x"], input_format="csv")
    with pytest.raises(ValueError, match="delimiter"):
        read_documents(["x"], document_split="delimiter")


def _context(pipelines, index):
    return tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=index,
                                      num_replicas_in_sync=pipelines)


def test_workers_shard_by_files_when_there_are_enough(tmp_path):
    paths = [_write(tmp_path, f"f{i}.txt", f"document {i}") for i in range(5)]
    shards = [_docs(read_documents(paths, input_context=_context(2, i))) for i in range(2)]
    assert shard_for_worker(paths, _context(2, 0)) == (paths[0::2], False)
    assert set(shards[0]).isdisjoint(shards[1])
    assert sorted(shards[0] + shards[1]) == sorted(f"document {i}" for i in range(5))


def test_workers_shard_by_records_otherwise(tmp_path):
    path = _write(tmp_path, "one.txt", "\n".join(f"line {i}" for i in range(11)))
    shards = [_docs(read_documents([path], document_split="line", input_context=_context(2, i)))
              for i in range(2)]
    assert shard_for_worker([path], _context(2, 1)) == ([path], True)
    assert set(shards[0]).isdisjoint(shards[1])
    assert sorted(shards[0] + shards[1]) == sorted(f"line {i}" for i in range(11))
    assert abs(len(shards[0]) - len(shards[1])) <= 1


def test_file_order_shuffled_per_epoch_with_seed(tmp_path):
    paths = [_write(tmp_path, f"f{i}.txt", f"doc {i}") for i in range(8)]

    def epochs(seed):
        return _docs(read_documents(paths, shuffle_seed=seed, repeat=True).take(16))

    a, b, c = epochs(1), epochs(1), epochs(2)
    assert a == b and a != c
    assert sorted(a[:8]) == sorted(a[8:]) and a[:8] != a[8:]  # each epoch all files, new order
    assert np.unique(a[:8]).size == 8


def test_file_order_depends_on_the_seed_and_epoch_only():
    files = [f"f{i}" for i in range(6)]

    def epochs(seed):
        names, _ = worker_files(files, shuffle_seed=seed, repeat=True)
        order = [n.decode() for n in names.take(6 * 4).as_numpy_iterator()]
        return [order[i:i + 6] for i in range(0, len(order), 6)]

    first = epochs(0)
    assert all(sorted(epoch) == files for epoch in first)
    assert len({tuple(epoch) for epoch in first}) > 1  # reshuffled each epoch
    tf.random.set_seed(1234)  # TensorFlow's global seed does not change it
    assert epochs(0) == first and epochs(1) != first
