"""`sentence_embedding`: one L2-normalised vector per text, trained contrastively.

Model: `SentenceEmbedder`, a backbone and a pooling (mean over real tokens by default).
Loss: InfoNCE with in-batch negatives over the GLOBAL batch: each text's partner must
win a softmax over every partner of the batch, with `logits = a . b^T / temperature`;
under a tf.distribute strategy each replica gathers the others' partners
(`ReplicaContext.all_gather`, whose gradient sums the replicas' contributions), so two
replicas of 4 rows train exactly as one of 8.

Data (`data.contrastive_mode`):
- `unsupervised` (SimCSE): each text of `data.text_field` (and of `data.text_pair_field`,
  if set) is its own partner; the two views differ by dropout (`model.dropout`), so the
  pair runs through the backbone twice;
- `supervised`: the partner of `data.text_field` is `data.text_pair_field` (a translation,
  a paraphrase, an answer).
Labelled-data files: JSONL or CSV, bad records naming file:line (`data.on_bad_record`).

Evaluation (`tflm-eval`): the in-batch loss (summed per batch, as training sees it) and
retrieval over ALL held-out pairs: every text and partner is embedded (by the host, in
`eval_report`, which the trainer calls with the model once the summed loss is in), and
recall@1 and @10 say how often a text's own partner is among its 1 or 10 nearest
partners by cosine similarity. Under unsupervised training the held-out pairs are the
`data.text_pair_field` pairs when set, else each text with itself.

Serving: `encode`: text -> `embedding` (float32, L2-normalised), `truncated`.

A Hugging Face sentence-transformers folder, converted (`convert_checkpoint` records its
`1_Pooling` and `Normalize` modules in conversion.json), serves the embedding the folder
defines when a `sentence_embedding` model starts from it (`model.init_checkpoint`):
`model.embedding_pooling` unset takes the folder's pooling (mean for all-MiniLM-L6-v2).

Example:
>>> config = tflm.experiment.load_experiment("configs/sentence_embedding_en_zh.yaml")
>>> trainer = tflm.experiment.run_experiment(config, "runs/en_zh", mode="train_and_eval")
>>> trainer.eval_results["recall_at_1"]
"""

import dataclasses
import json
import os

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tflm.config import ConfigError, ranged
from tflm.data.classification import (
    LabelledDataError,
    LabelledRecords,
    bad_record_handler,
    encode_classification,
    file_records,
    finish_labelled_batches,
    record_index_batches,
    records_of_split,
    text_value,
)
from tflm.export.serving import STRINGS, unless_empty
from tflm.models.losses import WeightedSumLoss
from tflm.models.task import Task as TaskModel
from tflm.tasks.base import Task
from tflm.tasks.causal_lm import WARMUP_TEXT
from tflm.tasks.registry import architecture_value, register_task

POOLINGS = ("mean", "first", "last", "pooled")
MODES = ("unsupervised", "supervised")
# sentence-transformers `1_Pooling/config.json` modes that tflm computes, as tflm poolings.
SENTENCE_TRANSFORMERS_POOLINGS = {"mean": "mean", "cls": "first", "lasttoken": "last"}
CONVERSION_FILE = "conversion.json"
PAIR_PREFIX = "pair_"
FEATURES = ("token_ids", "padding_mask", "segment_ids")


# -- Config keys. ------------------------------------------------------------------------------
@dataclasses.dataclass
class SentenceEmbeddingModel:
    """`model` keys of the sentence_embedding task."""

    # mean | first ([CLS]) | last (last real token) | pooled (the backbone's tanh pooler);
    # "": the pooling of model.init_checkpoint's sentence-transformers folder, else mean.
    embedding_pooling: str = ""
    temperature: float = ranged(0.05, above=0)  # the softmax temperature of the in-batch logits


@dataclasses.dataclass
class SentenceEmbeddingData:
    """`data` keys of the sentence_embedding task."""

    contrastive_mode: str = "unsupervised"  # unsupervised (SimCSE) | supervised (text pairs)


def checkpoint_pooling(path):
    """The tflm pooling of a converted sentence-transformers folder at `path` (its
    conversion.json), or None when `path` records none."""
    if not path or not tf.io.gfile.exists(os.path.join(path, CONVERSION_FILE)):
        return None
    with tf.io.gfile.GFile(os.path.join(path, CONVERSION_FILE)) as f:
        modules = json.load(f).get("sentence_transformers")
    if not modules:
        return None
    mode = modules.get("pooling")
    if mode not in SENTENCE_TRANSFORMERS_POOLINGS:
        raise ConfigError(
            f"model.init_checkpoint={path!r} pools with sentence-transformers' {mode!r}, which "
            f"tflm does not compute ({sorted(SENTENCE_TRANSFORMERS_POOLINGS)}): set "
            "model.embedding_pooling to use another.")
    return SENTENCE_TRANSFORMERS_POOLINGS[mode]


# -- Loss. -------------------------------------------------------------------------------------
def contrastive_sums(labels, outputs, weights, temperature):
    """`(sum of w * InfoNCE, sum of w)` of a batch of `(text, partner)` embeddings.

    Args:
        labels: `(batch,)` each row's index in its batch (its partner is the same row
            of `outputs[:, 1]`); the loss places partners by position, so a batch split
            between replicas keeps them right.
        outputs: `(batch, 2, dim)` L2-normalised embeddings of the texts and partners.
        weights: `(batch,)`; a weight-0 row (evaluation padding) neither counts nor serves
            as a negative.
        temperature: the logits are cosine similarities divided by it.

    Under a strategy with several replicas the partners of every replica are gathered
    (the negatives of the global batch); `all_gather`'s gradient adds each replica's
    loss gradient for this replica's partners, so the summed gradients equal one
    replica's on the global batch.
    """
    del labels
    outputs = tf.cast(outputs, tf.float32)
    weights = tf.cast(weights, tf.float32)
    texts, partners = outputs[:, 0], outputs[:, 1]
    context = tf.distribute.get_replica_context()
    offset = 0
    all_partners, all_weights = partners, weights
    if context is not None and context.num_replicas_in_sync > 1:
        all_partners = context.all_gather(partners, axis=0)
        all_weights = context.all_gather(tf.stop_gradient(weights), axis=0)
        sizes = context.all_gather(tf.shape(texts)[:1], axis=0)
        offset = tf.reduce_sum(sizes[:context.replica_id_in_sync_group])
    logits = tf.matmul(texts, all_partners, transpose_b=True) / temperature
    logits = tf.where(all_weights[None, :] > 0, logits, -1e9)
    targets = offset + tf.range(tf.shape(texts)[0])
    nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    return tf.reduce_sum(nll * weights), tf.reduce_sum(weights)


@keras.saving.register_keras_serializable(package="tflm")
class ContrastiveLoss(WeightedSumLoss):
    """`contrastive_sums` as a Keras loss for `model.fit`: the mean InfoNCE over the rows
    that carry weight (the trainer divides the same sums by the global batch's weight)."""

    per_example = True

    def __init__(self, temperature=0.05, name="contrastive", **kwargs):
        super().__init__(name=name, **kwargs)
        self.temperature = float(temperature)

    def sums(self, y_true, y_pred, sample_weight):
        return contrastive_sums(y_true, y_pred, sample_weight, self.temperature)

    def get_config(self):
        return {"temperature": self.temperature, "name": self.name}


# -- Model. ------------------------------------------------------------------------------------
def _side(inputs, prefix=""):
    return {name: inputs[prefix + name] for name in FEATURES if prefix + name in inputs}


@keras.saving.register_keras_serializable(package="tflm")
class SentenceEmbedder(TaskModel):
    """Embeds each text as one L2-normalised float32 vector.

    Features: `{"token_ids", "padding_mask", "segment_ids" (optional)}` -> `(batch, dim)`
    embeddings; with the partner's `pair_token_ids`, `pair_padding_mask` (and
    `pair_segment_ids`) too -> `(batch, 2, dim)`: each text's and its partner's, the
    two run through the backbone separately (two dropout masks for the same text).
    Labels: each row's index in the batch. Loss: `contrastive_sums`.

    Args:
        backbone: a `TransformerBackbone`.
        pooling: "mean" over real tokens, "first" ([CLS]), "last" (last real token) or
            "pooled" (the backbone's tanh pooler).
        temperature: the softmax temperature of the loss.

    Example:
    >>> backbone = TransformerBackbone(vocabulary_size=100, num_layers=2, num_heads=2,
    ...     hidden_dim=32, intermediate_dim=64, max_sequence_length=64)
    >>> model = SentenceEmbedder(backbone)
    >>> x = {"token_ids": keras.ops.ones((4, 16), "int32"), "padding_mask": keras.ops.ones((4, 16)),
    ...      "pair_token_ids": keras.ops.ones((4, 16), "int32"),
    ...      "pair_padding_mask": keras.ops.ones((4, 16))}
    >>> history = model.fit(x, keras.ops.arange(4), verbose=0)
    """

    default_learning_rate = 5e-5

    def __init__(self, backbone, pooling="mean", temperature=0.05, **kwargs):
        super().__init__(backbone, **kwargs)
        if pooling not in POOLINGS:
            raise ValueError(f"Unknown pooling {pooling!r}; expected one of {POOLINGS}.")
        if pooling == "pooled" and not backbone.pooler:
            raise ValueError('pooling="pooled" needs a backbone built with pooler=True.')
        if not temperature > 0:
            raise ValueError(f"temperature={temperature}; expected > 0.")
        self.pooling = pooling
        self.temperature = float(temperature)
        self._finish_init()

    def compile(self, optimizer="auto", loss="auto", weighted_metrics="auto", **kwargs):
        # No accuracy: the outputs are embeddings, not class scores.
        if weighted_metrics == "auto":
            weighted_metrics = None
        super().compile(optimizer=optimizer, loss=loss, weighted_metrics=weighted_metrics,
                        **kwargs)

    def embed(self, features, training=None):
        """`(batch, dim)` float32 L2-normalised embeddings of one side's features."""
        backbone_training = training if self.backbone.trainable else False
        outputs = self.backbone(features, training=backbone_training)
        if self.pooling == "pooled":
            pooled = ops.cast(outputs["pooled_output"], "float32")
        else:
            hidden = ops.cast(outputs["sequence_output"], "float32")
            mask = features.get("padding_mask")
            mask = ops.ones_like(features["token_ids"]) if mask is None else mask
            mask = ops.cast(mask, "float32")
            if self.pooling == "first":
                pooled = hidden[:, 0, :]
            elif self.pooling == "mean":
                pooled = ops.sum(hidden * mask[:, :, None], axis=1) / ops.maximum(
                    ops.sum(mask, axis=1, keepdims=True), 1.0)
            else:
                last = ops.maximum(ops.cast(ops.sum(mask, axis=1), "int32") - 1, 0)
                pooled = ops.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0, :]
        # The same epsilon as torch.nn.functional.normalize (sentence-transformers).
        norm = ops.sqrt(ops.sum(ops.square(pooled), axis=-1, keepdims=True))
        return pooled / ops.maximum(norm, 1e-12)

    def call(self, inputs, training=None):
        texts = self.embed(_side(inputs), training=training)
        if PAIR_PREFIX + "token_ids" not in inputs:
            return texts
        partners = self.embed(_side(inputs, PAIR_PREFIX), training=training)
        return ops.stack([texts, partners], axis=1)

    def loss_sums(self, labels, outputs, weights, label_smoothing=0.0):
        del label_smoothing
        return contrastive_sums(labels, outputs, weights, self.temperature)

    def default_loss(self):
        return ContrastiveLoss(self.temperature)

    def get_config(self):
        config = super().get_config()
        config.update({"pooling": self.pooling, "temperature": self.temperature})
        return config


# -- Data. -------------------------------------------------------------------------------------
def read_text_pairs(files, input_format="jsonl", text_field="text", text_pair_field="",
                    csv_delimiter=",", on_bad_record="error", stats=None):
    """Texts (and partners, with `text_pair_field`) of JSONL or CSV files.

    A record needs non-empty strings in its fields; a bad record is a
    `LabelledDataError` naming `file:line`, or with `on_bad_record="count"` is
    skipped and counted (`records_missing_field`).

    Returns:
        `LabelledRecords` (labels unused: empty strings).
    """
    if input_format not in ("jsonl", "csv"):
        raise LabelledDataError(f"data.input_format={input_format!r}: sentence_embedding reads "
                                "'jsonl' or 'csv' files.")
    texts, pairs, locations = [], [], []
    bad = bad_record_handler(on_bad_record, stats)
    fields = [f for f in (text_field, text_pair_field) if f]
    for path, number, record in file_records(files, input_format, fields, csv_delimiter, stats,
                                             bad):
        values = [text_value(record, field, path, number, bad) for field in fields[:1]]
        if values[0] is not None and text_pair_field:
            values.append(text_value(record, text_pair_field, path, number, bad))
        if None in values:
            continue
        if stats is not None:
            stats.add("documents", 1)
        texts.append(values[0])
        if text_pair_field:
            pairs.append(values[1])
        locations.append(f"{path}:{number}")
    return LabelledRecords(texts, pairs if text_pair_field else None, [""] * len(texts),
                           locations)


def pair_records(config, split="train", stats=None):
    """The records of a split of `config.data` (every n-th held out, as classification)."""
    data = config.data
    return records_of_split(config, split, lambda files, on_bad_record: read_text_pairs(
        files, data.input_format, data.text_field, data.text_pair_field, data.csv_delimiter,
        on_bad_record, stats), what="records")


def training_pairs(config, records, split):
    """`(texts, partners)`: the pairs the loss sees (unsupervised: each text with itself)."""
    if config.data.contrastive_mode == "supervised":
        return records.texts, records.pairs
    if split == "eval" and records.pairs is not None:
        return records.texts, records.pairs  # retrieval of the partner, as supervised
    texts = records.texts + (records.pairs or [])
    return texts, texts


def pair_batches(texts, partners, tokenizer, sequence_length, batch_size, causal=False,
                 training=True, seed=0, input_context=None, stats=None):
    """Batches of `(features, row indices, weights)` for `SentenceEmbedder`.

    `features` holds both sides (`token_ids`, ..., `pair_token_ids`, ...), each a
    `[CLS] text [SEP]` row (`encode_classification`, as `encode` serves), in the order of
    `tflm.data.classification.record_index_batches` (the final evaluation batch padded
    with weight-0 rows).
    """
    same = partners is texts
    texts = tf.constant(list(texts), tf.string)
    partner_values = texts if same else tf.constant(list(partners), tf.string)
    batches = record_index_batches(int(texts.shape[0]), batch_size, training, seed, input_context)

    def encode_side(values):
        features, _ = encode_classification(tokenizer, values, None, sequence_length, causal)
        return {k: tf.ensure_shape(v, [batch_size, sequence_length]) for k, v in features.items()}

    @tf.autograph.experimental.do_not_convert
    def encode(index, real):
        weights = tf.sequence_mask(real, batch_size, tf.float32)
        features = encode_side(tf.gather(texts, index))
        # Unsupervised: the same rows twice; the views differ by dropout only.
        second = features if same else encode_side(tf.gather(partner_values, index))
        features.update({PAIR_PREFIX + k: v for k, v in second.items()})
        if stats is not None:
            real_rows = tf.cast(features["padding_mask"], tf.int64)[:real]
            stats.add("tokens", tf.reduce_sum(real_rows))
        return features, tf.range(batch_size, dtype=tf.int32), tf.ensure_shape(weights,
                                                                                 [batch_size])

    return finish_labelled_batches(
        batches.map(encode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))


# -- Evaluation. -------------------------------------------------------------------------------
def retrieval_recall(queries, keys, ks=(1, 10)):
    """Recall@k of each query's own key (row i of `keys`) among all keys, by cosine
    similarity: the fraction of queries whose key is among their k most similar (a tie
    with the key counts for it). Returns {k: recall}."""
    queries = np.asarray(queries, np.float64)
    keys = np.asarray(keys, np.float64)
    queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    keys = keys / np.maximum(np.linalg.norm(keys, axis=1, keepdims=True), 1e-12)
    similarity = queries @ keys.T
    own = np.diag(similarity)
    rank = (similarity > own[:, None]).sum(axis=1)  # keys strictly closer than its own
    return {k: float(np.mean(rank < k)) for k in ks}


def embed_pairs(model, dataset):
    """`(texts, partners)` float32 embeddings of every weighted row of `dataset`."""
    embed = tf.function(lambda features: model(features, training=False))
    texts, partners = [], []
    for features, _, weights in dataset:
        outputs = embed(features).numpy()
        keep = weights.numpy() > 0
        texts.append(outputs[keep, 0])
        partners.append(outputs[keep, 1])
    return np.concatenate(texts), np.concatenate(partners)


# -- The task. ---------------------------------------------------------------------------------
@register_task
class SentenceEmbeddingTask(Task):
    """Contrastive sentence embeddings (a `SentenceEmbedder`)."""

    name = "sentence_embedding"
    model_class = SentenceEmbedder
    causal = False
    cross_replica_loss = True  # the negatives come from every replica
    distillable = False  # embeddings, not a distribution
    config_keys = {"model": SentenceEmbeddingModel, "data": SentenceEmbeddingData}

    @classmethod
    def validate(cls, config):
        model, data = config.model, config.data
        if data.contrastive_mode not in MODES:
            raise ConfigError(f"data.contrastive_mode={data.contrastive_mode!r} is not one of "
                              f"{MODES}.")
        if data.contrastive_mode == "supervised" and not data.text_pair_field:
            raise ConfigError("data.contrastive_mode='supervised' needs data.text_pair_field "
                              "(the field of each text's partner).")
        if data.sequence_length < 3:
            raise ConfigError(f"data.sequence_length={data.sequence_length}: a row needs at "
                              "least 3.")
        if data.global_batch_size < 2:
            raise ConfigError(f"data.global_batch_size={data.global_batch_size}: in-batch "
                              "negatives need at least 2 rows.")
        if not model.embedding_pooling:
            # Resolved once, into the config: params.yaml then carries it.
            model.embedding_pooling = checkpoint_pooling(model.init_checkpoint) or "mean"
        if model.embedding_pooling not in POOLINGS:
            raise ConfigError(f"model.embedding_pooling={model.embedding_pooling!r} is not one "
                              f"of {POOLINGS}.")
        if model.embedding_pooling == "pooled" and not model.pooler:
            raise ConfigError("model.embedding_pooling='pooled' needs model.pooler=true.")

    @classmethod
    def create_model(cls, model_config, backbone, label_names=None):
        del label_names
        return SentenceEmbedder(backbone, pooling=model_config.embedding_pooling or "mean",
                                temperature=model_config.temperature)

    @classmethod
    def describe_model(cls, model, experiment):
        experiment.model.embedding_pooling = model.pooling
        experiment.model.temperature = model.temperature

    @classmethod
    def from_sentence_transformers(cls, backbone, modules):
        """The `SentenceEmbedder` a sentence-transformers folder defines (its pooling, see
        `tflm.tasks.pretrained.sentence_transformers_modules`), or None if tflm does not
        compute that pooling. tflm's embeddings are always L2-normalised."""
        pooling = SENTENCE_TRANSFORMERS_POOLINGS.get(modules.get("pooling"))
        return None if pooling is None else SentenceEmbedder(backbone, pooling=pooling)

    def batches(self, tokenizer, batch_size, input_context, stats, training, split):
        config = self.config
        # Checked where the data is read: a converted checkpoint's model_dir, loaded to
        # export or to start another task from, has no training data of its own.
        if config.data.input_format not in ("jsonl", "csv"):
            raise ConfigError(f"data.input_format={config.data.input_format!r}: "
                              "sentence_embedding reads 'jsonl' or 'csv' files.")
        if not config.data.input_path:
            raise ConfigError("model.task='sentence_embedding' needs data.input_path (JSONL or "
                              "CSV files).")
        records = pair_records(config, split, stats)
        texts, partners = training_pairs(config, records, split)
        return pair_batches(texts, partners, tokenizer, config.data.sequence_length, batch_size,
                            causal=architecture_value(config.model, "causal"), training=training,
                            seed=config.runtime.seed, input_context=input_context, stats=stats)

    def eval_sums(self, model, labels, outputs, weights):
        loss_sum, weight_sum = model.loss_sums(labels, outputs, weights)
        return tf.stack([loss_sum, weight_sum])

    def eval_report(self, model, totals):
        """The summed in-batch loss, and recall@1/@10 over all held-out pairs: this host
        embeds every pair once more (one ordered pass of the eval split)."""
        loss_sum, weight = totals[:2]
        dataset = self.dataset(training=False, split="eval")
        texts, partners = embed_pairs(model, dataset)
        recall = retrieval_recall(texts, partners, ks=(1, 10))
        return {"loss": float(loss_sum / weight), "recall_at_1": recall[1],
                "recall_at_10": recall[10], "pairs": int(len(texts))}

    @classmethod
    def serving_module(cls, model, tokenizer, options):
        return SentenceEmbeddingServing(model, tokenizer, sequence_length=options.sequence_length)

    @classmethod
    def warmup_inputs(cls, module):
        return [("encode", {"text": WARMUP_TEXT})]


# -- Serving. ----------------------------------------------------------------------------------
class SentenceEmbeddingServing(tf.Module):
    """`encode`: text -> `embedding` (float32, L2-normalised), `truncated`.

    Rows are built as in training (`encode_classification`); a text longer than
    `sequence_length` (default: the model's positions) keeps its start and says so.
    An empty text is valid (its row is `[CLS] [SEP]`); an empty batch gives no rows.
    """

    def __init__(self, model, tokenizer, sequence_length=None, name="sentence_embedding_serving"):
        super().__init__(name=name)
        self.model = model
        self.tokenizer = tokenizer
        self.causal = bool(model.backbone.causal)
        self.max_length = int(min(sequence_length or model.backbone.max_sequence_length,
                                  model.backbone.max_sequence_length))

    @tf.function(input_signature=[STRINGS])
    def encode(self, text):
        """The embedding of each text."""
        features, truncated = encode_classification(self.tokenizer, text, None, self.max_length,
                                                    self.causal, pad_to_length=False)
        width = self.model.backbone.hidden_dim
        embedding = unless_empty(tf.size(text),
                                  lambda: self.model.embed(features, training=False),
                                  lambda: tf.zeros([0, width]))
        return {"embedding": embedding, "truncated": truncated}

    def signatures(self):
        encode = self.encode.get_concrete_function()
        return {"serving_default": encode, "encode": encode}
