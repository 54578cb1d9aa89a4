"""In-graph extraction of a string field from JSON Lines records.

One JSON object per line; `extract_string_field(lines, "text")` returns, for
each line, what `json.loads(line)["text"]` gives when that is a string, and
whether it was found, using only TF ops (no Python per record), so JSONL
reads in parallel inside `tf.data`.

How: RE2 finds the string literals left to right, as a JSON parser does
(content without raw control characters; escapes `\\" \\\\ \\/ \\b \\f \\n
\\r \\t \\uHHHH`). Between them is a small skeleton (brackets, colons, commas,
numbers, literals); a vectorized scan over its tokens computes each token's
nesting level and container and checks the JSON grammar, so a line Python's
json refuses is not found. The key must be one of the outermost object (a
key nested deeper, or inside another string, does not count); keys compare
after decoding their escapes (`"te\\u0078t"` is `text`); of duplicate keys
the last counts, and a non-string value (number, null, object, array) is not
found. Values are decoded as json does, surrogate pairs included; a lone
surrogate, which cannot be UTF-8, becomes U+FFFD.

The one difference from `json.loads`: lines nested deeper than Python's
recursion limit (about 1000), which it refuses, are read.
"""

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
    """Decodes JSON string escapes in a `(n,)` string tensor.

    Returns the decoded strings and whether each held a lone surrogate escape
    (decoded as U+FFFD: it cannot be encoded in UTF-8).
    """
    pieces = tf_text.regex_split(raw, _ESCAPE, keep_delim_regex_pattern=_ESCAPE)
    flat = pieces.flat_values
    is_unicode = tf.strings.regex_full_match(flat, r"\\u[0-9a-fA-F]{4}")
    # \uHHHH: code units, with surrogate pairs combined into one code point.
    hex4 = tf.strings.substr(tf.where(is_unicode, flat, "\\u0000"), 2, 4)
    units = tf.where(is_unicode, _hex_values(hex4), -1)
    # Neighbours within the same string only (the pieces of all strings are flat).
    n = tf.size(raw)
    rows = _row_ids(pieces.row_splits)
    next_units = tf.where(tf.equal(_shift_left(rows, -1), rows), _shift_left(units, -1), -1)
    prev_units = tf.where(tf.equal(_shift_right(rows, -1), rows), _shift_right(units, -1), -1)
    is_high = (units >= 0xD800) & (units < 0xDC00) & (next_units >= 0xDC00) & (next_units < 0xE000)
    is_low_of_pair = (units >= 0xDC00) & (units < 0xE000) & (prev_units >= 0xD800) & (prev_units < 0xDC00)
    combined = 0x10000 + (units - 0xD800) * 0x400 + (next_units - 0xDC00)
    code_points = tf.where(is_high, combined, units)
    # Lone surrogates cannot be encoded in UTF-8: replace them, as Python's json does not.
    lone = (code_points >= 0xD800) & (code_points < 0xE000) & ~is_low_of_pair
    code_points = tf.where(lone, 0xFFFD, code_points)
    decoded_unicode = tf.strings.unicode_encode(
        tf.RaggedTensor.from_tensor(tf.maximum(code_points, 0)[:, None]), "UTF-8"
    )
    decoded = tf.where(is_unicode, decoded_unicode, flat)
    for escape, char in _SIMPLE_ESCAPES.items():
        decoded = tf.where(tf.equal(flat, escape), char, decoded)
    decoded = tf.where(is_low_of_pair, "", decoded)
    has_lone = tf.math.unsorted_segment_max(tf.cast(lone, tf.int32), rows, n) > 0
    return tf.strings.unsorted_segment_join(decoded, rows, n), has_lone


def _decode(raw):
    """`_unescape`, run only on the strings holding a backslash (few, as a rule)."""
    escaped = tf.strings.regex_full_match(raw, r"(?s).*\\.*")

    def unescape():
        decoded, lone = _unescape(tf.boolean_mask(raw, escaped))
        indices = tf.where(escaped)
        return (tf.tensor_scatter_nd_update(raw, indices, decoded),
                tf.tensor_scatter_nd_update(tf.zeros_like(escaped), indices, lone))

    return tf.cond(tf.reduce_any(escaped), unescape, lambda: (raw, tf.zeros_like(escaped)))


# Token types of the scan below.
_OPEN_OBJECT, _OPEN_ARRAY, _CLOSE_OBJECT, _CLOSE_ARRAY, _COLON, _COMMA, _STRING, _LITERAL = range(8)
_TOP = -1  # the context of the outermost braces
_STRUCTURAL = {ord("{"): _OPEN_OBJECT, ord("["): _OPEN_ARRAY, ord("}"): _CLOSE_OBJECT,
               ord("]"): _CLOSE_ARRAY, ord(":"): _COLON, ord(","): _COMMA}
# What Python's json reads outside strings: numbers and its constants (NaN and Infinity too).
_LITERAL_PATTERN = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null|NaN|-?Infinity"
_SPACE = -1
_BYTE_CODES = [_SPACE if chr(c) in " \t\r\n" else _STRUCTURAL.get(c, _STRING if c == ord('"') else _LITERAL)
               for c in range(256)]
# A JSON string literal as Python's json reads it (no raw control characters).
_STRING_LITERAL = r'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*"'
# Python refuses integers longer than this many digits (sys.get_int_max_str_digits's default).
_MAX_INT_DIGITS = 4300


def _content(literals):
    """String literals without their quotes."""
    length = tf.strings.length(literals)
    return tf.strings.substr(literals, tf.ones_like(length), length - 2)


def _isin(kinds, values):
    """Whether each token type (or -1, none) is one of `values`."""
    mask = sum(1 << (value + 1) for value in values)
    return tf.not_equal(tf.bitwise.bitwise_and(tf.bitwise.left_shift(1, kinds + 1), mask), 0)


def _row_ids(row_splits):
    """The row of each value of a ragged tensor with these `row_splits`.

    (`tf.repeat` and `RaggedTensor.value_rowids` build a rows × longest-row
    mask: gigabytes for one long line in a batch.)
    """
    return tf.searchsorted(row_splits[1:], tf.range(row_splits[-1]), side="right", out_type=row_splits.dtype)


def _shift_right(x, fill):
    """`x[i - 1]`, with `fill` first."""
    return tf.concat([tf.fill([1], tf.constant(fill, x.dtype)), x], 0)[:tf.size(x)]


def _shift_left(x, fill, by=1):
    """`x[i + by]`, with `fill` past the end."""
    return tf.concat([x, tf.fill([by], tf.constant(fill, x.dtype))], 0)[by:]


def _gather_or(x, indices, default):
    """`x[indices]`, `default` where an index is out of range (x may be empty)."""
    n = tf.size(x, out_type=indices.dtype)
    padded = tf.concat([x, tf.fill([1], tf.constant(default, x.dtype))], 0)
    return tf.gather(padded, tf.where((indices >= 0) & (indices < n), indices, n))


def _unmask(mask, values):
    """The inverse of `tf.boolean_mask(x, mask)` for bool `values`: False elsewhere."""
    ints = tf.scatter_nd(tf.where(mask), tf.cast(values, tf.int32), tf.shape(mask, out_type=tf.int64))
    return ints > 0


def _cumsum_by_line(values, line_of, n_lines):
    """Inclusive cumulative sum of `values`, restarting at each line (`line_of` sorted)."""
    before = tf.cumsum(tf.math.unsorted_segment_sum(values, line_of, n_lines), exclusive=True)
    return tf.cumsum(values) - tf.gather(before, line_of)


def _any_by_line(flags, line_of, n_lines):
    return tf.math.unsorted_segment_max(tf.cast(flags, tf.int32), line_of, n_lines) > 0


def _last_index_at_or_before(flags):
    """For each i, the largest j <= i with `flags[j]`, or -1."""
    count = tf.cumsum(tf.cast(flags, tf.int32))
    where = tf.cast(tf.where(flags)[:, 0], tf.int32)
    return _gather_or(where, count - 1, -1)


def _scan(lines):
    """Splits JSON lines into string literals and a skeleton, and validates them.

    Returns `(strings, valid, tokens)`: the string literals of all lines, in
    order and with their quotes; whether each line is a JSON object as
    Python's `json.loads` reads it; and per token of the skeletons (in order)
    its `line`, `type`, `string` (index in `strings`, for string tokens),
    `level` (nesting depth of its container: 1 inside the outermost braces)
    and `is_key` (a string in key position).
    """
    n = tf.size(lines)
    # The string literals, found by RE2 left to right as a JSON parser does,
    # each between two 0xFF bytes (never in UTF-8): pieces alternate between
    # the text outside strings and a string literal. A string whose content is
    # not valid JSON leaves a stray quote outside, which refuses its line.
    pieces = tf.strings.split(tf.strings.regex_replace(lines, _STRING_LITERAL, b"\xff\\0\xff"), b"\xff")
    piece = pieces.flat_values
    splits = tf.cast(pieces.row_splits, tf.int32)
    piece_line = _row_ids(splits)
    is_string_piece = tf.equal((tf.range(tf.size(piece)) - tf.gather(splits, piece_line)) % 2, 1)
    strings = tf.boolean_mask(piece, is_string_piece)
    outside = tf.boolean_mask(piece, ~is_string_piece)
    stray_quote = _any_by_line(~tf.strings.regex_full_match(outside, '[^"]*'),
                               tf.boolean_mask(piece_line, ~is_string_piece), n)
    # The skeleton: each string literal as one quote; the rest as it is.
    skeleton = tf.strings.unsorted_segment_join(tf.where(is_string_piece, '"', piece), piece_line, n)

    lengths = tf.strings.length(skeleton)
    joined = tf.strings.reduce_join(skeleton)
    b = tf.cast(tf.io.decode_raw(joined, tf.uint8), tf.int32)
    line_of = _row_ids(tf.concat([[0], tf.cumsum(lengths)], 0))
    offset = tf.range(tf.size(b)) - tf.gather(tf.cumsum(lengths, exclusive=True), line_of)
    first_in_line = tf.equal(offset, 0)
    last_in_line = _shift_left(first_in_line, True)
    # Whitespace (Python's json: space, tab, CR, LF; a UTF-8 byte-order mark
    # first, as json.loads of the line's bytes), structural characters, and
    # literals (numbers, true, ...): the runs of anything else.
    code = tf.gather(_BYTE_CODES, b)
    bom = (offset < 3) & tf.gather(tf.equal(tf.strings.substr(lines, 0, 3), b"\xef\xbb\xbf"), line_of)
    code = tf.where(bom, _SPACE, code)
    literal = tf.equal(code, _LITERAL)
    literal_start = literal & ~(_shift_right(literal, False) & ~first_in_line)
    literal_end = literal & ~(_shift_left(literal, False) & ~last_in_line)

    token_pos = tf.cast(tf.where(~tf.equal(code, _SPACE) & (~literal | literal_start))[:, 0], tf.int32)
    kind = tf.gather(code, token_pos)
    token_line = tf.gather(line_of, token_pos)
    is_string, is_literal = tf.equal(kind, _STRING), tf.equal(kind, _LITERAL)
    # String tokens count per line, so that a refused line cannot shift the next.
    strings_before = tf.cumsum(tf.math.unsorted_segment_sum(
        tf.cast(is_string_piece, tf.int32), piece_line, n), exclusive=True)
    string_index = (_cumsum_by_line(tf.cast(is_string, tf.int32), token_line, n) - 1
                    + tf.gather(strings_before, token_line))

    literal_start_pos = tf.boolean_mask(token_pos, is_literal)
    literal_end_pos = tf.cast(tf.where(literal_end)[:, 0], tf.int32)
    literals = tf.strings.substr(joined, literal_start_pos, literal_end_pos - literal_start_pos + 1)
    too_long = tf.strings.regex_full_match(literals, "-?[0-9]+") & (
        tf.strings.length(tf.strings.regex_replace(literals, "^-", "")) > _MAX_INT_DIGITS)
    good_literal = tf.strings.regex_full_match(literals, _LITERAL_PATTERN) & ~too_long
    bad_literal = _unmask(is_literal, ~good_literal)

    # Nesting: an open bracket and its close sit at the level outside them.
    is_open = tf.equal(kind, _OPEN_OBJECT) | tf.equal(kind, _OPEN_ARRAY)
    is_close = tf.equal(kind, _CLOSE_OBJECT) | tf.equal(kind, _CLOSE_ARRAY)
    delta = tf.cast(is_open, tf.int32) - tf.cast(is_close, tf.int32)
    level = _cumsum_by_line(delta, token_line, n) - tf.cast(is_open, tf.int32)

    # Each token's container (object, array or _TOP): the last open bracket
    # one level out. Sorting tokens by (line, level) then position puts it
    # last among the open brackets before the token in its group.
    entry_token = _row_ids(tf.concat([[0], tf.cumsum(1 + tf.cast(is_open, tf.int32))], 0))
    setter = tf.equal(entry_token, _shift_right(entry_token, -1))  # an open's second entry
    entry_level = tf.gather(level, entry_token)
    key = tf.maximum(tf.where(setter, entry_level, entry_level - 1), -1)
    entry_line = tf.gather(token_line, entry_token)
    levels = tf.maximum(tf.math.unsorted_segment_max(level, token_line, n), 0) + 2
    group = tf.gather(tf.cumsum(levels, exclusive=True), entry_line) + key + 1
    n_entries = tf.size(entry_token, out_type=tf.int64)
    order = tf.argsort(tf.cast(group, tf.int64) * n_entries + tf.range(n_entries))
    sorted_group = tf.gather(group, order)
    owner = _last_index_at_or_before(tf.gather(setter, order))
    owner_kind = _gather_or(kind, _gather_or(tf.gather(entry_token, order), owner, -1), _TOP)
    same_group = tf.equal(_gather_or(sorted_group, owner, -1), sorted_group)
    sorted_context = tf.where(same_group, owner_kind, _TOP)
    context = tf.boolean_mask(tf.scatter_nd(order[:, None], sorted_context, tf.shape(order)), ~setter)

    # The grammar, from each token and the next one on its line.
    first = ~tf.equal(token_line, _shift_right(token_line, -1))
    last = ~tf.equal(token_line, _shift_left(token_line, -1))
    prev_kind = tf.where(first, -1, _shift_right(kind, -1))
    prev_context = _shift_right(context, _TOP)
    next_kind = tf.where(last, -1, _shift_left(kind, -1))
    is_key = is_string & (tf.equal(prev_kind, _OPEN_OBJECT)
                          | (tf.equal(prev_kind, _COMMA) & tf.equal(prev_context, _OPEN_OBJECT)))
    value_start = _isin(next_kind, [_OPEN_OBJECT, _OPEN_ARRAY, _STRING, _LITERAL])
    next_ok = tf.where(
        tf.equal(kind, _OPEN_OBJECT), _isin(next_kind, [_STRING, _CLOSE_OBJECT]),
        tf.where(tf.equal(kind, _OPEN_ARRAY), value_start | tf.equal(next_kind, _CLOSE_ARRAY),
        tf.where(tf.equal(kind, _COMMA) & tf.equal(context, _OPEN_OBJECT), tf.equal(next_kind, _STRING),
        tf.where(tf.equal(kind, _COMMA), value_start & tf.equal(context, _OPEN_ARRAY),
        tf.where(tf.equal(kind, _COLON), value_start,
        tf.where(is_key, tf.equal(next_kind, _COLON),
                 _isin(next_kind, [_COMMA, _CLOSE_OBJECT, _CLOSE_ARRAY])))))))
    # One object per line: it opens first and closes last; all else is inside.
    next_ok = tf.where(last, tf.equal(kind, _CLOSE_OBJECT) & tf.equal(level, 0), next_ok)
    placed = tf.where(first, tf.equal(kind, _OPEN_OBJECT), last | (level >= 1))
    # A close bracket matches the open before it, or the container of the token before it.
    opened = tf.where(_isin(prev_kind, [_OPEN_OBJECT, _OPEN_ARRAY]), prev_kind, prev_context)
    matched = ~is_close | tf.equal(opened, kind - 2)
    bad_token = ~(next_ok & placed & matched) | bad_literal

    valid = ~(stray_quote | _any_by_line(bad_token, token_line, n)
              | tf.equal(tf.math.bincount(token_line, minlength=n, maxlength=n), 0))
    tokens = dict(line=token_line, type=kind, string=string_index, level=level, is_key=is_key)
    return strings, valid, tokens


def extract_string_field(lines, field):
    """Returns `(values, found)` for the top-level string field `field` of each JSON line.

    Exactly `json.loads(line)[field]` when that is a string: a line Python's
    json refuses, a non-object line, a missing key or a non-string value is
    not found; of duplicate keys the last counts; keys are compared after
    decoding their escapes (`"te\\u0078t"` is `text`). Only lines nested
    deeper than Python's recursion limit, which json.loads refuses, are read.
    A UTF-8 byte-order mark may open a line (json.loads of bytes skips it).

    Args:
        lines: `(n,)` string tensor, one JSON object per line, valid UTF-8
            (repair first: the scan marks string literals with 0xFF bytes).
        field: the key to read.

    Returns:
        `values`: `(n,)` decoded strings (empty where not found); `found`:
        `(n,)` bool.
    """
    lines = tf.convert_to_tensor(lines, tf.string)
    strings, valid, tokens = _scan(lines)
    n = tf.size(lines)
    # Keys of the outermost object, as written (between the quotes) and decoded.
    top = tokens["is_key"] & tf.equal(tokens["level"], 1)
    raw = _content(_gather_or(strings, tf.boolean_mask(tokens["string"], top), '""'))
    decoded, lone = _decode(raw)
    match = tf.equal(decoded, field) & ~lone
    # The last matching key wins; its value follows the colon.
    key_index = tf.boolean_mask(tf.range(tf.size(top)), top)
    chosen = tf.math.unsorted_segment_max(
        tf.where(match, key_index, -1), tf.boolean_mask(tokens["line"], top), n)
    value = tf.where(chosen >= 0, chosen + 2, -1)
    found = valid & tf.equal(_gather_or(tokens["type"], value, -1), _STRING)
    raw_values = _content(_gather_or(strings, tf.where(found, _gather_or(tokens["string"], value, -1), -1), '""'))
    values, _ = _decode(raw_values)
    return tf.where(found, values, ""), found
