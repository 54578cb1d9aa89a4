"""Task: a backbone plus a head, compiled with defaults so `fit` works at once."""

import keras
import tensorflow as tf

from tflm.models.losses import (WeightedCrossEntropy, chunked_cross_entropy,
                                weighted_cross_entropy)


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


def has_vocabulary_head(model):
    """Whether `model`'s outputs are vocabulary logits it can chunk (`Task.head_inputs`)."""
    return isinstance(model, Task) and type(model).head_inputs is not Task.head_inputs


class Task(keras.Model):
    """Base class of the tasks: holds a backbone, serializes it, compiles itself.

    Batches are `(features, labels, sample_weight)` tuples, with `features` a
    dict of tensors (see each task). A task is compiled on construction with
    AdamW, a from-logits sparse cross-entropy averaged over the weighted
    positions, and accuracy; call `compile` again to change any of them.
    """

    default_learning_rate = 1e-3
    # Rows of the vocabulary head's training loss computed at a time (`chunked_loss_sums`);
    # 0: from the whole logits. Only tasks with a vocabulary head (`head_inputs`) set it.
    loss_chunk_size = 0

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
        # With the default loss, a distributed `fit` takes its own step (`train_step`).
        self._default_loss = loss == "auto"
        if loss == "auto":
            # Mean over the positions that carry weight (real tokens, masked
            # positions), not over the padded tensor size.
            loss = self.default_loss()
        self._default_metrics = weighted_metrics == "auto"
        if weighted_metrics == "auto":
            weighted_metrics = self.default_metrics()
        super().compile(optimizer=optimizer, loss=loss, weighted_metrics=weighted_metrics, **kwargs)

    def default_metrics(self):
        """The weighted metrics that `compile` uses by default."""
        return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]

    def loss_sums(self, labels, outputs, weights, label_smoothing=0.0):
        """`(sum of w * loss, sum of w)` of a batch, in float32."""
        return weighted_cross_entropy(labels, outputs, weights, label_smoothing)

    def head_inputs(self, inputs, training=None):
        """`(hidden, kernel, transpose_kernel, bias)` of a task whose outputs are vocabulary
        logits `hidden @ kernel + bias` (`kernel^T` if `transpose_kernel`; bias None if there
        is none), `hidden` at the positions that have labels."""
        raise TypeError(f"{type(self).__name__} has no vocabulary head.")

    def chunked_loss_sums(self, inputs, labels, weights, label_smoothing=0.0, training=True,
                          return_predictions=False):
        """`loss_sums(labels, self(inputs), weights)` without the whole logits: the
        vocabulary head and its cross-entropy `loss_chunk_size` rows at a time
        (`chunked_cross_entropy`). With `return_predictions`, also the argmax ids in place
        of the logits (what `TokenAccuracy` takes)."""
        hidden, kernel, transpose_kernel, bias = self.head_inputs(inputs, training=training)
        return chunked_cross_entropy(hidden, kernel, labels, weights, self.loss_chunk_size,
                                     bias=bias, label_smoothing=label_smoothing,
                                     return_predictions=return_predictions,
                                     transpose_kernel=transpose_kernel)

    # -- `fit` on several replicas (MirroredStrategy, MultiWorkerMirroredStrategy). --------
    def train_step(self, data):
        """Keras's step, except on several replicas with the default loss: there Keras
        averages each replica's own mean (replicas with fewer weighted tokens count as
        much) and clips each replica's gradient before summing them. This step divides
        every replica's loss sum by the weight of the whole global batch (as the trainer
        does: one batch on one device gives the same update), sums the gradients over the
        replicas, then clips the global gradient by the optimizer's `global_clipnorm`.

        With `loss_chunk_size` and the default loss this step runs on one replica too: the
        loss comes from `chunked_loss_sums`, and the default metrics see the argmax ids."""
        strategy = tf.distribute.get_strategy()
        replicas = strategy.num_replicas_in_sync
        default_loss = getattr(self, "_default_loss", False)
        chunked = (bool(self.loss_chunk_size) and default_loss
                   and getattr(self, "_default_metrics", False))
        if not chunked and (replicas == 1 or not default_loss):
            return _for_keras_reduce(super().train_step(data))
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if sample_weight is None:
            sample_weight = tf.nest.map_structure(lambda t: tf.ones(tf.shape(t)), y)
        context = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            if chunked:
                sums, weights, y_pred = self.chunked_loss_sums(
                    x, y, sample_weight, training=True, return_predictions=True)
            else:
                y_pred = self(x, training=True)
                sums, weights = self.loss_sums(y, y_pred, sample_weight)
            denominator = tf.maximum(context.all_reduce(tf.distribute.ReduceOp.SUM, weights), 1.0)
            loss = tf.reduce_sum(tf.reshape(sums, [-1]) / tf.reshape(denominator, [-1]))
            scaled = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        if replicas == 1:
            # As Keras's step: the optimizer unscales, clips and skips the unused variables.
            self.optimizer.apply(grads, variables)
        else:
            grads = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
                     for g, v in zip(grads, variables)]
            grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
            clipnorm = self.optimizer.global_clipnorm
            if clipnorm:
                grads, _ = tf.clip_by_global_norm(grads, clipnorm)
            # The optimizer sums over the replicas once more: each gives an equal share.
            self.optimizer.apply_gradients(zip([g / replicas for g in grads], variables))
        global_loss = context.all_reduce(tf.distribute.ReduceOp.SUM, loss)
        self._loss_tracker.update_state(global_loss, sample_weight=tf.shape(
            tf.nest.flatten(x)[0])[0])
        return _for_keras_reduce(self.compute_metrics(x, y, y_pred, sample_weight=sample_weight))

    def test_step(self, data):
        return _for_keras_reduce(super().test_step(data))

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras builds from the first batch reduced by `strategy.reduce("MEAN", batch)`, which
        # MultiWorkerMirroredStrategy cannot do with a batch of several tensors
        # (keras-team/keras#20585); and drawing that batch starts the dataset once more than
        # one device does, so a reshuffling pipeline's order changes. A tflm task is built
        # already: zeros of the batch's shapes serve.
        if iterator is not None and self._distribute_strategy is not None:
            spec = getattr(iterator, "_distributed_dataset", None)
            if spec is not None:
                data_batch = tf.nest.map_structure(_zeros_of_spec, spec.element_spec)
        return super()._maybe_symbolic_build(data_batch=data_batch)

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


def _for_keras_reduce(logs):
    """Under MultiWorkerMirroredStrategy Keras reduces each logged value with
    `strategy.reduce("MEAN", value, axis=0)`, which fails on a scalar
    (keras-team/keras#20585): there the values go out as vectors of one."""
    if not isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
        return logs
    return {name: tf.reshape(value, [1]) for name, value in logs.items()}


def _zeros_of_spec(spec):
    """Zeros of a (per-replica) tensor spec, unknown dimensions 1."""
    spec = getattr(spec, "_value_specs", (spec,))[0]
    return tf.zeros([d or 1 for d in spec.shape], spec.dtype)
