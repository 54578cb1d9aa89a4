"""Prepared corpora: tokenized, sharded TFRecord files plus a JSON manifest.

`prepare_corpus` reads raw text once (cleaning, repairing, tokenizing in
`tf.data`, `PREPARE_BATCH` documents a call) and writes
`shard-00000-of-00008.tfrecord` ... and `manifest.json` into an output folder.
Each record is a `tf.train.Example` holding one document's `token_ids`. Training
from prepared shards skips tokenization.

The manifest records the tokenizer's kind and fingerprint, what was read
(files, bytes, documents), what was written (documents, tokens), and every
skip and repair, in counts that add up (see `tflm.data.stats`). `read_prepared` refuses
shards whose manifest names another tokenizer: a vocabulary that does not
match the data is a clear error, not a silently wrong model.

Shards are written under temporary names and renamed when complete; the
manifest is written last. A killed `prepare_corpus` leaves no manifest, and
reading such a folder is an error that says to run it again.
"""

import json
import os
import time

import tensorflow as tf

from tflm.data.sources import read_documents, worker_files
from tflm.data.stats import InputStats, describe
from tflm.data.tokenize import PREPARE_BATCH, tokenize_documents
from tflm.errors import BadFileError, TflmError
from tflm.version import __version__

MANIFEST = "manifest.json"
FORMAT = "tflm-prepared-v1"
_FEATURES = {"token_ids": tf.io.RaggedFeature(tf.int64)}


class ManifestError(TflmError, ValueError):
    """A prepared corpus is incomplete, or does not match the tokenizer."""


def _shard_name(index, count):
    return f"shard-{index:05d}-of-{count:05d}.tfrecord"


def _example(token_ids):
    feature = tf.train.Feature(int64_list=tf.train.Int64List(value=token_ids))
    return tf.train.Example(features=tf.train.Features(feature={"token_ids": feature}))


def prepare_corpus(files, output_dir, tokenizer, num_shards=8, log_every_seconds=30,
                   print_fn=print, **read_options):
    """Tokenizes `files` into `num_shards` TFRecord shards plus `manifest.json`.

    Documents go to shards round-robin, so shards hold similar amounts and
    keep the corpus order within each. `read_options` are those of
    `read_documents` (input_format, document_split, delimiter, text_field,
    max_document_bytes, on_bad_record).

    Returns:
        The manifest, as a dict.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be positive, got {num_shards}.")
    tf.io.gfile.makedirs(output_dir)
    # A previous, interrupted run may have left partial files: start clean.
    for name in tf.io.gfile.listdir(output_dir):
        if name.endswith(".tfrecord.tmp") or name == MANIFEST:
            tf.io.gfile.remove(os.path.join(output_dir, name))

    stats = InputStats()
    documents = read_documents(files, stats=stats, **read_options)
    tokens = tokenize_documents(documents, tokenizer, stats, batch_size=PREPARE_BATCH)
    names = [_shard_name(i, num_shards) for i in range(num_shards)]
    writers = [tf.io.TFRecordWriter(os.path.join(output_dir, n + ".tmp")) for n in names]
    shard_documents = [0] * num_shards
    shard_tokens = [0] * num_shards
    started = last_log = time.time()
    try:
        for index, ids in enumerate(tokens.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()):
            shard = index % num_shards
            writers[shard].write(_example(ids).SerializeToString())
            shard_documents[shard] += 1
            shard_tokens[shard] += len(ids)
            if time.time() - last_log > log_every_seconds:
                last_log = time.time()
                print_fn(f"tflm-prepare: {index + 1:,} documents, {sum(shard_tokens):,} tokens")
    finally:
        for writer in writers:
            writer.close()
    counts = stats.as_dict()
    if not sum(shard_documents):
        for name in names:
            tf.io.gfile.remove(os.path.join(output_dir, name + ".tmp"))
        raise BadFileError(f"{', '.join(files)}: no documents ({describe(counts)}); nothing "
                           "was written.")
    for name in names:
        tf.io.gfile.rename(os.path.join(output_dir, name + ".tmp"), os.path.join(output_dir, name),
                           overwrite=True)

    manifest = {
        "format": FORMAT,
        "created_by": f"tflm {__version__}",
        "seconds": round(time.time() - started, 3),
        "source": {"files": [os.path.basename(f) for f in files], **read_options},
        "tokenizer": {
            "kind": tokenizer.kind,
            "fingerprint": tokenizer.fingerprint(),
            "vocabulary_size": tokenizer.vocabulary_size,
        },
        # In: what was read. Out: the documents and tokens written. Every document read is
        # written or skipped (counted); every byte read is in a document, a skipped one or
        # between documents (see tflm.data.stats).
        "input": {
            "files": counts["files"],
            "bytes": counts["bytes_read"],
            "documents": counts["documents"],
            "document_bytes": counts["document_bytes"],
            "separator_bytes": counts["separator_bytes"],
        },
        "documents": sum(shard_documents),
        "tokens": sum(shard_tokens),
        "skipped": {
            "empty_documents": counts["empty_documents_skipped"],
            "records_missing_field": counts["records_missing_field"],
            "bytes": counts["skipped_bytes"],
        },
        "repaired": {
            "invalid_utf8_documents": counts["invalid_utf8_documents"],
            "invalid_utf8_replacements": counts["invalid_utf8_replacements"],
            "long_documents_split": counts["long_documents_split"],
            "documents_added_by_splitting": counts["documents_added_by_splitting"],
        },
        "shards": [
            {"file": n, "documents": d, "tokens": t}
            for n, d, t in zip(names, shard_documents, shard_tokens)
        ],
    }
    temporary = os.path.join(output_dir, MANIFEST + ".tmp")
    with tf.io.gfile.GFile(temporary, "w") as f:
        f.write(json.dumps(manifest, indent=2) + "\n")
    tf.io.gfile.rename(temporary, os.path.join(output_dir, MANIFEST), overwrite=True)
    return manifest


def load_manifest(path):
    """The manifest of a prepared folder (or of the folder holding a shard path)."""
    folder = path if tf.io.gfile.isdir(path) else os.path.dirname(path)
    manifest_path = os.path.join(folder, MANIFEST)
    if not tf.io.gfile.exists(manifest_path):
        raise ManifestError(
            f"{folder}: no {MANIFEST}; not a prepared corpus, or tflm-prepare did not finish "
            "(run it again)."
        )
    with tf.io.gfile.GFile(manifest_path) as f:
        try:
            manifest = json.loads(f.read())
        except json.JSONDecodeError as e:
            raise ManifestError(f"{manifest_path}: not valid JSON ({e}).") from None
    if manifest.get("format") != FORMAT:
        raise ManifestError(f"{manifest_path}: format {manifest.get('format')!r}, expected {FORMAT!r}.")
    return manifest, folder


def check_tokenizer(manifest, tokenizer, where):
    """Raises `ManifestError` unless `tokenizer` is the one the corpus was prepared with."""
    expected = manifest["tokenizer"]
    if tokenizer.kind != expected["kind"] or tokenizer.fingerprint() != expected["fingerprint"]:
        raise ManifestError(
            f"{where}: prepared with a {expected['kind']} tokenizer of fingerprint "
            f"{expected['fingerprint'][:12]} (vocabulary {expected['vocabulary_size']}), but the "
            f"configured tokenizer is {tokenizer.kind} of fingerprint "
            f"{tokenizer.fingerprint()[:12]} (vocabulary {tokenizer.vocabulary_size}). Use the "
            "vocabulary the data was prepared with, or prepare the data again."
        )


def prepared_files(path, tokenizer):
    """Shard paths of the prepared folder `path`, after checking its manifest."""
    manifest, folder = load_manifest(path)
    check_tokenizer(manifest, tokenizer, os.path.join(folder, MANIFEST))
    files = [os.path.join(folder, shard["file"]) for shard in manifest["shards"]]
    missing = [f for f in files if not tf.io.gfile.exists(f)]
    if missing:
        raise ManifestError(f"{folder}: shards listed in {MANIFEST} are missing: {missing[:3]}")
    return files


def read_prepared(files, input_context=None, shuffle_seed=None, repeat=False, stats=None):
    """Dataset of 1-D int32 token tensors (one per document) from prepared shards.

    Shards are split between input pipelines by file when there are enough,
    by record otherwise, as `read_documents` does. `stats` (an `InputStats`) counts
    the documents and tokens read.
    """
    names, shard_records = worker_files(files, input_context, shuffle_seed, repeat)
    records = names.interleave(tf.data.TFRecordDataset, cycle_length=1)
    if shard_records:
        records = records.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)

    @tf.autograph.experimental.do_not_convert
    def parse(serialized):
        ids = tf.io.parse_example(serialized, _FEATURES)["token_ids"]
        if stats is not None:
            stats.add("documents", ids.nrows())
            stats.add("tokens", tf.size(ids.flat_values))
        return tf.cast(ids, tf.int32)

    parsed = records.batch(256).map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return parsed.unbatch()
