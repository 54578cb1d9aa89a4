"""tflm-prepare: raw corpus → tokenized, sharded TFRecords plus a JSON manifest.

    tflm-prepare --config_file=configs/tiny_gpt.yaml --output_dir=runs/data \\
        --params_override=data.input_path='corpus/*.txt' --num_shards=8

Reads `data.input_path` as the experiment's `data` section describes it
(format, document split, tokenizer), and writes shards that `tflm-train`
reads with `data.input_format=tfrecord,data.input_path=<output_dir>`.
The manifest lists counts of documents and tokens and every skipped or
repaired input.
"""

import json

from absl import app, flags

from tflm.cli import common_flags
from tflm.config import ConfigError, text_on_bad_record
from tflm.data import prepare_corpus, resolve_files
from tflm.data.tokenizers import make_tokenizer

FLAGS = flags.FLAGS

flags.DEFINE_integer("num_shards", 8, "Number of TFRecord shards (>= the number of workers).")


def prepare(config, output_dir, num_shards, print_fn=print):
    """Prepares the corpus of `config.data`; returns the manifest."""
    data = config.data
    if data.input_format == "tfrecord":
        raise ConfigError(
            "data.input_format=tfrecord is already prepared; point at raw text or JSONL."
        )
    files = resolve_files(data.input_path)
    tokenizer = make_tokenizer(data.tokenizer, data.vocab_path)
    manifest = prepare_corpus(
        files, output_dir, tokenizer, num_shards=num_shards, print_fn=print_fn,
        input_format=data.input_format, document_split=data.document_split,
        delimiter=data.document_delimiter, text_field=data.text_field,
        max_document_bytes=data.max_document_bytes, on_bad_record=text_on_bad_record(data),
    )
    summary = {k: manifest[k] for k in ("input", "documents", "tokens", "skipped", "repaired",
                                             "seconds")}
    print_fn(f"tflm-prepare: wrote {num_shards} shards to {output_dir}: {json.dumps(summary)}")
    return manifest


def main(argv):
    del argv
    if not FLAGS.output_dir:
        raise app.UsageError("--output_dir is required.")
    common_flags.run_or_exit(
        "tflm-prepare", lambda: prepare(common_flags.load_config(), FLAGS.output_dir,
                                        FLAGS.num_shards, print_fn=lambda s: print(s, flush=True)))


def run():
    app.run(main)


if __name__ == "__main__":
    run()
