"""tools/benchmark_seq2seq.py runs end to end on a CPU, tiny: both measures print their JSON
lines, on the same model shape on both sides (the numbers themselves are benchmarks, not
tests)."""

import json
import os
import subprocess
import sys


def test_training_and_generation_side_by_side(repo_root):
    result = subprocess.run(
        [sys.executable, "tools/benchmark_seq2seq.py", "--quick", "--layers=1",
         "--batches=2"], cwd=repo_root, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
                 PYTHONPATH=str(repo_root)))
    assert result.returncode == 0, result.stderr[-3000:]
    train, generate = [json.loads(line) for line in result.stdout.splitlines()
                       if line.startswith("{")]
    # BART's layout in tflm's model: the same weights, tensor for tensor in count.
    assert train["tflm_parameters"] == train["keras_hub_parameters"]
    assert train["ratio"] == (train["tflm_tokens_per_second"]
                              / train["keras_hub_tokens_per_second"]) > 0
    # Both sides produce every new token (no row ends early), so the rates compare.
    assert generate["batch"] == 2
    assert generate["tflm_new_tokens_per_call"] == generate["keras_hub_new_tokens_per_call"] \
        == 2 * generate["new_tokens"]
    assert generate["ratio"] > 0 and "CPU" in generate["machine"]
