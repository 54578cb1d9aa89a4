"""The `regression` task: trains through tflm-train's path, resumes exactly, trains on two
workers, fits with Keras, evaluates (MSE, RMSE, Pearson, Spearman) as plain-Python formulas
do, serves `predict` over REST and gRPC as the Python model answers, and names bad records.

Run as a script, this file is one worker of the two-worker test:
    python tests/tasks/test_regression.py MODEL_DIR DATA_PATH TRAIN_STEPS
"""

import json
import math
import os
import pathlib
import sys

import numpy as np
import pytest
import tensorflow as tf

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO_ROOT / "tools"), str(REPO_ROOT / "tests"),
                str(REPO_ROOT / "tests" / "export")]
from cli_main import run_main  # noqa: E402
from labelled_fixtures import paragraphs  # noqa: E402
from launch_local_cluster import LocalCluster  # noqa: E402
from serving_adapters import GrpcServer, RestServer, ServedModels  # noqa: E402

from tflm.cli import eval as eval_cli  # noqa: E402
from tflm.config import ConfigError  # noqa: E402
from tflm.data import ByteTokenizer  # noqa: E402
from tflm.data.classification import LabelledDataError, encode_classification  # noqa: E402
from tflm.experiment import (  # noqa: E402
    export_model_dir,
    load_experiment,
    load_trained,
    run_experiment,
)
from tflm.export.client import ServingClient  # noqa: E402
from tflm.models import TransformerBackbone  # noqa: E402
from tflm.tasks import get_task, make_dataset, task_for_model  # noqa: E402
from tflm.tasks.regression import (  # noqa: E402
    RegressorServing,
    SequenceRegressor,
    WeightedSquaredError,
    average_ranks,
    spearman,
)
from tflm.training.trainer import Trainer  # noqa: E402

QUIET = dict(print_fn=lambda line: None)
EVERY_NTH = 5
SMALL = ("model.task=regression,model.num_layers=1,model.num_heads=2,model.hidden_dim=16,"
         "model.intermediate_dim=32,model.max_sequence_length=32,model.num_segments=2,"
         "model.dropout=0.0,model.classifier_dropout=0.0,model.pooling=mean,"
         f"data.input_format=jsonl,data.eval_every_nth_document={EVERY_NTH},"
         "data.sequence_length=32,data.global_batch_size=8,trainer.train_steps=4,"
         "trainer.log_every=2,trainer.steps_per_loop=2,trainer.checkpoint_every=100,"
         "trainer.warmup_steps=0,trainer.learning_rate=3e-3,trainer.jit_compile=false")


def _config(data_path, extra=""):
    return load_experiment(None, ",".join(filter(None, [f"{SMALL},data.input_path={data_path}",
                                                        extra])))


def _records(limit=100):
    """Paragraphs of the embedded novel with a learnable number: the share of letters that
    are capitals (dialogue and names have more)."""
    records = []
    for text in paragraphs(limit):
        text = text[:120]
        letters = [c for c in text if c.isalpha()]
        records.append({"text": text, "label": round(10 * sum(c.isupper() for c in letters)
                                                     / max(len(letters), 1), 4)})
    return records


def _write(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write((record if isinstance(record, str) else json.dumps(record)) + "\n")
    return path


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("regression") / "scores.jsonl", _records())


# -- Plain-Python references (no NumPy, no scipy). ------------------------------------------------
def _mean(values):
    return sum(values) / len(values)


def _pearson(x, y):
    mx, my = _mean(x), _mean(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy)


def _ranks(values):
    """Average ranks, by counting: rank = 1 + #smaller + (#equal - 1) / 2."""
    return [1 + sum(w < v for w in values) + (sum(w == v for w in values) - 1) / 2
            for v in values]


def _spearman(x, y):
    return _pearson(_ranks(x), _ranks(y))


def _predict(model, tokenizer, texts, sequence_length=32):
    features, _ = encode_classification(tokenizer, tf.constant(texts), None, sequence_length,
                                        pad_to_length=False)
    return [float(v) for v in np.asarray(model(features, training=False))]


def _held_out(records):
    return [r for i, r in enumerate(records) if i % EVERY_NTH == 0]


def _check_report(report, model, records):
    held_out = _held_out(records)
    targets = [r["label"] for r in held_out]
    predictions = _predict(model, ByteTokenizer(), [r["text"] for r in held_out])
    mse = _mean([(p - t) ** 2 for p, t in zip(predictions, targets)])
    assert report["examples"] == len(held_out) == 20
    assert report["mse"] == pytest.approx(mse, rel=1e-5)
    assert report["loss"] == report["mse"]
    assert report["rmse"] == pytest.approx(math.sqrt(mse), rel=1e-5)
    assert report["pearson"] == pytest.approx(_pearson(predictions, targets), abs=1e-5)
    assert report["spearman"] == pytest.approx(_spearman(predictions, targets), abs=1e-5)
    assert report["baseline_mse"] == pytest.approx(
        _mean([(t - _mean(targets)) ** 2 for t in targets]), rel=1e-6)  # float32 targets


# -- Metrics. -------------------------------------------------------------------------------------
def test_ranks_and_spearman_handle_ties_as_plain_python_does():
    x = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0, 5.0]
    y = [2.0, 7.0, 1.0, 8.0, 2.0, 8.0, 1.0, 8.0, 2.0, 8.0, 4.0]
    assert average_ranks(x).tolist() == _ranks(x)
    assert spearman(x, y) == pytest.approx(_spearman(x, y), abs=1e-12)


def test_eval_sums_gather_every_prediction_exactly(data_path):
    """Batches in any order, padding rows (weight 0, any output), a row seen twice: the
    summed vectors give each record's prediction and target back, and the report equals the
    plain formulas."""
    task = get_task(_config(data_path))
    size = task.eval_size()
    assert size == 20
    model = task.build_model()
    rng = np.random.default_rng(0)
    predictions = rng.normal(size=size).astype(np.float32)
    targets = np.round(rng.uniform(size=size), 1).astype(np.float32)  # many ties
    order = list(rng.permutation(size)) + [3]  # record 3 twice (a repeating eval)
    totals = 0.0
    for start in range(0, len(order), 8):
        index = np.array(order[start:start + 8])
        pad = 8 - len(index)
        weights = np.r_[np.ones(len(index)), np.zeros(pad)].astype(np.float32)
        index = np.r_[index, np.zeros(pad, int)]
        outputs = np.where(weights > 0, predictions[index], 123.0).astype(np.float32)
        labels = np.stack([targets[index], index.astype(np.float32)], axis=1)
        totals = totals + task.eval_sums(model, tf.constant(labels), tf.constant(outputs),
                                         tf.constant(weights)).numpy().astype(np.float64)
    report = task.eval_report(model, totals)
    p, t = predictions.astype(float).tolist(), targets.astype(float).tolist()
    assert report["examples"] == size
    assert report["spearman"] == pytest.approx(_spearman(p, t), abs=1e-12)
    assert report["pearson"] == pytest.approx(_pearson(p, t), abs=1e-12)
    squared = [(a - b) ** 2 for a, b in zip(p, t)]
    assert report["mse"] == pytest.approx((sum(squared) + squared[3]) / (size + 1), rel=1e-6)


# -- tflm-train's path, tflm-eval, export and serving. --------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_path):
    model_dir = tmp_path_factory.mktemp("run") / "scores"
    config = _config(data_path)
    trainer = run_experiment(config, str(model_dir), mode="train_and_eval", **QUIET)
    return config, model_dir, trainer


def test_train_and_eval_reports_what_the_formulas_give(trained):
    config, model_dir, trainer = trained
    assert trainer.status == "completed"
    records = _records()
    train_targets = [r["label"] for i, r in enumerate(records) if i % EVERY_NTH]
    # The head's mean and scale come from the training targets and are kept in params.yaml.
    saved = load_experiment(str(model_dir / "params.yaml"))
    assert saved.model.target_mean == pytest.approx(_mean(train_targets), rel=1e-12)
    assert saved.model.target_scale == pytest.approx(
        math.sqrt(_mean([(t - _mean(train_targets)) ** 2 for t in train_targets])), rel=1e-12)
    assert saved == config
    _check_report(trainer.eval_results, trainer.model, records)
    assert json.loads((model_dir / "eval_results.json").read_text()) == trainer.eval_results

    # --mode=eval restores the checkpoint and reports the same numbers.
    evaluated = run_experiment(config, str(model_dir), mode="eval", **QUIET)
    assert evaluated.eval_results == trainer.eval_results


def test_the_eval_binary(trained, capsys):
    _, model_dir, trainer = trained
    (model_dir / "eval_results.json").unlink()
    code = run_main(eval_cli, "tflm-eval", f"--model_dir={model_dir}")
    out, err = capsys.readouterr()
    assert code == 0, out[-2000:] + err[-2000:]
    assert '"spearman"' in out
    results = json.loads((model_dir / "eval_results.json").read_text())
    for key in ("mse", "rmse", "pearson", "spearman", "baseline_mse"):
        assert results[key] == pytest.approx(trainer.eval_results[key], rel=1e-6, abs=1e-9), key


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_predict_served_over_rest_and_grpc_is_the_model(trained, tmp_path_factory, protocol):
    _, model_dir, _ = trained
    export = tmp_path_factory.getbasetemp() / "regression_export"
    if not export.exists():
        export_model_dir(str(model_dir), str(export))
    model, tokenizer, config = load_trained(str(model_dir))
    assert isinstance(model, SequenceRegressor) and task_for_model(model).name == "regression"
    texts = ["It is a truth.", "", "MR. DARCY " * 10]
    served = ServedModels({"scores": str(export)})
    rest, grpc_server = RestServer(served), GrpcServer(served)
    client = ServingClient("127.0.0.1", rest.port, grpc_server.port, "scores")
    try:
        for signature in ("predict", "serving_default"):
            answer = client.predict(signature, {"text": np.array(texts, dtype=object)}, protocol)
            assert sorted(answer) == ["truncated", "value"]
            np.testing.assert_allclose(np.asarray(answer["value"], np.float32),
                                       _predict(model, tokenizer, texts), rtol=0, atol=1e-5)
            assert np.asarray(answer["truncated"]).tolist() == [False, False, True]
    finally:
        client.close()
        grpc_server.close()
        rest.close()


def test_predict_on_pairs():
    backbone = TransformerBackbone(vocabulary_size=262, num_layers=1, num_heads=2, hidden_dim=16,
                                   intermediate_dim=32, max_sequence_length=32, num_segments=2)
    model = SequenceRegressor(backbone, target_mean=2.0, target_scale=0.5, dropout=0.0)
    tokenizer = ByteTokenizer()
    module = RegressorServing(model, tokenizer, text_pair=True, sequence_length=24)
    texts, pairs = ["Is it?", "a" * 30], ["It is.", "b" * 30]
    answer = module.signatures()["predict"](text=tf.constant(texts), text_pair=tf.constant(pairs))
    features, _ = encode_classification(tokenizer, tf.constant(texts), tf.constant(pairs), 24,
                                        pad_to_length=False)
    np.testing.assert_allclose(answer["value"].numpy(), model(features).numpy(), atol=1e-6)
    assert answer["truncated"].numpy().tolist() == [False, True]
    assert module.signatures()["predict"](text=tf.constant([], tf.string),
                                          text_pair=tf.constant([], tf.string))["value"].shape == [0]


# -- Resuming, two workers, model.fit. ------------------------------------------------------------
def test_two_plus_two_steps_end_where_four_do(tmp_path, data_path):
    config = _config(data_path)
    straight = Trainer(get_task(config), str(tmp_path / "straight"), **QUIET)
    straight.train()
    Trainer(get_task(config), str(tmp_path / "pieces"), **QUIET).train(until_step=2)
    resumed = Trainer(get_task(config), str(tmp_path / "pieces"), **QUIET)
    assert resumed.train() == "completed" and int(resumed.step.numpy()) == 4
    for a, b in zip(straight.model.weights, resumed.model.weights):
        np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-6, err_msg=a.path)


def _worker(model_dir, data_path, steps):
    config = _config(data_path, f"trainer.train_steps={steps},"
                                "runtime.distribution_strategy=multi_worker")
    trainer = Trainer(get_task(config), model_dir, print_fn=lambda line: print(line, flush=True))
    status = trainer.train()
    weights = np.concatenate([np.ravel(v.numpy()) for v in trainer.model.trainable_variables])
    np.save(os.path.join(model_dir, f"weights-worker-{trainer.worker.worker_index}.npy"), weights)
    print(f"worker: {status} at step {int(trainer.step.numpy())}", flush=True)


def test_two_workers_end_with_the_same_weights(tmp_path, data_path):
    model_dir = tmp_path / "two_workers"
    model_dir.mkdir()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.pop("TF_CONFIG", None)
    log = tmp_path / "log.txt"
    with open(log, "a", buffering=1) as sink:
        cluster = LocalCluster([sys.executable, __file__, str(model_dir), str(data_path), "3"], 2,
                               env=env, sink=sink).start()
        try:
            statuses = cluster.wait(timeout=150)
        finally:
            cluster.kill()
    text = log.read_text()
    assert statuses == [0, 0], text[-4000:]
    assert text.count("worker: completed at step 3") == 2, text[-4000:]
    first, second = (np.load(model_dir / f"weights-worker-{i}.npy") for i in (0, 1))
    np.testing.assert_array_equal(first, second)
    assert np.all(np.isfinite(first))


def test_model_fit_on_make_dataset_uses_the_same_loss(data_path):
    config = _config(data_path)
    task = get_task(config)
    model = task.build_model()
    features, targets, weights = next(iter(make_dataset(config)))
    outputs = model(features, training=False)
    y, p, w = (np.asarray(t, np.float64) for t in (targets, outputs, weights))
    expected = float(np.sum(w * (y - p) ** 2) / np.sum(w))
    loss_sum, weight_sum = task.loss_sums(model, targets, outputs, weights)
    assert float(loss_sum / weight_sum) == pytest.approx(expected, rel=1e-5)
    assert float(model.default_loss()(targets, outputs, weights)) == pytest.approx(expected,
                                                                                  rel=1e-5)
    assert isinstance(model.loss, WeightedSquaredError)
    model.compile(jit_compile=False)  # the default loss and metrics, no XLA compile time
    assert isinstance(model.loss, WeightedSquaredError)
    before = model.head.kernel.numpy()
    history = model.fit(make_dataset(config), steps_per_epoch=3, epochs=1, verbose=0).history
    assert math.isfinite(history["loss"][0]) and math.isfinite(history["mae"][0])
    assert not np.array_equal(model.head.kernel.numpy(), before)


# -- Bad records and config. ----------------------------------------------------------------------
@pytest.mark.parametrize("line, message", [
    ({"body": "no text key", "label": 0.5}, r"bad.jsonl:7: the text field 'text' is missing"),
    ({"text": "a fine day", "label": "high"},
     r"bad.jsonl:7: the target 'label' is 'high', not a finite number"),
    ({"text": "a fine day", "label": True},
     r"bad.jsonl:7: the target 'label' is 'true', not a finite number"),
    ({"text": "a fine day", "label": None}, r"bad.jsonl:7: the label field 'label' is missing"),
    ({"text": "  ", "label": 0.5}, r"bad.jsonl:7: the text is empty"),
    ('{"text": "a fine day", "label": NaN}', r"bad.jsonl:7: the target 'label' is 'NaN'"),
])
def test_a_bad_record_names_file_and_line(tmp_path, line, message):
    records = _records(20)
    records[6] = line
    path = _write(tmp_path / "bad.jsonl", records)
    with pytest.raises(LabelledDataError, match=message):
        run_experiment(_config(path), str(tmp_path / "run"), **QUIET)
    assert not (tmp_path / "run").exists()


def test_bad_records_are_counted_on_request(tmp_path):
    records = _records(40)
    records[3] = {"body": "no text key", "label": 0.5}
    records[6] = {"text": "a fine day", "label": "high"}
    records[9] = {"text": "", "label": 0.5}
    records[12] = {"text": "a fine day"}
    path = _write(tmp_path / "bad.jsonl", records)
    config = _config(path, "data.on_bad_record=count,trainer.train_steps=2")
    trainer = run_experiment(config, str(tmp_path / "run"), mode="train_and_eval", **QUIET)
    stats = trainer.stats.as_dict()
    assert stats["records_missing_field"] == 3 and stats["empty_documents_skipped"] == 1
    assert trainer.eval_results["examples"] == 8  # 36 good records, every 5th held out


def test_config_errors_name_the_key(data_path):
    with pytest.raises(ConfigError, match=r"data.label_names=\['a', 'b'\]: a regression"):
        _config(data_path, "data.label_names=[a, b]")
    with pytest.raises(ConfigError, match=r"model\.target_scale: 0\.0; must be > 0"):
        _config(data_path, "model.target_scale=0")
    with pytest.raises(ConfigError, match="trainer.label_smoothing=0.1"):
        _config(data_path, "trainer.label_smoothing=0.1")
    with pytest.raises(ConfigError, match="Unknown config key 'model.target_men'"):
        _config(data_path, "model.target_men=1")
    with pytest.raises(ConfigError, match="Unknown config key 'model.target_mean'"):
        load_experiment("configs/tiny_gpt.yaml", "model.target_mean=1")


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2], int(sys.argv[3]))
