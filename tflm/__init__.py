"""tflm: pretrain, fine-tune and serve transformer language models with TensorFlow 2 / Keras 3."""

import os

# tflm is built on TensorFlow ops (tf.data, tf-text, SavedModel): Keras must use that backend.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from tflm.version import __version__  # noqa: E402
