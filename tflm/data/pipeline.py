"""tf.data pipelines: text files → packed causal-LM or masked-LM batches.

Every step is a TF op (read, tokenize, pack, mask, batch), so the pipeline
runs in parallel with training and its tokenizer can go into a SavedModel.
Batches are `(features, labels, sample_weight)` tuples that `model.fit` and
the trainer both consume.
"""

import tensorflow as tf

from tflm.data.masking import mask_tokens

AUTOTUNE = tf.data.AUTOTUNE


def pack_token_stream(documents, window):
    """Packs a dataset of 1-D token tensors into `(window,)` rows, no padding.

    Documents are concatenated in order and cut every `window` tokens; the
    tail of one document continues into the next row. Only the final partial
    row of the whole stream is dropped.
    """

    def cut(carry, tokens):
        stream = tf.concat([carry, tokens], axis=0)
        rows = tf.shape(stream)[0] // window
        full = tf.reshape(stream[: rows * window], [rows, window])
        return stream[rows * window :], full

    return documents.scan(tf.zeros([0], tf.int32), cut).unbatch()


def read_documents(files, tokenizer, end_of_text=True):
    """One document per file, tokenized, optionally followed by the end-of-text id."""
    documents = tf.data.Dataset.from_tensor_slices(list(files)).map(
        tf.io.read_file, num_parallel_calls=AUTOTUNE, deterministic=True
    )

    def tokenize(text):
        ids = tokenizer.tokenize(text)
        if end_of_text:
            ids = tf.concat([ids, [tokenizer.end_of_text_id]], axis=0)
        return ids

    return documents.map(tokenize, num_parallel_calls=AUTOTUNE, deterministic=True)


def _shuffle_repeat(dataset, shuffle_buffer_size, seed, repeat):
    if shuffle_buffer_size and shuffle_buffer_size > 1:
        dataset = dataset.shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
    return dataset.repeat() if repeat else dataset


def causal_lm_dataset(
    files,
    tokenizer,
    sequence_length,
    batch_size,
    seed=0,
    shuffle_buffer_size=1000,
    repeat=True,
):
    """Packed next-token batches.

    Each row is `sequence_length + 1` consecutive tokens of the stream;
    features are the first `sequence_length`, labels the last
    `sequence_length` (shifted by one), weights all 1 (packing leaves no padding).
    """
    rows = pack_token_stream(read_documents(files, tokenizer), sequence_length + 1)
    rows = _shuffle_repeat(rows, shuffle_buffer_size, seed, repeat)

    def split(batch):
        features = {
            "token_ids": batch[:, :-1],
            "padding_mask": tf.ones_like(batch[:, :-1]),
        }
        return features, batch[:, 1:], tf.ones_like(batch[:, 1:], tf.float32)

    return rows.batch(batch_size, drop_remainder=True).map(split).prefetch(AUTOTUNE)


def masked_lm_dataset(
    files,
    tokenizer,
    sequence_length,
    batch_size,
    max_predictions,
    mask_rate=0.15,
    seed=0,
    shuffle_buffer_size=1000,
    repeat=True,
):
    """Masked-LM batches: `[CLS] segment [SEP]` rows, masks redrawn each epoch.

    Features: `token_ids`, `padding_mask`, `segment_ids`, `mask_positions`;
    labels: `mask_ids`; weights: `mask_weights`. The mask of the `i`-th row
    drawn from the repeated dataset depends on `(seed, i)` only.
    """
    rows = pack_token_stream(read_documents(files, tokenizer, end_of_text=False), sequence_length - 2)
    rows = _shuffle_repeat(rows, shuffle_buffer_size, seed, repeat).enumerate()

    def mask(index, row):
        ids = tf.concat([[tokenizer.cls_id], row, [tokenizer.sep_id]], axis=0)
        masked = mask_tokens(
            ids,
            seed=tf.stack([tf.cast(seed, tf.int64), index]),
            vocabulary_size=tokenizer.vocabulary_size,
            mask_id=tokenizer.mask_id,
            special_ids=tokenizer.special_ids,
            max_predictions=max_predictions,
            mask_rate=mask_rate,
        )
        features = {
            "token_ids": tf.ensure_shape(masked["token_ids"], [sequence_length]),
            "padding_mask": tf.ones([sequence_length], tf.int32),
            "segment_ids": tf.zeros([sequence_length], tf.int32),
            "mask_positions": tf.ensure_shape(masked["mask_positions"], [max_predictions]),
        }
        return (
            features,
            tf.ensure_shape(masked["mask_ids"], [max_predictions]),
            tf.ensure_shape(masked["mask_weights"], [max_predictions]),
        )

    rows = rows.map(mask, num_parallel_calls=AUTOTUNE, deterministic=True)
    return rows.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def classification_dataset(
    texts,
    labels,
    tokenizer,
    sequence_length,
    batch_size,
    seed=0,
    shuffle_buffer_size=0,
    repeat=False,
    drop_remainder=False,
):
    """`[CLS] text [SEP]` rows, truncated and padded to `sequence_length`, with labels."""
    rows = tf.data.Dataset.from_tensor_slices((list(texts), list(labels)))
    rows = _shuffle_repeat(rows, shuffle_buffer_size, seed, repeat)

    def encode(text_batch, label_batch):
        ids = tokenizer.tokenize(text_batch)[:, : sequence_length - 2]
        batch = tf.shape(text_batch)[0]
        cls = tf.fill([batch, 1], tokenizer.cls_id)
        sep = tf.fill([batch, 1], tokenizer.sep_id)
        ids = tf.concat([cls, ids, sep], axis=1)
        token_ids = ids.to_tensor(default_value=tokenizer.pad_id, shape=[None, sequence_length])
        padding_mask = tf.ones_like(ids).to_tensor(shape=[None, sequence_length])
        features = {
            "token_ids": token_ids,
            "padding_mask": padding_mask,
            "segment_ids": tf.zeros_like(token_ids),
        }
        return features, label_batch

    rows = rows.batch(batch_size, drop_remainder=drop_remainder)
    return rows.map(encode, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
