"""How an encoder-decoder reads text: the one definition of its rows, for training
(`tflm.tasks.seq2seq`), `generate` and the serving signatures.

    encoder row     source [end]          cut to the source length, [end] kept
    decoder input   [start] target
    labels          target [end]

`[start]` is the target tokenizer's [CLS] or <s> (else its pad token, as T5 starts; else
its end-of-text), `[end]` its end-of-text (else [SEP] or </s>). A model trained on two
languages may read them with two tokenizers (a `TokenizerPair`): sources with `.source`,
targets with `.target`.

Example:
>>> rows, cut = source_rows(tokenizer, tf.constant(["Hello."]), source_length=64)
"""

import tensorflow as tf

from tflm.errors import TflmError


def seq2seq_tokens(tokenizer):
    """`(start, end)` ids: [CLS] (or <s>; else the pad token, T5's decoder start; else
    end-of-text) starts a target, end-of-text (else [SEP] or </s>) ends a source and a
    target."""
    end = tokenizer.end_of_text_id
    end = tokenizer.sep_id if end is None else end
    if end is None:
        raise TflmError(f"The {tokenizer.kind} tokenizer has no end-of-text or [SEP] token to "
                        "end a seq2seq source and target.")
    start = next((i for i in (tokenizer.cls_id, tokenizer.pad_id, end) if i is not None))
    return start, end


def sides(tokenizer):
    """`(source, target)` tokenizers of a `TokenizerPair`, or one tokenizer twice."""
    return getattr(tokenizer, "source", tokenizer), getattr(tokenizer, "target", tokenizer)


def source_rows(tokenizer, sources, source_length):
    """Ragged `(batch, None)` int32 encoder rows `source [end]` of `(batch,)` source texts,
    cut to `source_length`, and a bool per row: whether it was cut. `tokenizer`: the source
    side's (`sides`)."""
    return ended_rows(tokenizer, sources, source_length, seq2seq_tokens(tokenizer)[1])


def ended_rows(tokenizer, texts, length, end):
    """Ragged `(batch, None)` int32 rows `text [end]` of `(batch,)` texts, cut to `length`
    tokens ([end] included), and a bool per row: whether it was cut."""
    ids = tf.cast(tokenizer.tokenize(texts), tf.int32).with_row_splits_dtype(tf.int64)
    cut = ids.row_lengths() > length - 1
    ids = ids[:, :length - 1]
    return tf.concat([ids, tf.fill([ids.nrows(), 1], tf.constant(end, tf.int32))], axis=1), cut


def seq2seq_features(sources, targets, start_id, pad_id, source_length, target_length):
    """`(features, labels, weights)` of ragged `(batch, None)` int32 rows: `sources` (the
    encoder's rows, their `[end]` included) and `targets` (`target [end]`, the labels; the
    decoder reads `[start] target`). Rows must fit their lengths (`to_tensor` cuts); a length
    None pads to the longest row."""
    def dense(rows, length):
        shape = [None, length]
        return (rows.to_tensor(default_value=pad_id, shape=shape),
                tf.ones_like(rows).to_tensor(shape=shape))

    start = tf.fill([targets.nrows(), 1], tf.constant(start_id, tf.int32))
    # [start] target [end]: the decoder reads all but the last, predicts all but the first.
    target = tf.concat([tf.RaggedTensor.from_tensor(start), targets], axis=1)
    encoder_ids, encoder_mask = dense(sources, source_length)
    decoder_ids, decoder_mask = dense(target[:, :-1], target_length)
    labels, _ = dense(target[:, 1:], target_length)
    features = {"encoder_token_ids": encoder_ids, "encoder_padding_mask": encoder_mask,
                "decoder_token_ids": decoder_ids, "decoder_padding_mask": decoder_mask}
    return features, labels, tf.cast(decoder_mask, tf.float32)
