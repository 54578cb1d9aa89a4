"""float32, float16 and int8 exports of one trained causal LM: size, held-out perplexity, speed.

    python tools/benchmark_quantize.py --work_dir=runs/quantize            # trains, exports, measures
    python tools/benchmark_quantize.py --work_dir=runs/quantize --jit     # the same, XLA decoding

1. Trains a small byte-level GPT (configs/tiny_gpt.yaml with `--params_override`, default 4
   layers x 256, 3.2M parameters) for `--train_steps` on ../shared/data/austen_6novels.txt,
   one paragraph in 20 held out (skipped when `work_dir/run` holds a finished run).
2. Exports it with `--quantize=none`, `float16` and `int8` (`export_model_dir`, no warm-up;
   `--jit`: `jit_compile=True`).
3. For each export: the bytes of its variables/ folder; the held-out perplexity from its
   `score` signature over the first `--eval_paragraphs` held-out paragraphs (each up to the
   model's positions), `exp(-sum log-likelihood / sum bytes)`; greedy `generate` tokens/s at
   batch 1 and 8 (`--new_tokens` from 64-byte prompts of held-out text): the three exports
   are called in turn for `--rounds` rounds after a warm-up call, and each rate is the
   median of its rounds (steadier on a shared machine).

Prints one JSON line per export and the ratios to float32.
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

MODES = ("none", "float16", "int8")
DEFAULT_OVERRIDES = ("model.num_layers=4,model.num_heads=4,model.hidden_dim=256,"
                     "model.intermediate_dim=1024,data.global_batch_size=32,"
                     "trainer.learning_rate=2e-3,trainer.warmup_steps=50")


def train(run_dir, data_path, steps, overrides):
    from tflm.experiment import load_experiment, run_experiment
    from tflm.run_dir import RunDir

    if RunDir(run_dir).latest_checkpoint():
        return
    config = load_experiment(os.path.join(ROOT, "configs/tiny_gpt.yaml"), ",".join([
        f"data.input_path={data_path}", f"trainer.train_steps={steps}",
        f"trainer.checkpoint_every={steps}", "trainer.log_every=100", "trainer.eval_every=0",
        overrides]))
    run_experiment(config, run_dir)


def held_out_texts(run_dir, count):
    """The first `count` held-out paragraphs of the run's data, as text."""
    from tflm.data.pipeline import token_documents
    from tflm.experiment import load_trained

    _, tokenizer, config = load_trained(run_dir)
    texts = []
    for batch in token_documents(config, tokenizer, training=False, split="eval"):
        for ids in batch.to_list():
            texts.append(tokenizer.detokenize([ids]).numpy()[0].decode("utf-8", "replace"))
        if len(texts) >= count:
            return texts[:count]
    return texts


def variables_bytes(path):
    folder = os.path.join(path, "variables")
    return sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder))


def perplexity(score, texts, batch=32):
    import numpy as np
    import tensorflow as tf

    log_likelihood, tokens = 0.0, 0
    for i in range(0, len(texts), batch):
        out = score(text=tf.constant(texts[i:i + batch]))
        log_likelihood += float(np.sum(out["log_likelihood"].numpy()))
        tokens += int(np.sum(out["num_tokens"].numpy()))
    return float(np.exp(-log_likelihood / tokens))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work_dir", required=True)
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data",
                                                        "austen_6novels.txt"))
    parser.add_argument("--train_steps", type=int, default=400)
    parser.add_argument("--params_override", default=DEFAULT_OVERRIDES)
    parser.add_argument("--jit", action="store_true", help="export with jit_compile=True")
    parser.add_argument("--eval_paragraphs", type=int, default=256)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf

    from tflm.experiment import export_model_dir

    run_dir = os.path.join(args.work_dir, "run")
    start = time.time()
    train(run_dir, args.data, args.train_steps, args.params_override)
    print(f"trained in {time.time() - start:.0f} s", flush=True)
    texts = held_out_texts(run_dir, args.eval_paragraphs)
    prompts = [text[:64] for text in texts if len(text) >= 64]

    exports = {}
    for mode in MODES:
        folder = os.path.join(args.work_dir, f"export_{mode}{'_xla' if args.jit else ''}")
        path = os.path.join(folder, "1")
        if not os.path.exists(path):
            path = export_model_dir(run_dir, folder, version=1, quantize=mode,
                                    jit_compile=args.jit)
        exports[mode] = tf.saved_model.load(path).signatures, path

    rates = {(mode, batch): [] for mode in MODES for batch in (1, 8)}
    for batch in (1, 8):
        call = dict(prompts=tf.constant(prompts[:batch]),
                    max_new_tokens=tf.constant(args.new_tokens), temperature=tf.constant(0.0),
                    top_k=tf.constant(0), top_p=tf.constant(1.0), seed=tf.constant(0, tf.int64))
        for mode in MODES:
            exports[mode][0]["generate"](**call)  # warm-up: tracing, XLA compilation
        for _ in range(args.rounds):
            for mode in MODES:
                begin = time.perf_counter()
                out = exports[mode][0]["generate"](**call)
                tokens = int(np.sum(out["num_tokens"].numpy()))
                rates[mode, batch].append(tokens / (time.perf_counter() - begin))

    records = {}
    for mode in MODES:
        signatures, path = exports[mode]
        records[mode] = {
            "quantize": mode, "jit_compile": args.jit, "variables_bytes": variables_bytes(path),
            "held_out_perplexity": perplexity(signatures["score"], texts),
            "held_out_paragraphs": len(texts),
            "tokens_per_second_batch1": statistics.median(rates[mode, 1]),
            "tokens_per_second_batch8": statistics.median(rates[mode, 8]),
            "machine": machine()}
        print(json.dumps(records[mode]), flush=True)
    base = records["none"]
    for mode in MODES[1:]:
        record = records[mode]
        print(f"{mode}: size x{record['variables_bytes'] / base['variables_bytes']:.3f}, "
              f"perplexity {base['held_out_perplexity']:.4f} -> "
              f"{record['held_out_perplexity']:.4f}, tokens/s x"
              f"{record['tokens_per_second_batch1'] / base['tokens_per_second_batch1']:.2f} "
              f"(batch 1), x"
              f"{record['tokens_per_second_batch8'] / base['tokens_per_second_batch8']:.2f} "
              "(batch 8)")


if __name__ == "__main__":
    main()
