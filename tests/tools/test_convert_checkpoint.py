"""tools/convert_checkpoint.py, then the binaries on what it wrote: fine-tune (tflm-train),
evaluate (tflm-eval), export (tflm-export), as the README does."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

from hf_fixtures import write_bert_folder, write_gpt2_folder
from labelled_fixtures import write_labelled_paragraphs


def _run(repo_root, *args, timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=str(repo_root))
    return subprocess.run([sys.executable, *args], cwd=repo_root, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_convert_reports_and_refuses_bad_input(repo_root, tmp_path, capsys):
    # The tool's main in this process (the GPT-2 test below runs it as a script).
    spec = importlib.util.spec_from_file_location("convert_checkpoint",
                                                  repo_root / "tools" / "convert_checkpoint.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    write_bert_folder(str(tmp_path / "hf"))
    assert tool.main([f"--input_dir={tmp_path / 'hf'}", f"--output_dir={tmp_path / 'out'}"]) == 0
    out = capsys.readouterr().out
    assert "bert, 2 layers, width 32" in out
    assert "left out: cls.seq_relationship.weight" in out
    assert (tmp_path / "out" / "model.keras").is_file()
    code = tool.main([f"--input_dir={tmp_path / 'out'}", f"--output_dir={tmp_path / 'again'}"])
    assert code == 2 and "no config.json" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()


def test_a_converted_checkpoint_evaluates_as_it_is(tmp_path):
    """tflm-eval's path on a converted GPT-2 (model.keras, no checkpoints/): perplexity on
    held-out paragraphs of the embedded corpus."""
    from tflm.experiment import run_experiment
    from tflm.experiment import load_model_dir_config
    from tflm.tasks import convert_checkpoint

    write_gpt2_folder(str(tmp_path / "hf"))
    convert_checkpoint(str(tmp_path / "hf"), str(tmp_path / "gpt2"), print_fn=lambda line: None)
    config = load_model_dir_config(str(tmp_path / "gpt2"), params_override=(
        "data.document_split=blank_line,data.eval_every_nth_document=20,trainer.eval_steps=2,"
        "data.sequence_length=32"))
    lines = []
    trainer = run_experiment(config, str(tmp_path / "gpt2"), mode="eval", print_fn=lines.append)
    assert lines[0].endswith("model.keras")
    results = trainer.eval_results
    assert results["tokens"] == 2 * 16 * 32 and np.isfinite(results["perplexity"])
    # Random weights: about as perplexed as a uniform guess over the 600 ids, or worse.
    assert results["perplexity"] > 100


def test_gpt2_checkpoint_to_a_served_classifier_with_the_binaries(repo_root, tmp_path):
    """A GPT-2 classifier: causal, last-token pooling, end-of-text rows, byte-level BPE."""
    write_gpt2_folder(str(tmp_path / "hf_gpt2"))
    data = tmp_path / "paragraphs.jsonl"
    write_labelled_paragraphs(str(data), limit=200)
    result = _run(repo_root, "tools/convert_checkpoint.py", f"--input_dir={tmp_path / 'hf_gpt2'}",
                  f"--output_dir={tmp_path / 'gpt2'}")
    assert result.returncode == 0, result.stderr[-3000:]

    run = tmp_path / "run"
    result = _run(repo_root, "-m", "tflm.cli.train", f"--model_dir={run}", "--mode=train_and_eval",
                  "--params_override=model.task=classification,data.input_format=jsonl,"
                  f"data.input_path={data},model.init_checkpoint={tmp_path / 'gpt2'},"
                  "data.eval_every_nth_document=4,data.sequence_length=48,"
                  "data.global_batch_size=8,trainer.train_steps=6,trainer.log_every=3,"
                  "trainer.warmup_steps=0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "initialized from" in result.stdout and '"macro_f1"' in result.stdout
    params = (run / "params.yaml").read_text()
    assert "causal: true" in params and "tokenizer: byte_bpe" in params

    result = _run(repo_root, "-m", "tflm.cli.eval", f"--model_dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((run / "eval_results.json").read_text())
    assert results["label_names"] == ["dialogue", "narration"] and results["examples"] == 50

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "Hm.", "label": "poetry"}) + "\n")
    result = _run(repo_root, "-m", "tflm.cli.eval", f"--model_dir={run}",
                  f"--params_override=data.eval_input_path={bad}")
    assert result.returncode == 2
    assert f"{bad}:1: unknown label 'poetry'" in result.stderr
    assert "Traceback" not in result.stderr

    result = _run(repo_root, "-m", "tflm.cli.export", f"--model_dir={run}",
                  f"--export_dir={tmp_path / 'export'}")
    assert result.returncode == 0, result.stderr[-3000:]
    served = tf.saved_model.load(str(tmp_path / "export" / "1"))
    texts = ['"Not at all," said Elizabeth.', "The evening passed quietly."]
    output = served.signatures["classify"](text=tf.constant(texts))
    assert [x.decode() for x in output["label"].numpy()] in (
        [a, b] for a in ("dialogue", "narration") for b in ("dialogue", "narration"))

    from tflm.data.classification import encode_classification
    from tflm.experiment import load_trained

    model, tokenizer, config = load_trained(str(run))
    features, _ = encode_classification(tokenizer, tf.constant(texts), None,
                                        config.data.sequence_length, causal=True,
                                        pad_to_length=False)
    expected = tf.nn.softmax(model(features, training=False)).numpy()
    np.testing.assert_allclose(output["probabilities"].numpy(), expected, atol=1e-5)
