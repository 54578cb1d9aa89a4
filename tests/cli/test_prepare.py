import json
import os
import subprocess
import sys

import pytest

from tflm.cli.prepare import prepare
from tflm.experiment import run_experiment
from tflm.config import ConfigError
from tflm.experiment import load_experiment


def test_prepare_then_train_from_shards(tmp_path):
    config = load_experiment("configs/tiny_gpt.yaml")
    out = str(tmp_path / "data")
    manifest = prepare(config, out, num_shards=2, print_fn=lambda s: None)
    assert manifest["documents"] > 0 and manifest["tokens"] > 600_000  # the embedded corpus
    trained = load_experiment(
        "configs/tiny_gpt.yaml",
        f"data.input_format=tfrecord,data.input_path={out},trainer.train_steps=4,"
        "trainer.log_every=2,data.global_batch_size=4,data.sequence_length=32",
    )
    lines = []
    trainer = run_experiment(trained, str(tmp_path / "model"), print_fn=lines.append)
    assert trainer.status == "completed" and trainer.history[-1]["step"] == 4
    # The summary says what the 4 steps consumed, and what the pipeline read from the shards.
    summary = json.loads(lines[-1].split("tflm-train: ", 1)[1])
    assert summary["consumed"] == {"global_batches": 4, "examples": 16, "positions": 4 * 4 * 32}
    assert summary["read"]["documents"] > 0 and summary["read"]["tokens"] >= 4 * 4 * 33


def test_prepare_refuses_prepared_input(tmp_path):
    config = load_experiment("configs/tiny_gpt.yaml",
                             f"data.input_format=tfrecord,data.input_path={tmp_path}")
    with pytest.raises(ConfigError, match="already prepared"):
        prepare(config, str(tmp_path / "out"), num_shards=1)


def test_binary_names_a_vocabulary_mismatch(tmp_path, repo_root):
    """Data prepared with one tokenizer, trained with another: one clear line, exit 2."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({
        "format": "tflm-prepared-v1",
        "tokenizer": {"kind": "byte", "fingerprint": "0" * 64, "vocabulary_size": 262},
        "shards": [],
    }))
    result = subprocess.run(
        [sys.executable, "-m", "tflm.cli.train", "--config_file=configs/tiny_gpt.yaml",
         f"--model_dir={tmp_path / 'model'}",
         f"--params_override=data.input_format=tfrecord,data.input_path={data}"],
        cwd=repo_root, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert result.returncode == 2
    assert "fingerprint" in result.stderr and "prepare the data again" in result.stderr
    assert not (tmp_path / "model").exists()
