"""Writes the op names a TF Serving release can run: TensorFlow core plus tensorflow-text.

    python tools/list_serving_ops.py            # writes tflm/export/serving_ops_<tf version>.txt

Run it in an environment with the TensorFlow and tensorflow-text release the
server links (TF Serving 2.20 links TF 2.20 and tensorflow-text 2.20); it
imports nothing else, so the list holds exactly their registered ops.
`tflm.export` checks every op of an export against this list.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402
import tensorflow_text  # noqa: E402,F401  (registers its ops)
from tensorflow.core.framework import op_def_pb2  # noqa: E402
from tensorflow.python.client import pywrap_tf_session  # noqa: E402

OUT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tflm",
                       "export")


def registered_ops():
    buffer = pywrap_tf_session.TF_GetAllOpList()
    ops = op_def_pb2.OpList()
    ops.ParseFromString(pywrap_tf_session.TF_GetBuffer(buffer))
    return sorted({op.name for op in ops.op})


def main():
    version = ".".join(tf.__version__.split(".")[:2])
    path = os.path.join(OUT_DIR, f"serving_ops_{version}.txt")
    names = registered_ops()
    with open(path, "w") as f:
        f.write(f"# Ops registered by tensorflow {tf.__version__} + tensorflow-text "
                f"{tensorflow_text.__version__} (tools/list_serving_ops.py)\n")
        f.write("\n".join(names) + "\n")
    print(f"{len(names)} ops -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
