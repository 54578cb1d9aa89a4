"""tflm-train: pretrains (causal or masked LM) or fine-tunes (classification) from a config.

    tflm-train --config_file=configs/tiny_gpt.yaml --model_dir=runs/tiny_gpt \\
        --params_override=trainer.train_steps=50,runtime.mixed_precision=bfloat16 \\
        --mode=train_and_eval

Modes: `train` (resumes from the latest checkpoint in --model_dir),
`eval` (the latest checkpoint on the held-out split), `train_and_eval`
(evaluates every `trainer.eval_every` steps and at the end). Writes the
resolved config to `model_dir/params.yaml`, checkpoints to
`model_dir/checkpoints`, TensorBoard logs to `model_dir/train` and
`model_dir/eval`, the tokenizer to `model_dir/tokenizer`, and the final model
to `model_dir/model.keras`. Fine-tuning starts from `model.init_checkpoint`
(a tflm model_dir: a run of this binary or a converted Hugging Face
checkpoint); a classifier's label names are saved in params.yaml and with
the model. On SIGTERM
it saves a checkpoint and exits with status 143, for the orchestrator to
restart it; the restarted run continues at the exact step and batch.
"""

import json
import os
import sys

import numpy as np
from absl import app, flags

from tflm.cli import common_flags

FLAGS = flags.FLAGS

flags.DEFINE_enum("mode", "train", ["train", "eval", "train_and_eval"], "What to run.")


def run_experiment(config, model_dir, mode="train", print_fn=print, strategy=None):
    """Runs `mode` for the experiment `config` in `model_dir`; returns the `Trainer`.

    `trainer.status` is "completed", "preempted" or "evaluated"; `trainer.eval_results`
    holds the last evaluation.
    """
    from tflm import config as config_lib
    from tflm.training.trainer import Trainer

    # Inputs, vocabulary and manifest are checked while the trainer builds its
    # dataset, before anything is written.
    trainer = Trainer(config, model_dir, strategy=strategy, print_fn=print_fn,
                      for_training=mode != "eval")
    if trainer.worker.is_chief and mode != "eval":  # evaluation leaves the run's files alone
        os.makedirs(model_dir, exist_ok=True)
        config_lib.save_experiment(config, os.path.join(model_dir, config_lib.PARAMS_FILE))
        tokenizer_dir = os.path.join(model_dir, config_lib.TOKENIZER_DIR)
        if not os.path.isdir(tokenizer_dir):
            trainer.tokenizer.save(tokenizer_dir)
    trainer.eval_results = None
    if mode == "eval":
        restored = trainer.checkpoints.restore() or _restore_saved_model(trainer, model_dir)
        if restored is None:
            raise config_lib.ConfigError(f"--mode=eval: no checkpoint in {model_dir}/checkpoints "
                                         "and no model.keras.")
        print_fn(f"tflm-eval: {restored}")
        trainer.eval_results = trainer.evaluate()
        trainer.status = "evaluated"
        return trainer
    trainable = sum(int(np.prod(v.shape)) for v in trainer.model.trainable_variables)
    print_fn(
        f"tflm-train: {config.model.task}, {trainer.model.count_params():,} parameters "
        f"({trainable:,} trained), "
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


def _restore_saved_model(trainer, model_dir):
    """Loads model_dir/model.keras (a converted checkpoint has no checkpoints/) into the
    trainer's model; returns its path, or None if there is none."""
    from tflm.models.pretrained import MODEL_FILE, copy_pretrained_weights, load_saved_model

    path = os.path.join(model_dir, MODEL_FILE)
    if not os.path.exists(path):
        return None
    copy_pretrained_weights(load_saved_model(path), trainer.model, where=path)
    return path


def main(argv):
    del argv
    from tflm import config as config_lib
    from tflm.data.classification import LabelledDataError
    from tflm.data.prepared import ManifestError
    from tflm.models.huggingface import CheckpointError as PretrainedError
    from tflm.training.checkpoints import CheckpointError
    from tflm.training.trainer import PREEMPTED_EXIT_CODE, TrainingError

    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir is required.")
    config = common_flags.load_config_or_exit("tflm-train")
    try:
        trainer = run_experiment(config, FLAGS.model_dir, FLAGS.mode,
                                 print_fn=lambda line: print(line, flush=True))
    except (config_lib.ConfigError, FileNotFoundError, ManifestError, CheckpointError,
            PretrainedError, LabelledDataError, TrainingError) as e:
        common_flags.exit_with_error("tflm-train", e)
    if trainer.status == "preempted":
        sys.exit(PREEMPTED_EXIT_CODE)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
