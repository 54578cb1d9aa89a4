"""Flags shared by the tflm-* binaries (defined once, so binaries can be imported together)."""

import ctypes
import os
import sys

import tensorflow as tf
from absl import flags, logging

from tflm import experiment
from tflm.data.sources import bad_record_error
from tflm.errors import TflmError

flags.DEFINE_multi_string(
    "config_file", None, "Experiment YAML; repeat the flag to layer files (later ones win)."
)
flags.DEFINE_string(
    "params_override",
    "",
    "Overrides of the experiment config, e.g. "
    "trainer.train_steps=20,runtime.mixed_precision=mixed_bfloat16.",
)

flags.DEFINE_string(
    "model_dir", None,
    "The run's folder: params.yaml, checkpoints, logs and the tokenizer (tflm-train writes it; "
    "tflm-eval, tflm-export and tflm-generate read it, as a converted checkpoint).",
)

flags.DEFINE_string(
    "output_dir", None, "Where the binary writes its output (vocabulary files, prepared shards)."
)


# absl::SetMinLogLevel of the abseil that TensorFlow 2.20 links: XLA logs through abseil,
# which does not read TF_CPP_MIN_LOG_LEVEL.
_ABSL_SET_MIN_LOG_LEVEL = "_ZN4absl12lts_2025012714SetMinLogLevelENS0_18LogSeverityAtLeastE"


def quiet_tensorflow_logs():
    """Progress lines are ours; TensorFlow's INFO chatter (checkpoint sharding, ...) is not,
    nor its native log beneath `TF_CPP_MIN_LOG_LEVEL` (see `tflm.cli`), XLA's included."""
    logging.set_verbosity(logging.WARNING)
    try:
        level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
        library = ctypes.CDLL(os.path.join(tf.sysconfig.get_lib(), "libtensorflow_framework.so.2"))
        set_min_log_level = getattr(library, _ABSL_SET_MIN_LOG_LEVEL)
    except (ValueError, OSError, AttributeError):
        return  # another platform or TensorFlow: its abseil keeps its own level
    set_min_log_level.argtypes = [ctypes.c_int]
    set_min_log_level(min(max(level, 0), 3))  # absl's kInfo .. kFatal


def load_config():
    """The experiment from --config_file and --params_override (checked by its task)."""
    return experiment.load_experiment(flags.FLAGS.config_file, flags.FLAGS.params_override)


def run_or_exit(program, main, *args):
    """Runs `main(*args)`; any tflm error becomes one line on stderr and exit status 2.

    The one place where the binaries catch errors: every error tflm raises on purpose
    derives from `TflmError` and names the key, file or tensor at fault.
    """
    quiet_tensorflow_logs()
    try:
        return main(*args)
    except TflmError as e:
        exit_with_error(program, e)
    except tf.errors.OpError as e:
        # A bad record found inside tf.data stops the pipeline with a TensorFlow error
        # whose message names its file and line.
        bad_record = bad_record_error(e)
        if bad_record is None:
            raise
        exit_with_error(program, bad_record)


def exit_with_error(program, error):
    """One line naming the key or file, not a traceback or the whole flag list."""
    print(f"{program}: error: {error}", file=sys.stderr)
    sys.exit(2)
