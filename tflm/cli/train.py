"""tflm-train: trains and evaluates a causal or masked LM from an experiment config.

    tflm-train --config_file=configs/tiny_gpt.yaml --model_dir=runs/tiny_gpt \\
        --params_override=trainer.train_steps=50,runtime.mixed_precision=bfloat16 \\
        --mode=train_and_eval

Modes: `train` (resumes from the latest checkpoint in --model_dir),
`eval` (the latest checkpoint on the held-out split), `train_and_eval`
(evaluates every `trainer.eval_every` steps and at the end). Writes the
resolved config to `model_dir/params.yaml`, checkpoints to
`model_dir/checkpoints`, TensorBoard logs to `model_dir/train` and
`model_dir/eval`, and the final model to `model_dir/model.keras`. On SIGTERM
it saves a checkpoint and exits with status 143, for the orchestrator to
restart it; the restarted run continues at the exact step and batch.
"""

import json
import os
import sys

from absl import app, flags

from tflm.cli import common_flags

FLAGS = flags.FLAGS

flags.DEFINE_string("model_dir", None, "Where params.yaml, checkpoints and logs go.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "train_and_eval"], "What to run.")


def run_experiment(config, model_dir, mode="train", print_fn=print, strategy=None):
    """Runs `mode` for the experiment `config` in `model_dir`; returns the `Trainer`.

    `trainer.status` is "completed", "preempted" or "evaluated"; `trainer.eval_results`
    holds the last evaluation.
    """
    from tflm import config as config_lib
    from tflm.training.trainer import Trainer

    if config.model.task not in ("causal_lm", "masked_lm"):
        raise config_lib.ConfigError(
            f"model.task={config.model.task!r}: tflm-train pretrains causal_lm or masked_lm."
        )
    # Inputs, vocabulary and manifest are checked while the trainer builds its
    # dataset, before anything is written.
    trainer = Trainer(config, model_dir, strategy=strategy, print_fn=print_fn)
    if trainer.worker.is_chief:
        os.makedirs(model_dir, exist_ok=True)
        config_lib.save_experiment(config, os.path.join(model_dir, "params.yaml"))
    trainer.eval_results = None
    if mode == "eval":
        restored = trainer.checkpoints.restore()
        if restored is None:
            raise config_lib.ConfigError(f"--mode=eval: no checkpoint in {model_dir}/checkpoints.")
        print_fn(f"tflm-eval: {restored}")
        trainer.eval_results = trainer.evaluate()
        trainer.status = "evaluated"
        return trainer
    print_fn(
        f"tflm-train: {config.model.task}, {trainer.model.count_params():,} parameters, "
        f"{config.data.tokenizer} tokens from {config.data.input_path or 'the embedded corpus'}, "
        f"batch {config.data.global_batch_size} x {config.data.sequence_length}"
        f" x {config.trainer.gradient_accumulation_steps} micro-batches, "
        f"{trainer.strategy.num_replicas_in_sync} replica(s), {config.runtime.mixed_precision}"
    )
    trainer.status = trainer.train()
    if trainer.status == "completed" and mode == "train_and_eval":
        trainer.eval_results = trainer.evaluate()
    summary = dict(trainer.history[-1] if trainer.history else {}, status=trainer.status,
                   checkpoint=trainer.checkpoints.latest(), input=trainer.stats.as_dict())
    print_fn("tflm-train: " + json.dumps(summary))
    return trainer


def main(argv):
    del argv
    from tflm import config as config_lib
    from tflm.data.prepared import ManifestError
    from tflm.training.checkpoints import CheckpointError
    from tflm.training.trainer import PREEMPTED_EXIT_CODE, TrainingError

    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir is required.")
    config = common_flags.load_config_or_exit("tflm-train")
    try:
        trainer = run_experiment(config, FLAGS.model_dir, FLAGS.mode,
                                 print_fn=lambda line: print(line, flush=True))
    except (config_lib.ConfigError, FileNotFoundError, ManifestError, CheckpointError,
            TrainingError) as e:
        common_flags.exit_with_error("tflm-train", e)
    if trainer.status == "preempted":
        sys.exit(PREEMPTED_EXIT_CODE)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
