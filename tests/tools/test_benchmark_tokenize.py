"""tools/benchmark_tokenize.py runs, checks ids and prints ratios (a smoke run, not a timing)."""

import json
import os
import subprocess
import sys

SIDES = {"hf_tokenizers", "tflm_prepare", "tflm_tf_data", "tflm_tf_data_64", "tflm_1024_lines",
         "tflm_1024_lines_no_cache"}


def test_smoke_run_prints_tokens_per_second_and_ratios(repo_root):
    result = subprocess.run([sys.executable, "tools/benchmark_tokenize.py", "--smoke"],
                            cwd=repo_root, capture_output=True, text=True, timeout=180,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in result.stdout.splitlines()]
    speeds = {r["side"]: r for r in records if r["benchmark"] == "tokenize"}
    assert SIDES <= set(speeds) <= SIDES | {"tiktoken"}  # tiktoken: only where installed
    for record in speeds.values():
        assert record["tokens_per_second"] > 0 and record["ids_equal"], record
        assert record["tokens"] > 5_000 and record["cores"] == 1, record
    (ratios,) = [r for r in records if r["benchmark"] == "tokenize_ratios"]
    assert ratios["ratios"][ratios["per_core_vs"]] == 1.0 and ratios["word_cache_speedup"] > 0
