"""`data.class_weights` of the classification task: "balanced" is scikit-learn's formula, a
mapping weighs its labels, the trainer's and `model.fit`'s loss is the NumPy weighted mean
of the cross-entropy, evaluation stays unweighted, and a bad mapping is a ConfigError."""

import collections
import json

import numpy as np
import pytest

from labelled_fixtures import paragraphs
from tflm.config import ConfigError, save_experiment
from tflm.experiment import load_experiment, run_experiment
from tflm.tasks import get_task, make_dataset
from tflm.training.trainer import Trainer

QUIET = dict(print_fn=lambda line: None)
EVERY_NTH = 5
SMALL = ("model.task=classification,model.num_layers=1,model.num_heads=2,model.hidden_dim=16,"
         "model.intermediate_dim=32,model.max_sequence_length=32,model.dropout=0.0,"
         "model.classifier_dropout=0.0,data.input_format=jsonl,"
         f"data.eval_every_nth_document={EVERY_NTH},data.sequence_length=32,"
         "data.global_batch_size=16,trainer.log_every=1,trainer.steps_per_loop=1,"
         "trainer.checkpoint_every=100,trainer.warmup_steps=0,trainer.jit_compile=false")


@pytest.fixture(scope="module")
def skewed(tmp_path_factory):
    """Paragraphs labelled "dialogue" (a quotation mark) or "narration", dialogue cut to
    one in eight so that it is the rare class (about 1 in 4)."""
    records, dialogue = [], 0
    for text in paragraphs(300):
        label = "dialogue" if '"' in text else "narration"
        if label == "dialogue":
            dialogue += 1
            if dialogue % 8:
                continue
        records.append({"text": text[:100], "label": label})
    path = tmp_path_factory.mktemp("skewed") / "paragraphs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path, records


def _config(path, extra=""):
    return load_experiment(None, ",".join(filter(None, [f"{SMALL},data.input_path={path}",
                                                        extra])))


def test_balanced_weights_are_n_over_classes_times_count(skewed):
    path, records = skewed
    train = [r["label"] for i, r in enumerate(records) if i % EVERY_NTH]
    counts = collections.Counter(train)
    assert counts["dialogue"] < counts["narration"] / 2  # skewed
    expected = [len(train) / (2 * counts[name]) for name in ("dialogue", "narration")]
    config = _config(path, "data.class_weights=balanced")
    np.testing.assert_allclose(get_task(config).class_weights(), expected, rtol=1e-6)

    # The training pipeline multiplies them in; the evaluation pipeline does not.
    _, labels, weights = next(iter(make_dataset(config)))
    np.testing.assert_allclose(weights, np.take(expected, labels), rtol=1e-6)
    for _, _, weights in make_dataset(config, training=False, split="eval"):
        assert set(np.asarray(weights).tolist()) <= {0.0, 1.0}


def test_the_trainer_and_fit_minimise_the_numpy_weighted_loss(tmp_path, skewed):
    """A mapping (narration unlisted: 1): the first step's loss is sum(w * CE) / sum(w) with
    w the class weight, in the trainer and in `model.fit` on `make_dataset`."""
    path, records = skewed
    config = _config(path, "data.class_weights={dialogue: 3.5},trainer.train_steps=1")
    task = get_task(config)
    trainer = Trainer(task, str(tmp_path / "run"), **QUIET)
    initial = trainer.model.get_weights()
    assert config.data.label_names == ["dialogue", "narration"]
    features, labels, weights = next(iter(make_dataset(config)))  # the trainer's first batch
    labels = np.asarray(labels)
    class_weight = np.where(labels == 0, 3.5, 1.0)
    np.testing.assert_array_equal(weights, class_weight)
    logits = np.asarray(trainer.model(features, training=False), np.float64)
    top = logits.max(axis=1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    cross_entropy = log_z - logits[np.arange(len(labels)), labels]
    expected = float(np.sum(class_weight * cross_entropy) / np.sum(class_weight))
    assert abs(expected - cross_entropy.mean()) > 1e-4  # the weights matter here

    trainer.train()
    assert trainer.history[0]["loss"] == pytest.approx(expected, rel=1e-5)

    model = task.build_model()
    model.set_weights(initial)
    model.compile(jit_compile=False)
    history = model.fit(make_dataset(config), steps_per_epoch=1, epochs=1, verbose=0).history
    assert history["loss"][0] == pytest.approx(expected, rel=1e-5)

    # Evaluation counts examples, not weights.
    results = trainer.evaluate()
    held_out = len(records[::EVERY_NTH])
    assert results["examples"] == held_out == sum(map(sum, results["confusion_matrix"]))


def test_the_weights_are_kept_in_params_yaml(tmp_path, skewed):
    path, _ = skewed
    config = _config(path, "data.class_weights={dialogue: 2, narration: 0.5}")
    save_experiment(config, tmp_path / "params.yaml")
    saved = load_experiment(str(tmp_path / "params.yaml"))
    assert saved == config and saved.data.class_weights == {"dialogue": 2, "narration": 0.5}
    balanced = _config(path, "data.class_weights=balanced")
    save_experiment(balanced, tmp_path / "balanced.yaml")
    assert load_experiment(str(tmp_path / "balanced.yaml")).data.class_weights == "balanced"


def test_bad_class_weights_are_config_errors_naming_the_key(tmp_path, skewed):
    path, _ = skewed
    labels = "data.label_names=[dialogue, narration]"
    with pytest.raises(ConfigError, match=r"data.class_weights: unknown label 'dialog'; the "
                                          r"labels are \['dialogue', 'narration'\]"):
        _config(path, f"{labels},data.class_weights={{dialog: 2}}")
    # Labels taken from the data: checked when the data is read, before anything is written.
    config = _config(path, "data.class_weights={dialog: 2}")
    with pytest.raises(ConfigError, match=r"data.class_weights: unknown label 'dialog'"):
        run_experiment(config, str(tmp_path / "run"), **QUIET)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match=r"data.class_weights='balance': expected 'balanced'"):
        _config(path, "data.class_weights=balance")
    with pytest.raises(ConfigError, match=r"the weight of 'dialogue' is -1; expected a finite"):
        _config(path, "data.class_weights={dialogue: -1}")
    with pytest.raises(ConfigError, match=r"data.class_weights=\[1, 2\]: expected"):
        _config(path, "data.class_weights=[1, 2]")
    with pytest.raises(ConfigError, match="Unknown config key 'data.class_weights'"):
        load_experiment("configs/tiny_gpt.yaml", "data.class_weights=balanced")
