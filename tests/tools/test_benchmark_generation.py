"""tools/benchmark_generation.py runs, tiny, and prints rates, roofline fractions and ratios
(the numbers themselves are benchmarks, not tests); its roofline reads every weight."""

import argparse
import importlib
import json
import sys

import pytest


@pytest.fixture
def tool(repo_root):
    sys.path.insert(0, str(repo_root / "tools"))
    yield importlib.import_module("benchmark_generation")
    sys.path.remove(str(repo_root / "tools"))


def test_a_step_reads_every_weight_once(tool):
    args = argparse.Namespace(layers=2, hidden=32, vocabulary=300, heads=2, max_length=16)
    _, model = tool._model(args)
    weight_bytes, _ = tool.step_cost(args, batch=0, cache_length=0)
    # All parameters but the position rows other than the one a step reads.
    assert weight_bytes == 4 * (model.count_params() - (args.max_length - 1) * args.hidden)


def test_smoke_run_prints_rates_fractions_and_ratios(tool, capsys):
    # Two sides (exporting costs most): the tool's flow, each side is the same code.
    tool.main(["--smoke", "--sides=tflm_in_process_xla,keras_hub_xla"])
    header, record = [json.loads(line) for line in capsys.readouterr().out.splitlines()
                      if line.startswith("{")]
    assert header["bandwidth_gb_per_s"] > 0 and header["matmul_gflop_per_s"] > 0
    assert record["batch"] == 2 and record["roofline_bound"] in ("memory", "compute")
    for side in ("tflm_in_process_xla", "keras_hub_xla"):
        assert record[f"{side}_tokens_per_second"] > 0
        assert record[f"{side}_roofline_fraction"] == pytest.approx(
            record[f"{side}_tokens_per_second"] / record["roofline_tokens_per_second"])
    assert record["ratio_in_process_xla_to_keras_hub_xla"] == pytest.approx(
        record["tflm_in_process_xla_tokens_per_second"]
        / record["keras_hub_xla_tokens_per_second"])
