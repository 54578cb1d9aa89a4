"""Export: SavedModel signatures with the tokenizer in the graph, for TF Serving."""

from tflm.export.exporter import (
    ExportError,
    export_saved_model,
    load_trained,
    next_version,
    serving_module,
)
from tflm.export.op_check import UnsupportedOpError, check_ops

__all__ = [
    "ExportError",
    "UnsupportedOpError",
    "check_ops",
    "export_saved_model",
    "load_trained",
    "next_version",
    "serving_module",
]
