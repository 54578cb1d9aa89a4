"""Training throughput of the tflm trainer for a config: tokens/s and MFU, as JSON lines.

    python tools/benchmark_train.py --config_file=configs/tiny_gpt.yaml --steps=60 \\
        --params_override=runtime.mixed_precision=mixed_bfloat16

Trains in a temporary model_dir (no checkpoints kept), discards the first
(compiling) window, and reports the median tokens/s over the remaining
windows, the model FLOPs per token, the achieved TFLOP/s and, where the
device's peak is known (or given with runtime.peak_tflops), the MFU.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def machine():
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [tf.config.experimental.get_device_details(g).get("device_name", "GPU")
                 for g in gpus]
        return f"{len(gpus)}x {names[0]}"
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                  if line.startswith("model name")), platform.processor()) if os.path.exists(
        "/proc/cpuinfo") else platform.processor()
    return f"{os.cpu_count()}-core CPU ({model})"


def benchmark(config_files, params_override, steps, window):
    from tflm.experiment import load_experiment
    from tflm.training.trainer import Trainer
    from tflm.tasks import get_task

    overrides = ",".join(filter(None, [
        params_override, f"trainer.train_steps={steps}", f"trainer.log_every={window}",
        f"trainer.steps_per_loop={window}", f"trainer.checkpoint_every={steps}",
        "trainer.eval_every=0",
    ]))
    config = load_experiment(config_files, overrides)
    with tempfile.TemporaryDirectory() as model_dir:
        trainer = Trainer(get_task(config), model_dir, print_fn=lambda line: print(line, file=sys.stderr))
        trainer.train()
    steady = [r["tokens_per_second"] for r in trainer.history[1:]] or [
        trainer.history[-1]["tokens_per_second"]]
    tokens_per_second = statistics.median(steady)
    result = {
        "benchmark": "train",
        "config": config_files,
        "params_override": params_override,
        "task": config.model.task,
        "parameters": trainer.model.count_params(),
        "sequence_length": config.data.sequence_length,
        "global_batch_size": config.data.global_batch_size,
        "precision": config.runtime.mixed_precision,
        "replicas": trainer.strategy.num_replicas_in_sync,
        "tokens_per_second": tokens_per_second,
        "windows": len(steady),
        "flops_per_token": trainer.flops_per_token,
        "tflops": tokens_per_second * trainer.flops_per_token / 1e12,
        "machine": machine(),
    }
    if trainer.peak_flops:
        result["mfu"] = tokens_per_second * trainer.flops_per_token / trainer.peak_flops
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config_file", action="append", required=True)
    parser.add_argument("--params_override", default="")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--window", type=int, default=10, help="steps per timed window")
    args = parser.parse_args()
    print(json.dumps(benchmark(args.config_file, args.params_override, args.steps, args.window)),
          flush=True)


if __name__ == "__main__":
    main()
