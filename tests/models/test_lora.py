"""LoRA: a new factor pair leaves its Dense unchanged; only factors and head train; merged
models and reloaded factors answer as the trained model; config errors name the key."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tflm.config import ConfigError, load_experiment
from tflm.export.quantize import quantize_model
from tflm.layers.lora import LoraDense
from tflm.models import CausalLM, SequenceClassifier, TransformerBackbone
from tflm.models.finetuning import apply_finetuning, layer_lr_multipliers
from tflm.models.lora import LoraError, load_lora, lora_layers, merge_lora, save_lora
from tflm.models.pretrained import copy_pretrained_weights
from tflm.models.seq2seq_lm import Seq2SeqBackbone, Seq2SeqLM

ALL_TARGETS = ["query", "key", "value", "attention_output", "feed_forward_in",
               "feed_forward_out"]
SMALL = dict(vocabulary_size=100, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
             max_sequence_length=16, dropout=0.0, attention_dropout=0.0)


def _lora(targets=("query", "value"), dropout=0.0):
    return {"rank": 2, "alpha": 4.0, "dropout": dropout, "targets": list(targets)}


def _randomize_factors(model, seed=1):
    """Gives every B a value (a new B is zero: the LoRA model would equal its base)."""
    rng = np.random.default_rng(seed)
    for layer in lora_layers(model):
        for b in layer.lora_b:
            b.assign(rng.normal(0, 0.3, b.shape).astype("float32"))


def _ids(n=2, length=7):
    ids = np.random.default_rng(0).integers(3, 100, (n, length)).astype("int32")
    return {"token_ids": ids, "padding_mask": np.ones_like(ids)}


def test_lora_dense_is_its_dense_until_trained_and_folds_into_one_kernel():
    keras.utils.set_random_seed(0)
    dense = LoraDense(12, rank=2, alpha=4.0, lora_dropout=0.5,
                      slices=[("query", 0, 4), ("value", 8, 12)])
    x = np.random.default_rng(0).normal(size=(2, 3, 8)).astype("float32")
    dense.build(x.shape)
    kernel, bias = np.array(dense._kernel), np.array(dense.bias)
    # New (B = 0): exactly the Dense, dropout or not; dropout never touches the base path.
    np.testing.assert_array_equal(dense(x), x @ kernel + bias)
    np.testing.assert_allclose(dense(x, training=True), x @ kernel + bias, rtol=1e-6)
    assert [v.name for v in dense.trainable_variables] == [
        "lora_a_query", "lora_b_query", "lora_a_value", "lora_b_value"]
    for b in dense.lora_b:
        b.assign(np.ones(b.shape, "float32"))
    a_q, b_q, a_v, b_v = (np.array(v) for v in dense.trainable_variables)
    expected = x @ kernel + bias
    expected[..., 0:4] += x @ a_q @ b_q * 2.0
    expected[..., 8:12] += x @ a_v @ b_v * 2.0
    np.testing.assert_allclose(dense(x), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x @ np.array(dense.merged_kernel()) + bias, expected,
                               rtol=1e-5, atol=1e-5)
    assert not np.allclose(dense(x, training=True), expected)  # dropout on the factors' input
    clone = LoraDense.from_config(dense.get_config())
    assert clone.get_config() == dense.get_config()


def test_a_lora_model_round_trips_through_checkpoints_and_model_keras(tmp_path):
    build = lambda: CausalLM(TransformerBackbone(**SMALL, causal=True, lora=_lora()))  # noqa
    model = build()
    _randomize_factors(model)
    path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    restored = build()
    tf.train.Checkpoint(model=restored).read(path).assert_existing_objects_matched()
    np.testing.assert_array_equal(restored(_ids()), model(_ids()))
    model.save(str(tmp_path / "model.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "model.keras"))
    np.testing.assert_array_equal(loaded(_ids()), model(_ids()))


def test_only_factors_and_head_train_and_every_base_weight_stays_bit_identical():
    keras.utils.set_random_seed(0)
    backbone = TransformerBackbone(**dict(SMALL, dropout=0.1), pooler=True,
                                   lora=_lora(ALL_TARGETS, dropout=0.1))
    model = apply_finetuning(SequenceClassifier(backbone, 3), "lora")
    trained = {v.path for v in model.trainable_variables}
    assert all("/lora_" in p or "classifier" in p for p in trained), trained
    assert len([p for p in trained if "/lora_" in p]) == 2 * 2 * (3 + 1 + 1 + 1)  # ab, blocks
    frozen = [(v, np.array(v)) for v in model.weights if v.path not in trained]
    before = {v.path: np.array(v) for v in model.trainable_variables}
    model.compile(optimizer=keras.optimizers.AdamW(1e-2))
    x = _ids(16, 8)
    model.fit(x, np.arange(16) % 3, batch_size=8, epochs=2, verbose=0)
    for v, value in frozen:
        np.testing.assert_array_equal(np.array(v), value, err_msg=v.path)
    assert all(not np.array_equal(np.array(v), before[v.path])
               for v in model.trainable_variables if "lora_b" in v.path)
    with pytest.raises(ValueError, match="mode='lora' needs a backbone built with lora"):
        apply_finetuning(SequenceClassifier(TransformerBackbone(**SMALL), 3), "lora")


@pytest.mark.parametrize("kind", ["causal_lm", "seq2seq"])
def test_a_merged_model_answers_as_the_unmerged_one_with_plain_kernels(kind):
    keras.utils.set_random_seed(0)
    x = _ids()
    if kind == "seq2seq":  # cross-attention's query/key/value/output are the same targets
        model = Seq2SeqLM(Seq2SeqBackbone(**SMALL, lora=_lora(ALL_TARGETS)))
        x = {"encoder_token_ids": x["token_ids"], "encoder_padding_mask": x["padding_mask"],
             "decoder_token_ids": x["token_ids"][:, :5],
             "decoder_padding_mask": x["padding_mask"][:, :5]}
        assert len(lora_layers(model)) == 2 * 4 + 2 * 7  # encoder 4 per block, decoder 7
    else:
        model = CausalLM(TransformerBackbone(**SMALL, causal=True, lora=_lora(ALL_TARGETS)))
    base = model(x)
    _randomize_factors(model)
    adapted = np.array(model(x))
    assert not np.allclose(adapted, base, atol=1e-3)
    merged = merge_lora(model)
    assert not lora_layers(merged) and merged.backbone.get_config()["lora"] is None
    factors = sum(len(layer.lora_a) * 2 for layer in lora_layers(model))
    assert len(merged.weights) == len(model.weights) - factors
    np.testing.assert_allclose(merged(x), adapted, atol=2e-5)
    np.testing.assert_array_equal(model(x), adapted)  # the caller's model is unchanged
    assert merge_lora(merged) is merged
    # The export's order: merged, then int8 (weight-only) still answers as the adapted model.
    int8 = quantize_model(merged, "int8")
    assert any(v.dtype == "int8" for v in int8.weights)
    np.testing.assert_allclose(int8(x), adapted, atol=0.05 * np.abs(adapted).max())


def test_factors_alone_reload_onto_the_base(tmp_path):
    keras.utils.set_random_seed(0)
    classifier = lambda: SequenceClassifier(  # noqa: E731
        TransformerBackbone(**SMALL, lora=_lora()), 3)
    trained = apply_finetuning(classifier(), "lora")
    _randomize_factors(trained)
    trained.get_layer("classifier").kernel.assign(np.ones((16, 3), "float32"))
    path = str(tmp_path / "lora.safetensors")
    size = save_lora(trained, path)
    params = sum(int(np.prod(v.shape)) for v in trained.trainable_variables)
    assert size == 4 * params and size < 4 * trained.count_params() / 5
    other = apply_finetuning(classifier(), "lora")
    copy_pretrained_weights(trained, other)  # the base (and this head) ...
    _randomize_factors(other, seed=2)
    other.get_layer("classifier").kernel.assign(np.zeros((16, 3), "float32"))
    load_lora(other, path)  # ... then the file: factors and head
    x = _ids()
    np.testing.assert_allclose(other(x), trained(x), atol=1e-6)

    wrong = SequenceClassifier(TransformerBackbone(**SMALL, lora=dict(_lora(), alpha=8.0)), 3)
    with pytest.raises(LoraError, match=r"lora.safetensors: trained with model.lora_alpha=4.0"):
        load_lora(wrong, path)
    with pytest.raises(LoraError, match="has no LoRA factors"):
        load_lora(SequenceClassifier(TransformerBackbone(**SMALL), 3), path)


def test_lora_factors_learn_at_their_blocks_rate():
    model = apply_finetuning(SequenceClassifier(
        TransformerBackbone(**SMALL, lora=_lora(ALL_TARGETS)), 3), "lora")
    for v, value in zip(model.trainable_variables, layer_lr_multipliers(model, 0.5)):
        block = int(v.path.split("block_")[1][0]) if "block_" in v.path else None
        assert value == (1.0 if block is None else 0.5 ** (2 - block)), v.path


@pytest.mark.parametrize("override, message", [
    ("model.lora_targets=[query,keys]", r"model.lora_targets=\['query', 'keys'\].*unknown \['keys'\]"),
    ("model.lora_targets=[]", r"model.lora_targets=\[\]: expected a non-empty list"),
    ("model.lora_targets=[value,value]", "model.lora_targets=.* names a target twice"),
])
def test_bad_lora_keys_are_errors_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_experiment("configs/tiny_gpt.yaml", f"model.finetune=lora,{override}")
