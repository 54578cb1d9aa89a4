"""tflm-train: trains a causal or masked LM from an experiment config.

    tflm-train --config_file=configs/tiny_gpt.yaml --model_dir=/tmp/tiny_gpt \\
        --params_override=trainer.train_steps=50

Reads text (the embedded corpus unless `data.input_path` is set), trains
with `model.fit`, prints loss and tokens/s, and writes `params.yaml` and
`model.keras` to `--model_dir`.
"""

import json
import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS

flags.DEFINE_string("config_file", None, "Experiment YAML; defaults apply where it is silent.")
flags.DEFINE_string(
    "params_override", "", "Overrides, e.g. trainer.train_steps=20,runtime.mixed_precision=float32."
)
flags.DEFINE_string("model_dir", None, "Where params.yaml and the trained model go.")
flags.DEFINE_enum("mode", "train", ["train"], "What to run.")


def train(config, model_dir, print_fn=print):
    """Trains the experiment `config`; returns the model and the logged records."""
    import keras

    from tflm import config as config_lib
    from tflm.data import ByteTokenizer, causal_lm_dataset, masked_lm_dataset, resolve_files
    from tflm.models.factory import build_task
    from tflm.training.callbacks import ThroughputLogger
    from tflm.training.flops import training_flops_per_token
    from tflm.training.optimizer import make_adamw

    if config.model.task not in ("causal_lm", "masked_lm"):
        raise config_lib.ConfigError(
            f"model.task={config.model.task!r}: tflm-train pretrains causal_lm or masked_lm."
        )
    tokenizer = ByteTokenizer()
    if config.model.vocabulary_size < tokenizer.vocabulary_size:
        raise config_lib.ConfigError(
            f"model.vocabulary_size={config.model.vocabulary_size} is smaller than the "
            f"{config.data.tokenizer!r} tokenizer's {tokenizer.vocabulary_size} ids."
        )
    files = resolve_files(config.data.input_path)  # a bad glob fails before anything is written
    os.makedirs(model_dir, exist_ok=True)
    config_lib.save_experiment(config, os.path.join(model_dir, "params.yaml"))
    keras.utils.set_random_seed(config.runtime.seed)

    data = config.data
    if config.model.task == "causal_lm":
        dataset = causal_lm_dataset(
            files, tokenizer, data.sequence_length, data.global_batch_size,
            seed=config.runtime.seed, shuffle_buffer_size=data.shuffle_buffer_size,
        )
    else:
        dataset = masked_lm_dataset(
            files, tokenizer, data.sequence_length, data.global_batch_size,
            max_predictions=data.max_predictions_per_seq, mask_rate=data.mask_rate,
            seed=config.runtime.seed, shuffle_buffer_size=data.shuffle_buffer_size,
        )

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
        f"{len(files)} input file(s), batch {data.global_batch_size} x {data.sequence_length}, "
        f"{trainer.train_steps} steps, {config.runtime.mixed_precision}"
    )
    model.fit(dataset, steps_per_epoch=trainer.train_steps, epochs=1, callbacks=[logger], verbose=0,
              shuffle=False)
    model.save(os.path.join(model_dir, "model.keras"))
    summary = dict(logger.history[-1], model_dir=model_dir)
    print_fn(json.dumps(summary))
    return model, logger.history


def main(argv):
    del argv
    from tflm import config as config_lib

    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir is required.")
    try:
        config = config_lib.load_experiment(FLAGS.config_file, FLAGS.params_override)
        train(config, FLAGS.model_dir, print_fn=lambda line: print(line, flush=True))
    except (config_lib.ConfigError, FileNotFoundError) as e:
        # One line naming the key or file, not a traceback or the whole flag list.
        print(f"tflm-train: error: {e}", file=sys.stderr)
        sys.exit(2)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
