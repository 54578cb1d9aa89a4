from types import SimpleNamespace

import pytest
import tensorflow as tf

from tflm.config import ConfigError
from tflm.experiment import load_experiment
from tflm.training.strategy import make_strategy, step_jit_compile, worker_info


def _runtime(kind, **extra):
    overrides = ",".join([f"runtime.distribution_strategy={kind}"] +
                         [f"runtime.{k}={v}" for k, v in extra.items()])
    return load_experiment("configs/tiny_gpt.yaml", overrides).runtime


def test_one_device_and_mirrored_are_single_workers():
    for kind in ("one_device", "mirrored"):
        strategy = make_strategy(_runtime(kind))
        info = worker_info(strategy)
        assert (info.num_workers, info.worker_index, info.is_chief) == (1, 0, True)
        assert info.num_local_replicas == strategy.num_replicas_in_sync == 1
        context = info.input_context()
        assert context.get_per_replica_batch_size(16) == 16


def test_multi_worker_needs_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        make_strategy(_runtime("multi_worker"))


@pytest.mark.parametrize("address", ["grpc://127.0.0.1:1", ""])
def test_tpu_unreachable_is_a_clear_error(address):
    """A named address that does not answer, or no TPU on this machine."""
    with pytest.raises(ConfigError, match="no TPU reachable"):
        make_strategy(_runtime("tpu", tpu=address))


def test_worker_info_reads_tf_config(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:2", "c:3"]}, '
                                    '"task": {"type": "worker", "index": 2}}')
    strategy = tf.distribute.MultiWorkerMirroredStrategy.__new__(
        tf.distribute.MultiWorkerMirroredStrategy)
    # Only the cluster description matters here, not a running cluster.
    monkeypatch.setattr(type(strategy), "extended", property(
        lambda self: type("E", (), {"worker_devices": ["/job:worker/task:2/cpu:0"]})()))
    info = worker_info(strategy)
    assert (info.num_workers, info.worker_index, info.is_chief) == (3, 2, False)
    assert info.input_context().input_pipeline_id == 2


def test_step_jit_compile_default_is_xla_except_bfloat16_on_cpu():
    cpu = tf.distribute.OneDeviceStrategy("/cpu:0")
    gpu = SimpleNamespace(extended=SimpleNamespace(
        worker_devices=("/job:worker/replica:0/task:0/device:GPU:0",
                        "/job:worker/replica:0/task:0/device:GPU:1")))
    assert step_jit_compile(None, "float32", cpu) is True
    assert step_jit_compile(None, "mixed_float16", cpu) is True
    assert step_jit_compile(None, "mixed_bfloat16", cpu) is False
    assert step_jit_compile(None, "mixed_bfloat16", gpu) is True
    # An explicit choice always wins.
    assert step_jit_compile(True, "mixed_bfloat16", cpu) is True
    assert step_jit_compile(False, "float32", gpu) is False
