"""The exports outside tflm: a fresh process with only what TF Serving has, and saved_model_cli.

One module fixture starts every subprocess at once (each costs seconds of
TensorFlow import): one Python process that loads the tiny exports (the encoder-decoder's
too) with
only `tensorflow` and `tensorflow_text` (importing `tflm` there is refused
and would fail the load) and runs every signature, and one that runs
`saved_model_cli show --all` on each export in turn. The answers must be those of the
Python models in this process: the same tokens for greedy, seeded sampling
and beam search, the same log-likelihoods and probabilities to 1e-5.
"""

import base64
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from serving_adapters import (
    LABELS,
    load_tiny_models,
    shared_once,
    shared_seq2seq_export,
    shared_tiny_exports,
    tiny_tokenizers,
)

from tflm.data import ByteTokenizer
from tflm.export.client import SIGNATURES
from tflm.generation import Seq2SeqDecoder, generate
from tflm.tasks.seq2seq import seq2seq_tokens

# Runs in the fresh process: argv[1] the requests (JSON), argv[2] where to write the answers.
RUNNER = r'''
import base64, json, sys

class RefuseTflm:
    """A meta-path finder that refuses tflm (and keras_hub): the export must not need them."""
    refused = []
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tflm", "keras_hub"):
            self.refused.append(name)
            raise ImportError(f"{name} is not available where the model is served")
        return None

sys.meta_path.insert(0, RefuseTflm())
import tensorflow as tf
import tensorflow_text  # noqa: F401 - the tf-text ops, as TF Serving links them

def to_json(tensor):
    array = tensor.numpy()
    if array.dtype == object:
        values = [base64.b64encode(v).decode("ascii") for v in array.reshape(-1)]
    else:
        values = array.reshape(-1).tolist()
    return {"dtype": "string" if array.dtype == object else array.dtype.name,
            "shape": list(array.shape), "values": values}

with open(sys.argv[1]) as f:
    requests = json.load(f)
loaded, answers = {}, []
for request in requests:
    if request["export"] not in loaded:
        loaded[request["export"]] = tf.saved_model.load(request["export"])
    function = loaded[request["export"]].signatures[request["signature"]]
    specs = function.structured_input_signature[1]
    inputs = {}
    for name, spec in specs.items():
        value = request["inputs"][name]
        if spec.dtype == tf.string:
            value = [v.encode("utf-8") for v in value]
        inputs[name] = tf.constant(value, spec.dtype)
    answers.append({name: to_json(t) for name, t in function(**inputs).items()})
with open(sys.argv[2], "w") as f:
    json.dump({"answers": answers, "refused": RefuseTflm.refused,
               "tflm_modules": sorted(m for m in sys.modules if m.split(".")[0] == "tflm"),
               "signatures": {e: sorted(m.signatures) for e, m in loaded.items()}}, f)
'''

END = ByteTokenizer().end_of_text_id
PROMPTS = ["It is a truth", "", "x" * 40, "héllo wörld"]  # empty; over-long (kept: its end)
MASKED = ["It is a [MASK] truth", "[MASK] and prejudice", "no mask at all"]
TEXTS = ["Mr. Darcy", "", "y" * 50]
WORDPIECE_TEXTS = ["Mr. Darcy is happy!", "", "the truth " * 20, "Naïve THING, 中",
                   "a [SEP] b[MASK]"]

# Stop strings: a cut (invalid) byte of the random output reads as U+FFFD; "." is RE2's
# "any character" unless escaped.
STOP_STRINGS = ["\ufffd", ".", ""]
# Sampled, every control on (an over-long prompt keeps its end, a source its start).
CONTROLS = {"max_new_tokens": 6, "temperature": 0.9, "top_k": 20, "top_p": 0.9,
            "seed": 7, "repetition_penalty": 1.3, "no_repeat_ngram_size": 2, "min_new_tokens": 2,
            "stop_token_ids": [40], "num_return_sequences": 2, "stop_strings": STOP_STRINGS}
# The same for the Python decoders (which give tokens: no stop strings).
DECODER_CONTROLS = {k: v for k, v in CONTROLS.items()
                    if k not in ("max_new_tokens", "stop_strings")}

REQUESTS = [
    ("causal", "generate", {"prompts": PROMPTS, "max_new_tokens": 6, "temperature": 0.0,
                            "top_k": 0, "top_p": 1.0, "seed": 0}),
    ("causal", "generate", {"prompts": PROMPTS, "max_new_tokens": 6, "temperature": 0.9,
                            "top_k": 20, "top_p": 0.9, "seed": 7}),
    ("causal", "generate_with_controls", {"prompts": PROMPTS, **CONTROLS}),
    ("causal", "serving_default", {"prompts": PROMPTS, "max_new_tokens": 6, "temperature": 0.0,
                                   "top_k": 0, "top_p": 1.0, "seed": 0}),
    ("causal", "beam_search", {"prompts": PROMPTS, "max_new_tokens": 5, "length_penalty": 0.6}),
    ("causal", "score", {"text": PROMPTS}),
    ("masked", "fill_mask", {"text": MASKED, "top_k": 5}),
    ("masked", "encode", {"text": TEXTS}),
    ("classifier", "classify", {"text": TEXTS}),
    ("wordpiece", "classify", {"text": WORDPIECE_TEXTS}),
    ("seq2seq", "generate", {"sources": PROMPTS, **CONTROLS}),
    ("seq2seq", "beam_search", {"sources": PROMPTS, "max_new_tokens": 5, "length_penalty": 0.6}),
    ("seq2seq", "score", {"sources": PROMPTS, "targets": TEXTS + ["z"]}),
]

SIGNATURE_NAMES = {
    "causal": ["beam_search", "generate", "generate_with_controls", "score", "serving_default"],
    "masked": ["encode", "fill_mask", "serving_default"],
    "classifier": ["classify", "serving_default"],
    "wordpiece": ["classify", "serving_default"],
    "seq2seq": ["beam_search", "generate", "score", "serving_default"],
}
# saved_model_cli runs on these (the byte-level classifier's listing is the wordpiece one's).
CLI_KINDS = ("causal", "masked", "wordpiece")
# What saved_model_cli must print for each output of the tiny models (hidden 16, 3 labels).
OUTPUT_SHAPES = {
    "text": "(-1)", "num_tokens": "(-1)", "prompt_truncated": "(-1)", "log_likelihood": "(-1)",
    "perplexity": "(-1)", "truncated": "(-1)", "tokens": "(-1, -1)", "scores": "(-1, -1)",
    "has_mask": "(-1)", "pooled_output": "(-1, 16)", "sequence_output": "(-1, -1, 16)",
    "padding_mask": "(-1, -1)", "label": "(-1)", "label_id": "(-1)", "probabilities": "(-1, 3)",
    "stopped": "(-1)",
}

DT = {"string": "DT_STRING", "int32": "DT_INT32", "int64": "DT_INT64", "float32": "DT_FLOAT",
      "bool": "DT_BOOL"}


def _saved_model_cli():
    """The saved_model_cli installed beside this Python."""
    return os.path.join(os.path.dirname(sys.executable), "saved_model_cli")


# saved_model_cli's own entry point (what the installed script runs) on each export in turn,
# in one process: one TensorFlow import, not one per export. argv: (export, output file)
# pairs; each listing goes to its file as the command's standard output would.
CLI_RUNNER = r'''
import contextlib, sys
from tensorflow.python.tools.saved_model_cli import main

for export, out in zip(sys.argv[1::2], sys.argv[2::2]):
    sys.argv = ["saved_model_cli", "show", "--all", "--dir", export]
    with open(out, "w") as f, contextlib.redirect_stdout(f):
        try:
            main()
        except SystemExit as exit:  # absl's app.run ends with sys.exit
            if exit.code:
                raise
'''


def _run_subprocesses(bases, work):
    """The fresh-process run and saved_model_cli on each of CLI_KINDS, at once; their
    outputs in `work` (answers.json, <kind>.listing)."""
    requests = [{"export": os.path.join(bases[kind], "1"), "signature": signature,
                 "inputs": inputs} for kind, signature, inputs in REQUESTS]
    (work / "requests.json").write_text(json.dumps(requests))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ""}
    commands = {"runner": [sys.executable, "-c", RUNNER, str(work / "requests.json"),
                           str(work / "answers.json")]}
    commands["cli"] = [sys.executable, "-c", CLI_RUNNER]
    for kind in CLI_KINDS:
        commands["cli"] += [os.path.join(bases[kind], "1"), str(work / f"{kind}.listing")]
    processes = {}
    for name, command in commands.items():
        # Outputs to files, not pipes: nothing blocks on a full pipe while we wait for another.
        with open(work / f"{name}.out", "w") as out, open(work / f"{name}.err", "w") as err:
            # cwd outside the repository: `tflm` is not importable from there by accident.
            processes[name] = subprocess.Popen(command, cwd=work, env=env, stdout=out, stderr=err)
    failures = []
    for name, process in processes.items():
        if process.wait(timeout=300) != 0:
            failures.append(f"{name} exited with {process.returncode}:\n"
                            f"{(work / f'{name}.err').read_text()[-3000:]}")
    if failures:
        raise RuntimeError("\n".join(failures))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    directory, bases = shared_tiny_exports(tmp_path_factory)
    seq2seq, bases["seq2seq"] = shared_seq2seq_export(tmp_path_factory)
    if not os.path.exists(_saved_model_cli()):
        pytest.skip(f"no saved_model_cli beside {sys.executable}")
    work = shared_once(tmp_path_factory, "fresh_process", lambda w: _run_subprocesses(bases, w))
    return {"answers": json.loads((work / "answers.json").read_text()),
            "cli": {kind: (work / f"{kind}.listing").read_text() for kind in CLI_KINDS},
            "models": dict(load_tiny_models(directory), seq2seq=seq2seq), "bases": bases}


def _answer(runs, kind, signature, index=0):
    """The fresh process's outputs for the `index`-th request to (kind, signature), as NumPy."""
    found = [i for i, (k, s, _) in enumerate(REQUESTS) if (k, s) == (kind, signature)][index]
    outputs = {}
    for name, t in runs["answers"]["answers"][found].items():
        if t["dtype"] == "string":
            values = np.empty(len(t["values"]), dtype=object)
            values[:] = [base64.b64decode(v) for v in t["values"]]
        else:
            values = np.asarray(t["values"], dtype=t["dtype"])
        outputs[name] = values.reshape(t["shape"])
    return outputs


def _valid_utf8(raw):
    """Serving's output convention for text: invalid UTF-8 replaced by U+FFFD."""
    return tf.strings.unicode_transcode(raw, "UTF-8", "UTF-8", errors="replace").numpy()


def _prompt_ids(max_length=32):
    """The prompts as the model sees them: an empty one is end-of-text; long ones keep their
    last `max_length - 1` tokens (and get the one new token the positions hold)."""
    tokenizer = ByteTokenizer()
    rows = []
    for prompt in PROMPTS:
        ids = tokenizer.tokenize(tf.constant([prompt]))[0].numpy().tolist() or [
            tokenizer.end_of_text_id]
        rows.append(ids[-(max_length - 1):])
    return rows


def _texts(rows):
    """New ids -> text, as the signatures give it (special tokens dropped)."""
    offset = ByteTokenizer.byte_offset
    return [_valid_utf8(bytes(i - offset for i in row if i >= offset)) for row in rows]


def _cut_at_stop_strings(texts):
    """`(texts, stopped)`: each text before the earliest of STOP_STRINGS it holds (Python's
    str.find), and whether it held one."""
    cut, stopped = [], []
    for text in texts:
        starts = [text.decode().find(s) for s in STOP_STRINGS if s and s in text.decode()]
        cut.append(text.decode()[:min(starts)].encode() if starts else text)
        stopped.append(bool(starts))
    return cut, stopped


def _encoder_features(text_ids, tokenizer=None):
    """[CLS] ids [SEP], truncated to the 32 positions, padded: one row per text."""
    tokenizer = tokenizer or ByteTokenizer()
    rows = [[tokenizer.cls_id] + ids[:30] + [tokenizer.sep_id] for ids in text_ids]
    width = max(len(r) for r in rows)
    token_ids = np.array([r + [0] * (width - len(r)) for r in rows], np.int32)
    mask = np.array([[1] * len(r) + [0] * (width - len(r)) for r in rows], np.int32)
    return {"token_ids": token_ids, "padding_mask": mask, "segment_ids": np.zeros_like(token_ids)}


def _byte_ids(texts, tokenizer=None):
    tokenizer = tokenizer or ByteTokenizer()
    return [tokenizer.tokenize(tf.constant([t]))[0].numpy().tolist() for t in texts]


def test_fresh_process_has_no_tflm(runs):
    assert runs["answers"]["refused"] == []
    assert runs["answers"]["tflm_modules"] == []
    assert runs["answers"]["signatures"] == {
        os.path.join(runs["bases"][kind], "1"): names for kind, names in SIGNATURE_NAMES.items()}


@pytest.mark.parametrize("signature, index, kwargs", [
    ("generate", 0, {}),
    ("generate", 1, {"temperature": 0.9, "top_k": 20, "top_p": 0.9, "seed": 7}),
    ("serving_default", 0, {}),
    ("beam_search", 0, {"num_beams": 4, "length_penalty": 0.6}),
    ("generate_with_controls", 0, DECODER_CONTROLS),
], ids=["greedy", "sampled", "serving_default", "beam_search", "with_controls"])
def test_generate_gives_the_python_models_tokens(runs, signature, index, kwargs):
    max_new_tokens = 5 if signature == "beam_search" else 6
    ids = _prompt_ids()
    new = generate(runs["models"]["causal"], ids, max_new_tokens=max_new_tokens, end_id=END,
                   jit_compile=False, **kwargs)
    answer = _answer(runs, "causal", signature, index)
    copies = kwargs.get("num_return_sequences", 1)
    assert answer["num_tokens"].tolist() == [len(row) for row in new]
    texts = _texts(new)
    if signature == "generate_with_controls":
        texts, stopped = _cut_at_stop_strings(texts)
        assert answer["stopped"].tolist() == stopped
    assert answer["text"].tolist() == texts
    assert answer["prompt_truncated"].tolist() == np.repeat([False, False, True, False],
                                                             copies).tolist()


def test_score_gives_the_python_models_log_likelihood(runs):
    model = runs["models"]["causal"]
    expected = []
    for ids in _byte_ids(PROMPTS):
        if not ids:  # nothing to score
            expected.append(0.0)
            continue
        ids = np.array([[END] + ids[:31]], np.int32)  # after end-of-text, within 32 positions
        logits = model({"token_ids": ids, "padding_mask": np.ones_like(ids)}).numpy()[0, :-1]
        logits = logits.astype(np.float64)
        log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                                    keepdims=True)) - logits.max(-1, keepdims=True)
        expected.append(log_probs[np.arange(len(logits)), ids[0, 1:]].sum())
    answer = _answer(runs, "causal", "score")
    counts = np.array([min(len(p.encode()), 31) for p in PROMPTS])
    assert answer["num_tokens"].tolist() == counts.tolist()
    np.testing.assert_allclose(answer["log_likelihood"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(answer["perplexity"],
                               np.exp(-np.array(expected) / np.maximum(counts, 1)), rtol=1e-5)
    assert answer["truncated"].tolist() == [False, False, True, False]


def test_seq2seq_gives_the_python_decoders_tokens(runs):
    start, end = seq2seq_tokens(ByteTokenizer())
    sources = tf.ragged.constant([ids[:31] + [end] for ids in _byte_ids(PROMPTS)], tf.int32)
    decoder = Seq2SeqDecoder(runs["models"]["seq2seq"], start_id=start, end_id=end)
    cut = [False, False, True, False]
    for signature, (tokens, lengths), copies in [
            ("generate", decoder.sample(sources, 6, **DECODER_CONTROLS), 2),
            ("beam_search", decoder.beam_search(sources, 5, num_beams=4), 1)]:
        rows = [row[:n] for row, n in zip(tokens.numpy().tolist(), lengths.numpy())]
        answer = _answer(runs, "seq2seq", signature)
        assert answer["num_tokens"].tolist() == [len(row) for row in rows]
        texts = _texts(rows)
        if signature == "generate":
            texts, stopped = _cut_at_stop_strings(texts)
            assert answer["stopped"].tolist() == stopped
        assert answer["text"].tolist() == texts
        assert answer["source_truncated"].tolist() == np.repeat(cut, copies).tolist()
    answer = _answer(runs, "seq2seq", "score")
    assert answer["num_tokens"].tolist() == [10, 1, 32, 2]  # target [end], at most 32
    assert answer["target_truncated"].tolist() == [False, False, True, False]
    assert np.all(answer["log_likelihood"] < 0)


def test_fill_mask_gives_the_python_models_probabilities(runs):
    model = runs["models"]["masked"]
    tokenizer = ByteTokenizer()
    answer = _answer(runs, "masked", "fill_mask")
    for row, text in enumerate(MASKED):
        pieces = _byte_ids(text.split("[MASK]"))
        ids = pieces[0]
        for piece in pieces[1:]:
            ids = ids + [tokenizer.mask_id] + piece
        features = _encoder_features([ids])
        has_mask = tokenizer.mask_id in features["token_ids"][0]
        assert answer["has_mask"][row] == has_mask
        if not has_mask:  # no candidates
            assert answer["tokens"][row].tolist() == [b""] * 5
            assert answer["scores"][row].tolist() == [0.0] * 5
            continue
        position = list(features["token_ids"][0]).index(tokenizer.mask_id)
        features["mask_positions"] = np.array([[position]], np.int32)
        logits = model(features).numpy()[0, 0].astype(np.float64)
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        best = np.argsort(-probabilities, kind="stable")[:5]
        np.testing.assert_allclose(answer["scores"][row], probabilities[best], atol=1e-5)
        assert answer["tokens"][row].tolist() == _texts([[i] for i in best])


def test_encode_gives_the_backbones_outputs(runs):
    backbone = runs["models"]["masked"].backbone
    features = _encoder_features(_byte_ids(TEXTS))
    outputs = backbone(features)
    answer = _answer(runs, "masked", "encode")
    np.testing.assert_array_equal(answer["padding_mask"], features["padding_mask"])
    mask = features["padding_mask"][:, :, None].astype(bool)
    np.testing.assert_allclose(answer["sequence_output"] * mask,
                               outputs["sequence_output"].numpy() * mask, atol=1e-5)
    np.testing.assert_allclose(answer["pooled_output"], outputs["pooled_output"].numpy(),
                               atol=1e-5)
    assert answer["truncated"].tolist() == [False, False, True]


@pytest.mark.parametrize("kind, texts", [("classifier", TEXTS),
                                         ("wordpiece", WORDPIECE_TEXTS)])
def test_classify_gives_the_python_models_probabilities(runs, kind, texts):
    tokenizer = tiny_tokenizers()[kind]
    features = _encoder_features(_byte_ids(texts, tokenizer), tokenizer)
    logits = runs["models"][kind](features).numpy()
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    answer = _answer(runs, kind, "classify")
    np.testing.assert_allclose(answer["probabilities"], probabilities, atol=1e-5)
    assert answer["label_id"].tolist() == probabilities.argmax(-1).tolist()
    assert answer["label"].tolist() == [LABELS[i].encode() for i in probabilities.argmax(-1)]
    assert answer["truncated"].tolist() == [False, False, True] + [False] * (len(texts) - 3)


def test_the_wordpiece_export_needs_tensorflow_text(runs):
    """What makes the fresh process meaningful: a graph with tf-text ops, listed in ops.txt."""
    ops = (pathlib.Path(runs["bases"]["wordpiece"]) / "1" / "assets.extra" / "ops.txt").read_text()
    assert {"FastWordpieceTokenizeWithOffsets", "NormalizeUTF8"} <= set(ops.split())
    # saved_model_cli (plain TensorFlow) lists its signatures, not its concrete functions.
    assert "could not be listed due to the existence of custom ops" in runs["cli"]["wordpiece"]


def _cli_signatures(text):
    """saved_model_cli's listing -> {signature: {"inputs"|"outputs": {name: (dtype, shape)}}}."""
    listing = {}
    signatures = "\n" + text.split("\nConcrete Functions")[0]
    blocks = re.split(r"\nsignature_def\['([^']+)'\]:\n", signatures)
    for name, block in zip(blocks[1::2], blocks[2::2]):
        entry = {"inputs": {}, "outputs": {}}
        for kind, tensor, dtype, shape in re.findall(
                r"(inputs|outputs)\['([^']+)'\] tensor_info:\n\s+dtype: (\w+)\n\s+shape: (.*)\n",
                block):
            entry[kind][tensor] = (dtype, shape.strip())
        entry["method"] = re.search(r"Method name is: (.*)", block).group(1).strip()
        listing[name] = entry
    return listing


@pytest.mark.parametrize("kind", CLI_KINDS)
def test_saved_model_cli_lists_every_signature(runs, kind):
    listing = _cli_signatures(runs["cli"][kind])
    assert sorted(set(listing) - {"__saved_model_init_op"}) == SIGNATURE_NAMES[kind]
    default = {"causal": "generate", "masked": "fill_mask", "wordpiece": "classify"}[kind]
    for name in SIGNATURE_NAMES[kind]:
        inputs, outputs = SIGNATURES[default if name == "serving_default" else name]
        assert listing[name]["inputs"] == {
            n: (DT[dtype], "(-1)" if rank else "()") for n, (dtype, rank) in inputs.items()}, name
        assert listing[name]["outputs"] == {
            n: (DT[dtype], OUTPUT_SHAPES[n]) for n, dtype in outputs.items()}, name
        assert listing[name]["method"] == "tensorflow/serving/predict"
