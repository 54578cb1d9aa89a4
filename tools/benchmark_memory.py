"""Gradient checkpointing's memory and time: peak memory and step time of the trainer's step
with and without `trainer.gradient_checkpointing`, at a shape where activations dominate.

    python tools/benchmark_memory.py                      # 12 layers, seq 1024, batch 2, width 128
    python tools/benchmark_memory.py --jit_compile=both --steps=5
    python tools/benchmark_memory.py --params_override=model.hidden_dim=256,data.global_batch_size=4

Each variant (checkpointing off / on, XLA off / on) runs in a process of its own, so its peak
is its own: the process's peak resident set (`ru_maxrss`) and, on a GPU, the allocator's peak
(`tf.config.experimental.get_memory_info`). The run is the `Trainer`'s compiled step (what
`tflm-train` runs: forward, backward, AdamW) on the tiny_gpt config made deep and long, fed
one cached batch so the input pipeline adds nothing; the first step (tracing, compiling) is
not timed. `rss_before_mib` is the peak resident set once the model and optimizer are built,
so `peak - before` is what the steps (and compiling them) added; `rss_peak_of_steps_mib` is
the peak of the timed steps alone (the kernel's count restarted after the first step, which
leaves out XLA's compiler, whose own peak can exceed the step's). Each variant prints one JSON line; then a summary
line per XLA setting with the ratios on/off.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Deep and long, narrow: the attention maps (batch x heads x T x T per block) dominate.
SHAPE = ("model.num_layers=12,model.num_heads=4,model.hidden_dim=128,model.intermediate_dim=512,"
         "model.max_sequence_length=1024,data.sequence_length=1024,data.global_batch_size=2,"
         "model.dropout=0.1,model.attention_dropout=0.1,trainer.steps_per_loop=1")


def _rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _reset_peak_rss():
    """Restarts the kernel's peak-RSS count (VmHWM; Linux): what follows is measured without
    the compiler's own peak. False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_since_reset_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def time_trainer_steps(overrides, steps):
    """The `Trainer`'s compiled step on tiny_gpt.yaml with `overrides` (a `--params_override`
    string), fed one cached batch: `steps` timed steps after a first (tracing, compiling) one.
    Returns `{"times", "rss_before_mib", "rss_peak_mib", "rss_peak_of_steps_mib",
    "device_peak_mib", "loss", "config", "model"}` (times in seconds, the first included)."""
    import tensorflow as tf

    from tflm.experiment import load_experiment
    from tflm.tasks import get_task
    from tflm.training.trainer import Trainer

    config = load_experiment(os.path.join(ROOT, "configs", "tiny_gpt.yaml"),
                             f"{overrides},trainer.train_steps={steps + 1}")
    task = get_task(config)

    def cached(context):
        batch = next(iter(task.dataset(input_context=context)))
        return tf.data.Dataset.from_tensors(batch).repeat()

    with tempfile.TemporaryDirectory() as model_dir:
        trainer = Trainer(task, model_dir, dataset_fn=cached, print_fn=lambda line: None)
        rss_before = _rss_mib()
        one = tf.constant(1, tf.int32)
        times = []
        steps_peak = None
        for step in range(steps + 1):
            start = time.perf_counter()
            losses, _ = trainer.train_step.train_loop(one)
            losses.numpy()
            times.append(time.perf_counter() - start)
            if step == 0 and _reset_peak_rss():
                steps_peak = 0.0
        if steps_peak is not None:
            steps_peak = _peak_rss_since_reset_mib()
    gpus = tf.config.list_logical_devices("GPU")
    device_peak = (tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
                   if gpus else None)
    return {"times": times, "rss_before_mib": rss_before, "rss_peak_mib": _rss_mib(),
            "rss_peak_of_steps_mib": steps_peak, "device_peak_mib": device_peak,
            "loss": float(losses.numpy()[-1]), "config": config, "model": trainer.model}


def child(args):
    """One variant in this process: one JSON line."""
    overrides = ",".join(filter(None, [
        SHAPE, args.params_override, f"trainer.jit_compile={args.jit_compile}",
        f"trainer.gradient_checkpointing={args.checkpointing}"]))
    run = time_trainer_steps(overrides, args.steps)
    times, steps_peak, device_peak = (run["times"], run["rss_peak_of_steps_mib"],
                                      run["device_peak_mib"])
    print(json.dumps({
        "gradient_checkpointing": args.checkpointing == "true",
        "jit_compile": args.jit_compile == "true",
        "step_s_median": round(statistics.median(times[1:]), 3),
        "first_step_s": round(times[0], 1),
        "rss_before_mib": round(run["rss_before_mib"]), "rss_peak_mib": round(run["rss_peak_mib"]),
        "rss_peak_of_steps_mib": None if steps_peak is None else round(steps_peak),
        "device_peak_mib": None if device_peak is None else round(device_peak),
        "loss": run["loss"],
        "shape": overrides,
    }), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jit_compile", choices=["true", "false", "both"], default="both")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    parser.add_argument("--params_override", default="", help="more overrides of the shape")
    parser.add_argument("--checkpointing", choices=["true", "false"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.checkpointing:
        return child(args)
    settings = ["false", "true"] if args.jit_compile == "both" else [args.jit_compile]
    for jit in settings:
        records = {}
        for checkpointing in ("false", "true"):
            command = [sys.executable, os.path.abspath(__file__), f"--jit_compile={jit}",
                       f"--checkpointing={checkpointing}", f"--steps={args.steps}",
                       f"--params_override={args.params_override}"]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            records[checkpointing] = json.loads(output.strip().splitlines()[-1])
            print(json.dumps(records[checkpointing]), flush=True)
        off, on = records["false"], records["true"]
        added = [r["rss_peak_mib"] - r["rss_before_mib"] for r in (off, on)]
        summary = {"jit_compile": jit == "true",
                   "rss_peak_mib": [off["rss_peak_mib"], on["rss_peak_mib"]],
                   "rss_added_by_steps_mib": added,
                   "added_ratio_on_off": round(added[1] / max(added[0], 1), 3),
                   "rss_peak_of_steps_mib": [off["rss_peak_of_steps_mib"],
                                             on["rss_peak_of_steps_mib"]],
                   "step_time_ratio_on_off": round(on["step_s_median"] / off["step_s_median"], 3),
                   "same_loss": abs(on["loss"] - off["loss"]) <= 1e-4 * abs(off["loss"])}
        if off["device_peak_mib"] is not None:
            summary["device_peak_mib"] = [off["device_peak_mib"], on["device_peak_mib"]]
        print("summary " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
