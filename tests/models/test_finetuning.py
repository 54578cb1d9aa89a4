"""Fine-tuning modes train only what they should; layer-wise learning rates."""

import keras
import numpy as np
import pytest

from tflm.models import SequenceClassifier, TransformerBackbone
from tflm.models.finetuning import apply_finetuning, embedding_layers, layer_lr_multipliers

ENCODER = dict(vocabulary_size=262, num_layers=3, num_heads=2, hidden_dim=16, intermediate_dim=32,
               max_sequence_length=32, num_segments=2, embedding_norm=True, pooler=True,
               dropout=0.1, attention_dropout=0.1)
HIDDEN, CLASSES, ADAPTER = 16, 3, 4


def _classifier(adapter_dim=0, classifier_dropout=0.1):
    keras.utils.set_random_seed(0)
    backbone = TransformerBackbone(**ENCODER, adapter_dim=adapter_dim)
    return SequenceClassifier(backbone, CLASSES, dropout=classifier_dropout)


def _count(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


def _data(n=32, length=12):
    rng = np.random.default_rng(0)
    x = {"token_ids": rng.integers(6, 262, (n, length)).astype("int32"),
         "padding_mask": np.ones((n, length), "int32")}
    return x, rng.integers(0, CLASSES, n)


def _fit_and_compare(model):
    """Trains a few steps; returns (changed, unchanged) trainable/frozen check results."""
    frozen = [(v, np.array(v)) for v in model.weights if not _is_trainable(model, v)]
    trained = [(v, np.array(v)) for v in model.trainable_variables]
    model.compile(optimizer=keras.optimizers.AdamW(1e-2))
    x, y = _data()
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    for v, before in frozen:
        np.testing.assert_array_equal(np.array(v), before, err_msg=f"{v.path} changed")
    moved = [v.path for v, before in trained if not np.array_equal(np.array(v), before)]
    return moved, len(trained)


def _is_trainable(model, variable):
    return any(variable is v for v in model.trainable_variables)


def test_full_trains_everything():
    model = apply_finetuning(_classifier(), "full")
    assert len(model.trainable_variables) == len(model.weights)


def test_freezing_the_bottom_layers():
    model = apply_finetuning(_classifier(), "full", freeze_bottom_layers=2)
    backbone = model.backbone
    frozen = [v for layer in embedding_layers(backbone) + backbone.blocks[:2] for v in layer.weights]
    assert _count(model.trainable_variables) == _count(model.weights) - _count(frozen)
    moved, trained = _fit_and_compare(model)
    assert len(moved) == trained  # and every frozen weight is bit-identical (checked inside)


def test_feature_extraction_trains_the_head_only_in_inference_mode():
    model = apply_finetuning(_classifier(classifier_dropout=0.0), "feature_extraction")
    assert _count(model.trainable_variables) == HIDDEN * CLASSES + CLASSES
    x, _ = _data(4)
    # The frozen backbone runs without dropout even in a training call.
    np.testing.assert_array_equal(np.asarray(model(x, training=True)),
                                  np.asarray(model(x, training=True)))
    moved, trained = _fit_and_compare(model)
    assert len(moved) == trained == 2


def test_adapters_train_adapters_and_head_only():
    model = apply_finetuning(_classifier(adapter_dim=ADAPTER), "adapters")
    per_adapter = HIDDEN * ADAPTER + ADAPTER + ADAPTER * HIDDEN + HIDDEN
    expected = ENCODER["num_layers"] * 2 * per_adapter + HIDDEN * CLASSES + CLASSES
    assert _count(model.trainable_variables) == expected
    assert all("adapter" in v.path or "classifier" in v.path for v in model.trainable_variables)
    # Dropout stays on in the backbone: two training calls differ.
    x, _ = _data(4)
    assert not np.array_equal(np.asarray(model(x, training=True)),
                              np.asarray(model(x, training=True)))
    moved, trained = _fit_and_compare(model)
    assert len(moved) == trained


def test_bad_requests_are_errors():
    with pytest.raises(ValueError, match="adapter_dim > 0"):
        apply_finetuning(_classifier(), "adapters")
    with pytest.raises(ValueError, match=r"must be in \[0, 3\]"):
        apply_finetuning(_classifier(), "full", freeze_bottom_layers=4)
    with pytest.raises(ValueError, match="Unknown fine-tuning mode"):
        apply_finetuning(_classifier(), "prefix_tuning")


def test_layer_multipliers():
    model = apply_finetuning(_classifier(adapter_dim=ADAPTER), "full")
    multipliers = dict(zip([v.path for v in model.trainable_variables],
                           layer_lr_multipliers(model, 0.5)))
    layers = ENCODER["num_layers"]
    for path, value in multipliers.items():
        if "adapter" in path or "classifier" in path or "pooler" in path:
            expected = 1.0
        elif "block_" in path:
            block = int(path.split("block_")[1].split("/")[0])
            expected = 0.5 ** (layers - block)
        else:
            assert "embedding" in path, path
            expected = 0.5 ** (layers + 1)
        assert value == expected, path
