"""tflm-vocab: trains a tokenizer vocabulary and saves it where `load_tokenizer` reads it.

    tflm-vocab --kind=wordpiece --input='corpus/*.txt' --vocab_size=30000 --output_dir=vocab/wp
    tflm-vocab --kind=sentencepiece_unigram --input=zh.txt --vocab_size=8000 --output_dir=vocab/zh
    tflm-vocab --kind=byte_bpe --vocab_size=8000 --output_dir=vocab/bpe   # the embedded corpus
    tflm-vocab --kind=wordpiece --input=reviews.jsonl --text_field=text --output_dir=vocab/zh

Writes the readable vocabulary (vocab.txt; sentencepiece.model + .vocab;
vocab.json + merges.txt) and tokenizer.json to --output_dir, then prints one
JSON line: kind, vocabulary size, lines read, repaired bytes, seconds,
fingerprint. Point `data.vocab_path` of an experiment at --output_dir.
"""

import json

from absl import app, flags

from tflm.cli import common_flags
from tflm.data.vocab_training import train_vocabulary

FLAGS = flags.FLAGS

flags.DEFINE_string("input", "", "Glob of text files (comma-separated globs allowed); "
                    "empty: the embedded corpus.")
flags.DEFINE_enum("kind", None, ["wordpiece", "sentencepiece_unigram", "sentencepiece_bpe",
                                 "byte_bpe"], "Which vocabulary to train.")
flags.DEFINE_integer("vocab_size", 8000, "Vocabulary size, special tokens included.")
flags.DEFINE_boolean("lowercase", None, "Lower-case (and strip accents) before training and "
                     "tokenizing. Default: on for wordpiece (uncased BERT), off otherwise.")
flags.DEFINE_boolean("nfkc", None, "Unicode NFKC first. Default: on, except byte_bpe (GPT-2 "
                     "keeps the text as is).")
flags.DEFINE_integer("min_frequency", 2, "wordpiece, byte_bpe: least count of a merged piece.")
flags.DEFINE_float("character_coverage", 0.9995, "sentencepiece: share of characters that get "
                   "pieces; the rest fall back to bytes. 1.0 for small alphabets.")
flags.DEFINE_string("text_field", "", "Read the inputs as JSON Lines and train on this field "
                    "of each line (e.g. text), or these comma-separated fields (e.g. en,zh); "
                    "empty: plain text lines.")
flags.DEFINE_integer("max_sentences", 0, "sentencepiece: sample this many lines (0: all).")


def options_from_flags():
    """The trainer keyword arguments the flags ask for."""
    options = {"text_field": FLAGS.text_field}
    if FLAGS.nfkc is not None:
        options["nfkc"] = FLAGS.nfkc
    if FLAGS.kind in ("wordpiece", "byte_bpe"):
        options["min_frequency"] = FLAGS.min_frequency
    else:
        options["character_coverage"] = FLAGS.character_coverage
        options["max_sentences"] = FLAGS.max_sentences
    return options


def main(argv):
    del argv
    if not FLAGS.kind:
        raise app.UsageError("--kind is required.")
    if not FLAGS.output_dir:
        raise app.UsageError("--output_dir is required.")
    stats = {}
    common_flags.run_or_exit(
        "tflm-vocab", lambda: train_vocabulary(
            FLAGS.kind, FLAGS.input, FLAGS.vocab_size, FLAGS.output_dir,
            lowercase=FLAGS.lowercase, stats=stats, **options_from_flags()))
    print(json.dumps(stats), flush=True)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
