"""Tokens per second of tflm's data pipeline beside Hugging Face `tokenizers` (issue 3).

    python tools/benchmark_data.py                 # Austen's six novels; 1 core and all cores
    python tools/benchmark_data.py --profile       # also the cost of each pipeline stage
    python tools/benchmark_data.py --smoke         # embedded corpus, one repeat: seconds

A benchmark, not a test: it prints JSON lines and asserts only that both
sides produce the same tokens (count). What is timed, per pass over the file:

- `tflm_tokenize_only`: read → split into documents → repair, count, bound
  (`read_documents`) → clean + WordPiece in-graph (`tokenize_documents`),
  iterated in ragged batches of `TOKENIZE_BATCH` documents;
- `tflm_clm`: the same, then packed into `sequence_length + 1` rows joined by
  `[SEP]`, shuffled, batched with static shapes (`causal_lm_batches`, training
  settings: shuffle buffer 1000, `drop_remainder=True`);
- `tflm_mlm`: the same, then `[CLS] … [SEP]` rows with dynamic 80/10/10
  masking, 20 predictions per row (`masked_lm_batches`, training settings);
- `hf_tokenizers`: read the file, split it into the same paragraphs (Python
  `re`, the `blank_line` rule of `read_documents`), `encode_batch` with a
  `tokenizers.Tokenizer` built from the same vocab.txt: NFKC + BertNormalizer
  (same lowercase setting; our WordPiece tokenizer applies NFKC too) +
  BertPreTokenizer + WordPiece, no special tokens;
- `hf_tokenizers_lines`: the same on the file's non-blank lines.

The tflm pipelines count input problems into an `InputStats`, as the trainer
does. Tokens are WordPiece ids of the text, no special tokens, counted the
same way on both sides (the run fails if they differ by more than 0.1%).
Each configuration runs in a fresh subprocess, because thread settings are
fixed at process start: "1 core" pins the process to one CPU
(`sched_setaffinity`) and sets tf.data's private thread pool and intra-op
parallelism, and TF's intra/inter-op threads, to 1; for `tokenizers` it sets
RAYON_NUM_THREADS=1 and TOKENIZERS_PARALLELISM=false before the import
(`--hf_thread_check` shows what each does unpinned). "All cores" sets none of
these. Each measurement is one warm-up pass and `--repeats` timed passes;
medians are reported (wall clock, and process CPU time as a second view that
other load on a shared machine disturbs less).
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
ONE_CORE_ENV = {"RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
TOKEN_COUNT_TOLERANCE = 1e-3


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=None,
                        help=f"folder holding {DATA_FILE}; default $TFLM_SHARED_DATA, else "
                             "../shared/data beside the repository")
    parser.add_argument("--vocab_size", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=5, help="timed passes after one warm-up")
    parser.add_argument("--cores", choices=("1", "all", "both"), default="both")
    parser.add_argument("--sequence_length", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--document_split", default="blank_line",
                        choices=("blank_line", "line", "file"),
                        help="how read_documents splits the file (HF encodes the same paragraphs)")
    parser.add_argument("--profile", action="store_true",
                        help="also time each stage of the tflm pipeline (read, clean, tokenize, "
                             "pack, batch, mask)")
    parser.add_argument("--hf_thread_check", action="store_true",
                        help="time `tokenizers` unpinned with each thread-limiting variable")
    parser.add_argument("--smoke", action="store_true",
                        help="embedded corpus, 2k vocabulary, one repeat: checks the script runs")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: JSON spec
    args = parser.parse_args(argv)
    if args.smoke:
        args.repeats = 1
        args.vocab_size = min(args.vocab_size, 2000)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


# -- Measuring. ------------------------------------------------------------------------------


def measure(run_pass, repeats):
    """One warm-up pass, then `repeats` timed ones; `run_pass()` returns the tokens it saw."""
    tokens = run_pass()
    walls, cpus, counts = [], [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        counts.append(run_pass())
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    if len(set(counts + [tokens])) != 1:
        raise RuntimeError(f"token counts differ between passes: {[tokens] + counts}")
    seconds, cpu_seconds = statistics.median(walls), statistics.median(cpus)
    return {
        "tokens_per_second": round(tokens / seconds),
        "seconds_median": round(seconds, 4),
        "tokens": tokens,
        "tokens_per_cpu_second": round(tokens / cpu_seconds),
        "cpu_seconds_median": round(cpu_seconds, 4),
        "seconds_all": [round(s, 4) for s in walls],
    }


def pin_to_one_core():
    """Restricts this process (and threads it starts later) to one CPU; returns its id."""
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def emit(record):
    print(json.dumps(record), flush=True)


# -- Workers (one per subprocess). -----------------------------------------------------------


def tflm_worker(spec):
    one_core = spec["cores"] == 1
    if one_core:
        pin_to_one_core()
    import tensorflow as tf

    if one_core:  # before any op runs
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    from tflm.data import InputStats, load_tokenizer, read_documents
    from tflm.data.pipeline import (TOKENIZE_BATCH, causal_lm_batches, masked_lm_batches,
                                    pack_token_stream, tokenize_documents)

    tokenizer = load_tokenizer(spec["vocab_dir"])
    files = [spec["path"]]
    length, batch_size = spec["sequence_length"], spec["batch_size"]
    stats = InputStats()
    options = tf.data.Options()
    if one_core:
        options.threading.private_threadpool_size = 1
        options.threading.max_intra_op_parallelism = 1

    def documents():
        return read_documents(files, document_split=spec["document_split"], stats=stats)

    def tokens():
        return tokenize_documents(documents(), tokenizer, stats)

    def counted_by_stats(dataset):
        dataset = dataset.with_options(options)

        def run_pass():
            stats.reset()
            for _ in dataset:
                pass
            return stats.as_dict()["tokens"]
        return run_pass

    def counted_in_batches(dataset):
        dataset = dataset.with_options(options)

        def run_pass():
            count = 0
            for batch in dataset:
                count += int(batch.flat_values.shape[0])
            return count
        return run_pass

    pipelines = {
        "tflm_tokenize_only": counted_in_batches(tokens().ragged_batch(TOKENIZE_BATCH)),
        "tflm_clm": counted_by_stats(causal_lm_batches(
            tokens(), tokenizer, length, batch_size, seed=0, shuffle_buffer_size=1000,
            training=True, drop_remainder=True)),
        "tflm_mlm": counted_by_stats(masked_lm_batches(
            tokens(), tokenizer, length, batch_size, MAX_PREDICTIONS, seed=0,
            shuffle_buffer_size=1000, training=True, drop_remainder=True)),
    }
    for name, run_pass in pipelines.items():
        emit({"benchmark": "data_pipeline", "pipeline": name, "cores": spec["cores_label"],
              **measure(run_pass, spec["repeats"]), "machine": spec["machine"]})
    if not spec["profile"]:
        return

    # Each stage adds one step to the one before: the difference is that step's cost.
    def batched_documents():
        return documents().batch(TOKENIZE_BATCH)

    parallel = {"num_parallel_calls": tf.data.AUTOTUNE, "deterministic": True}
    stages = {
        "1 read, split, repair, count, bound": batched_documents(),
        "2 + clean (NFKC, accents, case)": batched_documents().map(tokenizer.normalize, **parallel),
        "3 + WordPiece": batched_documents().map(tokenizer.tokenize, **parallel),
        "4 + count, unbatch (tokenize_documents)": tokens().ragged_batch(TOKENIZE_BATCH),
        "5 + pack CLM rows, batch": pack_token_stream(tokens(), length + 1, tokenizer.sep_id)
                                    .batch(batch_size),
        "6 + shuffle, split (tflm_clm)": causal_lm_batches(
            tokens(), tokenizer, length, batch_size, seed=0, shuffle_buffer_size=1000),
        "5m + pack MLM rows, batch": pack_token_stream(tokens(), length - 2, tokenizer.sep_id)
                                     .batch(batch_size),
        "6m + shuffle, mask (tflm_mlm)": masked_lm_batches(
            tokens(), tokenizer, length, batch_size, MAX_PREDICTIONS, seed=0,
            shuffle_buffer_size=1000),
    }
    for name, dataset in stages.items():
        dataset = dataset.with_options(options)

        def run_pass(dataset=dataset):
            batches = 0
            for _ in dataset:
                batches += 1
            return batches
        result = measure(run_pass, spec["repeats"])
        result["batches"] = result.pop("tokens")
        del result["tokens_per_second"], result["tokens_per_cpu_second"]
        emit({"benchmark": "data_pipeline_profile", "stage": name, "cores": spec["cores_label"],
              **result})


def hf_worker(spec):
    if spec["cores"] == 1:
        pin_to_one_core()
        os.environ.update(ONE_CORE_ENV)  # before tokenizers is imported
    for key, value in spec.get("env", {}).items():
        os.environ[key] = value
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    model = models.WordPiece.from_file(os.path.join(spec["vocab_dir"], "vocab.txt"),
                                       unk_token="[UNK]", max_input_chars_per_word=100)
    tokenizer = Tokenizer(model)
    config = json.load(open(os.path.join(spec["vocab_dir"], "tokenizer.json")))
    lowercase = config["lowercase"]
    bert = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=config["split_cjk"],
                                      strip_accents=config["strip_accents"], lowercase=lowercase)
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), bert]) if config["nfkc"] \
        else bert
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()

    def run(split):
        def run_pass():
            with open(spec["path"], encoding="utf-8", errors="replace") as f:
                text = f.read()
            documents = [d for d in split(text) if d.strip()]
            encodings = tokenizer.encode_batch(documents, add_special_tokens=False)
            return sum(len(e.ids) for e in encodings)
        return run_pass

    pipelines = {"hf_tokenizers": run(BLANK_LINE.split), "hf_tokenizers_lines": run(str.splitlines)}
    for name in spec["pipelines"]:
        result = measure(pipelines[name], spec["repeats"])
        emit({"benchmark": spec.get("benchmark", "data_pipeline"), "pipeline": name,
              "cores": spec["cores_label"], **result, "machine": spec["machine"],
              **({"env": spec["env"]} if "env" in spec else {})})


# -- The parent: vocabulary, one subprocess per configuration, ratios. ------------------------


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


def run_worker(spec, extra_env=None, drop_env=()):
    """Runs one configuration in a fresh process; returns its JSON records (and prints them)."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for key in drop_env:
        env.pop(key, None)
    env.update(extra_env or {})
    result = subprocess.run([sys.executable, str(pathlib.Path(__file__).resolve()), "--worker",
                             json.dumps(spec)], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-5000:])
        sys.exit(f"benchmark worker {spec['kind']} (cores={spec['cores_label']}) failed with "
                 f"exit status {result.returncode}")
    records = []
    for line in result.stdout.splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
            print(line, flush=True)
    return records


def ratios(records, cores_labels):
    """tflm tokens/s ÷ the faster `tokenizers` variant's, per configuration."""
    results = {(r["pipeline"], r["cores"]): r for r in records
               if r["benchmark"] == "data_pipeline"}
    line = {"benchmark": "data_pipeline_ratios"}
    for label in cores_labels:
        key = "per_core" if label == 1 else "all_cores"
        baseline = max(HF_PIPELINES, key=lambda p: results[p, label]["tokens_per_second"])
        line[key] = {
            "baseline": baseline,
            **{p: round(results[p, label]["tokens_per_second"]
                        / results[baseline, label]["tokens_per_second"], 3)
               for p in TFLM_PIPELINES},
            "by_cpu_time": {
                p: round(results[p, label]["tokens_per_cpu_second"]
                         / results[baseline, label]["tokens_per_cpu_second"], 3)
                for p in TFLM_PIPELINES},
        }
    label = cores_labels[0]
    counts = {p: results[p, label]["tokens"] for p in TFLM_PIPELINES + HF_PIPELINES}
    ours, theirs = counts["tflm_tokenize_only"], counts["hf_tokenizers"]
    line["tokens"] = {**counts, "relative_difference": round(abs(ours - theirs) / max(theirs, 1), 6)}
    return line


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        (tflm_worker if spec["kind"] == "tflm" else hf_worker)(spec)
        return 0

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from tflm.data.vocab_training import train_vocabulary

    path = data_path(args)
    machine = machine_description()
    all_cores = len(os.sched_getaffinity(0))
    cores = {"1": [1], "all": ["all"], "both": [1, "all"]}[args.cores]
    records = []
    with tempfile.TemporaryDirectory(prefix="tflm_benchmark_data_") as vocab_dir:
        stats = {}
        train_vocabulary("wordpiece", [path], args.vocab_size, vocab_dir, stats=stats)
        emit({"benchmark": "data_pipeline_vocabulary", "file": path, "asked": args.vocab_size,
              "vocabulary_size": stats["vocabulary_size"], "seconds": stats["seconds"],
              "fingerprint": stats["fingerprint"]})
        common = {"path": path, "vocab_dir": vocab_dir, "repeats": args.repeats,
                  "machine": machine}
        for core in cores:
            one = core == 1
            label = 1 if one else all_cores
            env = ONE_CORE_ENV if one else {}
            drop = () if one else tuple(ONE_CORE_ENV)
            spec = dict(common, cores=1 if one else "all", cores_label=label)
            records += run_worker(dict(spec, kind="tflm", sequence_length=args.sequence_length,
                                       batch_size=args.batch_size,
                                       document_split=args.document_split, profile=args.profile),
                                  env, drop)
            records += run_worker(dict(spec, kind="hf", pipelines=HF_PIPELINES), env, drop)
        if args.hf_thread_check:
            # Unpinned, each variable alone: which one keeps `tokenizers` on one thread?
            variants = [{}] + [{key: value} for key, value in ONE_CORE_ENV.items()]
            for variant in variants:
                run_worker(dict(common, kind="hf", cores="all", cores_label=all_cores,
                                pipelines=["hf_tokenizers"], env=variant,
                                benchmark="hf_thread_check"),
                           variant, tuple(ONE_CORE_ENV))
    labels = [1 if core == 1 else all_cores for core in cores]
    summary = ratios(records, labels)
    summary["machine"] = machine
    emit(summary)
    if summary["tokens"]["relative_difference"] > TOKEN_COUNT_TOLERANCE:
        sys.exit(f"tflm and tokenizers disagree on the token count: {summary['tokens']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
