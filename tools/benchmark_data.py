"""Tokens per second of tflm's data pipeline beside Hugging Face `tokenizers` (issue 3).

    python tools/benchmark_data.py                 # Austen's six novels; 1 core and all cores
    python tools/benchmark_data.py --profile       # also the cost of each pipeline stage
    python tools/benchmark_data.py --smoke         # embedded corpus, one repeat: checks it runs

A benchmark, not a test: it prints JSON lines and checks only that both sides
produce the same number of tokens. Timed, per pass over the file:

- `tflm_tokenize_only`: read → split into documents → repair, count, bound
  (`read_documents`) → clean (NFKC, accents, case) + WordPiece in-graph, in
  batches of `TOKENIZE_BATCH` documents (`tokenize_documents`);
- `tflm_clm`: the same, then packed into `sequence_length + 1` rows joined by
  `[SEP]`, shuffled, batched with static shapes (`causal_lm_batches` with the
  training settings: shuffle buffer 1000, `drop_remainder=True`);
- `tflm_mlm`: the same, then `[CLS] … [SEP]` rows with dynamic 80/10/10
  masking, 20 predictions per row (`masked_lm_batches`, training settings);
- `hf_tokenizers`: read the file, split it into the same paragraphs (Python
  `re`, the `blank_line` rule of `read_documents`), `encode_batch` with a
  `tokenizers.Tokenizer` built from the same vocab.txt: NFKC + BertNormalizer
  (same lowercase setting; our WordPiece tokenizer applies NFKC too) +
  BertPreTokenizer + WordPiece, no special tokens;
- `hf_tokenizers_lines`: the same on the file's non-blank lines.

The tflm side is composed as `make_dataset` composes a training pipeline
(without held-out documents), counting input problems into an `InputStats`
as the trainer does, but reading the file once instead of forever. Tokens
are WordPiece ids of the text, no special tokens, counted the same way on
both sides; the run fails if the counts differ by more than 0.1%.

Thread settings are fixed at process start, so each configuration runs in a
fresh subprocess. "1 core": the process is pinned to one CPU
(`sched_setaffinity`); tf.data's private thread pool and intra-op
parallelism and TF's intra/inter-op threads are 1; RAYON_NUM_THREADS=1 and
TOKENIZERS_PARALLELISM=false are set before `tokenizers` is imported
(`--hf_thread_check` times what each of them does alone, unpinned). "All
cores": none of these. Within a configuration, after one warm-up pass of
each pipeline, the pipelines take turns pass by pass (`--repeats` rounds),
so tflm and `tokenizers` see the same background load; medians are
reported, with every pass's time, and process CPU time as a second view.
"""

import argparse
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing

DATA_FILE = "austen_6novels.txt"
TFLM_PIPELINES = ("tflm_tokenize_only", "tflm_clm", "tflm_mlm")
HF_PIPELINES = ("hf_tokenizers", "hf_tokenizers_lines")
# read_documents' document_split="blank_line" rule (tflm/data/sources.py), for the Python side.
BLANK_LINE = re.compile(r"\r?\n[ \t\r]*\n(?:[ \t\r]*\n)*")
MAX_PREDICTIONS = 20  # BERT's setting for 128-token rows
SHUFFLE_BUFFER = 1000  # the data config's default
ONE_CORE_ENV = {"RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
TOKEN_COUNT_TOLERANCE = 1e-3


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=None,
                        help=f"folder holding {DATA_FILE}; default $TFLM_SHARED_DATA, else "
                             "../shared/data beside the repository")
    parser.add_argument("--vocab_size", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=5, help="timed passes after one warm-up")
    parser.add_argument("--cores", choices=("1", "all", "both"), default="both",
                        help="one core, every core this process may use, or both (two runs)")
    parser.add_argument("--sequence_length", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--profile", action="store_true",
                        help="also time the tflm pipeline stage by stage")
    parser.add_argument("--hf_thread_check", action="store_true",
                        help="time `tokenizers` unpinned with each thread-limiting variable alone")
    parser.add_argument("--smoke", action="store_true",
                        help="embedded corpus, 2k vocabulary, one repeat: checks that it runs")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: JSON spec
    args = parser.parse_args(argv)
    if args.smoke:
        args.repeats = 1
        args.vocab_size = min(args.vocab_size, 2000)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


# -- Measuring. ------------------------------------------------------------------------------


def measure_in_turns(passes, repeats):
    """`passes`: name → function running one pass, returning `(count, leftovers)`.

    One warm-up pass each, then `repeats` rounds in which every pass runs
    once, in turn. The clock stops when a pass has produced its last result;
    `leftovers` (a spent tf.data iterator, HF's encodings) are freed after
    that, untimed: a training job keeps one iterator for its whole run, and
    tearing one down waits up to ~1 s for tf.data's autotuning thread.
    Returns name → wall and CPU seconds (medians and all) and the count.
    """
    counts = {name: run()[0] for name, run in passes.items()}
    walls = {name: [] for name in passes}
    cpus = {name: [] for name in passes}
    for _ in range(repeats):
        for name, run in passes.items():
            wall, cpu = time.perf_counter(), time.process_time()
            count, leftovers = run()
            walls[name].append(time.perf_counter() - wall)
            cpus[name].append(time.process_time() - cpu)
            del leftovers
            if count != counts[name]:
                raise RuntimeError(f"{name}: {count} tokens in one pass, {counts[name]} in another")
    results = {}
    for name in passes:
        seconds, cpu_seconds = statistics.median(walls[name]), statistics.median(cpus[name])
        results[name] = {
            "tokens_per_second": round(counts[name] / seconds),
            "seconds_median": round(seconds, 4),
            "tokens": counts[name],
            "tokens_per_cpu_second": round(counts[name] / cpu_seconds),
            "cpu_seconds_median": round(cpu_seconds, 4),
            "seconds_all": [round(s, 4) for s in walls[name]],
        }
    return results


def emit(record):
    print(json.dumps(record), flush=True)


# -- The two sides. --------------------------------------------------------------------------


def tflm_passes(spec, tf, stats, options):
    """The tflm pipelines (and, with `profile`, its stages), as pass functions."""
    from tflm.data import load_tokenizer, read_documents
    from tflm.data.pipeline import (TOKENIZE_BATCH, causal_lm_batches, masked_lm_batches,
                                    pack_token_stream, tokenize_documents)

    tokenizer = load_tokenizer(spec["vocab_dir"])
    length, batch_size = spec["sequence_length"], spec["batch_size"]

    def documents():
        return read_documents([spec["path"]], document_split="blank_line", stats=stats)

    def tokens(batched=True):
        return tokenize_documents(documents(), tokenizer, stats, batched=batched)

    def clm(token_dataset):
        return causal_lm_batches(token_dataset, tokenizer, length, batch_size, seed=0,
                                 shuffle_buffer_size=SHUFFLE_BUFFER, training=True,
                                 drop_remainder=True)

    def mlm(token_dataset):
        return masked_lm_batches(token_dataset, tokenizer, length, batch_size, MAX_PREDICTIONS,
                                 seed=0, shuffle_buffer_size=SHUFFLE_BUFFER, training=True,
                                 drop_remainder=True)

    def counting_tokens(dataset):
        """A pass over `dataset`, in batches; returns the tokens `stats` counted."""
        dataset = dataset.with_options(options)

        def run():
            stats.reset()
            iterator = iter(dataset)
            for _ in iterator:
                pass
            return stats.as_dict()["tokens"], iterator
        return run

    passes = {
        "tflm_tokenize_only": counting_tokens(tokens()),
        "tflm_clm": counting_tokens(clm(tokens())),
        "tflm_mlm": counting_tokens(mlm(tokens())),
    }
    if not spec["profile"]:
        return passes, {}

    # Each stage adds a step to the one before: the difference in time is that step's cost.
    def batched_documents():
        return documents().batch(TOKENIZE_BATCH)

    def counting_batches(dataset):
        dataset = dataset.with_options(options)

        def run():
            iterator = iter(dataset)
            return sum(1 for _ in iterator), iterator
        return run

    parallel = {"num_parallel_calls": tf.data.AUTOTUNE, "deterministic": True}
    stages = {
        "1 read, split, repair, count, bound (read_documents)": batched_documents(),
        "2 + clean: NFKC, accents, case (tokenizer.normalize)":
            batched_documents().map(tokenizer.normalize, **parallel),
        "3 + WordPiece (tokenizer.tokenize)":
            batched_documents().map(tokenizer.tokenize, **parallel),
        "4 + count tokens (tokenize_documents) = tflm_tokenize_only": tokens(),
        "4d per-document tokens, rebatched (as with held-out eval documents)":
            tokens(batched=False).ragged_batch(TOKENIZE_BATCH),
        "5 + pack causal-LM rows, batch": pack_token_stream(tokens(), length + 1,
                                                           tokenizer.sep_id).batch(batch_size),
        "6 + shuffle, split features/labels = tflm_clm": clm(tokens()),
        "6d tflm_clm from per-document tokens": clm(tokens(batched=False)),
        "5m + pack masked-LM rows, batch": pack_token_stream(tokens(), length - 2,
                                                             tokenizer.sep_id).batch(batch_size),
        "6m + shuffle, [CLS]/[SEP], mask = tflm_mlm": mlm(tokens()),
    }
    return passes, {name: counting_batches(dataset) for name, dataset in stages.items()}


def hf_passes(vocab_dir, path):
    """`tokenizers` encoding the same text, in paragraphs and in lines, as pass functions."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    with open(os.path.join(vocab_dir, "tokenizer.json")) as f:
        config = json.load(f)  # the options our WordPiece tokenizer was saved with
    tokenizer = Tokenizer(models.WordPiece.from_file(
        os.path.join(vocab_dir, "vocab.txt"), unk_token=config["unknown_token"],
        max_input_chars_per_word=config["max_chars_per_word"]))
    bert = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=config["split_cjk"],
                                      strip_accents=config["strip_accents"],
                                      lowercase=config["lowercase"])
    tokenizer.normalizer = (normalizers.Sequence([normalizers.NFKC(), bert]) if config["nfkc"]
                            else bert)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # Special tokens written in the text are matched as ours match them.
    tokenizer.add_special_tokens(config["special_tokens"] + [config["unknown_token"]])

    def encoding(split):
        def run():
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
            documents = [d for d in split(text) if d.strip()]
            encodings = tokenizer.encode_batch(documents, add_special_tokens=False)
            return sum(len(e) for e in encodings), encodings  # len: ids, no copy
        return run

    return {"hf_tokenizers": encoding(BLANK_LINE.split),
            "hf_tokenizers_lines": encoding(str.splitlines)}


# -- Workers: one configuration per subprocess. ----------------------------------------------


def pin_to_one_core():
    """Restricts this process, and every thread it starts later, to one CPU."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def configuration_worker(spec):
    one_core = spec["cores"] == 1
    if one_core:
        pin_to_one_core()  # before TF or tokenizers start any thread
    import tensorflow as tf

    if one_core:  # before any op runs
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    from tflm.data import InputStats

    options = tf.data.Options()
    if one_core:
        options.threading.private_threadpool_size = 1
        options.threading.max_intra_op_parallelism = 1
    stats = InputStats()
    passes, stages = tflm_passes(spec, tf, stats, options)
    passes.update(hf_passes(spec["vocab_dir"], spec["path"]))
    for name, result in measure_in_turns(passes, spec["repeats"]).items():
        emit({"benchmark": "data_pipeline", "pipeline": name, "cores": spec["cores_label"],
              **result, "machine": spec["machine"]})
    if stages:
        for name, result in measure_in_turns(stages, spec["repeats"]).items():
            result["batches"] = result.pop("tokens")
            for key in ("tokens_per_second", "tokens_per_cpu_second"):
                del result[key]
            emit({"benchmark": "data_pipeline_profile", "stage": name,
                  "cores": spec["cores_label"], **result})


def hf_thread_check_worker(spec):
    """`tokenizers` alone, unpinned, with the environment the parent gave this process."""
    passes = hf_passes(spec["vocab_dir"], spec["path"])
    result = measure_in_turns({"hf_tokenizers": passes["hf_tokenizers"]}, spec["repeats"])
    result = result["hf_tokenizers"]
    emit({"benchmark": "hf_thread_check", "pipeline": "hf_tokenizers", "env": spec["env"],
          "cpu_per_wall_second": round(result["cpu_seconds_median"] / result["seconds_median"], 2),
          **result})


# -- The parent: vocabulary, subprocesses, ratios. -------------------------------------------


def data_path(args):
    if args.smoke:
        from tflm.data import default_corpus_path

        return default_corpus_path()
    folder = args.data_dir or os.environ.get("TFLM_SHARED_DATA") or ROOT.parent / "shared" / "data"
    path = pathlib.Path(folder) / DATA_FILE
    if not path.is_file():
        sys.exit(f"{path} does not exist: pass --data_dir (or set TFLM_SHARED_DATA) to the folder "
                 f"holding {DATA_FILE}, or use --smoke.")
    return str(path)


def machine_description():
    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    import tensorflow as tf
    import tensorflow_text
    import tokenizers

    return (f"{model}, {len(os.sched_getaffinity(0))} cores, {kib / 2**20:.0f} GiB RAM, "
            f"Python {platform.python_version()}, TF {tf.__version__}, "
            f"tensorflow-text {tensorflow_text.__version__}, tokenizers {tokenizers.__version__}")


def run_worker(spec, env_update):
    """Runs `spec` in a fresh process with the environment changed; returns its JSON records."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for key in ONE_CORE_ENV:
        env.pop(key, None)
    env.update(env_update)
    result = subprocess.run([sys.executable, str(pathlib.Path(__file__).resolve()), "--worker",
                             json.dumps(spec)], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-5000:])
        sys.exit(f"benchmark worker {spec['kind']} (cores={spec.get('cores')}) failed with "
                 f"exit status {result.returncode}")
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    for record in records:
        emit(record)
    return records


def ratios(records, labels):
    """tflm tokens/s over the faster `tokenizers` variant's, per configuration, and the counts."""
    results = {(r["pipeline"], r["cores"]): r for r in records
               if r["benchmark"] == "data_pipeline"}
    line = {"benchmark": "data_pipeline_ratios"}
    for label in labels:
        baseline = max(HF_PIPELINES, key=lambda p: results[p, label]["tokens_per_second"])

        def ratio(pipeline, key):
            return round(results[pipeline, label][key] / results[baseline, label][key], 3)

        line["per_core" if label == 1 else "all_cores"] = {
            "cores": label,
            "versus": baseline,
            **{p: ratio(p, "tokens_per_second") for p in TFLM_PIPELINES},
            "by_cpu_time": {p: ratio(p, "tokens_per_cpu_second") for p in TFLM_PIPELINES},
        }
    counts = {p: results[p, labels[0]]["tokens"] for p in TFLM_PIPELINES + HF_PIPELINES}
    ours, theirs = counts["tflm_tokenize_only"], counts["hf_tokenizers"]
    line["tokens"] = {**counts,
                      "relative_difference": round(abs(ours - theirs) / max(theirs, 1), 6)}
    return line


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        {"configuration": configuration_worker, "hf_thread_check": hf_thread_check_worker}[
            spec["kind"]](spec)
        return 0

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from tflm.data.vocab_training import train_vocabulary

    path = data_path(args)
    machine = machine_description()
    all_cores = len(os.sched_getaffinity(0))
    cores = {"1": [1], "all": ["all"], "both": [1, "all"]}[args.cores]
    labels = [1 if c == 1 else all_cores for c in cores]
    records = []
    with tempfile.TemporaryDirectory(prefix="tflm_benchmark_data_") as vocab_dir:
        stats = {}
        train_vocabulary("wordpiece", [path], args.vocab_size, vocab_dir, stats=stats)
        emit({"benchmark": "data_pipeline_vocabulary", "file": path, "asked": args.vocab_size,
              "vocabulary_size": stats["vocabulary_size"], "seconds": stats["seconds"],
              "fingerprint": stats["fingerprint"]})
        common = {"path": path, "vocab_dir": vocab_dir, "repeats": args.repeats}
        for core, label in zip(cores, labels):
            spec = dict(common, kind="configuration", cores=core, cores_label=label,
                        machine=machine, sequence_length=args.sequence_length,
                        batch_size=args.batch_size, profile=args.profile)
            records += run_worker(spec, ONE_CORE_ENV if core == 1 else {})
        if args.hf_thread_check:
            for env in [{}] + [{key: value} for key, value in ONE_CORE_ENV.items()]:
                run_worker(dict(common, kind="hf_thread_check", env=env), env)
    summary = ratios(records, labels)
    summary["machine"] = machine
    emit(summary)
    if summary["tokens"]["relative_difference"] > TOKEN_COUNT_TOLERANCE:
        sys.exit(f"tflm and tokenizers disagree on the number of tokens: {summary['tokens']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
