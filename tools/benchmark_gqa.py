"""Grouped-query attention against multi-head attention: generation speed and KV-cache size.

    python tools/benchmark_gqa.py                                  # the default shape, CPU or GPU
    python tools/benchmark_gqa.py --kv_heads=1 --batch_sizes=1,8   # multi-query instead
    python tools/benchmark_gqa.py --num_layers=4 --hidden_dim=256 --new_tokens=64  # a quick one

Two causal LMs of one Llama-style shape (rotary, RMS norm, SwiGLU, no biases, untied), with
random weights: one whose `num_heads` query heads share `--kv_heads` key/value heads (GQA), one
with as many key/value heads as query heads (MHA). For each batch size both continue the same
random prompts greedily (`tflm.generation.generate`, the XLA-compiled decoding loop, cached),
`--new_tokens` each (the end id is one the model cannot produce, so every row runs to the end),
alternating GQA and MHA for `--repeats` rounds after one untimed call (compilation). Each
measurement prints one JSON line; each batch size then a summary line with the medians, the
ratio GQA / MHA of tokens/s, and the bytes of the KV cache the decoding loop holds
(`backbone.init_cache(batch, prompt + new tokens)`: layers x 2 x positions x key/value heads x
head size x the compute dtype's bytes).
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tflm.generation import generate  # noqa: E402
from tflm.models import CausalLM, TransformerBackbone  # noqa: E402


def build_model(args, kv_heads):
    keras.utils.set_random_seed(0)
    backbone = TransformerBackbone(
        vocabulary_size=args.vocabulary_size, num_layers=args.num_layers,
        num_heads=args.num_heads, num_key_value_heads=kv_heads, hidden_dim=args.hidden_dim,
        intermediate_dim=args.intermediate_dim,
        max_sequence_length=args.prompt_length + args.new_tokens, causal=True,
        position_encoding="rotary", normalization="rms_norm", activation="swiglu",
        norm_first=True, use_bias=False, tie_embeddings=False, dropout=0.0,
        attention_dropout=0.0, dtype=args.dtype)
    return CausalLM(backbone)


def cache_bytes(model, batch, length):
    cache = model.backbone.init_cache(batch, length)
    return int(np.prod(cache.shape)) * tf.as_dtype(cache.dtype).size


def timed_generate(model, prompts, args):
    start = time.perf_counter()
    rows = generate(model, prompts, max_new_tokens=args.new_tokens,
                    end_id=args.vocabulary_size, jit_compile=True)
    seconds = time.perf_counter() - start
    tokens = sum(len(row) for row in rows)
    return tokens / seconds, tokens


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_layers", type=int, default=6)
    parser.add_argument("--num_heads", type=int, default=8)
    parser.add_argument("--kv_heads", type=int, default=2)
    parser.add_argument("--hidden_dim", type=int, default=512)
    parser.add_argument("--intermediate_dim", type=int, default=1376)
    parser.add_argument("--vocabulary_size", type=int, default=1024)
    parser.add_argument("--prompt_length", type=int, default=64)
    parser.add_argument("--new_tokens", type=int, default=192)
    parser.add_argument("--batch_sizes", default="1,8")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", help="a Keras dtype policy")
    args = parser.parse_args()

    models = {"gqa": build_model(args, args.kv_heads), "mha": build_model(args, args.num_heads)}
    rng = np.random.default_rng(0)
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        prompts = rng.integers(0, args.vocabulary_size, (batch, args.prompt_length)).tolist()
        for model in models.values():
            timed_generate(model, prompts, args)  # compiles
        rates = {name: [] for name in models}
        for round_ in range(args.repeats):
            for name, model in models.items():
                rate, tokens = timed_generate(model, prompts, args)
                rates[name].append(rate)
                print(json.dumps({"attention": name, "batch": batch, "round": round_,
                                  "new_tokens": tokens, "tokens_per_second": round(rate, 1)}))
        length = args.prompt_length + args.new_tokens
        summary = {"batch": batch, "kv_heads": args.kv_heads, "num_heads": args.num_heads,
                   "cached_positions": length}
        for name, model in models.items():
            summary[f"{name}_tokens_per_second"] = round(statistics.median(rates[name]), 1)
            summary[f"{name}_cache_bytes"] = cache_bytes(model, batch, length)
            summary[f"{name}_parameters"] = model.count_params()
        summary["speed_ratio_gqa_over_mha"] = round(
            summary["gqa_tokens_per_second"] / summary["mha_tokens_per_second"], 3)
        summary["cache_ratio_gqa_over_mha"] = round(
            summary["gqa_cache_bytes"] / summary["mha_cache_bytes"], 3)
        print("summary", json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
