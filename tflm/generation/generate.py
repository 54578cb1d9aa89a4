"""`generate`: a causal LM continues prompts, from Python (a notebook, `tflm-generate`).

Example:
>>> generate(model, ["It is a truth"], max_new_tokens=20, tokenizer=tokenizer)
"""

import tensorflow as tf

from tflm.generation.decoding import CausalDecoder, left_pad
from tflm.generation.stop_strings import cut_at_stop_strings


def generate(model, prompts, max_new_tokens=32, temperature=0.0, top_k=0, top_p=1.0, seed=0,
             num_beams=1, length_penalty=0.6, tokenizer=None, end_id=None, jit_compile=True,
             num_return_sequences=1, repetition_penalty=1.0, no_repeat_ngram_size=0,
             min_new_tokens=0, stop_token_ids=(), stop_strings=()):
    """Continues each prompt of the `CausalLM` `model`: greedy, sampled
    (temperature/top-k/top-p) or beam search.

    Args:
        prompts: strings (with `tokenizer`), or lists of token ids.
        max_new_tokens: the most tokens added to each prompt (fewer where the prompt and
            new tokens fill the model's `max_sequence_length` positions).
        temperature, top_k, top_p, seed: sampling (temperature 0: greedy);
            the same seed gives the same output.
        num_beams, length_penalty: beam search when `num_beams > 1`.
        tokenizer: turns strings into ids and the new ids back into text.
        end_id: stops a row; default the tokenizer's end-of-text (or [SEP]).
        jit_compile: compile the decoding loop with XLA.
        num_return_sequences: continuations per prompt: sampled with their own noise,
            or the best beams, best first (at most `num_beams`).
        repetition_penalty, no_repeat_ngram_size, min_new_tokens, stop_token_ids: see
            `tflm.generation.control_logits` (defaults: off). A stop id ends a row but is
            not returned.
        stop_strings: with a tokenizer, each text ends where the first of these starts
            (not returned; see `cut_at_stop_strings`).

    Returns:
        The continuations: strings with a tokenizer, else lists of ids
        (up to and including the end-of-text id); `num_return_sequences` per prompt,
        adjacent.

    The decoding function is traced once and compiled once per shape
    (batch, prompt length, max_new_tokens), not once per call.
    """
    if tokenizer is not None:
        ids = tokenizer.tokenize(tf.constant(list(prompts)))
        if end_id is None:
            end_id = tokenizer.end_of_text_id
            end_id = tokenizer.sep_id if end_id is None else end_id
        # An empty prompt starts from the end-of-text token, as in GPT-2.
        ids = tf.ragged.constant([row or [end_id] for row in ids.to_list()], tf.int32)
        pad_id = tokenizer.pad_id or 0
    else:
        ids = tf.ragged.constant([list(p) for p in prompts], tf.int32)
        pad_id = 0
    if end_id is None:
        raise ValueError("generate needs `end_id` or a tokenizer with an end-of-text token.")
    key = (int(end_id), int(pad_id), int(num_beams), bool(jit_compile))
    cache = model.__dict__.setdefault("_generate_functions", {})
    if key not in cache:
        decoder = CausalDecoder(model, end_id=end_id, pad_id=pad_id)
        if num_beams > 1:
            def decode(ids, mask, positions, keys, max_new_tokens, temperature, top_k, top_p,
                       seed, penalty, copies, controls):
                del temperature, top_k, top_p, seed
                return decoder.beam_search_padded(ids, mask, positions, keys, max_new_tokens,
                                                  num_beams, penalty,
                                                  num_return_sequences=copies, **controls)
        else:
            def decode(ids, mask, positions, keys, max_new_tokens, temperature, top_k, top_p,
                       seed, penalty, copies, controls):
                del penalty
                return decoder.sample_padded(ids, mask, positions, keys, max_new_tokens,
                                             temperature, top_k, top_p, seed, copies,
                                             **controls)
        matrix = tf.TensorSpec([None, None], tf.int32)
        scalar = tf.TensorSpec([], tf.int32)
        real = tf.TensorSpec([], tf.float32)
        cache[key] = tf.function(decode, jit_compile=jit_compile, input_signature=[
            matrix, matrix, matrix, tf.TensorSpec([None], tf.int64), scalar, real, scalar, real,
            tf.TensorSpec([], tf.int64), real, scalar,
            {"repetition_penalty": real, "no_repeat_ngram_size": scalar,
             "min_new_tokens": scalar, "stop_token_ids": tf.TensorSpec([None], tf.int32)}])
    padded = left_pad(ids, pad_id)
    # No wider a loop (or output) than the shortest prompt's positions hold.
    max_new_tokens = int(CausalDecoder(model, end_id, pad_id).max_steps(ids.row_lengths(),
                                                                         max_new_tokens))
    tokens, lengths = cache[key](*padded, tf.constant(max_new_tokens, tf.int32),
                                 tf.constant(temperature, tf.float32),
                                 tf.constant(top_k, tf.int32), tf.constant(top_p, tf.float32),
                                 tf.constant(seed, tf.int64),
                                 tf.constant(length_penalty, tf.float32),
                                 tf.constant(num_return_sequences, tf.int32),
                                 {"repetition_penalty": tf.constant(repetition_penalty, tf.float32),
                                  "no_repeat_ngram_size": tf.constant(no_repeat_ngram_size,
                                                                      tf.int32),
                                  "min_new_tokens": tf.constant(min_new_tokens, tf.int32),
                                  "stop_token_ids": tf.constant(list(stop_token_ids), tf.int32,
                                                                shape=[len(stop_token_ids)])})
    rows = tf.RaggedTensor.from_tensor(tokens, lengths=lengths)
    if tokenizer is None:
        if stop_strings:
            raise ValueError("stop_strings need a tokenizer (to find them in the text).")
        return rows.to_list()
    text, _ = cut_at_stop_strings(tokenizer.detokenize(rows), list(stop_strings))
    return [t.decode("utf-8", "replace") for t in text.numpy()]
