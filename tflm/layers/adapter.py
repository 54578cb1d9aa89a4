"""Bottleneck adapter: a small residual module trained while the model around it is frozen."""

import keras

from tflm.layers.feed_forward import activate
from tflm.layers.layer_utils import build_dense


@keras.saving.register_keras_serializable(package="tflm")
class Adapter(keras.layers.Layer):
    """`x + up(activation(down(x)))`, with a narrow `down` (Houlsby et al., 2019).

    Inserted after the attention and the feed-forward outputs of every block,
    adapters are all that is trained of the backbone in adapter fine-tuning:
    `2 * (d * bottleneck_dim) + bottleneck_dim + d` weights each, a few
    percent of a block. The up-projection starts at zero, so a new adapter is
    exactly the identity and the pretrained model's outputs are unchanged
    until training moves it.

    Args:
        bottleneck_dim: width of the bottleneck.
        activation: nonlinearity in the bottleneck (see `FeedForward`).
        kernel_initializer: initializer of the down-projection.
        up_initializer: initializer of the up-projection; zeros (the default)
            make a new adapter the identity.
        **kwargs: other keyword arguments of `keras.layers.Layer`.

    Example:
    >>> adapter = Adapter(bottleneck_dim=8)
    >>> x = keras.random.normal((2, 16, 64))
    >>> y = adapter(x)       # == x until trained
    """

    def __init__(self, bottleneck_dim, activation="gelu", kernel_initializer="glorot_uniform",
                 up_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.bottleneck_dim = int(bottleneck_dim)
        if self.bottleneck_dim <= 0:
            raise ValueError(f"bottleneck_dim must be positive, got {bottleneck_dim}.")
        self.activation = activation
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.up_initializer = keras.initializers.get(up_initializer)

    def build(self, input_shape):
        model_dim = input_shape[-1]
        self.down = build_dense(self.bottleneck_dim, input_shape, True, self.kernel_initializer,
                                "zeros", self.dtype_policy, "down")
        self.up = build_dense(model_dim, tuple(input_shape[:-1]) + (self.bottleneck_dim,), True,
                              self.up_initializer, "zeros", self.dtype_policy, "up")

    def call(self, inputs):
        return inputs + self.up(activate(self.down(inputs), self.activation))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({
            "bottleneck_dim": self.bottleneck_dim,
            "activation": self.activation,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "up_initializer": keras.initializers.serialize(self.up_initializer),
        })
        return config
