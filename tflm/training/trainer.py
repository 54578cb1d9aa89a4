"""Trainer: the distributed training loop behind `tflm-train`, read top to bottom.

A tflm task's `model.fit` runs under every strategy (`tflm.models.task` works around
Keras 3's failure under MultiWorkerMirroredStrategy), but a run that must survive kills
needs more than `fit` keeps: every worker's input position committed with the model,
agreement on preemption, the NaN guard. The trainer drives the same model objects with
its own loop, in three parts:

- the step (`tflm.training.step.TrainStep`): forward, backward, all-reduce,
  clipping and the AdamW update, per replica or fused into one XLA computation
  on one device; `train_loop(n)` runs n steps in one compiled call;
- the driver (`Trainer.train` below): calls `train_loop` up to the next
  log / checkpoint / evaluation boundary, then runs the actions;
- the actions (`tflm.training.actions`): progress line and TensorBoard,
  checkpoint, evaluation (orbit actions made periodic by orbit's
  `ConditionalAction`), the NaN guard and the SIGTERM handler.

Under ParameterServerStrategy the driver is the chief's: each step of a call is
scheduled on a free worker (`ClusterCoordinator.schedule` of `TrainStep.scheduled_step`)
and the actions run once all are done; the workers' input positions are not saved, so a
resume restores the model state only.

Everything that depends on the task (`tflm.tasks`) comes from the task
object: its model (from `model.init_checkpoint` on a fresh run, with the
parts `model.finetune` names frozen), its input pipeline, its loss (and with
`trainer.distill_from` its teacher and soft loss) and its evaluation report. The
trainer knows no task by name.

Why not orbit's Controller and its `SaveCheckpointIfPreempted`: the driver here is orbit's
loop (call, then actions) with two things the Controller does not do. A checkpoint is every
worker's input position and the model state, committed after a barrier
(`TrainingCheckpoints`), which the Controller's single `tf.train.CheckpointManager` on a
`checkpoint_interval` cannot express; and the NaN guard must see every step's loss of a call
and rewind the run (restore, replay, skip a batch) before any action sees the step, where the
Controller only hands actions the call's output after advancing. `SaveCheckpointIfPreempted`
wraps `tf.distribute.experimental.PreemptionCheckpointHandler`, which saves one
`CheckpointManager` (again without the input positions or the commit) and needs a cluster
resolver with the coordination service. Here a signal (SIGTERM or SIGINT) to any worker is
a flag that the workers combine (`WorkerAgreement.max`) at each call boundary, so all of
them save the same step and exit with status 143.
Speed is no reason either way: orbit's Controller driving this same compiled step took
9.75 s for 200 tiny_gpt steps (10 per call), this driver 9.85 s (medians of 3, 2-core CPU).
"""

import json

import keras
import numpy as np
import tensorflow as tf

from tflm.data.stats import InputStats
from tflm.errors import TflmError
from tflm.models.lora import has_lora, save_lora
from tflm.run_dir import RunDir
from tflm.training.actions import (
    NaNGuard,
    PreemptionHandler,
    ProgressLogger,
    SummaryWriter,
    periodic,
)
from tflm.training.checkpoints import CheckpointError, TrainingCheckpoints, select_checkpoint
from tflm.training.flops import peak_flops_per_device, training_flops_per_token
from tflm.training.optimizer import make_trainer_optimizer
from tflm.training.precision import DynamicLossScale
from tflm.training.step import TrainStep
from tflm.training.strategy import (
    WorkerAgreement,
    is_parameter_server,
    make_strategy,
    step_jit_compile,
    worker_info,
)

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: the orchestrator sees a kill and restarts the job


class TrainingError(TflmError, RuntimeError):
    """Training cannot go on (non-finite loss); the message says where and what to do."""


class Trainer:
    """Trains a task's experiment in `model_dir`, resuming from its latest checkpoint.

    Args:
        task: a `tflm.tasks.Task` (`get_task(config)`); `task.config` is the experiment.
        model_dir: checkpoints, data positions, TensorBoard logs and results go here
            (`tflm.run_dir`).
        strategy: a `tf.distribute.Strategy`; default from `runtime.distribution_strategy`.
        dataset_fn: `input_context -> tf.data.Dataset` of this worker's share of
            each global batch (with `data.sharding=global_batch`: of the whole global
            batches, of which each worker keeps its rows); default the task's `dataset(...)`.
        eval_dataset_fn: the same for evaluation batches.
        print_fn: where progress lines go.
        for_training: False to only evaluate (no training input pipeline is built).

    Example:
    >>> config = tflm.experiment.load_experiment("configs/tiny_gpt.yaml")
    >>> trainer = Trainer(tflm.tasks.get_task(config), "runs/tiny_gpt")
    >>> trainer.train()
    >>> trainer.evaluate()   # {"loss": ..., "perplexity": ..., "accuracy": ...}
    """

    def __init__(self, task, model_dir, strategy=None, dataset_fn=None, eval_dataset_fn=None,
                 print_fn=print, for_training=True):
        config = task.config
        self.task = task
        self.config = config
        self.model_dir = model_dir
        self.run_dir = RunDir(model_dir)
        self.print_fn = print_fn
        self.strategy = strategy or make_strategy(config.runtime)
        self.worker = worker_info(self.strategy)
        # Before anything is built: the replica count is known only now.
        self.worker.check_global_batch_size(config.data.global_batch_size)
        trainer = config.trainer
        keras.utils.set_random_seed(config.runtime.seed)
        self.tokenizer = task.make_tokenizer()
        self.agreement = WorkerAgreement(self.strategy)
        # Parameter servers: this chief schedules each step on a free worker.
        self.coordinator = None
        if is_parameter_server(self.strategy):
            self.coordinator = tf.distribute.coordinator.ClusterCoordinator(self.strategy)
        # A resumed run continues from its newest whole checkpoint (agreed by every worker);
        # a fresh run starts from model.init_checkpoint.
        self.resume = None
        if for_training:
            self.resume = select_checkpoint(
                self.run_dir, self.worker, self.agreement, config.data.sharding,
                trainer.on_input_position_mismatch, trainer.start_over_if_unrestorable,
                print_fn, input_positions=self.coordinator is None)
        source = None
        if for_training and self.resume is None:
            source = task.load_init_checkpoint()

        with self.strategy.scope():
            self.model = task.build_model(dtype=config.runtime.mixed_precision, source=source,
                                          print_fn=print_fn)
            self.optimizer = make_trainer_optimizer(trainer, self.model)
            # trainer.distill_from: in this scope, so that its forward runs inside the
            # distributed step; frozen, and not part of the checkpoints.
            self.teacher = (task.load_teacher(self.tokenizer, config.runtime.mixed_precision)
                            if for_training else None)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step",
                                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self.loss_scale = DynamicLossScale(
                config.runtime.initial_loss_scale, config.runtime.loss_scale_growth_interval,
                enabled=config.runtime.mixed_precision == "mixed_float16",
            )

        self.stats = InputStats()
        if dataset_fn is None:
            def dataset_fn(context):
                return task.dataset(self.tokenizer, input_context=context, stats=self.stats,
                                    split="train")
        self._eval_dataset_fn = eval_dataset_fn
        # Evaluation alone needs no training data (nor its position in checkpoints).
        self.dataset = self.iterator = None
        if for_training and self.coordinator is not None:
            # One pipeline per worker, on the worker; their positions cannot be saved.
            self.dataset = self.coordinator.create_per_worker_dataset(
                lambda: self.strategy.distribute_datasets_from_function(dataset_fn))
            self.iterator = iter(self.dataset)
        elif for_training:
            self.dataset = dataset_fn(self.worker.input_context())
            self.iterator = iter(self.dataset)
        self.checkpoints = TrainingCheckpoints(
            self.run_dir, self.worker, self.agreement,
            dict(model=self.model, optimizer=self.optimizer, step=self.step,
                 loss_scale=self.loss_scale),
            self.iterator if self.coordinator is None else None, self.step,
            keep=trainer.keep_checkpoints,
            data_sharding=config.data.sharding, resume=self.resume,
        )

        self.jit_compile = step_jit_compile(trainer.jit_compile, config.runtime.mixed_precision,
                                            self.strategy)
        self.train_step = TrainStep(task, self.model, self.optimizer, self.loss_scale,
                                    self.step, self.strategy, self.worker, self.iterator,
                                    self.jit_compile, teacher=self.teacher)
        self._eval_step = tf.function(self._eval_step_fn, autograph=False)
        self.tokens_per_step = (config.data.global_batch_size * config.data.sequence_length
                                * trainer.gradient_accumulation_steps)
        self.flops_per_token = training_flops_per_token(
            self.model.backbone, config.data.sequence_length, task.projected_share)
        self.peak_flops = peak_flops_per_device(config.runtime.peak_tflops)
        if self.peak_flops:
            self.peak_flops *= self.strategy.num_replicas_in_sync
        self.writer = SummaryWriter(self.run_dir, self.worker.is_chief)
        self.logger = ProgressLogger(self.optimizer, self.loss_scale, trainer.train_steps,
                                     self.tokens_per_step, self.flops_per_token, self.peak_flops,
                                     self.writer, print_fn, start_step=0)
        self.history = self.logger.history
        self.nan_guard = NaNGuard(trainer, self.checkpoints, self.train_step, print_fn,
                                  TrainingError)

    # -- The host loop. -------------------------------------------------------------------
    def train(self, until_step=None):
        """Trains up to `trainer.train_steps`; returns "completed", "stopped" or "preempted".

        `until_step` stops earlier (saving a checkpoint) so a run can be trained
        in pieces; the learning-rate schedule still spans `trainer.train_steps`.
        """
        trainer = self.config.trainer
        last_step = min(trainer.train_steps, until_step or trainer.train_steps)
        restored = self.checkpoints.restore()
        start = int(self.step.numpy())
        if restored:
            self.print_fn(f"tflm-train: resumed from {restored} at step {start}")
        elif trainer.recover_on_nan:
            self.checkpoints.save()  # a good state to fall back to from the first step
        self.logger.restart(start)
        actions = [
            periodic(trainer.log_every, self.logger, trainer.train_steps),
            periodic(trainer.checkpoint_every, lambda output: self.checkpoints.save(), last_step),
        ]
        if trainer.eval_every and self._eval_dataset_ready():
            actions.append(periodic(trainer.eval_every, lambda output: self.evaluate()))
        status = "completed"
        self.batches_consumed = 0
        with PreemptionHandler() as preemption:
            while int(self.step.numpy()) < last_step:
                step = int(self.step.numpy())
                count = min(self._steps_until_boundary(step), last_step - step)
                self.batches_consumed += count  # drawn from the input, skipped ones included
                if self.coordinator is None:
                    losses, norms = self.train_step.train_loop(tf.constant(count, tf.int32))
                    losses, norms = losses.numpy(), norms.numpy()
                    if self.nan_guard(step, losses):
                        continue  # rewound to the step before the bad one, its batch skipped
                else:
                    losses, norms = self._parameter_server_steps(count)
                output = {"step": step + count, "loss": losses[-1], "grad_norm": norms[-1]}
                for action in actions:
                    action(output)
                # A signal to any one worker stops them all at the same step.
                if self.agreement.max(float(preemption.requested)):
                    path = self.checkpoints.save()
                    why = (preemption.signal_name if preemption.requested
                           else "another worker was signalled")
                    self.print_fn(f"tflm-train: {why}: saved {path} at step {step + count}; "
                                  "exiting")
                    status = "preempted"
                    break
        if status == "completed" and int(self.step.numpy()) < trainer.train_steps:
            status = "stopped"
        if status == "completed" and self.worker.is_chief:
            self.run_dir.save_model(self.model)
            if has_lora(self.model):  # the small file that, with the base, is the model
                save_lora(self.model, self.run_dir.lora_path)
        return status

    def consumed(self):
        """What the steps of the last `train()` took from the input (the pipeline's own
        counters, `self.stats`, count what it read, which runs ahead)."""
        batches = getattr(self, "batches_consumed", 0)
        data = self.config.data
        micro = batches * self.config.trainer.gradient_accumulation_steps
        return {"global_batches": micro, "examples": micro * data.global_batch_size,
                "positions": batches * self.tokens_per_step}

    def _parameter_server_steps(self, count):
        """`count` steps scheduled on the workers (each takes the next as it is free), then
        waits for all. A step with a non-finite loss changes no weight (the step checks); it
        stops the run unless `trainer.recover_on_nan`, as there is no replay here: steps run
        in parallel on the state each worker last read."""
        scheduled = [self.coordinator.schedule(self.train_step.scheduled_step,
                                               args=(self.iterator,)) for _ in range(count)]
        self.coordinator.join()
        losses, norms = (np.array(values, np.float64) for values in zip(
            *[[float(t) for t in result.fetch()] for result in scheduled]))
        finite = np.isfinite(losses)
        bad = int(np.sum(~finite))
        if bad and not self.config.trainer.recover_on_nan:
            raise TrainingError(f"loss is {losses[~finite][0]} in {bad} of the last {count} "
                                "steps; their updates were not applied. Lower "
                                "trainer.learning_rate, check the data, or set "
                                "trainer.recover_on_nan=true to skip such steps.")
        if bad:
            self.print_fn(f"tflm-train: {bad} steps with a non-finite loss skipped")
        if not finite.any():
            return np.array([np.nan]), np.array([np.nan])
        return losses[finite], norms[finite]

    def _steps_until_boundary(self, step):
        """Steps in the next call: up to steps_per_loop, stopping at log/checkpoint/eval/end."""
        trainer = self.config.trainer
        count = min(trainer.steps_per_loop, trainer.train_steps - step)
        for every in (trainer.log_every, trainer.checkpoint_every, trainer.eval_every):
            if every:
                count = min(count, every - step % every)
        return max(count, 1)

    # -- Evaluation. ----------------------------------------------------------------------
    def _eval_dataset_ready(self):
        data = self.config.data
        return bool(self._eval_dataset_fn or data.eval_input_path or data.eval_every_nth_document)

    def _eval_step_fn(self, batch):
        if self.coordinator is not None:
            # Parameter servers: the chief evaluates, reading the variables from the ps tasks.
            features, labels, weights = batch
            outputs = self.model(features, training=False)
            return self.task.eval_sums(self.model, labels, outputs, weights)

        def replica(features, labels, weights):
            outputs = self.model(features, training=False)
            sums = self.task.eval_sums(self.model, labels, outputs, weights)
            context = tf.distribute.get_replica_context()
            return context.all_reduce(tf.distribute.ReduceOp.SUM, sums)

        return self.train_step.local(self.strategy.run(replica, args=batch))

    def _trace_eval_step(self, element_spec):
        """Traces the evaluation step once for batches of any size: else the split's last,
        shorter batch traces it again (a second of tracing on the tiny BERT)."""
        specs = tf.nest.flatten(element_spec)
        if self.worker.num_local_replicas > 1 or not all(
                isinstance(s, tf.TensorSpec) and s.shape.rank for s in specs):
            return  # per-replica values, ragged or unbatched: traced as they come
        open_batch = [tf.TensorSpec([None, *s.shape[1:]], s.dtype) for s in specs]
        self._eval_step.get_concrete_function(
            tf.nest.pack_sequence_as(element_spec, open_batch))

    def evaluate(self, num_steps=None):
        """Metrics of the task on the held-out split (`Task.eval_report`: perplexity for
        the language models, accuracy and F1 for classifiers, ...; and
        `Task.generation_report`: BLEU, ROUGE, ... of decoded text). Results go to the log,
        to TensorBoard under `model_dir/eval` (the numbers only, not sacrebleu's signatures
        nor samples), and to `model_dir/eval_results.json`.
        """
        num_steps = num_steps or self.config.trainer.eval_steps
        if self.worker.num_workers > 1 and not num_steps:
            raise TrainingError("Under multi-worker every worker must run the same number of "
                                "evaluation batches: set trainer.eval_steps.")
        if self._eval_dataset_fn is not None:
            dataset = self._eval_dataset_fn(self.worker.input_context())
        else:
            dataset = self.task.dataset(self.tokenizer, input_context=self.worker.input_context(),
                                        training=self.worker.num_workers > 1, split="eval")
        if num_steps:
            dataset = dataset.take(num_steps)
        self._trace_eval_step(dataset.element_spec)
        totals = None
        for batch in dataset:
            sums = self._eval_step(self.train_step.split_for_replicas(batch)).numpy().astype(np.float64)
            totals = sums if totals is None else totals + sums
        if totals is None or totals[1] == 0:
            raise TrainingError("The evaluation split is empty.")
        results = {"step": int(self.step.numpy()), **self.task.eval_report(self.model, totals),
                   **self.task.generation_report(self.model, self.tokenizer)}
        line = {k: v for k, v in results.items()
                if k not in ("per_class", "confusion_matrix", "samples")}
        self.print_fn("tflm-eval: " + json.dumps(line))
        self.writer.write("eval", results["step"], results)
        if self.worker.is_chief:
            self.run_dir.write_eval_results(results)
            self.task.after_evaluation(self.model, results, self.run_dir)
        return results


__all__ = ["CheckpointError", "PREEMPTED_EXIT_CODE", "Trainer", "TrainingError"]
