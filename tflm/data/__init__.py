"""Data: tokenizers, masking and tf.data pipelines."""

from tflm.data.byte_pair import BytePairTokenizer
from tflm.data.byte_tokenizer import ByteTokenizer
from tflm.data.corpus import default_corpus_path, resolve_files
from tflm.data.masking import mask_batch, mask_tokens
from tflm.data.noising import (
    span_corruption,
    span_corruption_lengths,
    span_corruption_row_length,
    text_infilling,
)
from tflm.data.sentencepiece_tokenizer import SentencePieceTokenizer
from tflm.data.text_cleaning import TextCleaner, replace_invalid_utf8
from tflm.data.tokenizer import Tokenizer
from tflm.data.tokenizers import load_tokenizer, make_tokenizer
from tflm.data.vocab_training import train_vocabulary
from tflm.data.wordpiece import WordPieceTokenizer
from tflm.data.classification import (
    classification_dataset,
    encode_classification,
    read_labelled,
)
from tflm.data.pipeline import (
    causal_lm_dataset,
    masked_lm_dataset,
    pack_token_stream,
    token_documents,
)
from tflm.data.prepared import prepare_corpus, read_prepared
from tflm.data.sources import read_documents
from tflm.data.stats import InputStats

__all__ = [
    "BytePairTokenizer",
    "ByteTokenizer",
    "SentencePieceTokenizer",
    "TextCleaner",
    "Tokenizer",
    "WordPieceTokenizer",
    "load_tokenizer",
    "make_tokenizer",
    "replace_invalid_utf8",
    "train_vocabulary",
    "InputStats",
    "prepare_corpus",
    "read_documents",
    "read_prepared",
    "token_documents",
    "causal_lm_dataset",
    "classification_dataset",
    "encode_classification",
    "read_labelled",
    "default_corpus_path",
    "mask_batch",
    "mask_tokens",
    "masked_lm_dataset",
    "span_corruption",
    "span_corruption_lengths",
    "span_corruption_row_length",
    "text_infilling",
    "pack_token_stream",
    "resolve_files",
]
