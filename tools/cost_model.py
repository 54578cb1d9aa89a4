"""A cost model of one data-parallel training step: compute, AllReduce, parameter servers.

    python tools/cost_model.py project                  # GPT-2 124M and BERT-base on 8 / 64 / 512
    python tools/cost_model.py project --mfu=0.40 --threshold=0.2
    python tools/cost_model.py project --overlap=0.67   # AllReduce behind the backward pass
    python tools/cost_model.py validate --repeats=3     # measures 1 and 2 workers, 1 ps, here
    python tools/cost_model.py validate --measured=step_times.json   # or reads measured times
    python tools/cost_model.py validate --hidden_dim=512 --batch=2   # communication-heavy

A step (one optimizer update over `k` accumulated micro-batches) costs

    compute     = k * tokens per micro-batch per device * FLOPs per token / (peak * MFU)
    AllReduce   = 2 (N-1)/N * gradient bytes / ring bandwidth + 2 (N-1) * latency   (a ring;
                  its bandwidth is the slowest link it crosses: NVLink within a node, the
                  network between nodes)
    ps traffic  = each worker pulls and pushes every variable once per update; the ps NICs
                  carry it for all N workers: N * bytes / (ps bandwidth * num_ps), plus a
                  per-variable RPC cost the ps pays for each worker (pull and push), plus the
                  optimizer's update on the ps (memory-bound: 28 bytes a parameter for Adam)

with no overlap of compute and communication (tflm's step reduces the gradients after the
backward pass, as `MultiWorkerMirroredStrategy` does). Gradient accumulation divides the
communication per token by k: one exchange per k micro-batches.

`validate` trains `configs/tiny_gpt.yaml` for a few dozen steps on local clusters of 1 and 2
workers (AllReduce) and 1 worker with 1 ps (`tools/benchmark_strategies.py`'s runs, processes
killed by PID), probes loopback bandwidth and latency, and prints predicted against measured
step times. The compute rate is the 1-worker run's (the calibration point); the workers of
one machine share its cores, so each of N computing workers gets 1/N of it. That holds only
on a quiet machine: under others' load, more processes win a larger share of the cores and
two workers can outrun one (check `uptime`; the load is printed). `--measured` reads
`{"tokens_per_step": ..., "hidden_dim": 128, "multi_worker_1": seconds, "multi_worker_2":
..., "parameter_server_1": ...}` (step seconds) instead of running; `--save` writes one. The
quiet-machine runs of `tools/benchmark_strategies.py` in benchmarks/RESULTS.md (2,048 tokens a
step at 42,938, 36,037 and 27,132 tokens/s) are such a file: 2048 / tokens/s each.
"""

import argparse
import dataclasses
import json
import math
import os
import socket
import statistics
import sys
import threading
import time

GB = 1e9


@dataclasses.dataclass(frozen=True)
class Link:
    """One direction of a link: bytes/s, and seconds per message (a ring hop, an RPC)."""

    bandwidth: float
    latency: float


@dataclasses.dataclass(frozen=True)
class Hardware:
    """Accelerators, how they are connected, and the parameter servers' machines."""

    name: str
    peak_flops: float          # dense FLOP/s of one accelerator
    mfu: float                 # the fraction of peak a training step achieves
    devices_per_node: int
    intra: Link                # within a node (NVLink)
    inter: Link                # between nodes, per accelerator (one NIC each)
    ps_nic: Link               # one ps task's NIC; latency is its cost per RPC
    ps_memory_bandwidth: float  # bytes/s the ps's optimizer update streams

    @property
    def achieved_flops(self):
        return self.peak_flops * self.mfu

    def ring_link(self, num_devices):
        """The slowest link of a ring over `num_devices`: the network once it leaves a node."""
        return self.intra if num_devices <= self.devices_per_node else self.inter


# H100 SXM (dense bf16 989 TFLOP/s), DGX-style nodes: 8 GPUs on NVLink 4 (900 GB/s
# bidirectional: 450 GB/s each way), one 400 Gb/s InfiniBand NIC per GPU between nodes.
# Parameter servers: CPU machines with a 100 Gb/s NIC, ~50 us of gRPC work per variable RPC,
# 100 GB/s of memory bandwidth for the optimizer update.
H100 = Hardware(
    name="H100-class", peak_flops=989e12, mfu=0.45, devices_per_node=8,
    intra=Link(450 * GB, 3e-6), inter=Link(400 / 8 * GB, 5e-6),
    ps_nic=Link(100 / 8 * GB, 50e-6), ps_memory_bandwidth=100 * GB)

ADAM_BYTES_PER_PARAMETER = 28  # reads the variable, m, v and the gradient; writes three (float32)


@dataclasses.dataclass(frozen=True)
class Model:
    """What a step moves and computes: parameters (all trainable: the gradients' size)."""

    name: str
    parameters: int
    flops_per_token: float     # training (forward + backward), as `tflm.training.flops` counts
    sequence_length: int
    num_variables: int         # tensors: one RPC each way per variable to a ps
    bytes_per_parameter: int = 4  # float32 variables and gradients (mixed precision keeps them)

    @property
    def gradient_bytes(self):
        return self.parameters * self.bytes_per_parameter

    @classmethod
    def transformer(cls, name, num_layers, hidden_dim, intermediate_dim, vocabulary_size,
                    sequence_length, max_sequence_length, num_segments=0, pooler=False,
                    head_parameters=0, num_variables=0, projected_share=1.0):
        """A tflm `TransformerBackbone` (tied output) counted as `tflm.training.flops` does:
        `6 N + 12 L d T` FLOPs a token, N the non-embedding parameters plus the tied output
        projection at the `projected_share` of positions the task projects (a masked LM its
        predicted ones); `head_parameters` are the task's own (a masked-LM head's)."""
        d, f = hidden_dim, intermediate_dim
        # q, k, v and output projections with biases, two dense layers of the MLP, two norms.
        per_layer = 4 * d * d + 4 * d + 2 * d * f + f + d + 4 * d
        # A final norm (pre-LN) or an embedding norm (post-LN): either way one norm.
        blocks = num_layers * per_layer + 2 * d + (d * d + d if pooler else 0)
        embeddings = (vocabulary_size + max_sequence_length + num_segments) * d
        flops = (6 * (blocks + d * vocabulary_size * projected_share)
                 + 12 * num_layers * d * sequence_length)
        return cls(name, blocks + embeddings + head_parameters, flops, sequence_length,
                   num_variables)


GPT2_124M = Model.transformer("GPT-2 124M", 12, 768, 3072, 50257, 1024, 1024, num_variables=148)
# BERT-base with its masked-LM head (transform dense, norm, output bias) beside the backbone,
# projecting its 20 predicted positions of 128.
BERT_BASE = Model.transformer("BERT-base", 12, 768, 3072, 30522, 128, 512, num_segments=2,
                              pooler=True, head_parameters=768 * 768 + 3 * 768 + 30522,
                              num_variables=156, projected_share=20 / 128)


@dataclasses.dataclass(frozen=True)
class StepTime:
    """One optimizer update's seconds: compute, the exchange (AllReduce or ps traffic), and
    the part of it left after `overlap` (a fraction of the compute it can run behind)."""

    compute: float
    exchange: float
    tokens: int                # over all devices and micro-batches
    overlap: float = 0.0

    @property
    def communication(self):
        return max(0.0, self.exchange - self.overlap * self.compute)

    @property
    def total(self):
        return self.compute + self.communication

    @property
    def communication_share(self):
        return self.communication / self.total

    @property
    def tokens_per_second(self):
        return self.tokens / self.total


def allreduce_time(num_bytes, num_devices, link):
    """Ring AllReduce: reduce-scatter then all-gather, 2 (N-1) hops of bytes/N each."""
    n = num_devices
    if n <= 1:
        return 0.0
    return 2 * (n - 1) / n * num_bytes / link.bandwidth + 2 * (n - 1) * link.latency


def parameter_server_time(model, num_workers, num_ps, hardware, worker_link=None):
    """Pull and push of every variable by every worker, bounded by the ps tasks.

    The ps NICs are full duplex (pulls out, pushes in at once) and the variables are spread
    evenly over `num_ps`; a worker's own NIC (`worker_link`, else the inter-node link) bounds
    its share. Each ps also serves one RPC per variable each way for each worker, and applies
    each worker's update (asynchronous: one per push)."""
    worker_link = worker_link or hardware.inter
    per_ps = num_workers / num_ps
    nic = max(per_ps * model.gradient_bytes / hardware.ps_nic.bandwidth,
              model.gradient_bytes / worker_link.bandwidth)
    rpcs = per_ps * 2 * model.num_variables * hardware.ps_nic.latency
    update = (per_ps * model.parameters * ADAM_BYTES_PER_PARAMETER
              / hardware.ps_memory_bandwidth)
    return nic + rpcs + update


def step_time(model, hardware, num_devices, tokens_per_device, strategy="allreduce",
              accumulation=1, num_ps=1, overlap=0.0):
    """An update's `StepTime`: `tokens_per_device` per micro-batch, `accumulation` of them.

    `strategy` is "allreduce" (synchronous ring over `num_devices`) or "parameter_server"
    (`num_devices` workers, `num_ps` ps tasks). `overlap` is the fraction of the compute the
    exchange can hide behind: 0 in tflm's step; about 2/3 (the backward pass) where gradients
    are reduced in buckets as the backward pass produces them."""
    if accumulation < 1 or num_devices < 1 or num_ps < 1:
        raise ValueError(f"accumulation, num_devices and num_ps must be >= 1, got "
                         f"{accumulation}, {num_devices}, {num_ps}")
    compute = (accumulation * tokens_per_device * model.flops_per_token
               / hardware.achieved_flops)
    if strategy == "allreduce":
        exchange = allreduce_time(model.gradient_bytes, num_devices,
                                       hardware.ring_link(num_devices))
    elif strategy == "parameter_server":
        exchange = parameter_server_time(model, num_devices, num_ps, hardware)
    else:
        raise ValueError(f"strategy must be 'allreduce' or 'parameter_server', got {strategy!r}")
    return StepTime(compute, exchange, num_devices * accumulation * tokens_per_device, overlap)


def scaling_limit(model, hardware, global_tokens, threshold, strategy="allreduce",
                  ps_per_node=False, overlap=0.0, largest=1 << 16):
    """The largest power-of-two device count whose communication stays within `threshold` of
    the step at a fixed global batch of `global_tokens` (at least a sequence a device)."""
    best, n = None, 1
    while n <= min(largest, global_tokens // model.sequence_length):
        num_ps = max(1, n // hardware.devices_per_node) if ps_per_node else 1
        step = step_time(model, hardware, n, global_tokens / n, strategy, num_ps=num_ps,
                         overlap=overlap)
        if step.communication_share > threshold:
            break
        best, n = n, n * 2
    return best


def ps_needed(model, hardware, num_devices, tokens_per_device, threshold, accumulation=1):
    """The fewest ps tasks that keep the communication within `threshold`, or None."""
    for num_ps in range(1, 4 * num_devices + 1):
        step = step_time(model, hardware, num_devices, tokens_per_device, "parameter_server",
                         accumulation, num_ps)
        if step.communication_share <= threshold:
            return num_ps
    return None


# --- project -----------------------------------------------------------------------------

# (model, global batch in sequences: ~0.5M tokens each, micro-batch per device in sequences
# that fits an 80 GB accelerator in bf16)
WORKLOADS = ((GPT2_124M, 512, 16), (BERT_BASE, 4096, 256))
DEVICES = (8, 64, 512)
ACCUMULATION = (1, 4, 16)


def _ms(seconds):
    return f"{seconds * 1e3:,.1f}"


def project(hardware, threshold, overlap=0.0, out=None):
    """Prints the projection tables; returns their rows (dicts) for tests. `overlap` applies
    to AllReduce (the parameter servers' exchange stays in the step)."""
    out = out or sys.stdout
    rows = []
    hw = hardware
    print(f"{hw.name}: {hw.peak_flops / 1e12:,.0f} TFLOP/s peak x MFU {hw.mfu:.0%} = "
          f"{hw.achieved_flops / 1e12:,.0f} TFLOP/s a device; {hw.devices_per_node} a node on "
          f"{hw.intra.bandwidth / GB:,.0f} GB/s ({hw.intra.latency * 1e6:g} us), between nodes "
          f"{hw.inter.bandwidth / GB:,.0f} GB/s a device ({hw.inter.latency * 1e6:g} us); ps: "
          f"{hw.ps_nic.bandwidth / GB:,.1f} GB/s NIC, {hw.ps_nic.latency * 1e6:g} us an RPC, "
          f"{hw.ps_memory_bandwidth / GB:,.0f} GB/s memory. float32 gradients; AllReduce hidden "
          f"behind {overlap:.0%} of the compute; 'stops scaling' = communication > "
          f"{threshold:.0%} of the step.", file=out)
    for model, global_sequences, micro in WORKLOADS:
        global_tokens = global_sequences * model.sequence_length
        print(f"\n{model.name}: {model.parameters / 1e6:,.1f}M parameters "
              f"({model.gradient_bytes / 1e6:,.0f} MB of gradients), "
              f"{model.flops_per_token / 1e6:,.0f} MFLOP a token, seq {model.sequence_length}",
              file=out)
        print(f"  fixed global batch {global_sequences} x {model.sequence_length} = "
              f"{global_tokens:,} tokens (accumulation here only fits memory: it moves no "
              f"communication)", file=out)
        print(f"  {'devices':>7} {'seq/dev':>7} {'compute ms':>10} {'AllReduce ms':>12} "
              f"{'AR comm':>7} {'1 ps ms':>9} {'1 ps comm':>9} {'ps/node comm':>12} "
              f"{'ps for <=' + format(threshold, '.0%'):>10}", file=out)
        for n in DEVICES:
            per_device = global_tokens / n
            ar = step_time(model, hw, n, per_device, overlap=overlap)
            ps1 = step_time(model, hw, n, per_device, "parameter_server", num_ps=1)
            ps_node = step_time(model, hw, n, per_device, "parameter_server",
                                num_ps=max(1, n // hw.devices_per_node))
            needed = ps_needed(model, hw, n, per_device, threshold)
            rows.append(dict(model=model.name, table="fixed", devices=n, allreduce=ar,
                             ps1=ps1, ps_node=ps_node, ps_needed=needed))
            print(f"  {n:>7} {per_device / model.sequence_length:>7g} {_ms(ar.compute):>10} "
                  f"{_ms(ar.communication):>12} {ar.communication_share:>7.0%} "
                  f"{_ms(ps1.communication):>9} {ps1.communication_share:>9.0%} "
                  f"{ps_node.communication_share:>12.0%} {needed or 'none':>10}", file=out)
        ar_limit = scaling_limit(model, hw, global_tokens, threshold, overlap=overlap)
        ps_limit = scaling_limit(model, hw, global_tokens, threshold, "parameter_server",
                                 ps_per_node=True)
        ps1_limit = scaling_limit(model, hw, global_tokens, threshold, "parameter_server")
        rows.append(dict(model=model.name, table="limit", allreduce=ar_limit,
                         ps_per_node=ps_limit, ps1=ps1_limit))
        print(f"  stops scaling past: AllReduce {ar_limit or '<1'} devices; parameter servers "
              f"(one ps a node) {ps_limit or '<1'}; one ps {ps1_limit or '<1'}", file=out)
        print(f"  gradient accumulation at {micro} sequences a device a micro-batch "
              f"(the memory limit): the global batch grows k-fold, communication once an "
              f"update", file=out)
        print(f"  {'devices':>7} {'k':>3} {'global tokens':>14} {'compute ms':>10} "
              f"{'AR comm':>7} {'AR tokens/s':>13} {'ps/node comm':>12}", file=out)
        for n in DEVICES:
            for k in ACCUMULATION:
                tokens = micro * model.sequence_length
                ar = step_time(model, hw, n, tokens, accumulation=k, overlap=overlap)
                ps = step_time(model, hw, n, tokens, "parameter_server", k,
                               max(1, n // hw.devices_per_node))
                rows.append(dict(model=model.name, table="accumulation", devices=n, k=k,
                                 allreduce=ar, ps_node=ps))
                print(f"  {n:>7} {k:>3} {ar.tokens:>14,} {_ms(ar.compute):>10} "
                      f"{ar.communication_share:>7.0%} {ar.tokens_per_second:>13,.0f} "
                      f"{ps.communication_share:>12.0%}", file=out)
    return rows


# --- validate ----------------------------------------------------------------------------

def tiny_gpt(hidden_dim=128):
    """`configs/tiny_gpt.yaml` (2 layers, seq 128, byte vocabulary), `hidden_dim` wide."""
    return Model.transformer(f"tiny_gpt {hidden_dim}", 2, hidden_dim, 4 * hidden_dim, 262, 128,
                             128, num_variables=28)


TINY_GPT = tiny_gpt()


def probe_loopback(tries=3):
    """Loopback TCP, the best of `tries` (the machine may be shared): (bytes/s one way,
    seconds per one-way message)."""
    results = [_probe_loopback() for _ in range(tries)]
    return max(b for b, _ in results), min(t for _, t in results)


def _probe_loopback(num_bytes=64 << 20, pings=2000):
    server = socket.create_server(("localhost", 0))
    port = server.getsockname()[1]

    def serve():
        conn, _ = server.accept()
        with conn:
            for _ in range(pings):
                conn.sendall(conn.recv(1))
            remaining = num_bytes
            while remaining:
                remaining -= len(conn.recv(min(remaining, 1 << 20)))
            conn.sendall(b"k")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with socket.create_connection(("localhost", port)) as client, server:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = time.perf_counter()
        for _ in range(pings):
            client.sendall(b"p")
            client.recv(1)
        latency = (time.perf_counter() - start) / pings / 2
        payload = bytes(1 << 20)
        start = time.perf_counter()
        for _ in range(num_bytes >> 20):
            client.sendall(payload)
        client.recv(1)
        bandwidth = num_bytes / (time.perf_counter() - start)
    thread.join()
    return bandwidth, latency


def probe_memory_bandwidth(num_bytes=256 << 20):
    """Bytes/s of a large copy (read + write), the bound of an optimizer update."""
    source, target = bytearray(b"x" * num_bytes), bytearray(b"y" * num_bytes)  # both touched
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        target[:] = source
        best = min(best, time.perf_counter() - start)
    return 2 * num_bytes / best


def measure(repeats, steps, timeout, hidden_dim=128, batch=16):
    """Median step seconds of 1 and 2 AllReduce workers and 1 worker + 1 ps, runs alternating,
    on `tiny_gpt(hidden_dim)` at a global batch of `batch` sequences."""
    from argparse import Namespace

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import tempfile

    from benchmark_strategies import run

    runs = {"multi_worker_1": ("multi_worker", 1), "multi_worker_2": ("multi_worker", 2),
            "parameter_server_1": ("parameter_server", 1)}
    seq = 128  # configs/tiny_gpt.yaml
    overrides = (f"model.hidden_dim={hidden_dim},model.intermediate_dim={4 * hidden_dim},"
                 f"data.global_batch_size={batch}")
    rates = {key: [] for key in runs}
    folder = tempfile.mkdtemp(prefix="tflm-cost-model-")
    for repeat in range(repeats):
        for key, (strategy, workers) in runs.items():
            args = Namespace(config_file="configs/tiny_gpt.yaml", params_override=overrides,
                             workers=workers, steps=steps, log_every=10, ps_step_factor=1,
                             timeout=timeout)
            run_folder = os.path.join(folder, f"{key}-{repeat}")
            os.makedirs(run_folder)
            points, _ = run(strategy, args, run_folder)
            rates[key].append(statistics.median(p[3] for p in points[1:]))
            print(f"  {key} run {repeat + 1}: {rates[key][-1]:,.0f} tokens/s", flush=True)
    measured = {"tokens_per_step": batch * seq, "hidden_dim": hidden_dim}
    measured.update({key: batch * seq / statistics.median(r) for key, r in rates.items()})
    measured["load_average"] = os.getloadavg()[0]  # 1-minute, at the end
    return measured


def validate(measured, bandwidth, latency, memory_bandwidth, out=None):
    """Predicted against measured step seconds; returns {run: (predicted, measured)}."""
    out = out or sys.stdout
    tokens = measured["tokens_per_step"]
    model = tiny_gpt(measured.get("hidden_dim", 128))
    # The calibration point: one worker's compute rate, all cores of this machine.
    achieved = tokens * model.flops_per_token / measured["multi_worker_1"]
    link = Link(bandwidth, latency)
    results = {}
    for key, strategy, workers in (("multi_worker_1", "allreduce", 1),
                                   ("multi_worker_2", "allreduce", 2),
                                   ("parameter_server_1", "parameter_server", 1)):
        # The workers share the machine's cores: each of N computing workers gets 1/N.
        local = Hardware("this machine", achieved / workers, 1.0, devices_per_node=64,
                         intra=link, inter=link, ps_nic=link,
                         ps_memory_bandwidth=memory_bandwidth)
        step = step_time(model, local, workers, tokens / workers, strategy)
        results[key] = (step.total, measured[key])
    print(f"{model.name} (2 layers, seq 128, {tokens:,} tokens a step, float32): "
          f"{model.parameters:,} parameters ({model.gradient_bytes / 1e6:.1f} MB), "
          f"{model.flops_per_token / 1e6:.2f} MFLOP a token; compute "
          f"{achieved / 1e9:.1f} GFLOP/s (the 1-worker run); loopback {bandwidth / GB:.2f} GB/s, "
          f"{latency * 1e6:.0f} us a message; memory {memory_bandwidth / GB:.1f} GB/s", file=out)
    if "load_average" in measured:
        print(f"load average at the end of the measurement: {measured['load_average']:.1f}",
              file=out)
    print(f"{'run':<20}{'predicted ms':>13}{'measured ms':>13}{'error':>8}"
          f"{'unmodelled ms':>15}", file=out)
    for key, (predicted, actual) in results.items():
        print(f"{key:<20}{_ms(predicted):>13}{_ms(actual):>13}"
              f"{(predicted - actual) / actual:>+8.0%}{_ms(actual - predicted):>15}", file=out)
    predicted, actual = results["parameter_server_1"]
    rpcs = 2 * model.num_variables
    print(f"the ps run's unmodelled time is {(actual - predicted) / rpcs * 1e6:,.0f} us for each "
          f"of its {rpcs} variable RPCs a step (the probe's message: {latency * 1e6:.0f} us)",
          file=out)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    proj = sub.add_parser("project", help="GPT-2 124M and BERT-base on 8 / 64 / 512 devices")
    proj.add_argument("--mfu", type=float, default=H100.mfu)
    proj.add_argument("--threshold", type=float, default=0.2,
                      help="communication share of the step past which scaling has stopped")
    proj.add_argument("--overlap", type=float, default=0.0,
                      help="fraction of the compute AllReduce hides behind (0: tflm's step)")
    val = sub.add_parser("validate", help="predicted against measured local clusters")
    val.add_argument("--measured", help="JSON of measured step seconds instead of running")
    val.add_argument("--save", help="write the measured step seconds to this JSON")
    val.add_argument("--repeats", type=int, default=3)
    val.add_argument("--steps", type=int, default=60)
    val.add_argument("--timeout", type=float, default=300.0, help="seconds a run, then killed")
    val.add_argument("--hidden_dim", type=int, default=128,
                     help="tiny_gpt's width (512: 26 MB of gradients, communication shows)")
    val.add_argument("--batch", type=int, default=16, help="global batch, sequences of 128")
    args = parser.parse_args(argv)
    if args.command == "project":
        if not 0 < args.mfu <= 1 or not 0 < args.threshold < 1 or not 0 <= args.overlap <= 1:
            parser.error(f"--mfu must be in (0, 1], --threshold in (0, 1) and --overlap in "
                         f"[0, 1], got {args.mfu}, {args.threshold}, {args.overlap}")
        project(dataclasses.replace(H100, mfu=args.mfu), args.threshold, args.overlap)
        return 0
    if args.measured:
        with open(args.measured) as f:
            measured = json.load(f)
        missing = {"tokens_per_step", "multi_worker_1", "multi_worker_2",
                   "parameter_server_1"} - set(measured)
        if missing:
            parser.error(f"--measured {args.measured}: missing keys {sorted(missing)}")
    else:
        measured = measure(args.repeats, args.steps, args.timeout, args.hidden_dim, args.batch)
        if args.save:
            with open(args.save, "w") as f:
                json.dump(measured, f, indent=1)
    validate(measured, *probe_loopback(), probe_memory_bandwidth())
    return 0


if __name__ == "__main__":
    sys.exit(main())
