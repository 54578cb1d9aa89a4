"""Export: SavedModel signatures with the tokenizer in the graph, for TF Serving.

Names load lazily, so `tflm.export.client` (a TF Serving client: standard
library and NumPy for REST) can be imported without TensorFlow or the models.
Exporting a model_dir or a model is `tflm.experiment` (`export_model_dir`,
`export_saved_model`): its task chooses the signatures; `quantize_model` stores its
kernels as int8 or float16 first (`quantize=` of those functions).
"""

import importlib

_NAMES = {
    "ExportError": "tflm.export.exporter",
    "ServingOptions": "tflm.export.exporter",
    "next_version": "tflm.export.exporter",
    "write_saved_model": "tflm.export.exporter",
    "UnsupportedOpError": "tflm.export.op_check",
    "check_ops": "tflm.export.op_check",
    "QuantizeError": "tflm.export.quantize",
    "quantize_model": "tflm.export.quantize",
}

__all__ = sorted(_NAMES)


def __getattr__(name):
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'tflm.export' has no attribute {name!r}")
