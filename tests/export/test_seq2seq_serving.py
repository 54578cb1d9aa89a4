"""The encoder-decoder's export (`Seq2SeqLMServing`), loaded back: its signatures answer as
the Python decoder and model do, cut over-long sources as they say, check their parameters,
and answer an empty batch; an XLA export answers as the plain one."""

import os

import numpy as np
import pytest
import tensorflow as tf
from serving_adapters import shared_seq2seq_export

from tflm.data import ByteTokenizer
from tflm.experiment import export_saved_model
from tflm.export.client import SEQ2SEQ_SIGNATURES, SIGNATURES, typed_inputs
from tflm.export.warmup import WARMUP_FILE
from tflm.generation import Seq2SeqDecoder
from tflm.tasks.seq2seq import seq2seq_tokens

TOKENIZER = ByteTokenizer()
START, END = seq2seq_tokens(TOKENIZER)
LONG = "x" * 40  # over the 32 positions: kept are its first 31 tokens and [end]
SOURCES = ["It is a truth", "", "héllo wörld", LONG]
CONTROLS = dict(temperature=0.9, top_k=20, top_p=0.9, seed=7, repetition_penalty=1.3,
                no_repeat_ngram_size=2, min_new_tokens=2,
                stop_token_ids=[TOKENIZER.byte_offset + 32], num_return_sequences=2)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model, base = shared_seq2seq_export(tmp_path_factory)
    return model, tf.saved_model.load(os.path.join(base, "1")), os.path.join(base, "1")


def _tensors(signature, **inputs):
    """`inputs` as the tensors the signature declares (through the client's table)."""
    return {k: tf.constant(v) for k, v in typed_inputs(signature, inputs).items()}


def _generate_args(sources=SOURCES, max_new_tokens=6, **overrides):
    args = dict(sources=sources, max_new_tokens=max_new_tokens, temperature=0.0, top_k=0,
                top_p=1.0, seed=0, repetition_penalty=1.0, no_repeat_ngram_size=0,
                min_new_tokens=0, stop_token_ids=np.zeros([0], np.int32), num_return_sequences=1,
                stop_strings=[])
    return _tensors("generate", **dict(args, **overrides))


def _byte_ids(text):
    return TOKENIZER.tokenize(tf.constant([text]))[0].numpy().tolist()


def _source_rows(sources):
    """`source [end]` within the 32 positions, as the encoder sees it."""
    return tf.ragged.constant([_byte_ids(s)[:31] + [END] for s in sources], dtype=tf.int32)


def _texts(tokens, lengths):
    rows = tf.RaggedTensor.from_tensor(tokens, lengths=lengths)
    text = TOKENIZER.detokenize(rows)
    return tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace").numpy().tolist()


@pytest.mark.parametrize("controls", [{}, CONTROLS], ids=["greedy", "sampled_with_controls"])
def test_generate_gives_the_decoders_tokens(served, controls):
    model, loaded, _ = served
    answer = loaded.signatures["generate"](**_generate_args(**controls))
    decoder = Seq2SeqDecoder(model, start_id=START, end_id=END)
    tokens, lengths = decoder.sample(_source_rows(SOURCES), 6, **controls)
    assert answer["num_tokens"].numpy().tolist() == lengths.numpy().tolist()
    assert answer["text"].numpy().tolist() == _texts(tokens, lengths)
    copies = controls.get("num_return_sequences", 1)
    assert answer["source_truncated"].numpy().tolist() == [False] * 3 * copies + [True] * copies
    assert answer["stopped"].numpy().tolist() == [False] * 4 * copies
    if not controls:
        default = loaded.signatures["serving_default"](**_generate_args())
        assert default["text"].numpy().tolist() == answer["text"].numpy().tolist()
        # An over-long source answers as its first 31 tokens.
        cut = loaded.signatures["generate"](**_generate_args([LONG[:31]]))
        assert cut["text"].numpy().tolist() == answer["text"].numpy().tolist()[-1:]
        assert cut["source_truncated"].numpy().tolist() == [False]


def test_a_stop_string_ends_the_text_before_it(served):
    """Cut before the first stop string (not returned; `stopped`), the tokens all decoded; a
    stop string the text lacks (longer than its 6 bytes) changes nothing."""
    _, loaded, _ = served
    full = loaded.signatures["generate"](**_generate_args())
    texts = [t.decode() for t in full["text"].numpy()]
    row = next(i for i, t in enumerate(texts) if len(t) >= 3)
    stop = texts[row][1:3]
    cut = loaded.signatures["generate"](**_generate_args(stop_strings=[stop, "not in 6 bytes"]))
    assert [t.decode() for t in cut["text"].numpy()] == [
        t[:t.find(stop)] if stop in t else t for t in texts]
    assert cut["text"].numpy()[row].decode() == texts[row][:1]
    assert cut["stopped"].numpy().tolist() == [stop in t for t in texts]
    assert cut["stopped"].numpy()[row]
    assert cut["num_tokens"].numpy().tolist() == full["num_tokens"].numpy().tolist()
    absent = loaded.signatures["generate"](**_generate_args(stop_strings=["not in 6 bytes"]))
    assert absent["text"].numpy().tolist() == full["text"].numpy().tolist()
    assert absent["stopped"].numpy().tolist() == [False] * 4


def test_beam_search_gives_the_decoders_tokens(served):
    model, loaded, _ = served
    answer = loaded.signatures["beam_search"](**_tensors(
        "beam_search", sources=SOURCES, max_new_tokens=5, length_penalty=0.6))
    tokens, lengths = Seq2SeqDecoder(model, start_id=START, end_id=END).beam_search(
        _source_rows(SOURCES), 5, num_beams=4, length_penalty=0.6)
    assert answer["num_tokens"].numpy().tolist() == lengths.numpy().tolist()
    assert answer["text"].numpy().tolist() == _texts(tokens, lengths)
    assert answer["source_truncated"].numpy().tolist() == [False, False, False, True]


def test_score_is_the_teacher_forced_log_likelihood(served):
    model, loaded, _ = served
    targets = ["a truth", "", "y" * 40, "wörld"]
    answer = loaded.signatures["score"](**_tensors("score", sources=SOURCES, targets=targets))
    expected = []
    for source, target in zip(SOURCES, targets):
        # Training's rows: `source [end]`, the decoder reads `[start] target`, predicts
        # `target [end]`; a target keeps its first 31 tokens.
        source_ids = np.array([_byte_ids(source)[:31] + [END]], np.int32)
        labels = _byte_ids(target)[:31] + [END]
        decoder_ids = np.array([[START] + labels[:-1]], np.int32)
        logits = model({"encoder_token_ids": source_ids,
                        "encoder_padding_mask": np.ones_like(source_ids),
                        "decoder_token_ids": decoder_ids,
                        "decoder_padding_mask": np.ones_like(decoder_ids)}).numpy()[0]
        logits = logits.astype(np.float64)
        top = logits.max(-1, keepdims=True)
        log_probs = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
        expected.append(log_probs[np.arange(len(labels)), labels].sum())
    counts = [len(_byte_ids(t)[:31]) + 1 for t in targets]
    assert answer["num_tokens"].numpy().tolist() == counts
    np.testing.assert_allclose(answer["log_likelihood"].numpy(), expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(answer["perplexity"].numpy(),
                               np.exp(-np.array(expected) / counts), rtol=1e-4)
    assert answer["source_truncated"].numpy().tolist() == [False, False, False, True]
    assert answer["target_truncated"].numpy().tolist() == [False, False, True, False]


@pytest.mark.parametrize("signature, overrides, message", [
    ("generate", {"top_p": 1.5}, r"top_p: 1.5; must be in \(0, 1\]"),
    ("generate", {"max_new_tokens": 0}, "max_new_tokens: 0; must be at least 1"),
    ("generate", {"stop_token_ids": [262]}, r"stop_token_ids: \[262\]; must be token ids"),
    ("generate", {"num_return_sequences": 0}, "num_return_sequences: 0; must be at least 1"),
    ("beam_search", {"length_penalty": -1.0}, "length_penalty: -1; must be finite and >= 0"),
    ("score", {"targets": ["a"]}, "sources and targets must have the same number of rows"),
])
def test_a_bad_parameter_is_named(served, signature, overrides, message):
    _, loaded, _ = served
    if signature == "generate":
        args = _generate_args(**overrides)
    elif signature == "beam_search":
        args = _tensors(signature, **dict(
            {"sources": SOURCES, "max_new_tokens": 5, "length_penalty": 0.6}, **overrides))
    else:
        args = _tensors(signature, **dict({"sources": ["a", "b"], "targets": ["a", "b"]},
                                          **overrides))
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        loaded.signatures[signature](**args)


def test_an_empty_batch_gives_empty_outputs(served):
    _, loaded, _ = served
    none = np.zeros([0], object)
    answers = [
        loaded.signatures["generate"](**_generate_args(none, **CONTROLS)),
        loaded.signatures["beam_search"](**_tensors("beam_search", sources=none, max_new_tokens=5,
                                                    length_penalty=0.6)),
        loaded.signatures["score"](**_tensors("score", sources=none, targets=none)),
    ]
    for answer in answers:
        assert answer and all(t.shape == (0,) for t in answer.values()), answer


def test_the_client_table_and_warmup_requests_fit_the_export(served):
    _, loaded, path = served
    assert sorted(loaded.signatures) == ["beam_search", "generate", "score", "serving_default"]
    for name, (inputs, outputs) in SEQ2SEQ_SIGNATURES.items():
        function = loaded.signatures[name]
        specs = function.structured_input_signature[1]
        assert {k: (s.dtype.name, s.shape.rank) for k, s in specs.items()} == inputs, name
        assert {k: s.dtype.name for k, s in function.structured_outputs.items()} == outputs
    # The client tells the causal LM's signatures of the same names by their inputs.
    assert set(typed_inputs("score", {"text": ["a"]})) == set(SIGNATURES["score"][0])
    # Every warm-up request (every control on in one) is one the export answers.
    from tensorflow_serving.apis import prediction_log_pb2

    records = tf.data.TFRecordDataset(os.path.join(path, "assets.extra", WARMUP_FILE))
    signatures = []
    for record in records:
        request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
        name = request.model_spec.signature_name
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        answer = loaded.signatures[name](**{k: tf.constant(v) for k, v in inputs.items()})
        assert all(t.shape[0] > 0 for t in answer.values())
        signatures.append(name)
    assert signatures == ["generate", "generate", "beam_search", "score"]


def test_an_xla_decode_answers_as_the_plain_one(served, tmp_path):
    """jit_compile=True (sources right-padded to a bucket): the same texts from generate."""
    model, loaded, _ = served
    xla = tf.saved_model.load(export_saved_model(model, TOKENIZER, str(tmp_path), warmup=False,
                                                 jit_compile=True))
    args = _generate_args()
    expected = loaded.signatures["generate"](**args)
    got = xla.signatures["generate"](**args)
    for key in ("text", "num_tokens", "source_truncated"):
        np.testing.assert_array_equal(got[key].numpy(), expected[key].numpy())


@pytest.fixture(scope="module")
def client(served):
    """A client of the REST and gRPC test servers, both serving the export (loaded once)."""
    from serving_adapters import GrpcServer, RestServer, ServedModels

    from tflm.export.client import ServingClient

    served_models = ServedModels({"seq2seq": os.path.dirname(served[2])})
    rest, grpc_server = RestServer(served_models), GrpcServer(served_models)
    client = ServingClient("127.0.0.1", rest.port, grpc_server.port, "seq2seq")
    yield client
    client.close()
    grpc_server.close()
    rest.close()


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_rest_and_grpc_answer_as_the_loaded_export(served, client, protocol):
    _, loaded, _ = served
    requests = {
        "generate": dict(sources=SOURCES, max_new_tokens=6, **dict(CONTROLS, stop_strings=["e"])),
        "beam_search": dict(sources=SOURCES, max_new_tokens=6, length_penalty=0.6),
        "score": dict(sources=SOURCES, targets=["a", "", "b", "c"]),
    }
    for signature, inputs in requests.items():
        answer = client.predict(signature, inputs, protocol)
        expected = loaded.signatures[signature](**_tensors(signature, **inputs))
        assert sorted(answer) == sorted(expected), signature
        for name, value in expected.items():
            value = value.numpy()
            if value.dtype == object:
                assert [v if isinstance(v, bytes) else v.encode() for v in answer[name]] \
                    == value.tolist(), (signature, name)
            else:
                np.testing.assert_allclose(np.asarray(answer[name], value.dtype), value,
                                           rtol=1e-6, err_msg=f"{signature} {name}")
