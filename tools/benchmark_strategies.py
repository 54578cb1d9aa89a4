"""MultiWorkerMirroredStrategy beside ParameterServerStrategy on the same local cluster.

    python tools/benchmark_strategies.py --workers=2 --steps=300

Trains the same config twice with `tflm-train` on this machine: AllReduce over
`--workers` workers, then `--workers` workers with one parameter server (and a
chief that schedules the steps) for `--ps_step_factor` times the steps. Prints, for each, the median tokens/s of the
progress lines after the first, the seconds (from the first progress line) until
the logged training loss first falls to the target (the AllReduce run's loss at
80% of its steps), and the held-out loss at the end; then the ratios.
"""

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from launch_local_cluster import LocalCluster, local_env  # noqa: E402

PROGRESS = re.compile(r"\[(?:worker 0|chief 0)\] step (\d+)/\d+  loss ([\d.]+) .*tokens/s ([\d,]+)")


class _TimedLog:
    """The cluster's output, each progress line of the loop's task kept with its time."""

    def __init__(self, path):
        self.file = open(path, "w", buffering=1)
        self.lock = threading.Lock()
        self.points = []  # (seconds, step, loss, tokens/s)
        self.text = []

    def write(self, text):
        with self.lock:
            self.file.write(text)
            self.text.append(text)
            match = PROGRESS.search(text)
            if match:
                step, loss, rate = match.groups()
                self.points.append((time.monotonic(), int(step), float(loss),
                                    float(rate.replace(",", ""))))

    def flush(self):
        self.file.flush()


def run(strategy, args, folder):
    steps = args.steps * (args.ps_step_factor if strategy == "parameter_server" else 1)
    overrides = ",".join(filter(None, [
        f"runtime.distribution_strategy={strategy}", f"trainer.train_steps={steps}",
        f"trainer.log_every={args.log_every}", f"trainer.checkpoint_every={steps}",
        f"trainer.steps_per_loop={args.log_every}", "trainer.eval_steps=20",
        args.params_override]))
    command = [sys.executable, "-m", "tflm.cli.train", f"--config_file={args.config_file}",
               f"--model_dir={os.path.join(folder, strategy)}", "--mode=train_and_eval",
               f"--params_override={overrides}"]
    log = _TimedLog(os.path.join(folder, f"{strategy}.log"))
    num_ps = 1 if strategy == "parameter_server" else 0
    cluster = LocalCluster(command, args.workers, env=local_env(), sink=log, num_ps=num_ps).start()
    try:
        statuses = cluster.wait(args.timeout)
    finally:
        cluster.kill()
    if statuses[0] != 0:
        raise RuntimeError(f"{strategy}: status {statuses}; see {log.file.name}")
    text = "".join(log.text)
    evals = re.findall(r"\[(?:worker 0|chief 0)\] tflm-eval: (\{.*\})", text)
    return log.points, json.loads(evals[-1])["loss"]


def seconds_to(points, target):
    start = points[0][0]
    return next((t - start for t, _, loss, _ in points if loss <= target), float("nan"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config_file", default="configs/tiny_gpt.yaml")
    parser.add_argument("--params_override", default="")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--log_every", type=int, default=10)
    parser.add_argument("--ps_step_factor", type=int, default=2,
                        help="the parameter-server run trains this many times the steps "
                             "(asynchronous updates need more to reach the same loss)")
    parser.add_argument("--timeout", type=float, default=1200.0)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="tflm-strategies-")
    results = {name: run(name, args, folder) for name in ("multi_worker", "parameter_server")}
    mirrored = results["multi_worker"][0]
    target = mirrored[int(0.8 * (len(mirrored) - 1))][2]
    rows = {}
    for name, (points, eval_loss) in results.items():
        rate = statistics.median(p[3] for p in points[1:])
        rows[name] = (rate, seconds_to(points, target), points[-1][2], eval_loss)
    print(f"{args.workers} workers, {args.steps} steps ({args.ps_step_factor}x for "
          f"parameter_server), {args.config_file} "
          f"{args.params_override}; target training loss {target:.4f}")
    print(f"{'strategy':<18}{'tokens/s':>10}{'s to target':>13}{'final loss':>12}"
          f"{'eval loss':>11}")
    for name, (rate, seconds, final, eval_loss) in rows.items():
        print(f"{name:<18}{rate:>10,.0f}{seconds:>13.1f}{final:>12.4f}{eval_loss:>11.4f}")
    mw, ps = rows["multi_worker"], rows["parameter_server"]
    print(f"parameter_server / multi_worker: tokens/s {ps[0] / mw[0]:.2f}x, "
          f"time to target {ps[1] / mw[1]:.2f}x")


if __name__ == "__main__":
    main()
