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


def serving_module(model, tokenizer, label_names=None, num_beams=4, text_pair=False,
                   sequence_length=None, jit_compile=False):
    """The serving module for the model's task (`text_pair`, `sequence_length`: classifiers;
    `num_beams`, `jit_compile`: causal LMs)."""
    if isinstance(model, CausalLM):
        return CausalLMServing(model, tokenizer, num_beams=num_beams, jit_compile=jit_compile)
    if isinstance(model, MaskedLM):
        return MaskedLMServing(model, tokenizer)
    if isinstance(model, SequenceClassifier):
        return ClassifierServing(model, tokenizer, label_names, text_pair=text_pair,
                                 sequence_length=sequence_length)
    raise ExportError(f"Cannot export a {type(model).__name__}: expected a tflm task model.")


def warmup_inputs(module):
    """One small, valid request per signature, as `(signature, {input: value})`."""
    text = np.array([b"It is a truth universally acknowledged", b""])
    if isinstance(module, ClassifierServing) and module.text_pair:
        return [("classify", {"text": text, "text_pair": np.array([b"It is.", b""])})]
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
                       serving_release=DEFAULT_RELEASE, warmup=True, text_pair=False,
                       sequence_length=None, jit_compile=False):
    """Writes `export_dir/<version>/`; returns its path.

    `label_names` default to the classifier's own; `text_pair` and
    `sequence_length` shape the `classify` signature as the model was trained;
    `jit_compile` makes a causal LM's decoding loops XLA programs (see
    `CausalLMServing`).

    Raises:
        ExportError: the version exists already.
        UnsupportedOpError: the graph has an op the target TF Serving lacks.
    """
    module = serving_module(model, tokenizer, label_names, num_beams, text_pair, sequence_length,
                            jit_compile)
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
    """`(model, tokenizer, config)` of a tflm model_dir (a `tflm-train` run or a converted
    checkpoint): params.yaml, the latest checkpoint or model.keras, and its tokenizer."""
    from tflm.config import ConfigError
    from tflm.models.huggingface import CheckpointError
    from tflm.models.pretrained import load_model_dir, load_tokenizer_of

    try:
        model, config = load_model_dir(model_dir)
    except (ConfigError, CheckpointError) as e:
        raise ExportError(str(e)) from None
    return model, load_tokenizer_of(model_dir, config), config
