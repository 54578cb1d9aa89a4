"""tools/benchmark.py runs end to end on a CPU, small: every side and measurement prints its
JSON line and each shape a summary with the ratio (the numbers themselves are benchmarks,
not tests)."""

import importlib.util
import json
import os
import subprocess
import sys

# The smallest model of each shape: these tests prove that each measurement runs and prints
# well-formed records; the shapes' own sizes are what the benchmark itself is run on.
SHRUNK = "model.num_layers=1,model.num_heads=2,model.hidden_dim=32,model.intermediate_dim=64"


def _run(repo_root, *args):
    result = subprocess.run(
        [sys.executable, "tools/benchmark.py", *args, "--repeats=1"], cwd=repo_root,
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
                 PYTHONPATH=str(repo_root)))
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_training_side_by_side_on_the_gpu_shape_shrunk(repo_root):
    records = _run(repo_root, "train", "--shapes=bert_base", "--steps=4", "--window=2",
                   "--precision=mixed_bfloat16", f"--params_override={SHRUNK},"
                   "data.sequence_length=32,data.global_batch_size=2")
    sides = {r["side"]: r for r in records if not r.get("summary")}
    assert set(sides) == {"tflm", "keras_hub"}
    # The same model shape on both sides.
    assert sides["tflm"]["parameters"] == sides["keras_hub"]["parameters"]
    for record in sides.values():
        assert record["tokens_per_second"] > 0 and record["flops_per_token"] > 0
    summary = records[-1]
    assert summary["summary"] and summary["ratio"] > 0 and "CPU" in summary["machine"]
    # Each side in its default mode, and the record says which: without XLA for bfloat16 on
    # a CPU in tflm; Keras' "auto" turns XLA off on any machine without an accelerator.
    assert summary["tflm_jit_compile"] is False and summary["keras_hub_jit_compile"] is False


def test_generation_and_input_wait(repo_root):
    records = _run(repo_root, "generate", "--shapes=tiny_gpt", "--batches=2", "--new_tokens=4",
                   "--calls=1", "--prompt_length=4", f"--params_override={SHRUNK}")
    summary = records[-1]
    assert summary["summary"] and summary["ratio"] > 0 and summary["xla_export_ratio"] > 0
    assert summary["xla_export_ratio_to_keras_hub_xla"] > 0
    assert summary["keras_hub_xla_tokens_per_second"] > 0
    tflm = next(r for r in records if r.get("side") == "tflm")
    assert tflm["batch"] == 2 and tflm["in_process_xla_tokens_per_second"] > 0
    # Without XLA: the share of time waiting for input is measured alike, without two compiles.
    records = _run(repo_root, "pipeline", "--shapes=tiny_gpt", "--steps=4", "--window=2",
                   f"--params_override={SHRUNK},data.sequence_length=16,data.global_batch_size=2,"
                   "trainer.jit_compile=false")
    assert 0.0 <= records[-1]["input_wait_fraction"] <= 1.0


def test_steps_of_both_sides_in_one_process(repo_root):
    records = _run(repo_root, "steps", "--shapes=tiny_bert", "--window=2",
                   f"--params_override={SHRUNK},data.sequence_length=32,data.global_batch_size=4")
    record = records[-1]
    assert record["summary"] and record["benchmark"] == "steps" and record["rounds"] == 1
    assert record["tflm_ms_per_step"] > 0 and record["keras_hub_ms_per_step"] > 0
    assert record["ratio"] == record["keras_hub_ms_per_step"] / record["tflm_ms_per_step"]
    assert record["tflm_jit_compile"] is True and record["keras_hub_jit_compile"] is False


def test_the_gpu_script_parses_and_stops_without_a_gpu(repo_root, tmp_path):
    """tools/gpu_check.sh (what a lent GPU machine runs) is valid bash, names shapes the
    benchmark knows, and on a machine without a GPU stops at once with exit status 3."""
    script = repo_root / "tools" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    benchmark = _benchmark_module(repo_root)
    text = script.read_text()
    assert "--shapes=gpt2_small,bert_base" in text
    assert {"gpt2_small", "bert_base"} <= set(benchmark.SHAPES)
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "gpus []" in (tmp_path / "machine.txt").read_text()
    assert not (tmp_path / "train.jsonl").exists()


def _benchmark_module(repo_root):
    spec = importlib.util.spec_from_file_location("benchmark", repo_root / "tools/benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_heldout_evaluation_and_time_to_quality(repo_root, tmp_path):
    import numpy as np

    benchmark = _benchmark_module(repo_root)
    vocabulary = 7
    rows = [[0, 3, 4, 0], [0, 5, 6, 2, 1, 0], [0, 1, 0]]  # 0: <|endoftext|>, 0 bytes
    byte_lengths = [0, 1, 2, 3, 1, 2, 4]
    (tmp_path / "heldout.json").write_text(json.dumps(
        {"rows": rows, "byte_lengths": byte_lengths, "real_share": 0.5}))
    evaluate = benchmark.heldout_evaluator(str(tmp_path), batch_size=2, bucket=4)

    # A reference model: its logits favour token (input + 1) % vocabulary by 2 nats.
    def model(inputs, training=False):
        ids = inputs["token_ids"]
        return 2.0 * np.eye(vocabulary, dtype=np.float32)[(ids + 1) % vocabulary]

    nats = targets = text_bytes = 0.0
    for row in rows:
        for x, y in zip(row, row[1:]):
            logits = 2.0 * np.eye(vocabulary)[(x + 1) % vocabulary]
            nats += np.log(np.exp(logits).sum()) - logits[y]
            targets += 1
            text_bytes += byte_lengths[y]
    result = evaluate(model)
    np.testing.assert_allclose(result["loss"], nats / targets, rtol=1e-6)
    np.testing.assert_allclose(result["bits_per_byte"], nats / np.log(2) / text_bytes, rtol=1e-6)

    # A document-masked model sees each paragraph as a document of its own, from position 0.
    seen = []
    benchmark.heldout_evaluator(str(tmp_path), document_mask=True, batch_size=2, bucket=4)(
        lambda inputs, training: seen.append(inputs) or model(inputs))
    np.testing.assert_array_equal(seen[0]["document_ids"][0], [1, 2, 2, 2])
    np.testing.assert_array_equal(seen[0]["positions"][0], [0, 0, 1, 2])

    curve = [{"seconds": 0.0, "bits_per_byte": 8.0}, {"seconds": 10.0, "bits_per_byte": 6.0},
             {"seconds": 20.0, "bits_per_byte": 5.0}]
    assert benchmark.time_to(curve, 7.0) == 5.0 and benchmark.time_to(curve, 5.0) == 20.0
    assert benchmark.time_to(curve, 4.0) is None


def test_time_to_quality_smoke(repo_root, capsys):
    from tflm.data import default_corpus_path

    benchmark = _benchmark_module(repo_root)
    # Packed without the mask runs the same code as with it, and tflm_padded is keras-hub's
    # batches through the same trainer: two sides cover the code (the suite's time is short).
    sides = "keras_hub,tflm_document_mask"
    benchmark.main(["quality", "--smoke", f"--text={default_corpus_path()}", f"--sides={sides}"])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()
               if line.startswith("{")]
    data, *sides, summary = records
    assert data["vocabulary_size"] == 300 and data["heldout_bytes"] > 0
    sides = {r["side"]: r for r in sides}
    assert set(sides) == {"keras_hub", "tflm_document_mask"}
    assert len({r["parameters"] for r in sides.values()}) == 1  # the same model shape
    for side, record in sides.items():
        padded = side == "keras_hub"
        assert record["real_share"] == (data["padded_real_share"] if padded else 1.0)
        assert record["real_tokens_per_second"] == (record["positions_per_second"]
                                                    * record["real_share"])
        curve = record["curve"]
        assert curve[0]["steps"] == 0 and curve[-1]["steps"] == record["steps"] > 1
        assert curve[-1]["bits_per_byte"] == record["final_bits_per_byte"]
    assert summary["summary"] and summary["runs"] == 1
    assert summary["tflm_document_mask_time_to_quality_ratio"] > 0
