"""Reading documents: text files, JSON Lines, with per-worker sharding and repairs.

`read_documents` turns files into a `tf.data.Dataset` of documents (scalar
strings, valid UTF-8, non-empty, at most `max_document_bytes` each), in a
deterministic order. Every repair or skip is counted in an `InputStats`, so the
counts add up (see `tflm.data.stats`): every byte read is in a document, in a
skipped document or record, or between documents (line breaks, blank lines,
delimiter lines).

- undecodable bytes are replaced by U+FFFD (counted), never an error;
- empty and whitespace-only documents are skipped (counted);
- JSONL lines without the text field are skipped (counted), or are an error
  naming the file and line with `on_bad_record="error"` (`BadRecordError` turns
  the pipeline's error into one line naming both);
- a document longer than `max_document_bytes` (a 50 MB single line, say) is
  cut at whitespace (or character) boundaries into bounded chunks before tokenization, so
  memory stays bounded by the chunk, not the line (counted).
"""

import re

import tensorflow as tf
import tensorflow_text as tf_text

from tflm.config import DOCUMENT_SPLITS
from tflm.data.jsonl import extract_string_field
from tflm.data.text_cleaning import replace_invalid_utf8
from tflm.errors import BadFileError, assertion_message

AUTOTUNE = tf.data.AUTOTUNE
INPUT_FORMATS = ("text", "jsonl")
# Starts the message of a bad record found inside tf.data, so that the binaries can tell it
# from other TensorFlow errors and print only the "file:line: what" that follows it.
BAD_RECORD_TAG = "tflm-bad-record: "
# Documents repaired, counted and bounded per op call: one call per document
# cost ~90 us of tf.data overhead each, more than tokenizing a paragraph.
_DOCUMENTS_PER_BATCH = 256


def shard_for_worker(files, input_context):
    """Splits work between input pipelines.

    Returns `(files, shard_records)`: with at least as many files as
    pipelines, each pipeline reads every n-th file; otherwise every pipeline
    reads all files and keeps every n-th record (`shard_records=True`).
    """
    if input_context is None or input_context.num_input_pipelines <= 1:
        return list(files), False
    n, i = input_context.num_input_pipelines, input_context.input_pipeline_id
    if len(files) >= n:
        return list(files)[i::n], False
    return list(files), True


def split_long_document(text, max_bytes, lookback=256):
    """Cuts a valid UTF-8 string into pieces of about `max_bytes` (at most `max_bytes + lookback`).

    Each cut moves back to just after the last whitespace byte within
    `lookback` bytes, so words stay whole; where there is none (Chinese, a
    very long token) it moves back to the start of a character, never into
    the middle of a multi-byte character. Joining the pieces gives the text.
    """
    lookback = min(lookback, max_bytes // 2)  # windows of successive cuts must not overlap
    length = tf.strings.length(text)
    ends = tf.range(max_bytes, tf.maximum(length, max_bytes), max_bytes)
    num_cuts = tf.shape(ends)[0]
    # substr broadcasts the scalar text over the positions: no copies of a long text.
    window = tf.io.decode_raw(
        tf.strings.substr(text, ends - lookback, tf.fill([num_cuts], lookback)), tf.uint8
    )
    window = tf.reshape(window, [-1, lookback])  # byte i is text[end - lookback + i]
    positions = tf.range(1, lookback + 1)  # cutting after byte i keeps i + 1 bytes of the window
    space = (window == 32) | (window == 10) | (window == 9) | (window == 13)
    # UTF-8 continuation bytes are 10xxxxxx; a cut before any other byte is a character start.
    char_start = (window < 0x80) | (window >= 0xC0)
    after_space = tf.reduce_max(tf.where(space, positions, 0), axis=1)
    before_char = tf.reduce_max(tf.where(char_start, positions - 1, 0), axis=1)
    keep = tf.where(after_space > 0, after_space, before_char)
    cuts = ends - lookback + keep
    begins = tf.concat([[0], cuts], axis=0)
    stops = tf.concat([cuts, [length]], axis=0)
    return tf.strings.substr(text, begins, stops - begins)


def worker_files(files, input_context=None, shuffle_seed=None, repeat=False):
    """This pipeline's files as a dataset of names, and whether records must be sharded too.

    Files are shuffled with `shuffle_seed` anew each epoch (if set) and read
    over and over with `repeat`; see `shard_for_worker` for the sharding. Epoch e's order
    depends on `(shuffle_seed, e)` alone, not on TensorFlow's global seed (which
    `Dataset.shuffle` would mix in), so a pipeline is the same in a notebook and a trainer.
    """
    files, shard_records = shard_for_worker(files, input_context)
    names = tf.constant(files, tf.string)
    if shuffle_seed is None or len(files) < 2:
        dataset = tf.data.Dataset.from_tensor_slices(names)
        return (dataset.repeat() if repeat else dataset), shard_records

    @tf.autograph.experimental.do_not_convert
    def epoch_order(epoch):
        keys = tf.random.stateless_uniform(
            [len(files)], seed=tf.stack([tf.constant(shuffle_seed, tf.int64), epoch]))
        return tf.data.Dataset.from_tensor_slices(tf.gather(names, tf.argsort(keys)))

    epochs = tf.data.Dataset.range(1 << 62 if repeat else 1)
    return epochs.flat_map(epoch_order), shard_records


def _split_file(text, document_split, delimiter):
    """One file's contents → its documents (before cleaning).

    The boundaries are found where they are (no marker byte is written into the
    text, so any byte of the input can be in a document). Bytes between documents
    are the caller's to count: the file's length minus the documents' lengths.
    """
    if document_split == "file":
        return text[tf.newaxis]
    if document_split == "line":
        # A "\r" before "\n" stays with its line, as whitespace: no second copy of the text.
        pieces = tf.strings.split(text, sep="\n")
        # The piece after a file's last newline is not a line; an empty file still
        # yields one (empty, counted) document.
        trailing = (tf.size(pieces) > 1) & tf.equal(tf.strings.length(pieces[-1]), 0)
        return tf.cond(trailing, lambda: pieces[:-1], lambda: pieces)
    if document_split == "blank_line":
        pattern = r"\r?\n[ \t\r]*\n(?:[ \t\r]*\n)*"
    else:
        # A line holding only the delimiter (e.g. "%") separates documents.
        pattern = r"(?:^|\r?\n)[ \t]*" + re.escape(delimiter) + r"[ \t]*(?:\r?\n|$)"
    # Byte-wise regex split: works on undecodable bytes too; empty pieces are left out.
    return tf_text.regex_split(text[tf.newaxis], pattern).flat_values


def read_documents(
    files,
    input_format="text",
    document_split="file",
    delimiter="",
    text_field="text",
    stats=None,
    input_context=None,
    max_document_bytes=1 << 16,
    on_bad_record="count",
    shuffle_seed=None,
    repeat=False,
):
    """Files → a dataset of documents (scalar strings), counted and repaired as above.

    Args:
        files: file paths (see `tflm.data.resolve_files`).
        input_format: `"text"` or `"jsonl"`.
        document_split: for text: `"file"` (one document per file), `"line"`,
            `"blank_line"` (paragraphs), or `"delimiter"` (lines holding only
            `delimiter` separate documents).
        delimiter: the separator line for `document_split="delimiter"`.
        text_field: the JSONL key holding the text.
        stats: an `InputStats` to count into (optional).
        input_context: a `tf.distribute.InputContext`; shards by files or records.
        max_document_bytes: longer documents are cut into pieces this long.
        on_bad_record: `"count"` (skip and count) or `"error"` (fail naming file and line).
        shuffle_seed: if set, the file order is shuffled with this seed, anew each epoch.
        repeat: whether to read the files over and over (training).
    """
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"input_format={input_format!r}; expected one of {INPUT_FORMATS}.")
    if document_split not in DOCUMENT_SPLITS:
        raise ValueError(f"document_split={document_split!r}; expected one of {DOCUMENT_SPLITS}.")
    if document_split == "delimiter" and not delimiter:
        raise ValueError('document_split="delimiter" needs a non-empty delimiter.')
    if on_bad_record not in ("count", "error"):
        raise ValueError(f"on_bad_record={on_bad_record!r}; expected 'count' or 'error'.")
    file_names, shard_records = worker_files(files, input_context, shuffle_seed, repeat)

    def count(key, value):
        if stats is not None:
            stats.add(key, value)

    def count_file(text, pieces):
        # The bytes a file adds that no piece holds lie between documents.
        length = tf.strings.length(text)
        count("files", 1)
        count("bytes_read", length)
        count("separator_bytes", length - tf.reduce_sum(tf.strings.length(pieces)))

    def count_documents(raw, skipped):
        """`raw`: documents (or records) as read; `skipped`: which of them are dropped."""
        lengths = tf.strings.length(raw)
        count("documents", tf.size(raw))
        count("skipped_bytes", tf.reduce_sum(tf.where(skipped, lengths, 0)))
        count("document_bytes", tf.reduce_sum(tf.where(skipped, 0, lengths)))

    if input_format == "jsonl":
        @tf.autograph.experimental.do_not_convert
        def lines_of(path):
            # Read as a whole, as text files are, so every byte is counted exactly
            # (a line reader would drop "\r" before "\n" without a trace).
            text = tf.io.read_file(path)
            lines = _split_file(text, "line", "")
            count_file(text, lines)
            numbers = tf.range(1, tf.size(lines, tf.int64) + 1)
            paths = tf.fill(tf.shape(lines), path)
            return tf.data.Dataset.from_tensor_slices((paths, numbers, lines))

        records = file_names.flat_map(lines_of)
        if shard_records:
            records = records.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)

        @tf.autograph.experimental.do_not_convert
        def parse(paths, numbers, raw):
            # Repair before extraction (the parser needs valid UTF-8); count it here.
            lines, replacements = replace_invalid_utf8(raw)
            count("invalid_utf8_replacements", tf.reduce_sum(replacements))
            count("invalid_utf8_documents", tf.reduce_sum(tf.cast(replacements > 0, tf.int64)))
            texts, found = extract_string_field(lines, text_field)
            blank = tf.equal(tf.strings.length(tf.strings.strip(lines)), 0)
            # A record whose text is empty or blank is an empty document, as in text files.
            empty = blank | (found & tf.equal(tf.strings.length(tf.strings.strip(texts)), 0))
            missing = ~found & ~blank
            if on_bad_record == "error":
                first = tf.argmax(tf.cast(missing, tf.int32))
                message = tf.strings.join([
                    BAD_RECORD_TAG, paths[first], ":", tf.strings.as_string(numbers[first]),
                    f": not a JSON object with a string value for the key {text_field}",
                ])
                tf.debugging.assert_equal(tf.reduce_any(missing), False, message=message)
            count_documents(raw, empty | missing)
            count("empty_documents_skipped", tf.reduce_sum(tf.cast(empty, tf.int64)))
            count("records_missing_field", tf.reduce_sum(tf.cast(missing, tf.int64)))
            return tf.boolean_mask(texts, ~empty & ~missing)

        batches = records.batch(_DOCUMENTS_PER_BATCH).map(
            parse, num_parallel_calls=AUTOTUNE, deterministic=True)
    else:
        @tf.autograph.experimental.do_not_convert
        def split(path):
            text = tf.io.read_file(path)
            pieces = _split_file(text, document_split, delimiter)
            count_file(text, pieces)
            return pieces

        @tf.autograph.experimental.do_not_convert
        def slices(pieces):
            starts = tf.data.Dataset.range(0, tf.size(pieces, tf.int64), _DOCUMENTS_PER_BATCH)
            return starts.map(tf.autograph.experimental.do_not_convert(
                lambda start: pieces[start:start + _DOCUMENTS_PER_BATCH]))

        files_pieces = file_names.map(split, num_parallel_calls=AUTOTUNE, deterministic=True)
        if shard_records:
            # Every n-th document of the whole stream, one at a time.
            batches = files_pieces.unbatch().shard(
                input_context.num_input_pipelines, input_context.input_pipeline_id
            ).batch(1)
        else:
            # Slices of one file's documents: no batch waits for the next file (or epoch).
            batches = files_pieces.flat_map(slices)

        @tf.autograph.experimental.do_not_convert
        def repair(texts):
            repaired, replacements = replace_invalid_utf8(texts)
            count("invalid_utf8_replacements", tf.reduce_sum(replacements))
            count("invalid_utf8_documents", tf.reduce_sum(tf.cast(replacements > 0, tf.int64)))
            empty = tf.equal(tf.strings.length(tf.strings.strip(repaired)), 0)
            count_documents(texts, empty)
            count("empty_documents_skipped", tf.reduce_sum(tf.cast(empty, tf.int64)))
            return tf.boolean_mask(repaired, tf.logical_not(empty))

        batches = batches.map(repair, num_parallel_calls=AUTOTUNE, deterministic=True)

    def split_each(texts):
        # One document at a time: memory stays bounded by the longest document.
        pieces = tf.map_fn(
            lambda text: split_long_document(text, max_document_bytes), texts,
            fn_output_signature=tf.RaggedTensorSpec([None], tf.string, ragged_rank=0),
        )
        return pieces.flat_values

    @tf.autograph.experimental.do_not_convert
    def bound(kept):
        """Valid, non-empty documents → the same, cut where longer than `max_document_bytes`."""
        # split_long_document cuts a document iff it is longer than max_document_bytes.
        long = tf.strings.length(kept) > max_document_bytes
        count("long_documents_split", tf.reduce_sum(tf.cast(long, tf.int64)))
        bounded = tf.cond(tf.reduce_any(long), lambda: split_each(kept), lambda: kept)
        count("documents_added_by_splitting", tf.size(bounded) - tf.size(kept))
        return bounded

    batches = batches.map(bound, num_parallel_calls=AUTOTUNE, deterministic=True)
    return batches.unbatch()


def bad_record_error(error):
    """The `BadFileError` ("file:line: what") of a bad record that stopped a pipeline, from
    the TensorFlow error it raised; None for any other error."""
    text = assertion_message(getattr(error, "message", None) or str(error))
    if text is None or not text.startswith(BAD_RECORD_TAG):
        return None
    return BadFileError(text[len(BAD_RECORD_TAG):].strip())
