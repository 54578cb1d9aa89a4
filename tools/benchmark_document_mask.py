"""Step-time cost of `data.document_mask` (document-aware packing) for the causal LM task.

    python tools/benchmark_document_mask.py --config_file=configs/tiny_gpt.yaml \\
        --params_override=data.sequence_length=256,model.max_sequence_length=256 \\
        --batch_size=16 --steps=20 --rounds=5

Builds the task's model and one batch of its training pipeline with `data.document_mask=true`
(the shipped corpus: paragraphs packed into rows), then times one training step (forward,
backward, AdamW update) on that batch with and without its `document_ids` and `positions`,
with and without XLA. The two variants alternate in `--rounds` rounds of `--steps` steps
each (after a compiling warm-up), so load on the machine hits both alike. Prints one JSON
line per XLA setting: the median step time of each variant over the rounds and their ratio.
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchmark_train import machine  # noqa: E402


def benchmark(config_files, params_override, batch_size, steps, rounds, jit_compile):
    import keras
    import tensorflow as tf

    from tflm.experiment import load_experiment
    from tflm.tasks import get_task, make_dataset

    overrides = ",".join(filter(None, [params_override, "data.document_mask=true",
                                       f"data.global_batch_size={batch_size}"]))
    config = load_experiment(config_files, overrides)
    keras.utils.set_random_seed(config.runtime.seed)
    model = get_task(config).build_model()
    features, labels, weights = next(iter(make_dataset(config)))
    plain = {key: features[key] for key in ("token_ids", "padding_mask")}
    optimizer = keras.optimizers.AdamW(1e-4)

    @tf.function(jit_compile=jit_compile)
    def step(batch):
        with tf.GradientTape() as tape:
            loss_sum, weight_sum = model.loss_sums(labels, model(batch, training=True), weights)
            loss = loss_sum / weight_sum
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    variants = {"plain": plain, "document_mask": dict(features)}
    for batch in variants.values():  # compile both before timing
        step(batch).numpy()
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, batch in variants.items():
            start = time.perf_counter()
            for _ in range(steps):
                loss = step(batch)
            loss.numpy()
            times[name].append((time.perf_counter() - start) / steps)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "benchmark": "document_mask",
        "config": config_files,
        "params_override": params_override,
        "sequence_length": config.data.sequence_length,
        "batch_size": batch_size,
        "documents_per_row": float(tf.reduce_mean(
            tf.cast(tf.reduce_max(features["document_ids"], axis=1)
                    - features["document_ids"][:, 0] + 1, tf.float32))),
        "jit_compile": jit_compile,
        "step_ms_plain": 1e3 * medians["plain"],
        "step_ms_document_mask": 1e3 * medians["document_mask"],
        "ratio": medians["document_mask"] / medians["plain"],
        "rounds": rounds,
        "steps_per_round": steps,
        "machine": machine(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config_file", action="append", required=True)
    parser.add_argument("--params_override", default="")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jit_compile", choices=["both", "true", "false"], default="both")
    args = parser.parse_args()
    settings = {"both": (False, True), "true": (True,), "false": (False,)}[args.jit_compile]
    for jit_compile in settings:
        print(json.dumps(benchmark(args.config_file, args.params_override, args.batch_size,
                                   args.steps, args.rounds, jit_compile)), flush=True)


if __name__ == "__main__":
    main()
