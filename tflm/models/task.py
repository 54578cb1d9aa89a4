"""Task: a backbone plus a head, compiled with defaults so `fit` works at once."""

import keras

from tflm.models.losses import WeightedCrossEntropy, weighted_cross_entropy


def no_decay_variables(model):
    """Variables that weight decay must not touch: biases and norm scales/offsets.

    These are exactly the rank-1 trainable variables of a transformer (BERT's
    rule excludes "bias", "LayerNorm.weight" and "LayerNorm.bias"); embedding
    tables and kernels are rank 2 and are decayed.
    """
    return [v for v in model.trainable_variables if len(v.shape) <= 1]


def make_adamw(model, learning_rate=1e-3, weight_decay=0.01, beta_1=0.9, beta_2=0.999,
               epsilon=1e-6, clipnorm=None):
    """AdamW for `model`, its biases and norm parameters excluded from decay.

    `learning_rate` is a float or a schedule; `clipnorm` clips by the global
    norm of the gradient (as `model.fit` sees it; the trainer clips itself,
    after summing gradients over replicas).
    """
    optimizer = keras.optimizers.AdamW(
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        beta_1=beta_1,
        beta_2=beta_2,
        epsilon=epsilon,
        global_clipnorm=clipnorm,
    )
    optimizer.exclude_from_weight_decay(var_list=no_decay_variables(model))
    return optimizer


class Task(keras.Model):
    """Base class of the tasks: holds a backbone, serializes it, compiles itself.

    Batches are `(features, labels, sample_weight)` tuples, with `features` a
    dict of tensors (see each task). A task is compiled on construction with
    AdamW, a from-logits sparse cross-entropy averaged over the weighted
    positions, and accuracy; call `compile` again to change any of them.
    """

    default_learning_rate = 1e-3

    def __init__(self, backbone, **kwargs):
        kwargs.setdefault("dtype", backbone.dtype_policy)
        super().__init__(**kwargs)
        self.backbone = backbone

    def _finish_init(self):
        """Called by subclasses once every weight exists: mark built, compile."""
        self.built = True
        self.compile()

    def compile(
        self,
        optimizer="auto",
        loss="auto",
        weighted_metrics="auto",
        **kwargs,
    ):
        """Compiles with tflm defaults wherever an argument is `"auto"`."""
        if optimizer == "auto":
            optimizer = make_adamw(self, learning_rate=self.default_learning_rate)
        if loss == "auto":
            # Mean over the positions that carry weight (real tokens, masked
            # positions), not over the padded tensor size.
            loss = self.default_loss()
        if weighted_metrics == "auto":
            weighted_metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        super().compile(optimizer=optimizer, loss=loss, weighted_metrics=weighted_metrics, **kwargs)

    def loss_sums(self, labels, outputs, weights, label_smoothing=0.0):
        """`(sum of w * loss, sum of w)` of a batch, in float32."""
        return weighted_cross_entropy(labels, outputs, weights, label_smoothing)

    def default_loss(self):
        """`loss_sums` as the Keras loss that `compile` uses by default."""
        return WeightedCrossEntropy()

    def compile_from_config(self, config):
        """Recompiles a loaded task as it was saved, optimizer state included."""
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        # The decay exclusions are variables, not config: set them again.
        if getattr(self.optimizer, "weight_decay", None):
            self.optimizer.exclude_from_weight_decay(var_list=no_decay_variables(self))
        self.optimizer.build(self.trainable_variables)

    def get_config(self):
        return {
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)
