"""`classification`: one label per text (or text pair), fine-tuned from a pretrained model.

Data: labelled JSONL or CSV (`data.text_field`, `data.label_field`, optional
`data.text_pair_field`); rows `[CLS] a [SEP] b [SEP]` with BERT's longest-first
pair truncation (`tflm.data.classification`). Label names: `data.label_names`,
or the sorted labels of the training split (written into the config, so that
params.yaml and the saved model carry them). Loss: cross-entropy. Evaluation:
loss, accuracy, macro-F1, per-class precision/recall/F1 and the confusion
matrix. Serving: `classify` (`ClassifierServing`).
"""

import numpy as np
import tensorflow as tf

from tflm.config import ConfigError
from tflm.data.classification import make_classification_dataset, resolve_label_names
from tflm.export.serving import ClassifierServing
from tflm.models.sequence_classifier import SequenceClassifier
from tflm.tasks.base import Task
from tflm.tasks.causal_lm import WARMUP_TEXT
from tflm.tasks.registry import architecture_value, register_task
from tflm.training.metrics import classification_report


@register_task
class ClassificationTask(Task):
    """Sequence classification (a `SequenceClassifier`)."""

    name = "classification"
    model_class = SequenceClassifier
    causal = False

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

    def batches(self, tokenizer, batch_size, input_context, stats, training, split):
        return make_classification_dataset(
            self.config, tokenizer, architecture_value(self.config.model, "causal"),
            batch_size, input_context=input_context, stats=stats, training=training,
            split=split)

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
