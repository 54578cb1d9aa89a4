"""`seq2seq`: a target text from a source text (translation, summarization, rewriting).

Data: labelled JSONL or CSV records holding a source (`data.source_field`) and a target
(`data.target_field`), read whole as `classification` reads its records: a record missing
either string, or with either blank, is a `LabelledDataError` naming file:line, or with
`data.on_bad_record=count` is skipped and counted (`records_missing_field`); every
`data.eval_every_nth_document`-th good record is held out. One tokenizer (`data.tokenizer`)
reads both sides.

Batches (`encode_seq2seq`, in-graph), static shapes:

    encoder_token_ids     source [end]                padded to data.sequence_length
    decoder_token_ids     [start] target              padded to data.target_length
    labels                target [end]                (decoder_token_ids shifted by one)
    sample weights        1 at real target tokens, 0 at padding

`[start]` is the tokenizer's [CLS] (else its end-of-text), `[end]` its end-of-text (else
[SEP]). A side too long for its row is cut and still ends with `[end]`; cuts are not
counted (as the classifier's rows): size `data.sequence_length` and `data.target_length`
to the data.

Model: `Seq2SeqLM` on a `Seq2SeqBackbone` of the `model` keys (`model.num_decoder_layers`:
decoder blocks, 0 as many as `model.num_layers`; `model.shared_embeddings`: one token
embedding for both sides). Loss: the mean cross-entropy over the real target tokens,
with `trainer.label_smoothing`.

Evaluation: loss, perplexity of the targets, token accuracy (teacher-forced) and the token
count. Generation metrics (BLEU, ROUGE) need decoding and come with it.

Serving (`Seq2SeqLMServing`): `generate` (`serving_default`; sampling and the decoding
controls), `beam_search` and `score` (a target's log-likelihood given its source), text in
and text out.

Example:
>>> config = tflm.experiment.load_experiment("configs/tiny_seq2seq.yaml",
...                                          "data.input_path=pairs.jsonl")
>>> trainer = tflm.experiment.run_experiment(config, "runs/reverse", "train_and_eval")
>>> trainer.eval_results["perplexity"]
"""

import dataclasses

import numpy as np
import tensorflow as tf

from tflm.config import ConfigError, ranged
from tflm.data.classification import (
    AUTOTUNE,
    LABELLED_FORMATS,
    LabelledDataError,
    bad_record_handler,
    file_records,
    finish_labelled_batches,
    record_index_batches,
    records_of_split,
    text_value,
)
from tflm.errors import TflmError
from tflm.export.serving import Seq2SeqLMServing
from tflm.models.factory import build_seq2seq_backbone
from tflm.models.seq2seq_lm import Seq2SeqLM
from tflm.tasks.base import Task
from tflm.tasks.registry import build_task, register_task

# Warm-up requests of the export: a source and an empty one.
WARMUP_SOURCES = np.array([b"It is a truth universally acknowledged", b""])


# -- Config. ------------------------------------------------------------------------------------
@dataclasses.dataclass
class Seq2SeqData:
    """The `data` keys of `seq2seq` (the source row is `data.sequence_length` long)."""

    source_field: str = "source"
    target_field: str = "target"
    # Decoder positions: `[start] target` in, `target [end]` out.
    target_length: int = ranged(64, at_least=2)


@dataclasses.dataclass
class Seq2SeqModel:
    """The `model` keys of `seq2seq` (see `Seq2SeqBackbone`)."""

    num_decoder_layers: int = ranged(0, at_least=0)  # 0: as many as model.num_layers
    shared_embeddings: bool = True  # one token embedding for source, target and output


# -- Reading. -----------------------------------------------------------------------------------
@dataclasses.dataclass
class Seq2SeqRecords:
    """Source and target texts, and where each record came from ("file:line")."""

    sources: list
    targets: list
    locations: list

    def __len__(self):
        return len(self.sources)

    def select(self, keep):
        """The records at the indices `keep` (in order)."""
        return Seq2SeqRecords([self.sources[i] for i in keep], [self.targets[i] for i in keep],
                              [self.locations[i] for i in keep])


def read_pairs(files, input_format="jsonl", source_field="source", target_field="target",
               csv_delimiter=",", on_bad_record="error", stats=None):
    """Source/target records of JSONL or CSV `files`: a record needs both fields as
    non-blank strings; else a `LabelledDataError` naming file:line, or with
    `on_bad_record="count"` it is skipped and counted (`records_missing_field`)."""
    if input_format not in LABELLED_FORMATS:
        raise LabelledDataError(f"data.input_format={input_format!r}: seq2seq pairs are read "
                                f"from {' or '.join(LABELLED_FORMATS)} files.")
    bad = bad_record_handler(on_bad_record, stats)
    records = Seq2SeqRecords([], [], [])
    fields = (source_field, target_field)
    for path, number, record in file_records(files, input_format, fields, csv_delimiter, stats,
                                             bad):
        source = text_value(record, source_field, path, number, bad)
        target = None if source is None else text_value(record, target_field, path, number,
                                                        bad)
        if target is None:
            continue
        if stats is not None:
            stats.add("documents", 1)
        records.sources.append(source)
        records.targets.append(target)
        records.locations.append(f"{path}:{number}")
    return records


def seq2seq_records(config, split="train", stats=None):
    """The records of a split of `config.data` (see `records_of_split`)."""
    data = config.data
    return records_of_split(
        config, split,
        lambda files, on_bad_record: read_pairs(files, data.input_format, data.source_field,
                                                data.target_field, data.csv_delimiter,
                                                on_bad_record, stats),
        what="source/target pairs",
        fields=f"source field {data.source_field!r}, target field {data.target_field!r}")


# -- In-graph encoding. -------------------------------------------------------------------------
def seq2seq_tokens(tokenizer):
    """`(start, end)` ids: [CLS] (else end-of-text) starts a target, end-of-text (else [SEP])
    ends a source and a target."""
    end = tokenizer.end_of_text_id
    end = tokenizer.sep_id if end is None else end
    start = tokenizer.cls_id
    start = end if start is None else start
    if end is None:
        raise TflmError(f"The {tokenizer.kind} tokenizer has no end-of-text or [SEP] token to "
                        "end a seq2seq source and target.")
    return start, end


def encode_seq2seq(tokenizer, sources, targets, source_length, target_length):
    """Tokenizes and pads `(batch,)` sources and targets into `Seq2SeqLM` rows, in-graph.

    Returns:
        `(features, labels, weights)`: features `{"encoder_token_ids",
        "encoder_padding_mask"}` `(batch, source_length)` and `{"decoder_token_ids",
        "decoder_padding_mask"}` `(batch, target_length)` int32; labels (the decoder's ids
        shifted by one) int32 and weights float32 (0 at padding), `(batch, target_length)`.
    """
    start, end = seq2seq_tokens(tokenizer)

    def column(rows, token_id):
        return tf.fill([rows.nrows(), 1], tf.constant(token_id, tf.int32))

    def ids(texts, keep):
        return tf.cast(tokenizer.tokenize(texts), tf.int32).with_row_splits_dtype(tf.int64)[
            :, :keep]

    source = ids(sources, source_length - 1)
    target = ids(targets, target_length - 1)
    return seq2seq_features(tf.concat([source, column(source, end)], axis=1),
                            tf.concat([target, column(target, end)], axis=1), start,
                            tokenizer.pad_id or 0, source_length, target_length)


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


def seq2seq_batches(records, tokenizer, source_length, target_length, batch_size,
                    training=True, seed=0, input_context=None, stats=None):
    """`(features, labels, weights)` batches of `records` in the order of
    `record_index_batches` (the final evaluation batch padded with weight-0 rows).
    `stats` counts the real rows' tokens of both sides (special tokens included)."""
    sources = tf.constant(records.sources, tf.string)
    targets = tf.constant(records.targets, tf.string)
    batches = record_index_batches(len(records), batch_size, training, seed, input_context)

    def encode(index, real):
        features, labels, weights = encode_seq2seq(
            tokenizer, tf.gather(sources, index), tf.gather(targets, index), source_length,
            target_length)
        weights *= tf.sequence_mask(real, batch_size, tf.float32)[:, None]
        source_shape, target_shape = [batch_size, source_length], [batch_size, target_length]
        features = {k: tf.ensure_shape(v, source_shape if k.startswith("encoder") else
                                       target_shape) for k, v in features.items()}
        if stats is not None:
            stats.add("tokens", tf.reduce_sum(features["encoder_padding_mask"][:real])
                      + tf.reduce_sum(features["decoder_padding_mask"][:real]))
        return (features, tf.ensure_shape(labels, target_shape),
                tf.ensure_shape(weights, target_shape))

    return finish_labelled_batches(
        batches.map(encode, num_parallel_calls=AUTOTUNE, deterministic=True))


def check_seq2seq_model(config, task_name):
    """What a `Seq2SeqBackbone` does not have (yet): a `ConfigError` naming the key that sets
    it, rather than ignoring it."""
    model = config.model
    unsupported = {"model.causal": model.causal is not None,
                   "model.num_segments": model.num_segments != 0,
                   "model.pooler": model.pooler,
                   "model.final_norm": model.final_norm not in (None, model.norm_first),
                   "model.init_checkpoint": bool(model.init_checkpoint),
                   "model.finetune": model.finetune != "full",
                   "model.freeze_bottom_layers": model.freeze_bottom_layers != 0}
    for key, is_set in unsupported.items():
        if is_set:
            raise ConfigError(f"{key} is not supported by model.task={task_name!r}; leave it "
                              "at its default.")


# -- The task. ----------------------------------------------------------------------------------
@register_task
class Seq2SeqTask(Task):
    """Sequence-to-sequence generation (a `Seq2SeqLM`)."""

    name = "seq2seq"
    model_class = Seq2SeqLM
    causal = False  # the encoder's direction; the decoder is causal by construction
    config_keys = {"data": Seq2SeqData, "model": Seq2SeqModel}

    @classmethod
    def validate(cls, config):
        model, data = config.model, config.data
        if data.input_format not in LABELLED_FORMATS:
            raise ConfigError(f"data.input_format={data.input_format!r}: seq2seq reads "
                              "source/target pairs from 'jsonl' or 'csv' files.")
        if not data.input_path:
            raise ConfigError("model.task='seq2seq' needs data.input_path (JSONL or CSV files "
                              "with data.source_field and data.target_field).")
        if data.sequence_length < 2:
            raise ConfigError(f"data.sequence_length={data.sequence_length}: a seq2seq source "
                              "row needs at least 2 (a token and [end]).")
        if data.target_length > model.max_sequence_length:
            raise ConfigError(f"data.target_length={data.target_length} exceeds "
                              f"model.max_sequence_length={model.max_sequence_length}.")
        if data.source_field == data.target_field:
            raise ConfigError(f"data.source_field and data.target_field are both "
                              f"{data.source_field!r}.")
        check_seq2seq_model(config, cls.name)

    @classmethod
    def create_backbone(cls, model_config, dtype=None):
        return build_seq2seq_backbone(model_config, dtype=dtype)

    def build_model(self, dtype=None, source=None, print_fn=None):
        # No init_checkpoint and no fine-tuning modes yet (`validate` refuses them).
        del source, print_fn
        return build_task(self.config.model, dtype=dtype)

    def batches(self, tokenizer, batch_size, input_context, stats, training, split):
        config = self.config
        records = seq2seq_records(config, split, stats)
        return seq2seq_batches(records, tokenizer, config.data.sequence_length,
                               config.data.target_length, batch_size, training=training,
                               seed=config.runtime.seed, input_context=input_context,
                               stats=stats)

    # Evaluation: `Task.eval_sums` / `eval_report` (loss, perplexity, token accuracy).

    # -- Serving. ---------------------------------------------------------------------------
    @classmethod
    def serving_module(cls, model, tokenizer, options):
        return Seq2SeqLMServing(model, tokenizer, num_beams=options.num_beams,
                                jit_compile=options.jit_compile)

    @classmethod
    def warmup_inputs(cls, module):
        plain = {"sources": WARMUP_SOURCES, "max_new_tokens": np.int32(4),
                 "temperature": np.float32(0.0), "top_k": np.int32(0), "top_p": np.float32(1.0),
                 "seed": np.int64(0), "repetition_penalty": np.float32(1.0),
                 "no_repeat_ngram_size": np.int32(0), "min_new_tokens": np.int32(0),
                 "stop_token_ids": np.zeros([0], np.int32), "num_return_sequences": np.int32(1)}
        controls = dict(plain, temperature=np.float32(0.7), top_k=np.int32(20),
                        top_p=np.float32(0.9), repetition_penalty=np.float32(1.2),
                        no_repeat_ngram_size=np.int32(2), min_new_tokens=np.int32(1),
                        stop_token_ids=np.array([module.end_id], np.int32),
                        num_return_sequences=np.int32(2))
        return [
            ("generate", plain),
            ("generate", controls),
            ("beam_search", {"sources": WARMUP_SOURCES, "max_new_tokens": np.int32(4),
                             "length_penalty": np.float32(0.6)}),
            ("score", {"sources": WARMUP_SOURCES, "targets": np.array([b"truth", b""])}),
        ]
