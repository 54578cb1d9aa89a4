"""tflm-train: pretrains (causal or masked LM) or fine-tunes (classification, ...) from a config.

    tflm-train --config_file=configs/tiny_gpt.yaml --model_dir=runs/tiny_gpt \\
        --params_override=trainer.train_steps=50,runtime.mixed_precision=bfloat16 \\
        --mode=train_and_eval

Modes: `train` (resumes from the latest checkpoint in --model_dir),
`eval` (the latest checkpoint on the held-out split), `train_and_eval`
(evaluates every `trainer.eval_every` steps and at the end, then, for a task that generates
text, prints the model's greedy continuation of `trainer.sample_prompt` if the config sets
one). The run folder's files are `tflm.run_dir`'s: the resolved config (params.yaml), checkpoints,
input positions, TensorBoard logs, the tokenizer and the final model.keras.
Fine-tuning starts from `model.init_checkpoint` (a tflm model_dir: a run of
this binary or a converted Hugging Face checkpoint); a classifier's label
names are saved in params.yaml and with the model. On SIGTERM or SIGINT to any
worker every worker saves the same step and exits with status 143, for the
orchestrator to restart it; the restarted run continues at the exact step and
batch (on another number of workers with data.sharding=global_batch). Under
runtime.distribution_strategy=parameter_server the binary on a worker or ps
task only serves the chief.
"""

import sys

from absl import app, flags

from tflm.cli import common_flags
from tflm.experiment import run_experiment
from tflm.training.trainer import PREEMPTED_EXIT_CODE

FLAGS = flags.FLAGS

flags.DEFINE_enum("mode", "train", ["train", "eval", "train_and_eval"], "What to run.")


def train():
    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir is required.")
    return run_experiment(common_flags.load_config(), FLAGS.model_dir, FLAGS.mode,
                          print_fn=lambda line: print(line, flush=True))


def main(argv):
    del argv
    trainer = common_flags.run_or_exit("tflm-train", train)
    if trainer.status == "preempted":
        sys.exit(PREEMPTED_EXIT_CODE)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
