"""Task: a backbone plus a head, compiled with defaults so `fit` works at once."""

import keras

from tflm.training.optimizer import make_adamw, no_decay_variables


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
            loss = keras.losses.SparseCategoricalCrossentropy(
                from_logits=True, reduction="mean_with_sample_weight"
            )
        if weighted_metrics == "auto":
            weighted_metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        super().compile(optimizer=optimizer, loss=loss, weighted_metrics=weighted_metrics, **kwargs)

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
