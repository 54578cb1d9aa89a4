"""`regression`: one real number per text (or text pair): a score, a rating, a confidence.

Data: labelled JSONL or CSV as for `classification` (`data.text_field`, optional
`data.text_pair_field`); the target is `data.label_field`, a number (a JSON number or a
numeric string: a CSV's fields are strings). A target that is not a finite number, or an
empty text, is a `LabelledDataError` naming file:line; with `data.on_bad_record=count`
the record is skipped and counted (`records_missing_field`, `empty_documents_skipped`)
before the held-out split is taken, as `read_labelled` does with its own bad records.
Rows are the classifier's (`encode_classification`), so serving sees what training saw.

Model: `SequenceRegressor`, the classifier's pooling and one linear output,
`target_mean + target_scale * dense(pooled)`. `model.target_mean` and
`model.target_scale` default to the training targets' mean and standard deviation
(written into the config, so params.yaml carries them), so an untrained head predicts
the mean and the dense layer learns standardized targets.

Loss: weighted mean squared error, one definition (`squared_error_sums`) for the trainer
and `model.fit` (`WeightedSquaredError`).

Evaluation: MSE (= loss), RMSE, Pearson and Spearman correlation (average ranks for
ties), and `baseline_mse`: what predicting the held-out targets' own mean scores (their
variance), as the classifier reports `majority_accuracy`.
Spearman needs every prediction, and the trainer only adds `eval_sums` vectors over
replicas and batches. So evaluation batches carry each row's record index beside its
target (labels `(batch, 2)`), and `eval_sums` places the row's count, prediction and
target into the slot of that index of a vector as long as the held-out split
(`unsorted_segment_sum`; padding rows, of weight 0, place nothing). Each slot is written
by one row and zeros elsewhere, so the sums over batches and replicas are the float32
predictions exactly, and `eval_report` ranks them on the host in float64. (Pearson could
come from six moment sums; it is computed from the same gathered values instead.) The
vector is `3 * held-out records` floats per batch: 40 KB for the 3.3k held-out tweets.
A multi-worker evaluation draws repeating batches (`trainer.eval_steps`): a slot seen k
times holds k times its value and its count k, and is divided back.

Serving: `predict` (also `serving_default`): text (and text_pair for a model trained on
pairs) -> value (float32), truncated (`RegressorServing`).

Example:
>>> config = tflm.experiment.load_experiment("configs/regression_tweets.yaml")
>>> trainer = tflm.experiment.run_experiment(config, "runs/confidence", "train_and_eval")
>>> trainer.eval_results["spearman"]
"""

import dataclasses
import math
import typing

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tflm.config import ConfigError, ranged
from tflm.data.classification import (
    LabelledDataError,
    LabelledRecords,
    classification_batches,
    encode_classification,
    read_labelled,
    records_of_split,
)
from tflm.export.serving import STRINGS, check_input, unless_empty
from tflm.layers.layer_utils import clone_initializer
from tflm.models.losses import WeightedSumLoss
from tflm.models.sequence_classifier import POOLINGS, SequenceClassifier
from tflm.models.task import Task as TaskModel
from tflm.tasks.base import Task
from tflm.tasks.causal_lm import WARMUP_TEXT
from tflm.tasks.registry import architecture_value, register_task

# Record indices ride in float32 labels: exact below 2**24.
MAX_EVAL_RECORDS = 2 ** 24


# -- Config. ------------------------------------------------------------------------------------
@dataclasses.dataclass
class RegressionModelConfig:
    """`model` keys of the regression task (the head's pooling and dropout are the
    classifier's `model.pooling` and `model.classifier_dropout`)."""

    # The output is target_mean + target_scale * dense(pooled); unset: the training
    # targets' mean and standard deviation.
    target_mean: typing.Optional[float] = ranged(None)
    target_scale: typing.Optional[float] = ranged(None, above=0)


# -- Loss. --------------------------------------------------------------------------------------
def squared_error_sums(targets, predictions, weights):
    """`(sum of w * (y - yhat)^2, sum of w)` over a batch, in float32."""
    targets = tf.cast(targets, tf.float32)
    predictions = tf.cast(predictions, tf.float32)
    weights = tf.cast(weights, tf.float32)
    return tf.reduce_sum(tf.square(targets - predictions) * weights), tf.reduce_sum(weights)


@keras.saving.register_keras_serializable(package="tflm")
class WeightedSquaredError(WeightedSumLoss):
    """`squared_error_sums` as a Keras loss for `model.fit`: the weighted mean squared error
    of the batch (the trainer divides the same sums by the global batch's weight)."""

    def __init__(self, name="weighted_squared_error", **kwargs):
        super().__init__(name=name, **kwargs)

    def sums(self, y_true, y_pred, sample_weight):
        return squared_error_sums(y_true, y_pred, sample_weight)


@keras.saving.register_keras_serializable(package="tflm")
def absolute_error(y_true, y_pred):
    """`|y - yhat|` per example: Keras' `MeanAbsoluteError` averages over the last axis, which
    for `(batch,)` outputs is the batch, and then cannot take per-example weights."""
    return ops.abs(ops.cast(y_true, "float32") - ops.cast(y_pred, "float32"))


# -- Model. -------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="tflm")
class SequenceRegressor(TaskModel):
    """Predicts one real number per sequence (or pair, through segment ids).

    The backbone's output is pooled as `SequenceClassifier` pools it (`"pooled"`,
    `"first"`, `"last"` or `"mean"`; the same default), then one linear unit:
    `target_mean + target_scale * dense(pooled)`, float32. Fixed (not trained) mean and
    scale let the dense layer learn standardized targets from its usual small init.

    Features: `{"token_ids", "padding_mask", "segment_ids" (optional)}`.
    Labels: targets `(batch,)`. Outputs: `(batch,)` float32.

    Args:
        backbone: a `TransformerBackbone`.
        pooling: see above.
        dropout: dropout rate before the output layer.
        target_mean: the output of a zero dense layer.
        target_scale: the output units per unit of the dense layer.

    Example:
    >>> backbone = TransformerBackbone(vocabulary_size=100, num_layers=2, num_heads=2,
    ...     hidden_dim=32, intermediate_dim=64, max_sequence_length=64)
    >>> model = SequenceRegressor(backbone, target_mean=0.8, target_scale=0.2)
    >>> x = {"token_ids": keras.ops.ones((4, 16), "int32"), "padding_mask": keras.ops.ones((4, 16))}
    >>> history = model.fit(x, keras.ops.array([0.5, 1.0, 0.9, 0.7]), verbose=0)
    """

    default_learning_rate = 5e-5

    def __init__(self, backbone, pooling=None, dropout=0.1, target_mean=0.0, target_scale=1.0,
                 **kwargs):
        super().__init__(backbone, **kwargs)
        if pooling is None:
            pooling = "pooled" if backbone.pooler else ("last" if backbone.causal else "first")
        if pooling not in POOLINGS:
            raise ValueError(f"Unknown pooling {pooling!r}; expected one of {POOLINGS}.")
        if pooling == "pooled" and not backbone.pooler:
            raise ValueError('pooling="pooled" needs a backbone built with pooler=True.')
        if not (math.isfinite(target_scale) and target_scale > 0 and math.isfinite(target_mean)):
            raise ValueError(f"target_mean={target_mean}, target_scale={target_scale}: the "
                             "mean must be finite and the scale finite and positive.")
        self.pooling = pooling
        self.dropout = float(dropout)
        self.target_mean = float(target_mean)
        self.target_scale = float(target_scale)
        self.head_dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        self.head = keras.layers.Dense(
            1,
            kernel_initializer=clone_initializer(
                keras.initializers.TruncatedNormal(stddev=backbone.initializer_range)
            ),
            dtype=self.dtype_policy,
            name="regressor",
        )
        self.head.build((None, backbone.hidden_dim))
        self._finish_init()

    # The classifier's pooling, shared (it reads only `self.pooling`).
    pool = SequenceClassifier.pool

    def call(self, inputs, training=None):
        backbone_training = training if self.backbone.trainable else False
        outputs = self.backbone(inputs, training=backbone_training)
        padding_mask = inputs.get("padding_mask")
        if padding_mask is None:
            padding_mask = ops.ones_like(inputs["token_ids"])
        pooled = self.head_dropout(self.pool(outputs, padding_mask), training=training)
        standardized = ops.cast(self.head(pooled)[:, 0], "float32")
        return self.target_mean + self.target_scale * standardized

    def compile(self, optimizer="auto", loss="auto", weighted_metrics="auto", **kwargs):
        if weighted_metrics == "auto":
            weighted_metrics = [keras.metrics.MeanMetricWrapper(absolute_error, name="mae")]
        super().compile(optimizer=optimizer, loss=loss, weighted_metrics=weighted_metrics,
                        **kwargs)

    def loss_sums(self, labels, outputs, weights, label_smoothing=0.0):
        """`(sum of w * (y - yhat)^2, sum of w)` (no label smoothing for a number)."""
        del label_smoothing
        return squared_error_sums(labels, outputs, weights)

    def default_loss(self):
        return WeightedSquaredError()

    def get_config(self):
        config = super().get_config()
        config.update({"pooling": self.pooling, "dropout": self.dropout,
                       "target_mean": self.target_mean, "target_scale": self.target_scale})
        return config


# -- Data. --------------------------------------------------------------------------------------
def numeric_targets(records, label_field="label", on_bad_record="error", stats=None):
    """`records` with float targets for labels: a label that is not a finite number, or an
    empty text, is a `LabelledDataError` naming file:line, or with `on_bad_record="count"`
    the record is left out and counted."""
    keep, targets = [], []
    pairs = records.pairs or [None] * len(records)
    for i, (text, pair, label, where) in enumerate(zip(records.texts, pairs, records.labels,
                                                       records.locations)):
        if not text.strip() or (pair is not None and not pair.strip()):
            if on_bad_record == "error":
                raise LabelledDataError(f"{where}: the text is empty; a regression target "
                                        "needs text to predict it from.")
            if stats is not None:
                stats.add("empty_documents_skipped", 1)
            continue
        try:
            value = float(label)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            if on_bad_record == "error":
                raise LabelledDataError(f"{where}: the target {label_field!r} is {label!r}, not "
                                        "a finite number.")
            if stats is not None:
                stats.add("records_missing_field", 1)
            continue
        keep.append(i)
        targets.append(value)
    kept = records.select(keep)
    return LabelledRecords(kept.texts, kept.pairs, targets, kept.locations)


def regression_records(config, split="train", stats=None):
    """The records of a split of `config.data` with float targets (`records.labels`).

    Bad records are dropped (or raised) before the held-out split is taken, so the
    split is every n-th good record, as for classification.
    """
    data = config.data

    def read(files, on_bad_record):
        records = read_labelled(files, data.input_format, data.text_field, data.label_field,
                                data.text_pair_field, data.csv_delimiter, on_bad_record, stats)
        return numeric_targets(records, data.label_field, on_bad_record, stats)

    return records_of_split(config, split, read, what="records with a numeric target")


def regression_batches(records, tokenizer, sequence_length, batch_size, causal=False,
                       training=True, seed=0, input_context=None, stats=None, with_index=False):
    """`(features, targets, weights)` batches of `records` (float targets), built by
    `classification_batches` over the record indices (its shuffling, sharding, padding
    and checkpointable position), the indices then looked up as float32 targets.

    `with_index`: labels `(batch, 2)` of `[target, record index]` (evaluation: see the
    module docstring).
    """
    if with_index and len(records) > MAX_EVAL_RECORDS:
        raise LabelledDataError(f"{len(records)} held-out records: at most {MAX_EVAL_RECORDS} "
                                "(record indices are carried as float32).")
    targets = tf.constant(np.asarray(records.labels, np.float32))
    rows = classification_batches(records.texts, np.arange(len(records)), tokenizer,
                                  sequence_length, batch_size, pairs=records.pairs, causal=causal,
                                  training=training, seed=seed, input_context=input_context,
                                  stats=stats)

    @tf.autograph.experimental.do_not_convert
    def look_up(features, index, weights):
        target = tf.gather(targets, index)
        if with_index:
            target = tf.stack([target, tf.cast(index, tf.float32)], axis=1)
        return features, target, weights

    return rows.map(look_up, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


# -- Metrics. -----------------------------------------------------------------------------------
def average_ranks(values):
    """1-based ranks of `values`, ties sharing the mean of their ranks (scipy's rankdata)."""
    values = np.asarray(values, np.float64)
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]
    group = np.repeat(np.arange(len(starts)), ends - starts)
    ranks = np.empty(len(values))
    ranks[order] = ((starts + ends + 1) / 2.0)[group]
    return ranks


def pearson(x, y):
    """Pearson's correlation; 0.0 when either side is constant (no linear association to
    measure; scipy returns nan)."""
    x = np.asarray(x, np.float64) - np.mean(x)
    y = np.asarray(y, np.float64) - np.mean(y)
    denominator = math.sqrt(float(np.dot(x, x)) * float(np.dot(y, y)))
    return float(np.dot(x, y) / denominator) if denominator > 0 else 0.0


def spearman(x, y):
    """Spearman's rank correlation: Pearson's of the average ranks."""
    return pearson(average_ranks(x), average_ranks(y))


def regression_report(predictions, targets, squared_error=None, weight=None):
    """MSE, RMSE, Pearson, Spearman, the mean-predictor baseline and the example count.

    `squared_error` / `weight`: the summed weighted loss (else from the values)."""
    predictions = np.asarray(predictions, np.float64)
    targets = np.asarray(targets, np.float64)
    if squared_error is None:
        squared_error, weight = float(np.sum((predictions - targets) ** 2)), len(targets)
    mse = float(squared_error / weight)
    return {"loss": mse, "mse": mse, "rmse": math.sqrt(mse),
            "pearson": pearson(predictions, targets), "spearman": spearman(predictions, targets),
            "baseline_mse": float(np.var(targets)), "target_mean": float(np.mean(targets)),
            "prediction_mean": float(np.mean(predictions)), "examples": int(len(targets))}


# -- Serving. -----------------------------------------------------------------------------------
class RegressorServing(tf.Module):
    """`predict` for a `SequenceRegressor` and its tokenizer: text (and text_pair) -> value.

    Rows are built by `encode_classification`, as in training; a text longer than
    `sequence_length` is cut (`truncated` says so); an empty text is a valid input.

    Args:
        model: the regressor.
        tokenizer: its tokenizer.
        text_pair: whether `predict` takes a second text (a model trained on pairs).
        sequence_length: the longest row (as in training); default the model's positions.
    """

    def __init__(self, model, tokenizer, text_pair=False, sequence_length=None,
                 name="regressor_serving"):
        super().__init__(name=name)
        self.model = model
        self.tokenizer = tokenizer
        self.text_pair = bool(text_pair)
        self.causal = bool(model.backbone.causal)
        self.max_length = int(sequence_length or model.backbone.max_sequence_length)

    def _predict(self, text, text_pair):
        features, truncated = encode_classification(self.tokenizer, text, text_pair,
                                                    self.max_length, self.causal,
                                                    pad_to_length=False)
        value = unless_empty(
            tf.size(text),
            lambda: tf.cast(self.model(features, training=False), tf.float32),
            lambda: tf.zeros([0], tf.float32))
        return {"value": value, "truncated": truncated}

    @tf.function(input_signature=[STRINGS])
    def predict(self, text):
        """The predicted value of each text."""
        return self._predict(text, None)

    @tf.function(input_signature=[STRINGS, STRINGS])
    def predict_pairs(self, text, text_pair):
        """The same for pairs of texts (`[CLS] text [SEP] text_pair [SEP]`)."""
        check_input(tf.equal(tf.size(text), tf.size(text_pair)),
                    "text and text_pair must have the same number of rows")
        return self._predict(text, text_pair)

    def signatures(self):
        predict = (self.predict_pairs if self.text_pair else self.predict).get_concrete_function()
        return {"serving_default": predict, "predict": predict}


# -- The task. ----------------------------------------------------------------------------------
@register_task
class RegressionTask(Task):
    """Sequence regression (a `SequenceRegressor`)."""

    name = "regression"
    model_class = SequenceRegressor
    causal = False
    distillable = False  # a number, not a distribution
    config_keys = {"model": RegressionModelConfig}

    @classmethod
    def validate(cls, config):
        model, data = config.model, config.data
        if data.input_format not in ("jsonl", "csv"):
            raise ConfigError(f"data.input_format={data.input_format!r}: regression reads "
                              "labelled 'jsonl' or 'csv' files.")
        if not data.input_path:
            raise ConfigError("model.task='regression' needs data.input_path (JSONL or CSV "
                              "files with a numeric data.label_field).")
        least = 5 if data.text_pair_field else 3
        if data.sequence_length < least:
            raise ConfigError(f"data.sequence_length={data.sequence_length}: a regression row "
                              f"needs at least {least}.")
        if data.label_names:
            raise ConfigError(f"data.label_names={data.label_names}: a regression target is a "
                              "number, not a class; leave data.label_names empty.")
        if model.num_classes:
            raise ConfigError(f"model.num_classes={model.num_classes}: a regressor has one "
                              "output; leave model.num_classes at 0.")
        if config.trainer.label_smoothing:
            raise ConfigError(f"trainer.label_smoothing={config.trainer.label_smoothing}: "
                              "there are no classes to smooth in regression; set 0.")
        if model.pooling == "pooled" and not model.pooler:
            raise ConfigError("model.pooling='pooled' needs model.pooler=true.")

    @classmethod
    def create_model(cls, model_config, backbone, label_names=None):
        del label_names
        mean, scale = model_config.target_mean, model_config.target_scale
        return SequenceRegressor(backbone, pooling=model_config.pooling or None,
                                 dropout=model_config.classifier_dropout,
                                 target_mean=0.0 if mean is None else mean,
                                 target_scale=1.0 if scale is None else scale)

    def resolve_target_scaling(self):
        """Sets unset `model.target_mean` / `model.target_scale` to the training targets'
        mean and standard deviation (1 if they are all equal)."""
        model = self.config.model
        if model.target_mean is not None and model.target_scale is not None:
            return
        targets = np.asarray(regression_records(self.config, "train").labels, np.float64)
        if model.target_mean is None:
            model.target_mean = float(np.mean(targets))
        if model.target_scale is None:
            model.target_scale = float(np.std(targets)) or 1.0

    def build_model(self, dtype=None, source=None, print_fn=None):
        self.resolve_target_scaling()
        return super().build_model(dtype=dtype, source=source, print_fn=print_fn)

    def batches(self, tokenizer, batch_size, input_context, stats, training, split):
        config = self.config
        records = regression_records(config, split, stats)
        if split == "eval":
            self._eval_records = len(records)
        return regression_batches(
            records, tokenizer, config.data.sequence_length, batch_size,
            causal=architecture_value(config.model, "causal"), training=training,
            seed=config.runtime.seed, input_context=input_context, stats=stats,
            with_index=split == "eval")

    # -- Evaluation: every prediction, placed by record index (see the module docstring). -----
    def eval_size(self):
        """The number of held-out records (the length of each gathered slot vector)."""
        if getattr(self, "_eval_records", None) is None:
            self._eval_records = len(regression_records(self.config, "eval"))
        return self._eval_records

    def eval_sums(self, model, labels, outputs, weights):
        """`[loss sum, weight, counts (N), predictions (N), targets (N)]`, N the held-out
        records: each real row adds its count, prediction and target at its record index."""
        size = self.eval_size()
        labels = tf.cast(labels, tf.float32)
        targets, index = labels[:, 0], tf.cast(labels[:, 1], tf.int32)
        weights = tf.cast(weights, tf.float32)
        loss_sum, weight_sum = model.loss_sums(targets, outputs, weights)
        real = weights > 0

        def slots(values):
            # tf.where, not a product: a padding row's value never reaches a slot (inf * 0).
            values = tf.where(real, tf.cast(values, tf.float32), 0.0)
            return tf.math.unsorted_segment_sum(values, index, size)

        return tf.concat([tf.stack([loss_sum, weight_sum]), slots(tf.ones_like(targets)),
                          slots(outputs), slots(targets)], axis=0)

    def eval_report(self, model, totals):
        del model
        loss_sum, weight = totals[:2]
        counts, predictions, targets = np.reshape(totals[2:], (3, -1))
        seen = counts > 0
        return regression_report(predictions[seen] / counts[seen], targets[seen] / counts[seen],
                                 loss_sum, weight)

    # -- Serving. -----------------------------------------------------------------------------
    @classmethod
    def serving_module(cls, model, tokenizer, options):
        return RegressorServing(model, tokenizer, text_pair=options.text_pair,
                                sequence_length=options.sequence_length)

    @classmethod
    def warmup_inputs(cls, module):
        if module.text_pair:
            return [("predict", {"text": WARMUP_TEXT,
                                 "text_pair": np.array([b"It is.", b""])})]
        return [("predict", {"text": WARMUP_TEXT})]
