"""tflm-eval: evaluates a model_dir on held-out data and writes the results.

    tflm-eval --model_dir=runs/finetuned
    tflm-eval --model_dir=runs/finetuned --params_override=data.eval_input_path=test.jsonl

Reads `model_dir/params.yaml` (then any --config_file and --params_override
on top of it), restores the latest checkpoint (or `model.keras` of a
converted checkpoint) and evaluates the held-out split: perplexity for a
causal LM, masked-token accuracy for a masked LM, and accuracy, macro-F1,
per-class precision/recall/F1 and the confusion matrix for a classifier.
Results go to `model_dir/eval_results.json` and TensorBoard (`model_dir/eval`).
The same as `tflm-train --mode=eval`, without restating the config.
"""

from absl import app, flags

from tflm.cli import common_flags

FLAGS = flags.FLAGS


def main(argv):
    del argv
    from tflm import config as config_lib
    from tflm.cli.train import run_experiment
    from tflm.data.classification import LabelledDataError
    from tflm.models.huggingface import CheckpointError as PretrainedError
    from tflm.training.checkpoints import CheckpointError
    from tflm.training.trainer import TrainingError

    common_flags.quiet_tensorflow_logs()
    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir is required.")
    try:
        config = config_lib.load_model_dir_config(FLAGS.model_dir, FLAGS.config_file,
                                                  FLAGS.params_override)
        run_experiment(config, FLAGS.model_dir, "eval",
                       print_fn=lambda line: print(line, flush=True))
    except (config_lib.ConfigError, FileNotFoundError, CheckpointError, PretrainedError,
            LabelledDataError, TrainingError) as e:
        common_flags.exit_with_error("tflm-eval", e)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
