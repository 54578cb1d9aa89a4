"""Generation for causal LMs and encoder-decoders: KV-cached greedy, temperature, top-k,
top-p sampling and beam search."""

from tflm.generation.decoding import CausalDecoder, Seq2SeqDecoder, left_pad, right_pad
from tflm.generation.generate import generate
from tflm.generation.sampling import next_token, prompt_keys

__all__ = ["CausalDecoder", "Seq2SeqDecoder", "generate", "left_pad", "next_token", "prompt_keys",
           "right_pad"]
