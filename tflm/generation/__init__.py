"""Generation: KV-cached greedy, temperature, top-k, top-p sampling and beam search."""

from tflm.generation.decoding import CausalDecoder, left_pad
from tflm.generation.generate import generate
from tflm.generation.sampling import next_token, prompt_keys

__all__ = ["CausalDecoder", "generate", "left_pad", "next_token", "prompt_keys"]
