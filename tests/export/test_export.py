import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tflm.data import ByteTokenizer
from tflm.experiment import export_saved_model, load_trained, serving_module
from tflm.export import ExportError, UnsupportedOpError, check_ops, op_check
from tflm.generation import generate
from tflm.models import CausalLM, MaskedLM, SequenceClassifier, TransformerBackbone

SMALL = dict(vocabulary_size=262, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32,
             max_sequence_length=32, dropout=0.0, attention_dropout=0.0)


@pytest.fixture(scope="module")
def causal_lm():
    return CausalLM(TransformerBackbone(**SMALL, causal=True, norm_first=True))


@pytest.fixture(scope="module")
def plain_export(causal_lm, tmp_path_factory):
    """`causal_lm` exported once as by default (no XLA, no warm-up requests): its path."""
    return export_saved_model(causal_lm, ByteTokenizer(), str(tmp_path_factory.mktemp("plain")),
                              warmup=False)


def _args(module, **overrides):
    args = {"prompts": tf.constant(["It is a truth", ""]), "max_new_tokens": tf.constant(4),
            "temperature": tf.constant(0.0), "top_k": tf.constant(0), "top_p": tf.constant(1.0),
            "seed": tf.constant(0, tf.int64)}
    args.update({k: tf.constant(v, args[k].dtype) for k, v in overrides.items()})
    return args


def test_versions_are_new_folders_and_never_overwritten(tmp_path, causal_lm, plain_export):
    # The first export into an empty folder is `plain_export`; a copy of it is version 1
    # here, so that this test pays for one export more, not two.
    assert os.path.basename(plain_export) == "1"
    first = shutil.copytree(plain_export, tmp_path / "1")
    second = export_saved_model(causal_lm, ByteTokenizer(), str(tmp_path), warmup=False)
    assert (os.path.basename(first), os.path.basename(second)) == ("1", "2")
    with pytest.raises(ExportError, match="never overwritten"):
        export_saved_model(causal_lm, ByteTokenizer(), str(tmp_path), version=2)
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]  # no partial folder left
    for path in (plain_export, second):
        listed = (pathlib.Path(path) / "assets.extra" / "ops.txt").read_text().split()
        assert listed == check_ops(path) and "ReadVariableOp" in listed and len(listed) > 20


def test_an_op_the_server_lacks_is_an_export_error_naming_it(tmp_path, causal_lm, plain_export,
                                                             monkeypatch):
    from tflm.export import exporter

    used = check_ops(plain_export)
    lacking = sorted(used)[:2]  # pretend the server lacks two of the ops this export uses
    allowed = op_check.serving_ops() - set(lacking)
    monkeypatch.setattr(exporter, "check_ops",
                        lambda path, release: op_check.check_ops(path, allowed=allowed))
    with pytest.raises(UnsupportedOpError, match=", ".join(lacking)):
        export_saved_model(causal_lm, ByteTokenizer(), str(tmp_path / "out"), warmup=False)
    assert os.listdir(tmp_path / "out") == []  # the partial export is removed


def test_unknown_release_is_a_clear_error():
    with pytest.raises(ValueError, match="No op list for TF Serving 1.15"):
        op_check.serving_ops("1.15")


def test_generate_checks_its_parameters(causal_lm):
    module = serving_module(causal_lm, ByteTokenizer())
    for bad, message in (({"temperature": -1.0}, "temperature"), ({"top_p": 1.5}, "top_p"),
                         ({"top_k": -2}, "top_k"), ({"max_new_tokens": 0}, "max_new_tokens")):
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            module.generate(**_args(module, **bad))


def test_long_prompts_are_truncated_and_said_so(causal_lm):
    module = serving_module(causal_lm, ByteTokenizer())
    out = module.generate(**_args(module, prompts=["x" * 100, "short"], max_new_tokens=5))
    assert out["prompt_truncated"].numpy().tolist() == [True, False]
    scored = module.score(tf.constant(["y" * 100, "short", ""]))
    assert scored["truncated"].numpy().tolist() == [True, False, False]
    assert scored["num_tokens"].numpy().tolist() == [31, 5, 0]
    # The empty text has no tokens to score: likelihood 1.
    assert scored["log_likelihood"].numpy()[2] == 0.0


def test_greedy_generate_matches_the_python_model(causal_lm):
    tokenizer = ByteTokenizer()
    module = serving_module(causal_lm, tokenizer)
    served = module.generate(**_args(module, max_new_tokens=6))["text"].numpy()
    expected = generate(causal_lm, ["It is a truth", ""], max_new_tokens=6, tokenizer=tokenizer,
                                  jit_compile=False)
    assert [t.decode("utf-8") for t in served] == expected


def test_score_is_the_sum_of_next_token_log_probabilities(causal_lm):
    tokenizer = ByteTokenizer()
    module = serving_module(causal_lm, tokenizer)
    text = "a truth"
    ids = [tokenizer.end_of_text_id] + tokenizer.tokenize(text).numpy().tolist()
    logits = causal_lm({"token_ids": tf.constant([ids]), "padding_mask": tf.ones([1, len(ids)])})
    log_probs = tf.nn.log_softmax(logits[0]).numpy()
    expected = sum(log_probs[i, ids[i + 1]] for i in range(len(ids) - 1))
    scored = module.score(tf.constant([text]))
    np.testing.assert_allclose(scored["log_likelihood"].numpy()[0], expected, rtol=1e-5)
    np.testing.assert_allclose(scored["perplexity"].numpy()[0], np.exp(-expected / 7), rtol=1e-5)


def test_fill_mask_encode_and_classify():
    tokenizer = ByteTokenizer()
    backbone = TransformerBackbone(**SMALL, pooler=True, num_segments=2)
    masked = serving_module(MaskedLM(backbone), tokenizer)
    out = masked.fill_mask(tf.constant(["ab[MASK]d", "no mask"]), tf.constant(3))
    assert out["tokens"].shape == (2, 3) and out["has_mask"].numpy().tolist() == [True, False]
    assert np.all(np.diff(out["scores"].numpy(), axis=1) <= 0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="top_k"):
        masked.fill_mask(tf.constant(["a"]), tf.constant(0))
    encoded = masked.encode(tf.constant(["abc", "de"]))
    assert encoded["sequence_output"].shape == (2, 5, 16)
    assert encoded["padding_mask"].numpy().tolist() == [[1] * 5, [1] * 4 + [0]]
    classifier = serving_module(SequenceClassifier(backbone, 3), tokenizer,
                                label_names=["neg", "neu", "pos"])
    result = classifier.classify(tf.constant(["good", "bad"]))
    probabilities = result["probabilities"].numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    assert [x.decode() for x in result["label"].numpy()] == [
        ["neg", "neu", "pos"][i] for i in probabilities.argmax(axis=1)]
    with pytest.raises(ValueError, match="2 label names for 3 classes"):
        serving_module(SequenceClassifier(backbone, 3), tokenizer, label_names=["a", "b"])


def test_export_and_generate_binaries_on_a_trained_model_dir(tmp_path, capsys):
    from cli_main import run_main

    from tflm.cli import export as export_cli
    from tflm.experiment import run_experiment
    from tflm.experiment import load_experiment

    model_dir = tmp_path / "run"
    # The binaries' plumbing on a run's folder: the smallest model does.
    config = load_experiment("configs/tiny_gpt.yaml",
                             "trainer.train_steps=2,data.global_batch_size=2,"
                             "data.sequence_length=16,trainer.jit_compile=false,"
                             "model.num_layers=1,model.num_heads=2,model.hidden_dim=16,"
                             "model.intermediate_dim=32,model.max_sequence_length=32")
    trainer = run_experiment(config, str(model_dir), print_fn=lambda line: None)
    model, tokenizer, _ = load_trained(str(model_dir))
    for a, b in zip(model.weights, trainer.model.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    capsys.readouterr()
    code = run_main(export_cli, "tflm-export", f"--model_dir={model_dir}",
                    f"--export_dir={tmp_path / 'export'}")
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    assert out.strip().endswith(str(tmp_path / "export" / "1"))
    loaded = tf.saved_model.load(str(tmp_path / "export" / "1"))
    served = loaded.signatures["generate"](**_args(None, max_new_tokens=5))["text"].numpy()
    expected = generate(model, ["It is a truth", ""], max_new_tokens=5, tokenizer=tokenizer)
    assert [t.decode("utf-8") for t in served] == expected


def test_empty_batches_give_empty_outputs(causal_lm):
    tokenizer = ByteTokenizer()
    empty = tf.constant([], tf.string)
    module = serving_module(causal_lm, tokenizer)
    assert module.generate(**_args(module, prompts=[]))["text"].shape == (0,)
    assert module.beam_search(empty, tf.constant(4), tf.constant(0.6))["text"].shape == (0,)
    assert module.score(empty)["perplexity"].shape == (0,)
    backbone = TransformerBackbone(**SMALL, pooler=True, num_segments=2)
    masked = serving_module(MaskedLM(backbone), tokenizer)
    assert masked.fill_mask(empty, tf.constant(3))["tokens"].shape == (0, 3)
    assert masked.encode(empty)["pooled_output"].shape == (0, 16)
    classifier = serving_module(SequenceClassifier(backbone, 2), tokenizer)
    assert classifier.classify(empty)["probabilities"].shape == (0, 2)


def test_infinite_temperature_and_a_mask_lost_to_truncation(causal_lm):
    module = serving_module(causal_lm, ByteTokenizer())
    with pytest.raises(tf.errors.InvalidArgumentError, match="temperature: inf; must be finite"):
        module.generate(**_args(module, temperature=float("inf")))
    backbone = TransformerBackbone(**SMALL, pooler=True, num_segments=2)
    masked = serving_module(MaskedLM(backbone), ByteTokenizer())
    out = masked.fill_mask(tf.constant(["x" * 40 + "[MASK]", "a[MASK]"]), tf.constant(2))
    assert out["has_mask"].numpy().tolist() == [False, True]
    assert out["truncated"].numpy().tolist() == [True, False]


def test_the_client_imports_without_tensorflow(repo_root):
    code = ("import sys; import tflm.export.client; "
            "print('tensorflow' in sys.modules, 'tflm.models' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


def test_classify_takes_pairs_and_the_models_label_names(tmp_path):
    from tflm.data.classification import encode_classification

    tokenizer = ByteTokenizer()
    backbone = TransformerBackbone(**SMALL, pooler=True, num_segments=2)
    model = SequenceClassifier(backbone, 2, label_names=["contradiction", "entailment"])
    path = export_saved_model(model, tokenizer, str(tmp_path), text_pair=True,
                              sequence_length=24)
    served = tf.saved_model.load(path).signatures["classify"]
    assert sorted(served.structured_input_signature[1]) == ["text", "text_pair"]
    texts, pairs = ["A man sleeps." * 3, "It rains."], ["Someone rests.", ""]
    output = served(text=tf.constant(texts), text_pair=tf.constant(pairs))
    features, truncated = encode_classification(tokenizer, tf.constant(texts), tf.constant(pairs),
                                                24, pad_to_length=False)
    expected = tf.nn.softmax(model(features)).numpy()
    np.testing.assert_allclose(output["probabilities"].numpy(), expected, atol=1e-5)
    assert output["truncated"].numpy().tolist() == [True, False]
    assert set(x.decode() for x in output["label"].numpy()) <= {"contradiction", "entailment"}
    with pytest.raises(tf.errors.InvalidArgumentError, match="same number of rows"):
        served(text=tf.constant(["a", "b"]), text_pair=tf.constant(["c"]))


def test_an_xla_decode_answers_as_the_plain_one(tmp_path, causal_lm, plain_export):
    """jit_compile=True: the same text from generate and beam_search, for prompts on both sides
    of a prompt bucket (the XLA decode pads them further on the left)."""
    tokenizer = ByteTokenizer()
    plain = tf.saved_model.load(plain_export)
    xla = tf.saved_model.load(export_saved_model(causal_lm, tokenizer, str(tmp_path / "b"),
                                                 warmup=True, jit_compile=True))
    prompts = ["It is", "a truth universally acknowledged, that a single man", ""]
    for max_new_tokens in (3, 6):
        args = _args(None, prompts=prompts, max_new_tokens=max_new_tokens)
        expected = plain.signatures["generate"](**args)
        got = xla.signatures["generate"](**args)
        for key in ("text", "num_tokens", "prompt_truncated"):
            np.testing.assert_array_equal(got[key].numpy(), expected[key].numpy())
        beams = {"prompts": tf.constant(prompts), "max_new_tokens": tf.constant(max_new_tokens),
                 "length_penalty": tf.constant(0.6)}
        np.testing.assert_array_equal(xla.signatures["beam_search"](**beams)["text"].numpy(),
                                      plain.signatures["beam_search"](**beams)["text"].numpy())
    sampled = _args(None, prompts=prompts, temperature=0.9, top_k=20, top_p=0.9, seed=3)
    np.testing.assert_array_equal(xla.signatures["generate"](**sampled)["text"].numpy(),
                                  plain.signatures["generate"](**sampled)["text"].numpy())
