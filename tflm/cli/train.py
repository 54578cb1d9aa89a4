"""tflm-train: trains a causal or masked LM from an experiment config.

    tflm-train --config_file=configs/tiny_gpt.yaml --model_dir=/tmp/tiny_gpt \\
        --params_override=trainer.train_steps=50

Reads text (the embedded corpus unless `data.input_path` is set), trains
with `model.fit`, prints loss and tokens/s, and writes `params.yaml` and
`model.keras` to `--model_dir`.
"""

import json
import os

from absl import app, flags

from tflm.cli import common_flags

FLAGS = flags.FLAGS

flags.DEFINE_string("model_dir", None, "Where params.yaml and the trained model go.")
flags.DEFINE_enum("mode", "train", ["train"], "What to run.")


def train(config, model_dir, print_fn=print):
    """Trains the experiment `config`; returns the model and the logged records."""
    import keras

    from tflm import config as config_lib
    from tflm.data import InputStats, make_dataset
    from tflm.models.factory import build_task
    from tflm.training.callbacks import ThroughputLogger
    from tflm.training.flops import training_flops_per_token
    from tflm.training.optimizer import make_adamw

    if config.model.task not in ("causal_lm", "masked_lm"):
        raise config_lib.ConfigError(
            f"model.task={config.model.task!r}: tflm-train pretrains causal_lm or masked_lm."
        )
    # Inputs, vocabulary and manifest are checked here, before anything is written.
    stats = InputStats()
    dataset = make_dataset(config, stats=stats)
    os.makedirs(model_dir, exist_ok=True)
    config_lib.save_experiment(config, os.path.join(model_dir, "params.yaml"))
    keras.utils.set_random_seed(config.runtime.seed)
    data = config.data

    model = build_task(config.model, dtype=config.runtime.mixed_precision)
    trainer = config.trainer
    model.compile(
        optimizer=make_adamw(
            model,
            learning_rate=trainer.learning_rate,
            weight_decay=trainer.weight_decay,
            clipnorm=trainer.clipnorm,
        )
    )
    logger = ThroughputLogger(
        tokens_per_step=data.global_batch_size * data.sequence_length,
        log_every=min(trainer.log_every, trainer.train_steps),
        flops_per_token=training_flops_per_token(model.backbone, data.sequence_length),
        print_fn=print_fn,
    )
    print_fn(
        f"tflm-train: {config.model.task}, {model.count_params():,} parameters, "
        f"{data.tokenizer} tokens from {data.input_path or 'the embedded corpus'}, "
        f"batch {data.global_batch_size} x {data.sequence_length}, "
        f"{trainer.train_steps} steps, {config.runtime.mixed_precision}"
    )
    model.fit(dataset, steps_per_epoch=trainer.train_steps, epochs=1, callbacks=[logger], verbose=0,
              shuffle=False)
    model.save(os.path.join(model_dir, "model.keras"))
    summary = dict(logger.history[-1], model_dir=model_dir, input=stats.as_dict())
    print_fn(json.dumps(summary))
    return model, logger.history


def main(argv):
    del argv
    from tflm import config as config_lib
    from tflm.data.prepared import ManifestError

    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir is required.")
    config = common_flags.load_config_or_exit("tflm-train")
    try:
        train(config, FLAGS.model_dir, print_fn=lambda line: print(line, flush=True))
    except (config_lib.ConfigError, FileNotFoundError, ManifestError) as e:
        common_flags.exit_with_error("tflm-train", e)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
