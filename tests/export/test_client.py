"""ServingClient against TF Serving's REST and gRPC wire formats (tflm/export/client.py).

The tiny CausalLM, MaskedLM and classifier exports are served by the in-test
adapters of serving_adapters.py; every answer through the client, over both
protocols, must be what calling the loaded SavedModel's signature returns.
"""

import json
import os
import re
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from serving_adapters import LABELS, GrpcServer, RestServer, ServedModels, shared_tiny_exports
from tensorflow_serving.apis import prediction_log_pb2, prediction_service_pb2_grpc

from tflm.export.client import (
    SIGNATURES,
    ServingClient,
    ServingError,
    grpc_request,
    rest_request_body,
    typed_inputs,
)

PROTOCOLS = ["rest", "grpc"]
PROMPTS = ["It is a truth", "", "x" * 40, "héllo wörld"]  # empty; over-long; non-ASCII

# (served model, signature, inputs): every tflm signature, and serving_default with NumPy values.
CASES = {
    "generate": ("tflm", "generate", {"prompts": PROMPTS, "max_new_tokens": 6, "temperature": 0.0,
                                      "top_k": 0, "top_p": 1.0, "seed": 0}),
    "generate_sampled": ("tflm", "generate", {"prompts": PROMPTS, "max_new_tokens": 6,
                                              "temperature": 0.9, "top_k": 20, "top_p": 0.9,
                                              "seed": 7}),
    "beam_search": ("tflm", "beam_search", {"prompts": PROMPTS, "max_new_tokens": 5,
                                            "length_penalty": 0.6}),
    "score": ("tflm", "score", {"text": PROMPTS}),
    "fill_mask": ("bert", "fill_mask", {"text": ["It is a [MASK] truth", "no mask", "[MASK]"],
                                        "top_k": 4}),
    "encode": ("bert", "encode", {"text": ["Mr. Darcy", "", "y" * 50]}),
    "classify": ("classifier", "classify", {"text": ["a happy ending", "", "z" * 50]}),
    "default_generate": ("tflm", "serving_default", {
        "prompts": np.array([b"It is"]), "max_new_tokens": np.int32(3),
        "temperature": np.float32(0), "top_k": np.int32(0), "top_p": np.float32(1),
        "seed": np.int64(0)}),
    "default_fill_mask": ("bert", "serving_default", {"text": np.array([b"a [MASK]"]),
                                                      "top_k": np.int32(2)}),
    "default_classify": ("classifier", "serving_default", {"text": np.array([b"fine"])}),
}


class _Toy(tf.Module):
    """Signatures for the wire rules our models do not exercise: one output, *_bytes."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def upper(self, text):
        return {"upper": tf.strings.upper(text)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def raw(self, text):
        return {"raw_bytes": tf.strings.join([text, tf.constant(b"\xff\xfe")]),
                "length": tf.strings.length(text)}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    directory, bases = shared_tiny_exports(tmp_path_factory)
    toy = _Toy()
    toy_base = tmp_path_factory.mktemp("toy")
    tf.saved_model.save(toy, str(toy_base / "1"), signatures={
        "upper": toy.upper.get_concrete_function(), "raw": toy.raw.get_concrete_function()})
    models = ServedModels({"tflm": bases["causal"], "bert": bases["masked"],
                           "classifier": bases["classifier"], "toy": str(toy_base)})
    rest = RestServer(models)
    grpc_server = GrpcServer(models)
    clients = {}

    def client(name, **kwargs):
        key = (name, tuple(sorted(kwargs.items())))
        if key not in clients:
            clients[key] = ServingClient("127.0.0.1", rest.port, grpc_server.port, name, **kwargs)
        return clients[key]

    yield {"models": models, "bases": bases, "client": client, "rest": rest, "grpc": grpc_server}
    for c in clients.values():
        c.close()
    grpc_server.close()
    rest.close()


def _direct(served, model, signature, inputs):
    """The loaded SavedModel's signature called directly, with the declared dtypes."""
    _, _, function = served["models"].signature(model, None, signature)
    specs = function.structured_input_signature[1]
    typed = typed_inputs(signature, inputs)
    outputs = function(**{name: tf.constant(typed[name], specs[name].dtype) for name in specs})
    return {name: value.numpy() for name, value in outputs.items()}


def _assert_same(actual, expected, check_dtype=True):
    assert sorted(actual) == sorted(expected)
    for name in expected:
        a, e = np.asarray(actual[name]), np.asarray(expected[name])
        assert a.shape == e.shape, name
        if check_dtype:
            assert a.dtype == e.dtype, (name, a.dtype, e.dtype)
        if e.dtype.kind == "f":
            np.testing.assert_allclose(a, e, rtol=0, atol=1e-5, err_msg=name)
        else:
            assert a.tolist() == e.tolist(), name


def test_signature_table_matches_the_exports(served):
    """The client's dtypes are the ones the exported signatures declare."""
    seen = set()
    for model in ("tflm", "bert", "classifier"):
        for name, function in served["models"].models[model][1].signatures.items():
            if name == "serving_default":
                continue
            seen.add(name)
            inputs, outputs = SIGNATURES[name]
            specs = function.structured_input_signature[1]
            assert {k: (s.dtype.name, s.shape.rank) for k, s in specs.items()} == inputs
            assert {k: s.dtype.name for k, s in function.structured_outputs.items()} == outputs
    assert seen == set(SIGNATURES)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_client_returns_what_the_signature_returns(served, case, protocol):
    model, signature, inputs = CASES[case]
    expected = _direct(served, model, signature, inputs)
    actual = served["client"](model).predict(signature, inputs, protocol)
    # Over REST, JSON has no dtypes: the client knows those of tflm signatures only.
    _assert_same(actual, expected, check_dtype=protocol == "grpc" or signature in SIGNATURES)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_convenience_methods(served, protocol):
    lm, bert, classifier = (served["client"](m) for m in ("tflm", "bert", "classifier"))

    texts = lm.generate(PROMPTS, max_new_tokens=6, protocol=protocol)
    expected = _direct(served, *CASES["generate"])
    assert [t["text"] for t in texts] == [t.decode("utf-8") for t in expected["text"]]
    assert [t["num_tokens"] for t in texts] == expected["num_tokens"].tolist()
    assert [t["prompt_truncated"] for t in texts] == [False, False, True, False]
    # One string is one prompt, not a list of characters.
    assert lm.generate(PROMPTS[0], max_new_tokens=6, protocol=protocol) == texts[:1]

    beams = lm.beam_search(PROMPTS, max_new_tokens=5, length_penalty=0.6, protocol=protocol)
    expected = _direct(served, *CASES["beam_search"])
    assert [t["text"] for t in beams] == [t.decode("utf-8") for t in expected["text"]]

    scores = lm.score(PROMPTS, protocol=protocol)
    expected = _direct(served, *CASES["score"])
    np.testing.assert_allclose([s["log_likelihood"] for s in scores], expected["log_likelihood"],
                               atol=1e-5, rtol=0)
    np.testing.assert_allclose([s["perplexity"] for s in scores], expected["perplexity"],
                               rtol=1e-5)
    assert [s["truncated"] for s in scores] == [False, False, True, False]

    masks = bert.fill_mask(CASES["fill_mask"][2]["text"], top_k=4, protocol=protocol)
    expected = _direct(served, *CASES["fill_mask"])
    assert [m["has_mask"] for m in masks] == [True, False, True]
    for row, tokens, probabilities in zip(masks, expected["tokens"], expected["scores"]):
        assert [t for t, _ in row["candidates"]] == [t.decode("utf-8") for t in tokens]
        np.testing.assert_allclose([p for _, p in row["candidates"]], probabilities, atol=1e-5)

    encoded = bert.encode(CASES["encode"][2]["text"], protocol=protocol)
    expected = _direct(served, *CASES["encode"])
    for i, row in enumerate(encoded):
        length = int(expected["padding_mask"][i].sum())
        assert row["sequence_output"].shape == (length, 16)
        np.testing.assert_allclose(row["sequence_output"], expected["sequence_output"][i, :length],
                                   atol=1e-5)
        np.testing.assert_allclose(row["pooled_output"], expected["pooled_output"][i], atol=1e-5)
    assert [r["truncated"] for r in encoded] == [False, False, True]
    assert [len(r["sequence_output"]) for r in encoded] == [11, 2, 32]  # [CLS] text [SEP]

    labels = classifier.classify(CASES["classify"][2]["text"], protocol=protocol)
    expected = _direct(served, *CASES["classify"])
    assert [r["label"] for r in labels] == [LABELS[i] for i in expected["label_id"]]
    np.testing.assert_allclose([r["probabilities"] for r in labels], expected["probabilities"],
                               atol=1e-5)


def test_rest_request_body_is_columnar_with_json_types():
    body = rest_request_body("generate", {
        "prompts": ["It is", "héllo", b"\xff raw"], "max_new_tokens": 4, "temperature": 0.7,
        "top_k": np.int64(5), "top_p": np.float32(0.9), "seed": 12345678901})
    assert body == {"signature_name": "generate", "inputs": {
        "prompts": ["It is", "héllo", {"b64": "/yByYXc="}],  # not UTF-8: base64 (TF Serving's)
        "max_new_tokens": 4, "temperature": 0.7, "top_k": 5, "top_p": 0.9,
        "seed": 12345678901}}
    inputs = body["inputs"]
    # TF Serving rejects a fractional JSON number for an int32/int64 input: ints stay ints.
    assert all(type(inputs[k]) is int for k in ("max_new_tokens", "top_k", "seed"))
    assert all(type(inputs[k]) is float for k in ("temperature", "top_p"))
    # float32 values go as their shortest decimal, which parses back to the same float32.
    assert np.float32(json.loads(json.dumps(inputs["top_p"]))) == np.float32(0.9)
    text = json.dumps(body)
    assert '"max_new_tokens": 4,' in text and '"temperature": 0.7,' in text

    assert rest_request_body("fill_mask", {"text": ["a [MASK]"], "top_k": 3}) == {
        "signature_name": "fill_mask", "inputs": {"text": ["a [MASK]"], "top_k": 3}}


def test_grpc_request_has_the_declared_dtypes_and_shapes():
    request = grpc_request("generate", {
        "prompts": ["It is", "héllo"], "max_new_tokens": 4, "temperature": 0, "top_k": 5,
        "top_p": 0.9, "seed": 3}, model_name="gpt", version=2)
    assert request.model_spec.name == "gpt"
    assert request.model_spec.signature_name == "generate"
    assert request.model_spec.version.value == 2
    expected = {"prompts": (tf.string, [2]), "max_new_tokens": (tf.int32, []),
                "temperature": (tf.float32, []), "top_k": (tf.int32, []),
                "top_p": (tf.float32, []), "seed": (tf.int64, [])}
    assert set(request.inputs) == set(expected)
    for name, (dtype, shape) in expected.items():
        proto = request.inputs[name]
        assert proto.dtype == dtype.as_datatype_enum, name
        assert [d.size for d in proto.tensor_shape.dim] == shape, name
    assert tf.make_ndarray(request.inputs["prompts"]).tolist() == [b"It is", "héllo".encode()]
    assert tf.make_ndarray(request.inputs["seed"]) == 3
    assert tf.make_ndarray(request.inputs["top_p"]) == np.float32(0.9)
    assert not grpc_request("score", {"text": ["a"]}).model_spec.HasField("version")


@pytest.mark.parametrize("inputs, error, match", [
    ({"prompts": ["a"], "max_new_tokens": 4}, ValueError, r"missing \['seed', 'temperature'"),
    ({"prompts": "a", "max_new_tokens": 4, "temperature": 0.0, "top_k": 0, "top_p": 1.0,
      "seed": 0}, ValueError, "'prompts' of 'generate' must be a list"),
    ({"prompts": ["a"], "max_new_tokens": 4, "temperature": 0.0, "top_k": 2.5, "top_p": 1.0,
      "seed": 0}, TypeError, "'top_k' must be an integer"),
    ({"prompts": ["a"], "max_new_tokens": 4, "temperature": "hot", "top_k": 0, "top_p": 1.0,
      "seed": 0}, TypeError, "'temperature' must be float32"),
    ({"prompts": ["a"], "max_new_tokens": 4, "temperature": 0.0, "top_k": 0, "top_p": 1.0,
      "seed": 2**70}, ValueError, "'seed' is outside the int64 range"),
    ({"prompts": ["a"], "max_new_tokens": 4, "temperature": 0.0, "top_k": 0, "top_p": 1.0,
      "seed": 0, "top_q": 1}, ValueError, r"unknown \['top_q'\]"),
])
def test_client_refuses_inputs_that_do_not_fit_the_signature(inputs, error, match):
    with pytest.raises(error, match=match):
        rest_request_body("generate", inputs)
    with pytest.raises(error, match=match):
        grpc_request("generate", inputs)


GENERATE = CASES["generate"][2]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model, signature, inputs, parameter, rule", [
    ("tflm", "generate", {**GENERATE, "top_p": 2.0}, "top_p", "(0, 1]"),
    ("tflm", "generate", {**GENERATE, "max_new_tokens": 0}, "max_new_tokens", "at least 1"),
    ("tflm", "generate", {**GENERATE, "max_new_tokens": -1}, "max_new_tokens", "at least 1"),
    ("tflm", "generate", {**GENERATE, "temperature": -1.0}, "temperature", ">= 0"),
    ("tflm", "generate", {**GENERATE, "top_k": -1}, "top_k", ">= 0"),
    ("tflm", "beam_search", {"prompts": ["a"], "max_new_tokens": 4, "length_penalty": -1.0},
     "length_penalty", ">= 0"),
    ("bert", "fill_mask", {"text": ["a [MASK]"], "top_k": 0}, "top_k", "at least 1"),
])
def test_out_of_range_parameters_come_back_as_clear_errors(served, protocol, model, signature,
                                                           inputs, parameter, rule):
    with pytest.raises(ServingError) as caught:
        served["client"](model).predict(signature, inputs, protocol)
    error = caught.value
    # The model's own message, first in what the user reads: "top_p: 2; must be in (0, 1]".
    assert error.reason.startswith(f"{parameter}: "), error.details
    assert rule in error.reason, error.details
    assert str(error).splitlines()[0].endswith(error.reason)
    assert error.status == (400 if protocol == "rest" else "INVALID_ARGUMENT")
    assert "Graph execution error" not in error.details  # the server's text, as TF Serving's


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unknown_model_version_and_signature(served, protocol):
    client = served["client"]
    with pytest.raises(ServingError, match="Servable not found") as caught:
        client("gpt-9").predict("score", {"text": ["a"]}, protocol)
    assert caught.value.status == (404 if protocol == "rest" else "NOT_FOUND")
    with pytest.raises(ServingError, match=r"Specific\(tflm, 2\)"):
        client("tflm", version=2).predict("score", {"text": ["a"]}, protocol)
    with pytest.raises(ServingError, match='"encode" not found in signature def') as caught:
        client("tflm").predict("encode", {"text": ["a"]}, protocol)
    assert caught.value.status == (400 if protocol == "rest" else "INVALID_ARGUMENT")
    # An explicit version goes in the URL (REST) or the ModelSpec (gRPC).
    pinned = client("tflm", version=1).score(["a b"], protocol=protocol)
    assert pinned == client("tflm").score(["a b"], protocol=protocol)


def test_model_status(served):
    assert served["client"]("tflm").wait_until_available(timeout=5) == [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]
    with pytest.raises(ServingError, match="Could not find any versions of model nope"):
        served["client"]("nope").model_status()


def test_adapters_follow_tf_serving_on_dtypes(served):
    """What the client's casts are for: TF Serving's own checks, as the adapters apply them."""
    # gRPC: the TensorProto dtype must be the declared one (seed is int64).
    request = grpc_request("generate", GENERATE, model_name="tflm")
    request.inputs["seed"].CopyFrom(tf.make_tensor_proto(0))  # int32
    with grpc.insecure_channel(f"127.0.0.1:{served['grpc'].port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "to be int64 but int32 is provided" in caught.value.details()
    # REST: JSON has no dtypes, but an int input refuses a fractional number.
    body = rest_request_body("generate", GENERATE)
    body["inputs"]["max_new_tokens"] = 4.5
    url = f"http://127.0.0.1:{served['rest'].port}/v1/models/tflm:predict"
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(urllib.request.Request(url, json.dumps(body).encode()), timeout=30)
    assert caught.value.code == 400
    assert "is not of expected type: int32" in json.loads(caught.value.read())["error"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_single_output_and_bytes_outputs(served, protocol):
    toy = served["client"]("toy")
    upper = toy.predict("upper", {"text": ["abc", "é"]}, protocol)
    if protocol == "rest":  # TF Serving answers a single output without its name
        assert upper.tolist() == [b"ABC", "é".encode()]
    else:
        assert upper["upper"].tolist() == [b"ABC", "é".encode()]
    raw = toy.predict("raw", {"text": ["abc", b"\x80"]}, protocol)
    assert raw["raw_bytes"].tolist() == [b"abc\xff\xfe", b"\x80\xff\xfe"]  # base64 over REST
    assert raw["length"].tolist() == [3, 1]


def test_warmup_requests_replay_through_grpc(served):
    """Each export's assets.extra/tf_serving_warmup_requests: PredictionLog records, one per
    signature, that run against the model and answer what a direct call does."""
    with grpc.insecure_channel(f"127.0.0.1:{served['grpc'].port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for kind, model in (("causal", "tflm"), ("masked", "bert"), ("classifier", "classifier")):
            path = os.path.join(served["bases"][kind], "1", "assets.extra",
                                "tf_serving_warmup_requests")
            records = [r.numpy() for r in tf.data.TFRecordDataset(path)]
            signatures = served["models"].models[model][1].signatures
            assert 0 < len(records) <= 1000  # TF Serving reads at most 1000
            replayed = set()
            for record in records:
                log = prediction_log_pb2.PredictionLog.FromString(record)
                assert log.WhichOneof("log_type") == "predict_log"
                request = log.predict_log.request
                # TF Serving applies warmup records to the model being loaded, whatever the name.
                request.model_spec.name = model
                response = stub.Predict(request, timeout=60)
                signature = request.model_spec.signature_name
                inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
                expected = signatures[signature](**inputs)
                _assert_same({k: tf.make_ndarray(v) for k, v in response.outputs.items()},
                             {k: v.numpy() for k, v in expected.items()})
                replayed.add(signature)
            assert replayed == set(signatures) - {"serving_default"}


def test_servers_shut_down_and_the_client_says_it_cannot_connect(served):
    rest, grpc_server = RestServer(served["models"]), GrpcServer(served["models"])
    with ServingClient("127.0.0.1", rest.port, grpc_server.port, "classifier", timeout=5) as client:
        assert client.classify("ok")[0]["label"] in LABELS
        assert client.classify("ok", protocol="grpc")[0]["label"] in LABELS
        rest.close()
        grpc_server.close()
        with pytest.raises(ServingError, match="cannot reach the REST API") as caught:
            client.classify("ok")
        assert caught.value.status is None
        with pytest.raises(ServingError, match="cannot reach the gRPC API") as caught:
            client.classify("ok", protocol="grpc")
        assert caught.value.status == "UNAVAILABLE"


def _readme_serving(repo_root):
    return (repo_root / "README.md").read_text().split("\n## Serving\n", 1)[1].split("\n## ", 1)[0]


def test_readme_curl_request_and_python_client_run(served, repo_root, capsys):
    """The README's REST body, as curl sends it, and its Python two-liner work against the model."""
    section = _readme_serving(repo_root)
    (body,) = re.findall(r"curl .*:predict -d '(\{.*\})'", section)
    url = f"http://127.0.0.1:{served['rest'].port}/v1/models/tflm:predict"
    with urllib.request.urlopen(urllib.request.Request(url, body.encode()), timeout=60) as answer:
        outputs = json.loads(answer.read())["outputs"]
    assert sorted(outputs) == ["num_tokens", "prompt_truncated", "text"]
    assert len(outputs["text"]) == 1 and 1 <= outputs["num_tokens"][0] <= 20
    assert set(json.loads(body)["inputs"]) == set(SIGNATURES["generate"][0])

    (code,) = re.findall(r"```python\n(.*?)\n```", section, flags=re.S)
    assert 'ServingClient("localhost")' in code
    # The model answers "tflm"; the README's client asks for "tflm" by default.
    exec(code.replace('ServingClient("localhost")',  # noqa: S102 - the README's own snippet
                      f'ServingClient("127.0.0.1", {served["rest"].port}, {served["grpc"].port})'),
         {})
    printed = capsys.readouterr().out
    assert printed.endswith("\n") and len(printed.splitlines()) >= 1


def test_models_config_is_a_model_server_config(repo_root):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    text = (repo_root / "configs" / "serving" / "models.config").read_text()
    config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == ("tflm", "/models/tflm",
                                                                   "tensorflow")
    assert model.model_version_policy.WhichOneof("policy_choice") == "latest"
    assert model.model_version_policy.latest.num_versions == 1
    # The commands in its comment and in the README mount the export where base_path points.
    assert "target=/models/tflm" in text and "--model_config_file=/models/models.config" in text
    assert "--model_config_file=/models/models.config" in _readme_serving(repo_root)
