"""tflm-eval: evaluates a model_dir on held-out data and writes the results.

    tflm-eval --model_dir=runs/finetuned
    tflm-eval --model_dir=runs/finetuned --params_override=data.eval_input_path=test.jsonl

Reads `model_dir/params.yaml` (then any --config_file and --params_override
on top of it), restores the latest checkpoint (or `model.keras` of a
converted checkpoint) and evaluates the held-out split: perplexity for a
causal LM, masked-token accuracy for a masked LM, and accuracy, macro-F1,
per-class precision/recall/F1 and the confusion matrix for a classifier (each
task's `eval_report`).
Results go to `model_dir/eval_results.json` and TensorBoard (`model_dir/eval`); then a model
that generates text continues `trainer.sample_prompt`, if the config sets one.
The same as `tflm-train --mode=eval`, without restating the config.
"""

from absl import app, flags

from tflm.cli import common_flags
from tflm.experiment import load_model_dir_config, run_experiment

FLAGS = flags.FLAGS


def evaluate():
    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir is required.")
    config = load_model_dir_config(FLAGS.model_dir, FLAGS.config_file, FLAGS.params_override)
    return run_experiment(config, FLAGS.model_dir, "eval",
                          print_fn=lambda line: print(line, flush=True))


def main(argv):
    del argv
    common_flags.run_or_exit("tflm-eval", evaluate)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
