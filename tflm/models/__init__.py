"""Models of tflm: the transformer backbone and the tasks built on it."""

from tflm.models.backbone import TransformerBackbone
from tflm.models.causal_lm import CausalLM
from tflm.models.masked_lm import MaskedLM
from tflm.models.seq2seq_lm import Seq2SeqBackbone, Seq2SeqLM
from tflm.models.sequence_classifier import SequenceClassifier
from tflm.models.task import Task

__all__ = ["CausalLM", "MaskedLM", "Seq2SeqBackbone", "Seq2SeqLM", "SequenceClassifier", "Task",
           "TransformerBackbone"]
