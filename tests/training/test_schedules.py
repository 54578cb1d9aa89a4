import math

import numpy as np
import pytest

from tflm.training.schedules import WarmupDecay


def _rates(schedule, steps):
    return np.array([float(schedule(s)) for s in steps])


@pytest.mark.parametrize("decay", ["cosine", "linear", "polynomial", "constant"])
def test_warmup_then_decay_matches_the_formula(decay):
    peak, total, warmup, end_ratio, power = 1e-3, 100, 10, 0.1, 2.0
    schedule = WarmupDecay(peak, total, warmup, decay=decay, end_ratio=end_ratio, power=power)
    steps = np.arange(0, 120)
    end = peak * end_ratio
    expected = []
    for s in steps:
        if s < warmup:
            expected.append(peak * (s + 1) / warmup)
            continue
        p = min(max((s - warmup) / (total - warmup), 0.0), 1.0)
        expected.append({
            "cosine": end + (peak - end) * 0.5 * (1 + math.cos(math.pi * p)),
            "linear": peak + (end - peak) * p,
            "polynomial": end + (peak - end) * (1 - p) ** power,
            "constant": peak,
        }[decay])
    np.testing.assert_allclose(_rates(schedule, steps), expected, rtol=1e-5)
    assert math.isclose(float(schedule(warmup - 1)), peak, rel_tol=1e-6)


def test_no_warmup_starts_at_peak_and_config_round_trips():
    schedule = WarmupDecay(2e-3, 50, 0, decay="linear", end_ratio=0.0)
    assert math.isclose(float(schedule(0)), 2e-3, rel_tol=1e-6)
    assert float(schedule(50)) == 0.0
    assert WarmupDecay(**schedule.get_config()).get_config() == schedule.get_config()


def test_unknown_decay():
    with pytest.raises(ValueError, match="exponential"):
        WarmupDecay(1e-3, 10, decay="exponential")
