"""The sentence_embedding task: contrastive loss over the global batch, recall@k, serving.

Mechanics run on a small pairs file the tests write; the measured numbers on the
Debian Reference pairs (../shared/data) and the sentence-transformers checkpoint
(all-MiniLM-L6-v2, $TFLM_REAL_BERT) skip, saying why, where those are absent.

Run as a script, this file is one training job of the multi-replica tests:
    python tests/tasks/test_sentence_embedding.py CONFIG MODEL_DIR
(with TFLM_TEST_LOGICAL_CPUS=2: two replicas in one process; under TF_CONFIG: one worker).
"""

import json
import os
import pathlib
import subprocess
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests" / "export"))
sys.path.insert(0, str(REPO_ROOT / "tools"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

QUIET = dict(print_fn=lambda line: None)
WORDS = ("apt dpkg kernel shell file user root network package mirror boot disk grub locale "
         "mount printer backup archive editor terminal").split()
# A tiny, fast, deterministic encoder (no dropout) over byte tokens.
TINY = ("model.task=sentence_embedding,model.vocabulary_size=262,model.num_layers=1,"
        "model.num_heads=2,model.hidden_dim=16,model.intermediate_dim=32,"
        "model.max_sequence_length=32,model.dropout=0.0,model.attention_dropout=0.0,"
        "data.input_format=jsonl,data.text_field=en,data.text_pair_field=zh,"
        "data.contrastive_mode=supervised,data.eval_every_nth_document=5,data.sequence_length=32,"
        "data.global_batch_size=8,trainer.train_steps=4,trainer.steps_per_loop=2,"
        "trainer.log_every=2,trainer.checkpoint_every=2,trainer.warmup_steps=1")


def _pairs(count=40, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        words = [str(w) for w in rng.choice(WORDS, size=4)]
        rows.append({"en": f"{i} " + " ".join(words),
                     "zh": f"{i}号 " + "".join(w[::-1] for w in words)})
    return rows


def _write_jsonl(path, rows, raw_lines=()):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        for line in raw_lines:
            f.write(line + "\n")
    return str(path)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    return _write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", _pairs())


def _config(pairs_file, extra=""):
    """TINY on `pairs_file`, its steps without XLA: compiling them would take most of each
    test's time (the multi-replica test keeps TINY's default, XLA)."""
    from tflm.experiment import load_experiment

    return load_experiment(None, f"{TINY},trainer.jit_compile=false,data.input_path={pairs_file}"
                                 + (f",{extra}" if extra else ""))


def _numpy_infonce(texts, partners, weights, temperature):
    logits = texts.astype(np.float64) @ partners.astype(np.float64).T / temperature
    logits = np.where(weights[None, :] > 0, logits, -1e9)
    logits -= logits.max(axis=1, keepdims=True)
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    nll = -np.diag(log_softmax)
    return float((nll * weights).sum()), float(weights.sum())


def _numpy_recall(texts, partners, k):
    similarity = texts.astype(np.float64) @ partners.astype(np.float64).T
    hits = 0
    for i, row in enumerate(similarity):
        order = np.argsort(-row, kind="stable")
        better = [j for j in order if row[j] > row[i]]
        hits += len(better) < k
    return hits / len(texts)


def _normalized(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# -- Loss and metrics against NumPy. --------------------------------------------------------------
def test_contrastive_sums_and_recall_match_numpy():
    from tflm.tasks.sentence_embedding import ContrastiveLoss, contrastive_sums, retrieval_recall

    rng = np.random.default_rng(1)
    outputs = _normalized(rng.normal(size=(6, 2, 5))).astype(np.float32)
    weights = np.array([1, 1, 1, 1, 0, 0], np.float32)  # two padding rows: no loss, no negative
    loss_sum, weight_sum = contrastive_sums(tf.range(6), outputs, weights, 0.1)
    expected = _numpy_infonce(outputs[:4, 0], outputs[:4, 1], np.ones(4), 0.1)
    np.testing.assert_allclose([float(loss_sum), float(weight_sum)], expected, rtol=1e-5)
    keras_loss = ContrastiveLoss(0.1)(tf.range(6), outputs, weights)
    np.testing.assert_allclose(float(keras_loss), expected[0] / expected[1], rtol=1e-5)

    texts, partners = rng.normal(size=(30, 8)), rng.normal(size=(30, 8))
    partners[:10] = texts[:10] + 0.1 * partners[:10]  # some findable partners
    recall = retrieval_recall(texts, partners, ks=(1, 10))
    for k in (1, 10):
        assert recall[k] == _numpy_recall(_normalized(texts), _normalized(partners), k)
    assert 0 < recall[1] < recall[10] < 1


# -- Training and evaluation through the binaries' library calls. --------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory, pairs_file):
    from tflm.experiment import run_experiment

    model_dir = str(tmp_path_factory.mktemp("trained"))
    trainer = run_experiment(_config(pairs_file), model_dir, mode="train_and_eval", **QUIET)
    assert trainer.status == "completed"
    return model_dir, trainer


def test_eval_report_matches_numpy(trained, pairs_file):
    """Loss: the summed in-batch InfoNCE of the eval batches; recall: over all held-out pairs,
    from embeddings computed here through the model's own `embed` on encoded rows."""
    from tflm.data.classification import encode_classification
    from tflm.experiment import load_trained, run_experiment
    from tflm.tasks import get_task

    model_dir, trainer = trained
    results = run_experiment(trainer.config, model_dir, mode="eval", **QUIET).eval_results
    assert results == pytest.approx(trainer.eval_results)
    model, tokenizer, config = load_trained(model_dir)
    held_out = _pairs()[::5]
    assert results["pairs"] == len(held_out) == 8

    def embed(texts):
        features, _ = encode_classification(tokenizer, tf.constant(texts), None, 32)
        return model.embed(features, training=False).numpy()

    texts = embed([row["en"] for row in held_out])
    partners = embed([row["zh"] for row in held_out])
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert results["recall_at_1"] == _numpy_recall(texts, partners, 1)
    assert results["recall_at_10"] == _numpy_recall(texts, partners, 10) == 1.0  # 8 pairs
    loss_sum = weight_sum = 0.0
    for features, _, weights in get_task(config).dataset(tokenizer, training=False, split="eval"):
        outputs = model(features, training=False).numpy()
        s, w = _numpy_infonce(outputs[:, 0], outputs[:, 1], weights.numpy(),
                              config.model.temperature)
        loss_sum, weight_sum = loss_sum + s, weight_sum + w
    assert results["loss"] == pytest.approx(loss_sum / weight_sum, rel=1e-5)


def test_cli_eval_reports_the_same(trained, capsys):
    from cli_main import run_main

    from tflm.cli import eval as eval_cli

    model_dir, trainer = trained
    (pathlib.Path(model_dir) / "eval_results.json").unlink()  # written anew by tflm-eval
    code = run_main(eval_cli, "tflm-eval", f"--model_dir={model_dir}")
    out, err = capsys.readouterr()
    assert code == 0, out[-2000:] + err[-2000:]
    written = json.loads((pathlib.Path(model_dir) / "eval_results.json").read_text())
    for key in ("loss", "recall_at_1", "recall_at_10", "pairs"):
        assert written[key] == pytest.approx(trainer.eval_results[key], rel=1e-5), key


def test_resumes_exactly(tmp_path, pairs_file):
    from tflm.tasks import get_task
    from tflm.training.trainer import Trainer

    config = _config(pairs_file)
    straight = Trainer(get_task(config), str(tmp_path / "straight"), **QUIET)
    straight.train()
    Trainer(get_task(config), str(tmp_path / "pieces"), **QUIET).train(until_step=2)
    resumed = Trainer(get_task(config), str(tmp_path / "pieces"), **QUIET)
    assert resumed.train() == "completed"
    for a, b in zip(straight.model.weights, resumed.model.weights):
        np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-6, err_msg=a.path)


def test_model_fit_uses_the_same_loss(pairs_file):
    """`model.fit` on the task's dataset: its loss is the mean InfoNCE of the batch."""
    from tflm.tasks import get_task, make_dataset

    config = _config(pairs_file)
    model = get_task(config).build_model()
    model.compile(jit_compile=False)  # the task's defaults, without XLA's compile time
    features, labels, weights = next(iter(make_dataset(config)))
    before = model(features, training=False).numpy()
    expected = _numpy_infonce(before[:, 0], before[:, 1], weights.numpy(), 0.05)
    evaluated = model.evaluate(features, labels, sample_weight=weights, verbose=0)
    assert evaluated == pytest.approx(expected[0] / expected[1], rel=1e-5)
    history = model.fit(make_dataset(config), steps_per_epoch=3, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert not np.allclose(model(features, training=False).numpy(), before)


def test_unsupervised_views_differ_by_dropout_only(tmp_path):
    from tflm.tasks import get_task, make_dataset

    path = _write_jsonl(tmp_path / "texts.jsonl", [{"en": row["en"]} for row in _pairs(16)])
    config = _config(path, "data.text_pair_field=,data.contrastive_mode=unsupervised,"
                           "model.dropout=0.3")
    features, _, _ = next(iter(make_dataset(config)))
    np.testing.assert_array_equal(features["token_ids"], features["pair_token_ids"])
    model = get_task(config).build_model()
    train_views = model(features, training=True).numpy()
    assert np.abs(train_views[:, 0] - train_views[:, 1]).max() > 1e-3
    views = model(features, training=False).numpy()
    np.testing.assert_allclose(views[:, 0], views[:, 1], atol=1e-6)


# -- Bad inputs. ---------------------------------------------------------------------------------
@pytest.mark.parametrize("line, why", [
    ('{"zh": "没有英文"}', "'en' is missing"),
    ('{"en": "   ", "zh": "空"}', "'en' is empty"),
    ('{"en": "no partner"}', "'zh' is missing"),
    ('{"en": 3, "zh": "三"}', "'en' is a int, not a string"),
])
def test_bad_records_name_file_and_line_or_are_counted(tmp_path, line, why):
    from tflm.data.classification import LabelledDataError
    from tflm.data.stats import InputStats
    from tflm.tasks import make_dataset

    path = _write_jsonl(tmp_path / "bad.jsonl", _pairs(10), [line])
    with pytest.raises(LabelledDataError, match=f"{path}:11: the text field {why}"):
        make_dataset(_config(path))
    stats = InputStats()
    make_dataset(_config(path, "data.on_bad_record=count"), stats=stats)
    assert stats.as_dict()["records_missing_field"] == 1
    assert stats.as_dict()["documents"] == 10


def test_config_errors_name_the_key(pairs_file):
    from tflm.config import ConfigError

    with pytest.raises(ConfigError, match="data.text_pair_field"):
        _config(pairs_file, "data.text_pair_field=")
    with pytest.raises(ConfigError, match="model.temperature"):
        _config(pairs_file, "model.temperature=0.0")
    with pytest.raises(ConfigError, match="model.embedding_pooling"):
        _config(pairs_file, "model.embedding_pooling=max")


# -- Serving. ------------------------------------------------------------------------------------
def test_export_serves_the_model_over_rest_and_grpc(trained, tmp_path):
    from serving_adapters import GrpcServer, RestServer, ServedModels

    from tflm.experiment import export_model_dir, load_trained
    from tflm.export.client import ServingClient
    from tflm.tasks.sentence_embedding import SentenceEmbeddingServing

    model_dir, _ = trained
    export_model_dir(model_dir, str(tmp_path / "export"))
    texts = ["3 apt kernel", "", "x" * 80, "目录 apt"]  # empty; truncated; non-ASCII
    model, tokenizer, config = load_trained(model_dir)
    module = SentenceEmbeddingServing(model, tokenizer, config.data.sequence_length)
    expected = module.encode(tf.constant(texts))
    assert expected["truncated"].numpy().tolist() == [False, False, True, False]
    np.testing.assert_allclose(np.linalg.norm(expected["embedding"], axis=1), 1.0, atol=1e-5)
    models = ServedModels({"emb": str(tmp_path / "export")})
    rest, grpc_server = RestServer(models), GrpcServer(models)
    try:
        with ServingClient("127.0.0.1", rest.port, grpc_server.port, "emb", timeout=30) as client:
            for protocol in ("rest", "grpc"):
                for signature in ("encode", "serving_default"):
                    answer = client.predict(signature, {"text": np.array(texts, object)},
                                            protocol)
                    np.testing.assert_allclose(answer["embedding"], expected["embedding"],
                                               atol=1e-5)
                    assert np.asarray(answer["truncated"]).tolist() == [False, False, True,
                                                                        False]
            empty = client.predict("encode", {"text": np.array([], object)}, "grpc")
            assert np.asarray(empty["embedding"]).shape == (0, 16)
    finally:
        grpc_server.close()
        rest.close()


# -- Several replicas and workers. ---------------------------------------------------------------
def _job_env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.pop("TF_CONFIG", None)
    return env


def test_replicas_and_workers_train_as_one_replica_on_the_global_batch(tmp_path, pairs_file):
    """The key test of the gathered negatives: 2 replicas in one process and 2 workers, each
    with 4 of the 8 rows, end where 1 replica on all 8 does (a loss over local negatives
    only, or a gradient that missed the other replicas' terms, would not)."""
    from launch_local_cluster import LocalCluster

    config_file = tmp_path / "config.yaml"
    config_file.write_text(f"{TINY},data.input_path={pairs_file},trainer.train_steps=6")
    job = [sys.executable, __file__, str(config_file)]
    dirs = {name: tmp_path / name for name in ("single", "mirrored", "workers")}
    for d in dirs.values():
        d.mkdir()
    log = open(tmp_path / "log.txt", "a", buffering=1)
    processes = [subprocess.Popen([*job, str(dirs["single"])], cwd=REPO_ROOT, env=_job_env(),
                                  stdout=log, stderr=subprocess.STDOUT),
                 subprocess.Popen([*job, str(dirs["mirrored"])], cwd=REPO_ROOT,
                                  env=_job_env(TFLM_TEST_LOGICAL_CPUS="2"), stdout=log,
                                  stderr=subprocess.STDOUT)]
    cluster = LocalCluster([*job, str(dirs["workers"])], 2, env=_job_env(), sink=log).start()
    try:
        statuses = cluster.wait(timeout=240)
        deadline = time.monotonic() + 240
        for p in processes:
            p.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        cluster.kill()
        for p in processes:
            if p.poll() is None:
                p.kill()
        log.close()
    text = (tmp_path / "log.txt").read_text()
    assert statuses == [0, 0] and [p.returncode for p in processes] == [0, 0], text[-4000:]
    single = np.load(dirs["single"] / "weights-0.npy")
    losses = np.load(dirs["single"] / "losses-0.npy")
    for name, workers in (("mirrored", 1), ("workers", 2)):
        for i in range(workers):
            np.testing.assert_allclose(np.load(dirs[name] / f"weights-{i}.npy"), single,
                                       atol=1e-5, err_msg=name)
            np.testing.assert_allclose(np.load(dirs[name] / f"losses-{i}.npy"), losses,
                                       rtol=1e-5, err_msg=name)
    first, second = (np.load(dirs["workers"] / f"weights-{i}.npy") for i in (0, 1))
    np.testing.assert_array_equal(first, second)
    assert not np.allclose(single, np.load(dirs["single"] / "initial.npy"))


def _job(config_text, model_dir):
    """One run of the replica test: every worker builds the same global batches and keeps
    its slice, so all runs see the same global batch in the same row order."""
    from tflm.experiment import load_experiment
    from tflm.tasks import get_task, make_dataset
    from tflm.training.trainer import Trainer

    strategy = "multi_worker" if os.environ.get("TF_CONFIG") else "one_device"
    logical_cpus = int(os.environ.get("TFLM_TEST_LOGICAL_CPUS", "1"))
    if logical_cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
        strategy = "mirrored"
    config = load_experiment(None, f"{config_text},runtime.distribution_strategy={strategy}")

    def dataset_fn(context):
        share = config.data.global_batch_size // context.num_input_pipelines
        part = slice(context.input_pipeline_id * share, (context.input_pipeline_id + 1) * share)
        return make_dataset(config).map(
            lambda features, labels, weights: ({k: v[part] for k, v in features.items()},
                                               labels[part], weights[part]))

    trainer = Trainer(get_task(config), model_dir, dataset_fn=dataset_fn,
                      print_fn=lambda line: print(line, flush=True))
    index = trainer.worker.worker_index

    def flat():
        return np.concatenate([np.ravel(v.numpy()) for v in trainer.model.trainable_variables])

    np.save(os.path.join(model_dir, "initial.npy"), flat())
    assert trainer.train() == "completed"
    losses = [record["loss"] for record in trainer.history]  # logged every 2 steps
    np.save(os.path.join(model_dir, f"weights-{index}.npy"), flat())
    np.save(os.path.join(model_dir, f"losses-{index}.npy"), np.array(losses))
    if trainer.worker.num_workers > 1 and index == 0:
        # The chief stays until the other worker is done: its last collective still reads
        # from the chief, and would fail with "Socket closed" if the chief were gone.
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(model_dir, "weights-1.npy")) and \
                time.monotonic() < deadline:
            time.sleep(0.1)
    print(f"job: worker {index}, {trainer.strategy.num_replicas_in_sync} replica(s)", flush=True)


# -- Real checkpoints and data. ------------------------------------------------------------------
def test_converted_sentence_transformers_checkpoint_serves_its_mean_pooling(tmp_path,
                                                                            real_bert_dir):
    """all-MiniLM-L6-v2's embedding is mean pooling + normalize (1_Pooling, 2_Normalize), not
    BERT's pooler: the converted checkpoint, as a sentence_embedding model, serves it."""
    from tflm.data.classification import encode_classification
    from tflm.experiment import load_experiment
    from tflm.run_dir import RunDir
    from tflm.tasks import convert_checkpoint, get_task
    from tflm.tasks.sentence_embedding import SentenceEmbeddingServing

    converted = str(tmp_path / "minilm")
    convert_checkpoint(str(real_bert_dir), converted, **QUIET)
    conversion = json.loads((pathlib.Path(converted) / "conversion.json").read_text())
    assert conversion["sentence_transformers"] == {"pooling": "mean", "normalize": True}
    pairs = _write_jsonl(tmp_path / "p.jsonl", _pairs(4))
    config = load_experiment(None, f"model.task=sentence_embedding,model.init_checkpoint="
                                   f"{converted},data.input_format=jsonl,data.input_path={pairs},"
                                   "data.text_field=en,data.sequence_length=64")
    assert config.model.embedding_pooling == "mean"
    task = get_task(config)
    model = task.build_model(source=task.load_init_checkpoint())
    tokenizer = RunDir(converted).load_tokenizer(config)
    texts = ["The quick brown fox jumps over the lazy dog.",
             "apt-get install dpkg updates the package lists", "目录", ""]
    module = SentenceEmbeddingServing(model, tokenizer, 64)
    served = module.encode(tf.constant(texts))
    features, _ = encode_classification(tokenizer, tf.constant(texts), None, 64,
                                        pad_to_length=False)
    outputs = model.backbone(features, training=False)
    hidden = outputs["sequence_output"].numpy().astype(np.float64)
    mask = features["padding_mask"].numpy().astype(np.float64)[:, :, None]
    expected = _normalized((hidden * mask).sum(axis=1) / mask.sum(axis=1))
    assert np.abs(served["embedding"].numpy() - expected).max() < 1e-5
    pooler = _normalized(outputs["pooled_output"].numpy().astype(np.float64))
    assert np.abs(pooler - expected).max() > 0.1  # what `encode`'s pooled_output served before
    # The converted folder itself is a sentence_embedding model_dir: tflm-export serves it.
    from tflm.experiment import export_model_dir

    exported = tf.saved_model.load(export_model_dir(converted, str(tmp_path / "export")))
    answer = exported.signatures["encode"](text=tf.constant(texts))
    assert np.abs(answer["embedding"].numpy() - expected).max() < 1e-5


def test_en_zh_retrieval_beats_an_untrained_model(tmp_path, shared_data):
    """English paragraph -> its Chinese translation among the 218 held-out pairs: a small
    byte-level encoder trained briefly retrieves far more than the same shape untrained."""
    from tflm.experiment import load_experiment, run_experiment
    from tflm.tasks import get_task
    from tflm.training.trainer import Trainer

    overrides = (f"data.input_path={shared_data / 'en_zh_debian_reference.jsonl'},"
                 "data.sequence_length=64,model.max_sequence_length=64,trainer.train_steps=40,"
                 "trainer.log_every=40,trainer.checkpoint_every=40,trainer.warmup_steps=5,"
                 "trainer.steps_per_loop=20")
    config = load_experiment(str(REPO_ROOT / "configs" / "sentence_embedding_en_zh.yaml"),
                             overrides)
    trained = run_experiment(config, str(tmp_path / "trained"), mode="train_and_eval",
                             **QUIET).eval_results
    untrained = Trainer(get_task(config), str(tmp_path / "untrained"), for_training=False,
                        **QUIET).evaluate()
    assert trained["pairs"] == untrained["pairs"] == 218
    assert trained["recall_at_10"] > untrained["recall_at_10"] + 0.1, (trained, untrained)
    assert trained["recall_at_1"] > untrained["recall_at_1"], (trained, untrained)


if __name__ == "__main__":
    _job(pathlib.Path(sys.argv[1]).read_text(), sys.argv[2])
