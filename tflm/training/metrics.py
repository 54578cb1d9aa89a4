"""Classification metrics from a confusion matrix: accuracy, per-class and macro F1.

The trainer sums confusion matrices over batches and replicas (exact: they
are counts), then `classification_report` turns the total into numbers.
Conventions as scikit-learn's `classification_report` with `zero_division=0`:
a class never predicted has precision 0, a class with no examples recall 0;
macro-F1 is the unweighted mean of the per-class F1 over all classes.

Example:
>>> report = classification_report([[5, 1], [2, 2]], ["neg", "pos"])
>>> report["accuracy"], report["macro_f1"]          # 0.7, 0.6703...
"""

import numpy as np


def classification_report(confusion, label_names=None):
    """Accuracy, macro-F1, per-class precision/recall/F1/support from `confusion[true][pred]`."""
    confusion = np.asarray(confusion, np.float64)
    classes = confusion.shape[0]
    names = list(label_names) if label_names is not None else [str(i) for i in range(classes)]
    true_positive = np.diag(confusion)
    predicted = confusion.sum(axis=0)
    support = confusion.sum(axis=1)
    total = confusion.sum()
    precision = np.divide(true_positive, predicted, out=np.zeros(classes), where=predicted > 0)
    recall = np.divide(true_positive, support, out=np.zeros(classes), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(classes),
                   where=denominator > 0)
    return {
        "accuracy": float(true_positive.sum() / total) if total else 0.0,
        "macro_f1": float(f1.mean()),
        "examples": int(round(total)),
        "majority_accuracy": float(support.max() / total) if total else 0.0,
        "per_class": {name: {"precision": float(p), "recall": float(r), "f1": float(f),
                             "support": int(round(s))}
                      for name, p, r, f, s in zip(names, precision, recall, f1, support)},
        "label_names": names,
        "confusion_matrix": [[int(round(x)) for x in row] for row in confusion],
    }


def confusion_matrix(labels, predictions, num_classes, weights=None):
    """`confusion[true][pred]` counts (NumPy), rows of weight 0 left out."""
    labels = np.asarray(labels, np.int64).ravel()
    predictions = np.asarray(predictions, np.int64).ravel()
    weights = np.ones_like(labels, np.float64) if weights is None else np.asarray(weights).ravel()
    confusion = np.zeros((num_classes, num_classes))
    np.add.at(confusion, (labels, predictions), weights)
    return confusion


def evaluate_classifier(model, dataset, label_names=None):
    """`classification_report` of `model` on `dataset` of `(features, labels[, weights])`.

    For notebooks: `evaluate_classifier(model, eval_data, model.label_names)`.
    """
    total = np.zeros((model.num_classes, model.num_classes))
    for batch in dataset:
        features, labels = batch[0], batch[1]
        weights = batch[2] if len(batch) > 2 else None
        logits = model(features, training=False)
        total += confusion_matrix(labels, np.argmax(np.asarray(logits), axis=-1),
                                  model.num_classes, weights)
    return classification_report(total, label_names or model.label_names)
