"""tf.data pipelines: documents → packed causal-LM or masked-LM batches.

Every step is a TF op (read, repair, tokenize, pack, mask, batch), so the
pipeline runs in parallel with training and its tokenizer can go into a
SavedModel. Batches are `(features, labels, sample_weight)` tuples that
`model.fit` and the trainer both consume. `make_dataset(config, ...)` builds
the pipeline an experiment config describes, sharded for one input pipeline
of a `tf.distribute` strategy.

Order of a training pipeline::

    files (shuffled per epoch, sharded per worker) → documents (repaired, counted)
      → repeat → tokenize in batches → join with end-of-text → pack into rows
      → shuffle rows → [mask] → batch (static shapes) → prefetch

Repeating before packing means rows run on across epoch boundaries: no
token is dropped, only the tail of the whole (infinite) stream.
"""

import tensorflow as tf

from tflm.config import ConfigError, text_on_bad_record
from tflm.errors import BadFileError
from tflm.data.corpus import resolve_files
from tflm.data.masking import mask_batch
from tflm.data.prepared import prepared_files, read_prepared
from tflm.data.sources import read_documents
from tflm.data.stats import InputStats, describe
from tflm.data.tokenize import TOKENIZE_BATCH, tokenize_documents  # noqa: F401 (re-exported)

AUTOTUNE = tf.data.AUTOTUNE
PACK_BATCH = 64  # documents joined per step of the packing scan


def pack_token_stream(documents, window, separator_id=None, pad_id=None, positions=False,
                      start_id=None):
    """Packs a dataset of 1-D token tensors into `(window,)` rows.

    `documents` holds one document per element, or ragged `(n, None)`
    batches of documents (`tokenize_documents(..., batched=True)`).
    Documents are concatenated in order (each preceded by `start_id` and followed by
    `separator_id`, where given) and cut every `window` tokens; the tail of one document continues
    into the next row. With `pad_id`, the final partial row is kept, padded
    with `pad_id`; otherwise it is dropped. Nothing else is ever dropped.

    With `positions`, each row is a pair `(tokens, positions)`: each token's
    index in its document (its start and separator included; 0 at padding), from which
    `document_features` tells the documents of a row apart.
    """
    @tf.autograph.experimental.do_not_convert
    def join(batch):
        # A batch of documents → one stretch of the stream, separators included.
        if not isinstance(batch, tf.RaggedTensor):  # documents of one fixed length
            batch = tf.RaggedTensor.from_tensor(batch)
        def column(token_id):
            return tf.fill([batch.nrows(), 1], tf.constant(token_id, batch.dtype))

        if start_id is not None:
            batch = tf.concat([column(start_id), batch], axis=1)
        if separator_id is not None:
            batch = tf.concat([batch, column(separator_id)], axis=1)
        if positions:
            lengths = tf.cast(batch.row_lengths(), tf.int32)
            return batch.flat_values, tf.ragged.range(lengths).flat_values
        return batch.flat_values

    # The scan below then runs once per batch of documents, not once per document.
    if documents.element_spec.shape.rank != 2:
        documents = documents.ragged_batch(PACK_BATCH)
    stretches = documents.map(join)
    flagged = stretches.map(tf.autograph.experimental.do_not_convert(
        lambda *ids: (ids if positions else ids[0], False)))
    empty = tf.zeros([0], tf.int32)
    empty = (empty, empty) if positions else empty
    fill = (pad_id, 0) if positions else pad_id
    if pad_id is not None:
        # A final marker element lets the scan flush its remainder.
        flagged = flagged.concatenate(tf.data.Dataset.from_tensors((empty, True)))

    # The stream is the tokens, or with `positions` (tokens, positions): both cut alike.
    @tf.autograph.experimental.do_not_convert
    def cut(carry, element):
        tokens, is_end = element
        stream = tf.nest.map_structure(lambda old, new: tf.concat([old, new], axis=0),
                                       carry, tokens)
        if pad_id is not None:
            # At the end, pad the remainder up to a whole row (zero rows if it is empty).
            padding = (-tf.shape(tf.nest.flatten(stream)[0])[0]) % window
            stream = tf.nest.map_structure(
                lambda column, value: tf.cond(
                    is_end, lambda: tf.pad(column, [[0, padding]], constant_values=value),
                    lambda: column),
                stream, fill)
        rows = tf.shape(tf.nest.flatten(stream)[0])[0] // window
        full = tf.nest.map_structure(lambda column: tf.reshape(column[: rows * window],
                                                               [rows, window]), stream)
        return tf.nest.map_structure(lambda column: column[rows * window :], stream), full

    return flagged.scan(empty, cut).unbatch()


def document_features(positions):
    """`{"document_ids", "positions"}` `(batch, T)` of packed rows, from each token's index
    in its document (`pack_token_stream(..., positions=True)`).

    A document starts where its index is 0; `document_ids` number the documents of a row
    from its first (0 if that one began in an earlier row, else 1). Positions restart at
    each document, and at the row's start for a document continued from an earlier row,
    so they stay below `T` (a learned position table's size).
    """
    document_ids = tf.cumsum(tf.cast(positions == 0, tf.int32), axis=1)
    continued = document_ids == document_ids[:, :1]
    return {"document_ids": document_ids,
            "positions": tf.where(continued, positions - positions[:, :1], positions)}


def _documents(files, read_options, seed, repeat, input_context, stats):
    """Documents from files; files reshuffled each epoch when repeating."""
    return read_documents(
        files, stats=stats, input_context=input_context, shuffle_seed=seed if repeat else None,
        repeat=repeat, **read_options
    )


def _shuffle(rows, shuffle_buffer_size, seed):
    if shuffle_buffer_size and shuffle_buffer_size > 1:
        rows = rows.shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
    return rows


def causal_lm_batches(token_documents, tokenizer, sequence_length, batch_size, seed=0,
                      shuffle_buffer_size=1000, training=True, drop_remainder=True,
                      document_mask=False):
    """Packed next-token batches from a dataset of token tensors.

    Each row is `sequence_length + 1` consecutive tokens of the stream, the
    documents joined by the end-of-text token, each begun by the tokenizer's start token
    where it has one (an imported Llama's <s>, as Hugging Face's tokenizer writes a text); features are the first
    `sequence_length`, labels the last `sequence_length` (shifted by one).
    Weights are 1 except where the label is padding (only in the final row
    when not training), so no label ever crosses into padding.

    With `document_mask`, the features also hold `document_ids` and `positions`
    (`document_features`): the backbone then lets each token attend only within its
    document, at positions restarting per document. Labels and weights are unchanged.
    """
    separator = tokenizer.end_of_text_id
    if separator is None:
        separator = tokenizer.sep_id
    pad_id = None if training else tokenizer.pad_id
    rows = pack_token_stream(token_documents, sequence_length + 1, separator, pad_id,
                             positions=document_mask, start_id=tokenizer.start_id)
    rows = _shuffle(rows, shuffle_buffer_size if training else 0, seed)

    @tf.autograph.experimental.do_not_convert
    def split(batch, positions=None):
        labels = batch[:, 1:]
        if pad_id is None:
            weights = tf.ones_like(labels, tf.float32)
            padding_mask = tf.ones_like(batch[:, :-1])
        else:
            weights = tf.cast(labels != pad_id, tf.float32)
            padding_mask = tf.cast(batch[:, :-1] != pad_id, tf.int32)
        features = {"token_ids": batch[:, :-1], "padding_mask": padding_mask}
        if positions is not None:
            features.update(document_features(positions[:, :-1]))
        return features, labels, weights

    rows = rows.batch(batch_size, drop_remainder=drop_remainder)
    return rows.map(split, num_parallel_calls=AUTOTUNE, deterministic=True).prefetch(AUTOTUNE)


def masked_lm_batches(token_documents, tokenizer, sequence_length, batch_size, max_predictions,
                      mask_rate=0.15, whole_word_masking=False, sentence_pairs=False, seed=0,
                      shuffle_buffer_size=1000, training=True, drop_remainder=True,
                      seed_offset=0):
    """Masked-LM batches from a dataset of token tensors.

    Rows are `[CLS] tokens [SEP]` (documents in a row separated by `[SEP]`),
    or with `sentence_pairs` `[CLS] A [SEP] B [SEP]` with segment ids 0/1,
    where B is A's continuation half the time and otherwise the start of
    another (random) row, for next-sentence prediction: the labels and sample
    weights are then dicts, `{"masked_lm": (batch, P), "next_sentence": (batch,)}`,
    the next-sentence label 0 for a continuation and 1 for a random B (BERT's
    convention, so imported heads keep their meaning).

    The masks of the `i`-th row drawn depend on `(seed, seed_offset, i)`
    only: deterministic, and redrawn every epoch (rows keep counting).
    """
    missing = [name for name, value in (("[CLS]", tokenizer.cls_id), ("[SEP]", tokenizer.sep_id),
                                        ("[MASK]", tokenizer.mask_id)) if value is None]
    if missing:
        raise ValueError(
            f"Masked-LM batches need {', '.join(missing)} in the vocabulary; the "
            f"{tokenizer.kind} tokenizer has only {list(tokenizer.special_tokens)}."
        )
    pair = bool(sentence_pairs)
    body = sequence_length - (3 if pair else 2)
    if body < (2 if pair else 1):
        raise ValueError(f"sequence_length={sequence_length} is too short for masked-LM rows.")
    rows = pack_token_stream(token_documents, body, tokenizer.sep_id)
    rows = _shuffle(rows, shuffle_buffer_size if training else 0, seed)
    if pair:
        # Carry the previous row along: the random B comes from it, no second read.
        @tf.autograph.experimental.do_not_convert
        def with_previous(previous, row):
            return row, (row, previous)

        rows = rows.scan(tf.zeros([body], tf.int32), with_previous)
    rows = rows.enumerate()
    cls = tf.constant([tokenizer.cls_id], tf.int32)
    sep = tf.constant([tokenizer.sep_id], tf.int32)
    stream_seed = tf.cast(seed, tf.int64) * 1_000_003 + seed_offset

    @tf.autograph.experimental.do_not_convert
    def sentence_pair(index, element):
        row, previous = element
        draws = tf.random.stateless_uniform([2], seed=tf.stack([stream_seed, index]))
        split_at = 1 + tf.cast(draws[0] * tf.cast(body - 1, tf.float32), tf.int32)
        split_at = tf.minimum(split_at, body - 1)
        # The first row of the stream has no previous row: it is always a continuation.
        is_next = (draws[1] < 0.5) | tf.equal(index, 0)
        second = tf.where(is_next, row[split_at:], previous[: body - split_at])
        ids = tf.concat([cls, row[:split_at], sep, second, sep], axis=0)
        segments = tf.concat(
            [tf.zeros([split_at + 2], tf.int32), tf.ones([body - split_at + 1], tf.int32)], 0)
        return index, ids, segments, tf.cast(is_next, tf.int32)

    if pair:
        rows = rows.map(sentence_pair, num_parallel_calls=AUTOTUNE, deterministic=True)
    batches = rows.batch(batch_size, drop_remainder=drop_remainder)

    @tf.autograph.experimental.do_not_convert
    def mask(index, *columns):
        if pair:
            ids, segments, is_next = columns
        else:
            (body_rows,) = columns
            count = tf.shape(body_rows)[0]
            ids = tf.concat([tf.tile(cls[None], [count, 1]), body_rows,
                             tf.tile(sep[None], [count, 1])], axis=1)
            segments = tf.zeros_like(ids)
        # A whole batch at once: the masks of each row depend on (seed, its stream index).
        masked = mask_batch(
            ids, row_keys=index, seed=stream_seed, vocabulary_size=tokenizer.vocabulary_size,
            mask_id=tokenizer.mask_id, special_ids=tokenizer.special_ids,
            max_predictions=max_predictions, mask_rate=mask_rate,
            word_starts=tokenizer.word_starts(ids) if whole_word_masking else None,
        )
        features = {
            "token_ids": tf.ensure_shape(masked["token_ids"], [None, sequence_length]),
            "padding_mask": tf.ones_like(masked["token_ids"]),
            "segment_ids": tf.ensure_shape(segments, [None, sequence_length]),
            "mask_positions": tf.ensure_shape(masked["mask_positions"], [None, max_predictions]),
        }
        labels = tf.ensure_shape(masked["mask_ids"], [None, max_predictions])
        weights = tf.ensure_shape(masked["mask_weights"], [None, max_predictions])
        if pair:
            labels = {"masked_lm": labels, "next_sentence": 1 - is_next}
            weights = {"masked_lm": weights,
                       "next_sentence": tf.ones_like(is_next, dtype=weights.dtype)}
        return features, labels, weights

    batches = batches.map(mask, num_parallel_calls=AUTOTUNE, deterministic=True)
    return batches.prefetch(AUTOTUNE)


def causal_lm_dataset(files, tokenizer, sequence_length, batch_size, seed=0,
                      shuffle_buffer_size=1000, repeat=True, stats=None, input_context=None,
                      **read_options):
    """Packed next-token batches from text files (see `causal_lm_batches`).

    `repeat=True` is the training pipeline (endless, shuffled, static shapes);
    `repeat=False` reads once in order, pads the final row and keeps the
    final partial batch (evaluation sees every token).
    """
    documents = _documents(files, read_options, seed, repeat, input_context, stats)
    tokens = tokenize_documents(documents, tokenizer, stats, batched=True)
    return causal_lm_batches(tokens, tokenizer, sequence_length, batch_size, seed=seed,
                             shuffle_buffer_size=shuffle_buffer_size, training=repeat,
                             drop_remainder=repeat)


def masked_lm_dataset(files, tokenizer, sequence_length, batch_size, max_predictions,
                      mask_rate=0.15, seed=0, shuffle_buffer_size=1000, repeat=True,
                      whole_word_masking=False, sentence_pairs=False, stats=None,
                      input_context=None, **read_options):
    """Masked-LM batches from text files (see `masked_lm_batches`)."""
    documents = _documents(files, read_options, seed, repeat, input_context, stats)
    tokens = tokenize_documents(documents, tokenizer, stats, batched=True)
    offset = 0 if input_context is None else input_context.input_pipeline_id
    return masked_lm_batches(tokens, tokenizer, sequence_length, batch_size, max_predictions,
                             mask_rate=mask_rate, whole_word_masking=whole_word_masking,
                             sentence_pairs=sentence_pairs, seed=seed,
                             shuffle_buffer_size=shuffle_buffer_size, training=repeat,
                             drop_remainder=repeat, seed_offset=offset)


def held_out_mask(token_batch, every_nth):
    """Which documents of a ragged `(n, None)` batch of token ids are held out.

    A property of the document alone, a hash of its token ids: the same in every epoch,
    for any number of workers, any shard layout and any file order, and the same read from
    text or from prepared shards (same tokenizer). About one document in `every_nth` is held
    out; copies of a document all fall on the same side.
    """
    # Ids as code points: one string per document in one op (ids in the surrogate range all
    # read as U+FFFD, which only merges them for the hash).
    keys = tf.strings.unicode_encode(token_batch, "UTF-8", errors="replace")
    return tf.equal(tf.strings.to_hash_bucket_fast(keys, every_nth), 0)


def _held_out(documents, every_nth, keep_held_out):
    """The held-out documents (`keep_held_out`), or the others; see `held_out_mask`.

    `documents` holds one token tensor per element, or ragged `(n, None)`
    batches of them (`tokenize_documents(..., batched=True)`); the choice is
    the same either way.
    """
    if documents.element_spec.shape.rank == 2:
        @tf.autograph.experimental.do_not_convert
        def select(batch):
            return tf.ragged.boolean_mask(batch, held_out_mask(batch, every_nth) == keep_held_out)

        return documents.map(select, num_parallel_calls=AUTOTUNE, deterministic=True)

    @tf.autograph.experimental.do_not_convert
    def selected(document):
        return held_out_mask(tf.RaggedTensor.from_tensor(document[tf.newaxis]),
                             every_nth)[0] == keep_held_out

    return documents.filter(selected)


def split_source(data, split):
    """`(input_path, every_nth_held_out)` of a split: evaluation reads `data.eval_input_path`,
    or else about one document in `data.eval_every_nth_document` of the input (see
    `held_out_mask`), which training then leaves out."""
    if split not in ("train", "eval"):
        raise ValueError(f"split={split!r}; expected 'train' or 'eval'.")
    if split == "eval":
        if data.eval_input_path:
            return data.eval_input_path, 0
        if not data.eval_every_nth_document:
            raise ConfigError("No held-out data to evaluate on: set data.eval_input_path or "
                              "data.eval_every_nth_document.")
    elif data.eval_input_path:
        return data.input_path, 0  # evaluation has its own files: train on all of the input
    return data.input_path, data.eval_every_nth_document


def token_documents(config, tokenizer, input_context=None, stats=None, training=True,
                    split="train"):
    """The tokenized documents of a split of `config.data`, for one input pipeline.

    Text and JSONL files are read, repaired and tokenized in batches (ragged `(n, None)`
    elements); a `tflm-prepare` folder (`data.input_format=tfrecord`) gives its stored
    token documents. Evaluation reads `data.eval_input_path`, or else about one document in
    `data.eval_every_nth_document` of the input (chosen by `held_out_mask`, a property of
    the document), which training then never reads. The language-model tasks pack
    (`causal_lm_batches`) or mask (`masked_lm_batches`) them into batches.

    Raises:
        BadFileError: a training pipeline would have no documents (it would wait forever).

    Args:
        config: an `ExperimentConfig` (its `data` section and `runtime.seed`).
        tokenizer: the tokenizer of `data.tokenizer`.
        input_context: a `tf.distribute.InputContext`: the input is split across pipelines.
        stats: an `InputStats` counting skips and repairs.
        training: endless and shuffled if True; one ordered pass if False.
        split: `"train"` or `"eval"`.
    """
    data = config.data
    input_path, holdout = split_source(data, split)
    if data.input_format == "tfrecord":
        files = prepared_files(input_path, tokenizer)
    else:
        files = resolve_files(input_path)
    if training and tf.executing_eagerly():
        # An endless pipeline over no documents would wait forever: read once, up to the
        # first document, and say which inputs had none.
        check_stats = InputStats()
        once = _token_documents(config, tokenizer, files, holdout, input_context, check_stats,
                                False, split)
        if not any(_document_count(element) for element in once):
            why = (f" of the {split} split (data.eval_every_nth_document={holdout})"
                   if holdout else "")
            raise BadFileError(f"{', '.join(files)}: no documents{why} in this input pipeline "
                               f"({describe(check_stats.as_dict())}).")
    return _token_documents(config, tokenizer, files, holdout, input_context, stats, training,
                            split)


def _document_count(element):
    return int(element.nrows()) if isinstance(element, tf.RaggedTensor) else 1


def _token_documents(config, tokenizer, files, holdout, input_context, stats, training, split):
    data = config.data
    seed = config.runtime.seed
    if data.input_format == "tfrecord":
        tokens = read_prepared(files, input_context, shuffle_seed=seed if training else None,
                               repeat=training, stats=stats)
    else:
        documents = read_documents(
            files,
            input_format=data.input_format,
            document_split=data.document_split,
            delimiter=data.document_delimiter,
            text_field=data.text_field,
            stats=stats,
            input_context=input_context,
            max_document_bytes=data.max_document_bytes,
            on_bad_record=text_on_bad_record(data),
            shuffle_seed=seed if training else None,
            repeat=training,
        )
        # Batches of documents skip a per-document step; holding out needs documents.
        tokens = tokenize_documents(documents, tokenizer, stats, batched=True)
    if holdout:
        tokens = _held_out(tokens, holdout, keep_held_out=split == "eval")
    if stats is not None:
        # The counters are updated from inside the pipeline; the iterator's
        # checkpoint (data position) leaves them out instead of failing on them.
        options = tf.data.Options()
        options.experimental_external_state_policy = (
            tf.data.experimental.ExternalStatePolicy.IGNORE)
        tokens = tokens.with_options(options)
    return tokens
