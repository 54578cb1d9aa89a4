"""`classification`: one label per text (or text pair), fine-tuned from a pretrained model.

Data: labelled JSONL or CSV (`data.text_field`, `data.label_field`, optional
`data.text_pair_field`); rows `[CLS] a [SEP] b [SEP]` with BERT's longest-first
pair truncation (`tflm.data.classification`). Label names: `data.label_names`,
or the sorted labels of the training split (written into the config, so that
params.yaml and the saved model carry them). Loss: cross-entropy, the mean over
the weight of the batch. Evaluation: loss, accuracy, macro-F1, per-class
precision/recall/F1 and the confusion matrix. Serving: `classify` (`ClassifierServing`).

Class imbalance: `data.class_weights` is `balanced` (each class weighs
`n_samples / (n_classes * count(class))` over the training split, scikit-learn's
definition) or a mapping `{label: weight}` (labels not listed weigh 1, as in
scikit-learn). A training example's sample weight is multiplied by its class's
weight, in the input pipeline, so the trainer and `model.fit` (on `make_dataset`)
see the same weights. The loss stays `sum(w * CE) / sum(w)`, the normalisation both
already use (the trainer over the global batch, `WeightedCrossEntropy` over the
batch): the loss keeps the unweighted loss's scale (the learning rate means what it
meant), and a batch's rare-class examples count `w_rare / w_common` times as much as
the others. (Keras' `class_weight`, divided by the batch size instead, changes the
step size with each batch's class mix.) Evaluation stays unweighted.
"""

import collections
import dataclasses
import json
import math
import typing

import numpy as np
import tensorflow as tf

from tflm.config import ConfigError
from tflm.data.classification import (
    labelled_records,
    make_classification_dataset,
    resolve_label_names,
)
from tflm.export.serving import ClassifierServing
from tflm.models.huggingface_export import SEQUENCE_CLASSIFICATION_HEAD
from tflm.models.sequence_classifier import SequenceClassifier
from tflm.tasks.base import Task
from tflm.tasks.causal_lm import WARMUP_TEXT
from tflm.tasks.registry import architecture_value, register_task
from tflm.training.metrics import classification_report


BALANCED = "balanced"


@dataclasses.dataclass
class ClassificationData:
    """`data` keys of the classification task."""

    # None: unweighted | "balanced" | {label: weight} (labels not listed: 1); training only.
    # The config loader passes a Dict annotation through as it is: `validate` checks it.
    class_weights: typing.Optional[typing.Union[typing.Dict[str, float], str]] = None


def _label_key(label):
    """A mapping key as a label name (`read_labelled`'s: numbers and booleans as JSON)."""
    return label if isinstance(label, str) else json.dumps(label)


def check_class_weights(class_weights, label_names=None):
    """A `ConfigError` naming `data.class_weights` (and the label) unless it is None,
    "balanced" or a mapping of known labels to finite weights >= 0."""
    if class_weights is None or class_weights == BALANCED:
        return
    if not isinstance(class_weights, dict):
        raise ConfigError(f"data.class_weights={class_weights!r}: expected {BALANCED!r} or a "
                          "mapping {label: weight}.")
    for label, weight in class_weights.items():
        if (isinstance(weight, bool) or not isinstance(weight, (int, float))
                or not math.isfinite(weight) or weight < 0):
            raise ConfigError(f"data.class_weights: the weight of {_label_key(label)!r} is "
                              f"{weight!r}; expected a finite number >= 0.")
        if label_names and _label_key(label) not in label_names:
            raise ConfigError(f"data.class_weights: unknown label {_label_key(label)!r}; the "
                              f"labels are {list(label_names)}.")


def class_weight_values(class_weights, label_names, train_labels=()):
    """float32 weights in class-id order for `data.class_weights` (None: no weights).

    `train_labels`: the training split's label names ("balanced" counts them):
    `n_samples / (n_classes * count(class))`.
    """
    if class_weights is None:
        return None
    names = list(label_names)
    if class_weights == BALANCED:
        counts = collections.Counter(train_labels)
        empty = [name for name in names if not counts[name]]
        if empty:
            raise ConfigError(f"data.class_weights={BALANCED!r}: label {empty[0]!r} has no "
                              "training example to weigh; give a mapping {label: weight}.")
        total = sum(counts[name] for name in names)
        return np.array([total / (len(names) * counts[name]) for name in names], np.float32)
    check_class_weights(class_weights, names)
    weights = {_label_key(label): float(weight) for label, weight in class_weights.items()}
    return np.array([weights.get(name, 1.0) for name in names], np.float32)


@register_task
class ClassificationTask(Task):
    """Sequence classification (a `SequenceClassifier`)."""

    name = "classification"
    model_class = SequenceClassifier
    causal = False
    # BertForSequenceClassification (a BERT backbone, model.pooling=pooled).
    huggingface_head = SEQUENCE_CLASSIFICATION_HEAD
    config_keys = {"data": ClassificationData}

    @classmethod
    def validate(cls, config):
        model, data = config.model, config.data
        if data.input_format not in ("jsonl", "csv"):
            raise ConfigError(f"data.input_format={data.input_format!r}: classification reads "
                              "labelled 'jsonl' or 'csv' files.")
        if not data.input_path:
            raise ConfigError("model.task='classification' needs data.input_path (labelled "
                              "JSONL or CSV files).")
        least = 5 if data.text_pair_field else 3
        if data.sequence_length < least:
            raise ConfigError(f"data.sequence_length={data.sequence_length}: a classification "
                              f"row needs at least {least}.")
        if len(set(data.label_names)) != len(data.label_names):
            raise ConfigError(f"data.label_names={data.label_names} repeats a name.")
        if data.label_names and model.num_classes and model.num_classes != len(data.label_names):
            raise ConfigError(f"model.num_classes={model.num_classes}, but data.label_names has "
                              f"{len(data.label_names)} names.")
        if model.pooling == "pooled" and not model.pooler:
            raise ConfigError("model.pooling='pooled' needs model.pooler=true.")
        # Labels known now are checked now; the training labels when the data is read.
        check_class_weights(data.class_weights, data.label_names)

    @classmethod
    def create_model(cls, model_config, backbone, label_names=None):
        num_classes = model_config.num_classes or len(label_names or ())
        if not num_classes:
            raise ConfigError("A classifier needs model.num_classes or label names.")
        return SequenceClassifier(backbone, num_classes=num_classes,
                                  pooling=model_config.pooling or None,
                                  dropout=model_config.classifier_dropout,
                                  label_names=label_names)

    @classmethod
    def describe_model(cls, model, experiment):
        experiment.model.num_classes = model.num_classes
        experiment.data.label_names = list(model.label_names or [])

    def label_names(self):
        """`data.label_names`, else the training labels (written into the config, so that
        params.yaml and the saved model carry them)."""
        config = self.config
        names = resolve_label_names(config)
        if config.model.num_classes and config.model.num_classes != len(names):
            raise ConfigError(f"model.num_classes={config.model.num_classes}, but the labels are "
                              f"{names}: set model.num_classes={len(names)} (or 0), or list "
                              "data.label_names.")
        config.data.label_names = list(names)
        return names

    def class_weights(self):
        """`data.class_weights` as float32 weights in class-id order, or None."""
        class_weights = self.config.data.class_weights
        if class_weights is None:
            return None
        train_labels = (labelled_records(self.config, "train").labels
                        if class_weights == BALANCED else ())
        return class_weight_values(class_weights, resolve_label_names(self.config),
                                   train_labels)

    def batches(self, tokenizer, batch_size, input_context, stats, training, split):
        batches = make_classification_dataset(
            self.config, tokenizer, architecture_value(self.config.model, "causal"),
            batch_size, input_context=input_context, stats=stats, training=training,
            split=split)
        class_weights = self.class_weights() if split == "train" else None
        if class_weights is None:
            return batches
        class_weights = tf.constant(class_weights)

        @tf.autograph.experimental.do_not_convert
        def weigh(features, labels, weights):
            return features, labels, weights * tf.gather(class_weights, labels)

        return batches.map(weigh, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def eval_sums(self, model, labels, outputs, weights):
        predicted = tf.argmax(outputs, axis=-1, output_type=tf.int32)
        confusion = tf.math.confusion_matrix(
            tf.cast(labels, tf.int32), predicted, num_classes=model.num_classes,
            weights=tf.cast(weights, tf.float32), dtype=tf.float32)
        return tf.concat([super().eval_sums(model, labels, outputs, weights),
                          tf.reshape(confusion, [-1])], axis=0)

    def eval_report(self, model, totals):
        loss_sum, weight = totals[:2]
        classes = model.num_classes
        report = classification_report(totals[3:].reshape(classes, classes),
                                       model.label_names or self.config.data.label_names)
        return {"loss": loss_sum / weight, **report}

    @classmethod
    def serving_module(cls, model, tokenizer, options):
        return ClassifierServing(model, tokenizer, options.label_names,
                                 text_pair=options.text_pair,
                                 sequence_length=options.sequence_length)

    @classmethod
    def warmup_inputs(cls, module):
        if module.text_pair:
            return [("classify", {"text": WARMUP_TEXT,
                                  "text_pair": np.array([b"It is.", b""])})]
        return [("classify", {"text": WARMUP_TEXT})]
