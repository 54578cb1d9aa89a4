"""AdamW for the distributed trainer, applied once per step in cross-replica context.

The update is exactly `keras.optimizers.AdamW`'s (decoupled weight decay,
then Adam with Keras' bias-corrected step size), so `model.fit` and the
trainer optimize the same way. It is its own small class because the
trainer must apply already summed, clipped gradients, and skip a step whose
gradients overflowed; Keras' TensorFlow optimizer all-reduces and clips
inside `apply` and needs a replica context there (tf.cond around it fails
under tf.distribute, keras-team/keras#20582).
"""

import keras
import tensorflow as tf


class AdamW(tf.Module):
    """Adam with decoupled weight decay over a fixed list of variables.

    For each variable `w` with gradient `g`, at step `t` (from 1) and learning
    rate `lr`:

        w <- w - lr * weight_decay * w                 (unless excluded from decay)
        m <- m + (g - m) * (1 - beta_1)
        v <- v + (g^2 - v) * (1 - beta_2)
        w <- w - lr * sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v) + epsilon)

    Args:
        variables: the trainable variables (Keras or TF variables).
        learning_rate: a float or a schedule `step -> rate` (e.g. `WarmupDecay`).
        weight_decay, beta_1, beta_2, epsilon: as in Keras' AdamW.
        exclude_from_decay: variables never decayed (biases, norm scales).
        lr_multipliers: one factor per variable scaling its learning rate (and
            so its decay), for discriminative learning rates; default all 1.

    Create it inside the strategy's scope (its slots are mirrored like the
    weights); call `apply` in cross-replica context.

    Example:
    >>> with strategy.scope():
    ...     optimizer = AdamW(model.trainable_variables, learning_rate=schedule,
    ...                       exclude_from_decay=no_decay_variables(model))
    >>> optimizer.apply(summed_gradients, strategy)
    """

    def __init__(self, variables, learning_rate, weight_decay=0.01, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-6, exclude_from_decay=(), lr_multipliers=None, name="adamw"):
        super().__init__(name=name)
        self.schedule = learning_rate
        self.weight_decay = float(weight_decay or 0.0)
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)
        excluded = {id(_tf_variable(v)) for v in exclude_from_decay}
        self._targets = [_tf_variable(v) for v in variables]
        self._decayed = [id(v) not in excluded for v in self._targets]
        self._multipliers = [1.0] * len(self._targets) if lr_multipliers is None else \
            [float(m) for m in lr_multipliers]
        if len(self._multipliers) != len(self._targets):
            raise ValueError(f"{len(self._multipliers)} learning-rate multipliers for "
                             f"{len(self._targets)} variables.")
        only_first = tf.VariableAggregation.ONLY_FIRST_REPLICA
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, aggregation=only_first,
                                      name="iterations")
        self.momentums = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False, name="m")
                          for v in self._targets]
        self.velocities = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False, name="v")
                           for v in self._targets]

    @property
    def learning_rate(self):
        """The rate of the next update."""
        if callable(self.schedule):
            return tf.cast(self.schedule(self.iterations), tf.float32)
        return tf.constant(self.schedule, tf.float32)

    def apply(self, gradients, strategy=None):
        """One update of every variable with `gradients` (summed over replicas already)."""
        strategy = strategy or tf.distribute.get_strategy()
        for var, m, v, grad, step_size, decay in self._per_variable(gradients):
            strategy.extended.update(var, self._update, args=(grad, m, v, step_size, decay),
                                     group=False)
        self.iterations.assign_add(1)

    def apply_where(self, gradients, apply):
        """`apply(gradients)` if the bool tensor `apply` is true, else nothing changes.

        For one device, where the whole step is one XLA computation: the update
        is computed and selected with `tf.where` (no cross-replica context or
        conditional needed), with the same arithmetic as `apply`.
        """
        for var, m, v, grad, step_size, decay in self._per_variable(gradients):
            value, new_m, new_v = self._new_values(var, grad, m, v, step_size, decay)
            m.assign(tf.where(apply, new_m, m))
            v.assign(tf.where(apply, new_v, v))
            var.assign(tf.where(apply, value, var))
        self.iterations.assign_add(tf.cast(apply, tf.int64))

    def apply_if(self, gradients, apply, strategy=None):
        """`apply(gradients)` behind a conditional on the bool tensor `apply`. With `strategy`,
        in its cross-replica context, as `apply`; without, on one device inside the replica
        function, each variable assigned directly (no cross-replica context there)."""

        def update():
            if strategy is not None:
                self.apply(gradients, strategy)
                return tf.constant(True)
            for var, m, v, grad, step_size, decay in self._per_variable(gradients):
                self._update(var, grad, m, v, step_size, decay)
            self.iterations.assign_add(1)
            return tf.constant(True)

        tf.cond(apply, update, lambda: tf.constant(False))

    def _per_variable(self, gradients):
        """`(var, m, v, grad, step size, decay or None)` of each variable for the next update,
        its learning-rate multiplier applied."""
        lr = self.learning_rate
        t = tf.cast(self.iterations + 1, tf.float32)
        step_size = lr * tf.sqrt(1.0 - self.beta_2**t) / (1.0 - self.beta_1**t)
        decay = lr * self.weight_decay
        for var, m, v, grad, decayed, factor in zip(self._targets, self.momentums,
                                                    self.velocities, gradients, self._decayed,
                                                    self._multipliers):
            if factor != 1.0:
                yield var, m, v, grad, step_size * factor, (decay * factor if decayed else None)
            else:
                yield var, m, v, grad, step_size, (decay if decayed else None)

    def _new_values(self, var, grad, m, v, step_size, decay):
        """The updated `(variable, m, v)`, by the formulas above."""
        grad = tf.cast(grad, var.dtype)
        value = tf.convert_to_tensor(var)
        if decay is not None and self.weight_decay:
            value = value - value * decay
        new_m = m + (grad - m) * (1.0 - self.beta_1)
        new_v = v + (tf.square(grad) - v) * (1.0 - self.beta_2)
        return value - new_m * step_size / (tf.sqrt(new_v) + self.epsilon), new_m, new_v

    def _update(self, var, grad, m, v, step_size, decay):
        value, new_m, new_v = self._new_values(var, grad, m, v, step_size, decay)
        m.assign(new_m)
        v.assign(new_v)
        var.assign(value)


def _tf_variable(variable):
    """The tf.Variable under a Keras variable (a MirroredVariable under a strategy)."""
    return variable.value if isinstance(variable, keras.Variable) else variable
