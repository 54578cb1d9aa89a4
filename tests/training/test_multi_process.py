"""Multi-replica and multi-worker training, in separate processes (bounded, cleaned up by PID)."""

import json
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tools"))
from launch_local_cluster import LocalCluster  # noqa: E402
from launch_local_cluster import local_env as _env  # noqa: E402

JOB = [sys.executable, str(REPO_ROOT / "tests" / "training" / "training_job.py")]


def _job(model_dir, steps, delay=0.0, until_step=None):
    return [*JOB, str(model_dir), str(steps), str(delay)] + (
        [str(until_step)] if until_step else [])


def _run_single(model_dir, steps, until_step=None, **env):
    result = subprocess.run(_job(model_dir, steps, until_step=until_step), cwd=REPO_ROOT,
                            env=_env(**env), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return np.load(model_dir / "weights-worker-0.npy"), result.stdout


def _start_cluster(model_dir, steps, sink, delay=0.0, until_step=None, **env):
    return LocalCluster(_job(model_dir, steps, delay, until_step), 2, env=_env(**env),
                        sink=sink).start()


def _run_cluster(model_dir, steps, log, timeout=240, delay=0.0, until_step=None, **env):
    with open(log, "a", buffering=1) as sink:
        cluster = _start_cluster(model_dir, steps, sink, delay, until_step, **env)
        try:
            return cluster.wait(timeout)
        finally:
            cluster.kill()


def _both_workers_weights(model_dir):
    first, second = (np.load(model_dir / f"weights-worker-{i}.npy") for i in (0, 1))
    np.testing.assert_array_equal(first, second)
    return first


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
    first = _both_workers_weights(model_dir)
    np.testing.assert_allclose(first, single_worker, atol=1e-5)
    # Only the chief wrote checkpoints; the other worker's temporary folder is gone.
    assert sorted(p.name for p in (model_dir / "checkpoints").glob("*.index")) == [
        "ckpt-10.index", "ckpt-20.index"]
    assert not (model_dir / "tmp").exists()
    assert sorted(p.name for p in (model_dir / "data").iterdir()) == ["worker-0", "worker-1"]


def test_two_replicas_in_one_process_match_one_replica(tmp_path, single_worker):
    """With gradient checkpointing too: the recomputed blocks under MirroredStrategy give
    the reference's plain gradients."""
    weights, out = _run_single(tmp_path / "mirrored", 20, TFLM_TEST_LOGICAL_CPUS="2",
                               TFLM_TEST_OVERRIDES="trainer.gradient_checkpointing=true")
    assert "gradient_checkpointing=True" in out
    np.testing.assert_allclose(weights, single_worker, atol=1e-5)


# Where a kill in the checkpoint window of step 20 can fall: the worker and the moment.
WINDOW = {
    "worker 1 after the chief's model files, before its own position": "1,before_position,20",
    "the chief during its model files": "0,during_model,20",
    "worker 1 during its own position": "1,during_position,20",
}


@pytest.mark.parametrize("where", sorted(WINDOW))
def test_a_kill_in_the_checkpoint_window_resumes_without_help(tmp_path, single_worker, where):
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    log = tmp_path / "log.txt"
    statuses = _run_cluster(model_dir, 20, log, TFLM_TEST_DIE=WINDOW[where])
    killed = int(WINDOW[where][0])
    assert statuses[killed] == -signal.SIGKILL, log.read_text()[-4000:]
    assert (model_dir / "checkpoints" / "ckpt-10.commit.json").exists()
    assert not (model_dir / "checkpoints" / "ckpt-20.commit.json").exists()
    # Whether the chief wrote step 20's model files before the launcher stopped it is a race
    # (a kill during worker 1's position): if it did, the restart must skip them.
    partial = any((model_dir / "checkpoints").glob("ckpt-20.*"))

    statuses = _run_cluster(model_dir, 20, log)
    text = log.read_text()
    assert statuses == [0, 0], text[-4000:]
    if partial or where != "worker 1 during its own position":
        assert "skipping checkpoint" in text and "ckpt-20" in text, text[-4000:]
    assert "resumed from" in text and "at step 10" in text, text[-4000:]
    np.testing.assert_allclose(_both_workers_weights(model_dir), single_worker, atol=1e-5)


@pytest.mark.parametrize("signalled", [0, 1], ids=["chief", "non_chief"])
def test_sigterm_to_one_worker_stops_every_worker_at_the_same_step(tmp_path, single_worker,
                                                                    signalled):
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    log = tmp_path / "log.txt"
    with open(log, "a", buffering=1) as sink:
        cluster = _start_cluster(model_dir, 20, sink, delay=0.15)
        try:
            deadline = time.monotonic() + 180
            while not (model_dir / "checkpoints" / "ckpt-10.commit.json").exists():
                assert time.monotonic() < deadline, log.read_text()[-4000:]
                assert all(p.poll() is None for p in cluster.processes), log.read_text()[-4000:]
                time.sleep(0.05)
            cluster.kill(signalled, signal.SIGTERM)
            statuses = cluster.wait(timeout=120)
        finally:
            cluster.kill()
    text = log.read_text()
    assert statuses == [143, 143], text[-4000:]
    stops = re.findall(r"\[worker (\d)\] tflm-train: (SIGTERM|another worker was signalled): "
                       r"saved \S+ at step (\d+)", text)
    assert sorted(w for w, _, _ in stops) == ["0", "1"], text[-4000:]
    assert {w: why for w, why, _ in stops}[str(signalled)] == "SIGTERM"
    step = {s for _, _, s in stops}
    assert len(step) == 1 and 10 <= int(step.pop()) < 20, stops
    assert "Traceback" not in text

    statuses = _run_cluster(model_dir, 20, log, delay=0.001)
    assert statuses == [0, 0], log.read_text()[-4000:]
    np.testing.assert_allclose(_both_workers_weights(model_dir), single_worker, atol=1e-5)


def test_two_workers_resume_on_one_worker_with_two_replicas(tmp_path, single_worker):
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    statuses = _run_cluster(model_dir, 20, tmp_path / "log.txt", until_step=10)
    assert statuses == [0, 0], (tmp_path / "log.txt").read_text()[-4000:]
    weights, out = _run_single(model_dir, 20, TFLM_TEST_LOGICAL_CPUS="2")
    assert "resumed from" in out and "at step 10" in out, out[-3000:]
    np.testing.assert_allclose(weights, single_worker, atol=1e-5)


def test_one_worker_resumes_on_two_workers(tmp_path, single_worker):
    model_dir = tmp_path / "run"
    _run_single(model_dir, 20, until_step=10)
    log = tmp_path / "log.txt"
    statuses = _run_cluster(model_dir, 20, log)
    assert statuses == [0, 0], log.read_text()[-4000:]
    assert log.read_text().count("at step 10") == 2
    np.testing.assert_allclose(_both_workers_weights(model_dir), single_worker, atol=1e-5)


FIT_JOB = [sys.executable, str(REPO_ROOT / "tests" / "training" / "fit_job.py")]


@pytest.mark.parametrize("config_file", ["configs/tiny_gpt.yaml", "configs/tiny_bert.yaml"])
def test_fit_on_two_workers_equals_one_worker(tmp_path, config_file):
    """Keras 3 `fit` under MultiWorkerMirroredStrategy (keras-team/keras#20585 worked around
    in `tflm.models.task`): the token-weighted mean over the global batch, summed gradients."""
    result = subprocess.run([*FIT_JOB, str(tmp_path / "one"), config_file], cwd=REPO_ROOT,
                            env=_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = tmp_path / "log.txt"
    with open(log, "a", buffering=1) as sink:
        cluster = LocalCluster([*FIT_JOB, str(tmp_path / "two"), config_file], 2, env=_env(),
                               sink=sink).start()
        try:
            statuses = cluster.wait(240)
        finally:
            cluster.kill()
    assert statuses == [0, 0], log.read_text()[-4000:]
    one = np.load(tmp_path / "one-0.npy")
    two = [np.load(tmp_path / f"two-{i}.npy") for i in (0, 1)]
    np.testing.assert_array_equal(two[0], two[1])
    np.testing.assert_allclose(two[0], one, atol=1e-4)
    assert not np.allclose(one, two[0] * 0)
    losses = re.findall(r"\[worker 0\] LOSSES (.*)", log.read_text())
    np.testing.assert_allclose(json.loads(losses[0]), json.loads(
        re.search(r"LOSSES (.*)", result.stdout).group(1)), rtol=1e-4)


def _fit_cluster(tmp_path, *args):
    log = tmp_path / "log.txt"
    with open(log, "a", buffering=1) as sink:
        cluster = LocalCluster([*FIT_JOB, *map(str, args)], 2, env=_env(), sink=sink).start()
        try:
            return cluster.wait(240), log.read_text()
        finally:
            cluster.kill()


def test_fit_resumes_across_workers_with_backup_and_restore(tmp_path):
    """tflm's BackupAndRestore (Keras 3's writes one file from every worker): a two-worker
    `fit` killed after epoch 1 resumes at epoch 2 as a one-worker `fit` does."""
    def single(*args):
        return subprocess.run([*FIT_JOB, *map(str, args)], cwd=REPO_ROOT, env=_env(),
                              capture_output=True, text=True, timeout=240)

    config = "configs/tiny_gpt.yaml"
    assert single(tmp_path / "one", config, tmp_path / "backup-one", "interrupt").returncode == 3
    result = single(tmp_path / "one", config, tmp_path / "backup-one")
    assert result.returncode == 0 and "EPOCHS [2, 3] 8" in result.stdout, result.stderr[-3000:]

    statuses, text = _fit_cluster(tmp_path, tmp_path / "two", config, tmp_path / "backup-two",
                                  "interrupt")
    assert 3 in statuses and set(statuses) <= {3, -signal.SIGKILL}, text[-4000:]
    assert json.loads((tmp_path / "backup-two" / "training_metadata.json").read_text())[
        "epoch"] == 2
    statuses, text = _fit_cluster(tmp_path, tmp_path / "two", config, tmp_path / "backup-two")
    assert statuses == [0, 0] and text.count("EPOCHS [2, 3] 8") == 2, text[-4000:]
    assert not (tmp_path / "backup-two").exists()  # deleted by the chief at the end
    np.testing.assert_allclose(np.load(tmp_path / "two-0.npy"), np.load(tmp_path / "one-0.npy"),
                               atol=1e-5)
