"""Counters of what an input pipeline skipped or repaired, updated in-graph.

Nothing is dropped silently: every skipped or repaired input increments a
counter here, from inside `tf.data` map functions, and the trainer logs
them and `tflm-prepare` writes them into its manifest.
"""

import tensorflow as tf

COUNTERS = (
    "documents",  # documents read (after splitting, before skipping)
    "empty_documents_skipped",  # empty or whitespace-only documents / lines
    "invalid_utf8_documents",  # documents in which undecodable bytes were replaced
    "invalid_utf8_replacements",  # U+FFFD characters inserted for undecodable bytes
    "records_missing_field",  # JSONL lines without the text field (or not JSON)
    "long_documents_split",  # documents cut into bounded chunks before tokenization
    "tokens",  # tokens produced by the tokenizer
)


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
