"""multi_label_classification: reading label lists (and bad records), the weighted sigmoid loss
(trainer and model.fit), evaluation and threshold tuning against NumPy, resuming, two workers,
tflm-eval, export served over REST and gRPC, and the entity types of People's Daily lines.

Also the job of the two-worker test: `python tests/tasks/test_multi_label_classification.py
MODEL_DIR DATA_FILE` trains under TF_CONFIG and saves each worker's weights.
"""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tools"))
sys.path.insert(0, str(REPO_ROOT / "tests" / "export"))
from launch_local_cluster import LocalCluster  # noqa: E402
from serving_adapters import GrpcServer, RestServer, ServedModels  # noqa: E402

from tflm.config import ConfigError  # noqa: E402
from tflm.data.classification import LabelledDataError, encode_classification  # noqa: E402
from tflm.data.stats import InputStats  # noqa: E402
from tflm.experiment import (  # noqa: E402
    export_model_dir,
    load_experiment,
    load_trained,
    run_experiment,
)
from tflm.export.client import ServingClient  # noqa: E402
from tflm.run_dir import load_keras_model  # noqa: E402
from tflm.tasks import get_task, make_dataset  # noqa: E402
from tflm.tasks.multi_label_classification import (  # noqa: E402
    THRESHOLD_GRID,
    MultiLabelClassifier,
    WeightedSigmoidCrossEntropy,
    read_multi_labelled,
)
from tflm.training.trainer import Trainer  # noqa: E402

CONFIG = str(REPO_ROOT / "configs" / "multi_label_ner_types.yaml")
NAMES = ["animal", "fruit", "place"]
WORDS = {"animal": ["cat", "dog", "bear"], "fruit": ["apple", "pear", "plum"],
         "place": ["Paris", "Rome", "Oslo"]}
FILLER = ["the", "a", "and", "then", "so", "we", "saw", "it"]
SMALL = ("model.num_layers=1,model.hidden_dim=16,model.intermediate_dim=32,model.num_heads=2,"
         "data.sequence_length=32,data.global_batch_size=8,data.eval_every_nth_document=5,"
         "trainer.train_steps=4,trainer.steps_per_loop=2,trainer.log_every=2,"
         "trainer.checkpoint_every=100,trainer.warmup_steps=0,data.label_names=[],"
         "trainer.jit_compile=false")
QUIET = dict(print_fn=lambda line: None)


def write_records(path, count=100, seed=0):
    """JSONL of short texts whose labels are the kinds of word they hold (some none)."""
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(count):
        labels = [name for name in NAMES if rng.random() < 0.4]
        words = list(rng.choice(FILLER, 4)) + [rng.choice(WORDS[n]) for n in labels]
        rng.shuffle(words)
        records.append({"text": " ".join(words), "labels": labels})
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return records


def _config(data_file, extra=""):
    return load_experiment(CONFIG, ",".join(filter(None, [SMALL, f"data.input_path={data_file}",
                                                          extra])))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def numpy_loss(logits, labels, weights, positive_weights):
    """The mean over (example, label) pairs of tf.nn.weighted_cross_entropy_with_logits."""
    p = _sigmoid(logits)
    bce = -(positive_weights * labels * np.log(p) + (1 - labels) * np.log(1 - p))
    return (bce.mean(axis=1) * weights).sum() / weights.sum()


def numpy_counts(probabilities, labels, thresholds):
    predicted = (probabilities > np.asarray(thresholds, np.float32)).astype(np.float64)
    return np.stack([(predicted * labels).sum(0), (predicted * (1 - labels)).sum(0),
                     ((1 - predicted) * labels).sum(0)], axis=-1)


def numpy_f1(tp, fp, fn):
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def numpy_best_thresholds(probabilities, labels, current):
    chosen = []
    for j in range(labels.shape[1]):
        scores = [numpy_f1(*numpy_counts(probabilities[:, j:j + 1], labels[:, j:j + 1], [t])[0])[2]
                  for t in THRESHOLD_GRID]
        best = max(scores)
        if best <= 0:
            chosen.append(current[j])
            continue
        ties = [t for t, s in zip(THRESHOLD_GRID, scores) if s == best]
        chosen.append(min(ties, key=lambda t: (abs(t - 0.5), t)))
    return chosen


def held_out_outputs(model, config):
    """(probabilities, labels, logits) of the held-out records, in the evaluation's rows."""
    logits, labels = [], []
    for features, batch_labels, weights in make_dataset(config, training=False, split="eval"):
        real = np.asarray(weights) > 0
        logits.append(np.asarray(model(features, training=False))[real])
        labels.append(np.asarray(batch_labels)[real])
    logits = np.concatenate(logits)
    probabilities = np.asarray(tf.sigmoid(tf.constant(logits, tf.float32)))
    return probabilities, np.concatenate(labels).astype(np.float64), logits


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "labels.jsonl"
    write_records(path)
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_file):
    """4 steps of train_and_eval with tuned thresholds and balanced positive weights."""
    model_dir = str(tmp_path_factory.mktemp("run"))
    config = _config(data_file, "model.tune_thresholds=true,model.positive_weights=balanced")
    trainer = run_experiment(config, model_dir, mode="train_and_eval", **QUIET)
    assert trainer.status == "completed"
    return config, model_dir, trainer


# -- Data. -------------------------------------------------------------------------------------
def test_reads_label_lists_and_names_each_bad_record(tmp_path):
    path = tmp_path / "bad.jsonl"
    lines = [{"text": "a cat", "labels": ["animal"]},
             {"text": "nothing here", "labels": []},
             {"text": "a cat and a plum", "labels": ["fruit", "animal", "fruit"]},
             {"labels": ["animal"]},                       # 4: no text
             {"text": "x", "label": ["animal"]},           # 5: no labels field
             {"text": "y", "labels": "animal"},            # 6: not a list
             {"text": "a car", "labels": ["vehicle"]},     # 7: unknown label
             {"text": "  ", "labels": []}]                 # 8: empty text
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    stats = InputStats()
    good = read_multi_labelled([str(path)], label_names=NAMES, on_bad_record="count",
                               stats=stats)
    assert good.texts == ["a cat", "nothing here", "a cat and a plum"]
    assert good.labels == [("animal",), (), ("animal", "fruit")]
    assert stats.as_dict()["records_missing_field"] == 5
    for number, why in [(4, "text field 'text' is missing"),
                        (5, "label field 'labels' is missing"),
                        (6, "not a list of label names"), (7, "unknown label 'vehicle'"),
                        (8, "text field 'text' is empty")]:
        kept = [line for i, line in enumerate(lines, 1) if i < 4 or i == number]
        path.write_text("".join(json.dumps(line) + "\n" for line in kept))
        with pytest.raises(LabelledDataError, match=f"{path}:4: .*{why}"):
            read_multi_labelled([str(path)], label_names=NAMES)
    # Through the config: the error names the file and line; with count the record is skipped.
    path.write_text("".join(json.dumps(line) + "\n" for line in lines[:3] + lines[6:7]))
    config = _config(str(path), "data.label_names=[animal,fruit,place],"
                                "data.eval_every_nth_document=0")
    with pytest.raises(LabelledDataError, match=f"{path}:4: unknown label 'vehicle'"):
        make_dataset(config)
    counted = _config(str(path), "data.label_names=[animal,fruit,place],data.on_bad_record=count,"
                                 "data.eval_every_nth_document=0,data.global_batch_size=3")
    stats = InputStats()
    features, labels, _ = next(iter(make_dataset(counted, stats=stats)))
    assert labels.shape == (3, 3) and stats.as_dict()["records_missing_field"] == 1


def test_csv_labels_and_config_checks(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text('text,labels\n"a cat, a plum",animal|fruit\nnothing,\n')
    records = read_multi_labelled([str(path)], "csv")
    assert records.labels == [("animal", "fruit"), ()]
    data = str(tmp_path / "d.jsonl")
    write_records(data, 10)
    with pytest.raises(ConfigError, match=r"model.thresholds.place must be a number in \(0, 1\)"):
        _config(data, "model.thresholds={place: 1.5}")
    with pytest.raises(ConfigError, match="model.positive_weights: unknown label 'plant'"):
        _config(data, "data.label_names=[animal,fruit,place],model.positive_weights={plant: 2}")
    with pytest.raises(ConfigError, match="model.positive_weights: expected a mapping"):
        _config(data, "model.positive_weights=heavy")


# -- Loss and model.fit. -----------------------------------------------------------------------
def test_loss_is_the_weighted_sigmoid_cross_entropy_and_fit_uses_it(data_file):
    config = _config(data_file, "model.positive_weights={animal: 3.0, place: 0.5}")
    model = get_task(config).build_model()
    assert model.positive_weights == [3.0, 1.0, 0.5] and model.thresholds == [0.5] * 3
    features, labels, weights = next(iter(make_dataset(config)))
    weights = np.asarray(weights, np.float64).copy()
    weights[:3] = [0.0, 2.0, 0.5]  # a padding row and uneven example weights
    logits = np.asarray(model(features))
    expected = numpy_loss(logits, np.asarray(labels), weights, np.array([3.0, 1.0, 0.5]))
    loss_sum, weight_sum = model.loss_sums(labels, logits, weights)
    np.testing.assert_allclose(float(loss_sum / weight_sum), expected, rtol=1e-5)
    np.testing.assert_allclose(float(weight_sum), weights.sum(), rtol=1e-6)
    keras_loss = model.compute_loss(features, labels, logits, tf.constant(weights, tf.float32))
    np.testing.assert_allclose(float(keras_loss), expected, rtol=1e-5)
    # model.fit on the task's batches, with the model's default loss and accuracy.
    history = model.fit(make_dataset(config), steps_per_epoch=2, epochs=1, verbose=0)
    assert {"loss", "accuracy"} <= set(history.history)
    assert np.isfinite(history.history["loss"][0])
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert isinstance(restored, MultiLabelClassifier)
    assert restored.positive_weights == [3.0, 1.0, 0.5] and restored.label_names == NAMES
    loss = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(
        WeightedSigmoidCrossEntropy([2.0, 1.0, 1.0])))
    assert loss.positive_weights == [2.0, 1.0, 1.0]


def test_balanced_weights_are_negatives_over_positives_of_the_training_split(trained, data_file):
    config, _, trainer = trained
    records = [json.loads(line) for line in open(data_file)]
    train = [r for i, r in enumerate(records) if i % 5]  # every 5th is held out
    y = np.array([[n in r["labels"] for n in NAMES] for r in train], np.float64)
    expected = (len(y) - y.sum(0)) / y.sum(0)
    np.testing.assert_allclose([config.model.positive_weights[n] for n in NAMES], expected)
    np.testing.assert_allclose(trainer.model.positive_weights, expected)
    saved = load_experiment(os.path.join(trained[1], "params.yaml"))
    np.testing.assert_allclose([saved.model.positive_weights[n] for n in NAMES], expected)


# -- Evaluation and tuning. --------------------------------------------------------------------
def test_evaluation_and_tuned_thresholds_match_numpy(trained):
    config, model_dir, trainer = trained
    first = trainer.eval_results
    assert first["thresholds"] == {n: 0.5 for n in NAMES}
    # The tuned thresholds: in the model, params.yaml and model.keras.
    tuned = first["tuned"]["thresholds"]
    assert [tuned[n] for n in NAMES] == trainer.model.thresholds
    assert load_experiment(os.path.join(model_dir, "params.yaml")).model.thresholds == tuned
    assert load_keras_model(os.path.join(model_dir, "model.keras")).thresholds == \
        trainer.model.thresholds
    # NumPy on the same held-out rows and weights: the tuning and every metric.
    probabilities, labels, logits = held_out_outputs(trainer.model, config)
    assert len(labels) == first["examples"] == 20
    assert numpy_best_thresholds(probabilities, labels, [0.5] * 3) == [tuned[n] for n in NAMES]

    # tflm-eval's path (params.yaml): the metrics at the tuned thresholds.
    again = run_experiment(load_experiment(os.path.join(model_dir, "params.yaml")), model_dir,
                           mode="eval", **QUIET).eval_results
    thresholds = [tuned[n] for n in NAMES]
    counts = numpy_counts(probabilities, labels, thresholds)
    assert again["thresholds"] == tuned
    f1s = []
    for j, name in enumerate(NAMES):
        p, r, f1 = numpy_f1(*counts[j])
        f1s.append(f1)
        got = again["per_label"][name]
        np.testing.assert_allclose([got["precision"], got["recall"], got["f1"]], [p, r, f1])
        assert [got["true_positives"], got["false_positives"], got["false_negatives"]] == \
            counts[j].tolist()
    micro_p, micro_r, micro_f1 = numpy_f1(*counts.sum(0))
    np.testing.assert_allclose([again["micro_precision"], again["micro_recall"],
                                again["micro_f1"], again["macro_f1"]],
                               [micro_p, micro_r, micro_f1, np.mean(f1s)])
    positive_weights = np.asarray(trainer.model.positive_weights)
    np.testing.assert_allclose(
        again["loss"], numpy_loss(logits, labels, np.ones(len(labels)), positive_weights),
        rtol=1e-5)
    # The same split and weights tune to the same thresholds.
    assert again["tuned"]["thresholds"] == tuned


def test_resumes_exactly(trained, data_file, tmp_path):
    config = _config(data_file, "model.tune_thresholds=true,model.positive_weights=balanced")
    Trainer(get_task(config), str(tmp_path / "pieces"), **QUIET).train(until_step=2)
    resumed = run_experiment(config, str(tmp_path / "pieces"), mode="train", **QUIET)
    assert int(resumed.step.numpy()) == 4
    for a, b in zip(trained[2].model.weights, resumed.model.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)


# -- Serving. ----------------------------------------------------------------------------------
def test_export_serves_the_labels_over_their_thresholds(trained, tmp_path):
    _, model_dir, _ = trained
    base = str(tmp_path / "export")
    path = export_model_dir(model_dir, base)
    empty = tf.saved_model.load(path).signatures["classify"](text=tf.constant([], tf.string))
    assert empty["labels"].shape == empty["probabilities"].shape == (0, len(NAMES))
    model, tokenizer, config = load_trained(model_dir)
    texts = ["the cat saw a plum in Rome", "", "so we saw it", "pear " * 20]
    features, truncated = encode_classification(tokenizer, tf.constant(texts), None,
                                                config.data.sequence_length, pad_to_length=False)
    probabilities = np.asarray(tf.sigmoid(model(features, training=False)))
    over = probabilities > np.asarray(model.thresholds, np.float32)
    models = ServedModels({"labels": base})
    rest, grpc_server = RestServer(models), GrpcServer(models)
    client = ServingClient("127.0.0.1", rest.port, grpc_server.port, "labels")
    try:
        for protocol in ("rest", "grpc"):
            answer = client.predict("classify", {"text": texts}, protocol)
            np.testing.assert_allclose(answer["probabilities"], probabilities, atol=1e-5)
            assert np.asarray(answer["truncated"]).tolist() == np.asarray(truncated).tolist() \
                == [False, False, False, True]
            assert np.asarray(answer["num_labels"]).tolist() == over.sum(1).tolist()
            for row in range(len(texts)):
                ranked = sorted(np.flatnonzero(over[row]), key=lambda j: -probabilities[row, j])
                width = len(NAMES)
                expect = [NAMES[j].encode() for j in ranked] + [b""] * (width - len(ranked))
                assert [bytes(v) for v in answer["labels"][row]] == expect
                np.testing.assert_allclose(
                    answer["scores"][row],
                    [probabilities[row, j] for j in ranked] + [0.0] * (width - len(ranked)),
                    atol=1e-5)
    finally:
        client.close()
        grpc_server.close()
        rest.close()


# -- Two workers and the binaries. -------------------------------------------------------------
def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.pop("TF_CONFIG", None)
    return env


def test_two_workers_end_with_the_same_weights_and_tflm_eval_reads_their_run(data_file,
                                                                              tmp_path):
    model_dir = tmp_path / "two_workers"
    model_dir.mkdir()
    log = tmp_path / "log.txt"
    with open(log, "a", buffering=1) as sink:
        cluster = LocalCluster([sys.executable, __file__, str(model_dir), data_file], 2,
                               env=_env(), sink=sink).start()
        try:
            statuses = cluster.wait(240)
        finally:
            cluster.kill()
    assert statuses == [0, 0], log.read_text()[-4000:]
    first, second = (np.load(model_dir / f"weights-worker-{i}.npy") for i in (0, 1))
    np.testing.assert_array_equal(first, second)
    saved = json.loads((model_dir / "eval_results.json").read_text())
    # tflm-eval, the binary, on the run the two workers wrote (params.yaml, tuned thresholds).
    result = subprocess.run([sys.executable, "-m", "tflm.cli.eval", f"--model_dir={model_dir}",
                             "--params_override=runtime.distribution_strategy=one_device"],
                            cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    evaluated = json.loads((model_dir / "eval_results.json").read_text())
    assert evaluated["thresholds"] == saved["tuned"]["thresholds"]
    assert evaluated["examples"] == 20 and 0.0 <= evaluated["micro_f1"] <= 1.0


def _worker_job(model_dir, data_file):
    """One worker of the two-worker test: train_and_eval under MultiWorkerMirroredStrategy."""
    config = _config(data_file, "runtime.distribution_strategy=multi_worker,"
                                "trainer.eval_steps=3,data.global_batch_size=8,"
                                "model.tune_thresholds=true,trainer.jit_compile=false")
    trainer = run_experiment(config, model_dir, mode="train_and_eval",
                             print_fn=lambda line: print(line, flush=True))
    weights = np.concatenate([np.ravel(v.numpy()) for v in trainer.model.trainable_variables])
    np.save(os.path.join(model_dir, f"weights-worker-{trainer.worker.worker_index}.npy"), weights)


# -- Real data. --------------------------------------------------------------------------------
def test_entity_types_of_peoples_daily(shared_data, tmp_path):
    """Which of PER / LOC / ORG a line of People's Daily mentions, every 10th line held out:
    a small byte-level model beats always predicting every label (the better baseline)."""
    path = tmp_path / "ner_types.jsonl"
    labels = []
    with open(shared_data / "zh_peoples_daily_ner.jsonl", encoding="utf-8") as source, \
            open(path, "w", encoding="utf-8") as out:
        for line in source:
            record = json.loads(line)
            if record["text"].strip():
                labels.append(sorted({entity[2] for entity in record["entities"]}))
                out.write(json.dumps({"text": record["text"], "labels": labels[-1]},
                                     ensure_ascii=False) + "\n")
    y = np.array([[n in row for n in ("LOC", "ORG", "PER")] for row in labels], np.float64)
    held_out = y[::10]
    every_label = [numpy_f1(held_out[:, j].sum(), len(held_out) - held_out[:, j].sum(), 0)[2]
                   for j in range(3)]
    micro_every = numpy_f1(held_out.sum(), held_out.size - held_out.sum(), 0)[2]
    config = load_experiment(CONFIG, f"data.input_path={path},trainer.train_steps=150,"
                                     "data.global_batch_size=16,trainer.learning_rate=2e-3,"
                                     "trainer.checkpoint_every=1000,trainer.log_every=150")
    results = run_experiment(config, str(tmp_path / "run"), mode="train_and_eval",
                             **QUIET).eval_results
    assert results["examples"] == len(held_out)
    print(f"\nPeople's Daily entity types, 150 steps: micro F1 {results['micro_f1']:.3f} "
          f"(every label: {micro_every:.3f}), macro F1 {results['macro_f1']:.3f} "
          f"(every label: {np.mean(every_label):.3f})")
    # At the default thresholds (0.5; tuned ones are chosen on this same split).
    assert results["thresholds"] == {"LOC": 0.5, "ORG": 0.5, "PER": 0.5}
    assert results["micro_f1"] > micro_every
    assert results["macro_f1"] > np.mean(every_label)


if __name__ == "__main__":
    _worker_job(sys.argv[1], sys.argv[2])
