"""absl-flag binaries behind the tflm-* console scripts.

Their output is tflm's own lines: TensorFlow's native log (the CPU-instruction and oneDNN
banners, the failed `cuInit` of a machine without a GPU, the `End of sequence` rendezvous
line at the end of each input, XLA's "Compiled cluster" line) is off unless
`TF_CPP_MIN_LOG_LEVEL` asks for it (0: everything). TensorFlow's errors still reach the user
as Python exceptions, and Python warnings are untouched.
"""

import ctypes
import os

# Read once, when TensorFlow's native library loads: it must be set before the first import.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# absl::SetMinLogLevel of the abseil that TensorFlow 2.20 links: XLA logs through abseil,
# which does not read TF_CPP_MIN_LOG_LEVEL.
_ABSL_SET_MIN_LOG_LEVEL = "_ZN4absl12lts_2025012714SetMinLogLevelENS0_18LogSeverityAtLeastE"


def quiet_native_logs():
    """Gives TensorFlow's abseil log (XLA's) the level of `TF_CPP_MIN_LOG_LEVEL`; a
    TensorFlow without that symbol keeps its own."""
    import tensorflow as tf

    try:
        level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
        library = ctypes.CDLL(os.path.join(tf.sysconfig.get_lib(), "libtensorflow_framework.so.2"))
        set_min_log_level = getattr(library, _ABSL_SET_MIN_LOG_LEVEL)
    except (ValueError, OSError, AttributeError):
        return
    set_min_log_level.argtypes = [ctypes.c_int]
    set_min_log_level(min(max(level, 0), 3))  # absl's kInfo .. kFatal
