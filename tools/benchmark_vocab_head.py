"""The vocabulary head at GPT-2's vocabulary: step time, peak memory and GFLOP/s of the
trainer's step with the whole float32 logits and with `model.loss_chunk_size`, with and
without XLA, beside the matmul peak of this machine.

    python tools/benchmark_vocab_head.py                     # GPT 4 x 256, V 50257, seq 256, batch 4
    python tools/benchmark_vocab_head.py --chunk_sizes=256,1024 --repeats=3 --steps=3
    python tools/benchmark_vocab_head.py --params_override=data.global_batch_size=8
    # a masked LM at BERT's vocabulary (20 projected positions a row):
    python tools/benchmark_vocab_head.py --params_override=model.task=masked_lm,model.vocabulary_size=30522,trainer.sample_prompt=

Each variant (loss_chunk_size 0 or one of `--chunk_sizes`; XLA off / on) runs in a process of
its own, `--repeats` times, the variants alternating, so load from other jobs falls on all of
them alike; each process times `--steps` steps after a first one (tracing, compiling). As
`benchmark_memory.py` (whose measures these are): `rss_peak_of_steps_mib` is the process's
peak resident set during the timed steps, `rss_before_mib` once the model and optimizer are
built. `gflops` is the model's training FLOPs (`training_flops_per_token`: 6 x parameters,
the tied projection at the positions the task projects, plus attention) over the step time;
`matmul_gflops` a float32 2048 x 2048 x 2048 matmul's, measured in a process of its own between
the repeats. The last line is a summary: medians over the repeats, ratios chunked / whole, and
the load average.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from benchmark_memory import time_trainer_steps

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# The 4 x 256 GPT of the issue's measurements at GPT-2's vocabulary (the byte tokenizer's ids
# are a subset: the softmax is over all 50,257 either way).
SHAPE = ("model.vocabulary_size=50257,model.num_layers=4,model.num_heads=4,model.hidden_dim=256,"
         "model.intermediate_dim=1024,model.max_sequence_length=256,data.sequence_length=256,"
         "data.global_batch_size=4,trainer.steps_per_loop=1")


def child(args):
    """One variant in this process: one JSON line."""
    from tflm.tasks import get_task
    from tflm.training.flops import training_flops_per_token

    overrides = ",".join(filter(None, [
        SHAPE, args.params_override, f"trainer.jit_compile={args.jit_compile}",
        f"model.loss_chunk_size={args.chunk}"]))
    run = time_trainer_steps(overrides, args.steps)
    config, times, steps_peak = run["config"], run["times"], run["rss_peak_of_steps_mib"]
    tokens = config.data.global_batch_size * config.data.sequence_length
    flops = tokens * training_flops_per_token(run["model"].backbone, config.data.sequence_length,
                                              get_task(config).projected_share)
    step_s = statistics.median(times[1:])
    print(json.dumps({
        "loss_chunk_size": args.chunk, "jit_compile": args.jit_compile == "true",
        "step_s_median": round(step_s, 3), "first_step_s": round(times[0], 1),
        "gflops": round(flops / step_s / 1e9, 1),
        "rss_before_mib": round(run["rss_before_mib"]),
        "rss_peak_of_steps_mib": None if steps_peak is None else round(steps_peak),
        "loss": run["loss"],
    }), flush=True)


def matmul_child(args):
    """The float32 matmul peak: a 2048^3 matmul's GFLOP/s, median of 10 after a warm-up."""
    import tensorflow as tf

    a, b = tf.random.normal([2048, 2048]), tf.random.normal([2048, 2048])
    matmul = tf.function(tf.matmul)
    matmul(a, b).numpy()
    times = []
    for _ in range(10):
        start = time.perf_counter()
        matmul(a, b).numpy()
        times.append(time.perf_counter() - start)
    print(json.dumps({"matmul_gflops": round(2 * 2048 ** 3 / statistics.median(times) / 1e9, 1)}))


def run_child(*flags):
    command = [sys.executable, os.path.abspath(__file__), *flags]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jit_compile", choices=["true", "false", "both"], default="both")
    parser.add_argument("--chunk_sizes", default="256", help="loss_chunk_size values beside 0")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process")
    parser.add_argument("--repeats", type=int, default=3, help="processes per variant")
    parser.add_argument("--params_override", default="", help="more overrides of the shape")
    parser.add_argument("--chunk", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--matmul", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.matmul:
        return matmul_child(args)
    if args.chunk is not None:
        return child(args)
    settings = ["false", "true"] if args.jit_compile == "both" else [args.jit_compile]
    chunks = [0] + [int(c) for c in args.chunk_sizes.split(",") if c]
    load_before = os.getloadavg()
    records, peaks = {}, []
    for _ in range(args.repeats):
        peaks.append(run_child("--matmul")["matmul_gflops"])
        print(json.dumps({"matmul_gflops": peaks[-1]}), flush=True)
        for jit in settings:
            for chunk in chunks:
                record = run_child(f"--jit_compile={jit}", f"--chunk={chunk}",
                                   f"--steps={args.steps}",
                                   f"--params_override={args.params_override}")
                print(json.dumps(record), flush=True)
                records.setdefault((jit, chunk), []).append(record)
    peak = statistics.median(peaks)
    summary = {"matmul_gflops_median": peak, "load_average_before": load_before,
               "load_average_after": os.getloadavg(), "variants": []}
    for (jit, chunk), runs in records.items():
        whole = records[(jit, 0)]
        step = statistics.median(r["step_s_median"] for r in runs)
        memory = statistics.median(r["rss_peak_of_steps_mib"] or 0 for r in runs)
        whole_step = statistics.median(r["step_s_median"] for r in whole)
        whole_memory = statistics.median(r["rss_peak_of_steps_mib"] or 0 for r in whole)
        gflops = statistics.median(r["gflops"] for r in runs)
        summary["variants"].append({
            "jit_compile": jit == "true", "loss_chunk_size": chunk, "step_s": step,
            "rss_peak_of_steps_mib": memory, "gflops": gflops,
            "share_of_matmul_peak": round(gflops / peak, 3),
            "step_ratio_to_whole": round(step / whole_step, 3),
            "memory_ratio_to_whole": round(memory / max(whole_memory, 1), 3),
            "loss_equal_to_whole": abs(runs[0]["loss"] - whole[0]["loss"])
            <= 1e-4 * abs(whole[0]["loss"])})
    print("summary " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
