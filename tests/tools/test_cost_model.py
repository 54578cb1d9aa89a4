"""tools/cost_model.py: the formulas against hand-computed numbers, and its `project` output."""

import importlib.util
import io
import json
import pathlib

import pytest

_path = pathlib.Path(__file__).resolve().parents[2] / "tools" / "cost_model.py"
_spec = importlib.util.spec_from_file_location("cost_model", _path)
cm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cm)

# 2 TFLOP/s at 50% MFU; 4 a node on 100 GB/s, 10 GB/s between nodes; a 1 GB/s ps NIC.
HW = cm.Hardware("test", peak_flops=2e12, mfu=0.5, devices_per_node=4,
                 intra=cm.Link(100e9, 1e-6), inter=cm.Link(10e9, 1e-5),
                 ps_nic=cm.Link(1e9, 1e-4), ps_memory_bandwidth=1e10)
MODEL = cm.Model("m", parameters=1_000_000, flops_per_token=1e9, sequence_length=100,
                 num_variables=10)


def test_ring_allreduce_matches_the_formula():
    assert cm.allreduce_time(1e9, 1, HW.inter) == 0.0
    # 2 (N-1)/N * bytes / bandwidth + 2 (N-1) * latency, N = 5
    assert cm.allreduce_time(1e9, 5, HW.inter) == pytest.approx(2 * 4 / 5 * 0.1 + 8e-5)


def test_step_time_compute_ring_link_and_accumulation():
    # Within a node the ring runs on the intra link: 4 MB over 4 devices.
    step = cm.step_time(MODEL, HW, 4, 1000)
    assert step.compute == pytest.approx(1000 * 1e9 / 1e12)
    assert step.exchange == pytest.approx(1.5 * 4e6 / 100e9 + 6e-6)
    # Past a node, the slowest link: the network.
    step = cm.step_time(MODEL, HW, 8, 1, accumulation=4)
    assert step.compute == pytest.approx(4e-3)  # 4 micro-batches
    assert step.exchange == pytest.approx(1.75 * 4e6 / 10e9 + 14e-5)  # once an update
    assert step.tokens == 8 * 4
    assert step.communication_share == pytest.approx(step.exchange / (4e-3 + step.exchange))
    once = cm.step_time(MODEL, HW, 8, 1)
    assert step.communication_share < once.communication_share
    # Overlap hides the exchange behind that fraction of the compute, never below zero.
    hidden = cm.step_time(MODEL, HW, 8, 1, overlap=0.5)
    assert hidden.communication == pytest.approx(max(0.0, once.exchange - 0.5e-3))
    assert cm.step_time(MODEL, HW, 8, 100_000, overlap=0.5).communication == 0.0


def test_parameter_server_traffic_matches_the_formula():
    # 4 workers on 2 ps: each ps NIC carries 2 workers' 4 MB (8 ms at 1 GB/s; a worker's own
    # NIC 0.4 ms), 2 workers x 2 x 10 RPCs of 0.1 ms, 2 Adam updates of 28 MB at 10 GB/s.
    expected = 8e-3 + 4e-3 + 5.6e-3
    assert cm.parameter_server_time(MODEL, 4, 2, HW) == pytest.approx(expected)
    step = cm.step_time(MODEL, HW, 4, 1000, "parameter_server", num_ps=2)
    assert step.exchange == pytest.approx(expected)
    # Within 90% of the step: 35.2 ms / num_ps <= 9 ms of exchange for 1 ms of compute.
    assert cm.ps_needed(MODEL, HW, 4, 1, threshold=0.9) == 4
    assert cm.ps_needed(MODEL, HW, 4, 1, threshold=0.5) is None  # past 4 ps a worker
    with pytest.raises(ValueError, match="strategy"):
        cm.step_time(MODEL, HW, 4, 1000, "ring")
    with pytest.raises(ValueError, match="num_ps"):
        cm.step_time(MODEL, HW, 4, 1000, "parameter_server", num_ps=0)


def test_transformer_counts_match_tflm_flops():
    # Counted by tflm.training.flops on the built backbones (GPT-2 small: the published 124.4M).
    gpt2 = cm.GPT2_124M
    assert gpt2.parameters == 124_439_808 and gpt2.flops_per_token == 855_166_464
    bert_backbone = 109_482_240
    assert cm.BERT_BASE.parameters == bert_backbone + 768 * 768 + 3 * 768 + 30522
    # The projection at its 20 predicted positions of 128: 668,680,704 at every position.
    assert cm.BERT_BASE.flops_per_token == 668_680_704 - 6 * 768 * 30522 * 108 / 128
    assert cm.TINY_GPT.parameters == 446_720 and cm.TINY_GPT.flops_per_token == 2_975_232
    assert cm.tiny_gpt(512).parameters == 6_505_472


def test_validate_predicts_from_the_one_worker_rate(tmp_path, capsys):
    measured = {"tokens_per_step": 2048, "multi_worker_1": 0.05, "multi_worker_2": 0.06,
                "parameter_server_1": 0.08}
    results = cm.validate(measured, bandwidth=1e9, latency=1e-5, memory_bandwidth=1e10,
                          out=io.StringIO())
    grad = 446_720 * 4
    assert results["multi_worker_1"] == (pytest.approx(0.05), 0.05)  # the calibration point
    # Two workers: half the tokens each at half the rate, plus a 2-device ring.
    assert results["multi_worker_2"][0] == pytest.approx(0.05 + grad / 1e9 + 2e-5)
    assert results["parameter_server_1"][0] == pytest.approx(
        0.05 + grad / 1e9 + 2 * 28 * 1e-5 + 446_720 * 28 / 1e10)
    path = tmp_path / "measured.json"
    path.write_text(json.dumps({"tokens_per_step": 2048}))
    with pytest.raises(SystemExit) as error:
        cm.main(["validate", f"--measured={path}"])
    assert error.value.code == 2 and "multi_worker_2" in capsys.readouterr().err


def test_project_prints_both_models_at_8_64_512(capsys):
    assert cm.main(["project"]) == 0
    out = capsys.readouterr().out
    assert "GPT-2 124M" in out and "BERT-base" in out and "989 TFLOP/s" in out
    rows = cm.project(cm.H100, 0.2, out=io.StringIO())
    fixed = {(r["model"], r["devices"]): r for r in rows if r["table"] == "fixed"}
    assert sorted(n for m, n in fixed if m == "GPT-2 124M") == [8, 64, 512]
    # GPT-2 at 512 devices, one sequence each: 1024 tokens of compute against a ring of
    # 498 MB over the 50 GB/s network.
    step = fixed[("GPT-2 124M", 512)]["allreduce"]
    assert step.compute == pytest.approx(1024 * 855_166_464 / (989e12 * 0.45))
    assert step.exchange == pytest.approx(2 * 511 / 512 * 124_439_808 * 4 / 50e9 + 1022 * 5e-6)
    limits = {r["model"]: r for r in rows if r["table"] == "limit"}
    assert limits["GPT-2 124M"]["allreduce"] == 8  # 16 devices: 19 ms against 63 ms of compute
    accumulation = [r for r in rows if r["table"] == "accumulation" and r["devices"] == 512
                    and r["model"] == "GPT-2 124M"]
    shares = [r["allreduce"].communication_share for r in accumulation]
    assert [r["k"] for r in accumulation] == [1, 4, 16] and shares == sorted(shares, reverse=True)
    with pytest.raises(SystemExit):
        cm.main(["project", "--mfu=1.5"])
