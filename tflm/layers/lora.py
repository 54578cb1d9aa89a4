"""LoRA: a frozen `Dense` adapted by trainable low-rank factors (Hu et al., 2021)."""

import keras
from keras import ops


def lora_spec_for(lora, parts):
    """The `LoraDense` arguments of one projection whose output columns are `parts`
    (`[(target, width)]`, in column order, targets of `tflm.config.LORA_TARGETS`), or None
    if `lora` (a dict of rank, alpha, dropout and targets; None for no LoRA) adapts none
    of them."""
    if not lora:
        return None
    slices, start = [], 0
    for target, width in parts:
        if target in lora["targets"]:
            slices.append((target, start, start + width))
        start += width
    if not slices:
        return None
    return {"rank": lora["rank"], "alpha": lora["alpha"], "lora_dropout": lora["dropout"],
            "slices": slices}


@keras.saving.register_keras_serializable(package="tflm")
class LoraDense(keras.layers.Dense):
    """`x W + b + dropout(x) A B * alpha / rank`, with `W` and `b` frozen.

    Only the factors train: `A` `(input_dim, rank)` starts uniform (as PEFT's), `B`
    `(rank, width)` starts at zero, so a new `LoraDense` computes exactly its `Dense`.
    One projection may hold several targets side by side (a fused query/key/value
    kernel): each slice `(target, start, stop)` of the output columns gets its own
    pair `lora_a_<target>`, `lora_b_<target>`; columns of no slice are not adapted.
    `merged_kernel()` is `W + A B * alpha / rank` over all slices, which
    `tflm.models.lora.merge_lora` writes into a plain `Dense` for serving.

    Keras' own `Dense.enable_lora` has no dropout on the factors' input; this layer
    keeps the `Dense` weights and their checkpoint paths, and adds the factors.

    Args:
        units: output width, as `Dense`.
        rank: the factors' inner width.
        alpha: the scale's numerator (the update is `A B * alpha / rank`).
        lora_dropout: dropout rate on the factors' input (training only).
        slices: `[(target, start, stop)]` of the output columns; default the whole
            output as one slice named `"all"`.
        **kwargs: other keyword arguments of `keras.layers.Dense`.

    Example:
    >>> dense = LoraDense(12, rank=2, slices=[("query", 0, 4), ("value", 8, 12)])
    >>> y = dense(keras.random.normal((2, 5, 8)))   # == the Dense until B trains
    """

    def __init__(self, units, rank=8, alpha=16.0, lora_dropout=0.0, slices=None, **kwargs):
        super().__init__(units, **kwargs)
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.lora_dropout = float(lora_dropout)
        self.slices = [(str(t), int(a), int(b)) for t, a, b in (slices or [("all", 0, units)])]
        if self.rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}.")
        self.dropout_layer = keras.layers.Dropout(self.lora_dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        super().build(input_shape)
        self._kernel.trainable = False  # the base weights never train
        if self.bias is not None:
            self.bias.trainable = False
        input_dim = input_shape[-1]
        # One attribute per factor, not a list: TensorFlow's checkpoints follow attributes,
        # and do not see into Keras' tracked lists.
        for target, start, stop in self.slices:
            # PEFT's kaiming_uniform(a=sqrt(5)): uniform within 1/sqrt(input_dim).
            setattr(self, f"lora_a_{target}", self.add_weight(
                name=f"lora_a_{target}", shape=(input_dim, self.rank),
                initializer=keras.initializers.VarianceScaling(1 / 3, "fan_in", "uniform")))
            setattr(self, f"lora_b_{target}", self.add_weight(
                name=f"lora_b_{target}", shape=(self.rank, stop - start), initializer="zeros"))

    @property
    def lora_a(self):
        """The `A` factor of each slice."""
        return [getattr(self, f"lora_a_{target}") for target, _, _ in self.slices]

    @property
    def lora_b(self):
        """The `B` factor of each slice."""
        return [getattr(self, f"lora_b_{target}") for target, _, _ in self.slices]

    @property
    def scale(self):
        return self.alpha / self.rank

    def lora_factors(self):
        """`(A, B)` of all slices: `A` `(input_dim, slices * rank)`, `B` `(slices * rank,
        units)` with each slice's rows zero outside its columns."""
        a = ops.concatenate([ops.convert_to_tensor(v) for v in self.lora_a], axis=1)
        b = ops.concatenate(
            [ops.pad(ops.convert_to_tensor(v), [[0, 0], [start, self.units - stop]])
             for v, (_, start, stop) in zip(self.lora_b, self.slices)], axis=0)
        return a, b

    def merged_kernel(self):
        """The kernel that folds the factors in: `W + A B * alpha / rank` (float32)."""
        a, b = self.lora_factors()
        kernel = ops.cast(self._kernel, "float32")
        return kernel + ops.matmul(ops.cast(a, "float32"), ops.cast(b, "float32")) * self.scale

    def call(self, inputs, training=None):
        outputs = super().call(inputs)
        a, b = self.lora_factors()
        x = self.dropout_layer(inputs, training=training)
        update = ops.matmul(ops.matmul(x, ops.cast(a, x.dtype)), ops.cast(b, x.dtype))
        return outputs + update * ops.cast(self.scale, update.dtype)

    # Dense saves its kernel and bias alone (its quantization formats); a LoraDense saves
    # every variable, as a plain Layer does, so model.keras keeps the factors.
    def save_own_variables(self, store):
        keras.layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store):
        keras.layers.Layer.load_own_variables(self, store)

    def get_config(self):
        config = super().get_config()
        config.update({"rank": self.rank, "alpha": self.alpha,
                       "lora_dropout": self.lora_dropout,
                       "slices": [list(s) for s in self.slices]})
        return config
