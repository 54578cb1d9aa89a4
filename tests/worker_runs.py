"""Two workers of a test's own training job on a local cluster, and the weights they end with.

A test file that is also a worker script calls `train_and_save_weights` in its `__main__`
and `two_workers_weights` in the test; both workers' weights come back for comparison with
a one-worker run.
"""

import os
import sys

import numpy as np

from launch_local_cluster import LocalCluster, local_env


def train_and_save_weights(trainer, model_dir, weights):
    """Trains `trainer` to its end, saves `weights(trainer)` under `model_dir` by worker index."""
    status = trainer.train()
    np.save(os.path.join(model_dir, f"weights-worker-{trainer.worker.worker_index}.npy"),
            weights(trainer))
    print(f"worker: {status} at step {int(trainer.step.numpy())}", flush=True)


def two_workers_weights(script, args, tmp_path, steps, timeout=180):
    """Runs `python script MODEL_DIR *args` as two workers; asserts both complete `steps`
    and end equal; returns worker 0's weights."""
    model_dir = tmp_path / "two"
    model_dir.mkdir()
    log = tmp_path / "log.txt"
    with open(log, "a", buffering=1) as sink:
        cluster = LocalCluster([sys.executable, script, str(model_dir), *map(str, args)], 2,
                               env=local_env(), sink=sink).start()
        try:
            statuses = cluster.wait(timeout=timeout)
        finally:
            cluster.kill()
    text = log.read_text()
    assert statuses == [0, 0], text[-4000:]
    assert text.count(f"worker: completed at step {steps}") == 2, text[-4000:]
    first, second = (np.load(model_dir / f"weights-worker-{i}.npy") for i in (0, 1))
    np.testing.assert_array_equal(first, second)
    return first
