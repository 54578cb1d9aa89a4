"""The bad-input battery: the binaries on crafted files.

Each case either ends in one line, `tflm-<name>: error: <file or key>...`, and exit status 2,
or succeeds with a manifest whose counts add up to the input: every document read is written
or counted as skipped, every byte read is in a document, a skipped one, or between documents.
The binaries' `main` runs in this process (as `tests/cli` does); one case runs the real
console binary.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

from tflm.cli import prepare, train, vocab
from tflm.data import ByteTokenizer, read_prepared

BYTE_GPT = ("data.tokenizer=byte,data.document_split=line,data.eval_every_nth_document=0,"
            "data.sequence_length=16,data.global_batch_size=2")


def _run(module, program, *args, capsys):
    """Runs `module.main` with `args` as flags; returns (exit status, stdout, stderr)."""
    code = 0
    try:
        flags.FLAGS([program, *args])
        module.main([])
    except SystemExit as e:
        code = e.code
    finally:
        flags.FLAGS.unparse_flags()
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def _prepare(tmp_path, capsys, input_path, extra=""):
    out = tmp_path / "prepared"
    overrides = ",".join(filter(None, [BYTE_GPT, f"data.input_path={input_path}", extra]))
    code, _, err = _run(prepare, "tflm-prepare", "--config_file=configs/tiny_gpt.yaml",
                        f"--output_dir={out}", "--num_shards=2", f"--params_override={overrides}",
                        capsys=capsys)
    manifest = json.loads((out / "manifest.json").read_text()) if code == 0 else None
    return code, err, manifest


def _assert_one_error_line(err, program, *named):
    assert err.startswith(f"{program}: error: ") and "\n" not in err, err
    for name in named:
        assert str(name) in err, (name, err)


def _assert_counts_add_up(manifest, input_bytes):
    read, skipped, repaired = manifest["input"], manifest["skipped"], manifest["repaired"]
    assert read["bytes"] == input_bytes
    assert read["bytes"] == read["document_bytes"] + skipped["bytes"] + read["separator_bytes"]
    assert manifest["documents"] == (read["documents"] - skipped["empty_documents"]
                                     - skipped["records_missing_field"]
                                     + repaired["documents_added_by_splitting"])
    assert manifest["documents"] == sum(s["documents"] for s in manifest["shards"])


def _documents(folder):
    """The prepared documents as bytes (the byte tokenizer's ids back to bytes)."""
    names = [os.path.join(folder, s["file"])
             for s in json.loads((folder / "manifest.json").read_text())["shards"]]
    offset = ByteTokenizer().byte_offset
    return [bytes(int(i) - offset for i in ids) for ids in read_prepared(names).as_numpy_iterator()]


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# Files that prepare: (name, bytes, expected documents in order of the shards' round robin, or
# None to check only the counts).
GOOD_INPUTS = {
    "invalid_utf8": (b"ok\nbad \xff\xfe bytes\ncut \xe4\xb8\n", None),
    "nul_and_control_bytes": (b"a\x00b\n\x1e\x1f record separator\nc\x07d\n", None),
    "crlf_and_bom": (b"\xef\xbb\xbffirst\r\nsecond\r\n\r\nthird", None),
    "binary": (np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(), None),
    "very_long_line": (b"word " * 60_000 + b"\nshort\n", None),
}


@pytest.mark.parametrize("case", sorted(GOOD_INPUTS))
def test_prepare_repairs_and_counts(case, tmp_path, capsys):
    data, _ = GOOD_INPUTS[case]
    path = _write(tmp_path, f"{case}.txt", data)
    code, err, manifest = _prepare(tmp_path, capsys, path)
    assert code == 0, err
    _assert_counts_add_up(manifest, len(data))
    documents = _documents(tmp_path / "prepared")
    if case == "nul_and_control_bytes":
        # No byte is an internal marker: 0x1E stays in its document, NUL too.
        assert sorted(documents) == sorted([b"a\x00b", b"\x1e\x1f record separator", b"c\x07d"])
    if case == "crlf_and_bom":
        # "\r" stays with its line, as whitespace; the BOM stays in the first document.
        assert sorted(documents) == sorted([b"\xef\xbb\xbffirst\r", b"second\r", b"third"])
        assert manifest["skipped"]["empty_documents"] == 1
    if case == "invalid_utf8":
        assert manifest["repaired"]["invalid_utf8_replacements"] == 3
    if case == "very_long_line":
        assert manifest["repaired"]["long_documents_split"] == 1
        assert manifest["repaired"]["documents_added_by_splitting"] >= 4
        assert b"".join(sorted(documents, key=len)[1:]) .count(b"word") <= 60_000


def test_prepare_reads_a_folder_recursively_sorted_without_hidden_files(tmp_path, capsys):
    folder = tmp_path / "corpus"
    _write(folder, "b.txt", b"two\n")
    _write(folder, "a/z.txt", b"one\n")
    _write(folder, "c/d/e.txt", b"three\n")
    _write(folder, ".hidden.txt", b"hidden\n")
    _write(folder, ".git/objects.txt", b"hidden too\n")
    code, err, manifest = _prepare(tmp_path, capsys, folder)
    assert code == 0, err
    assert manifest["source"]["files"] == ["z.txt", "b.txt", "e.txt"]
    _assert_counts_add_up(manifest, len(b"one\ntwo\nthree\n"))
    assert sorted(_documents(tmp_path / "prepared")) == [b"one", b"three", b"two"]


@pytest.mark.parametrize("case, data, named", [
    ("empty", b"", ["empty.txt", "no documents"]),
    ("blank_only", b"  \n\t\r\n\n", ["blank_only.txt", "no documents", "3 empty"]),
])
def test_prepare_refuses_zero_documents(case, data, named, tmp_path, capsys):
    path = _write(tmp_path, f"{case}.txt", data)
    code, err, _ = _prepare(tmp_path, capsys, path)
    assert code == 2
    _assert_one_error_line(err, "tflm-prepare", *named)
    assert not (tmp_path / "prepared" / "manifest.json").exists()


def test_prepare_names_missing_paths_and_empty_globs(tmp_path, capsys):
    for pattern in (tmp_path / "missing.txt", tmp_path / "nothing" / "*.txt"):
        code, err, _ = _prepare(tmp_path, capsys, pattern)
        assert code == 2
        _assert_one_error_line(err, "tflm-prepare", pattern)
    (tmp_path / "empty_folder").mkdir()
    code, err, _ = _prepare(tmp_path, capsys, tmp_path / "empty_folder")
    assert code == 2
    _assert_one_error_line(err, "tflm-prepare", "empty_folder", "no (visible) files")


JSONL = (b'{"text": "one"}\n'
         b'{"meta": {"text": "nested only"}}\n'
         b'\n'
         b'{"text": "caf\\u00e9", "meta": {"text": "not this"}}\n'
         b'not json\n'
         b'{"text": 3}\n'
         b'{"text": "  "}\r\n')


def test_jsonl_bad_records_counted(tmp_path, capsys):
    path = _write(tmp_path, "records.jsonl", JSONL)
    code, err, manifest = _prepare(tmp_path, capsys, path, "data.input_format=jsonl")
    assert code == 0, err
    _assert_counts_add_up(manifest, len(JSONL))
    assert manifest["skipped"]["records_missing_field"] == 3  # nested only, not JSON, a number
    assert manifest["skipped"]["empty_documents"] == 2  # a blank line, a blank text
    assert sorted(_documents(tmp_path / "prepared")) == [b"caf\xc3\xa9", b"one"]


def test_jsonl_bad_record_is_one_line_naming_file_and_line(tmp_path, capsys):
    path = _write(tmp_path, "records.jsonl", JSONL)
    code, err, _ = _prepare(tmp_path, capsys, path,
                            "data.input_format=jsonl,data.on_bad_record=error")
    assert code == 2
    _assert_one_error_line(err, "tflm-prepare", f"{path}:2: ", "key text")


def test_console_binary_prints_one_line_for_a_bad_record(tmp_path, repo_root):
    path = _write(tmp_path, "records.jsonl", b'{"text": "ok"}\n{"txt": "typo"}\n')
    result = subprocess.run(
        [sys.executable, "-m", "tflm.cli.prepare", "--config_file=configs/tiny_gpt.yaml",
         f"--output_dir={tmp_path / 'out'}", f"--params_override={BYTE_GPT},"
         f"data.input_format=jsonl,data.on_bad_record=error,data.input_path={path}"],
        cwd=repo_root, capture_output=True, text=True, timeout=180,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("tflm-prepare")]
    assert lines == [f"tflm-prepare: error: {path}:2: not a JSON object with a string value "
                     "for the key text"], result.stderr
    assert "Traceback" not in result.stderr


def test_train_refuses_zero_documents_instead_of_waiting(tmp_path, capsys):
    path = _write(tmp_path, "blank.txt", b"\n  \n")
    code, _, err = _run(train, "tflm-train", "--config_file=configs/tiny_gpt.yaml",
                        f"--model_dir={tmp_path / 'run'}",
                        f"--params_override={BYTE_GPT},data.input_path={path}", capsys=capsys)
    assert code == 2
    _assert_one_error_line(err, "tflm-train", "blank.txt", "no documents")


def test_train_refuses_a_training_split_emptied_by_holding_out(tmp_path, capsys):
    # One document, and it is the held-out one: training would have nothing.
    from tflm.data.pipeline import held_out_mask
    import tensorflow as tf

    tokenizer = ByteTokenizer()
    text = next(f"doc {i}" for i in range(100) if bool(held_out_mask(
        tokenizer.tokenize(tf.constant([f"doc {i}"])), 2)[0]))
    path = _write(tmp_path, "one.txt", text.encode() + b"\n")
    code, _, err = _run(train, "tflm-train", "--config_file=configs/tiny_gpt.yaml",
                        f"--model_dir={tmp_path / 'run'}",
                        f"--params_override={BYTE_GPT},data.input_path={path},"
                        "data.eval_every_nth_document=2", capsys=capsys)
    assert code == 2
    _assert_one_error_line(err, "tflm-train", "one.txt", "data.eval_every_nth_document=2")


def test_vocab_refuses_zero_documents(tmp_path, capsys):
    path = _write(tmp_path, "blank.txt", b"\n \n\t\n")
    code, _, err = _run(vocab, "tflm-vocab", "--kind=wordpiece", f"--input={path}",
                        "--vocab_size=100", f"--output_dir={tmp_path / 'vocab'}", capsys=capsys)
    assert code == 2
    _assert_one_error_line(err, "tflm-vocab", "blank.txt")
    assert not (tmp_path / "vocab").exists()


def test_csv_quoted_newlines_and_a_missing_label(tmp_path, capsys):
    data = (b'text,label\n"first line\nsecond line of one record",pos\n'
            b'plain,neg\nno label here,\n"also, quoted",pos\n')
    path = _write(tmp_path, "labelled.csv", data)
    code, _, err = _run(train, "tflm-train", "--config_file=configs/tiny_gpt.yaml",
                        f"--model_dir={tmp_path / 'run'}",
                        "--params_override=model.task=classification,data.input_format=csv,"
                        f"data.input_path={path},data.on_bad_record=error,"
                        "data.eval_every_nth_document=0", capsys=capsys)
    assert code == 2
    # The record without a label starts on line 5 (the quoted newline spans lines 2-3).
    _assert_one_error_line(err, "tflm-train", f"{path}:5")

    from tflm.data.classification import read_labelled
    from tflm.data.stats import InputStats

    stats = InputStats()
    records = read_labelled([str(path)], "csv", on_bad_record="count", stats=stats)
    assert records.texts == ["first line\nsecond line of one record", "plain", "also, quoted"]
    assert stats.as_dict()["records_missing_field"] == 1


def test_train_prints_one_line_for_a_bad_record_met_while_training(tmp_path, capsys):
    path = _write(tmp_path, "records.jsonl", b'{"text": "a good first record"}\n' * 3
                  + b'{"txt": "typo"}\n')
    code, _, err = _run(train, "tflm-train", "--config_file=configs/tiny_gpt.yaml",
                        f"--model_dir={tmp_path / 'run'}",
                        f"--params_override={BYTE_GPT},data.input_path={path},"
                        "data.input_format=jsonl,data.on_bad_record=error,"
                        "trainer.train_steps=4,trainer.jit_compile=false", capsys=capsys)
    assert code == 2
    _assert_one_error_line(err, "tflm-train", f"{path}:4: ", "key text")
