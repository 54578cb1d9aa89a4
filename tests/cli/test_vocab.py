import json
import os
import pathlib
import subprocess
import sys

import pytest
from absl import flags

from tflm.cli import vocab
from tflm.data import default_corpus_path, load_tokenizer

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    with open(default_corpus_path(), encoding="utf-8") as f:
        path.write_text(f.read(150_000), encoding="utf-8")
    return path


def test_console_entry_trains_a_vocabulary_that_loads(corpus, tmp_path):
    """The one subprocess run: the real binary, flags to files to a loadable tokenizer."""
    output = tmp_path / "bpe"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "tflm.cli.vocab", "--kind=byte_bpe", f"--input={corpus}",
         "--vocab_size=500", f"--output_dir={output}"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["kind"] == "byte_bpe" and summary["vocabulary_size"] == 500
    assert summary["files"] == 1 and summary["lines"] > 2000 and summary["repaired"] == 0
    assert sorted(p.name for p in output.iterdir()) == ["merges.txt", "tokenizer.json", "vocab.json"]
    tokenizer = load_tokenizer(str(output))
    assert tokenizer.fingerprint() == summary["fingerprint"]
    assert tokenizer.detokenize(tokenizer.tokenize("It is a truth")).numpy() == b"It is a truth"


def _main(*args):
    """Runs tflm-vocab's main in this process with `args` as flags, then unparses them."""
    try:
        flags.FLAGS(["tflm-vocab", *args])
        vocab.main([])
    finally:
        flags.FLAGS.unparse_flags()


@pytest.mark.parametrize("kind", ["wordpiece", "sentencepiece_unigram", "sentencepiece_bpe"])
def test_main_trains_each_kind(kind, corpus, tmp_path, capsys):
    output = tmp_path / kind
    _main(f"--kind={kind}", f"--input={corpus}", "--vocab_size=700", f"--output_dir={output}",
          "--character_coverage=1.0")
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    tokenizer = load_tokenizer(str(output))
    assert summary["fingerprint"] == tokenizer.fingerprint()
    assert tokenizer.config()["lowercase"] is (kind == "wordpiece")


def test_main_lowercase_flag(corpus, tmp_path, capsys):
    _main("--kind=sentencepiece_bpe", f"--input={corpus}", "--vocab_size=600", "--lowercase",
          f"--output_dir={tmp_path}")
    assert load_tokenizer(str(tmp_path)).normalize("Café").numpy() == b"cafe"


@pytest.mark.parametrize("args, message", [
    (["--input={tmp}/nothing/*.txt", "--vocab_size=500"], "No input files match '{tmp}/nothing/*.txt'"),
    (["--input={corpus}", "--vocab_size=3"], "vocab_size=3 is too small"),
])
def test_main_bad_input_is_one_error_line(args, message, corpus, tmp_path, capsys):
    args = [a.format(tmp=tmp_path, corpus=corpus) for a in args]
    with pytest.raises(SystemExit) as exit_info:
        _main("--kind=wordpiece", f"--output_dir={tmp_path / 'out'}", *args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tflm-vocab: error: ") and "\n" not in err
    assert message.format(tmp=tmp_path) in err
    assert not (tmp_path / "out").exists()
