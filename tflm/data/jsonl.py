"""In-graph extraction of a string field from JSON Lines records.

One JSON object per line; `extract_string_field(lines, "text")` returns the
decoded value of the top-level-looking key `"text"` of each line, and whether
it was found, using only TF string ops (no Python per record), so JSONL reads
in parallel inside `tf.data`.

The value is matched as a JSON string literal (`"..."` with backslash
escapes) and decoded: `\\" \\\\ \\/ \\b \\f \\n \\r \\t` and `\\uHHHH` (four hex digits),
surrogate pairs included. A key that only appears inside another string
value cannot match, because there its quotes are escaped. Non-string values
(numbers, null, objects) count as not found.
"""

import re

import tensorflow as tf
import tensorflow_text as tf_text

_SIMPLE_ESCAPES = {'\\"': '"', "\\\\": "\\", "\\/": "/", "\\b": "\b", "\\f": "\f",
                   "\\n": "\n", "\\r": "\r", "\\t": "\t"}
_ESCAPE = r"\\(?:u[0-9a-fA-F]{4}|.)"


def _hex_values(hex4):
    """`(n,)` strings of 4 hex digits → int32 values."""
    digits = tf.reshape(tf.io.decode_raw(hex4, tf.uint8), [-1, 4])
    digits = tf.cast(digits, tf.int32)
    value = tf.where(digits >= 97, digits - 87, tf.where(digits >= 65, digits - 55, digits - 48))
    return tf.reduce_sum(value * tf.constant([4096, 256, 16, 1]), axis=-1)


def _unescape(raw):
    """Decodes JSON string escapes in a `(n,)` string tensor."""
    pieces = tf_text.regex_split(raw, _ESCAPE, keep_delim_regex_pattern=_ESCAPE)
    flat = pieces.flat_values
    is_unicode = tf.strings.regex_full_match(flat, r"\\u[0-9a-fA-F]{4}")
    # \uHHHH: code units, with surrogate pairs combined into one code point.
    hex4 = tf.strings.substr(tf.where(is_unicode, flat, "\\u0000"), 2, 4)
    units = tf.where(is_unicode, _hex_values(hex4), -1)
    next_units = tf.concat([units[1:], [-1]], axis=0)
    prev_units = tf.concat([[-1], units[:-1]], axis=0)
    is_high = (units >= 0xD800) & (units < 0xDC00) & (next_units >= 0xDC00) & (next_units < 0xE000)
    is_low_of_pair = (units >= 0xDC00) & (units < 0xE000) & (prev_units >= 0xD800) & (prev_units < 0xDC00)
    combined = 0x10000 + (units - 0xD800) * 0x400 + (next_units - 0xDC00)
    code_points = tf.where(is_high, combined, units)
    # Lone surrogates cannot be encoded in UTF-8: replace them, as Python's json does not.
    lone = (code_points >= 0xD800) & (code_points < 0xE000)
    code_points = tf.where(lone, 0xFFFD, code_points)
    decoded_unicode = tf.strings.unicode_encode(
        tf.RaggedTensor.from_tensor(tf.maximum(code_points, 0)[:, None]), "UTF-8"
    )
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(list(_SIMPLE_ESCAPES), list(_SIMPLE_ESCAPES.values())),
        default_value="",
    )
    is_simple = tf.strings.regex_full_match(flat, r"\\[^u]")
    decoded = tf.where(is_unicode, decoded_unicode, tf.where(is_simple, table.lookup(flat), flat))
    decoded = tf.where(is_low_of_pair, "", decoded)
    return tf.strings.reduce_join(pieces.with_flat_values(decoded), axis=-1)


def extract_string_field(lines, field):
    """Returns `(values, found)` for the string field `field` of each JSON line.

    Args:
        lines: `(n,)` string tensor, one JSON object per line.
        field: the key to read.

    Returns:
        `values`: `(n,)` decoded strings (empty where not found); `found`:
        `(n,)` bool.
    """
    lines = tf.convert_to_tensor(lines, tf.string)
    key = re.escape(field)
    # A JSON string literal: quotes around non-quote, non-backslash chars or escapes.
    pattern = r'"' + key + r'"\s*:\s*"((?:[^"\\]|\\.)*)"'
    found = tf.strings.regex_full_match(lines, r"(?s).*?" + pattern + r".*")
    raw = tf.strings.regex_replace(lines, r"(?s)^.*?" + pattern + r".*$", r"\1")
    values = tf.where(found, _unescape(tf.where(found, raw, "")), "")
    return values, found
