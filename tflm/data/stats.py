"""Counters of what an input pipeline read, skipped or repaired, updated in-graph.

Nothing is dropped silently: every skipped or repaired input increments a
counter here, from inside `tf.data` map functions, and the trainer logs
them and `tflm-prepare` writes them into its manifest. The counts add up
(`accounting_errors` checks it; the tests assert it on every bad input):

    bytes_read == document_bytes + skipped_bytes + separator_bytes
    documents - empty_documents_skipped - records_missing_field
        + documents_added_by_splitting == the documents that come out

A pipeline counts what it has read, which in training runs ahead of what the
steps have consumed (the trainer reports that separately). Where there are
fewer files than input pipelines every pipeline opens every file and keeps
every n-th record; its byte counts are then those of the whole files.
"""

import tensorflow as tf

COUNTERS = (
    "files",  # files opened (again each epoch)
    "bytes_read",  # bytes of those files
    "documents",  # documents (text) or records (JSONL lines) read, before skipping
    "document_bytes",  # bytes of the documents / records that were kept (before repair)
    "skipped_bytes",  # bytes of the empty documents and of the records skipped
    "separator_bytes",  # bytes between documents: line breaks, blank lines, delimiter lines
    "empty_documents_skipped",  # empty or whitespace-only documents / lines / JSON texts
    "invalid_utf8_documents",  # documents in which undecodable bytes were replaced
    "invalid_utf8_replacements",  # U+FFFD characters inserted for undecodable bytes
    "records_missing_field",  # JSONL lines without the text field (or not JSON)
    "long_documents_split",  # documents cut into bounded chunks before tokenization
    "documents_added_by_splitting",  # the chunks beyond the first of each cut document
    "tokens",  # tokens produced by the tokenizer (or read from prepared shards)
    "noised_rows_too_long",  # denoising rows whose noised inputs outgrew the encoder's row
    "sources_truncated",  # seq2seq sources cut to fit the encoder's row
    "targets_truncated",  # seq2seq targets cut to fit the decoder's row
)


def documents_out(counts):
    """The documents a pipeline passed on, from its counts (see the module docstring)."""
    return (counts["documents"] - counts["empty_documents_skipped"]
            - counts["records_missing_field"] + counts["documents_added_by_splitting"])


def accounting_errors(counts):
    """The identities of the module docstring that `counts` break (empty when they add up)."""
    parts = counts["document_bytes"] + counts["skipped_bytes"] + counts["separator_bytes"]
    if counts["bytes_read"] != parts:
        return [f"bytes_read {counts['bytes_read']} != document_bytes + skipped_bytes + "
                f"separator_bytes {parts}"]
    return []


class InputStats(tf.Module):
    """int64 counters, one per name in `COUNTERS`.

    Example:
    >>> stats = InputStats()
    >>> dataset = read_documents(files, stats=stats)   # the pipeline adds to it
    >>> stats.as_dict()["empty_documents_skipped"]
    """

    def __init__(self, name="input_stats"):
        super().__init__(name=name)
        with tf.init_scope():
            self.counters = {
                key: tf.Variable(0, dtype=tf.int64, trainable=False, name=key) for key in COUNTERS
            }

    def add(self, key, value):
        """Adds `value` to counter `key` (usable inside tf.data functions)."""
        return self.counters[key].assign_add(tf.cast(value, tf.int64))

    def as_dict(self):
        return {key: int(v.numpy()) for key, v in self.counters.items()}

    def reset(self):
        for v in self.counters.values():
            v.assign(0)


def describe(counts):
    """What a pipeline read and dropped, in words, for messages about missing documents."""
    words = [f"{counts['files']} file(s), {counts['bytes_read']} bytes, "
             f"{counts['documents']} document(s) or record(s) read"]
    for key, what in (("empty_documents_skipped", "empty or blank"),
                      ("records_missing_field", "without the text field")):
        if counts[key]:
            words.append(f"{counts[key]} {what}")
    return ", ".join(words)
