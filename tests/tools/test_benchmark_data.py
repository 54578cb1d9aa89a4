"""tools/benchmark_data.py runs and prints what it promises (a smoke run, not a timing)."""

import importlib.util
import json
import os
import subprocess
import sys

PIPELINES = ("tflm_tokenize_only", "tflm_clm", "tflm_mlm", "hf_tokenizers", "hf_tokenizers_lines")


def _load_tool(repo_root):
    spec = importlib.util.spec_from_file_location("benchmark_data",
                                                  repo_root / "tools" / "benchmark_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_run_prints_json_lines_and_ratios(repo_root):
    # One core only: each configuration is a fresh TensorFlow process (~5 s to start).
    result = subprocess.run(
        [sys.executable, "tools/benchmark_data.py", "--smoke", "--cores", "1"],
        cwd=repo_root, capture_output=True, text=True, timeout=180,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in result.stdout.splitlines()]
    results = {r["pipeline"]: r for r in records if r["benchmark"] == "data_pipeline"}
    assert set(results) == set(PIPELINES)
    for name, record in results.items():
        assert record["cores"] == 1 and record["tokens_per_second"] > 0, record
        assert record["tokens"] > 100_000 and record["machine"], record
    (summary,) = [r for r in records if r["benchmark"] == "data_pipeline_ratios"]
    assert all(summary["per_core"][p] > 0 for p in PIPELINES[:3]), summary
    assert summary["tokens"]["relative_difference"] == 0, summary["tokens"]


def test_ratios_per_core_and_all_cores_against_the_faster_hf_variant(repo_root):
    tool = _load_tool(repo_root)
    speeds = {"tflm_tokenize_only": 4, "tflm_clm": 3, "tflm_mlm": 1, "hf_tokenizers": 2,
              "hf_tokenizers_lines": 1}
    records = [
        {"benchmark": "data_pipeline", "pipeline": name, "cores": cores,
         "tokens_per_second": speed * cores, "tokens_per_cpu_second": speed, "tokens": 1000}
        for name, speed in speeds.items() for cores in (1, 8)
    ]
    records[-1]["tokens_per_second"] = 100  # hf_tokenizers_lines on 8 cores: the faster one there
    summary = tool.ratios(records, [1, 8])
    assert summary["per_core"]["versus"] == "hf_tokenizers"
    assert summary["per_core"]["tflm_clm"] == 1.5 and summary["per_core"]["tflm_mlm"] == 0.5
    assert summary["all_cores"]["versus"] == "hf_tokenizers_lines"
    assert summary["all_cores"]["tflm_tokenize_only"] == 0.32
    assert summary["tokens"]["relative_difference"] == 0
