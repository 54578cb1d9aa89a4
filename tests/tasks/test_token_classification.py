"""token_classification (NER): character spans -> BIO tags on byte tokens, entity-level
precision / recall / F1 as seqeval's strict IOB2 mode, the `tag` signature over REST and
gRPC, bad records, resumption, `model.fit`, two workers.

Run as a script, this file is one worker of the two-worker test:
    python tests/tasks/test_token_classification.py MODEL_DIR DATA_FILE STEPS
"""

import json
import os
import pathlib
import sys

import numpy as np
import pytest
import tensorflow as tf

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO_ROOT / "tests" / "export"), str(REPO_ROOT / "tools")]

from launch_local_cluster import LocalCluster  # noqa: E402
from serving_adapters import GrpcServer, RestServer, ServedModels  # noqa: E402

from tflm.config import ConfigError  # noqa: E402
from tflm.data.byte_tokenizer import ByteTokenizer  # noqa: E402
from tflm.data.classification import LabelledDataError  # noqa: E402
from tflm.data.stats import InputStats  # noqa: E402
from tflm.experiment import (  # noqa: E402
    export_model_dir,
    export_saved_model,
    load_experiment,
    load_model_dir_config,
    load_trained,
    run_experiment,
)
from tflm.export.client import ServingClient  # noqa: E402
from tflm.models import TransformerBackbone  # noqa: E402
from tflm.tasks import get_task, make_dataset, task_for_model  # noqa: E402
from tflm.tasks.token_classification import (  # noqa: E402
    TokenClassifier,
    character_tags,
    encode_tagged,
    entity_counts,
    entity_records,
    entity_report,
    read_entity_records,
    tag_names,
)
from tflm.training.trainer import Trainer  # noqa: E402

PEOPLE = ["江泽民", "李鹏", "Mr. Darcy", "王小明"]
PLACES = ["北京", "上海", "London", "香港"]
GROUPS = ["新华社", "UN"]
OVERRIDES = ("model.task=token_classification,model.num_layers=1,model.num_heads=2,"
             "model.hidden_dim=16,model.intermediate_dim=32,model.max_sequence_length=48,"
             "model.dropout=0.0,model.classifier_dropout=0.0,data.input_format=jsonl,"
             "data.sequence_length=48,data.global_batch_size=4,data.eval_every_nth_document=10,"
             "trainer.train_steps=4,trainer.steps_per_loop=2,trainer.log_every=2,"
             "trainer.checkpoint_every=2,trainer.warmup_steps=1,trainer.learning_rate=1e-2,"
             "trainer.jit_compile=false")


def _quiet(line):
    del line


def _records(count=40):
    """Texts mixing Chinese and ASCII, with their entity spans (character offsets)."""
    rows = []
    for i in range(count):
        person, place = PEOPLE[i % 4], PLACES[(i // 4) % 4]
        text = f"{person}在{place}会见了记者。"
        entities = [[0, len(person), "PER"], [len(person) + 1, len(person) + 1 + len(place), "LOC"]]
        if i % 3 == 0:
            group = GROUPS[i % 2]
            start = len(text)
            text += f"{group}报道"
            entities.append([start, start + len(group), "ORG"])
        if i % 7 == 0:
            text = "今天天气好"  # no entity
            entities = []
        rows.append({"text": text, "entities": entities})
    return rows


def _write(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def ner_file(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("ner") / "ner.jsonl", _records())


def _config(path, extra=""):
    return load_experiment(None, f"{OVERRIDES},data.input_path={path}" + (f",{extra}" if extra
                                                                            else ""))


# -- A reference in plain Python: seqeval's strict IOB2 entities. ---------------------------
def _reference_entities(tags, names):
    """`{(start, end, type)}` of a tag-name sequence: B-X and its run of I-X; a stray I-X
    starts nothing (seqeval mode="strict", scheme=IOB2)."""
    entities, i = set(), 0
    while i < len(tags):
        if tags[i].startswith("B-"):
            kind, j = tags[i][2:], i + 1
            while j < len(tags) and tags[j] == f"I-{kind}":
                j += 1
            entities.add((i, j, kind))
            i = j
        else:
            i += 1
    return entities


def _reference_report(gold_rows, predicted_rows, types):
    """Per-type and micro precision / recall / F1 of exact entity matches."""
    counts = {t: [0, 0, 0] for t in types}
    for gold, guess in zip(gold_rows, predicted_rows):
        for _, _, t in gold:
            counts[t][2] += 1
        for entity in guess:
            counts[entity[2]][1] += 1
            counts[entity[2]][0] += entity in gold
    matched, predicted, support = (sum(c[k] for c in counts.values()) for k in range(3))

    def prf(m, p, s):
        precision, recall = (m / p if p else 0.0), (m / s if s else 0.0)
        return precision, recall, (2 * precision * recall / (precision + recall)
                                   if precision + recall else 0.0)

    return prf(matched, predicted, support), {t: prf(*c) for t, c in counts.items()}, counts


# -- Tags and entities. ----------------------------------------------------------------------
def test_tags_sit_on_the_first_byte_of_each_character(ner_file):
    config = _config(ner_file)
    records = entity_records(config, "train")
    assert len(records) == 36  # 40 lines, every 10th held out
    texts, tags = character_tags(records, ["LOC", "ORG", "PER"])
    tokenizer = ByteTokenizer()
    features, labels, weights, truncated = encode_tagged(
        tokenizer, tf.constant(texts[:8]), tf.ragged.constant([t.tolist() for t in tags[:8]]),
        sequence_length=24)
    names = tag_names(["LOC", "ORG", "PER"])
    for i, text in enumerate(texts[:8]):
        raw = text.encode("utf-8")
        expected_ids = [2] + [b + 6 for b in raw[:22]] + [3]
        expected_ids += [0] * (24 - len(expected_ids))
        assert features["token_ids"][i].numpy().tolist() == expected_ids
        assert bool(truncated[i]) == (len(raw) > 22)
        # One weighted position per character that fits; its tag is the character's.
        first_bytes, offset = [], 1
        for char in text:
            if offset < 23:
                first_bytes.append(offset)
            offset += len(char.encode("utf-8"))
        assert np.flatnonzero(weights[i].numpy()).tolist() == first_bytes
        row_tags = [names[t] for t in labels[i].numpy()[first_bytes]]
        gold = {(s, e, t) for s, e, t in records.entities[i] if e <= len(first_bytes)}
        assert _reference_entities(row_tags, names) == gold


def test_entity_counts_match_the_strict_reference_on_random_tags():
    types = ["LOC", "ORG", "PER"]
    names = tag_names(types)
    rng = np.random.default_rng(0)
    gold = rng.integers(0, len(names), (16, 20)).astype(np.int32)
    predicted = np.where(rng.random(gold.shape) < 0.6, gold,
                         rng.integers(0, len(names), gold.shape)).astype(np.int32)
    weights = (rng.random(gold.shape) < 0.8).astype(np.float32)
    weights[3] = 0  # a padding row
    counts = entity_counts(tf.constant(gold), tf.constant(predicted), tf.constant(weights),
                           len(types)).numpy()

    def rows(tags):
        return [_reference_entities([names[t] for t in row[w > 0]], names)
                for row, w in zip(tags, weights)]

    (precision, recall, f1), per_type, reference = _reference_report(rows(gold), rows(predicted),
                                                                     types)
    np.testing.assert_array_equal(counts, [reference[t] for t in types])
    assert counts[:, 0].sum() > 5 and counts[:, 2].sum() > 20  # the case is not trivial
    report = entity_report(counts, types)
    np.testing.assert_allclose([report["precision"], report["recall"], report["f1"]],
                               [precision, recall, f1])
    for t in types:
        np.testing.assert_allclose([report["per_class"][t][k] for k in ("precision", "recall",
                                                                        "f1")], per_type[t])


def test_token_classifier_config_round_trip_and_shapes():
    backbone = TransformerBackbone(vocabulary_size=262, num_layers=1, num_heads=2, hidden_dim=16,
                                   intermediate_dim=32, max_sequence_length=16)
    model = TokenClassifier(backbone, num_classes=3, dropout=0.0, label_names=["O", "B-X", "I-X"])
    x = {"token_ids": np.full((2, 8), 7, np.int32), "padding_mask": np.ones((2, 8), np.int32)}
    logits = model(x)
    assert logits.shape == (2, 8, 3) and logits.dtype == tf.float32
    clone = TokenClassifier.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone(x), logits, atol=1e-6)
    assert clone.label_names == ["O", "B-X", "I-X"] and task_for_model(clone).name == (
        "token_classification")
    with pytest.raises(ValueError, match="2 label names for 3 tags"):
        TokenClassifier(backbone, num_classes=3, label_names=["O", "B-X"])


# -- Training, evaluation, resumption. -----------------------------------------------------------
@pytest.fixture(scope="module")
def trained(ner_file, tmp_path_factory):
    """4 steps through run_experiment (what tflm-train runs), train_and_eval."""

    model_dir = tmp_path_factory.mktemp("run") / "ner"
    config = _config(ner_file)
    trainer = run_experiment(config, str(model_dir), mode="train_and_eval", print_fn=_quiet)
    assert trainer.status == "completed"
    return str(model_dir), trainer


def test_train_and_eval_then_eval_match_numpy(trained, tmp_path):
    model_dir, trainer = trained
    config = load_model_dir_config(model_dir)
    names = config.data.label_names
    assert names == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    results = run_experiment(config, model_dir, mode="eval", print_fn=_quiet).eval_results
    scalars = ("loss", "accuracy", "precision", "recall", "f1", "entities", "characters")
    assert {k: results[k] for k in scalars} == pytest.approx(
        {k: trainer.eval_results[k] for k in scalars})
    saved = json.loads((pathlib.Path(model_dir) / "eval_results.json").read_text())
    assert saved["f1"] == pytest.approx(results["f1"])
    # 4 steps tag everything O; a loud random head predicts entities of every kind, so the
    # comparison below is not 0 == 0.
    judge = Trainer(get_task(config), str(tmp_path / "judge"), print_fn=_quiet,
                    for_training=False)
    judge.model.set_weights(trainer.model.get_weights())
    kernel = judge.model.head.kernel
    kernel.assign(np.random.default_rng(1).normal(0, 3, kernel.shape).astype(np.float32))
    results = judge.evaluate()
    model = judge.model
    loss_sum = weight = correct = 0.0
    gold_rows, predicted_rows = [], []
    for features, labels, weights in get_task(config).dataset(training=False, split="eval"):
        logits = model(features, training=False).numpy().astype(np.float64)
        labels, weights = labels.numpy(), weights.numpy()
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        loss_sum += -(np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
                      * weights).sum()
        weight += weights.sum()
        predicted = logits.argmax(-1)
        correct += ((predicted == labels) * weights).sum()
        for row_labels, row_predicted, row_weights in zip(labels, predicted, weights):
            keep = row_weights > 0
            gold_rows.append(_reference_entities([names[t] for t in row_labels[keep]], names))
            predicted_rows.append(_reference_entities([names[t] for t in row_predicted[keep]],
                                                      names))
    (precision, recall, f1), per_type, counts = _reference_report(gold_rows, predicted_rows,
                                                                  ["LOC", "ORG", "PER"])
    assert results["entities"] == sum(c[2] for c in counts.values()) == 7
    assert results["predicted_entities"] == sum(c[1] for c in counts.values()) > 10
    assert results["characters"] == weight
    np.testing.assert_allclose([results["loss"], results["accuracy"]],
                               [loss_sum / weight, correct / weight], rtol=1e-5)
    np.testing.assert_allclose([results["precision"], results["recall"], results["f1"]],
                               [precision, recall, f1])
    for t, (p, r, f) in per_type.items():
        np.testing.assert_allclose([results["per_class"][t][k] for k in ("precision", "recall",
                                                                         "f1")], [p, r, f])


def test_resuming_gives_the_weights_of_one_run(ner_file, tmp_path, trained):
    config = _config(ner_file)
    pieces = str(tmp_path / "pieces")
    Trainer(get_task(config), pieces, print_fn=_quiet).train(until_step=2)
    resumed = Trainer(get_task(config), pieces, print_fn=_quiet)
    assert resumed.train() == "completed" and int(resumed.step.numpy()) == 4
    straight = trained[1].model
    for a, b in zip(straight.weights, resumed.model.weights):
        np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-6, err_msg=a.path)


def test_tflm_eval_binary(trained, capsys):
    from cli_main import run_main  # here: this file also runs as a worker, without tests/

    from tflm.cli import eval as eval_cli

    model_dir, trainer = trained
    code = run_main(eval_cli, "tflm-eval", f"--model_dir={model_dir}")
    out, err = capsys.readouterr()
    assert code == 0, out[-2000:] + err[-2000:]
    line = next(line for line in out.splitlines() if line.startswith("tflm-eval: {"))
    reported = json.loads(line[len("tflm-eval: "):])
    assert reported["f1"] == pytest.approx(trainer.eval_results["f1"])
    assert reported["entities"] == 7


def test_model_fit_on_the_task_dataset(ner_file):
    config = _config(ner_file)
    model = get_task(config).build_model()
    before = model.evaluate(make_dataset(config), steps=3, verbose=0, return_dict=True)["loss"]
    history = model.fit(make_dataset(config), steps_per_epoch=6, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    after = model.evaluate(make_dataset(config), steps=3, verbose=0, return_dict=True)["loss"]
    assert after < before


# -- Serving. -----------------------------------------------------------------------------------
def test_tag_over_rest_and_grpc_equals_the_model(trained, tmp_path):
    model_dir, _ = trained
    export_model_dir(model_dir, str(tmp_path / "as_trained"))  # tflm-export's path
    model, tokenizer, config = load_trained(model_dir)
    # 4 steps tag everything O; a loud random head gives entities of every kind and length.
    kernel = model.head.kernel
    kernel.assign(np.random.default_rng(2).normal(0, 3, kernel.shape).astype(np.float32))
    export_saved_model(model, tokenizer, str(tmp_path / "ner"),
                       sequence_length=config.data.sequence_length)
    texts = ["江泽民在北京会见了记者。", "", "Mr. Darcy 在 London" * 4, "香港UN报道"]
    names = config.data.label_names
    features, _, weights, truncated = encode_tagged(tokenizer, tf.constant(texts), None,
                                                    config.data.sequence_length,
                                                    pad_to_length=False)
    probabilities = tf.nn.softmax(model(features, training=False)).numpy()
    expected = []
    for text, row, w in zip(texts, probabilities, weights.numpy()):
        row = row[w > 0]
        tags = row.argmax(-1)
        entities = sorted(_reference_entities([names[t] for t in tags], names))
        expected.append([(text[s:e], kind, s, e, float(row[s:e].max(-1).mean()))
                         for s, e, kind in entities])

    models = ServedModels({"ner": str(tmp_path / "ner")})
    rest, grpc_server = RestServer(models), GrpcServer(models)
    try:
        with ServingClient("127.0.0.1", rest.port, grpc_server.port, "ner") as client:
            tag = models.models["ner"][1].signatures["tag"]
            direct = tag(text=tf.constant(texts))
            nothing = tag(text=tf.constant([], tf.string))
            assert nothing["entity_start"].shape == (0, 0) and nothing["num_entities"].shape == (0,)
            for protocol in ("rest", "grpc"):
                answer = client.predict("tag", {"text": texts}, protocol)
                assert sorted(answer) == sorted(direct)
                for key, value in direct.items():
                    if value.dtype == tf.float32:
                        np.testing.assert_allclose(answer[key], value.numpy(), atol=1e-5)
                    else:
                        assert np.asarray(answer[key]).tolist() == value.numpy().tolist(), key
    finally:
        grpc_server.close()
        rest.close()
    assert direct["truncated"].numpy().tolist() == truncated.numpy().tolist() == [
        False, False, True, False]
    for i, row in enumerate(expected):
        n = int(direct["num_entities"][i])
        served = [(direct["entity_text"][i, j].numpy().decode(),
                   direct["entity_label"][i, j].numpy().decode(),
                   int(direct["entity_start"][i, j]), int(direct["entity_end"][i, j]),
                   float(direct["entity_score"][i, j])) for j in range(n)]
        assert [s[:4] for s in served] == [e[:4] for e in row]
        np.testing.assert_allclose([s[4] for s in served], [e[4] for e in row], atol=1e-5)
        assert direct["entity_start"][i, n:].numpy().tolist() == [-1] * (
            direct["entity_start"].shape[1] - n)
    assert sum(len(row) for row in expected) > 0


# -- Bad records. --------------------------------------------------------------------------------
BAD = {
    "missing text": ({"entities": []}, r"the text field 'text' is missing"),
    "empty text": ({"text": "", "entities": []}, r"the text field 'text' is empty"),
    "missing entities": ({"text": "北京"}, r"the entities field 'entities' is missing"),
    "past the end": ({"text": "北京", "entities": [[0, 3, "LOC"]]},
                     r"ends past the end of the text \(2 characters\)"),
    "overlap": ({"text": "北京市", "entities": [[0, 2, "LOC"], [1, 3, "LOC"]]}, r"overlap"),
    "not a span": ({"text": "北京", "entities": [[0, "LOC"]]}, r"is not \[start, end, type\]"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_record_names_its_file_and_line(case, tmp_path):
    record, message = BAD[case]
    rows = _records(12)
    rows.insert(4, record)
    path = _write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(LabelledDataError, match=rf"bad.jsonl:5: .*{message}"):
        make_dataset(_config(path))


def test_an_unknown_label_names_its_line_or_is_counted(tmp_path):
    rows = _records(30)
    rows[20] = {"text": "在巴黎", "entities": [[1, 3, "CITY"]]}  # line 21: held out (20 % 10)
    path = _write(tmp_path / "unknown.jsonl", rows)
    task = get_task(_config(path))
    with pytest.raises(LabelledDataError, match=r"unknown.jsonl:21: unknown entity type 'CITY'; "
                                                r"the model knows \['LOC', 'ORG', 'PER'\]"):
        task.dataset(training=False, split="eval")
    stats = InputStats()
    counted = get_task(_config(path, "data.on_bad_record=count"))
    batches = list(counted.dataset(training=False, split="eval", stats=stats))
    assert stats.as_dict()["records_missing_field"] == 1
    assert sum(float(w.numpy().max(axis=1).sum()) for _, _, w in batches) == 2  # lines 1, 11


def test_bad_records_are_counted(tmp_path):
    rows = _records(20)
    for i, (record, _) in enumerate(BAD.values()):
        rows.insert(2 * i + 1, record)
    rows.insert(3, "not json")
    path = _write(tmp_path / "bad.jsonl", rows)
    stats = InputStats()
    next(iter(make_dataset(_config(path, "data.on_bad_record=count"), stats=stats)))
    assert stats.as_dict()["records_missing_field"] == len(BAD) + 1
    assert stats.as_dict()["documents"] == 20


def test_other_tokenizers_and_label_names_are_config_errors(ner_file):
    with pytest.raises(ConfigError, match="data.tokenizer='wordpiece'.*byte tokenizer only"):
        _config(ner_file, "data.tokenizer=wordpiece,data.vocab_path=x")
    with pytest.raises(ConfigError, match=r"data.label_names=\['O', 'B-LOC'\]"):
        _config(ner_file, "data.label_names=[O,B-LOC]")
    with pytest.raises(ConfigError, match="data.input_format='csv'"):
        _config(ner_file, "data.input_format=csv")


def test_the_shared_people_daily_file_reads_whole(shared_data):
    stats = InputStats()
    records = read_entity_records([str(shared_data / "zh_peoples_daily_ner.jsonl")], stats=stats)
    assert len(records) == 11690 and stats.as_dict()["records_missing_field"] == 0
    kinds = [label for spans in records.entities for _, _, label in spans]
    assert {k: round(kinds.count(k), -2) for k in ("LOC", "PER", "ORG")} == {
        "LOC": 16600, "PER": 10200, "ORG": 2000}


# -- Two workers. -----------------------------------------------------------------------------
def test_two_local_workers_end_with_the_same_weights(ner_file, tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.pop("TF_CONFIG", None)
    model_dir = tmp_path / "two"
    model_dir.mkdir()
    log = tmp_path / "log.txt"
    with open(log, "a", buffering=1) as sink:
        cluster = LocalCluster([sys.executable, __file__, str(model_dir), ner_file, "4"], 2,
                               env=env, sink=sink).start()
        try:
            statuses = cluster.wait(180)
        finally:
            cluster.kill()
    assert statuses == [0, 0], log.read_text()[-4000:]
    first, second = (np.load(model_dir / f"weights-worker-{i}.npy") for i in (0, 1))
    np.testing.assert_array_equal(first, second)
    assert "job: completed at step 4" in log.read_text()


def _worker_main(model_dir, data_file, steps):
    """One worker of a MultiWorkerMirroredStrategy run (TF_CONFIG), saving its weights."""

    config = load_experiment(None, f"{OVERRIDES},data.input_path={data_file},"
                                   f"trainer.train_steps={steps},"
                                   "runtime.distribution_strategy=multi_worker")
    trainer = Trainer(get_task(config), model_dir, print_fn=lambda line: print(line, flush=True))
    status = trainer.train()
    weights = np.concatenate([np.ravel(v.numpy()) for v in trainer.model.trainable_variables])
    np.save(os.path.join(model_dir, f"weights-worker-{trainer.worker.worker_index}.npy"), weights)
    print(f"job: {status} at step {int(trainer.step.numpy())}", flush=True)


if __name__ == "__main__":
    _worker_main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
