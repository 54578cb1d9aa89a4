"""TF Serving warmup requests: `assets.extra/tf_serving_warmup_requests`.

TF Serving replays these requests when it loads a model, so the first real
request does not pay for graph initialization.
"""

import os

import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

WARMUP_FILE = "tf_serving_warmup_requests"


def write_warmup_requests(export_path, requests, model_name="tflm"):
    """Writes one `PredictionLog` per `(signature, {input: value})` into assets.extra/."""
    extra = os.path.join(export_path, "assets.extra")
    tf.io.gfile.makedirs(extra)
    with tf.io.TFRecordWriter(os.path.join(extra, WARMUP_FILE)) as writer:
        for signature, inputs in requests:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
            for name, value in inputs.items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
