"""Multi-replica and multi-worker training, in separate processes (bounded, cleaned up by PID)."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tools"))
from launch_local_cluster import LocalCluster  # noqa: E402

JOB = [sys.executable, str(REPO_ROOT / "tests" / "training" / "training_job.py")]


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.pop("TF_CONFIG", None)
    return env


def _run_single(model_dir, steps, **env):
    result = subprocess.run([*JOB, str(model_dir), str(steps)], cwd=REPO_ROOT, env=_env(**env),
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return np.load(model_dir / "weights-worker-0.npy"), result.stdout


def _start_cluster(model_dir, steps, sink, delay=0.0):
    return LocalCluster([*JOB, str(model_dir), str(steps), str(delay)], 2, env=_env(),
                        sink=sink).start()


def _run_cluster(model_dir, steps, log, timeout=240, delay=0.0):
    with open(log, "a", buffering=1) as sink:
        cluster = _start_cluster(model_dir, steps, sink, delay)
        try:
            return cluster.wait(timeout)
        finally:
            cluster.kill()


@pytest.fixture(scope="module")
def single_worker(tmp_path_factory):
    """The reference: one worker, one replica, the same global batches."""
    return _run_single(tmp_path_factory.mktemp("single"), 20)[0]


def test_two_workers_match_each_other_and_one_worker(tmp_path, single_worker):
    model_dir = tmp_path / "two_workers"
    model_dir.mkdir()
    statuses = _run_cluster(model_dir, 20, tmp_path / "log.txt")
    log = (tmp_path / "log.txt").read_text()
    assert statuses == [0, 0], log[-4000:]
    first, second = (np.load(model_dir / f"weights-worker-{i}.npy") for i in (0, 1))
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, single_worker, atol=1e-5)
    assert not np.allclose(first, np.load(model_dir / "weights-worker-0.npy") * 0)
    # Only the chief wrote checkpoints; the other worker's temporary folder is gone.
    assert sorted(p.name for p in (model_dir / "checkpoints").glob("*.index")) == [
        "ckpt-10.index", "ckpt-20.index"]
    assert not (model_dir / "tmp").exists()
    assert sorted(p.name for p in (model_dir / "data").iterdir()) == ["worker-0", "worker-1"]


def test_two_replicas_in_one_process_match_one_replica(tmp_path, single_worker):
    weights, _ = _run_single(tmp_path / "mirrored", 20, TFLM_TEST_LOGICAL_CPUS="2")
    np.testing.assert_allclose(weights, single_worker, atol=1e-5)


def test_killed_worker_resumes_from_checkpoint_to_the_same_weights(tmp_path, single_worker):
    """SIGKILL one worker mid-run, restart both: same end state as never interrupted."""
    model_dir = tmp_path / "killed"
    model_dir.mkdir()
    log = tmp_path / "log.txt"
    with open(log, "a", buffering=1) as sink:
        cluster = _start_cluster(model_dir, 20, sink, delay=0.15)
        try:
            deadline = time.monotonic() + 180
            # Kill once checkpoint 10 is whole: the chief's state and both input positions
            # (each worker writes its own; a kill between the two writes is another case).
            whole = [model_dir / "checkpoints" / "ckpt-10.index"] + [
                model_dir / "data" / f"worker-{i}" / "ckpt-10.index" for i in (0, 1)]
            while not all(path.exists() for path in whole):
                assert time.monotonic() < deadline, log.read_text()[-4000:]
                assert all(p.poll() is None for p in cluster.processes), log.read_text()[-4000:]
                time.sleep(0.05)
            cluster.kill(1, signal.SIGKILL)
            statuses = cluster.wait(timeout=60)  # worker 0 is stopped too: it cannot go on alone
        finally:
            cluster.kill()
    assert statuses[1] == -signal.SIGKILL
    assert not (model_dir / "checkpoints" / "ckpt-20.index").exists(), "killed before the end"

    # The same pipeline (a restored data position needs the same dataset), barely slowed.
    statuses = _run_cluster(model_dir, 20, log, delay=0.001)
    text = log.read_text()
    assert statuses == [0, 0], text[-4000:]
    assert "resumed from" in text and "at step 10" in text
    first, second = (np.load(model_dir / f"weights-worker-{i}.npy") for i in (0, 1))
    np.testing.assert_array_equal(first, second)
    # Resumed at the exact step and batch: the interrupted run ends where the plain one does.
    np.testing.assert_allclose(first, single_worker, atol=1e-5)
