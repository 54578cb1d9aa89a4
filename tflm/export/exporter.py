"""Exports a trained model as a versioned SavedModel that TF Serving serves as text in, text out.

    export_dir/
      <version>/                     # TF Serving serves the highest version
        saved_model.pb, variables/   # signatures of `tflm.export.serving`
        assets.extra/
          tf_serving_warmup_requests # one request per signature, replayed at load
          ops.txt                    # every op in the graph, checked against the server's

The version folder is written under a temporary name and renamed when
complete, so a server polling `export_dir` never loads half a model.
"""

import os
import shutil

import numpy as np
import tensorflow as tf

from tflm.export.op_check import DEFAULT_RELEASE, check_ops
from tflm.export.serving import CausalLMServing, ClassifierServing, MaskedLMServing
from tflm.models import CausalLM, MaskedLM, SequenceClassifier


class ExportError(ValueError):
    """The model cannot be exported as asked; the message says why."""


def serving_module(model, tokenizer, label_names=None, num_beams=4):
    """The serving module for the model's task."""
    if isinstance(model, CausalLM):
        return CausalLMServing(model, tokenizer, num_beams=num_beams)
    if isinstance(model, MaskedLM):
        return MaskedLMServing(model, tokenizer)
    if isinstance(model, SequenceClassifier):
        return ClassifierServing(model, tokenizer, label_names)
    raise ExportError(f"Cannot export a {type(model).__name__}: expected a tflm task model.")


def warmup_inputs(module):
    """One small, valid request per signature, as `(signature, {input: value})`."""
    text = np.array([b"It is a truth universally acknowledged", b""])
    if isinstance(module, CausalLMServing):
        return [
            ("generate", {"prompts": text, "max_new_tokens": np.int32(4),
                          "temperature": np.float32(0.0), "top_k": np.int32(0),
                          "top_p": np.float32(1.0), "seed": np.int64(0)}),
            ("beam_search", {"prompts": text, "max_new_tokens": np.int32(4),
                             "length_penalty": np.float32(0.6)}),
            ("score", {"text": text}),
        ]
    if isinstance(module, MaskedLMServing):
        return [("fill_mask", {"text": np.array([b"It is a [MASK] universally acknowledged"]),
                               "top_k": np.int32(5)}),
                ("encode", {"text": text})]
    return [("classify", {"text": text})]


def next_version(export_dir):
    """One more than the highest numeric version folder in `export_dir` (1 if none)."""
    if not tf.io.gfile.isdir(export_dir):
        return 1
    versions = [int(name.strip("/")) for name in tf.io.gfile.listdir(export_dir)
                if name.strip("/").isdigit()]
    return max(versions, default=0) + 1


def export_saved_model(model, tokenizer, export_dir, version=None, label_names=None, num_beams=4,
                       serving_release=DEFAULT_RELEASE, warmup=True):
    """Writes `export_dir/<version>/`; returns its path.

    Raises:
        ExportError: the version exists already.
        UnsupportedOpError: the graph has an op the target TF Serving lacks.
    """
    module = serving_module(model, tokenizer, label_names, num_beams)
    version = int(version) if version is not None else next_version(export_dir)
    path = os.path.join(export_dir, str(version))
    if tf.io.gfile.exists(path):
        raise ExportError(f"{path} exists: a served version is never overwritten; pick another.")
    partial = os.path.join(export_dir, f".partial-{version}")
    if tf.io.gfile.exists(partial):
        tf.io.gfile.rmtree(partial)
    tf.io.gfile.makedirs(export_dir)
    try:
        tf.saved_model.save(module, partial, signatures=module.signatures())
        ops = check_ops(partial, serving_release)
        extra = os.path.join(partial, "assets.extra")
        tf.io.gfile.makedirs(extra)
        with tf.io.gfile.GFile(os.path.join(extra, "ops.txt"), "w") as f:
            f.write("\n".join(ops) + "\n")
        if warmup:
            from tflm.export.warmup import write_warmup_requests

            write_warmup_requests(partial, warmup_inputs(module))
    except Exception:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    tf.io.gfile.rename(partial, path)
    return path


def load_trained(model_dir):
    """`(model, tokenizer, config)` of a `tflm-train` run: params.yaml, then model.keras or the
    latest checkpoint, and the configured tokenizer."""
    import keras

    from tflm.config import load_experiment
    from tflm.data.tokenizers import make_tokenizer
    from tflm.models.factory import build_task

    params = os.path.join(model_dir, "params.yaml")
    if not tf.io.gfile.exists(params):
        raise ExportError(f"{model_dir}: no params.yaml; not a tflm-train model_dir.")
    config = load_experiment(params)
    tokenizer = make_tokenizer(config.data.tokenizer, config.data.vocab_path)
    saved = os.path.join(model_dir, "model.keras")
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    if latest is not None:
        model = build_task(config.model)
        tf.train.Checkpoint(model=model).restore(latest).expect_partial()
    elif tf.io.gfile.exists(saved):
        model = keras.saving.load_model(saved)
    else:
        raise ExportError(f"{model_dir}: neither checkpoints/ nor model.keras to export.")
    return model, tokenizer, config
