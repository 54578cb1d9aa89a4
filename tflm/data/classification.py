"""Labelled text for sequence classification: reading, label ids, in-graph encoding, batches.

Labelled sets (JSON Lines or CSV with a text field, an optional second text
field for sentence pairs, and a label field) are read whole into memory by
Python, line by line, so that every bad record is an error naming its file
and line (or a counted skip with `on_bad_record="count"`), and an unknown
label names the line and the known labels. Fine-tuning sets are small (a
38k-tweet file reads in well under a second); tokenization, truncation and
padding then run in-graph in `tf.data`, and `encode_classification` is the
same function the exported `classify` signature uses, so serving sees
exactly the rows training saw.

Row layouts (`encode_classification`):

    encoder (BERT):   [CLS] A [SEP]            or  [CLS] A [SEP] B [SEP]
    decoder (GPT-2):  A <|endoftext|>          or  A <|endoftext|> B <|endoftext|>

Segment ids are 0 up to and including the first separator, 1 after it. A
pair too long for `sequence_length` is cut longest-first, as BERT's
`_truncate_seq_pair` (remove a token from the longer text, the second on
ties, until it fits); a single text keeps its start.
"""

import csv
import dataclasses
import io
import json

import numpy as np
import tensorflow as tf

from tflm.config import labelled_on_bad_record
from tflm.data.corpus import resolve_files
from tflm.data.pipeline import split_source
from tflm.errors import MissingFileError, TflmError

AUTOTUNE = tf.data.AUTOTUNE
LABELLED_FORMATS = ("jsonl", "csv")


class LabelledDataError(TflmError, ValueError):
    """A labelled record is unusable; the message names the file and line."""


@dataclasses.dataclass
class LabelledRecords:
    """Texts, optional second texts and raw labels (strings), with where each came from."""

    texts: list
    pairs: object  # list of strings, or None without a text_pair_field
    labels: list
    locations: list  # "file:line" per record

    def __len__(self):
        return len(self.texts)

    def select(self, keep):
        """The records at the indices `keep` (in order)."""
        pick = lambda values: [values[i] for i in keep]  # noqa: E731
        return LabelledRecords(pick(self.texts), None if self.pairs is None else pick(self.pairs),
                               pick(self.labels), pick(self.locations))


def _label_name(value):
    """A label value as its name: strings as they are, numbers and booleans as JSON writes them."""
    return value if isinstance(value, str) else json.dumps(value)


def _decode(raw, stats):
    text = raw.decode("utf-8", errors="replace")
    if "\ufffd" in text and stats is not None:
        added = text.count("\ufffd") - raw.count("\ufffd".encode("utf-8"))
        if added:
            stats.add("invalid_utf8_documents", 1)
            stats.add("invalid_utf8_replacements", added)
    return text


def jsonl_records(path, stats, bad):
    """`(line number, record)` of each JSON object line of `path`; blank lines are counted
    and skipped, a line that is not a JSON object goes to `bad(path, number, why)`."""
    with tf.io.gfile.GFile(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            line = _decode(raw, stats)
            if not line.strip():
                if stats is not None:
                    stats.add("empty_documents_skipped", 1)
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                bad(path, number, f"not a JSON object ({e.msg} at column {e.colno})")
                continue
            if not isinstance(record, dict):
                bad(path, number, f"not a JSON object but {type(record).__name__}")
                continue
            yield number, record


def csv_records(path, fields, delimiter, stats, bad):
    """`(line number, row dict)` of each row of the CSV file `path`, whose header must name
    every column of `fields`; a bad row goes to `bad(path, number, why)`."""
    with tf.io.gfile.GFile(path, "rb") as f:
        text = _decode(f.read(), stats)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = reader.fieldnames or []
    missing = [name for name in fields if name and name not in header]
    if missing:
        raise LabelledDataError(f"{path}:1: the CSV header {header} has no column "
                                f"{missing[0]!r} (data.text_field, data.text_pair_field and "
                                "data.label_field name the columns).")
    line = reader.line_num  # the header's last line
    for row in reader:
        number, line = line + 1, reader.line_num  # a quoted field may span lines
        if not any((value or "").strip() for value in row.values() if isinstance(value, str)):
            if stats is not None:
                stats.add("empty_documents_skipped", 1)
            continue
        yield number, row


def bad_record_handler(on_bad_record, stats=None):
    """`bad(path, number, why)` for the readers of labelled files: a `LabelledDataError`
    naming `path:number` with `on_bad_record="error"`; with `"count"` the record is skipped
    and counted (`records_missing_field`)."""
    if on_bad_record not in ("count", "error"):
        raise ValueError(f"on_bad_record={on_bad_record!r}; expected 'count' or 'error'.")

    def bad(path, number, why):
        if on_bad_record == "error":
            raise LabelledDataError(f"{path}:{number}: {why}.")
        if stats is not None:
            stats.add("records_missing_field", 1)

    return bad


def file_records(files, input_format, fields, csv_delimiter, stats, bad):
    """`(path, line number, record)` of every JSONL line or CSV row of `files` (a CSV header
    must name each of `fields` that is set)."""
    for path in files:
        if not tf.io.gfile.exists(path):
            raise MissingFileError(f"Labelled data file {path!r} does not exist.")
        if input_format == "jsonl":
            records = jsonl_records(path, stats, bad)
        else:
            records = csv_records(path, fields, csv_delimiter, stats, bad)
        for number, record in records:
            yield path, number, record


def text_value(record, field, path, number, bad, allow_empty=False):
    """The string in `field` of `record`, or None after `bad(...)` when it is missing, not a
    string, or (unless `allow_empty`) blank."""
    value = record.get(field)
    if not isinstance(value, str):
        why = "missing" if value is None else f"a {type(value).__name__}, not a string"
        bad(path, number, f"the text field {field!r} is {why}")
        return None
    if not allow_empty and not value.strip():
        bad(path, number, f"the text field {field!r} is empty")
        return None
    return value


def read_labelled(files, input_format="jsonl", text_field="text", label_field="label",
                  text_pair_field="", csv_delimiter=",", on_bad_record="error", stats=None):
    """Reads labelled records from JSONL or CSV files (CSV: the first row names the columns).

    A record needs a string `text_field` (and `text_pair_field` if set) and a
    label (string, number or boolean; its name is the string, or the JSON
    text of the number). Blank lines are skipped and counted. Undecodable
    bytes become U+FFFD, counted. A bad record is a `LabelledDataError`
    naming `file:line`, or with `on_bad_record="count"` is skipped and
    counted (`records_missing_field`).

    Returns:
        `LabelledRecords`.
    """
    if input_format not in LABELLED_FORMATS:
        raise LabelledDataError(f"data.input_format={input_format!r}: labelled data is read from "
                                f"{' or '.join(LABELLED_FORMATS)} files.")
    bad = bad_record_handler(on_bad_record, stats)
    texts, pairs, labels, locations = [], [], [], []
    fields = (text_field, text_pair_field, label_field)
    for path, number, record in file_records(files, input_format, fields, csv_delimiter, stats,
                                             bad):
        values = []
        for field in (text_field, text_pair_field):
            if not field:
                continue
            value = text_value(record, field, path, number, bad, allow_empty=True)
            if value is None:
                break
            values.append(value)
        else:
            label = record.get(label_field)
            if label is None or label == "" or isinstance(label, (list, dict)):
                bad(path, number, f"the label field {label_field!r} is "
                                  f"{'missing' if label in (None, '') else 'not a scalar'}")
                continue
            if stats is not None:
                stats.add("documents", 1)
            texts.append(values[0])
            if text_pair_field:
                pairs.append(values[1])
            labels.append(_label_name(label).strip())
            locations.append(f"{path}:{number}")
    return LabelledRecords(texts, pairs if text_pair_field else None, labels, locations)


def label_names_of(labels):
    """The sorted distinct label names (numerically when every name is an integer)."""
    names = sorted(set(labels))
    try:
        return sorted(names, key=int)
    except ValueError:
        return names


def label_ids(records, label_names):
    """int32 ids of `records.labels` in `label_names`; an unknown label is an error naming
    its file and line and the known labels."""
    index = {name: i for i, name in enumerate(label_names)}
    ids = np.empty(len(records), np.int32)
    for i, (label, where) in enumerate(zip(records.labels, records.locations)):
        if label not in index:
            raise LabelledDataError(f"{where}: unknown label {label!r}; the model knows "
                                    f"{list(label_names)}.")
        ids[i] = index[label]
    return ids


# -- In-graph encoding. -------------------------------------------------------------------------
def _keep_first(ids, counts):
    """The first `counts[i]` tokens of each ragged row."""
    return tf.gather(ids, tf.ragged.range(counts), batch_dims=1)


def row_tokens(tokenizer, causal):
    """`(start, separator)` ids of the row layout: ([CLS], [SEP]), or causal (the
    tokenizer's start token or None, end-of-text)."""
    if causal:
        end = tokenizer.end_of_text_id
        end = tokenizer.sep_id if end is None else end
        if end is None:
            raise ValueError(f"The {tokenizer.kind} tokenizer has no end-of-text or [SEP] token "
                             "to end a classification row.")
        return tokenizer.start_id, end
    if tokenizer.cls_id is None or tokenizer.sep_id is None:
        raise ValueError(f"An encoder's classification rows need [CLS] and [SEP]; the "
                         f"{tokenizer.kind} tokenizer has only {list(tokenizer.special_tokens)}. "
                         "Use a causal backbone (model.causal=true) with this tokenizer.")
    return tokenizer.cls_id, tokenizer.sep_id


def encode_classification(tokenizer, texts, pairs=None, sequence_length=128, causal=False,
                          pad_to_length=True):
    """Tokenizes, truncates and pads texts (or pairs) into classifier inputs, in-graph.

    Args:
        tokenizer: a tflm tokenizer.
        texts: `(batch,)` strings.
        pairs: `(batch,)` second texts, or None.
        sequence_length: the longest row, special tokens included.
        causal: the decoder layout (end-of-text separators, no [CLS]).
        pad_to_length: pad to `sequence_length` (static shape, training) or only
            to the longest row of the batch (serving).

    Returns:
        `(features, truncated)`: `{"token_ids", "padding_mask", "segment_ids"}`
        `(batch, length)` int32, and whether each row lost tokens.
    """
    second = None if pairs is None else tokenizer.tokenize(pairs)
    return encode_token_ids(tokenizer, tokenizer.tokenize(texts), second, sequence_length,
                            causal, pad_to_length)


def encode_token_ids(tokenizer, first, second=None, sequence_length=128, causal=False,
                     pad_to_length=True):
    """`encode_classification` of already tokenized rows (ragged `(batch, None)` ids)."""
    start, separator = row_tokens(tokenizer, causal)
    specials = (0 if start is None else 1) + (1 if second is None else 2)
    budget = sequence_length - specials
    if budget < (1 if second is None else 2):
        raise ValueError(f"sequence_length={sequence_length} leaves no room for text.")
    first = tf.cast(first, tf.int32).with_row_splits_dtype(tf.int64)
    batch = first.nrows()
    length_a = first.row_lengths()
    if second is None:
        keep_a = tf.minimum(length_a, budget)
        truncated = length_a > budget
    else:
        second = tf.cast(second, tf.int32).with_row_splits_dtype(tf.int64)
        length_b = second.row_lengths()
        # Longest-first, the second text losing ties (BERT's _truncate_seq_pair, closed form).
        keep_a = tf.minimum(length_a, tf.maximum(budget - length_b, (budget + 1) // 2))
        keep_b = tf.minimum(length_b, budget - keep_a)
        truncated = length_a + length_b > budget
        second = _keep_first(second, keep_b)
    first = _keep_first(first, keep_a)

    def column(token_id):
        return tf.fill([batch, 1], tf.constant(token_id, tf.int32))

    pieces = [] if start is None else [column(start)]
    pieces += [first, column(separator)]
    zeros = tf.zeros_like(tf.concat(pieces, axis=1))
    segments = [zeros]
    if second is not None:
        pieces += [second, column(separator)]
        segments.append(tf.ones_like(tf.concat([second, column(separator)], axis=1)))
    ids = tf.concat(pieces, axis=1)
    segment_ids = tf.concat(segments, axis=1)
    shape = [None, sequence_length] if pad_to_length else None
    pad_id = tokenizer.pad_id or 0
    features = {
        "token_ids": ids.to_tensor(default_value=pad_id, shape=shape),
        "padding_mask": tf.ones_like(ids).to_tensor(shape=shape),
        "segment_ids": segment_ids.to_tensor(shape=shape),
    }
    return features, truncated


def evaluation_order(count, seed=0):
    """The fixed order (a permutation of `range(count)`) evaluation reads records in."""
    return np.random.default_rng(seed).permutation(count)


def record_index_batches(count, batch_size, training=True, seed=0, input_context=None):
    """Batches of record indices, the order every labelled pipeline reads its records in:
    `(index, real)` with `index` int64 `(batch_size,)` and `real` its number of real rows.

    Training: endless, reshuffled every epoch over the whole set (labelled files are often
    sorted by label, so a bounded shuffle buffer would give one-label batches), full batches.
    Evaluation: one pass, in an order fixed by `seed` (so that the first batches, when
    evaluation stops early, are a fair sample of a file sorted by label); the final batch is
    padded with index 0, its rows past `real` to be given weight 0, so shapes stay static and
    split evenly between replicas. Records are split between input pipelines
    (`input_context`) by index; the shuffle runs over indices, so a checkpointed iterator
    stores integers, not texts.
    """
    if training:
        indices = tf.data.Dataset.range(count)
    else:
        order = evaluation_order(count, seed)
        indices = tf.data.Dataset.from_tensor_slices(order.astype(np.int64))
    if input_context is not None and input_context.num_input_pipelines > 1:
        indices = indices.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if training:
        indices = indices.shuffle(max(count, 1), seed=seed, reshuffle_each_iteration=True).repeat()

    @tf.autograph.experimental.do_not_convert
    def pad(index):
        real = tf.size(index)
        return tf.concat([index, tf.zeros([batch_size - real], tf.int64)], axis=0), real

    return indices.batch(batch_size, drop_remainder=training).map(pad)


def finish_labelled_batches(batches):
    """The last stage of a labelled pipeline: prefetch, and leave the tokenizer's tables out
    of the data position (resources whose contents never change: a checkpointed iterator
    need not, and cannot, save them)."""
    options = tf.data.Options()
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
    return batches.with_options(options).prefetch(AUTOTUNE)


def classification_batches(texts, labels, tokenizer, sequence_length, batch_size, pairs=None,
                           causal=False, training=True, seed=0, input_context=None,
                           with_weights=True, stats=None):
    """Batches of `(features, label ids, weights)` from in-memory texts and label ids, in
    the order of `record_index_batches` (the final evaluation batch padded with weight-0
    rows). `stats` (an `InputStats`) counts the tokens of the real rows (special tokens
    included, padding and the weight-0 rows not).
    """
    texts = tf.constant(list(texts), tf.string)
    labels = tf.constant(np.asarray(labels, np.int32))
    pair_values = None if pairs is None else tf.constant(list(pairs), tf.string)
    batches = record_index_batches(int(texts.shape[0]), batch_size, training, seed, input_context)

    @tf.autograph.experimental.do_not_convert
    def encode(index, real):
        weights = tf.sequence_mask(real, batch_size, tf.float32)
        row_texts = tf.gather(texts, index)
        row_pairs = None if pair_values is None else tf.gather(pair_values, index)
        features, _ = encode_classification(tokenizer, row_texts, row_pairs, sequence_length,
                                            causal)
        features = {k: tf.ensure_shape(v, [batch_size, sequence_length])
                    for k, v in features.items()}
        row_labels = tf.ensure_shape(tf.gather(labels, index), [batch_size])
        if stats is not None:
            real_rows = tf.cast(features["padding_mask"], tf.int64)[:real]
            stats.add("tokens", tf.reduce_sum(real_rows))
        if with_weights:
            return features, row_labels, tf.ensure_shape(weights, [batch_size])
        return features, row_labels

    return finish_labelled_batches(
        batches.map(encode, num_parallel_calls=AUTOTUNE, deterministic=True))


def classification_dataset(texts, labels, tokenizer, sequence_length, batch_size, seed=0,
                           shuffle_buffer_size=0, repeat=False, drop_remainder=False, pairs=None,
                           causal=False):
    """`(features, labels)` batches of `[CLS] text [SEP]` rows (see `encode_classification`)
    from in-memory texts and integer labels, for `model.fit` and `model.evaluate`.

    Without `repeat` the final partial batch is kept (unless `drop_remainder`).
    """
    columns = (list(texts), list(labels)) if pairs is None else (list(texts), list(labels),
                                                                 list(pairs))
    rows = tf.data.Dataset.from_tensor_slices(columns)
    if shuffle_buffer_size and shuffle_buffer_size > 1:
        rows = rows.shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        rows = rows.repeat()

    @tf.autograph.experimental.do_not_convert
    def encode(text_batch, label_batch, pair_batch=None):
        features, _ = encode_classification(tokenizer, text_batch, pair_batch, sequence_length,
                                            causal)
        return features, label_batch

    rows = rows.batch(batch_size, drop_remainder=drop_remainder)
    return rows.map(encode, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def split_records(records, every_nth, split):
    """Every `every_nth`-th record (from the first) is held out for `split="eval"`; the rest
    are `"train"`. `every_nth=0`: everything is training data."""
    if not every_nth:
        return records
    held_out = [i % every_nth == 0 for i in range(len(records))]
    keep = [i for i, h in enumerate(held_out) if h == (split == "eval")]
    return records.select(keep)


# -- From an experiment config. ----------------------------------------------------------------
def records_of_split(config, split, read, what="labelled records", fields=None):
    """The records of a split of `config.data`, for any task that reads labelled files.

    `read(files, on_bad_record)` reads the split's files (see
    `tflm.data.pipeline.split_source`), raising or counting bad records as
    `data.on_bad_record` says, and returns records with `len` and `select`; then every
    `data.eval_every_nth_document`-th good record is held out (`split_records`).
    `fields`: the fields the records need, as the error names them (default: the text and
    label fields).

    Raises:
        LabelledDataError: no records at all for the split (naming the files).
    """
    data = config.data
    path, every_nth = split_source(data, split)
    files = resolve_files(path)
    records = split_records(read(files, labelled_on_bad_record(data)), every_nth, split)
    if not len(records):
        fields = fields or (f"text field {data.text_field!r}, label field "
                            f"{data.label_field!r}")
        raise LabelledDataError(f"{', '.join(files)}: no {what} for the {split} split "
                                f"({fields}).")
    return records


def labelled_records(config, split="train", stats=None):
    """The labelled records of a split of `config.data` (see `records_of_split`).

    Raises:
        LabelledDataError: a bad record (file:line), or no records at all (naming the files).
    """
    data = config.data
    return records_of_split(config, split, lambda files, on_bad_record: read_labelled(
        files, data.input_format, data.text_field, data.label_field, data.text_pair_field,
        data.csv_delimiter, on_bad_record, stats))


def resolve_label_names(config):
    """`data.label_names`, or else the sorted labels of the training split."""
    if config.data.label_names:
        return list(config.data.label_names)
    return label_names_of(labelled_records(config, "train").labels)


def make_classification_dataset(config, tokenizer, causal, batch_size, input_context=None,
                                stats=None, training=True, split="train"):
    """Labelled batches of `config` for one input pipeline (see `classification_batches`):
    `batch_size` rows (this replica's share); `causal`: the backbone's attention direction
    (a causal backbone reads the whole row at its last token)."""
    data = config.data
    records = labelled_records(config, split, stats)
    if not data.label_names and split == "train":  # the names are these records' labels
        names = label_names_of(records.labels)
    else:
        names = resolve_label_names(config)
    return classification_batches(
        records.texts, label_ids(records, names), tokenizer, data.sequence_length, batch_size,
        pairs=records.pairs, causal=causal,
        training=training, seed=config.runtime.seed, input_context=input_context, stats=stats)
