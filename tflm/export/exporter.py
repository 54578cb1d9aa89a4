"""Exports a trained model as a versioned SavedModel that TF Serving serves as text in, text out.

    export_dir/
      <version>/                     # TF Serving serves the highest version
        saved_model.pb, variables/   # signatures of `tflm.export.serving`
        assets.extra/
          tf_serving_warmup_requests # one request per signature, replayed at load
          ops.txt                    # every op in the graph, checked against the server's

The version folder is written under a temporary name and renamed when
complete, so a server polling `export_dir` never loads half a model. The
signatures and warm-up requests are the task's (`tflm.tasks`); exporting a
model is `tflm.experiment.export_saved_model`.
"""

import dataclasses
import os
import shutil
import typing

import tensorflow as tf

from tflm.export.op_check import DEFAULT_RELEASE, check_ops
from tflm.export.warmup import write_warmup_requests

from tflm.errors import TflmError


class ExportError(TflmError, ValueError):
    """The model cannot be exported as asked; the message says why."""


@dataclasses.dataclass
class ServingOptions:
    """How a task's signatures are built; each task reads the options that concern it.

    Attributes:
        label_names: a classifier's class names in id order (default: the model's own).
        text_pair: `classify` takes a second text (a classifier fine-tuned on pairs).
        sequence_length: a classifier's longest row, as in training (default: the
            model's positions).
        num_beams: beams of a causal LM's or an encoder-decoder's `beam_search`.
        jit_compile: their decoding loops as XLA programs (see `CausalLMServing`).
    """

    label_names: typing.Optional[list] = None
    text_pair: bool = False
    sequence_length: typing.Optional[int] = None
    num_beams: int = 4
    jit_compile: bool = False


def next_version(export_dir):
    """One more than the highest numeric version folder in `export_dir` (1 if none)."""
    if not tf.io.gfile.isdir(export_dir):
        return 1
    versions = [int(name.strip("/")) for name in tf.io.gfile.listdir(export_dir)
                if name.strip("/").isdigit()]
    return max(versions, default=0) + 1


def write_saved_model(module, export_dir, warmup_requests=(), version=None,
                      serving_release=DEFAULT_RELEASE):
    """Writes the serving `module` (its `signatures()`) as `export_dir/<version>/`; returns
    its path.

    `warmup_requests`: `(signature, {input: value})` pairs replayed by TF Serving at load
    (none: no warm-up file). The op list of the graph is checked against `serving_release`.

    Raises:
        ExportError: the version exists already.
        UnsupportedOpError: the graph has an op the target TF Serving lacks.
    """
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
        if warmup_requests:
            write_warmup_requests(partial, warmup_requests)
    except Exception:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    tf.io.gfile.rename(partial, path)
    return path
