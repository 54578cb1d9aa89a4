"""The training step: forward, backward, all-reduce, clipping and the AdamW update, compiled.

    per replica (strategy.run):
        denominator <- all-reduce of the batch weights (the global token count, per loss term)
        for each micro-batch: gradients += d(loss_sums / denominator)     [XLA]
                              (model.loss_chunk_size: the vocabulary head's loss in chunks)
        gradients <- all-reduce(gradients)          # the global batch's gradient
        unscale (float16), check finite, clip by global norm
    if finite: optimizer.apply(gradients)          # once, in cross-replica context

On one device (OneDeviceStrategy) the per-replica part and the update are one
function per step: with XLA one XLA computation, the update selected by
`finite`, so no per-variable ops run outside XLA (on a small model a quarter
of the step); without XLA the update sits behind a conditional.

The loss is divided by the weight of the whole global batch (all replicas,
all micro-batches), so N accumulated micro-batches give the same update as
one batch N times larger, and R replicas the same as one. A loss of several
terms (masked LM + next sentence) gives one sum per term, each divided by
its own weight.

With a teacher (`trainer.distill_from`) each micro-batch also runs through it, in
inference mode and in the same replica function (under XLA, the same computation), and
the loss sums become `(1 - distill_weight) * loss_sums + distill_weight * distill_sums`
(both the task's): the soft loss counts the positions the task's loss counts and is
divided by the same global weight.
"""

import tensorflow as tf


class TrainStep:
    """The compiled step of one task's model; `train_loop(n)` runs `n` steps in one call.

    Args:
        task: the `tflm.tasks.Task` (its `loss_sums`).
        model, optimizer, loss_scale, step: the model, the trainer's `AdamW`, the
            `DynamicLossScale` and the global step variable (all made in the strategy's scope).
        strategy, worker: the `tf.distribute.Strategy` and this worker's `WorkerInfo`.
        iterator: this worker's iterator of batches.
        jit_compile: the forward/backward (and on one device the whole step) under XLA.
        teacher: the frozen teacher model (`Task.load_teacher`, made in the strategy's
            scope), or None.
    """

    def __init__(self, task, model, optimizer, loss_scale, step, strategy, worker, iterator,
                 jit_compile, teacher=None):
        self.task = task
        self.model = model
        self.optimizer = optimizer
        self.loss_scale = loss_scale
        self.step = step
        self.strategy = strategy
        self.worker = worker
        self.iterator = iterator
        self.jit_compile = jit_compile
        self.teacher = teacher
        trainer = task.config.trainer
        self.distill_weight = trainer.distill_weight
        self.accumulation_steps = trainer.gradient_accumulation_steps
        self.clipnorm = trainer.clipnorm
        self.global_batches = task.config.data.sharding == "global_batch"
        self._variables = model.trainable_variables
        # `model.loss_chunk_size`: the loss without the whole logits, which distillation needs.
        self.chunked_loss = bool(getattr(model, "loss_chunk_size", 0)) and teacher is None
        # The step's functions are graph code throughout (autograph's conversion of them took
        # about 0.65 s of every training run's start): traced without it.
        self._forward_backward = tf.function(self._forward_backward_fn, jit_compile=jit_compile,
                                             autograph=False)
        if task.cross_replica_loss and strategy.num_replicas_in_sync > 1:
            # A loss that gathers from the other replicas synchronizes inside the forward
            # pass, which a tf.function nested in the replica function may not do.
            self._forward_backward = self._forward_backward_fn
        # On one device the whole step (forward, backward, clipping, update) is one function
        # (one XLA computation with jit_compile): no cross-replica update.
        self.fused = isinstance(strategy, tf.distribute.OneDeviceStrategy)
        self._fused_step = tf.function(self._fused_step_fn, jit_compile=jit_compile,
                                       autograph=False)
        self.train_loop = tf.function(self._train_loop_fn, autograph=False)
        # Under ParameterServerStrategy: one step, scheduled on a worker with its iterator.
        self.scheduled_step = tf.function(self.train_step, autograph=False)

    def _forward_backward_fn(self, features, labels, weights, denominator):
        """One micro-batch on one replica: loss sums and gradients of its share of the mean."""
        if self.teacher is not None:
            # Outside the tape: the teacher is a constant of the student's loss.
            teacher_outputs = tf.nest.map_structure(
                tf.stop_gradient, self.teacher(features, training=False))
        with tf.GradientTape() as tape:
            if self.chunked_loss:
                loss_sum, _ = self.task.chunked_loss_sums(self.model, features, labels, weights)
            else:
                outputs = self.model(features, training=True)
                loss_sum, _ = self.task.loss_sums(self.model, labels, outputs, weights)
            if self.teacher is not None:
                soft_sum, _ = self.task.distill_sums(self.model, teacher_outputs, outputs,
                                                     weights)
                loss_sum = ((1.0 - self.distill_weight) * loss_sum
                            + self.distill_weight * soft_sum)
            loss_sum = tf.reshape(loss_sum, [-1])
            scaled = tf.reduce_sum(loss_sum / denominator) * self.loss_scale()
        grads = tape.gradient(scaled, self._variables)
        # Dense zeros for variables the loss does not reach (e.g. a pooler in MLM).
        grads = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
                 for g, v in zip(grads, self._variables)]
        return grads, loss_sum

    def replica_step(self, micro_batches):
        """The global gradient (identical on every replica), loss, gradient norm, finiteness."""
        context = tf.distribute.get_replica_context()
        local_weight = tf.add_n([weight_sums(w) for _, _, w in micro_batches])
        denominator = tf.maximum(context.all_reduce(tf.distribute.ReduceOp.SUM, local_weight), 1.0)
        grads, loss_sum = None, 0.0
        for features, labels, weights in micro_batches:
            micro_grads, micro_loss = self._forward_backward(features, labels, weights, denominator)
            grads = micro_grads if grads is None else [a + b for a, b in zip(grads, micro_grads)]
            loss_sum += micro_loss
        # The global gradient, identical on every replica: clipping sees the true norm.
        grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        loss = tf.reduce_sum(context.all_reduce(tf.distribute.ReduceOp.SUM, loss_sum) / denominator)
        if self.loss_scale.enabled:
            grads = [g / self.loss_scale() for g in grads]
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
        norm = tf.linalg.global_norm(grads)
        if self.clipnorm:
            grads, _ = tf.clip_by_global_norm(grads, self.clipnorm, use_norm=norm)
        return grads, loss, norm, finite

    def _fused_step_fn(self, micro_batches):
        grads, loss, norm, finite = self.replica_step(micro_batches)
        # A non-finite step (float16 overflow, or a NaN loss) never touches the weights. In XLA
        # a select costs nothing; outside it a conditional skips three passes over the weights.
        ok = finite & tf.math.is_finite(loss)
        if self.jit_compile:
            self.optimizer.apply_where(grads, ok)
        else:
            self.optimizer.apply_if(grads, ok)
        self.loss_scale.update(finite)
        self.step.assign_add(1)
        return loss, norm

    def split_for_replicas(self, batch):
        """A worker's batch as one equal slice per local replica (unchanged for one replica).
        With `data.sharding=global_batch` the batch is the global one: the worker's rows
        are its slice of it."""
        workers = self.worker.num_workers
        if self.global_batches and workers > 1:
            share = self.task.config.data.global_batch_size // workers
            rows = slice(self.worker.worker_index * share, (self.worker.worker_index + 1) * share)
            batch = tf.nest.map_structure(lambda t: t[rows], batch)
        replicas = self.worker.num_local_replicas
        if replicas == 1:
            return batch

        def replica_value(context):
            index = context.replica_id_in_sync_group % replicas
            return tf.nest.map_structure(lambda t: tf.split(t, replicas)[index], batch)

        return self.strategy.experimental_distribute_values_from_function(replica_value)

    def local(self, value):
        """This worker's first replica's copy of a per-replica value."""
        return self.strategy.experimental_local_results(value)[0]

    def train_step(self, iterator=None):
        """One optimizer step (all micro-batches); returns the loss and the gradient norm."""
        iterator = self.iterator if iterator is None else iterator
        micro = [self.split_for_replicas(next(iterator)) for _ in range(self.accumulation_steps)]
        if self.fused:
            return self.strategy.run(self._fused_step, args=(micro,))
        grads, loss, norm, finite = self.strategy.run(self.replica_step, args=(micro,))
        finite, loss = self.local(finite), self.local(loss)
        # Cross-replica context: one update with the summed, clipped gradients. A non-finite
        # step (float16 overflow, or a NaN loss) never touches the weights.
        self.optimizer.apply_if(grads, finite & tf.math.is_finite(loss), self.strategy)
        self.loss_scale.update(finite)
        self.step.assign_add(1)
        return loss, self.local(norm)

    def _train_loop_fn(self, num_steps):
        def body(i, losses, norms):
            loss, norm = self.train_step()
            return i + 1, losses.write(i, loss), norms.write(i, norm)

        state = (tf.constant(0), tf.TensorArray(tf.float32, size=num_steps),
                 tf.TensorArray(tf.float32, size=num_steps))
        _, losses, norms = tf.while_loop(lambda i, *_: i < num_steps, body, state)
        return losses.stack(), norms.stack()

    def skip_batch(self):
        """Draws (and drops) the batches of one step: a bad step's input, not trained on."""
        for _ in range(self.accumulation_steps):
            next(self.iterator)


def weight_sums(weights):
    """The sum of each sample-weight tensor of a batch (one per loss term), as a vector."""
    return tf.stack([tf.reduce_sum(tf.cast(w, tf.float32)) for w in tf.nest.flatten(weights)])
