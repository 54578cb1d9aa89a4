"""Every op of an export must exist in the TF Serving release it targets.

An op the server lacks makes the model fail to load there
("Op type not registered", e.g. tensorflow/serving#2267 for a newer
tf-text op on an older server). `check_ops` reads the SavedModel's graph and
all its functions, and fails at export time naming each missing op.
"""

import os

from tensorflow.core.protobuf import saved_model_pb2

from tflm.errors import TflmError

DEFAULT_RELEASE = "2.20"


class UnsupportedOpError(TflmError, ValueError):
    """The export uses ops the target server does not register; the message names them."""


def serving_ops(release=DEFAULT_RELEASE):
    """The op names of TF Serving `release` (TF core + tensorflow-text), from the shipped list."""
    path = os.path.join(os.path.dirname(__file__), f"serving_ops_{release}.txt")
    if not os.path.exists(path):
        raise ValueError(f"No op list for TF Serving {release} (expected {path}; "
                         "tools/list_serving_ops.py writes one).")
    with open(path) as f:
        return {line.strip() for line in f if line.strip() and not line.startswith("#")}


def saved_model_ops(export_path):
    """The set of op types in a SavedModel's graph and function library."""
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(export_path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    ops = set()
    for meta_graph in proto.meta_graphs:
        graph = meta_graph.graph_def
        ops.update(node.op for node in graph.node)
        for function in graph.library.function:
            ops.update(node.op for node in function.node_def)
    # Calls of functions of the library are not ops.
    functions = {f.signature.name for mg in proto.meta_graphs for f in mg.graph_def.library.function}
    return ops - functions


def check_ops(export_path, release=DEFAULT_RELEASE, allowed=None):
    """Returns the sorted ops of the export; raises `UnsupportedOpError` naming any the server lacks."""
    allowed = serving_ops(release) if allowed is None else set(allowed)
    ops = saved_model_ops(export_path)
    missing = sorted(ops - allowed)
    if missing:
        raise UnsupportedOpError(
            f"{export_path}: ops not registered in TF Serving {release} (TensorFlow core + "
            f"tensorflow-text): {', '.join(missing)}. The server would fail to load this model."
        )
    return sorted(ops)
