"""Data: tokenizers, masking and tf.data pipelines."""

from tflm.data.byte_tokenizer import ByteTokenizer
from tflm.data.corpus import default_corpus_path, resolve_files
from tflm.data.masking import mask_tokens
from tflm.data.pipeline import (
    causal_lm_dataset,
    classification_dataset,
    masked_lm_dataset,
    pack_token_stream,
)

__all__ = [
    "ByteTokenizer",
    "causal_lm_dataset",
    "classification_dataset",
    "default_corpus_path",
    "mask_tokens",
    "masked_lm_dataset",
    "pack_token_stream",
    "resolve_files",
]
