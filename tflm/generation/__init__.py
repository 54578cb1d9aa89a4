"""Generation for causal LMs and encoder-decoders: KV-cached greedy, temperature, top-k,
top-p sampling and beam search, with repetition penalty, no-repeat n-grams, a minimum
length, stop ids, stop strings and several sequences per prompt."""

from tflm.generation.decoding import CausalDecoder, Seq2SeqDecoder, left_pad, right_pad
from tflm.generation.generate import generate
from tflm.generation.sampling import control_logits, next_token, prompt_keys
from tflm.generation.stop_strings import cut_at_stop_strings

__all__ = ["CausalDecoder", "Seq2SeqDecoder", "control_logits", "cut_at_stop_strings",
           "generate", "left_pad", "next_token", "prompt_keys", "right_pad"]
