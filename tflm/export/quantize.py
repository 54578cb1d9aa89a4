"""Weight-only quantization at export: dense and embedding kernels as int8 or float16.

    served = quantize_model(model, "int8")   # a quantized copy; `model` is left as it was

- `"int8"`: each `keras.layers.Dense` kernel is stored as int8 with one float32
  scale per output channel, by Keras's own `Dense.quantize` with no activation
  quantizer (weight-only: Keras's default int8 mode also quantizes the inputs of
  each matmul per token). Each token table (`TokenEmbedding`, `keras.layers.Embedding`)
  is stored as int8 with one scale per row, i.e. per token, which is also the
  per-output-channel scale of a tied output projection `h E^T`. The graph casts the
  int8 kernel to float32, multiplies in float32 and divides by the scale (`Cast`,
  `MatMul`/`BatchMatMulV2`, `RealDiv`: ops every TF Serving has); activations,
  biases, norms and learned position tables stay float32.
- `"float16"`: the same kernels stored as float16 and cast to float32 where they
  are read: today's float32 computation on weights rounded to float16.

Scales follow Keras's convention: `scale = 127 / max|w|` over the channel, `q =
round(w * scale)`, and the served weight is `q / scale`, within half a step
(`0.5 / scale`) of `w`.

The copy is built from the model's config and takes its weights; the original
keeps its float variables and trains or exports on unchanged. The copy is for
serving: its quantized kernels are not trainable.
"""

import keras
from keras import ops

from tflm.errors import TflmError
from tflm.layers.token_embedding import TokenEmbedding

MODES = ("none", "int8", "float16")


class QuantizeError(TflmError, ValueError):
    """An unknown quantization mode, or a model it cannot apply to."""


def weight_only_int8():
    """Keras's int8 config without the activation quantizer: weights only."""
    return keras.quantizers.Int8QuantizationConfig(weight_quantizer=None,
                                                   activation_quantizer=None)


def quantize_model(model, mode):
    """`model` itself for `mode` "none" (or None); else a copy with its dense and
    embedding kernels stored as `mode` ("int8" or "float16"; see the module docstring)."""
    mode = mode or "none"
    if mode not in MODES:
        raise QuantizeError(f"quantize={mode!r}: expected one of {', '.join(MODES)}.")
    if mode == "none":
        return model
    if model.compute_dtype != "float32":
        raise QuantizeError(f"quantize={mode!r} needs a float32 model, not one computing in "
                            f"{model.compute_dtype}: export from a float32 load of the model.")
    copy = type(model).from_config(model.get_config())
    copy.set_weights(model.get_weights())
    for layer in _kernel_layers(copy):
        if mode == "int8":
            layer.quantize("int8", config=weight_only_int8())
        else:
            for name in _KERNELS[type(layer)](layer):
                store_as(layer, name, "float16")
    return copy


def _kernel_layers(model):
    """The layers of `model` that hold dense or embedding kernels, each once (a table
    shared by an encoder and a decoder is one layer)."""
    seen, layers = set(), []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if type(layer) in _KERNELS and id(layer) not in seen:
            seen.add(id(layer))
            layers.append(layer)
    return layers


# The kernel attributes of each layer type, the ones float16 rounds (int8 is each
# layer's own `quantize`).
_KERNELS = {
    keras.layers.Dense: lambda layer: ["_kernel"],
    keras.layers.Embedding: lambda layer: ["_embeddings"],
    TokenEmbedding: lambda layer: ["embeddings"] + ([] if layer.tie_weights else
                                                   ["reverse_embeddings"]),
}


def store_as(layer, name, dtype):
    """Replaces the variable `layer.<name>` by a non-trainable one of `dtype` holding its
    values; the layer's call reads it as before (Keras ops cast it to the compute dtype)."""
    old = getattr(layer, name)
    layer._tracker.unlock()
    try:
        delattr(layer, name)
        new = layer.add_weight(name=old.name, shape=old.shape, dtype=dtype, initializer="zeros",
                               trainable=False)
        new.assign(ops.cast(old, dtype))
        setattr(layer, name, new)
    finally:
        layer._tracker.lock()
