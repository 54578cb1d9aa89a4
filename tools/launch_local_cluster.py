"""Starts N workers on this machine, each with its TF_CONFIG, for multi-worker training.

    python tools/launch_local_cluster.py --num_workers=2 -- \\
        tflm-train --config_file=configs/tiny_gpt.yaml --model_dir=runs/mw \\
        --params_override=runtime.distribution_strategy=multi_worker

Each worker's output is prefixed with `[worker i]`. If a worker fails, the
others are stopped (they would wait for it forever in their collectives); one
that exits with 143 after SIGTERM stopped with the others, which get time to follow;
a timeout stops all. With `--num_ps` the tasks are a chief (it runs the
training loop), the workers and the ps tasks; a failed worker is tolerated,
and the others are stopped once the chief is done. Processes are tracked and killed by PID (their whole
process group), so nothing is left running. The exit status is the first
non-zero worker status, or 0.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

PREEMPTED = 143  # a worker's status after a coordinated stop on SIGTERM (tflm-train)

def free_ports(count):
    """`count` TCP ports free on localhost right now."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("localhost", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def local_env(**extra):
    """The environment of processes on this machine: TensorFlow quiet, CPUs only, this
    repository importable, and no TF_CONFIG (the cluster sets one per task)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
    env.pop("TF_CONFIG", None)
    return env


def tf_configs(num_workers, num_ps=0):
    """One TF_CONFIG JSON per task of a localhost cluster: `num_workers` workers; with
    `num_ps` parameter servers a chief first (it runs the training loop), then the workers,
    then the ps tasks."""
    if not num_ps:
        cluster = {"worker": [f"localhost:{port}" for port in free_ports(num_workers)]}
        return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
                for i in range(num_workers)]
    ports = [f"localhost:{port}" for port in free_ports(1 + num_workers + num_ps)]
    cluster = {"chief": ports[:1], "worker": ports[1:1 + num_workers],
               "ps": ports[1 + num_workers:]}
    tasks = [("chief", 0)] + [("worker", i) for i in range(num_workers)] + [
        ("ps", i) for i in range(num_ps)]
    return [json.dumps({"cluster": cluster, "task": {"type": kind, "index": i}})
            for kind, i in tasks]


def _stream(process, prefix, sink):
    for line in iter(process.stdout.readline, ""):
        sink.write(f"{prefix}{line}")
        sink.flush()


def kill_group(process, sig=signal.SIGKILL):
    """Signals the worker's whole process group (it runs in its own session)."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


class LocalCluster:
    """N worker processes of one command; `start`, then `wait` or `kill`.

    Example:
    >>> cluster = LocalCluster(["tflm-train", ...], num_workers=2).start()
    >>> statuses = cluster.wait(timeout=600)
    """

    def __init__(self, command, num_workers, env=None, sink=sys.stdout, num_ps=0):
        self.command = list(command)
        self.num_workers = num_workers
        self.num_ps = num_ps
        self.env = dict(os.environ if env is None else env)
        self.sink = sink
        self.processes = []

    def start(self):
        for index, tf_config in enumerate(tf_configs(self.num_workers, self.num_ps)):
            env = dict(self.env, TF_CONFIG=tf_config)
            process = subprocess.Popen(
                self.command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, start_new_session=True,
            )
            name = json.loads(tf_config)["task"]
            name = f"{name['type']} {name['index']}" if self.num_ps else f"worker {index}"
            threading.Thread(target=_stream, args=(process, f"[{name}] ", self.sink),
                             daemon=True).start()
            self.processes.append(process)
        return self

    def kill(self, index=None, sig=signal.SIGKILL):
        """Signals one task (by index: the chief first under parameter servers) or all."""
        targets = self.processes if index is None else [self.processes[index]]
        for process in targets:
            kill_group(process, sig)

    def wait(self, timeout=None, grace=60.0):
        """Waits for all workers; stops the rest when one fails or time runs out.

        A worker that exits with 143 (preempted: it saved and stopped with the others) is
        no failure: the rest get `grace` seconds to save the same step and exit too.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        preempted_at = None
        while True:
            statuses = [p.poll() for p in self.processes]
            if self.num_ps and statuses[0] is not None:
                # Parameter servers and their workers serve until the chief is done.
                self.kill()
                for p in self.processes:
                    p.wait()
                return [p.returncode for p in self.processes]
            if all(s is not None for s in statuses):
                return statuses
            # Under parameter servers the chief tolerates a failed worker; else the others
            # would wait for it forever in their collectives.
            if not self.num_ps and any(s not in (None, 0, PREEMPTED) for s in statuses):
                self.kill()
            if PREEMPTED in statuses:
                preempted_at = preempted_at or time.monotonic()
                if time.monotonic() - preempted_at > grace:
                    self.kill()
            if deadline is not None and time.monotonic() > deadline:
                self.kill()
                for p in self.processes:
                    p.wait()
                return [p.returncode for p in self.processes]
            time.sleep(0.1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--num_ps", type=int, default=0,
                        help="parameter servers (then a chief, the workers and the ps tasks)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before all are killed")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the worker command")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the worker command after --")
    cluster = LocalCluster(command, args.num_workers, num_ps=args.num_ps).start()
    try:
        statuses = cluster.wait(args.timeout)
    except KeyboardInterrupt:
        cluster.kill()
        statuses = [p.wait() for p in cluster.processes]
    print(f"launch_local_cluster: worker exit statuses {statuses}", flush=True)
    if args.num_ps:
        return statuses[0]  # the chief's; the others were stopped when it was done
    return next((s for s in statuses if s), 0)


if __name__ == "__main__":
    sys.exit(main())
