"""The `seq2seq` task: batches of static shape whose rows, shift and weights match a Python
reference, cuts counted; bad records named by file:line or counted; the tiny config trains
through tflm-train's path (the loss falls) and evaluates, with generation metrics of
decoding done here; its saved model.keras gives the same logits and --mode=eval the same
report; `tflm-export --model_dir` exports it text to text; a source and a target
tokenizer each read their own side."""

import copy
import json
import pathlib
import sys

import numpy as np
import pytest
import tensorflow as tf

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO_ROOT / "tests")]
from labelled_fixtures import write_reversal_pairs  # noqa: E402

from tflm.config import ConfigError  # noqa: E402
from tflm.data.byte_tokenizer import ByteTokenizer  # noqa: E402
from tflm.data.classification import LabelledDataError, evaluation_order  # noqa: E402
from tflm.data.tokenizers import TokenizerPair  # noqa: E402
from tflm.data.stats import InputStats  # noqa: E402
from tflm.experiment import load_experiment, run_experiment  # noqa: E402
from tflm.generation import Seq2SeqDecoder  # noqa: E402
from tflm.models import Seq2SeqLM  # noqa: E402
from tflm.models.finetuning import layer_lr_multipliers  # noqa: E402
from tflm.run_dir import RunDir, load_keras_model  # noqa: E402
from tflm.tasks import get_task, task_for_model  # noqa: E402
from tflm.tasks.seq2seq import seq2seq_records  # noqa: E402
from tflm.training.text_metrics import generation_report  # noqa: E402

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
    # Data keys are checked where the data is read (a converted model_dir has none).
    with pytest.raises(ConfigError, match=r"data.input_format='text': seq2seq"):
        get_task(_config("p.jsonl", "data.input_format=text")).dataset(ByteTokenizer())


def test_lora_layer_decay_and_checkpointing_reach_encoder_and_decoder():
    # The task's model is built as every task's is (`Task.build_model`).
    model = get_task(_config("p.jsonl", "model.finetune=lora,model.num_decoder_layers=1,"
                                        "trainer.gradient_checkpointing=true")).build_model()
    encoder, decoder = model.backbone.encoder, model.backbone.decoder
    assert encoder.gradient_checkpointing and decoder.gradient_checkpointing
    # Only the factors train (the head is the tied embedding); both halves have them.
    assert model.trainable_variables
    assert all("lora" in v.path for v in model.trainable_variables), \
        [v.path for v in model.trainable_variables if "lora" not in v.path]
    blocks = encoder.blocks + decoder.blocks  # one stack: the encoder's below the decoder's
    assert all(block.trainable_weights for block in blocks)
    # Layer-wise decay: block i of the 3 at decay^(3 - i).
    multipliers = dict(zip(map(id, model.trainable_variables),
                           layer_lr_multipliers(model, 0.5)))
    for i, block in enumerate(blocks):
        assert {multipliers[id(v)] for v in block.trainable_weights} == {0.5 ** (3 - i)}


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


def test_cut_sources_and_targets_are_counted_for_real_rows_only(tmp_path):
    records = [{"source": "a long source", "target": "a long target"},  # both cut
               {"source": "abc", "target": "xy"},
               {"source": "a long source", "target": "xy"}]             # the source cut
    path = _write(tmp_path / "pairs.jsonl", records)
    config = _config(path, "data.sequence_length=8,data.target_length=6,"
                           "data.global_batch_size=2,data.eval_every_nth_document=0")
    stats = InputStats()
    # Two batches; the second's padding row repeats record 0, which is not counted again.
    assert len(list(get_task(config).dataset(ByteTokenizer(), stats=stats,
                                             training=False))) == 2
    counts = stats.as_dict()
    assert (counts["sources_truncated"], counts["targets_truncated"]) == (2, 1)


def _byte_text(ids):
    return bytes(i - ByteTokenizer.byte_offset for i in ids
                 if i >= ByteTokenizer.byte_offset).decode("utf-8", "replace")


def _decoded_here(config, model, num_beams, count):
    """The held-out records in evaluation's order, and their targets decoded here from
    Python-built byte rows (the source cut to data.sequence_length - 1 and [end])."""
    tokenizer, data = ByteTokenizer(), config.data
    records = seq2seq_records(config, "eval")
    records = records.select(evaluation_order(len(records), config.runtime.seed)[:count])
    end = tokenizer.end_of_text_id
    sources = tf.ragged.constant([_byte_ids(s)[:data.sequence_length - 1] + [end]
                                  for s in records.sources], tf.int32)
    decoder = Seq2SeqDecoder(model, start_id=tokenizer.cls_id, end_id=end,
                             pad_id=tokenizer.pad_id)
    if num_beams > 1:
        tokens, lengths = decoder.beam_search(sources, data.target_length, num_beams)
    else:
        tokens, lengths = decoder.sample(sources, data.target_length)
    hypotheses = [_byte_text(row[:n]) for row, n in zip(tokens.numpy(), lengths.numpy())]
    return records, hypotheses


def test_evaluation_reports_the_metrics_of_the_decoded_targets(trained):
    config, model_dir, trainer = trained
    results = trainer.eval_results
    records, hypotheses = _decoded_here(config, trainer.model, 1, config.data.eval_max_examples)
    expected = generation_report(hypotheses, records.targets)
    assert expected["examples"] == 20
    for key, value in expected.items():
        assert results[key] == pytest.approx(value) if isinstance(value, float) else \
            results[key] == value, key
    assert results["samples"][0] == {"source": records.sources[0],
                                     "reference": records.targets[0],
                                     "hypothesis": hypotheses[0]}
    assert len(results["samples"]) == 5
    saved = json.loads((model_dir / "eval_results.json").read_text())
    assert saved["samples"] == results["samples"] and saved["bleu"] == results["bleu"]
    # TensorBoard gets the numbers, not sacrebleu's signatures nor the samples.
    tags = {value.tag for event_file in (model_dir / "eval").iterdir()
            for event in tf.compat.v1.train.summary_iterator(str(event_file))
            for value in event.summary.value}
    assert {"bleu", "chrf", "rougeL", "exact_match", "perplexity"} <= tags
    assert not tags & {"bleu_signature", "samples", "language"}


def test_evaluation_decodes_with_beams_or_not_at_all(trained):
    config, model_dir, trainer = trained

    def report(**data_keys):
        changed = copy.deepcopy(config)
        for key, value in data_keys.items():
            setattr(changed.data, key, value)
        return get_task(changed).generation_report(trainer.model, trainer.tokenizer)

    beams = report(eval_num_beams=3, eval_max_examples=6)
    records, hypotheses = _decoded_here(config, trainer.model, 3, 6)
    assert beams["examples"] == 6
    assert beams["chrf"] == pytest.approx(generation_report(hypotheses, records.targets)["chrf"])
    assert [s["hypothesis"] for s in beams["samples"]] == hypotheses[:5]
    assert report(eval_max_examples=0) == {}


def _wordpiece(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s", "big"]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return str(path), {token: i for i, token in enumerate(vocab)}


def test_a_source_and_a_target_tokenizer_read_their_own_sides(tmp_path):
    vocab_path, ids = _wordpiece(tmp_path)
    path = _write(tmp_path / "pairs.jsonl", [{"source": "héllo", "target": "big worlds"}])
    config = _config(path, f"data.target_tokenizer=wordpiece,data.target_vocab_path="
                           f"{vocab_path},model.shared_embeddings=false,"
                           "data.sequence_length=8,data.target_length=6,"
                           "data.global_batch_size=1,data.eval_every_nth_document=0")
    task = get_task(config)
    pair = task.make_tokenizer()
    assert isinstance(pair, TokenizerPair)
    assert (pair.source.kind, pair.target.kind, pair.vocabulary_size) == ("byte", "wordpiece",
                                                                        262)
    features, labels, _ = next(iter(task.dataset(pair, training=False)))
    # The source in bytes and the byte tokenizer's end; the target in word pieces, started
    # by its [CLS] and ended by its [SEP] (it has no end-of-text).
    source = _byte_ids("héllo") + [ByteTokenizer().end_of_text_id]
    assert features["encoder_token_ids"][0].numpy().tolist() == source + [0] * 1
    target = [ids["big"], ids["world"], ids["##s"]]
    assert features["decoder_token_ids"][0].numpy().tolist() == [ids["[CLS]"]] + target + \
        [0, 0]
    assert labels[0].numpy().tolist() == target + [ids["[SEP]"], 0, 0]
    # The pair goes to a model_dir's tokenizer/ and comes back.
    run = RunDir(str(tmp_path / "run"))
    run.save_tokenizer(pair)
    loaded = run.load_tokenizer(config)
    assert isinstance(loaded, TokenizerPair)
    assert loaded.fingerprint() == pair.fingerprint()
    assert (loaded.source.fingerprint(), loaded.target.fingerprint()) == \
        (pair.source.fingerprint(), pair.target.fingerprint())
    assert loaded.target.tokenize(["big worlds"]).to_list() == [target]


def test_a_run_with_two_tokenizers_trains_and_exports_both(tmp_path):
    import tensorflow as tf

    from tflm.experiment import export_model_dir, load_trained
    from tflm.export.client import typed_inputs
    from tflm.generation import generate

    vocab_path, _ = _wordpiece(tmp_path)
    path = _write(tmp_path / "pairs.jsonl", [{"source": "héllo", "target": "big worlds"},
                                             {"source": "abc", "target": "world"}] * 4)
    config = _config(path, f"data.target_tokenizer=wordpiece,data.target_vocab_path="
                           f"{vocab_path},model.shared_embeddings=false,"
                           "data.sequence_length=8,data.target_length=6,"
                           "data.global_batch_size=4,data.eval_every_nth_document=0,"
                           "trainer.train_steps=2,trainer.log_every=1,"
                           "trainer.steps_per_loop=1,trainer.jit_compile=false")
    run_experiment(config, str(tmp_path / "run"), mode="train", **QUIET)
    model, pair, _ = load_trained(str(tmp_path / "run"))
    assert isinstance(pair, TokenizerPair) and pair.target.kind == "wordpiece"
    loaded = tf.saved_model.load(export_model_dir(str(tmp_path / "run"), str(tmp_path / "export")))
    sources = ["héllo", "abc"]
    answer = loaded.signatures["generate"](**{k: tf.constant(v) for k, v in typed_inputs(
        "generate", dict(sources=sources, max_new_tokens=4, temperature=0.0, top_k=0, top_p=1.0,
                         seed=0, repetition_penalty=1.0, no_repeat_ngram_size=0,
                         min_new_tokens=3, stop_token_ids=[], num_return_sequences=1,
                         stop_strings=[])).items()})
    # Sources in bytes, targets in word pieces (at least 3), in the export as in Python.
    expected = generate(model, sources, max_new_tokens=4, min_new_tokens=3, tokenizer=pair,
                        jit_compile=False)
    texts = [t.decode("utf-8") for t in answer["text"].numpy()]
    assert texts == expected
    assert all(t and set(t.replace(" ", "")) <= set("helowrdbigs[]UNK") for t in texts), texts
    scored = loaded.signatures["score"](sources=tf.constant(sources),
                                        targets=tf.constant(["big worlds", "world"]))
    # `big world ##s [SEP]` and `world [SEP]`: the target tokenizer's pieces.
    assert scored["num_tokens"].numpy().tolist() == [4, 2]


def test_tokenizer_config_errors_name_the_key(tmp_path):
    vocab_path, _ = _wordpiece(tmp_path)
    with pytest.raises(ConfigError, match=r"^model.shared_embeddings=true needs one tokenizer"):
        _config("p.jsonl", f"data.source_tokenizer=wordpiece,data.source_vocab_path="
                           f"{vocab_path}")
    with pytest.raises(ConfigError, match=r"data.target_tokenizer='wordpiece' needs "
                                          r"data.target_vocab_path"):
        _config("p.jsonl", "data.target_tokenizer=wordpiece,model.shared_embeddings=false")
    with pytest.raises(ConfigError, match=r"data.source_tokenizer: 'bpe' is not one of"):
        _config("p.jsonl", "data.source_tokenizer=bpe")
    with pytest.raises(ConfigError, match=r"data.eval_language: 'fr' is not one of"):
        _config("p.jsonl", "data.eval_language=fr")
    # The same tokenizer named for both sides shares its embeddings.
    assert _config("p.jsonl", "data.source_tokenizer=byte").model.shared_embeddings
    config = _config("p.jsonl", f"data.target_tokenizer=wordpiece,data.target_vocab_path="
                                f"{vocab_path},model.shared_embeddings=false,"
                                "model.vocabulary_size=8")
    with pytest.raises(ConfigError, match=r"model.vocabulary_size=8 is smaller than the pair "
                                          r"tokenizer's 262 ids"):
        get_task(config).dataset()


def test_tflm_generate_prints_the_target_of_each_source(trained, capsys):
    from absl import flags

    from tflm.cli import generate as generate_cli
    from tflm.generation import generate

    config, model_dir, trainer = trained
    sources = ["abcdef", "jihgf"]
    try:
        flags.FLAGS(["tflm-generate", f"--model_dir={model_dir}", "--max_new_tokens=10",
                     *[f"--prompt={s}" for s in sources]])
        generate_cli.main([])
    finally:
        flags.FLAGS.unparse_flags()
    lines = capsys.readouterr().out.splitlines()
    assert lines == generate(trainer.model, sources, max_new_tokens=10,
                             tokenizer=trainer.tokenizer)


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
