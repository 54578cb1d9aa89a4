"""tools/benchmark_startup.py: its arithmetic, without the binaries (they take minutes)."""

import importlib.util
import pathlib

import pytest

TOOL = pathlib.Path(__file__).resolve().parents[2] / "tools" / "benchmark_startup.py"


def _tool():
    spec = importlib.util.spec_from_file_location("benchmark_startup", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_breakdown_counts_nested_phases_once_and_stops_at_the_first_output():
    events = [  # (name, start, end, depth)
        ("import tensorflow (+ its keras)", 0.0, 10.0, 0),
        ("trainer setup", 11.0, 15.0, 0),
        ("dataset build", 12.0, 14.0, 1),
        ("first call: train loop", 15.0, 25.0, 0),
        ("after the output", 30.0, 31.0, 0),
        ("end", 0.0, 31.0, 0),
    ]
    phases = _tool().breakdown(events, first_output=20.0)
    assert phases == pytest.approx({
        "import tensorflow (+ its keras)": 10.0, "trainer setup": 4.0, "dataset build": 2.0,
        "first call: train loop": 5.0,  # cut at the first output
        "other (interpreter, flags, untimed work)": 1.0})
