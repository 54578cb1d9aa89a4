"""Helpers the vocabulary-file tokenizers share: file reading with clear errors, id tensors."""

import json
import os

import tensorflow as tf

from tflm.errors import BadFileError, MissingFileError


def read_text_file(path, what):
    """The UTF-8 text of `path`; errors name the file and what it should hold."""
    if not tf.io.gfile.exists(path):
        raise MissingFileError(f"{what} {path!r} does not exist.")
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadFileError(f"{what} {path!r} is not UTF-8 (byte {e.start}).") from None


def read_json_file(path, what):
    try:
        return json.loads(read_text_file(path, what))
    except json.JSONDecodeError as e:
        raise BadFileError(f"{what} {path!r} is not valid JSON: {e}") from None


def write_text_file(path, text):
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(text)


def check_unique(tokens, source):
    """Token → index (line - 1); a ValueError names the first repeated token and its lines."""
    seen = {}
    for index, token in enumerate(tokens):
        if token in seen:
            raise BadFileError(
                f"{source}: token {token!r} on line {index + 1} repeats line {seen[token] + 1}."
            )
        seen[token] = index
    return seen


def vocabulary_path(directory_or_file, file_name):
    """`directory_or_file` itself, or `file_name` inside it when it is a directory."""
    if tf.io.gfile.isdir(directory_or_file):
        return os.path.join(directory_or_file, file_name)
    return directory_or_file


def to_ragged_batch(ids):
    """Dense or ragged ids of rank 1 or 2 → `(RaggedTensor (batch, None) int32, was_rank_1)`."""
    if isinstance(ids, tf.RaggedTensor):
        return tf.cast(ids, tf.int32), False
    ids = tf.convert_to_tensor(ids)
    if ids.dtype == tf.string:
        raise TypeError("detokenize takes integer ids, not strings.")
    ids = tf.cast(ids, tf.int32)
    if ids.shape.rank == 1:
        return tf.RaggedTensor.from_tensor(ids[tf.newaxis]), True
    if ids.shape.rank != 2:
        raise ValueError(f"detokenize takes ids of rank 1 or 2, got shape {ids.shape}.")
    return tf.RaggedTensor.from_tensor(ids), False


def gather_per_id(table, ids):
    """`table[ids]` for dense or ragged `ids` of any rank."""
    if isinstance(ids, tf.RaggedTensor):
        return tf.ragged.map_flat_values(lambda v: tf.gather(table, v), ids)
    return tf.gather(table, ids)


def drop_ids(ragged_ids, keep_table):
    """Removes ids whose entry in the bool `keep_table` is False."""
    return tf.ragged.boolean_mask(ragged_ids, gather_per_id(keep_table, ragged_ids))


def word_starts_from_previous(ids, starts, after):
    """Word starts that depend on the previous token of the same row.

    A token starts a word when `starts[id]` holds, when it is first in its row,
    or when the token before it has `after[id]` (e.g. ends in whitespace).
    Works on the last axis of dense or ragged ids of any rank.
    """
    if isinstance(ids, tf.RaggedTensor):
        if ids.ragged_rank > 1:
            return ids.with_values(word_starts_from_previous(ids.values, starts, after))
        values = tf.cast(ids.values, tf.int32)
        first = tf.cast(ids.row_starts(), tf.int32)
        first = tf.boolean_mask(first, first < tf.size(values))  # empty trailing rows
        row_start = tf.tensor_scatter_nd_update(
            tf.zeros_like(values, tf.bool), first[:, None], tf.ones_like(first, tf.bool)
        )
        return ids.with_values(_starts_1d(values, row_start, starts, after))
    ids = tf.cast(tf.convert_to_tensor(ids), tf.int32)
    if ids.shape.rank == 0:
        return tf.constant(True)
    flat = tf.reshape(ids, [-1])
    row_start = tf.equal(tf.range(tf.size(flat)) % tf.maximum(tf.shape(ids)[-1], 1), 0)
    return tf.reshape(_starts_1d(flat, row_start, starts, after), tf.shape(ids))


def _starts_1d(values, row_start, starts, after):
    previous_after = tf.concat([[True], tf.gather(after, values)[:-1]], axis=0)
    return tf.gather(starts, values) | row_start | previous_after


# Marks cuts in text already repaired to valid UTF-8, which never holds this byte.
_CUT = b"\xff"


def regex_literal(text):
    """An RE2 pattern matching `text` exactly (every non-alphanumeric character escaped)."""
    return "".join(c if c.isalnum() else f"\\x{{{ord(c):X}}}" for c in text)


def split_around(texts, pattern):
    """Valid UTF-8 strings `(batch,)` → RaggedTensor `(batch, None)` of the text cut before and
    after each match of `pattern`: the matches are segments of their own, and empty segments
    may come between them (`split_around(["x[M]y"], r"\\[M\\]")` is `[["x", "[M]", "y"]]`).
    """
    marked = tf.strings.regex_replace(texts, pattern, _CUT + rb"\0" + _CUT)
    return tf.strings.split(marked, sep=_CUT)
