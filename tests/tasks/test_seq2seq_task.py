"""The `seq2seq` task: batches of static shape whose rows, shift and weights match a Python
reference; bad records named by file:line or counted; the tiny config trains through
tflm-train's path (the loss falls) and evaluates; its saved model.keras gives the same
logits and --mode=eval the same report; `tflm-export --model_dir` exports it text to text."""

import json
import pathlib
import sys

import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO_ROOT / "tests")]
from labelled_fixtures import write_reversal_pairs  # noqa: E402

from tflm.config import ConfigError  # noqa: E402
from tflm.data.byte_tokenizer import ByteTokenizer  # noqa: E402
from tflm.data.classification import LabelledDataError  # noqa: E402
from tflm.data.stats import InputStats  # noqa: E402
from tflm.experiment import load_experiment, run_experiment  # noqa: E402
from tflm.models import Seq2SeqLM  # noqa: E402
from tflm.run_dir import RunDir, load_keras_model  # noqa: E402
from tflm.tasks import get_task, task_for_model  # noqa: E402

TINY = str(REPO_ROOT / "configs" / "tiny_seq2seq.yaml")
QUIET = dict(print_fn=lambda line: None)


def _config(path, extra=""):
    return load_experiment(TINY, ",".join(filter(None, [f"data.input_path={path}", extra])))


def _write(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return str(path)


def _byte_ids(text):
    return [b + ByteTokenizer.byte_offset for b in text.encode("utf-8")]


def test_batches_are_the_python_reference(tmp_path):
    tokenizer = ByteTokenizer()
    start, end, pad = tokenizer.cls_id, tokenizer.end_of_text_id, tokenizer.pad_id
    records = [{"source": "abc", "target": "xy"},
               {"source": "a long source sentence", "target": "a long target"}]
    path = _write(tmp_path / "pairs.jsonl", records)
    config = _config(path, "data.sequence_length=8,data.target_length=6,"
                           "data.global_batch_size=3,data.eval_every_nth_document=0")
    stats = InputStats()
    batches = get_task(config).dataset(tokenizer, stats=stats, training=False)
    features, labels, weights = next(iter(batches))
    for name, value in features.items():
        assert value.shape == (3, 8 if name.startswith("encoder") else 6), name
    assert labels.shape == weights.shape == (3, 6)

    def padded(ids, length):
        return ids + [pad] * (length - len(ids)), [1] * len(ids) + [0] * (length - len(ids))

    # The evaluation order is a fixed permutation: match each row by its source.
    expected_tokens = 0
    for record in records:
        source = _byte_ids(record["source"])[:7] + [end]
        target = [start] + _byte_ids(record["target"])[:5] + [end]
        row = [i for i in range(2) if
               list(features["encoder_token_ids"][i].numpy()) == padded(source, 8)[0]]
        assert len(row) == 1, record
        i = row[0]
        assert list(features["encoder_padding_mask"][i].numpy()) == padded(source, 8)[1]
        decoder_ids, decoder_mask = padded(target[:-1], 6)
        assert list(features["decoder_token_ids"][i].numpy()) == decoder_ids
        assert list(features["decoder_padding_mask"][i].numpy()) == decoder_mask
        assert list(labels[i].numpy()) == padded(target[1:], 6)[0]
        assert list(weights[i].numpy()) == decoder_mask
        expected_tokens += len(source) + len(target) - 1
    # The third row pads the final batch: no weight.
    assert not weights[2].numpy().any()
    assert stats.as_dict()["tokens"] == expected_tokens


@pytest.mark.parametrize("line, message", [
    ({"src": "abc", "target": "cba"}, "the text field 'source' is missing"),
    ({"source": "abc", "target": 3}, "the text field 'target' is a int, not a string"),
    ({"source": "abc", "target": " "}, "the text field 'target' is empty"),
    ("[1, 2]", "not a JSON object"),
])
def test_a_bad_record_names_file_and_line_or_is_counted(tmp_path, line, message):
    lines = [{"source": "abc", "target": "cba"}] * 9
    lines[4] = line
    path = _write(tmp_path / "bad.jsonl", lines)
    task = get_task(_config(path))
    with pytest.raises(LabelledDataError, match=f"bad.jsonl:5: {message}"):
        task.dataset(ByteTokenizer())
    stats = InputStats()
    get_task(_config(path, "data.on_bad_record=count")).dataset(ByteTokenizer(), stats=stats)
    counts = stats.as_dict()
    assert counts["records_missing_field"] == 1 and counts["documents"] == 8


def test_no_records_names_the_files(tmp_path):
    path = _write(tmp_path / "empty.jsonl", [{"text": "no pair"}])
    with pytest.raises(LabelledDataError, match=r"empty.jsonl: no source/target pairs for the "
                                                r"train split \(source field 'source'"):
        get_task(_config(path, "data.on_bad_record=count")).dataset(ByteTokenizer())


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"data.target_length=64 exceeds "
                                          r"model.max_sequence_length=32"):
        _config("p.jsonl", "data.target_length=64")
    with pytest.raises(ConfigError, match=r"model.pooler is not supported"):
        _config("p.jsonl", "model.pooler=true")
    with pytest.raises(ConfigError, match=r"data.input_format='text': seq2seq"):
        _config("p.jsonl", "data.input_format=text")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seq2seq")
    path = str(folder / "pairs.jsonl")
    write_reversal_pairs(path, count=200)
    config = _config(path, "trainer.train_steps=24,trainer.log_every=4,trainer.steps_per_loop=4,"
                           "trainer.jit_compile=false,model.num_decoder_layers=1")
    model_dir = folder / "run"
    trainer = run_experiment(config, str(model_dir), mode="train_and_eval", **QUIET)
    return config, model_dir, trainer


def test_the_tiny_config_trains_and_evaluates(trained):
    config, model_dir, trainer = trained
    assert trainer.status == "completed"
    losses = [entry["loss"] for entry in trainer.history]
    assert losses[-1] < 0.7 * losses[0], losses
    results = trainer.eval_results
    assert set(results) >= {"loss", "perplexity", "accuracy", "tokens"}
    assert results["perplexity"] == pytest.approx(np.exp(results["loss"]), rel=1e-6)
    assert 0 < results["accuracy"] <= 1
    # 20 held-out records: each target's letters and [end] carry weight.
    assert 20 * 4 <= results["tokens"] <= 20 * 9
    assert trainer.model.backbone.num_decoder_layers == 1


def test_the_saved_model_gives_the_same_logits(trained):
    config, model_dir, trainer = trained
    loaded = load_keras_model(RunDir(str(model_dir)).model_path)
    assert isinstance(loaded, Seq2SeqLM) and task_for_model(loaded).name == "seq2seq"
    features, _, _ = next(iter(get_task(config).dataset(trainer.tokenizer, training=False,
                                                        split="eval")))
    np.testing.assert_allclose(loaded(features).numpy(), trainer.model(features).numpy(),
                               rtol=1e-5, atol=1e-5)
    # --mode=eval restores the checkpoint and reports the same numbers.
    evaluated = run_experiment(config, str(model_dir), mode="eval", **QUIET)
    assert evaluated.eval_results == trainer.eval_results


def test_the_model_dir_exports_text_to_text(trained, tmp_path):
    """tflm-export --model_dir of a seq2seq run: its beam_search is the trained model's."""
    import tensorflow as tf

    from tflm.experiment import export_model_dir
    from tflm.generation import Seq2SeqDecoder
    from tflm.tasks.seq2seq import seq2seq_tokens

    _, model_dir, trainer = trained
    loaded = tf.saved_model.load(export_model_dir(str(model_dir), str(tmp_path)))
    sources = ["abcdef", "hij"]
    answer = loaded.signatures["beam_search"](sources=tf.constant(sources),
                                              max_new_tokens=tf.constant(10),
                                              length_penalty=tf.constant(0.6))
    start, end = seq2seq_tokens(trainer.tokenizer)
    ids = tf.ragged.constant([_byte_ids(s) + [end] for s in sources], tf.int32)
    tokens, lengths = Seq2SeqDecoder(trainer.model, start, end).beam_search(ids, 10, num_beams=4)
    expected = trainer.tokenizer.detokenize(tf.RaggedTensor.from_tensor(tokens, lengths=lengths))
    assert answer["text"].numpy().tolist() == expected.numpy().tolist()
