"""Dynamic loss scaling for mixed_float16, with the trainer's own gradient path.

float16 gradients underflow; the loss is multiplied by a large scale before
the backward pass and the gradients divided by it after. When a step's
gradients overflow (inf/NaN), the update is skipped and the scale halved;
after `growth_interval` finite steps in a row it doubles.
(`keras.optimizers.LossScaleOptimizer` does the same inside `apply`, but there
it would unscale after our global-norm clipping; here the order is: sum over
replicas, unscale, check, clip, apply.)
"""

import tensorflow as tf


class DynamicLossScale(tf.Module):
    """The scale and its counter, as variables that checkpoint with the model.

    Example:
    >>> scale = DynamicLossScale(initial_scale=2.0**15)
    >>> scaled_loss = loss * scale()
    >>> scale.update(all_gradients_finite)
    """

    def __init__(self, initial_scale=2.0**15, growth_interval=2000, enabled=True, name="loss_scale"):
        super().__init__(name=name)
        self.enabled = enabled
        self.growth_interval = int(growth_interval)
        aggregation = tf.VariableAggregation.ONLY_FIRST_REPLICA
        self.scale = tf.Variable(float(initial_scale) if enabled else 1.0, dtype=tf.float32,
                                 trainable=False, aggregation=aggregation, name="scale")
        self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False, aggregation=aggregation,
                                      name="good_steps")

    def __call__(self):
        return self.scale if self.enabled else tf.constant(1.0)

    def update(self, finite):
        """After a step: halve on overflow, double after `growth_interval` finite steps."""
        if not self.enabled:
            return tf.no_op()
        grow = finite & (self.good_steps + 1 >= self.growth_interval)
        new_scale = tf.where(finite, tf.where(grow, self.scale * 2.0, self.scale),
                             tf.maximum(self.scale / 2.0, 1.0))
        new_good = tf.where(finite & ~grow, self.good_steps + 1, tf.zeros_like(self.good_steps))
        return tf.group(self.scale.assign(new_scale), self.good_steps.assign(new_good))
