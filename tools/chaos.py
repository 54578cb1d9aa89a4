"""Chaos test: trains on a local cluster while killing random workers, then checks the weights.

    python tools/chaos.py --workers=2 --steps=1000 --kills=6 --seed=0 --elastic

First trains the run uninterrupted on `--workers` workers (the reference). Then trains it again
on `--workers` workers (`tools/launch_local_cluster.py`) and, at a random moment of each
attempt (seeded), sends SIGKILL or SIGTERM to a random worker; the cluster stops (the
others are killed, or save with it and exit 143) and is started again on the same
`--model_dir`, with `--elastic` on a random number of workers from 1 to `--workers`.
When the run completes, its final model (model.keras) must equal the reference's to
`--atol` (restarts on another number of workers sum the gradients in another order, so
float32 rounding differs by about 1e-5 after some hundred steps). Prints the kills survived and the largest difference; exits 1 on a mismatch or
on a worker failing in a way no kill explains.

The run uses `data.sharding=global_batch`, so it may resume on any number of workers and
read the same batches (tflm.training.checkpoints).
"""

import argparse
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from launch_local_cluster import PREEMPTED, LocalCluster, local_env  # noqa: E402

TRAIN_OVERRIDES = ("data.sequence_length=32,data.global_batch_size=8,data.shuffle_buffer_size=50,"
                   "data.sharding=global_batch,model.num_layers=1,trainer.steps_per_loop=5,"
                   "trainer.warmup_steps=5,runtime.distribution_strategy=multi_worker")
# What a worker's status may be after a kill: finished, killed, signalled before its handler
# was installed, or stopped with the others after SIGTERM.
EXPLAINED = {0, PREEMPTED, -signal.SIGKILL, -signal.SIGTERM}


class _Log:
    """The workers' output: appended to a file; `training` is set once a step is logged."""

    def __init__(self, path, echo):
        self.file = open(path, "a", buffering=1)
        self.echo = echo
        self.training = threading.Event()
        self.lock = threading.Lock()

    def write(self, text):
        with self.lock:
            self.file.write(text)
            if self.echo:
                sys.stdout.write(text)
        if re.search(r"\] step \d+/", text):
            self.training.set()

    def flush(self):
        self.file.flush()


def _command(args, model_dir):
    overrides = ",".join(filter(None, [
        TRAIN_OVERRIDES, f"trainer.train_steps={args.steps}",
        f"trainer.checkpoint_every={args.checkpoint_every}",
        f"trainer.log_every={args.checkpoint_every}", args.params_override]))
    return [sys.executable, "-m", "tflm.cli.train", f"--config_file={args.config_file}",
            f"--model_dir={model_dir}", f"--params_override={overrides}"]


def _weights(model_dir):
    import tflm.models  # noqa: F401 (registers the classes of model.keras)

    from tflm.run_dir import RunDir
    model = RunDir(model_dir).load_saved_model()
    return np.concatenate([np.ravel(v.numpy()) for v in model.weights])


def run_chaos(args, print_fn=print):
    """Returns (kills survived, largest weight difference, restarts' worker counts)."""
    rng = random.Random(args.seed)
    root = args.model_dir or tempfile.mkdtemp(prefix="tflm-chaos-")
    os.makedirs(root, exist_ok=True)
    for name in ("reference", "chaos"):
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    log = _Log(os.path.join(root, "chaos.log"), args.verbose)
    deadline = time.monotonic() + args.timeout

    def attempt(model_dir, workers, kill):
        log.training.clear()
        cluster = LocalCluster(_command(args, model_dir), workers, env=local_env(), sink=log).start()
        try:
            killed = None
            if kill:
                while not log.training.wait(0.1):
                    if all(p.poll() is not None for p in cluster.processes):
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError("no training step logged before --timeout")
                time.sleep(rng.uniform(0, args.window))
                if any(p.poll() is None for p in cluster.processes):
                    victim = rng.randrange(workers)
                    sig = rng.choice([signal.SIGKILL, signal.SIGTERM])
                    cluster.kill(victim, sig)
                    killed = (victim, signal.Signals(sig).name)
            statuses = cluster.wait(max(1.0, deadline - time.monotonic()))
        finally:
            cluster.kill()
        return statuses, killed

    statuses, _ = attempt(os.path.join(root, "reference"), args.workers, kill=False)
    if statuses != [0] * args.workers:
        raise RuntimeError(f"the reference run failed ({statuses}); see {log.file.name}")
    kills, counts = 0, []
    model_dir = os.path.join(root, "chaos")
    while True:
        workers = rng.randint(1, args.workers) if args.elastic and counts else args.workers
        counts.append(workers)
        statuses, killed = attempt(model_dir, workers, kill=kills < args.kills)
        if killed:
            kills += 1
            print_fn(f"chaos: attempt {len(counts)} on {workers} workers: {killed[1]} to worker "
                     f"{killed[0]}; statuses {statuses}")
        if statuses == [0] * workers:
            break
        unexplained = [s for s in statuses if s not in EXPLAINED]
        if unexplained or not killed or time.monotonic() > deadline:
            raise RuntimeError(f"attempt {len(counts)} on {workers} workers ended with "
                               f"{statuses} (killed: {killed}); see {log.file.name}")
    difference = float(np.max(np.abs(_weights(model_dir) - _weights(os.path.join(root, "reference")))))
    return kills, difference, counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config_file", default="configs/tiny_gpt.yaml")
    parser.add_argument("--params_override", default="", help="more overrides of the run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--checkpoint_every", type=int, default=20)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--elastic", action="store_true", help="restart on 1..--workers workers")
    parser.add_argument("--window", type=float, default=4.0,
                        help="a kill comes at most this many seconds after training starts")
    parser.add_argument("--atol", type=float, default=1e-4)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds for everything")
    parser.add_argument("--model_dir", default="", help="folder for the runs (default: a new "
                                                        "temporary one)")
    parser.add_argument("--verbose", action="store_true", help="echo the workers' output")
    args = parser.parse_args()
    start = time.monotonic()
    try:
        kills, difference, counts = run_chaos(args)
    except (RuntimeError, TimeoutError) as e:
        print(f"chaos: FAILED: {e}", flush=True)
        return 1
    ok = difference <= args.atol
    print(f"chaos: survived {kills} kills over {len(counts)} attempts (workers {counts}) in "
          f"{time.monotonic() - start:.0f} s; final weights {'equal' if ok else 'DIFFER FROM'} "
          f"the uninterrupted run's (max |difference| {difference:.2e}, atol {args.atol:g})",
          flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
