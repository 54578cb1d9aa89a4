"""Position-wise feed-forward block: ReLU, GELU, SwiGLU or GeGLU."""

import keras
from keras import ops

from tflm.config import ACTIVATIONS

# Activations of a gated unit: `activation(x W_gate) * (x W_up)`.
GATED_ACTIVATIONS = ("swiglu", "geglu")
from tflm.layers.layer_utils import build_dense
from tflm.layers.lora import lora_spec_for


def activate(x, activation):
    """Applies a pointwise activation by name; a gated one (`GATED_ACTIVATIONS`) applies its
    gate's: SiLU for `"swiglu"`, tanh GELU for `"geglu"`."""
    if activation == "relu":
        return ops.relu(x)
    if activation == "gelu":
        return ops.gelu(x, approximate=False)
    if activation == "gelu_tanh":
        return ops.gelu(x, approximate=True)
    if activation == "swiglu":
        return ops.silu(x)
    if activation == "geglu":
        return ops.gelu(x, approximate=True)
    raise ValueError(f"Unknown activation {activation!r}; expected one of {ACTIVATIONS}.")


@keras.saving.register_keras_serializable(package="tflm")
class FeedForward(keras.layers.Layer):
    """Two projections with a nonlinearity between them, applied per position.

    - `"relu"`: `max(0, x W1 + b1) W2 + b2` ("Attention Is All You Need");
    - `"gelu"`: exact GELU, `x * Phi(x)` with the normal CDF via erf (BERT);
    - `"gelu_tanh"`: the tanh approximation of GELU (GPT-2);
    - `"swiglu"`: `(silu(x W_gate) * (x W_up)) W2` (Shazeer, 2020), with
      `W_gate` and `W_up` fused into one `(d_model, 2 * intermediate_dim)`
      projection laid out `[gate | up]`;
    - `"geglu"`: the same with the tanh GELU as the gate (T5 v1.1's "gated-gelu").

    Args:
        intermediate_dim: width of the hidden projection.
        activation: one of `"relu"`, `"gelu"`, `"gelu_tanh"`, `"swiglu"`, `"geglu"`.
        use_bias: whether the projections have biases.
        kernel_initializer, bias_initializer: initializers of the projections.
        lora: optional LoRA of the projections: `{"rank", "alpha", "dropout", "targets"}`
            (see `tflm.layers.lora`); None for none.
        **kwargs: other keyword arguments of `keras.layers.Layer`.

    Example:
    >>> ffn = FeedForward(intermediate_dim=128, activation="gelu")
    >>> y = ffn(keras.random.normal((2, 16, 32)))
    """

    def __init__(
        self,
        intermediate_dim,
        activation="gelu",
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        lora=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.lora = dict(lora) if lora else None
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"Unknown feed-forward activation {activation!r}; expected one of {ACTIVATIONS}."
            )
        self.intermediate_dim = int(intermediate_dim)
        self.activation = activation
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, input_shape):
        model_dim = input_shape[-1]
        gated = self.activation in GATED_ACTIVATIONS
        width = 2 * self.intermediate_dim if gated else self.intermediate_dim
        dense_args = dict(
            use_bias=self.use_bias,
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            dtype=self.dtype_policy,
        )
        self.intermediate_dense = build_dense(
            width, input_shape, name="intermediate",
            lora=lora_spec_for(self.lora, [("feed_forward_in", width)]), **dense_args)
        self.output_dense = build_dense(
            model_dim, tuple(input_shape[:-1]) + (self.intermediate_dim,), name="output",
            lora=lora_spec_for(self.lora, [("feed_forward_out", model_dim)]), **dense_args
        )

    def call(self, inputs):
        x = self.intermediate_dense(inputs)
        if self.activation in GATED_ACTIVATIONS:
            gate, up = ops.split(x, 2, axis=-1)
            x = activate(gate, self.activation) * up
        else:
            x = activate(x, self.activation)
        return self.output_dense(x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "intermediate_dim": self.intermediate_dim,
                "activation": self.activation,
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "lora": self.lora,
            }
        )
        return config
