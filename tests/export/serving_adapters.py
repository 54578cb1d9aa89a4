"""In-test stand-ins for TF Serving: its REST and gRPC APIs over the real wire.

No TF Serving binary (or Docker engine) is available to the tests, so these
servers load the exported SavedModels with `tf.saved_model.load` and speak
TF Serving's protocols on top of them, following its sources
(tensorflow_serving/util/json_tensor.cc, model_servers/http_rest_api_handler.cc,
servables/tensorflow/predict_util.cc):

- REST: `POST /v1/models/<name>[/versions/<v>]:predict` with the columnar
  format `{"signature_name", "inputs": {name: value}}` (a bare value when the
  signature has one input); each JSON value becomes a tensor of the dtype the
  signature declares, its shape from the nesting (a bare number is a scalar);
  an integer input rejects a fractional number; strings are UTF-8 or
  `{"b64": ...}`; inputs not in the signature are ignored. The answer is
  `{"outputs": {name: value}}`, or the bare value for a single output;
  strings go out as they are (raw bytes: TF Serving does not check UTF-8),
  `*_bytes` outputs as `{"b64": ...}`, float32 as its shortest decimal.
  Errors: `{"error": message}` with TF Serving's HTTP status for the code
  (400 for INVALID_ARGUMENT, 404 for NOT_FOUND, ...).
  `GET /v1/models/<name>[/versions/<v>]` gives the version status.
- gRPC: `tensorflow.serving.PredictionService/Predict`; the TensorProto
  dtypes must match the signature exactly; errors are the TF status code
  with its message (INVALID_ARGUMENT for a failed input check).

One stricter check than TF Serving: an input whose shape does not fit the
signature's (a scalar where a batch is declared) is refused up front, where
the real server would feed it and fail somewhere inside the graph.

Models are served like TF Serving's default version policy: the highest
numeric version folder under each base path.

Also here: `tiny_models()` and `tiny_seq2seq()`, the tiny tflm models the export tests
use, and `shared_tiny_exports()` and `shared_seq2seq_export()`, their exports made once per
test run.
"""

import base64
import http.server
import json
import os
import re
import shutil
import threading
from concurrent import futures

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

# TF Serving's HTTP status for each error code (http_rest_api_handler / ToHTTPStatusCode).
HTTP_STATUS = {
    "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501, "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}

_MAX_MESSAGE_BYTES = 256 * 1024 * 1024


class ServingAdapterError(Exception):
    """A request failed: `code` is the TF/gRPC status code name, `message` the text."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def _op_error_message(error):
    """A TF op error as the C++ session reports it, without the eager-Python preamble
    ("Graph execution error: Detected at node ... <stack traces unavailable>") and suffix."""
    text = error.message
    if text.startswith("Graph execution error:"):
        lines = text.split("\n")
        if "<stack traces unavailable>" in lines:
            lines = lines[lines.index("<stack traces unavailable>") + 1:]
        else:
            lines = [line for line in lines[1:]
                     if line and not line.startswith(("Detected at node", "  "))]
        text = "\n".join(lines)
    return re.sub(r"\s*\[Op:[^\]]*\]\s*$", "", text).strip()


class ServedModels:
    """The latest version of each model, loaded: `{name: base_path}` like a models.config."""

    def __init__(self, base_paths):
        self.models = {}
        for name, base in base_paths.items():
            versions = sorted(int(d) for d in os.listdir(base) if d.isdigit())
            if not versions:
                raise ValueError(f"{base}: no numeric version folder to serve.")
            latest = versions[-1]
            self.models[name] = {latest: tf.saved_model.load(os.path.join(base, str(latest)))}

    def status(self, name, version=None):
        if name not in self.models:
            raise ServingAdapterError("NOT_FOUND", f"Could not find any versions of model {name}")
        if version is not None and version not in self.models[name]:
            raise ServingAdapterError("NOT_FOUND",
                                      f"Could not find version {version} of model {name}")
        return [{"version": str(v), "state": "AVAILABLE",
                 "status": {"error_code": "OK", "error_message": ""}}
                for v in sorted(self.models[name], reverse=True)]

    def signature(self, name, version, signature):
        """`(version, signature name, concrete function)` a request asks for (the latest version
        and serving_default when it names none); NOT_FOUND / INVALID_ARGUMENT otherwise."""
        versions = self.models.get(name)
        if versions is None or (version is not None and version not in versions):
            spec = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
            raise ServingAdapterError("NOT_FOUND", f"Servable not found for request: {spec}")
        version = max(versions) if version is None else version
        signature = signature or "serving_default"
        signatures = versions[version].signatures
        if signature not in signatures:
            raise ServingAdapterError(
                "INVALID_ARGUMENT",
                f'Serving signature name: "{signature}" not found in signature def')
        return version, signature, signatures[signature]

    @staticmethod
    def input_specs(function):
        return function.structured_input_signature[1]

    @staticmethod
    def run(function, arrays):
        """Calls the signature with NumPy inputs already of its dtypes; NumPy outputs."""
        specs = ServedModels.input_specs(function)
        sent, expected = set(arrays), set(specs)
        if sent != expected:
            raise ServingAdapterError(
                "INVALID_ARGUMENT",
                f"input size does not match signature: {len(sent)}!={len(expected)} "
                f"len({{{', '.join(sorted(sent))}}}) != len({{{', '.join(sorted(expected))}}}). "
                f"Sent extra: {{{', '.join(sorted(sent - expected))}}}. "
                f"Missing but required: {{{', '.join(sorted(expected - sent))}}}.")
        for name, spec in specs.items():
            if not spec.shape.is_compatible_with(arrays[name].shape):
                raise ServingAdapterError(
                    "INVALID_ARGUMENT",
                    f"input {name!r} has shape {list(arrays[name].shape)}, the signature "
                    f"declares {spec.shape}")
        try:
            outputs = function(**{name: tf.constant(arrays[name], specs[name].dtype)
                                  for name in specs})
        except tf.errors.OpError as error:
            raise ServingAdapterError(_CODE_NAMES.get(error.error_code, "UNKNOWN"),
                                      _op_error_message(error)) from None
        return {name: value.numpy() for name, value in outputs.items()}


# TF status codes are gRPC's: number -> name.
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


# -- REST -------------------------------------------------------------------------------------

def _json_to_array(value, dtype, name):
    """One columnar JSON input -> NumPy array of `dtype` (json_tensor.cc FillTensorProto)."""
    def shape_of(v):
        return [len(v)] + (shape_of(v[0]) if v else []) if isinstance(v, list) else []

    shape = shape_of(value)
    leaves = []

    def walk(v, level):
        if isinstance(v, list):
            if level >= len(shape):
                raise ServingAdapterError("INVALID_ARGUMENT", f"Encountered list at unexpected "
                                          f"level: {level} expected < {len(shape)}")
            if len(v) != shape[level]:
                raise ServingAdapterError("INVALID_ARGUMENT", f"Encountered list at unexpected "
                                          f"size: {len(v)} at level: {level} expected size: "
                                          f"{shape[level]}")
            for item in v:
                walk(item, level + 1)
            return
        if level != len(shape):
            raise ServingAdapterError("INVALID_ARGUMENT", f"JSON Value: {json.dumps(v)} found "
                                      f"at incorrect level: {level + 1} in the JSON DOM. "
                                      f"Expected at level: {len(shape)}")
        leaves.append(_json_leaf(v, dtype))

    walk(value, 0)
    array = np.empty(len(leaves), dtype=object if dtype == tf.string else dtype.as_numpy_dtype)
    array[:] = leaves
    return array.reshape(shape)


def _type_error(value, dtype):
    kind = {dict: "Object", list: "Array", str: "String", bool: "True" if value else "False",
            type(None): "Null"}.get(type(value), "Number")
    return ServingAdapterError("INVALID_ARGUMENT", f"JSON Value: {json.dumps(value)} Type: "
                               f"{kind} is not of expected type: {dtype.name}")


def _json_leaf(value, dtype):
    if dtype == tf.string:
        if isinstance(value, str):
            return value.encode("utf-8", "surrogateescape")
        if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except ValueError:
                raise ServingAdapterError("INVALID_ARGUMENT", "Unable to base64 decode") from None
        raise _type_error(value, dtype)
    if dtype == tf.bool:
        if isinstance(value, bool):
            return value
        raise _type_error(value, dtype)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _type_error(value, dtype)
    if dtype.is_integer:
        if not isinstance(value, int) or not dtype.min <= value <= dtype.max:
            raise _type_error(value, dtype)
        return value
    if dtype.is_floating:
        if dtype == tf.float32 and np.isfinite(value) and abs(value) > np.finfo(np.float32).max:
            raise ServingAdapterError("INVALID_ARGUMENT", f"Cannot convert JSON value: {value} "
                                      "to float without loss of precision.")
        return value
    raise ServingAdapterError("UNIMPLEMENTED", f"Conversion of JSON Value: {json.dumps(value)} "
                              f"to type: {dtype.name}")


def _array_to_json(name, array):
    """One output tensor -> JSON-ready value (json_tensor.cc AddTensorValues)."""
    if array.dtype == object:
        if name.endswith("_bytes"):
            def leaf(raw):
                return {"b64": base64.b64encode(raw).decode("ascii")}
        else:
            def leaf(raw):  # raw bytes, as TF Serving writes them (UTF-8 or not)
                return raw.decode("utf-8", "surrogateescape")
    elif array.dtype == np.float32:
        def leaf(value):
            return float(str(np.float32(value)))
    else:
        def leaf(value):
            return value

    def convert(value):
        return [convert(item) for item in value] if isinstance(value, list) else leaf(value)

    return convert(array.tolist())


_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?"
                   r"(?P<verb>:predict)?$")


class _Handler(http.server.BaseHTTPRequestHandler):
    models = None  # set per server

    def log_message(self, format, *args):  # noqa: A002 - quiet test output
        del format, args

    def _send(self, status, body):
        payload = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogateescape")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _route(self, method):
        match = _PATH.match(self.path)
        if match is None or (method == "POST") != bool(match["verb"]):
            self._send(404, {"error": f"Malformed request: {method} {self.path}"})
            return None
        return match["name"], None if match["version"] is None else int(match["version"])

    def do_GET(self):  # noqa: N802 - http.server's name
        route = self._route("GET")
        if route is None:
            return
        try:
            self._send(200, {"model_version_status": self.models.status(*route)})
        except ServingAdapterError as error:
            self._send(HTTP_STATUS[error.code], {"error": error.message})

    def do_POST(self):  # noqa: N802
        route = self._route("POST")
        if route is None:
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            self._send(200, self._predict(*route, body))
        except ServingAdapterError as error:
            self._send(HTTP_STATUS[error.code], {"error": error.message})

    def _predict(self, name, version, body):
        try:
            request = json.loads(body.decode("utf-8"))
        except ValueError as error:
            raise ServingAdapterError("INVALID_ARGUMENT", f"JSON Parse error: {error}") from None
        if not isinstance(request, dict):
            raise ServingAdapterError("INVALID_ARGUMENT", "JSON Value: Is not object")
        signature = request.get("signature_name", "")
        if not isinstance(signature, str):
            raise ServingAdapterError("INVALID_ARGUMENT", "'signature_name' key must be a "
                                      "string value.")
        _, _, function = self.models.signature(name, version, signature)
        specs = ServedModels.input_specs(function)
        if "instances" in request:
            raise ServingAdapterError("UNIMPLEMENTED", "this adapter speaks the columnar "
                                      "format ('inputs') only")
        if "inputs" not in request:
            raise ServingAdapterError("INVALID_ARGUMENT", "Missing 'inputs' or 'instances' key")
        inputs = request["inputs"]
        arrays = {}
        if not isinstance(inputs, dict) or set(inputs) == {"b64"}:
            if len(specs) > 1:
                raise ServingAdapterError(
                    "INVALID_ARGUMENT", "inputs is a plain value/list, but expecting an object "
                    "as multiple input tensors required as per tensorinfo_map")
            (only, spec), = specs.items()
            arrays[only] = _json_to_array(inputs, spec.dtype, only)
        else:
            for input_name, spec in specs.items():
                if input_name not in inputs:
                    raise ServingAdapterError("INVALID_ARGUMENT", f"Missing named input: "
                                              f"{input_name} in 'inputs' object.")
                arrays[input_name] = _json_to_array(inputs[input_name], spec.dtype, input_name)
        outputs = ServedModels.run(function, arrays)
        if len(outputs) == 1:
            (output_name, value), = outputs.items()
            return {"outputs": _array_to_json(output_name, value)}
        return {"outputs": {n: _array_to_json(n, v) for n, v in sorted(outputs.items())}}


class RestServer:
    """TF Serving's REST API on 127.0.0.1:`port` (a free port) for `models` (`ServedModels`)."""

    def __init__(self, models):
        handler = type("Handler", (_Handler,), {"models": models})
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def close(self):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


# -- gRPC -------------------------------------------------------------------------------------

class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, models):
        self.models = models

    def Predict(self, request, context):  # noqa: N802 - the gRPC method name
        try:
            return self._predict(request)
        except ServingAdapterError as error:
            context.abort(getattr(grpc.StatusCode, error.code), error.message)

    def _predict(self, request):
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        version, signature, function = self.models.signature(spec.name, version,
                                                             spec.signature_name)
        specs = ServedModels.input_specs(function)
        arrays = {}
        for index, (name, proto) in enumerate(sorted(request.inputs.items())):
            expected = specs.get(name)
            if expected is not None and proto.dtype != expected.dtype.as_datatype_enum:
                raise ServingAdapterError(
                    "INVALID_ARGUMENT",
                    f"Expects arg[{index}] to be {expected.dtype.name} but "
                    f"{tf.dtypes.as_dtype(proto.dtype).name} is provided")
            arrays[name] = tf.make_ndarray(proto)
        outputs = ServedModels.run(function, arrays)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = version
        response.model_spec.signature_name = signature
        for name, value in outputs.items():
            response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
        return response


class GrpcServer:
    """TF Serving's gRPC PredictionService on 127.0.0.1:`port` (a free port)."""

    def __init__(self, models):
        options = [("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES)]
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=options)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            _PredictionService(models), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    def close(self):
        self._server.stop(grace=None).wait(timeout=10)


# -- tiny models ------------------------------------------------------------------------------

LABELS = ("negative", "neutral", "positive")
KINDS = ("causal", "masked", "classifier", "wordpiece")

# A WordPiece vocabulary for a classifier whose graph holds tensorflow-text ops
# (FastWordpieceTokenizeWithOffsets, NormalizeUTF8): what only a server with tf-text can load.
WORDPIECE_VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "!", "?", "the",
                    "truth", "happy", "mr", "darcy", "##ing"]
                   + [chr(c) for c in range(ord("a"), ord("z") + 1)]
                   + ["##" + chr(c) for c in range(ord("a"), ord("z") + 1)])


def tiny_tokenizers():
    """`{kind: tokenizer}`: bytes for all but "wordpiece"."""
    from tflm.data import ByteTokenizer
    from tflm.data.wordpiece import WordPieceTokenizer

    return {kind: WordPieceTokenizer(WORDPIECE_VOCAB) if kind == "wordpiece" else ByteTokenizer()
            for kind in KINDS}


def tiny_models(seed=0):
    """`{"causal": CausalLM, "masked": MaskedLM, "classifier": SequenceClassifier,
    "wordpiece": SequenceClassifier}`: one layer, hidden 16, 32 positions, no dropout; byte-level
    but the last (`WORDPIECE_VOCAB`); the same weights for the same seed."""
    import keras

    from tflm.models import CausalLM, MaskedLM, SequenceClassifier, TransformerBackbone

    def backbone(vocabulary_size=262, **kwargs):
        return TransformerBackbone(vocabulary_size=vocabulary_size, num_layers=1, num_heads=2,
                                   hidden_dim=16, intermediate_dim=32, max_sequence_length=32,
                                   dropout=0, **kwargs)

    keras.utils.set_random_seed(seed)
    return {
        "causal": CausalLM(backbone(causal=True, norm_first=True)),
        "masked": MaskedLM(backbone(pooler=True, num_segments=2)),
        "classifier": SequenceClassifier(backbone(pooler=True, num_segments=2), len(LABELS),
                                         dropout=0),
        "wordpiece": SequenceClassifier(backbone(len(WORDPIECE_VOCAB), pooler=True,
                                                 num_segments=2), len(LABELS), dropout=0),
    }


def export_tiny_models(directory, seed=0):
    """Exports `tiny_models(seed)` under `directory/<kind>/1`, with each model's weights in
    `directory/<kind>.npz`; returns `{kind: export base path}`."""
    from tflm.experiment import export_saved_model

    bases = {}
    tokenizers = tiny_tokenizers()
    for kind, model in tiny_models(seed).items():
        bases[kind] = os.path.join(str(directory), kind)
        labels = list(LABELS) if kind in ("classifier", "wordpiece") else None
        export_saved_model(model, tokenizers[kind], bases[kind], label_names=labels)
        np.savez(os.path.join(str(directory), f"{kind}.npz"), *model.get_weights())
    return bases


def load_tiny_models(directory):
    """The Python models whose exports `export_tiny_models(directory)` wrote."""
    models = tiny_models()
    for kind, model in models.items():
        with np.load(os.path.join(str(directory), f"{kind}.npz")) as saved:
            model.set_weights([saved[f"arr_{i}"] for i in range(len(saved.files))])
    return models


def tiny_seq2seq(seed=0):
    """A byte-level `Seq2SeqLM` as tiny as `tiny_models`' (one layer each side, hidden 16, 32
    positions, no dropout; an untied output projection, whose random weights greedy-decode
    varied bytes, where tied ones repeat the start token); the same weights for the same seed."""
    import keras

    from tflm.models import Seq2SeqBackbone, Seq2SeqLM

    keras.utils.set_random_seed(seed)
    return Seq2SeqLM(Seq2SeqBackbone(vocabulary_size=262, num_layers=1, num_heads=2,
                                     hidden_dim=16, intermediate_dim=32, max_sequence_length=32,
                                     norm_first=True, dropout=0, attention_dropout=0,
                                     tie_embeddings=False))


def shared_seq2seq_export(tmp_path_factory):
    """`(model, export base path)`: `tiny_seq2seq()` exported once per test run (its own
    folder: only the tests that serve it pay for it)."""
    from tflm.data import ByteTokenizer
    from tflm.experiment import export_saved_model

    def make(directory):
        model = tiny_seq2seq()
        export_saved_model(model, ByteTokenizer(), str(directory / "seq2seq"))
        np.savez(str(directory / "seq2seq.npz"), *model.get_weights())

    directory = shared_once(tmp_path_factory, "tiny_seq2seq_export", make)
    model = tiny_seq2seq()
    with np.load(str(directory / "seq2seq.npz")) as saved:
        model.set_weights([saved[f"arr_{i}"] for i in range(len(saved.files))])
    return model, str(directory / "seq2seq")


def shared_once(tmp_path_factory, name, make):
    """`make(directory)` once per test run, its folder shared by the pytest-xdist workers (the
    first to take the lock makes it, the others wait and reuse it); returns the folder."""
    import fcntl

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by all workers of this run
    directory = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (directory / ".done").exists():
                # A worker that failed half-way leaves a partial folder: start over.
                shutil.rmtree(directory, ignore_errors=True)
                directory.mkdir()
                make(directory)
                (directory / ".done").write_text("")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return directory


def shared_tiny_exports(tmp_path_factory):
    """`(directory, {kind: export base path})`: the tiny exports, made once per test run."""
    directory = shared_once(tmp_path_factory, "tiny_exports", export_tiny_models)
    return directory, {kind: str(directory / kind) for kind in KINDS}
