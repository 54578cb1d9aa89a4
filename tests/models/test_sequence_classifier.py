import json

import keras
import numpy as np
import pytest

from tflm.data import ByteTokenizer, classification_dataset
from tflm.models import SequenceClassifier, TransformerBackbone

ENCODER = dict(vocabulary_size=262, num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64,
               max_sequence_length=64, num_segments=2, embedding_norm=True, pooler=True,
               dropout=0.0, attention_dropout=0.0)


def _x(seed=0, batch=4, length=10):
    rng = np.random.default_rng(seed)
    return {"token_ids": rng.integers(6, 262, (batch, length)).astype("int32"),
            "padding_mask": np.ones((batch, length), "int32")}


@pytest.mark.parametrize("pooling", ["pooled", "first", "mean"])
def test_shapes_and_round_trip(pooling, tmp_path):
    model = SequenceClassifier(TransformerBackbone(**ENCODER), num_classes=3, pooling=pooling)
    x = _x()
    logits = model(x)
    assert logits.shape == (4, 3) and logits.dtype == "float32"
    model.fit(x, np.array([0, 1, 2, 1]), epochs=1, verbose=0)
    path = str(tmp_path / "clf.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert restored.get_config() == model.get_config()
    np.testing.assert_array_equal(np.asarray(restored(x)), np.asarray(model(x)))


def test_default_pooling():
    assert SequenceClassifier(TransformerBackbone(**ENCODER), 2).pooling == "pooled"
    no_pooler = TransformerBackbone(**dict(ENCODER, pooler=False))
    assert SequenceClassifier(no_pooler, 2).pooling == "first"
    decoder = TransformerBackbone(**dict(ENCODER, pooler=False, causal=True, norm_first=True))
    assert SequenceClassifier(decoder, 2).pooling == "last"
    with pytest.raises(ValueError, match="pooler=True"):
        SequenceClassifier(no_pooler, 2, pooling="pooled")


@pytest.mark.parametrize("pooling", ["last", "mean", "first"])
def test_padding_invariance(pooling):
    decoder = TransformerBackbone(**dict(ENCODER, pooler=False, causal=True, norm_first=True))
    model = SequenceClassifier(decoder, 2, pooling=pooling)
    x = _x(length=6)
    padded = {"token_ids": np.concatenate([x["token_ids"], np.full((4, 4), 7, "int32")], 1),
              "padding_mask": np.concatenate([x["padding_mask"], np.zeros((4, 4), "int32")], 1)}
    np.testing.assert_allclose(np.asarray(model(padded)), np.asarray(model(x)), atol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_logits_float32_under_mixed_precision(policy):
    model = SequenceClassifier(TransformerBackbone(**ENCODER, dtype=policy), num_classes=2)
    assert model(_x()).dtype == "float32"


def test_learns_review_sentiment(shared_data):
    """Held-out loss on real Chinese reviews goes down; accuracy beats the majority class.

    Byte-level input and a 2-layer model from scratch learn slowly; a real
    tokenizer and a pretrained backbone do far better (see the fine-tuning tests).
    """
    texts, labels = [], []
    with open(shared_data / "zh_review_sentiment.jsonl", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            texts.append(record["text"])
            labels.append(1 if record["label"] == "pos" else 0)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(texts))
    train_idx, test_idx = order[:5000], order[5000:5600]
    tokenizer = ByteTokenizer()

    def dataset(indices, shuffle):
        return classification_dataset([texts[i] for i in indices], [labels[i] for i in indices],
                                      tokenizer, sequence_length=96, batch_size=32,
                                      shuffle_buffer_size=2000 if shuffle else 0, repeat=shuffle)

    keras.utils.set_random_seed(0)
    model = SequenceClassifier(
        TransformerBackbone(**dict(ENCODER, max_sequence_length=96)), num_classes=2, pooling="mean"
    )
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    before = model.evaluate(dataset(test_idx, False), verbose=0, return_dict=True)
    model.fit(dataset(train_idx, True), steps_per_epoch=300, epochs=1, verbose=0)
    after = model.evaluate(dataset(test_idx, False), verbose=0, return_dict=True)
    majority = max(np.mean([labels[i] for i in test_idx]), 1 - np.mean([labels[i] for i in test_idx]))
    assert after["loss"] < before["loss"] - 0.02
    assert after["accuracy"] > majority + 0.03
