"""tflm's encoder-decoder beside keras-hub's BART at the same shape: training and greedy
generation, in one process, alternating.

    python tools/benchmark_seq2seq.py                       # 2+2 layers, d 256, both measures
    python tools/benchmark_seq2seq.py train --repeats=7
    python tools/benchmark_seq2seq.py generate --batches=1,8
    python tools/benchmark_seq2seq.py --quick               # a tiny shape, 2 repeats: does it run?

The shape (`--layers` encoder and as many decoder blocks, `--hidden_dim`, `--num_heads`,
`--intermediate_dim`, `--vocabulary_size`, `--source_length`, `--target_length`) is
built twice from random init: tflm's `Seq2SeqLM` (post-norm, normed embeddings, learned
positions, GELU, tied embeddings: BART's layout) and keras-hub's `BartSeq2SeqLM` on a `BartBackbone`
(no preset: nothing is downloaded). Both read the same random token batches. Both sides
run in this one process, alternating, so that a loaded machine slows both alike; each
prints one JSON line with the medians and the ratio tflm / keras-hub (above 1: tflm faster).

- train: tflm's `Trainer` (what `tflm-train` runs: its compiled `train_loop`, XLA) against
  keras-hub's `BartSeq2SeqLM.fit`'s `train_function` (`jit_compile=True`,
  `steps_per_execution` = the same window), on one cached batch, AdamW with the same
  learning rate, weight decay and global-norm clipping, the same dropout. `--repeats`
  timed windows of `--window` steps each side after an untimed one. Tokens/s count every
  source and target position (`batch x (source_length + target_length)` a step).
- generate: greedy targets of `--target_length` new tokens for random sources, batch 1 and
  8, XLA on both sides. tflm: `Seq2SeqDecoder.sample_padded` (the exported decode) under
  `tf.function(jit_compile=True)`, `min_new_tokens` = all of them so that no row ends
  early. keras-hub: `BartSeq2SeqLM.generate` on preprocessed inputs (a decoder prompt of
  the start token), compiled with `sampler="greedy", jit_compile=True` and
  `stop_token_ids=None`. The first call of each compiles and is not timed; tokens/s
  counts the new tokens.
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

from benchmark_train import machine  # noqa: E402  (the same machine line in every tool)

LEARNING_RATE, WEIGHT_DECAY, CLIPNORM = 1e-3, 0.01, 1.0
START_ID = 2  # the decoder's first token on both sides (any id: the weights are random)


def tflm_config(args):
    """tiny_seq2seq.yaml at the benchmark's shape (the data path is never read: the batches
    are given)."""
    from tflm.experiment import load_experiment

    overrides = {
        "model.vocabulary_size": args.vocabulary_size, "model.num_layers": args.layers,
        "model.num_decoder_layers": args.layers, "model.num_heads": args.num_heads,
        "model.hidden_dim": args.hidden_dim, "model.intermediate_dim": args.intermediate_dim,
        "model.max_sequence_length": args.max_sequence_length, "model.norm_first": False,
        "model.embedding_norm": True,  # BART normalizes the embeddings (layernorm_embedding)
        "model.dropout": args.dropout, "model.attention_dropout": args.dropout,
        "data.sequence_length": args.source_length, "data.target_length": args.target_length,
        "data.global_batch_size": args.batch_size, "trainer.learning_rate": LEARNING_RATE,
        "trainer.warmup_steps": 0, "trainer.decay": "constant",
        "trainer.weight_decay": WEIGHT_DECAY, "trainer.clipnorm": CLIPNORM,
        "trainer.steps_per_loop": args.window, "trainer.log_every": args.window,
        "trainer.train_steps": 100_000, "trainer.checkpoint_every": 100_000,
        "trainer.jit_compile": True, "data.input_path": "unused.jsonl",
    }
    return load_experiment(os.path.join(ROOT, "configs", "tiny_seq2seq.yaml"),
                           ",".join(f"{k}={v}" for k, v in overrides.items()))


def keras_hub_model(args):
    import keras_hub

    backbone = keras_hub.models.BartBackbone(
        vocabulary_size=args.vocabulary_size, num_layers=args.layers, num_heads=args.num_heads,
        hidden_dim=args.hidden_dim, intermediate_dim=args.intermediate_dim,
        dropout=args.dropout, max_sequence_length=args.max_sequence_length)
    return keras_hub.models.BartSeq2SeqLM(backbone, preprocessor=None)


def random_batch(args, seed=0):
    """`(features, labels, weights)`: random ids (none of them padding), every position
    real, the names both models read."""
    import numpy as np

    rng = np.random.default_rng(seed)
    batch, source, target = args.batch_size, args.source_length, args.target_length

    def ids(length):
        return rng.integers(3, args.vocabulary_size, (batch, length)).astype("int32")

    features = {"encoder_token_ids": ids(source),
                "encoder_padding_mask": np.ones((batch, source), "int32"),
                "decoder_token_ids": ids(target),
                "decoder_padding_mask": np.ones((batch, target), "int32")}
    return features, ids(target), np.ones((batch, target), "float32")


def _timed(call):
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _alternate(calls, repeats):
    """Each call once untimed (compiles), then `repeats` rounds of each, the order swapped
    every round; the medians of the seconds, per side."""
    for call in calls.values():
        call()
    seconds = {side: [] for side in calls}
    for round_index in range(repeats):
        sides = list(calls) if round_index % 2 == 0 else list(calls)[::-1]
        for side in sides:
            seconds[side].append(_timed(calls[side]))
    return {side: statistics.median(s) for side, s in seconds.items()}


def measure_train(args):
    import keras
    import tensorflow as tf

    from tflm.tasks import get_task
    from tflm.training.trainer import Trainer

    config = tflm_config(args)
    batch = random_batch(args)

    def cached(context=None):
        del context
        return tf.data.Dataset.from_tensors(batch).repeat()

    keras.utils.set_random_seed(0)
    with tempfile.TemporaryDirectory() as model_dir:
        trainer = Trainer(get_task(config), model_dir, dataset_fn=cached,
                          print_fn=lambda line: None)
        hub = keras_hub_model(args)
        hub.compile(optimizer=keras.optimizers.AdamW(
            learning_rate=LEARNING_RATE, weight_decay=WEIGHT_DECAY, global_clipnorm=CLIPNORM),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            weighted_metrics=[], jit_compile=True, steps_per_execution=args.window)
        hub.fit(cached(), steps_per_epoch=args.window, epochs=1, verbose=0)  # builds it
        batches = iter(cached())
        window = tf.constant(args.window, tf.int32)
        seconds = _alternate(
            {"tflm": lambda: float(trainer.train_step.train_loop(window)[0][-1]),
             "keras_hub": lambda: float(hub.train_function(batches)["loss"])}, args.repeats)
        parameters = {"tflm": trainer.model.count_params(), "keras_hub": hub.count_params()}
    tokens = args.window * args.batch_size * (args.source_length + args.target_length)
    rate = {side: tokens / s for side, s in seconds.items()}
    return {"tflm_tokens_per_second": rate["tflm"],
            "keras_hub_tokens_per_second": rate["keras_hub"],
            "tflm_ms_per_step": 1e3 * seconds["tflm"] / args.window,
            "keras_hub_ms_per_step": 1e3 * seconds["keras_hub"] / args.window,
            "ratio": rate["tflm"] / rate["keras_hub"], "window": args.window,
            "batch_size": args.batch_size, "tflm_parameters": parameters["tflm"],
            "keras_hub_parameters": parameters["keras_hub"]}


def measure_generate(args, batch_size):
    import numpy as np
    import tensorflow as tf

    from tflm.generation.decoding import Seq2SeqDecoder, right_pad
    from tflm.tasks import build_task

    config = tflm_config(args)
    model = build_task(config.model)
    hub = keras_hub_model(args)
    hub.compile(sampler="greedy", jit_compile=True)
    features, _, _ = random_batch(argparse.Namespace(**dict(vars(args),
                                                            batch_size=batch_size)))
    sources = features["encoder_token_ids"]
    new_tokens = args.target_length

    decoder = Seq2SeqDecoder(model, start_id=START_ID, end_id=1, pad_id=0)
    ids, mask, keys = right_pad(tf.RaggedTensor.from_tensor(tf.constant(sources)), 0)

    @tf.function(jit_compile=True)
    def tflm_decode(ids, mask, keys):
        return decoder.sample_padded(ids, mask, keys, new_tokens, min_new_tokens=new_tokens)

    # keras-hub fills the decoder row after its prompt (the start token).
    decoder_ids = np.zeros((batch_size, new_tokens + 1), "int32")
    decoder_ids[:, 0] = START_ID
    decoder_mask = np.zeros((batch_size, new_tokens + 1), bool)
    decoder_mask[:, 0] = True
    hub_inputs = {"encoder_token_ids": sources,
                  "encoder_padding_mask": np.ones_like(sources, bool),
                  "decoder_token_ids": decoder_ids, "decoder_padding_mask": decoder_mask}
    produced = {}

    def tflm_call():
        _, lengths = tflm_decode(ids, mask, keys)
        produced["tflm"] = int(np.sum(lengths.numpy()))

    def hub_call():
        out = hub.generate(hub_inputs, stop_token_ids=None)
        produced["keras_hub"] = int(np.sum(out["decoder_padding_mask"][:, 1:]))

    seconds = _alternate({"tflm": tflm_call, "keras_hub": hub_call}, args.repeats)
    rate = {side: produced[side] / s for side, s in seconds.items()}
    return {"batch": batch_size, "new_tokens": new_tokens,
            "tflm_new_tokens_per_call": produced["tflm"],
            "keras_hub_new_tokens_per_call": produced["keras_hub"],
            "tflm_tokens_per_second": rate["tflm"],
            "keras_hub_tokens_per_second": rate["keras_hub"],
            "tflm_seconds_per_call": seconds["tflm"],
            "keras_hub_seconds_per_call": seconds["keras_hub"],
            "ratio": rate["tflm"] / rate["keras_hub"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="?", default="all", choices=["all", "train", "generate"])
    parser.add_argument("--layers", type=int, default=2, help="encoder blocks, and decoder")
    parser.add_argument("--hidden_dim", type=int, default=256)
    parser.add_argument("--num_heads", type=int, default=4)
    parser.add_argument("--intermediate_dim", type=int, default=1024)
    parser.add_argument("--vocabulary_size", type=int, default=8192)
    parser.add_argument("--source_length", type=int, default=64)
    parser.add_argument("--target_length", type=int, default=32,
                        help="training decoder positions; new tokens when generating")
    parser.add_argument("--max_sequence_length", type=int, default=128)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--batch_size", type=int, default=32, help="training batch")
    parser.add_argument("--batches", default="1,8", help="generation batch sizes")
    parser.add_argument("--window", type=int, default=10, help="training steps per timed call")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per side")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny shape and 2 repeats: does it run?")
    args = parser.parse_args(argv)
    if args.quick:
        args.hidden_dim, args.intermediate_dim, args.vocabulary_size = 32, 64, 300
        args.num_heads, args.source_length, args.target_length = 2, 8, 4
        args.batch_size, args.window, args.repeats = 4, 2, 2
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    shape = {k: getattr(args, k) for k in (
        "layers", "hidden_dim", "num_heads", "intermediate_dim", "vocabulary_size",
        "source_length", "target_length")}
    common = {"shape": shape, "repeats": args.repeats, "machine": machine()}
    if args.what in ("all", "train"):
        print(json.dumps({"benchmark": "seq2seq_train", **measure_train(args), **common}),
              flush=True)
    if args.what in ("all", "generate"):
        for batch_size in map(int, args.batches.split(",")):
            print(json.dumps({"benchmark": "seq2seq_generate",
                              **measure_generate(args, batch_size), **common}), flush=True)


if __name__ == "__main__":
    main()
