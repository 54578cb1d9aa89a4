"""absl-flag binaries behind the tflm-* console scripts.

Their output is tflm's own lines: TensorFlow's native log (the CPU-instruction and oneDNN
banners, the failed `cuInit` of a machine without a GPU, the `End of sequence` rendezvous
line at the end of each input, XLA's "Compiled cluster" line) is off unless
`TF_CPP_MIN_LOG_LEVEL` asks for it (0: everything; see `common_flags.quiet_tensorflow_logs`).
TensorFlow's errors still reach the user as Python exceptions, and Python warnings are
untouched.
"""

import os

# Read once, when TensorFlow's native library loads: set here, before any binary imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
