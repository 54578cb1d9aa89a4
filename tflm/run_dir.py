"""The run folder (`--model_dir`): the one module that knows its files.

Every file of a model_dir is read and written here, and nowhere else::

    model_dir/
      params.yaml            the resolved experiment (tflm-train writes it; eval, export and
                             fine-tuning read it back)
      tokenizer/             the tokenizer (`Tokenizer.save`), so the folder stands alone
      checkpoints/ckpt-N.*   model, optimizer, step and loss scale at step N
      checkpoints/ckpt-N.commit.json
                             step N's commit: written last, once the model state and every
                             worker's input position are whole; a checkpoint without it is
                             never restored (`tflm.training.checkpoints`)
      data/worker-i/ckpt-N.* worker i's input position at step N
      tmp/worker-i/          a non-chief worker's throwaway copy of checkpoints (multi-worker)
      checkpoints/ckpt-N_temp/, *.tmp
                             left by a save that was killed midway; the chief removes them
                             when the run starts again (`remove_partial_writes`)
      train/, eval/          TensorBoard logs
      model.keras            the finished task model (also the whole of a converted checkpoint)
      lora.safetensors       (model.finetune=lora) what the run trained: the LoRA factors and
                             the head (`tflm.models.lora`); with params.yaml, tokenizer/ and the
                             base model_dir its model.init_checkpoint names, the whole model
      eval_results.json      the last evaluation
      conversion.json        (converted checkpoints) the source, the tensors left out, the head

A tflm-train run prefers `checkpoints/` over `model.keras`, and both over `lora.safetensors`
(a LoRA run may keep only that); a converted Hugging Face checkpoint has only `model.keras`. `RunDir(path)` names each of these; the functions below read and write
them (whole files first written under a temporary name where a reader could see half of one).

Example:
>>> run = RunDir("runs/tiny_gpt")
>>> config = run.read_config()           # params.yaml, validated
>>> tokenizer = run.load_tokenizer(config)
"""

import json
import os
import shutil
import warnings

import keras
import tensorflow as tf

from tflm import config as config_lib
from tflm.data.tokenizer_utils import read_json_file
from tflm.data.tokenizers import load_tokenizer, make_tokenizer
from tflm.errors import MissingFileError, OutputExistsError, TflmError

PARAMS_FILE = "params.yaml"
TOKENIZER_DIR = "tokenizer"
CHECKPOINT_DIR = "checkpoints"
DATA_DIR = "data"
TMP_DIR = "tmp"
MODEL_FILE = "model.keras"
LORA_FILE = "lora.safetensors"
EVAL_RESULTS_FILE = "eval_results.json"
CONVERSION_FILE = "conversion.json"
HUGGINGFACE_CONFIG_FILE = "config.json"
CHECKPOINT_NAME = "ckpt"
COMMIT_SUFFIX = ".commit.json"


class RunDirError(TflmError, ValueError):
    """A model_dir is missing a file it needs, or is not a tflm model_dir; names the path."""


class RunDir:
    """The paths of one model_dir, and reading and writing its files."""

    def __init__(self, path):
        self.path = str(path)

    def __repr__(self):
        return f"RunDir({self.path!r})"

    # -- Paths. ----------------------------------------------------------------------------
    def join(self, *parts):
        return os.path.join(self.path, *parts)

    @property
    def params_path(self):
        return self.join(PARAMS_FILE)

    @property
    def tokenizer_dir(self):
        return self.join(TOKENIZER_DIR)

    @property
    def checkpoint_dir(self):
        return self.join(CHECKPOINT_DIR)

    @property
    def model_path(self):
        return self.join(MODEL_FILE)

    @property
    def lora_path(self):
        return self.join(LORA_FILE)

    @property
    def eval_results_path(self):
        return self.join(EVAL_RESULTS_FILE)

    def worker_data_dir(self, worker_index):
        """Where worker `worker_index` saves its input position."""
        return self.join(DATA_DIR, f"worker-{worker_index}")

    def worker_tmp_dir(self, worker_index):
        """Where a non-chief worker writes the checkpoint copy that is deleted right after."""
        return self.join(TMP_DIR, f"worker-{worker_index}")

    def summary_dir(self, name):
        """TensorBoard logs of `name` ("train" or "eval")."""
        return self.join(name)

    # -- What kind of folder. ---------------------------------------------------------------
    def has_params(self):
        return os.path.exists(self.params_path)

    def is_huggingface_checkpoint(self):
        """A Hugging Face checkpoint folder (config.json), not a tflm model_dir (params.yaml)."""
        if not os.path.isdir(self.path):
            raise MissingFileError(f"Pretrained model folder {self.path!r} does not exist.")
        return not self.has_params() and os.path.exists(self.join(HUGGINGFACE_CONFIG_FILE))

    # -- params.yaml. ------------------------------------------------------------------------
    def params_file(self):
        """The path of params.yaml; an error naming the folder if it has none."""
        if not self.has_params():
            raise RunDirError(f"{self.path}: no {PARAMS_FILE}; not a tflm model_dir (a "
                              "tflm-train run or a converted checkpoint).")
        return self.params_path

    def write_config(self, config):
        os.makedirs(self.path, exist_ok=True)
        config_lib.save_experiment(config, self.params_path)

    # -- tokenizer/. -------------------------------------------------------------------------
    def has_tokenizer(self):
        return os.path.isdir(self.tokenizer_dir)

    def tokenizer_kind(self):
        """The `data.tokenizer` name of the saved tokenizer (its tokenizer.json `kind`)."""
        try:
            kind = read_json_file(os.path.join(self.tokenizer_dir, "tokenizer.json"),
                                  "tokenizer config")["kind"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise config_lib.ConfigError(
                f"{self.tokenizer_dir}: no readable tokenizer.json ({e}).") from None
        return config_lib.TOKENIZER_ALIASES.get(kind, kind)

    def save_tokenizer(self, tokenizer):
        """Saves `tokenizer` unless the folder has one (a resumed run keeps its own)."""
        if not self.has_tokenizer():
            tokenizer.save(self.tokenizer_dir)

    def load_tokenizer(self, config):
        """The model_dir's own tokenizer/, else the one `config` names."""
        if self.has_tokenizer():
            return load_tokenizer(self.tokenizer_dir)
        return make_tokenizer(config.data.tokenizer, config.data.vocab_path)

    # -- checkpoints/ and data/. -------------------------------------------------------------
    def checkpoint_prefix(self, step):
        return os.path.join(self.checkpoint_dir, f"{CHECKPOINT_NAME}-{step}")

    def worker_data_prefix(self, worker_index, step):
        return os.path.join(self.worker_data_dir(worker_index), f"{CHECKPOINT_NAME}-{step}")

    def checkpoint_steps(self, include_input_positions=False):
        """Steps with any model checkpoint file (whole, partial or uncommitted), newest first;
        also those with only an input position if `include_input_positions`."""
        steps = set()
        patterns = [os.path.join(self.checkpoint_dir, f"{CHECKPOINT_NAME}-*")]
        if include_input_positions:
            patterns.append(os.path.join(self.join(DATA_DIR), "worker-*", f"{CHECKPOINT_NAME}-*"))
        for path in (p for pattern in patterns for p in tf.io.gfile.glob(pattern)):
            number = os.path.basename(path)[len(CHECKPOINT_NAME) + 1:].split(".", 1)[0]
            if number.isdigit():
                steps.add(int(number))
        return sorted(steps, reverse=True)

    def read_commit(self, step):
        """Step `step`'s commit record, or None if it was never committed."""
        path = self.checkpoint_prefix(step) + COMMIT_SUFFIX
        if not tf.io.gfile.exists(path):
            return None
        try:
            with tf.io.gfile.GFile(path) as f:
                return json.loads(f.read())
        except (ValueError, tf.errors.OpError):
            return None  # a torn commit record commits nothing

    def write_commit(self, step, record):
        """Commits step `step` (written under a temporary name, then renamed)."""
        path = self.checkpoint_prefix(step) + COMMIT_SUFFIX
        with tf.io.gfile.GFile(path + ".tmp", "w") as f:
            f.write(json.dumps(record, indent=2) + "\n")
        tf.io.gfile.rename(path + ".tmp", path, overwrite=True)

    def uncommit(self, step):
        """Removes step `step`'s commit record (before its files are written again)."""
        path = self.checkpoint_prefix(step) + COMMIT_SUFFIX
        if tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)

    def delete_checkpoint(self, step):
        """Removes step `step`'s commit record first, then its model files and every worker's
        input position."""
        self.uncommit(step)
        patterns = [self.checkpoint_prefix(step) + ".*",
                    os.path.join(self.join(DATA_DIR), "worker-*", f"{CHECKPOINT_NAME}-{step}.*")]
        for pattern in patterns:
            for path in tf.io.gfile.glob(pattern):
                tf.io.gfile.remove(path)

    def remove_partial_writes(self):
        """Removes what a save killed midway leaves behind: TensorFlow's `ckpt-N_temp/`
        folders (the model's and every worker's), torn commit records (`*.tmp`) and the
        workers' scratch copies (`tmp/`); returns the removed paths. Only safe while no
        worker of the run is saving (the caller makes sure)."""
        patterns = [os.path.join(self.checkpoint_dir, f"{CHECKPOINT_NAME}-*_temp*"),
                    os.path.join(self.checkpoint_dir, "*.tmp"),
                    os.path.join(self.join(DATA_DIR), "worker-*", f"{CHECKPOINT_NAME}-*_temp*")]
        removed = [path for pattern in patterns for path in tf.io.gfile.glob(pattern)]
        if tf.io.gfile.exists(self.join(TMP_DIR)):
            removed.append(self.join(TMP_DIR))
        for path in removed:
            if tf.io.gfile.isdir(path):
                tf.io.gfile.rmtree(path)
            else:
                tf.io.gfile.remove(path)
        return removed

    def move_checkpoints_aside(self, suffix):
        """Renames checkpoints/ and data/ to `<name>.<suffix>` (a deliberate start over keeps
        the old files); returns the new paths."""
        moved = []
        for name in (CHECKPOINT_DIR, DATA_DIR):
            if tf.io.gfile.exists(self.join(name)):
                tf.io.gfile.rename(self.join(name), self.join(f"{name}.{suffix}"))
                moved.append(self.join(f"{name}.{suffix}"))
        return moved

    def latest_checkpoint(self):
        """Path of the newest committed model checkpoint whose index exists, or None.
        (Training checks every tensor of it first: `TrainingCheckpoints.select`.)"""
        for step in self.checkpoint_steps():
            prefix = self.checkpoint_prefix(step)
            if self.read_commit(step) is not None and tf.io.gfile.exists(prefix + ".index"):
                return prefix
        return None

    # -- model.keras. ------------------------------------------------------------------------
    def has_saved_model(self):
        return tf.io.gfile.exists(self.model_path)

    def save_model(self, model):
        model.save(self.model_path)

    def load_saved_model(self):
        return load_keras_model(self.model_path)

    # -- eval_results.json and conversion.json. ----------------------------------------------
    def write_eval_results(self, results):
        with tf.io.gfile.GFile(self.eval_results_path, "w") as f:
            f.write(json.dumps(results, indent=2) + "\n")

    def write_conversion(self, extra):
        with open(self.join(CONVERSION_FILE), "w") as f:
            f.write(json.dumps(extra, indent=2) + "\n")


def load_keras_model(path):
    """`keras.saving.load_model` of a tflm task, quiet about a never-built optimizer (a
    converted checkpoint has no optimizer state, and Keras warns that it skips it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        return keras.saving.load_model(path)


def write_new_run_dir(output_dir, write):
    """Calls `write(RunDir)` on a temporary folder, then renames it to `output_dir`.

    An existing, non-empty `output_dir` is never overwritten; a failure leaves nothing.
    """
    if os.path.exists(output_dir) and os.listdir(output_dir):
        raise OutputExistsError(f"{output_dir} exists and is not empty; pick a new folder.")
    partial = output_dir.rstrip("/") + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    try:
        result = write(RunDir(partial))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if os.path.exists(output_dir):
        os.rmdir(output_dir)
    os.rename(partial, output_dir)
    return result
