"""Greedy decoding beside this machine's roofline and beside keras-hub, on the same shape.

    python tools/benchmark_generation.py                  # 4 x 256 GPT, batch 1, 8 and 32
    python tools/benchmark_generation.py --batches=8 --rounds=5
    python tools/benchmark_generation.py --profile        # the decode step: ops and their kinds
    python tools/benchmark_generation.py --smoke          # tiny shape, a few seconds (CI)

The model: a GPT (pre-LN, learned positions, tied output) of `--layers` x `--hidden` with the
GPT-2 vocabulary size (50,257), random weights (speed does not depend on them). The prompts:
real text (the embedded corpus), `--prompt_length` bytes each, as byte ids; each side decodes
`--new_tokens` greedy tokens per row. The sides, each warmed up (compiled) first, then timed
in `--rounds` rounds, the sides alternating within a round; medians are reported:

- tflm in process: `tflm.generation.generate` (XLA: its default);
- tflm export: the `generate` signature of `export_saved_model`'s SavedModel, loaded back, as
  exported by default (no XLA: what TF Serving runs) and with `jit_compile=True`;
- keras-hub: `GPT2CausalLM.generate` of a `GPT2Backbone` of the same shape, greedy sampler,
  in its default mode (Keras' "auto": no XLA without an accelerator) and `jit_compile=True`.

Tokens/s counts the new tokens each side produced per second of its whole call (prefill and
the tokenizer included). The roofline: this machine's memory bandwidth (a sum over a 256 MB
float32 array) and float32 matmul peak (a 2048^3 matmul), measured in the same run; a decode
step of `batch` rows cannot take less than `max(bytes / bandwidth, FLOPs / peak)`, with the
bytes every weight (the tied table once) and the key/value cache read, the FLOPs the
matmuls' (2 per weight per row, and attention over the cache); fraction of roofline =
measured tokens/s / (batch / that time), the cache at its mean length over the decode.

Each record is one JSON line; the last one per batch holds the ratios (`ratio_*`: tflm side /
keras-hub side). The machine may be shared: the records carry `uptime`'s load.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchmark import _prompts, keras_hub_task  # noqa: E402  (the same prompts and peer)
from benchmark_train import machine  # noqa: E402

GPT2_VOCABULARY = 50257


def _load():
    return os.getloadavg()[0]


def _best_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def roofline_inputs(smoke=False):
    """`(bytes/s, FLOP/s)` of this machine now: a float32 sum over 256 MB (numpy) and a
    float32 matmul of 2048^3 (TensorFlow), best of a few."""
    import numpy as np
    import tensorflow as tf

    values = np.ones((8 if smoke else 64) * 2**20, np.float32)
    bandwidth = values.nbytes / _best_seconds(values.sum, 5)
    n = 256 if smoke else 2048
    a = tf.random.normal([n, n])
    matmul = tf.function(lambda a: tf.reduce_sum(tf.matmul(a, a)))
    matmul(a)
    peak = 2 * n**3 / _best_seconds(lambda: matmul(a).numpy(), 5)
    return bandwidth, peak


def step_cost(args, batch, cache_length):
    """`(bytes, FLOPs)` of one decode step of `batch` rows over `cache_length` positions."""
    h, f, layers, vocab = args.hidden, 4 * args.hidden, args.layers, args.vocabulary
    block = 4 * h * h + 2 * h * f  # qkv, output, feed-forward kernels
    # + the blocks' biases and norms, the table (tied), the final norm, a position's row.
    weights = layers * (block + 9 * h + f) + vocab * h + 2 * h + h
    cache = batch * layers * 2 * cache_length * h
    flops = 2 * batch * (layers * block + vocab * h) + 2 * 2 * cache  # attention: QK, PV
    return 4 * (weights + cache), flops


def _model(args):
    from tflm.experiment import load_experiment
    from tflm.tasks import build_task

    config = load_experiment([os.path.join(ROOT, "configs/tiny_gpt.yaml")], ",".join([
        f"model.num_layers={args.layers}", f"model.num_heads={args.heads}",
        f"model.hidden_dim={args.hidden}", f"model.intermediate_dim={4 * args.hidden}",
        f"model.vocabulary_size={args.vocabulary}",
        f"model.max_sequence_length={args.max_length}",
        f"data.sequence_length={args.max_length}"]))
    return config, build_task(config.model)


def _wide_byte_tokenizer(vocabulary):
    """The byte tokenizer, detokenizing every id of a `vocabulary` this wide (an id past the
    bytes reads as a byte): the exported signature runs end to end with a GPT-2-sized head."""
    import tensorflow as tf

    from tflm.data import ByteTokenizer

    class WideByteTokenizer(ByteTokenizer):
        def detokenize(self, ids):
            offset = self.byte_offset
            fold = lambda t: tf.where(t >= offset, (t - offset) % 256 + offset, t)  # noqa: E731
            if isinstance(ids, tf.RaggedTensor):
                return super().detokenize(ids.with_values(fold(tf.cast(ids.values, tf.int32))))
            return super().detokenize(fold(tf.cast(ids, tf.int32)))

    del vocabulary
    return WideByteTokenizer()


SIDES = ("tflm_in_process_xla", "tflm_export", "tflm_export_xla", "keras_hub", "keras_hub_xla")
# (tflm side, keras-hub side) of each ratio.
RATIOS = {"ratio_export_to_keras_hub": ("tflm_export", "keras_hub"),
          "ratio_export_xla_to_keras_hub_xla": ("tflm_export_xla", "keras_hub_xla"),
          "ratio_in_process_xla_to_keras_hub_xla": ("tflm_in_process_xla", "keras_hub_xla")}


def sides(args, config, model, batch):
    """`{name: call}` of the `args.sides`: each call decodes the batch once and returns the new
    tokens it made."""
    import numpy as np
    import tensorflow as tf

    from tflm.experiment import export_saved_model
    from tflm.generation import generate

    tokenizer = _wide_byte_tokenizer(args.vocabulary)
    texts = _prompts(batch, args.prompt_length)
    ids = tokenizer.tokenize(texts).to_list()
    end_id = tokenizer.end_of_text_id
    calls = {}

    def in_process():
        rows = generate(model, ids, max_new_tokens=args.new_tokens, end_id=end_id)
        return sum(len(row) for row in rows)

    wanted = args.sides.split(",")
    calls["tflm_in_process_xla"] = in_process
    request = dict(prompts=tf.constant(texts), max_new_tokens=tf.constant(args.new_tokens),
                   temperature=tf.constant(0.0), top_k=tf.constant(0), top_p=tf.constant(1.0),
                   seed=tf.constant(0, tf.int64))
    for name, jit in (("tflm_export", False), ("tflm_export_xla", True)):
        if name not in wanted:
            continue
        export_dir = tempfile.TemporaryDirectory()  # removed when its call is
        path = export_saved_model(model, tokenizer, export_dir.name, warmup=False,
                                  jit_compile=jit)
        signature = tf.saved_model.load(path).signatures["generate"]
        calls[name] = (lambda s, d: lambda: int(np.sum(s(**request)["num_tokens"])))(
            signature, export_dir)

    width = max(map(len, ids)) + args.new_tokens
    inputs = {"token_ids": np.zeros((batch, width), "int32"),
              "padding_mask": np.zeros((batch, width), bool)}
    for i, row in enumerate(ids):
        inputs["token_ids"][i, :len(row)] = row
        inputs["padding_mask"][i, :len(row)] = True
    made = sum(width - len(row) for row in ids)
    for name, jit in (("keras_hub", "auto"), ("keras_hub_xla", True)):
        if name not in wanted:
            continue
        task = keras_hub_task(config)  # one each: compiling one task twice keeps the first
        task.compile(sampler="greedy", jit_compile=jit)
        calls[name] = (lambda t: lambda: (t.generate(inputs, stop_token_ids=None), made)[1])(task)
    return {name: call for name, call in calls.items() if name in wanted}


def measure(args, config, model, batch, bandwidth, peak):
    calls = sides(args, config, model, batch)
    for call in calls.values():
        call()  # compiles
    rates = {name: [] for name in calls}
    names = list(calls)
    for round_ in range(args.rounds):
        order = names if round_ % 2 == 0 else names[::-1]
        for name in order:
            start = time.perf_counter()
            tokens = calls[name]()
            rates[name].append(tokens / (time.perf_counter() - start))
    prompt_tokens = args.prompt_length + 1
    weight_bytes, flops = step_cost(args, batch, prompt_tokens + args.new_tokens / 2)
    step_seconds = max(weight_bytes / bandwidth, flops / peak)
    roofline = batch / step_seconds
    record = {"batch": batch, "roofline_tokens_per_second": roofline,
              "roofline_bound": "memory" if weight_bytes / bandwidth >= flops / peak else
              "compute", "load": _load()}
    for name, values in rates.items():
        rate = statistics.median(values)
        record[f"{name}_tokens_per_second"] = rate
        record[f"{name}_roofline_fraction"] = rate / roofline
    for ratio, (tflm, keras_hub) in RATIOS.items():
        if tflm in rates and keras_hub in rates:
            record[ratio] = (record[f"{tflm}_tokens_per_second"]
                             / record[f"{keras_hub}_tokens_per_second"])
    return record


def profile(args, model, batch):
    """The default export's decode loop body (no XLA): its ops, and the kinds that matter."""
    import collections

    import tensorflow as tf

    from tflm.generation.decoding import CausalDecoder

    decoder = CausalDecoder(model, end_id=0)
    prompts = tf.ragged.constant([[1] * args.prompt_length] * batch, tf.int32)
    graph = tf.function(lambda: decoder.sample(prompts, args.new_tokens)).get_concrete_function()
    bodies = [f for f in graph.graph.as_graph_def().library.function
              if "while_body" in f.signature.name]
    body = max(bodies, key=lambda f: len(f.node_def))  # the decode loop, not a small inner one
    kinds = collections.Counter(node.op for node in body.node_def)
    computing = sum(n for op, n in kinds.items() if op not in ("Const", "Identity", "NoOp"))
    watched = ("Transpose", "MatMul", "BatchMatMulV2", "XlaDynamicUpdateSlice",
               "TensorScatterUpdate", "ConcatV2", "Pack", "StridedSlice", "ArgMax", "If",
               "StatelessIf", "SelectV2")
    return {"profile": True, "batch": batch, "loop_body_ops": computing,
            "loop_body_nodes": len(body.node_def),
            "kinds": {op: kinds[op] for op in watched if kinds[op]}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--vocabulary", type=int, default=GPT2_VOCABULARY)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--prompt_length", type=int, default=32, help="bytes per prompt")
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sides", default=",".join(SIDES), help=f"some of {', '.join(SIDES)}")
    parser.add_argument("--profile", action="store_true", help="the decode step's ops only")
    parser.add_argument("--smoke", action="store_true", help="tiny shape, a few seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batches, args.layers, args.heads, args.hidden = "2", 1, 2, 32
        args.vocabulary, args.max_length, args.prompt_length = 300, 32, 4
        args.new_tokens, args.rounds = 3, 1
    config, model = _model(args)
    batches = [int(b) for b in args.batches.split(",")]
    if args.profile:
        for batch in batches:
            print(json.dumps(profile(args, model, batch)), flush=True)
        return
    bandwidth, peak = roofline_inputs(args.smoke)
    print(json.dumps({"machine": machine(), "load": _load(), "bandwidth_gb_per_s": bandwidth / 1e9,
                      "matmul_gflop_per_s": peak / 1e9, "layers": args.layers,
                      "hidden": args.hidden, "vocabulary": args.vocabulary,
                      "prompt_bytes": args.prompt_length, "new_tokens": args.new_tokens,
                      "rounds": args.rounds}), flush=True)
    for batch in batches:
        print(json.dumps(measure(args, config, model, batch, bandwidth, peak)), flush=True)


if __name__ == "__main__":
    main()
