import numpy as np
import pytest

from tflm.models import SequenceClassifier, TransformerBackbone
from tflm.training.metrics import classification_report, confusion_matrix, evaluate_classifier


def test_report_matches_the_definitions():
    confusion = [[5, 1, 0], [2, 2, 0], [0, 0, 0]]  # class "c": no examples, never predicted
    report = classification_report(confusion, ["a", "b", "c"])
    assert report["accuracy"] == pytest.approx(0.7)
    assert report["per_class"]["a"] == pytest.approx(
        {"precision": 5 / 7, "recall": 5 / 6, "f1": 10 / 13, "support": 6})
    assert report["per_class"]["b"]["f1"] == pytest.approx(4 / 7)
    assert report["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert report["macro_f1"] == pytest.approx((10 / 13 + 4 / 7 + 0) / 3)
    assert report["majority_accuracy"] == pytest.approx(0.6)
    assert report["confusion_matrix"] == confusion and report["examples"] == 10


def test_confusion_matrix_counts_weighted_rows():
    confusion = confusion_matrix([0, 1, 1, 2], [0, 2, 1, 2], 3, weights=[1, 1, 0, 1])
    np.testing.assert_array_equal(confusion, [[1, 0, 0], [0, 0, 1], [0, 0, 1]])


def test_evaluate_classifier_agrees_with_argmax():
    backbone = TransformerBackbone(vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=8,
                                   intermediate_dim=16, max_sequence_length=8)
    model = SequenceClassifier(backbone, 2, label_names=["no", "yes"])
    rng = np.random.default_rng(0)
    x = {"token_ids": rng.integers(0, 50, (6, 5)).astype("int32"),
         "padding_mask": np.ones((6, 5), "int32")}
    labels = np.array([0, 1, 0, 1, 1, 0])
    report = evaluate_classifier(model, [(x, labels)])
    predicted = np.argmax(np.asarray(model(x)), axis=-1)
    assert report["accuracy"] == pytest.approx(np.mean(predicted == labels))
    assert report["label_names"] == ["no", "yes"]
