"""`multi_label_classification`: any number of labels per text (a sigmoid per label).

Data: labelled JSONL (`{"text": ..., "labels": ["PER", "LOC"]}`, `data.label_field` names
the list; an empty list is a text with no label) or CSV (the label cell holds names joined
by `data.label_separator`, "|" by default; an empty cell is no label). A label not in
`data.label_names` (when given; else the names are the sorted labels of the training
split, written into the config) is an error naming file:line, as are a missing text or
label field, an empty text, and a label field that is not a list; with
`data.on_bad_record=count` such records are skipped and counted
(`records_missing_field`). A label repeated within a record counts once.

Model: `MultiLabelClassifier`, a pooled vector -> Dense(num_labels) logits (float32).

Loss: weighted sigmoid cross-entropy (`tf.nn.weighted_cross_entropy_with_logits`, the
positive term times `pos_weight` of its label) as sums with one weight per example:
`(sum over examples of w * mean over labels of BCE, sum of w)`, i.e. the mean over
(example, label) pairs of the real examples; `model.fit` (`WeightedSigmoidCrossEntropy`)
and the trainer (which divides by the summed example weights of the global batch) share
it. `model.positive_weights`: `{label: weight}` (others 1.0) or "balanced" = negatives /
positives of each label in the training split (resolved into numbers in the config, so
params.yaml and the saved model carry them).

Thresholds: a label is predicted when its probability is over its threshold
(`probability > threshold`): `model.threshold` (0.5) unless `model.thresholds` names the
label. With `model.tune_thresholds=true` every evaluation also picks, per label, the
threshold in 0.01 ... 0.99 with the highest F1 on the held-out split (ties: the one
nearest 0.5); the model takes them at once, and the chief writes them as
`model.thresholds` into params.yaml and rewrites model.keras (`after_evaluation`, which
the trainer calls after each evaluation), so `tflm-export` (which builds the model from
params.yaml and the latest checkpoint; thresholds are not weights) serves with them.

Evaluation: loss, per-label precision/recall/F1 (with true-positive, false-positive and
false-negative counts), micro precision/recall/F1 (counts summed over labels), macro F1
(mean of the labels' F1), all at the model's thresholds; with
tuning also `tuned` (the thresholds, and micro/macro F1 at them: optimistic, being chosen on
the same split). The counts are summed over replicas and batches for every candidate
threshold, so tuning is exact over the grid.

Serving: `classify` (`MultiLabelServing`): text -> `labels` (batch, num_labels) strings,
the labels over their thresholds by descending score, padded with ""; `scores` (batch,
num_labels) their probabilities, padded with 0; `num_labels` (batch,) how many;
`probabilities` (batch, num_labels) every label's, in label order; `truncated`.
"""

import dataclasses
import typing

import keras
import numpy as np
import tensorflow as tf

from tflm.config import ConfigError, ranged, read_experiment
from tflm.data.classification import (
    LabelledDataError,
    LabelledRecords,
    bad_record_handler,
    classification_batches,
    encode_classification,
    file_records,
    label_names_of,
    records_of_split,
    text_value,
)
from tflm.export.serving import STRINGS, serving_label_names, unless_empty
from tflm.models.losses import WeightedSumLoss
from tflm.models.sequence_classifier import SequenceClassifier
from tflm.tasks.base import Task, check_teacher_outputs
from tflm.tasks.causal_lm import WARMUP_TEXT
from tflm.tasks.registry import architecture_value, config_keys_of, register_task

# The candidate thresholds of tuning (and of the evaluation counts).
THRESHOLD_GRID = tuple(round(k / 100, 2) for k in range(1, 100))
AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass
class MultiLabelModelKeys:
    """`model` keys of multi_label_classification."""

    # Every label's threshold, unless `thresholds` names it.
    threshold: float = ranged(0.5, above=0, below=1)
    thresholds: typing.Any = dataclasses.field(default_factory=dict)  # {label: threshold}
    tune_thresholds: bool = False  # pick each label's best-F1 threshold on the held-out split
    # {label: weight of its positive term} (others 1.0), or "balanced" (negatives/positives)
    positive_weights: typing.Any = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class MultiLabelDataKeys:
    """`data` keys of multi_label_classification."""

    label_separator: str = "|"  # CSV: the label cell is names joined by this


# -- Data. ---------------------------------------------------------------------------------------
def read_multi_labelled(files, input_format="jsonl", text_field="text", label_field="labels",
                        csv_delimiter=",", label_separator="|", label_names=None,
                        on_bad_record="error", stats=None):
    """Reads `(text, label names)` records from JSONL or CSV files.

    `label_names`: the known labels (None: any). A bad record (see the module docstring)
    is a `LabelledDataError` naming `file:line`, or with `on_bad_record="count"` is
    skipped and counted.

    Returns:
        `LabelledRecords` whose `labels` are tuples of names (sorted, distinct).
    """
    if input_format not in ("jsonl", "csv"):
        raise LabelledDataError(f"data.input_format={input_format!r}: multi-label data is read "
                                "from jsonl or csv files.")
    known = None if label_names is None else set(label_names)
    texts, labels, locations = [], [], []
    bad = bad_record_handler(on_bad_record, stats)
    for path, number, record in file_records(files, input_format, (text_field, label_field),
                                             csv_delimiter, stats, bad):
        text = text_value(record, text_field, path, number, bad)
        if text is None:
            continue
        value = record.get(label_field)
        if input_format == "csv" and isinstance(value, str):
            value = [v for v in value.split(label_separator) if v.strip()]
        if value is None:
            bad(path, number, f"the label field {label_field!r} is missing")
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            bad(path, number, f"the label field {label_field!r} is not a list of label "
                              f"names: {value!r}")
            continue
        names = tuple(sorted({v.strip() for v in value}))
        unknown = [n for n in names if known is not None and n not in known]
        if unknown:
            bad(path, number, f"unknown label {unknown[0]!r}; the model knows "
                              f"{list(label_names)}")
            continue
        if stats is not None:
            stats.add("documents", 1)
        texts.append(text)
        labels.append(names)
        locations.append(f"{path}:{number}")
    return LabelledRecords(texts, None, labels, locations)


def multi_label_records(config, split="train", label_names=None, stats=None):
    """The records of a split of `config.data` (held out as `tflm.data.pipeline.split_source`
    says); `label_names`: the known labels (None: any)."""
    data = config.data
    return records_of_split(config, split, lambda files, on_bad_record: read_multi_labelled(
        files, data.input_format, data.text_field, data.label_field, data.csv_delimiter,
        data.label_separator, label_names, on_bad_record, stats))


def multi_hot(labels, label_names):
    """float32 `(records, num_labels)`: 1 where a record has the label."""
    index = {name: i for i, name in enumerate(label_names)}
    matrix = np.zeros((len(labels), len(label_names)), np.float32)
    for row, names in enumerate(labels):
        matrix[row, [index[n] for n in names]] = 1.0
    return matrix


def balanced_positive_weights(matrix):
    """negatives / positives per label (1.0 for a label that is never or always present)."""
    positives = np.asarray(matrix, np.float64).sum(axis=0)
    negatives = matrix.shape[0] - positives
    ratio = np.where((positives > 0) & (negatives > 0), negatives / np.maximum(positives, 1), 1.0)
    return [float(r) for r in ratio]


def multi_label_batches(texts, targets, tokenizer, sequence_length, batch_size, causal=False,
                        training=True, seed=0, input_context=None, stats=None):
    """`(features, multi-hot labels (batch, num_labels) float32, weights)` batches: the rows,
    order, sharding and padding of `classification_batches`, whose label of a row is the
    record's index, replaced here by its multi-hot row."""
    targets = tf.constant(np.asarray(targets, np.float32))
    indexed = classification_batches(texts, np.arange(len(texts), dtype=np.int32), tokenizer,
                                     sequence_length, batch_size, causal=causal,
                                     training=training, seed=seed, input_context=input_context,
                                     stats=stats)
    width = int(targets.shape[1])

    @tf.autograph.experimental.do_not_convert
    def to_targets(features, index, weights):
        return features, tf.ensure_shape(tf.gather(targets, index), [batch_size, width]), weights

    return indexed.map(to_targets, num_parallel_calls=AUTOTUNE, deterministic=True) \
        .prefetch(AUTOTUNE)


# -- Loss. ---------------------------------------------------------------------------------------
def weighted_sigmoid_cross_entropy(labels, logits, weights, positive_weights=None,
                                   label_smoothing=0.0):
    """`(sum over examples of w * mean over labels of BCE, sum of w)`, float32.

    BCE is `tf.nn.weighted_cross_entropy_with_logits` (`pos_weight` per label, default 1);
    with label smoothing `e` the targets are `y * (1 - e) + e / 2`. `weights`: one per
    example (0 for padding rows).
    """
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.float32)
    weights = tf.cast(weights, tf.float32)
    if label_smoothing:
        labels = labels * (1.0 - label_smoothing) + 0.5 * label_smoothing
    if positive_weights is None:
        positive_weights = tf.ones_like(logits[0])
    bce = tf.nn.weighted_cross_entropy_with_logits(
        labels, logits, tf.constant(positive_weights, tf.float32))
    per_example = tf.reduce_mean(bce, axis=-1)
    return tf.reduce_sum(per_example * weights), tf.reduce_sum(weights)


def sigmoid_distillation_sums(teacher_logits, logits, weights, temperature=1.0):
    """`(sum over examples of w * T^2 * mean over labels of KL(p_T || q_T), sum of w)`,
    float32: each label's tempered Bernoulli `sigmoid(logit / T)` of the teacher against the
    model's, averaged over the labels as `weighted_sigmoid_cross_entropy` averages its BCE."""
    t = tf.cast(teacher_logits, tf.float32) / temperature
    s = tf.cast(logits, tf.float32) / temperature
    p = tf.sigmoid(t)
    # KL(Bern(p) || Bern(q)) = p (log p - log q) + (1 - p) (log(1 - p) - log(1 - q)), with
    # log sigmoid(x) = -softplus(-x) and log(1 - sigmoid(x)) = -softplus(x).
    kl = (p * (tf.math.softplus(-s) - tf.math.softplus(-t))
          + (1.0 - p) * (tf.math.softplus(s) - tf.math.softplus(t)))
    weights = tf.cast(weights, tf.float32)
    per_example = tf.reduce_mean(kl, axis=-1)
    return temperature ** 2 * tf.reduce_sum(per_example * weights), tf.reduce_sum(weights)


@keras.saving.register_keras_serializable(package="tflm")
class WeightedSigmoidCrossEntropy(WeightedSumLoss):
    """`weighted_sigmoid_cross_entropy` as a Keras loss for `model.fit`: the mean over the
    (example, label) pairs of the examples that carry weight.

    Example:
    >>> loss = WeightedSigmoidCrossEntropy(positive_weights=[2.0, 1.0])
    >>> loss(np.array([[1.0, 0.0]]), np.array([[0.3, -1.2]]))
    """

    per_example = True

    def __init__(self, positive_weights=None, label_smoothing=0.0,
                 name="weighted_sigmoid_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.positive_weights = None if positive_weights is None else [
            float(w) for w in positive_weights]
        self.label_smoothing = float(label_smoothing)

    def sums(self, y_true, y_pred, sample_weight):
        return weighted_sigmoid_cross_entropy(y_true, y_pred, sample_weight,
                                              self.positive_weights, self.label_smoothing)

    def get_config(self):
        return {"positive_weights": self.positive_weights,
                "label_smoothing": self.label_smoothing, "name": self.name}


# -- Model. --------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="tflm")
class MultiLabelClassifier(SequenceClassifier):
    """A `SequenceClassifier` head read as independent labels: logits `(batch, num_classes)`
    (float32), one sigmoid per label, with each label's threshold and positive weight.

    Features: as `SequenceClassifier`. Labels: multi-hot `(batch, num_classes)` float32.

    Args:
        backbone, num_classes, pooling, dropout, label_names: as `SequenceClassifier`.
        thresholds: each label's threshold (a label is predicted when its probability is
            over it); default 0.5.
        positive_weights: each label's weight of its positive term in the loss; default 1.

    Example:
    >>> backbone = TransformerBackbone(vocabulary_size=100, num_layers=1, num_heads=2,
    ...     hidden_dim=16, intermediate_dim=32, max_sequence_length=16)
    >>> model = MultiLabelClassifier(backbone, num_classes=3, positive_weights=[2.0, 1.0, 1.0])
    >>> x = {"token_ids": keras.ops.ones((2, 8), "int32"), "padding_mask": keras.ops.ones((2, 8))}
    >>> history = model.fit(x, np.array([[1, 0, 1], [0, 0, 0]], "float32"), verbose=0)
    """

    thresholds = None
    positive_weights = None

    def __init__(self, backbone, num_classes, pooling=None, dropout=0.1, label_names=None,
                 thresholds=None, positive_weights=None, **kwargs):
        super().__init__(backbone, num_classes, pooling=pooling, dropout=dropout,
                         label_names=label_names, **kwargs)
        self.thresholds = self._per_label(thresholds, 0.5, "thresholds")
        self.positive_weights = self._per_label(positive_weights, 1.0, "positive_weights")
        if not all(0.0 < t < 1.0 for t in self.thresholds):
            raise ValueError(f"thresholds must be in (0, 1), got {self.thresholds}.")
        self.compile()  # again: the default loss holds the positive weights

    def _per_label(self, values, default, what):
        if values is None:
            return [default] * self.num_classes
        values = [float(v) for v in values]
        if len(values) != self.num_classes:
            raise ValueError(f"{len(values)} {what} for {self.num_classes} labels.")
        return values

    def compile(self, optimizer="auto", loss="auto", weighted_metrics="auto", **kwargs):
        if weighted_metrics == "auto":
            # Logits over 0 = probabilities over 0.5: the share of right (example, label) pairs.
            weighted_metrics = [keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0)]
        super().compile(optimizer=optimizer, loss=loss, weighted_metrics=weighted_metrics,
                        **kwargs)

    def loss_sums(self, labels, outputs, weights, label_smoothing=0.0):
        return weighted_sigmoid_cross_entropy(labels, outputs, weights, self.positive_weights,
                                              label_smoothing)

    def default_loss(self):
        return WeightedSigmoidCrossEntropy(self.positive_weights)

    def get_config(self):
        config = super().get_config()
        config.update({"thresholds": list(self.thresholds),
                       "positive_weights": list(self.positive_weights)})
        return config


# -- Serving. ------------------------------------------------------------------------------------
class MultiLabelServing(tf.Module):
    """`classify` for a `MultiLabelClassifier`: every label over its threshold, with its score.

    Args:
        model: the classifier.
        tokenizer: its tokenizer.
        label_names: names in label order; default the model's own, else "0", "1", ...
        sequence_length: the longest row (as in training); default the model's positions.
    """

    def __init__(self, model, tokenizer, label_names=None, sequence_length=None,
                 name="multi_label_serving"):
        super().__init__(name=name)
        self.model = model
        self.tokenizer = tokenizer
        self.label_names = tf.constant(serving_label_names(model, label_names, "labels"))
        self.thresholds = tf.constant(model.thresholds, tf.float32)
        self.causal = bool(model.backbone.causal)
        self.max_length = int(sequence_length or model.backbone.max_sequence_length)

    @tf.function(input_signature=[STRINGS])
    def classify(self, text):
        """Per text: the labels over their thresholds (best first, padded with "") and their
        scores (padded with 0), how many, every label's probability, and whether the text was
        cut to the row length."""
        features, truncated = encode_classification(self.tokenizer, text, None, self.max_length,
                                                    self.causal, pad_to_length=False)
        count = self.model.num_classes
        probabilities = unless_empty(
            tf.size(text),
            lambda: tf.sigmoid(tf.cast(self.model(features, training=False), tf.float32)),
            lambda: tf.zeros([0, count]))
        over = probabilities > self.thresholds
        # Labels over their thresholds first, by descending probability (ties: label order).
        order = tf.argsort(tf.where(over, probabilities, -1.0), axis=-1, direction="DESCENDING",
                           stable=True)
        num_labels = tf.reduce_sum(tf.cast(over, tf.int32), axis=-1)
        keep = tf.sequence_mask(num_labels, count)
        labels = tf.where(keep, tf.gather(self.label_names, order), tf.constant(""))
        scores = tf.where(keep, tf.gather(probabilities, order, batch_dims=1), 0.0)
        return {"labels": labels, "scores": scores, "num_labels": num_labels,
                "probabilities": probabilities, "truncated": truncated}

    def signatures(self):
        classify = self.classify.get_concrete_function()
        return {"serving_default": classify, "classify": classify}


# -- Evaluation. ---------------------------------------------------------------------------------
def candidate_thresholds(thresholds):
    """The sorted float32 thresholds the evaluation counts at: the grid and `thresholds`."""
    return np.unique(np.asarray(list(THRESHOLD_GRID) + list(thresholds), np.float32))


def label_counts(labels, probabilities, weights, thresholds):
    """Weighted true-positive, false-positive and false-negative counts `(len(thresholds),
    num_labels, 3)` of `probability > threshold` (TF; the NumPy twin is in the tests)."""
    labels = tf.cast(labels, tf.float32)
    weights = tf.cast(weights, tf.float32)[None, :, None]
    predicted = tf.cast(probabilities[None] > tf.constant(thresholds)[:, None, None], tf.float32)
    true_positive = tf.reduce_sum(predicted * labels * weights, axis=1)
    false_positive = tf.reduce_sum(predicted * (1.0 - labels) * weights, axis=1)
    false_negative = tf.reduce_sum((1.0 - predicted) * labels * weights, axis=1)
    return tf.stack([true_positive, false_positive, false_negative], axis=-1)


def _ratio(a, b):
    return np.divide(a, b, out=np.zeros_like(np.asarray(a, np.float64)), where=b > 0)


def f1_from_counts(counts):
    """Precision, recall and F1 of `(..., 3)` TP/FP/FN counts (0 where undefined)."""
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    return _ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(2 * tp, 2 * tp + fp + fn)


def multi_label_report(counts, label_names):
    """Per-label precision/recall/F1, micro and macro F1 of `(num_labels, 3)` counts."""
    counts = np.asarray(counts, np.float64)
    precision, recall, f1 = f1_from_counts(counts)
    micro_p, micro_r, micro_f1 = (float(v) for v in f1_from_counts(counts.sum(axis=0)))
    per_label = {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                        "f1": float(f1[i]), "true_positives": float(counts[i, 0]),
                        "false_positives": float(counts[i, 1]),
                        "false_negatives": float(counts[i, 2])}
                 for i, name in enumerate(label_names)}
    return {"micro_precision": micro_p, "micro_recall": micro_r, "micro_f1": micro_f1,
            "macro_f1": float(f1.mean()), "per_label": per_label}


def best_thresholds(grid_counts, grid, current):
    """Per label, the grid threshold of the highest F1 (ties: nearest 0.5, then the lower);
    a label without a positive or a prediction anywhere keeps `current`."""
    _, _, f1 = f1_from_counts(grid_counts)  # (len(grid), num_labels)
    chosen = []
    for label in range(f1.shape[1]):
        scores = f1[:, label]
        if not scores.max() > 0:
            chosen.append(float(current[label]))
            continue
        best = np.flatnonzero(scores == scores.max())
        chosen.append(float(grid[min(best, key=lambda i: (abs(grid[i] - 0.5), grid[i]))]))
    return chosen


# -- The task. -----------------------------------------------------------------------------------
@register_task
class MultiLabelClassificationTask(Task):
    """Multi-label sequence classification (a `MultiLabelClassifier`)."""

    name = "multi_label_classification"
    model_class = MultiLabelClassifier
    causal = False
    config_keys = {"model": MultiLabelModelKeys, "data": MultiLabelDataKeys}

    @classmethod
    def validate(cls, config):
        model, data = config.model, config.data
        if data.input_format not in ("jsonl", "csv"):
            raise ConfigError(f"data.input_format={data.input_format!r}: "
                              "multi_label_classification reads labelled 'jsonl' or 'csv' files.")
        if not data.input_path:
            raise ConfigError("model.task='multi_label_classification' needs data.input_path "
                              "(labelled JSONL or CSV files).")
        if data.sequence_length < 3:
            raise ConfigError(f"data.sequence_length={data.sequence_length}: a row needs at "
                              "least 3.")
        if not data.label_separator:
            raise ConfigError("data.label_separator must not be empty.")
        names = data.label_names
        if len(set(names)) != len(names):
            raise ConfigError(f"data.label_names={names} repeats a name.")
        if names and model.num_classes and model.num_classes != len(names):
            raise ConfigError(f"model.num_classes={model.num_classes}, but data.label_names has "
                              f"{len(names)} names.")
        if model.pooling == "pooled" and not model.pooler:
            raise ConfigError("model.pooling='pooled' needs model.pooler=true.")
        cls._check_mapping(model.thresholds, "model.thresholds", names,
                           lambda v: 0.0 < v < 1.0, "in (0, 1)")
        if model.positive_weights != "balanced":
            cls._check_mapping(model.positive_weights, "model.positive_weights", names,
                               lambda v: v > 0.0, "positive", also="or 'balanced'")

    @staticmethod
    def _check_mapping(values, key, names, ok, condition, also=""):
        if not isinstance(values, dict):
            raise ConfigError(f"{key}: expected a mapping of label names to numbers{also and ' '}"
                              f"{also}, got {values!r}.")
        for label, value in values.items():
            if names and str(label) not in names:
                raise ConfigError(f"{key}: unknown label {label!r}; data.label_names are "
                                  f"{list(names)}.")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
                raise ConfigError(f"{key}.{label} must be a number {condition}, got {value!r}.")

    # -- Model. ----------------------------------------------------------------------------
    @classmethod
    def create_model(cls, model_config, backbone, label_names=None):
        num_classes = model_config.num_classes or len(label_names or ())
        if not num_classes:
            raise ConfigError("A multi-label classifier needs model.num_classes or label names.")
        names = list(label_names or [str(i) for i in range(num_classes)])
        if model_config.positive_weights == "balanced":
            raise ConfigError("model.positive_weights='balanced' is resolved from the training "
                              "split: build the model with the task (get_task(config)"
                              ".build_model()).")
        by_name = {str(k): float(v) for k, v in model_config.positive_weights.items()}
        thresholds = {str(k): float(v) for k, v in model_config.thresholds.items()}
        return MultiLabelClassifier(
            backbone, num_classes=num_classes, pooling=model_config.pooling or None,
            dropout=model_config.classifier_dropout, label_names=label_names,
            thresholds=[thresholds.get(n, model_config.threshold) for n in names],
            positive_weights=[by_name.get(n, 1.0) for n in names])

    @classmethod
    def describe_model(cls, model, experiment):
        names = list(model.label_names or [str(i) for i in range(model.num_classes)])
        experiment.model.num_classes = model.num_classes
        experiment.data.label_names = list(model.label_names or [])
        if hasattr(experiment.model, "thresholds"):  # a config with this task's keys
            experiment.model.thresholds = dict(zip(names, model.thresholds))
            experiment.model.positive_weights = dict(zip(names, model.positive_weights))

    def label_names(self):
        """`data.label_names`, else the sorted labels of the training split; both written into
        the config (with "balanced" positive weights as numbers), so that params.yaml and the
        saved model carry them."""
        config = self.config
        data, model = config.data, config.model
        records = None
        if data.label_names:
            names = list(data.label_names)
        else:
            records = multi_label_records(config, "train")
            names = label_names_of([n for labels in records.labels for n in labels])
            if not names:
                raise LabelledDataError(f"{data.input_path}: no record of the training split "
                                        "has a label; list data.label_names.")
        if model.num_classes and model.num_classes != len(names):
            raise ConfigError(f"model.num_classes={model.num_classes}, but the labels are "
                              f"{names}: set model.num_classes={len(names)} (or 0), or list "
                              "data.label_names.")
        for key in ("thresholds", "positive_weights"):
            values = getattr(model, key)
            unknown = [k for k in values if str(k) not in names] if isinstance(values, dict) \
                else []
            if unknown:
                raise ConfigError(f"model.{key}: unknown label {unknown[0]!r}; the labels are "
                                  f"{names}.")
        if model.positive_weights == "balanced":
            records = records or multi_label_records(config, "train", names)
            weights = balanced_positive_weights(multi_hot(records.labels, names))
            model.positive_weights = dict(zip(names, weights))
        data.label_names = list(names)
        return names

    # -- Data. -----------------------------------------------------------------------------
    def batches(self, tokenizer, batch_size, input_context, stats, training, split):
        config = self.config
        names = list(config.data.label_names) or self.label_names()
        records = multi_label_records(config, split, names, stats)
        return multi_label_batches(
            records.texts, multi_hot(records.labels, names), tokenizer,
            config.data.sequence_length, batch_size,
            causal=architecture_value(config.model, "causal"), training=training,
            seed=config.runtime.seed, input_context=input_context, stats=stats)

    # -- Evaluation. -----------------------------------------------------------------------
    def distill_sums(self, model, teacher_outputs, outputs, weights):
        """Per-label sigmoid distillation (`sigmoid_distillation_sums`): the labels are
        independent, so each is its own two-way distribution."""
        del model
        check_teacher_outputs(teacher_outputs, outputs)
        return sigmoid_distillation_sums(teacher_outputs, outputs, weights,
                                         self.config.trainer.distill_temperature)

    def eval_sums(self, model, labels, outputs, weights):
        """[loss sum, example weight, then TP/FP/FN per candidate threshold and label].

        Everything here is independent of the model's current thresholds (which tuning
        changes after this function is traced): the report picks their counts."""
        loss_sum, weight_sum = model.loss_sums(labels, outputs, weights)
        probabilities = tf.sigmoid(tf.cast(outputs, tf.float32))
        # Traced once per evaluation function; the report reads the same candidates back.
        self._candidates = candidate_thresholds(model.thresholds)
        counts = label_counts(labels, probabilities, weights, self._candidates)
        return tf.concat([tf.stack([loss_sum, weight_sum]), tf.reshape(counts, [-1])], axis=0)

    def eval_report(self, model, totals):
        """Metrics at the model's thresholds; with `model.tune_thresholds` also the best-F1
        thresholds of the split, which the model (and the config) then take."""
        names = list(model.label_names or [str(i) for i in range(model.num_classes)])
        candidates = getattr(self, "_candidates", None)
        if candidates is None:
            candidates = candidate_thresholds(model.thresholds)
        counts = totals[2:].reshape(len(candidates), model.num_classes, 3)
        at = [int(np.flatnonzero(candidates == np.float32(t))[0]) for t in model.thresholds]
        current = counts[at, np.arange(model.num_classes)]
        report = {"loss": totals[0] / totals[1], "examples": int(totals[1]),
                  **multi_label_report(current, names),
                  "thresholds": dict(zip(names, (float(t) for t in model.thresholds)))}
        if self.config.model.tune_thresholds:
            grid = np.asarray(THRESHOLD_GRID, np.float32)
            rows = [int(np.flatnonzero(candidates == g)[0]) for g in grid]
            tuned = best_thresholds(counts[rows], np.asarray(THRESHOLD_GRID), model.thresholds)
            picked = counts[[rows[THRESHOLD_GRID.index(t)] if t in THRESHOLD_GRID else at[i]
                             for i, t in enumerate(tuned)], np.arange(model.num_classes)]
            tuned_report = multi_label_report(picked, names)
            report["tuned"] = {"thresholds": dict(zip(names, tuned)),
                               "micro_f1": tuned_report["micro_f1"],
                               "macro_f1": tuned_report["macro_f1"]}
            model.thresholds = tuned
            self.config.model.thresholds = dict(zip(names, tuned))
        return report

    def after_evaluation(self, model, results, run_dir):
        """Tuned thresholds go into params.yaml (only `model.thresholds` changes) and, if the
        run has one, model.keras."""
        if "tuned" not in results or not run_dir.has_params():
            return
        saved, _ = _read_params(run_dir.params_file())
        saved.model.thresholds = dict(results["tuned"]["thresholds"])
        run_dir.write_config(saved)
        if run_dir.has_saved_model():
            run_dir.save_model(model)

    # -- Serving. --------------------------------------------------------------------------
    @classmethod
    def serving_module(cls, model, tokenizer, options):
        return MultiLabelServing(model, tokenizer, options.label_names,
                                 sequence_length=options.sequence_length)

    @classmethod
    def warmup_inputs(cls, module):
        return [("classify", {"text": WARMUP_TEXT})]


def _read_params(path):
    """params.yaml as written (not re-resolved), with this task's keys."""
    return read_experiment(path, extensions_of=config_keys_of)
