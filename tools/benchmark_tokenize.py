"""Tokens per second, per core, of tflm's GPT-2 byte-level BPE beside tiktoken and `tokenizers`.

    python tools/benchmark_tokenize.py                  # Austen's six novels, 50,257 tokens
    python tools/benchmark_tokenize.py --file zh_tang_song_poems.txt
    python tools/benchmark_tokenize.py --smoke          # 40 KB embedded text, tiny vocabulary

A benchmark, not a test: it prints JSON lines, and fails if any side's ids differ
from tiktoken's (from `tokenizers`' where tiktoken is not installed).

The vocabulary is GPT-2 sized: `tokenizers`' byte-level BPE trainer (as `tflm-vocab`
runs it, but `min_frequency=1`) on Austen, Shakespeare and the Tang/Song poems of the
shared data folder, 50,257 tokens with `<|endoftext|>`. Every side gets it:

- `tiktoken`: `tiktoken.Encoding` built from the same vocabulary and merges (its ranks
  are the token ids; GPT-2's split pattern), `encode_ordinary` per document. tiktoken is
  not a tflm dependency: without it (`pip install tiktoken`) its column is skipped;
- `hf_tokenizers`: a `tokenizers.Tokenizer` of the same BPE with GPT-2's ByteLevel
  pre-tokenizer, `encode_batch_fast`, one thread;
- `tflm_prepare`: `prepare_corpus` (what `tflm-prepare` runs) on the file: read, split
  into paragraphs, repair, tokenize in-graph in batches of `PREPARE_BATCH` documents,
  write TFRecord shards; the ids read back from the shards are checked;
- `tflm_tf_data`: `read_documents` + `tokenize_documents(batched=True)` (the training
  pipeline's tokenization, `TOKENIZE_BATCH` documents a call), and `tflm_tf_data_64` with 64;
- `tflm_1024_lines`: `BytePairTokenizer.tokenize` on 1024 documents a call (eager calls
  of its graph), and `tflm_1024_lines_no_cache` without the word cache
  (`word_cache_size=0`).

Documents are the file's paragraphs as `read_documents(document_split="blank_line")`
yields them; every side tokenizes those same strings. One core: the process is pinned to
one CPU (`sched_setaffinity`) before anything starts a thread, TensorFlow's intra/inter-op
threads are 1, RAYON_NUM_THREADS=1. After a warm-up pass each, the sides take turns pass by
pass (`--repeats` rounds); medians are reported with every pass, and ratios to tiktoken, of
wall time and of process CPU time (the better view on a loaded machine: pinned, the
process's CPU time is its own work).
"""

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing

VOCAB_FILES = ("austen_6novels.txt", "shakespeare.txt", "zh_tang_song_poems.txt")
GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data"),
                        help="the shared data folder (default: ../shared/data)")
    parser.add_argument("--file", default="austen_6novels.txt", help="the text tokenized")
    parser.add_argument("--vocab_size", type=int, default=50257)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after a warm-up")
    parser.add_argument("--smoke", action="store_true",
                        help="40 KB of the embedded corpus, 600-token vocabulary, one round: "
                             "checks it runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.repeats, args.vocab_size = 1, 600
    return args


def train_vocabulary(files, vocab_size, directory, min_frequency):
    from tokenizers import ByteLevelBPETokenizer

    learner = ByteLevelBPETokenizer(add_prefix_space=False)
    lines = (line + "\n" for path in files
             for line in pathlib.Path(path).read_text(encoding="utf-8").split("\n"))
    learner.train_from_iterator(lines, vocab_size=vocab_size, min_frequency=min_frequency,
                                special_tokens=["<|endoftext|>"], show_progress=False)
    return learner.save_model(directory)


def tiktoken_encoder(vocab, raw):
    try:
        import tiktoken
    except ImportError:
        print("benchmark_tokenize: tiktoken is not installed (pip install tiktoken); its "
              "column is skipped and ids are checked against tokenizers'.", file=sys.stderr)
        return None
    special = {t: i for t, i in vocab.items() if t == "<|endoftext|>"}
    ranks = {raw[i]: i for t, i in vocab.items() if t not in special}
    return tiktoken.Encoding("tflm_benchmark", pat_str=GPT2_SPLIT, mergeable_ranks=ranks,
                             special_tokens=special)


def main(argv=None):
    args = parse_args(argv)
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # before any thread starts
    os.environ.update(RAYON_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from tokenizers import Tokenizer, models, pre_tokenizers

    from tflm.data import BytePairTokenizer, default_corpus_path, read_documents
    from tflm.data.prepared import prepare_corpus, read_prepared
    from tflm.data.tokenize import TOKENIZE_BATCH, tokenize_documents

    data = pathlib.Path(args.data_dir)
    scratch = tempfile.mkdtemp()
    if args.smoke:  # the embedded corpus's first 40 KB
        path = os.path.join(scratch, "smoke.txt")
        with open(default_corpus_path(), encoding="utf-8") as f, open(path, "w") as out:
            out.write(f.read(40_000))
        vocab_sources = [path]
    else:
        path, vocab_sources = str(data / args.file), [str(data / f) for f in VOCAB_FILES]
    vocab_path, merges_path = train_vocabulary(vocab_sources, args.vocab_size, scratch,
                                               min_frequency=2 if args.smoke else 1)
    tokenizers = {"tflm": BytePairTokenizer(vocab_path, merges_path),
                  "no_cache": BytePairTokenizer(vocab_path, merges_path, word_cache_size=0)}
    tflm = tokenizers["tflm"]
    vocab = {t: i for i, t in enumerate(tflm.get_vocabulary())}
    raw = [tflm.token_bytes(i) for i in range(tflm.vocabulary_size)]
    hf = Tokenizer(models.BPE.from_file(vocab_path, merges_path))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tik = tiktoken_encoder(vocab, raw)

    options = {"document_split": "blank_line"}
    documents = [d.decode("utf-8") for d in read_documents([path], **options).as_numpy_iterator()]

    # Each side: check=False runs a timed pass (ids left as the side makes them);
    # check=True also returns them as lists, for comparing (untimed).
    def in_graph(tokenizer, batch):
        def run(check=False):
            out = [tokenizer.tokenize(documents[i:i + batch])
                   for i in range(0, len(documents), batch)]
            return [ids for ragged in out for ids in ragged.to_list()] if check else out
        return run

    def tf_data(batch):
        def run(check=False):  # batches of documents, as the training pipeline takes them
            tokens = tokenize_documents(read_documents([path], **options), tflm, batched=True,
                                        batch_size=batch)
            return [ids for ragged in tokens for ids in (ragged.to_list() if check else [ragged])]
        return run

    def prepare(check=False):
        out = os.path.join(scratch, "prepared")
        prepare_corpus([path], out, tflm, num_shards=1, print_fn=lambda s: None, **options)
        if check:  # the ids as written in the shard
            shard = os.path.join(out, "shard-00000-of-00001.tfrecord")
            return [ids.tolist() for ids in read_prepared([shard]).as_numpy_iterator()]
        return None

    sides = {}
    if tik is not None:
        sides["tiktoken"] = lambda check=False: [tik.encode_ordinary(d) for d in documents]
    sides["hf_tokenizers"] = lambda check=False: (
        [e.ids for e in hf.encode_batch_fast(documents)] if check
        else hf.encode_batch_fast(documents))
    sides.update(tflm_prepare=prepare, tflm_tf_data=tf_data(TOKENIZE_BATCH),
                 tflm_tf_data_64=tf_data(64), tflm_1024_lines=in_graph(tflm, 1024),
                 tflm_1024_lines_no_cache=in_graph(tokenizers["no_cache"], 1024))
    # Untimed warm-up, which also checks the ids: every side's against the first side's.
    reference_name = next(iter(sides))
    reference = sides[reference_name](check=True)
    for name, run in sides.items():
        ids = run(check=True) if name != reference_name else reference
        if ids != reference:
            first = next((i for i, (a, b) in enumerate(zip(ids, reference)) if a != b),
                         min(len(ids), len(reference)))
            raise SystemExit(f"benchmark_tokenize: {name}'s ids differ from {reference_name}'s "
                             f"(document {first}).")
    tokens = sum(map(len, reference))
    seconds = {name: [] for name in sides}
    cpu_seconds = {name: [] for name in sides}
    for _ in range(args.repeats):
        for name, run in sides.items():
            start, cpu = time.perf_counter(), time.process_time()
            run()
            seconds[name].append(time.perf_counter() - start)
            cpu_seconds[name].append(time.process_time() - cpu)
    speeds = {name: tokens / statistics.median(s) for name, s in seconds.items()}
    # The process is pinned to one CPU: its CPU time is the work done, whatever else runs.
    cpu_speeds = {name: tokens / statistics.median(s) for name, s in cpu_seconds.items()}
    machine = {"cpus": os.cpu_count(), "load": [round(x, 2) for x in os.getloadavg()]}
    for name, s in seconds.items():
        print(json.dumps({"benchmark": "tokenize", "side": name, "cores": 1,
                          "tokens": tokens, "tokens_per_second": round(speeds[name]),
                          "tokens_per_cpu_second": round(cpu_speeds[name]),
                          "seconds_median": round(statistics.median(s), 4),
                          "seconds_all": [round(x, 4) for x in s], "ids_equal": True,
                          "documents": len(documents), "vocabulary_size": len(vocab),
                          "file": os.path.basename(path), "machine": machine}), flush=True)
    base = "tiktoken" if tik is not None else "hf_tokenizers"
    print(json.dumps({
        "benchmark": "tokenize_ratios", "per_core_vs": base,
        "ratios": {name: round(speeds[name] / speeds[base], 3) for name in sides},
        "cpu_time_ratios": {name: round(cpu_speeds[name] / cpu_speeds[base], 3) for name in sides},
        "word_cache_speedup": round(speeds["tflm_1024_lines"]
                                    / speeds["tflm_1024_lines_no_cache"], 3),
        "tf_data_batch_speedup": round(speeds["tflm_tf_data"] / speeds["tflm_tf_data_64"], 3),
    }), flush=True)


if __name__ == "__main__":
    main()
