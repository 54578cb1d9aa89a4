"""masked_lm with next-sentence prediction: BERT's NSP head on the pooled output, its loss
beside the masked-LM loss with a weight from the config (each averaged over its own
positions of the global batch), NSP accuracy in the evaluation, and imported heads."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from hf_fixtures import write_bert_folder
from numpy_reference import bert_forward, bert_mlm_logits
from tflm.config import ConfigError
from tflm.experiment import export_saved_model, load_experiment, run_experiment
from tflm.models.huggingface import load_huggingface
from tflm.tasks import convert_checkpoint, get_task, load_pretrained, make_dataset
from tflm.training.trainer import Trainer

QUIET = dict(print_fn=lambda line: None)
PAIRS = ("data.sentence_pairs=true,data.sequence_length=32,data.global_batch_size=8,"
         "data.max_predictions_per_seq=5,trainer.steps_per_loop=2,trainer.log_every=2,"
         "trainer.checkpoint_every=100,trainer.warmup_steps=0,trainer.eval_steps=2,"
         "model.num_layers=1,model.hidden_dim=32,model.intermediate_dim=64,model.num_heads=2,"
         "model.dropout=0.0,model.attention_dropout=0.0")


def _config(extra=""):
    return load_experiment("configs/tiny_bert.yaml", ",".join(filter(None, [PAIRS, extra])))


def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _cross_entropy(logits, labels):
    return -np.take_along_axis(_log_softmax(np.asarray(logits, np.float64)),
                               np.asarray(labels)[..., None], axis=-1)[..., 0]


def test_sentence_pairs_turn_the_head_on_and_its_keys_are_checked():
    config = _config()
    assert config.model.next_sentence_prediction is True
    assert get_task(config).build_model().next_sentence_prediction
    assert _config("data.sentence_pairs=false").model.next_sentence_prediction is False
    with pytest.raises(ConfigError, match="needs model.pooler=true"):
        _config("model.pooler=false")
    with pytest.raises(ConfigError, match="next_sentence_prediction=True but "
                                          "data.sentence_pairs=False"):
        _config("data.sentence_pairs=false,model.next_sentence_prediction=true")
    with pytest.raises(ConfigError, match=r"model\.next_sentence_weight: -1\.0; must be >= 0"):
        _config("model.next_sentence_weight=-1")


def test_the_loss_is_the_masked_mean_plus_the_weighted_row_mean():
    config = _config("model.next_sentence_weight=0.5")
    model = get_task(config).build_model()
    features, labels, weights = next(iter(make_dataset(config)))
    outputs = model(features)
    mlm = _cross_entropy(outputs["masked_lm"], labels["masked_lm"])
    w = np.asarray(weights["masked_lm"], np.float64)
    nsp = _cross_entropy(outputs["next_sentence"], labels["next_sentence"])
    expected = (mlm * w).sum() / w.sum() + 0.5 * nsp.mean()
    sums, totals = model.loss_sums(labels, outputs, weights)
    np.testing.assert_allclose(float(np.sum(np.asarray(sums) / np.asarray(totals))), expected,
                               rtol=1e-5)
    # model.fit's loss is the same definition (Keras' per-output losses and loss weights).
    keras_loss = model.compute_loss(features, labels, outputs, weights)
    np.testing.assert_allclose(float(keras_loss), expected, rtol=1e-5)


def test_the_trainer_averages_each_term_over_its_own_positions(tmp_path):
    """One training step's reported loss is the NumPy loss of its batch, both terms."""
    config = _config("trainer.train_steps=1,trainer.jit_compile=false,trainer.clipnorm=null")
    batch = next(iter(make_dataset(config)))
    trainer = Trainer(get_task(config), str(tmp_path / "run"), dataset_fn=lambda context: tf.data.Dataset
                      .from_tensors(batch).repeat(), **QUIET)
    before = trainer.model(batch[0])
    features, labels, weights = batch
    w = np.asarray(weights["masked_lm"], np.float64)
    expected = ((_cross_entropy(before["masked_lm"], labels["masked_lm"]) * w).sum() / w.sum()
                + _cross_entropy(before["next_sentence"], labels["next_sentence"]).mean())
    losses, _ = trainer.train_step.train_loop(tf.constant(1))
    np.testing.assert_allclose(float(losses[0]), expected, rtol=1e-5)


def test_trains_evaluates_resumes_and_serves(tmp_path):
    config = _config("trainer.train_steps=4,trainer.jit_compile=false,"
                     "data.eval_every_nth_document=5")
    lines = []
    trained = run_experiment(config, str(tmp_path / "run"), mode="train_and_eval",
                             print_fn=lines.append)
    results = trained.eval_results
    for key in ("masked_accuracy", "next_sentence_accuracy", "next_sentence_loss",
                "masked_lm_loss", "perplexity"):
        assert key in results, key
    assert 0.0 <= results["next_sentence_accuracy"] <= 1.0
    np.testing.assert_allclose(results["loss"], results["masked_lm_loss"]
                               + results["next_sentence_loss"], rtol=1e-9)
    saved = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert saved["next_sentence_accuracy"] == results["next_sentence_accuracy"]
    # Resuming in two pieces gives the same weights as one run.
    Trainer(get_task(config), str(tmp_path / "pieces"), **QUIET).train(until_step=2)
    resumed = run_experiment(config, str(tmp_path / "pieces"), **QUIET)
    for a, b in zip(trained.model.weights, resumed.model.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The saved model keeps its head, and fill_mask serves through it.
    model, tokenizer, _ = load_pretrained(str(tmp_path / "run"))
    assert model.next_sentence_prediction
    path = export_saved_model(model, tokenizer, str(tmp_path / "export"), warmup=False)
    fill = tf.saved_model.load(path).signatures["fill_mask"]
    answer = fill(text=tf.constant(["It is a [MASK] universally acknowledged"]),
                  top_k=tf.constant(3))
    assert answer["tokens"].shape == (1, 3) and bool(answer["has_mask"][0])


def test_model_fit_trains_both_heads():
    config = _config()
    model = get_task(config).build_model()
    history = model.fit(make_dataset(config), steps_per_epoch=2, epochs=1, verbose=0)
    assert {"masked_lm_accuracy", "next_sentence_accuracy"} <= set(history.history)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert restored.next_sentence_prediction and restored.next_sentence_weight == 1.0


def test_an_imported_bert_brings_its_next_sentence_head(tmp_path):
    config, params = write_bert_folder(str(tmp_path / "hf"), next_sentence=True)
    imported = load_huggingface(str(tmp_path / "hf"))
    model = imported.model
    assert model.next_sentence_prediction and imported.head_loaded
    assert imported.unused_tensors == []
    ids = np.array([[2, 40, 41, 42, 3, 50, 51, 3]], "int32")
    types = np.array([[0, 0, 0, 0, 0, 1, 1, 1]], "int32")
    outputs = model({"token_ids": ids, "segment_ids": types, "padding_mask": np.ones_like(ids),
                     "mask_positions": np.array([[1, 5]], "int32")})
    sequence, pooled = bert_forward(params, config, ids, types)
    expected_nsp = pooled @ params["cls.seq_relationship.weight"].T + \
        params["cls.seq_relationship.bias"]
    np.testing.assert_allclose(np.asarray(outputs["next_sentence"]), expected_nsp, atol=1e-4)
    expected_mlm = bert_mlm_logits(params, config, sequence[:, [1, 5]])
    np.testing.assert_allclose(np.asarray(outputs["masked_lm"]), expected_mlm, atol=1e-3)
    # Converted, the model_dir pretrains on sentence pairs with the imported head.
    convert_checkpoint(str(tmp_path / "hf"), str(tmp_path / "converted"), **QUIET)
    _, _, saved = load_pretrained(str(tmp_path / "converted"))
    assert saved.model.next_sentence_prediction and saved.data.sentence_pairs
