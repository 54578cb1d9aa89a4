"""tflm beside keras-hub on the same model shape, data and machine: training, generation, input.

    python tools/benchmark.py train                       # tiny and mid-size shapes, CLM and MLM
    python tools/benchmark.py train --shapes=gpt2_small,bert_base   # on a GPU: MFU, peak memory
    python tools/benchmark.py steps --repeats=7           # both trainers' steps in one process
    python tools/benchmark.py generate --shapes=tiny_gpt  # exported SavedModel vs keras-hub
    python tools/benchmark.py pipeline --shapes=tiny_gpt  # share of step time waiting for data
    python tools/benchmark.py quality --repeats=2         # time to a held-out loss, real paragraphs

Every measurement runs in a process of its own (a fresh TensorFlow: no compiled function or
allocator state carried over), tflm and keras-hub alternating for `--repeats` rounds. Each run
prints one JSON line; each shape then a summary line with the medians and the ratio
tflm / keras-hub. Nothing is timed while it compiles: the first window of steps (or the first
call) is a warm-up.

- train: tflm's `Trainer` (what `tflm-train` runs) against keras-hub's `GPT2CausalLM` on a
  `GPT2Backbone`, or `BertMaskedLM` on a `BertBackbone`, of the same shape, trained with
  `model.fit` on the same batches (tflm's `make_dataset` pipeline: the embedded corpus, the
  configured sequence length and global batch), the same precision, AdamW with the same
  schedule and clipping, `steps_per_execution` equal to the trainer's steps per loop, no
  training metrics on either side. Each side runs in its own default execution mode unless
  `--params_override=trainer.jit_compile=true|false` sets both: tflm XLA except for
  mixed_bfloat16 on a CPU; keras-hub Keras' `jit_compile="auto"`, which is XLA on a machine
  with an accelerator and never on one without. Each record says which (`jit_compile`).
  Tokens/s count every position of every row (`batch x sequence_length` a step). On a GPU
  with a known peak, MFU uses the same FLOPs per token for both (`tflm.training.flops`), and
  peak memory is the allocator's.
- steps: the two training steps alone, in one process on one cached batch, alternating
  (`--repeats` timed calls of `--window` steps each side; medians): steadier than `train` on a
  loaded machine. Its record carries ms per step for each side and the ratio.
- generate: greedy continuation of real prompts (the corpus's text), batch 1 and 16. tflm: the
  `generate` signature of a SavedModel written by `export_saved_model` and loaded back, as
  exported by default (portable: no XLA) and with `jit_compile=True` (XLA decode); also
  `tflm.generation.generate` in process (XLA). keras-hub: `GPT2CausalLM.generate` with the same
  weights' shape, in its default mode (Keras' "auto": no XLA on a machine without an
  accelerator) and compiled with `jit_compile=True`; tokens/s counts the tokens each side
  produced.
- pipeline: the trainer with its real input pipeline, and with the first batch cached and
  repeated; the share of step time spent on input is `1 - cached/real` of the step times.
- quality: time to a held-out loss on short documents: the paragraphs of `--text` (default
  ../shared/data/austen_6novels.txt; split at blank lines as `data.document_split=blank_line`
  splits; every `--every`th held out, `--heldout` of those, evenly spread, evaluated), the
  training paragraphs shuffled once (seeded) and written out for both sides. One byte-level BPE
  of `--vocab_size` trained on the training paragraphs (`tflm-vocab`'s learner) is both sides'
  vocabulary. Sides, each for the same `--budget` seconds of training (evaluation and the first,
  compiling step left out; that step is charged at the run's mean step time):
  keras_hub (its standard pipeline: `GPT2CausalLMPreprocessor`, one paragraph a sample,
  padded to the sequence length, mapped by `fit` over batches of paragraphs shuffled each
  epoch; `GPT2CausalLM.fit` with the optimizer of `train`), tflm_packed (tflm's pipeline,
  paragraphs packed into rows, and its trainer's compiled step), tflm_document_mask (the same
  with `data.document_mask=true`), tflm_padded (keras-hub's padded batches fed to tflm's
  trainer: the trainer's own share, apart from packing). One step a compiled call on both
  sides (`--window` does not apply), a constant learning rate after a short warmup (the number
  of steps a budget buys is not known in advance). At `--points` times through the budget,
  both sides' models are evaluated by the same code: mean cross-entropy over the held-out
  paragraphs, each one sample `<|endoftext|> paragraph <|endoftext|>` (cut at the sequence
  length) scored from its start, per token and as bits per byte of the scored text (the bytes
  of the target tokens: comparable across tokenizations); the document-masked model sees the
  paragraph as it trained, a document of its own at positions from 0 (`heldout_evaluator`).
  Records: positions/s, real (non-padding) tokens/s (padded sides: positions/s x the training
  paragraphs' mean share of real targets a row), the curve, the final loss; the summary: medians
  over `--repeats` rounds (sides in turn, the order reversed every other round) and, for each
  tflm side against keras-hub, the ratio of the times each takes to reach the worse one's final
  bits per byte (curves interpolated linearly in time).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchmark_train import machine  # noqa: E402  (the same machine line in every tool)

_MID = ("model.num_layers=6,model.num_heads=8,model.hidden_dim=512,model.intermediate_dim=2048,"
        "model.max_sequence_length=256,data.sequence_length=256,data.global_batch_size=8")
# name -> (config file, overrides): the model shape and the data.
SHAPES = {
    "tiny_gpt": ("configs/tiny_gpt.yaml", ""),
    "tiny_bert": ("configs/tiny_bert.yaml", ""),
    "mid_gpt": ("configs/tiny_gpt.yaml", _MID),
    "mid_bert": ("configs/tiny_bert.yaml", _MID + ",data.max_predictions_per_seq=40"),
    "gpt2_small": ("configs/gpt2_small.yaml", "data.global_batch_size=16"),
    "bert_base": ("configs/bert_base.yaml", "data.global_batch_size=64"),
    # quality's default: a GPT of 4 x 256 at sequence length 256, batch 16.
    "small_gpt": ("configs/tiny_gpt.yaml",
                  "model.num_layers=4,model.num_heads=4,model.hidden_dim=256,"
                  "model.intermediate_dim=1024,model.max_sequence_length=256,"
                  "data.sequence_length=256,data.global_batch_size=16"),
}
CPU_SHAPES = "tiny_gpt,tiny_bert,mid_gpt,mid_bert"
GPU_SHAPES = "gpt2_small,bert_base"


def _config(shape, precision, extra, steps, window):
    from tflm.experiment import load_experiment

    config_file, overrides = SHAPES[shape]
    schedule = (f"trainer.train_steps={steps},trainer.log_every={window},"
                f"trainer.steps_per_loop={window},trainer.checkpoint_every={steps},"
                "trainer.eval_every=0,trainer.warmup_steps=1")
    precision = f"runtime.mixed_precision={precision}" if precision else ""
    return load_experiment(os.path.join(ROOT, config_file),
                           ",".join(filter(None, [overrides, schedule, precision, extra])))


def _peak_memory():
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        return None
    return tf.config.experimental.get_memory_info("GPU:0")["peak"]


def _steady(times, tokens_per_window):
    """Tokens/s after the first (compiling) window, from the window end times."""
    spans = [b - a for a, b in zip(times, times[1:])]
    if not spans:
        return None, []
    return tokens_per_window * len(spans) / sum(spans), [tokens_per_window / s for s in spans]


# -- One measurement (a child process). -----------------------------------------------------
def train_tflm(config, dataset_fn=None):
    from tflm.training.trainer import Trainer
    from tflm.tasks import get_task

    times = []
    with tempfile.TemporaryDirectory() as model_dir:
        trainer = Trainer(get_task(config), model_dir, dataset_fn=dataset_fn,
                          print_fn=lambda line: times.append(time.perf_counter()))
        start = time.perf_counter()
        trainer.train()
    tokens = config.trainer.log_every * trainer.tokens_per_step
    steady, windows = _steady(times, tokens)
    return {"tokens_per_second": steady, "windows": windows, "seconds": times[-1] - start,
            "parameters": trainer.model.count_params(), "peak_memory_bytes": _peak_memory(),
            "jit_compile": trainer.jit_compile}


def keras_hub_task(config, preprocessor=None):
    """keras-hub's GPT2CausalLM / BertMaskedLM with the shape and precision of `config`
    (without a preprocessor unless given: the batches come preprocessed)."""
    import keras_hub

    model = config.model
    kwargs = dict(vocabulary_size=model.vocabulary_size, num_layers=model.num_layers,
                  num_heads=model.num_heads, hidden_dim=model.hidden_dim,
                  intermediate_dim=model.intermediate_dim, dropout=model.dropout,
                  max_sequence_length=model.max_sequence_length,
                  dtype=config.runtime.mixed_precision)
    if model.task == "causal_lm":
        return keras_hub.models.GPT2CausalLM(keras_hub.models.GPT2Backbone(**kwargs),
                                             preprocessor=preprocessor)
    return keras_hub.models.BertMaskedLM(
        keras_hub.models.BertBackbone(num_segments=model.num_segments, **kwargs),
        preprocessor=None)


def compiled_keras_hub_task(config, preprocessor=None):
    """`keras_hub_task(config, preprocessor)` compiled as the trainer trains: AdamW with the
    same schedule and clipping, `steps_per_execution` = steps per loop, the configured or
    Keras' own XLA."""
    import keras

    from tflm.training.optimizer import make_schedule

    keras.utils.set_random_seed(config.runtime.seed)
    trainer = config.trainer
    task = keras_hub_task(config, preprocessor)
    task.compile(
        optimizer=keras.optimizers.AdamW(
            learning_rate=make_schedule(trainer), weight_decay=trainer.weight_decay,
            beta_1=trainer.beta_1, beta_2=trainer.beta_2, epsilon=trainer.epsilon,
            global_clipnorm=trainer.clipnorm),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[],
        jit_compile="auto" if trainer.jit_compile is None else trainer.jit_compile,
        steps_per_execution=trainer.steps_per_loop)
    return task


def train_keras_hub(config):
    import keras

    from tflm.tasks import make_dataset

    trainer = config.trainer
    task = compiled_keras_hub_task(config)
    times = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])  # wait for the window to finish, as the trainer's log line does
            times.append(time.perf_counter())

    data = make_dataset(config)
    start = time.perf_counter()
    task.fit(data, steps_per_epoch=trainer.train_steps, epochs=1, verbose=0, callbacks=[Timer()])
    tokens = trainer.steps_per_loop * config.data.global_batch_size * config.data.sequence_length
    steady, windows = _steady(times, tokens)
    return {"tokens_per_second": steady, "windows": windows, "seconds": times[-1] - start,
            "parameters": task.count_params(), "peak_memory_bytes": _peak_memory(),
            "jit_compile": bool(task.jit_compile)}


def steps_in_process(config, rounds):
    """Both sides in this one process on one cached batch, alternating: `rounds` timed calls
    of `steps_per_loop` steps each (the trainer's `train_loop`, keras-hub's
    `train_function`), after one untimed call each. Steadier than separate processes on a
    loaded machine; no input pipeline on either side."""
    import tensorflow as tf

    from tflm.tasks import get_task, make_dataset
    from tflm.training.trainer import Trainer

    steps = config.trainer.steps_per_loop

    def cached(context=None):
        return make_dataset(config, input_context=context).take(1).cache().repeat()

    with tempfile.TemporaryDirectory() as model_dir:
        trainer = Trainer(get_task(config), model_dir, dataset_fn=cached, print_fn=lambda line: None)
        task = compiled_keras_hub_task(config)
        task.fit(cached(), steps_per_epoch=steps, epochs=1, verbose=0)  # builds train_function
        batches = iter(cached())
        calls = {"tflm": lambda: float(trainer.train_step.train_loop(tf.constant(steps, tf.int32))[0][-1]),
                 "keras_hub": lambda: float(task.train_function(batches)["loss"])}
        times = {side: [] for side in calls}
        for side in calls:
            calls[side]()
        for _ in range(rounds):
            for side, call in calls.items():
                start = time.perf_counter()
                call()
                times[side].append((time.perf_counter() - start) / steps)
    step = {side: statistics.median(t) for side, t in times.items()}
    return {"tflm_ms_per_step": 1e3 * step["tflm"],
            "keras_hub_ms_per_step": 1e3 * step["keras_hub"],
            "ratio": step["keras_hub"] / step["tflm"], "rounds": rounds,
            "tflm_jit_compile": trainer.jit_compile,
            "keras_hub_jit_compile": bool(task.jit_compile)}


def _prompts(batch, length):
    """`batch` prompts of real text, `length` bytes each, from the embedded corpus."""
    from tflm.data import default_corpus_path

    with open(default_corpus_path(), "rb") as f:
        text = f.read()[20000:]
    return [text[i * 997:i * 997 + length].decode("utf-8", "ignore") for i in range(batch)]


def generate_tflm(config, batch, prompt_length, new_tokens, calls):
    import numpy as np
    import tensorflow as tf

    from tflm.data import ByteTokenizer
    from tflm.experiment import export_saved_model
    from tflm.generation import generate as tflm_generate
    from tflm.tasks import build_task

    model = build_task(config.model)
    tokenizer = ByteTokenizer()
    prompts = _prompts(batch, prompt_length)
    result = {}
    args = dict(prompts=tf.constant(prompts), max_new_tokens=tf.constant(new_tokens),
                temperature=tf.constant(0.0), top_k=tf.constant(0), top_p=tf.constant(1.0),
                seed=tf.constant(0, tf.int64))
    for key, jit in (("", False), ("xla_export_", True)):
        with tempfile.TemporaryDirectory() as export_dir:
            path = export_saved_model(model, tokenizer, export_dir, warmup=False, jit_compile=jit)
            generate = tf.saved_model.load(path).signatures["generate"]
            generate(**args)
            seconds, tokens = [], 0
            for _ in range(calls):
                start = time.perf_counter()
                output = generate(**args)
                tokens += int(np.sum(output["num_tokens"].numpy()))
                seconds.append(time.perf_counter() - start)
        result[key + "tokens_per_second"] = tokens / sum(seconds)
        result[key + "seconds_per_call"] = statistics.median(seconds)
    ids = tokenizer.tokenize(prompts).to_list()
    tflm_generate(model, ids, max_new_tokens=new_tokens, end_id=tokenizer.end_of_text_id)
    start = time.perf_counter()
    for _ in range(calls):
        out = tflm_generate(model, ids, max_new_tokens=new_tokens, end_id=tokenizer.end_of_text_id)
    result["in_process_xla_tokens_per_second"] = (
        sum(len(row) for row in out) * calls / (time.perf_counter() - start))
    return result


def generate_keras_hub(config, batch, prompt_length, new_tokens, calls):
    import numpy as np

    from tflm.data import ByteTokenizer

    task = keras_hub_task(config)
    prompts = ByteTokenizer().tokenize(_prompts(batch, prompt_length)).to_list()
    width = max(map(len, prompts)) + new_tokens
    token_ids = np.zeros((batch, width), "int32")
    padding_mask = np.zeros((batch, width), bool)
    for i, row in enumerate(prompts):
        token_ids[i, :len(row)] = row
        padding_mask[i, :len(row)] = True
    inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
    tokens = sum(width - len(row) for row in prompts) * calls

    def tokens_per_second():
        task.generate(inputs, stop_token_ids=None)  # compiles
        seconds = []
        for _ in range(calls):
            start = time.perf_counter()
            task.generate(inputs, stop_token_ids=None)
            seconds.append(time.perf_counter() - start)
        return tokens / sum(seconds), statistics.median(seconds)

    # Its default (Keras' "auto": XLA only on a machine with an accelerator), then with XLA.
    task.compile(sampler="greedy")
    default_jit = bool(task.jit_compile)
    rate, per_call = tokens_per_second()
    task.compile(sampler="greedy", jit_compile=True)
    xla_rate, _ = tokens_per_second()
    return {"tokens_per_second": rate, "seconds_per_call": per_call, "jit_compile": default_jit,
            "xla_tokens_per_second": xla_rate}


def pipeline_wait(config):
    from tflm.tasks import make_dataset

    real = train_tflm(config)
    cached = train_tflm(config, dataset_fn=lambda context: make_dataset(
        config, input_context=context).take(1).cache().repeat())
    return {"tokens_per_second": real["tokens_per_second"],
            "cached_tokens_per_second": cached["tokens_per_second"],
            "input_wait_fraction": max(0.0, 1.0 - real["tokens_per_second"]
                                       / cached["tokens_per_second"])}


# -- Time to quality (`quality`). ------------------------------------------------------------
QUALITY_SIDES = ("keras_hub", "tflm_packed", "tflm_document_mask", "tflm_padded")
DEFAULT_TEXT = os.path.join(os.path.dirname(ROOT), "shared", "data", "austen_6novels.txt")
# --smoke: a few seconds a side (in one process), to prove the measurement runs.
SMOKE_SHAPE = ("model.num_layers=1,model.num_heads=2,model.hidden_dim=32,model.intermediate_dim=64,"
               "model.max_sequence_length=32,data.sequence_length=32,data.global_batch_size=4")
SMOKE_PARAGRAPHS = 400


def prepare_quality(text, workdir, every, heldout, vocab_size, sequence_length, seed,
                    max_paragraphs=0):
    """Splits the paragraphs of `text` (as `data.document_split=blank_line` does) into
    training and held-out ones, trains one byte-level BPE on the training ones and writes
    what every side reads into `workdir`: train.txt (the training paragraphs, shuffled once,
    for tflm's pipeline), train.json (the same list, for keras-hub's), vocab/ and
    heldout.json (the held-out samples' ids, each token's bytes, and the mean share of real
    targets in a padded row). Returns a description for the summary."""
    import random

    from tflm.data.sources import read_documents
    from tflm.data.vocab_training import train_byte_bpe

    paragraphs = [document.decode("utf-8") for document in read_documents(
        [text], document_split="blank_line").as_numpy_iterator()]
    if max_paragraphs:
        paragraphs = paragraphs[:max_paragraphs]
    held_out = paragraphs[every - 1::every]
    train = [p for i, p in enumerate(paragraphs) if (i + 1) % every]
    random.Random(seed).shuffle(train)
    count = min(heldout, len(held_out))
    held_out = [held_out[i * len(held_out) // count] for i in range(count)]  # evenly spread
    with open(os.path.join(workdir, "train.txt"), "w", encoding="utf-8") as f:
        f.write("\n\n".join(train) + "\n")
    with open(os.path.join(workdir, "train.json"), "w", encoding="utf-8") as f:
        json.dump(train, f)
    tokenizer = train_byte_bpe(os.path.join(workdir, "train.txt"), vocab_size,
                               os.path.join(workdir, "vocab"))
    end = tokenizer.end_of_text_id
    special = set(tokenizer.special_ids)
    byte_lengths = [0 if i in special else len(tokenizer.token_bytes(i))
                    for i in range(tokenizer.vocabulary_size)]
    # A sample as keras-hub's preprocessor makes it: <|endoftext|> ids <|endoftext|>, cut.
    rows = [([end] + ids + [end])[:sequence_length + 1]
            for ids in tokenizer.tokenize(held_out).to_list()]
    lengths = [len(ids) for ids in tokenizer.tokenize(train).to_list()]
    real_share = sum(min(n + 1, sequence_length) for n in lengths) / (sequence_length * len(lengths))
    with open(os.path.join(workdir, "heldout.json"), "w") as f:
        json.dump({"rows": rows, "byte_lengths": byte_lengths, "real_share": real_share}, f)
    return {"paragraphs": len(paragraphs), "train_paragraphs": len(train),
            "heldout_paragraphs": count, "every": every,
            "heldout_target_tokens": sum(len(row) - 1 for row in rows),
            "heldout_bytes": sum(byte_lengths[i] for row in rows for i in row[1:]),
            "median_paragraph_tokens": sorted(lengths)[len(lengths) // 2],
            "padded_real_share": real_share, "vocabulary_size": tokenizer.vocabulary_size}


def heldout_evaluator(workdir, document_mask=False, batch_size=32, bucket=32):
    """`evaluate(model)` -> mean loss per held-out target token and bits per byte.

    The same targets and bytes for every side: `model({"token_ids", "padding_mask"})` gives
    logits (tflm's `CausalLM`, keras-hub's `GPT2CausalLM`); samples grouped by length, padded
    to a multiple of `bucket` (few shapes, little padding). With `document_mask`, a model
    trained so is scored as it trained: the paragraph its own document at positions from 0
    (its first token predicted from the lone <|endoftext|> before it, a document of its own),
    not at positions from 1 after an <|endoftext|> it never attended to."""
    import numpy as np
    import tensorflow as tf

    with open(os.path.join(workdir, "heldout.json")) as f:
        heldout = json.load(f)
    byte_lengths = np.array(heldout["byte_lengths"], np.float64)
    rows = sorted(heldout["rows"], key=len)
    batches = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        width = -(-max(len(row) - 1 for row in chunk) // bucket) * bucket
        ids = np.zeros((len(chunk), width + 1), np.int32)
        weights = np.zeros((len(chunk), width), np.float32)
        for i, row in enumerate(chunk):
            ids[i, :len(row)] = row
            weights[i, :len(row) - 1] = 1.0
        batches.append((ids[:, :-1], ids[:, 1:], weights))
    targets = sum(float(w.sum()) for _, _, w in batches)
    text_bytes = sum(float((byte_lengths[y] * w).sum()) for _, y, w in batches)

    def evaluate(model):
        nats = 0.0
        for x, y, w in batches:
            inputs = {"token_ids": x, "padding_mask": (w > 0).astype(np.int32)}
            if document_mask:
                width = x.shape[1]
                inputs["document_ids"] = np.tile(np.minimum(np.arange(width), 1) + 1,
                                                 [len(x), 1]).astype(np.int32)
                inputs["positions"] = np.tile(np.maximum(np.arange(width) - 1, 0),
                                              [len(x), 1]).astype(np.int32)
            logits = model(inputs, training=False)
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(
                y, tf.cast(logits, tf.float32))
            nats += float(tf.reduce_sum(loss * w))
        return {"loss": nats / targets, "bits_per_byte": nats / np.log(2.0) / text_bytes}

    return evaluate


class QualityClock:
    """Training seconds (evaluations and the first, compiling step left out) against a
    budget; evaluates at step 0 and after the first step past each `budget / points`."""

    def __init__(self, budget, points, evaluate):
        self.budget, self.every, self.evaluate = budget, budget / points, evaluate
        self.steps, self.seconds, self.first_step_seconds = 0, 0.0, None
        self.curve = [dict(steps=0, seconds=0.0, **evaluate())]
        self.last = time.perf_counter()

    def step_done(self):
        """After each step, its loss fetched: True once the budget is spent."""
        now = time.perf_counter()
        self.steps += 1
        if self.steps == 1:
            self.first_step_seconds = now - self.last
        else:
            self.seconds += now - self.last
        done = self.seconds >= self.budget
        if done or self.seconds >= len(self.curve) * self.every:
            self.curve.append(dict(steps=self.steps, seconds=self.seconds, **self.evaluate()))
        self.last = time.perf_counter()
        return done

    def result(self, positions_per_step, real_share):
        # The first step is charged at the mean pace of the others.
        step = self.seconds / max(self.steps - 1, 1)
        for point in self.curve[1:]:
            point["seconds"] += step
        positions = positions_per_step / step
        return {"steps": self.steps, "train_seconds": self.seconds + step,
                "first_step_seconds": self.first_step_seconds,
                "positions_per_second": positions, "real_share": real_share,
                "real_tokens_per_second": positions * real_share, "curve": self.curve,
                "final_loss": self.curve[-1]["loss"],
                "final_bits_per_byte": self.curve[-1]["bits_per_byte"]}


def _padded_paragraph_batches(workdir, config):
    """keras-hub's standard input: batches of raw paragraphs, shuffled each epoch, and its
    `GPT2CausalLMPreprocessor` (one paragraph a sample, padded) on the shared vocabulary."""
    import keras_hub
    import tensorflow as tf

    with open(os.path.join(workdir, "train.json"), encoding="utf-8") as f:
        train = json.load(f)
    vocab = os.path.join(workdir, "vocab")
    tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=os.path.join(vocab, "vocab.json"),
                                               merges=os.path.join(vocab, "merges.txt"))
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(
        tokenizer, sequence_length=config.data.sequence_length)
    paragraphs = (tf.data.Dataset.from_tensor_slices(train)
                  .shuffle(len(train), seed=config.runtime.seed, reshuffle_each_iteration=True)
                  .repeat().batch(config.data.global_batch_size, drop_remainder=True))
    return paragraphs, preprocessor


def quality_side(config, side, workdir, budget, points):
    """One side of `quality` for `budget` seconds of training: its record."""
    import keras
    import tensorflow as tf

    from tflm.tasks import get_task
    from tflm.training.trainer import Trainer

    evaluate = heldout_evaluator(workdir, document_mask=config.data.document_mask)
    with open(os.path.join(workdir, "heldout.json")) as f:
        padded_share = json.load(f)["real_share"]
    positions_per_step = config.data.global_batch_size * config.data.sequence_length
    if side == "keras_hub":
        paragraphs, preprocessor = _padded_paragraph_batches(workdir, config)
        task = compiled_keras_hub_task(config, preprocessor)
        clock = QualityClock(budget, points, lambda: evaluate(task))

        class Stop(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                float(logs["loss"])  # the step has finished
                if clock.step_done():
                    self.model.stop_training = True

        task.fit(paragraphs, steps_per_epoch=config.trainer.train_steps, epochs=1, verbose=0,
                 shuffle=False, callbacks=[Stop()])  # shuffled each epoch already
        return dict(clock.result(positions_per_step, padded_share),
                    jit_compile=bool(task.jit_compile), parameters=task.count_params())
    if side == "tflm_padded":
        paragraphs, preprocessor = _padded_paragraph_batches(workdir, config)

        def as_tflm(x, y, weights):  # the trainer's dtypes for the same batches
            return ({"token_ids": x["token_ids"],
                     "padding_mask": tf.cast(x["padding_mask"], tf.int32)},
                    y, tf.cast(weights, tf.float32))

        def dataset_fn(context):
            return paragraphs.map(preprocessor, num_parallel_calls=tf.data.AUTOTUNE).map(
                as_tflm).prefetch(tf.data.AUTOTUNE)

        share = padded_share
    else:
        dataset_fn, share = None, 1.0  # packed: every position is a real target
    one = tf.constant(1, tf.int32)
    with tempfile.TemporaryDirectory() as model_dir:
        trainer = Trainer(get_task(config), model_dir, dataset_fn=dataset_fn,
                          print_fn=lambda line: None)
        clock = QualityClock(budget, points, lambda: evaluate(trainer.model))
        while True:
            trainer.train_step.train_loop(one)[0].numpy()
            if clock.step_done():
                break
    return dict(clock.result(positions_per_step, share), jit_compile=trainer.jit_compile,
                parameters=trainer.model.count_params())


def time_to(curve, target):
    """Seconds at which `curve` first reaches `target` bits per byte (linear in between)."""
    for before, point in zip(curve, curve[1:]):
        if point["bits_per_byte"] <= target:
            drop = before["bits_per_byte"] - point["bits_per_byte"]
            share = (before["bits_per_byte"] - target) / drop if drop > 0 else 1.0
            return before["seconds"] + share * (point["seconds"] - before["seconds"])
    return None


def quality_overrides(workdir, vocabulary_size, smoke):
    overrides = [
        f"data.input_path={os.path.join(workdir, 'train.txt')}", "data.document_split=blank_line",
        "data.eval_every_nth_document=0", "data.tokenizer=byte_bpe",
        f"data.vocab_path={os.path.join(workdir, 'vocab')}",
        f"model.vocabulary_size={vocabulary_size}",
        # The steps a budget buys are not known in advance: constant after a short warmup.
        "trainer.decay=constant", "trainer.warmup_steps=5", "trainer.train_steps=1000000"]
    if smoke:  # no XLA: seconds, not a compile a side
        overrides.append("trainer.jit_compile=false")
    return ",".join(overrides)


def quality(args):
    """The parent of `quality`: prepares the data, runs the sides in turn, summarizes."""
    sides = args.sides.split(",")
    unknown = set(sides) - set(QUALITY_SIDES)
    if unknown or "keras_hub" not in sides:
        raise SystemExit(f"--sides: {sorted(unknown) or 'keras_hub is needed'}; known "
                         f"{QUALITY_SIDES}")
    shape = args.shapes or "small_gpt"
    user = ",".join(filter(None, [SMOKE_SHAPE if args.smoke else "", args.params_override]))
    with tempfile.TemporaryDirectory() as workdir:
        sequence_length = _config(shape, args.precision, user, 1, 1).data.sequence_length
        data = prepare_quality(args.text, workdir, args.every, args.heldout, args.vocab_size,
                               sequence_length, seed=0,
                               max_paragraphs=SMOKE_PARAGRAPHS if args.smoke else 0)
        print(json.dumps({"benchmark": "quality", "data": True, "text": os.path.basename(args.text),
                          **data}), flush=True)
        child = argparse.Namespace(**vars(args))
        child.params_override = ",".join(filter(None, [
            quality_overrides(workdir, data["vocabulary_size"], args.smoke), user]))
        extra = [f"--workdir={workdir}", f"--budget={args.budget}", f"--points={args.points}"]
        runs = {side: [] for side in sides}
        for round_index in range(args.repeats):
            for side in sides if round_index % 2 == 0 else sides[::-1]:
                if args.smoke:  # in this process: one TensorFlow start, not one a side
                    child.side, child.shape, child.workdir = side, shape, workdir
                    record = quality_record(child)
                    print(json.dumps(record), flush=True)
                else:
                    record = _child(child, "quality", side, shape, extra)
                runs[side].append(record)
    return summarize_quality(runs, shape, args)


def summarize_quality(runs, shape, args):
    median = statistics.median
    summary = {"benchmark": "quality", "summary": True, "shape": shape, "runs": args.repeats,
               "budget_seconds": args.budget, "machine": runs["keras_hub"][0]["machine"]}
    for side, records in runs.items():
        for key in ("positions_per_second", "real_tokens_per_second", "final_bits_per_byte",
                    "final_loss", "steps"):
            summary[f"{side}_{key}"] = median(r[key] for r in records)
        summary[f"{side}_jit_compile"] = records[0]["jit_compile"]
    for side in runs:
        if side == "keras_hub":
            continue
        ratios = []
        for mine, theirs in zip(runs[side], runs["keras_hub"]):
            target = max(mine["final_bits_per_byte"], theirs["final_bits_per_byte"])
            ratios.append(time_to(theirs["curve"], target) / time_to(mine["curve"], target))
        summary[f"{side}_time_to_quality_ratio"] = median(ratios)
        summary[f"{side}_real_tokens_ratio"] = (summary[f"{side}_real_tokens_per_second"]
                                                / summary["keras_hub_real_tokens_per_second"])
    print(json.dumps(summary), flush=True)
    return summary


def quality_record(args):
    """One side's record of `quality` (in a child process, or in the parent for --smoke)."""
    mask = "data.document_mask=true" if args.side == "tflm_document_mask" else ""
    config = _config(args.shape, args.precision, ",".join(filter(None, [args.params_override,
                                                                        mask])), 1, 1)
    record = {"benchmark": "quality", "side": args.side, "shape": args.shape,
              "precision": config.runtime.mixed_precision,
              "sequence_length": config.data.sequence_length,
              "global_batch_size": config.data.global_batch_size, "budget_seconds": args.budget,
              "machine": machine()}
    record.update(quality_side(config, args.side, args.workdir, args.budget, args.points))
    return record


def run_one(args):
    """The child process: one side of one measurement; prints its JSON line."""
    import tensorflow as tf

    from tflm.training.flops import peak_flops_per_device, training_flops_per_token
    from tflm.models.factory import build_backbone
    from tflm.tasks import get_task

    tf.get_logger().setLevel("ERROR")
    if args.measure == "quality":
        print(json.dumps(quality_record(args)), flush=True)
        return
    config = _config(args.shape, args.precision, args.params_override, args.steps, args.window)
    record = {"benchmark": args.measure, "side": args.side, "shape": args.shape,
              "precision": config.runtime.mixed_precision,
              "sequence_length": config.data.sequence_length,
              "global_batch_size": config.data.global_batch_size, "machine": machine()}
    if args.measure == "train":
        record.update(train_tflm(config) if args.side == "tflm" else train_keras_hub(config))
        flops = training_flops_per_token(build_backbone(config.model), config.data.sequence_length,
                                         get_task(config).projected_share)
        record["flops_per_token"] = flops
        record["tflops"] = record["tokens_per_second"] * flops / 1e12
        peak = peak_flops_per_device(config.runtime.peak_tflops)
        if peak:
            record["mfu"] = record["tokens_per_second"] * flops / peak
    elif args.measure == "steps":
        record.update(summary=True, **steps_in_process(config, args.repeats))
    elif args.measure == "generate":
        run = generate_tflm if args.side == "tflm" else generate_keras_hub
        record.update(batch=args.batch, prompt_length=args.prompt_length,
                      new_tokens=args.new_tokens,
                      **run(config, args.batch, args.prompt_length, args.new_tokens, args.calls))
    else:
        record.update(pipeline_wait(config))
    print(json.dumps(record), flush=True)


# -- The parent: alternate sides, summarize. -------------------------------------------------
def _child(args, what, side, shape, extra=()):
    command = [sys.executable, os.path.abspath(__file__), "_run", f"--measure={what}",
               f"--side={side}", f"--shape={shape}", f"--steps={args.steps}",
               f"--window={args.window}", f"--params_override={args.params_override}",
               f"--precision={args.precision}", *extra]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                            timeout=args.timeout)
    if result.returncode:
        raise RuntimeError(f"{what} {side} {shape} failed:\n{result.stderr[-3000:]}")
    record = json.loads(result.stdout.strip().splitlines()[-1])
    print(json.dumps(record), flush=True)
    return record


def compare(args, what, shape, extra=(), key="tokens_per_second"):
    sides = ("tflm", "keras_hub")
    runs = {side: [] for side in sides}
    for round_index in range(args.repeats):
        for side in sides if round_index % 2 == 0 else sides[::-1]:
            runs[side].append(_child(args, what, side, shape, extra))
    medians = {side: statistics.median(r[key] for r in runs[side]) for side in sides}
    summary = {"benchmark": what, "summary": True, "shape": shape, "runs": args.repeats,
               "tflm_" + key: medians["tflm"], "keras_hub_" + key: medians["keras_hub"],
               "ratio": medians["tflm"] / medians["keras_hub"],
               "machine": runs["tflm"][0]["machine"]}
    if what == "generate":  # tflm's XLA export against keras-hub's default, and its XLA
        xla_export = statistics.median(r["xla_export_tokens_per_second"] for r in runs["tflm"])
        summary["xla_export_ratio"] = xla_export / medians["keras_hub"]
        summary["xla_export_ratio_to_keras_hub_xla"] = xla_export / statistics.median(
            r["xla_tokens_per_second"] for r in runs["keras_hub"])
    for extra_key in ("mfu", "peak_memory_bytes", "in_process_xla_tokens_per_second",
                      "xla_export_tokens_per_second", "xla_tokens_per_second"):
        for side in sides:
            values = [r[extra_key] for r in runs[side] if r.get(extra_key) is not None]
            if values:
                summary[f"{side}_{extra_key}"] = statistics.median(values)
    for side in sides:
        if "jit_compile" in runs[side][0]:
            summary[f"{side}_jit_compile"] = runs[side][0]["jit_compile"]
    for r in runs["tflm"]:
        summary.setdefault("precision", r["precision"])
    print(json.dumps(summary), flush=True)
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["train", "steps", "generate", "pipeline", "quality",
                                         "_run"])
    parser.add_argument("--shapes", default=None, help=f"comma-separated, of {sorted(SHAPES)}; "
                        f"default {CPU_SHAPES} on a CPU, {GPU_SHAPES} on a GPU")
    parser.add_argument("--steps", type=int, default=60, help="training steps per run")
    parser.add_argument("--window", type=int, default=10, help="steps per timed window "
                        "(= steps per compiled call on both sides)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; sides alternate")
    parser.add_argument("--precision", default="", help="runtime.mixed_precision; default "
                        "the shape's config")
    parser.add_argument("--params_override", default="", help="more config overrides")
    parser.add_argument("--batches", default="1,16", help="generate: batch sizes")
    parser.add_argument("--prompt_length", type=int, default=16)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--calls", type=int, default=5, help="generate: timed calls per run")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per run")
    parser.add_argument("--text", default=DEFAULT_TEXT, help="quality: the paragraphs' text")
    parser.add_argument("--every", type=int, default=20, help="quality: every n-th paragraph "
                        "is held out")
    parser.add_argument("--heldout", type=int, default=128, help="quality: held-out "
                        "paragraphs evaluated (evenly spread over the held-out ones)")
    parser.add_argument("--vocab_size", type=int, default=4096, help="quality: the byte-level "
                        "BPE both sides share, trained on the training paragraphs")
    parser.add_argument("--budget", type=float, default=120, help="quality: training seconds "
                        "a side")
    parser.add_argument("--points", type=int, default=6, help="quality: evaluations in the "
                        "budget (and one at the start)")
    parser.add_argument("--sides", default=",".join(QUALITY_SIDES), help="quality: of "
                        f"{QUALITY_SIDES}, keras_hub among them")
    parser.add_argument("--smoke", action="store_true", help="quality: a tiny model, "
                        f"{SMOKE_PARAGRAPHS} paragraphs, a few seconds a side, all in one process")
    # The child's own arguments.
    parser.add_argument("--measure", choices=["train", "steps", "generate", "pipeline",
                                              "quality"])
    parser.add_argument("--side", choices=["tflm", "both", *QUALITY_SIDES])
    parser.add_argument("--workdir", help="quality: the prepared data")
    parser.add_argument("--shape")
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args(argv)
    if args.what == "_run":
        return run_one(args)
    if args.what == "quality":
        if args.smoke:
            args.budget, args.points, args.heldout, args.vocab_size = 1.0, 2, 8, 300
            args.repeats = 1
        quality(args)
        return 0
    if args.shapes is None:
        import tensorflow as tf

        args.shapes = GPU_SHAPES if tf.config.list_physical_devices("GPU") else CPU_SHAPES
        if not args.precision and not tf.config.list_physical_devices("GPU"):
            args.precision = "float32"  # the CPU default; --precision=mixed_bfloat16 for bf16
    for shape in args.shapes.split(","):
        if shape not in SHAPES:
            parser.error(f"unknown shape {shape!r}; known: {sorted(SHAPES)}")
        if args.what == "train":
            compare(args, "train", shape)
        elif args.what == "steps":  # one process, both sides: its record is the summary
            _child(args, "steps", "both", shape, [f"--repeats={args.repeats}"])
        elif args.what == "generate":
            for batch in args.batches.split(","):
                compare(args, "generate", shape,
                        [f"--batch={batch}", f"--prompt_length={args.prompt_length}",
                         f"--new_tokens={args.new_tokens}", f"--calls={args.calls}"])
        else:
            runs = [_child(args, "pipeline", "tflm", shape) for _ in range(args.repeats)]
            print(json.dumps({
                "benchmark": "pipeline", "summary": True, "shape": shape, "runs": args.repeats,
                "input_wait_fraction": statistics.median(r["input_wait_fraction"] for r in runs),
                "tokens_per_second": statistics.median(r["tokens_per_second"] for r in runs),
                "machine": runs[0]["machine"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
