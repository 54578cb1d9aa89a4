"""A client for a tflm model served by TF Serving, over REST or gRPC.

    client = ServingClient("localhost")                  # REST 8501, gRPC 8500, model "tflm"
    client.generate(["It is a truth"], max_new_tokens=20)[0]["text"]
    client.generate(["It is a truth"], protocol="grpc")  # the same answer over gRPC
    client.predict_rest("score", {"text": ["Mr. Darcy"]})  # raw: {output: numpy array}

REST uses TF Serving's columnar request format,
`{"signature_name": ..., "inputs": {name: value}}`, because tflm signatures mix
a batch of strings with scalar parameters (the row format, `"instances"`,
needs every input batched). The answer is `{"outputs": {name: value}}`, or a
bare value when the signature has one output. JSON carries no dtypes: TF
Serving converts each input to the dtype the signature declares, and rejects
a fractional number for an integer input. Over gRPC the `TensorProto` dtype
must be exactly the declared one (`seed` is int64, `max_new_tokens` int32),
so the client converts every input of a known signature to its declared
dtype before building either request.

`rest_request_body` and `grpc_request` build the wire objects without
sending them. Out-of-range parameters are checked by the model, not here:
the server's error comes back as a `ServingError` whose `reason` is the
model's message (e.g. "top_p: 1.5; must be in (0, 1]").

Only the standard library speaks HTTP; the gRPC path needs
`tensorflow-serving-api` and `grpcio` (imported on first use).
"""

import base64
import json
import time
import types
import urllib.error
import urllib.request

import numpy as np

from tflm.errors import TflmError, assertion_message

# Inputs and outputs of the tflm signatures (tflm.export.serving), as declared
# in the SavedModel: input name -> (dtype, rank); output name -> dtype.
# `serving_default` is generate, fill_mask or classify depending on the model,
# so it is not listed: pass NumPy values of the right dtypes for it.
SIGNATURES = {
    "generate": (
        {"prompts": ("string", 1), "max_new_tokens": ("int32", 0), "temperature": ("float32", 0),
         "top_k": ("int32", 0), "top_p": ("float32", 0), "seed": ("int64", 0)},
        {"text": "string", "num_tokens": "int32", "prompt_truncated": "bool"},
    ),
    "generate_with_controls": (
        {"prompts": ("string", 1), "max_new_tokens": ("int32", 0), "temperature": ("float32", 0),
         "top_k": ("int32", 0), "top_p": ("float32", 0), "seed": ("int64", 0),
         "repetition_penalty": ("float32", 0), "no_repeat_ngram_size": ("int32", 0),
         "min_new_tokens": ("int32", 0), "stop_token_ids": ("int32", 1),
         "num_return_sequences": ("int32", 0), "stop_strings": ("string", 1)},
        {"text": "string", "num_tokens": "int32", "prompt_truncated": "bool", "stopped": "bool"},
    ),
    "beam_search": (
        {"prompts": ("string", 1), "max_new_tokens": ("int32", 0),
         "length_penalty": ("float32", 0)},
        {"text": "string", "num_tokens": "int32", "prompt_truncated": "bool"},
    ),
    "score": (
        {"text": ("string", 1)},
        {"log_likelihood": "float32", "perplexity": "float32", "num_tokens": "int32",
         "truncated": "bool"},
    ),
    "fill_mask": (
        {"text": ("string", 1), "top_k": ("int32", 0)},
        {"tokens": "string", "scores": "float32", "has_mask": "bool", "truncated": "bool"},
    ),
    "encode": (
        {"text": ("string", 1)},
        {"pooled_output": "float32", "sequence_output": "float32", "padding_mask": "int32",
         "truncated": "bool"},
    ),
    "classify": (
        {"text": ("string", 1)},
        {"label": "string", "label_id": "int32", "probabilities": "float32", "truncated": "bool"},
    ),
}

# An encoder-decoder's signatures (`Seq2SeqLMServing`) have the causal LM's names and read
# `sources`: `declared_signature` tells them apart by their inputs.
_GENERATED = {"text": "string", "num_tokens": "int32", "source_truncated": "bool"}
SEQ2SEQ_SIGNATURES = {
    "generate": (
        {"sources": ("string", 1), "max_new_tokens": ("int32", 0), "temperature": ("float32", 0),
         "top_k": ("int32", 0), "top_p": ("float32", 0), "seed": ("int64", 0),
         "repetition_penalty": ("float32", 0), "no_repeat_ngram_size": ("int32", 0),
         "min_new_tokens": ("int32", 0), "stop_token_ids": ("int32", 1),
         "num_return_sequences": ("int32", 0), "stop_strings": ("string", 1)},
        dict(_GENERATED, stopped="bool"),
    ),
    "beam_search": (
        {"sources": ("string", 1), "max_new_tokens": ("int32", 0),
         "length_penalty": ("float32", 0)},
        _GENERATED,
    ),
    "score": (
        {"sources": ("string", 1), "targets": ("string", 1)},
        {"log_likelihood": "float32", "perplexity": "float32", "num_tokens": "int32",
         "source_truncated": "bool", "target_truncated": "bool"},
    ),
}

PROTOCOLS = ("rest", "grpc")

# Messages up to 256 MiB (per-token embeddings of a large batch are big).
_MAX_MESSAGE_BYTES = 256 * 1024 * 1024


class ServingError(TflmError, RuntimeError):
    """The server refused or failed a request, or could not be reached.

    Attributes:
        protocol: "rest" or "grpc".
        status: the HTTP status (int) or gRPC status code name (str); None when
            the server was not reached.
        details: the server's full error text.
        reason: the model's own message when the error is a failed input check
            (the text between the brackets of "assertion failed: [...]"), else
            `details`.
    """

    def __init__(self, where, protocol, status, details):
        self.protocol = protocol
        self.status = status
        self.details = details
        reason = assertion_message(details)
        self.reason = details if reason is None else reason
        message = f"{where}: {self.reason}"
        if status is not None:
            message = f"{where}: {status}: {self.reason}"
        if self.reason != details:
            message += f"\n(server said: {details})"
        super().__init__(message)


def _numeric(name, value, dtype):
    array = np.asarray(value)
    if array.dtype == object and np.dtype(dtype).kind == "i" and all(
            isinstance(v, int) and not isinstance(v, bool) for v in array.reshape(-1)):
        raise ValueError(f"Input {name!r} is outside the {dtype} range: {value!r}.")
    if array.dtype == object or array.dtype.kind in "USb":
        raise TypeError(f"Input {name!r} must be {dtype}, got {value!r}.")
    if np.dtype(dtype).kind == "i":
        if array.dtype.kind == "b":
            raise TypeError(f"Input {name!r} must be an integer ({dtype}), got {value!r}.")
        if array.dtype.kind == "f":
            if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
                raise TypeError(f"Input {name!r} must be an integer ({dtype}), got {value!r}.")
        info = np.iinfo(dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise ValueError(f"Input {name!r} is outside the {dtype} range: {value!r}.")
    elif np.dtype(dtype).kind == "b" and array.dtype.kind != "b":
        raise TypeError(f"Input {name!r} must be a boolean, got {value!r}.")
    return array.astype(dtype)


def _strings(name, value):
    array = np.asarray(value, dtype=object)
    flat = []
    for item in array.reshape(-1):
        if isinstance(item, str):
            flat.append(item.encode("utf-8"))
        elif isinstance(item, (bytes, np.bytes_)):
            flat.append(bytes(item))
        else:
            raise TypeError(f"Input {name!r} must hold strings, got {item!r}.")
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(array.shape)


def declared_signature(signature, inputs):
    """The `(inputs, outputs)` declaration of a tflm signature called with `inputs`: an
    encoder-decoder's (`SEQ2SEQ_SIGNATURES`) when they name `sources`, else `SIGNATURES`';
    None for a signature tflm does not export."""
    if signature in SEQ2SEQ_SIGNATURES and "sources" in inputs:
        return SEQ2SEQ_SIGNATURES[signature]
    return SIGNATURES.get(signature)


def typed_inputs(signature, inputs):
    """`inputs` as NumPy arrays of the dtypes the signature declares.

    For a tflm signature (see `declared_signature`) every input must be present,
    of the declared rank, and convertible without loss: e.g. `top_k=5` becomes
    an int32 scalar, `seed=1` an int64 scalar, `prompts` an object array of
    UTF-8 bytes. For any other signature, NumPy values keep their dtype,
    strings become bytes, and Python numbers become what NumPy makes of them.

    Raises:
        ValueError / TypeError naming the input.
    """
    declaration = declared_signature(signature, inputs)
    if declaration is None:
        typed = {}
        for name, value in inputs.items():
            if not isinstance(value, np.ndarray):
                leaves = np.asarray(value, dtype=object).reshape(-1)
                texts = leaves.size and all(isinstance(v, (str, bytes)) for v in leaves)
                value = np.asarray(value, dtype=object) if texts else np.asarray(value)
            typed[name] = _strings(name, value) if value.dtype.kind in "OUS" else value
        return typed
    declared, _ = declaration
    missing = sorted(set(declared) - set(inputs))
    extra = sorted(set(inputs) - set(declared))
    if missing or extra:
        raise ValueError(
            f"Signature {signature!r} takes inputs {sorted(declared)}; "
            + (f"missing {missing}" if missing else "")
            + ("; " if missing and extra else "")
            + (f"unknown {extra}" if extra else "") + ".")
    typed = {}
    for name, (dtype, rank) in declared.items():
        value = inputs[name]
        ndim = np.asarray(value, dtype=object).ndim if dtype == "string" else np.ndim(value)
        if ndim != rank:
            kind = "a list of values" if rank == 1 else "a single value"
            raise ValueError(f"Input {name!r} of {signature!r} must be {kind} (rank {rank}), "
                             f"got rank {ndim}: {value!r}.")
        typed[name] = _strings(name, value) if dtype == "string" else _numeric(name, value, dtype)
    return typed


def _json_value(array):
    """A typed NumPy array as TF Serving's JSON: nested lists; strings as UTF-8 (else
    {"b64": ...}); float32 as its shortest round-trip decimal (0.6, not 0.6000000238418579)."""
    if array.dtype == object or array.dtype.kind == "S":
        def leaf(raw):
            try:
                return bytes(raw).decode("utf-8")
            except UnicodeDecodeError:
                return {"b64": base64.b64encode(bytes(raw)).decode("ascii")}
    elif array.dtype == np.float32:
        def leaf(value):
            return float(str(np.float32(value)))
    else:
        def leaf(value):
            return value

    def convert(value):
        return [convert(item) for item in value] if isinstance(value, list) else leaf(value)

    return convert(array.tolist())


def rest_request_body(signature, inputs):
    """The JSON request body (a dict) for TF Serving's REST `:predict`, columnar format."""
    typed = typed_inputs(signature, inputs)
    return {"signature_name": signature,
            "inputs": {name: _json_value(value) for name, value in typed.items()}}


def _grpc_apis():
    """grpc, TensorFlow and TF Serving's protos, loaded on the first gRPC call: a REST client
    needs none of them."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    return types.SimpleNamespace(grpc=grpc, tf=tf, predict_pb2=predict_pb2,
                                 prediction_service_pb2_grpc=prediction_service_pb2_grpc)


def grpc_request(signature, inputs, model_name="tflm", version=None):
    """The `tensorflow_serving.apis.predict_pb2.PredictRequest` for `signature`."""
    apis = _grpc_apis()
    tf = apis.tf
    request = apis.predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = int(version)
    for name, value in typed_inputs(signature, inputs).items():
        dtype = tf.string if value.dtype == object else tf.as_dtype(value.dtype)
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value, dtype=dtype, shape=value.shape))
    return request


def _string_item(item):
    if isinstance(item, dict) and set(item) == {"b64"}:
        return base64.b64decode(item["b64"])
    if isinstance(item, str):
        return item.encode("utf-8")
    raise ValueError(f"Expected a string in the response, got {item!r}.")


def _from_json(value, dtype=None):
    """A JSON output back to NumPy: strings as an object array of bytes, numbers as `dtype`."""
    if dtype == "string" or (dtype is None and _holds_strings(value)):
        array = np.array(value, dtype=object)
        out = np.empty(array.size, dtype=object)
        out[:] = [_string_item(item) for item in array.reshape(-1)]
        return out.reshape(array.shape)
    return np.asarray(value, dtype=dtype)


def _holds_strings(value):
    while isinstance(value, list) and value:
        value = value[0]
    return isinstance(value, (str, dict))


class ServingClient:
    """Calls a model served by TF Serving (or anything speaking its APIs).

    Args:
        host: the server's host name or address.
        rest_port: TF Serving's `--rest_api_port` (8501 in the docker image).
        grpc_port: TF Serving's `--port` (8500).
        model_name: the served model's name (`MODEL_NAME` / models.config `name`).
        version: a version number to ask for; None asks for the latest.
        timeout: seconds to wait for an answer.

    Convenience methods (`generate`, `beam_search`, `score`, `fill_mask`,
    `encode`, `classify`) take a list of strings (or one string) and return
    one dict of plain Python values per string; `protocol="grpc"` sends the
    same request over gRPC.
    """

    def __init__(self, host, rest_port=8501, grpc_port=8500, model_name="tflm", version=None,
                 timeout=60.0):
        self.host = host
        self.rest_port = int(rest_port)
        self.grpc_port = int(grpc_port)
        self.model_name = model_name
        self.version = None if version is None else int(version)
        self.timeout = timeout
        self._channel = None
        self._stub = None

    # -- REST ---------------------------------------------------------------------------------

    def _model_url(self):
        url = f"http://{self.host}:{self.rest_port}/v1/models/{self.model_name}"
        return url if self.version is None else f"{url}/versions/{self.version}"

    def _http(self, url, body=None):
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        where = f"{'POST' if data else 'GET'} {url}"
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as error:
            payload = error.read()
            try:
                details = json.loads(payload.decode("utf-8"))["error"]
            except (ValueError, KeyError, TypeError):
                details = payload.decode("utf-8", "replace") or error.reason
            raise ServingError(where, "rest", error.code, details) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            if isinstance(reason, TimeoutError):
                raise ServingError(where, "rest", None,
                                   f"no answer within {self.timeout} s ({reason})") from None
            raise ServingError(where, "rest", None,
                               f"cannot reach the REST API ({reason}); is the server running "
                               f"with its REST port {self.rest_port} published?") from None
        try:
            return json.loads(payload.decode("utf-8"))
        except ValueError as error:
            raise ServingError(where, "rest", 200,
                               f"the response is not UTF-8 JSON ({error}); a string output "
                               "holding raw bytes must be named *_bytes to come back base64-encoded"
                               ) from None

    def predict_rest(self, signature, inputs):
        """POSTs `:predict` with `rest_request_body`; returns {output name: NumPy array}
        (or one array when the signature has a single output)."""
        body = rest_request_body(signature, inputs)
        answer = self._http(self._model_url() + ":predict", body)
        if "outputs" not in answer:
            raise ServingError(self._model_url() + ":predict", "rest", 200,
                               f"the answer has no 'outputs': {str(answer)[:200]}")
        outputs = answer["outputs"]
        dtypes = (declared_signature(signature, inputs) or (None, {}))[1]
        # TF Serving drops the name when a signature has one output: a bare value (a list, a
        # number, a string or one {"b64": ...}) instead of {name: value}.
        if isinstance(outputs, dict) and set(outputs) != {"b64"}:
            return {name: _from_json(value, dtypes.get(name)) for name, value in outputs.items()}
        return _from_json(outputs, next(iter(dtypes.values())) if len(dtypes) == 1 else None)

    def model_status(self):
        """GET /v1/models/<name>: TF Serving's `model_version_status` list."""
        return self._http(self._model_url())["model_version_status"]

    def wait_until_available(self, timeout=60.0, interval=0.5):
        """Polls `model_status` until a version is AVAILABLE; returns the status list."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                status = self.model_status()
            except ServingError:
                if time.monotonic() > deadline:
                    raise
            else:
                if any(v.get("state") == "AVAILABLE" for v in status):
                    return status
                if time.monotonic() > deadline:
                    raise ServingError(self._model_url(), "rest", None,
                                       f"no version AVAILABLE after {timeout} s: {status}")
            time.sleep(interval)

    # -- gRPC ---------------------------------------------------------------------------------

    def _grpc_stub(self):
        if self._stub is None:
            apis = _grpc_apis()
            self._channel = apis.grpc.insecure_channel(
                f"{self.host}:{self.grpc_port}",
                options=[("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                         ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES)])
            self._stub = apis.prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        return self._stub

    def predict_grpc(self, signature, inputs):
        """Calls `PredictionService/Predict` with `grpc_request`; returns {output: NumPy array}."""
        apis = _grpc_apis()
        grpc = apis.grpc
        request = grpc_request(signature, inputs, self.model_name, self.version)
        where = (f"Predict {self.model_name}"
                 + (f" version {self.version}" if self.version is not None else "")
                 + f" {signature} at {self.host}:{self.grpc_port}")
        try:
            response = self._grpc_stub().Predict(request, timeout=self.timeout)
        except grpc.RpcError as error:
            code = error.code()
            details = error.details() or ""
            if code == grpc.StatusCode.UNAVAILABLE:
                details = (f"cannot reach the gRPC API ({details}); is the server running with "
                           f"its gRPC port {self.grpc_port} published?")
            raise ServingError(where, "grpc", code.name, details) from None
        return {name: apis.tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    def close(self):
        """Closes the gRPC channel (REST keeps no connection)."""
        if self._channel is not None:
            self._channel.close()
        self._channel = self._stub = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- convenience --------------------------------------------------------------------------

    def predict(self, signature, inputs, protocol="rest"):
        """`predict_rest` or `predict_grpc`."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}.")
        if protocol == "rest":
            return self.predict_rest(signature, inputs)
        return self.predict_grpc(signature, inputs)

    def generate(self, prompts, max_new_tokens=32, temperature=0.0, top_k=0, top_p=1.0, seed=0,
                 protocol="rest"):
        """Continues each prompt: [{"text", "num_tokens", "prompt_truncated"}] per prompt.

        Greedy at temperature 0; else sampled (top-k, top-p), the same for the same seed.
        """
        outputs = self.predict("generate", {
            "prompts": _texts(prompts), "max_new_tokens": max_new_tokens,
            "temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed}, protocol)
        return _generations(outputs)

    def beam_search(self, prompts, max_new_tokens=32, length_penalty=0.6, protocol="rest"):
        """The most likely continuation of each prompt (beams fixed at export), as `generate`."""
        outputs = self.predict("beam_search", {
            "prompts": _texts(prompts), "max_new_tokens": max_new_tokens,
            "length_penalty": length_penalty}, protocol)
        return _generations(outputs)

    def score(self, texts, protocol="rest"):
        """[{"log_likelihood", "perplexity", "num_tokens", "truncated"}] per text."""
        out = self.predict("score", {"text": _texts(texts)}, protocol)
        return [{"log_likelihood": float(ll), "perplexity": float(ppl), "num_tokens": int(n),
                 "truncated": bool(t)}
                for ll, ppl, n, t in zip(out["log_likelihood"], out["perplexity"],
                                         out["num_tokens"], out["truncated"])]

    def fill_mask(self, texts, top_k=5, protocol="rest"):
        """For the first "[MASK]" of each text: [{"candidates": [(token, probability)] best
        first, "has_mask"}]; without a mask, `has_mask` is False and the candidates are empty
        tokens with probability 0."""
        out = self.predict("fill_mask", {"text": _texts(texts), "top_k": top_k}, protocol)
        return [{"candidates": [(_text(t), float(s)) for t, s in zip(tokens, scores)],
                 "has_mask": bool(has), "truncated": bool(cut)}
                for tokens, scores, has, cut in zip(out["tokens"], out["scores"], out["has_mask"],
                                                    out["truncated"])]

    def encode(self, texts, protocol="rest"):
        """[{"pooled_output": (hidden,), "sequence_output": (tokens, hidden) without padding
        ([CLS] and [SEP] included), "truncated"}] per text, as float32 NumPy arrays."""
        out = self.predict("encode", {"text": _texts(texts)}, protocol)
        rows = []
        for pooled, sequence, mask, truncated in zip(out["pooled_output"], out["sequence_output"],
                                                     out["padding_mask"], out["truncated"]):
            rows.append({"pooled_output": np.asarray(pooled, np.float32),
                         "sequence_output": np.asarray(sequence, np.float32)[np.asarray(mask) > 0],
                         "truncated": bool(truncated)})
        return rows

    def classify(self, texts, protocol="rest"):
        """[{"label", "label_id", "probabilities" (a list, by label id), "truncated"}] per text."""
        out = self.predict("classify", {"text": _texts(texts)}, protocol)
        return [{"label": _text(label), "label_id": int(i),
                 "probabilities": [float(p) for p in probs], "truncated": bool(t)}
                for label, i, probs, t in zip(out["label"], out["label_id"],
                                              out["probabilities"], out["truncated"])]


def _texts(texts):
    """One string or a list of strings -> a list (a bare string is one text, not characters)."""
    if isinstance(texts, (str, bytes)):
        return [texts]
    return list(texts)


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _generations(out):
    return [{"text": _text(text), "num_tokens": int(n), "prompt_truncated": bool(t)}
            for text, n, t in zip(out["text"], out["num_tokens"], out["prompt_truncated"])]
