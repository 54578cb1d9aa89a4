"""`generate`: a causal LM continues prompts, or an encoder-decoder writes the target of each
source, from Python (a notebook, `tflm-generate`, evaluation's generation metrics).

Example:
>>> generate(model, ["It is a truth"], max_new_tokens=20, tokenizer=tokenizer)
>>> generate(translator, ["Hello."], max_new_tokens=40, tokenizer=tokenizer, num_beams=4)
"""

import tensorflow as tf

from tflm.generation.decoding import CausalDecoder, Seq2SeqDecoder, left_pad, right_pad
from tflm.generation.seq2seq_rows import seq2seq_tokens, sides, source_rows
from tflm.generation.stop_strings import cut_at_stop_strings

_MATRIX = tf.TensorSpec([None, None], tf.int32)
_INT = tf.TensorSpec([], tf.int32)
_FLOAT = tf.TensorSpec([], tf.float32)


def generate(model, prompts, max_new_tokens=32, temperature=0.0, top_k=0, top_p=1.0, seed=0,
             num_beams=1, length_penalty=0.6, tokenizer=None, end_id=None, jit_compile=True,
             num_return_sequences=1, repetition_penalty=1.0, no_repeat_ngram_size=0,
             min_new_tokens=0, stop_token_ids=(), stop_strings=(), source_length=None):
    """Continues each prompt of the `CausalLM` `model`, or writes the target of each source
    of the `Seq2SeqLM` `model`: greedy, sampled (temperature/top-k/top-p) or beam search.

    Args:
        prompts: strings (with `tokenizer`), or lists of token ids. A seq2seq source is
            read as in training: `source [end]`, cut to the encoder's positions (with ids,
            give the whole row).
        max_new_tokens: the most tokens added to each prompt (fewer where the prompt and
            new tokens fill the model's `max_sequence_length` positions; a seq2seq target
            holds at most the decoder's).
        temperature, top_k, top_p, seed: sampling (temperature 0: greedy);
            the same seed gives the same output.
        num_beams, length_penalty: beam search when `num_beams > 1`.
        tokenizer: turns strings into ids and the new ids back into text (for a seq2seq
            model with two tokenizers, a pair: sources with `.source`, targets `.target`).
        end_id: stops a row; default the tokenizer's end-of-text (or [SEP]). A seq2seq
            target starts as in training (`seq2seq_tokens`).
        jit_compile: compile the decoding loop with XLA.
        num_return_sequences: continuations per prompt: sampled with their own noise,
            or the best beams, best first (at most `num_beams`).
        repetition_penalty, no_repeat_ngram_size, min_new_tokens, stop_token_ids: see
            `tflm.generation.control_logits` (defaults: off). A stop id ends a row but is
            not returned.
        stop_strings: with a tokenizer, each text ends where the first of these starts
            (not returned; see `cut_at_stop_strings`).
        source_length: a seq2seq source row's most tokens, [end] included (default: the
            encoder's positions; training's is `data.sequence_length`).

    Returns:
        The continuations: strings with a tokenizer, else lists of ids
        (up to and including the end-of-text id); `num_return_sequences` per prompt,
        adjacent.

    The decoding function is traced once and compiled once per shape
    (batch, prompt length, max_new_tokens), not once per call.
    """
    if stop_strings and tokenizer is None:
        raise ValueError("stop_strings need a tokenizer (to find them in the text).")
    seq2seq = hasattr(model.backbone, "encoder")
    source_tokenizer, target_tokenizer = sides(tokenizer)
    pad_id = (target_tokenizer.pad_id or 0) if tokenizer is not None else 0
    if seq2seq:
        start_id, end_id = _seq2seq_ids(target_tokenizer, end_id)
        ids = _sources(prompts, source_tokenizer,
                       source_length or model.backbone.encoder.max_sequence_length)
        decoder = Seq2SeqDecoder(model, start_id=start_id, end_id=end_id, pad_id=pad_id,
                                  xla=jit_compile)
        padded = right_pad(ids, pad_id)
        steps = decoder.max_steps(max_new_tokens)
    else:
        if end_id is None and tokenizer is not None:
            end_id = tokenizer.end_of_text_id
            end_id = tokenizer.sep_id if end_id is None else end_id
        if end_id is None:
            raise ValueError("generate needs `end_id` or a tokenizer with an end-of-text "
                             "token.")
        ids = _prompts(prompts, tokenizer, end_id)
        decoder = CausalDecoder(model, end_id=end_id, pad_id=pad_id, xla=jit_compile)
        padded = left_pad(ids, pad_id)
        # No wider a loop (or output) than the shortest prompt's positions hold.
        steps = decoder.max_steps(ids.row_lengths(), max_new_tokens)
    function = _decode_function(model, decoder, num_beams, jit_compile, len(padded))
    tokens, lengths = function(
        *padded, tf.constant(int(steps), tf.int32), tf.constant(temperature, tf.float32),
        tf.constant(top_k, tf.int32), tf.constant(top_p, tf.float32), tf.constant(seed, tf.int64),
        tf.constant(length_penalty, tf.float32), tf.constant(num_return_sequences, tf.int32),
        {"repetition_penalty": tf.constant(repetition_penalty, tf.float32),
         "no_repeat_ngram_size": tf.constant(no_repeat_ngram_size, tf.int32),
         "min_new_tokens": tf.constant(min_new_tokens, tf.int32),
         "stop_token_ids": tf.constant(list(stop_token_ids), tf.int32,
                                       shape=[len(stop_token_ids)])})
    rows = tf.RaggedTensor.from_tensor(tokens, lengths=lengths)
    if tokenizer is None:
        return rows.to_list()
    text, _ = cut_at_stop_strings(target_tokenizer.detokenize(rows), list(stop_strings))
    return [t.decode("utf-8", "replace") for t in text.numpy()]


def _prompts(prompts, tokenizer, end_id):
    """A causal LM's ragged prompt ids: after the tokenizer's start token where it has one
    (as training's rows begin), else an empty prompt starts from the end-of-text token, as
    in GPT-2."""
    if tokenizer is None:
        return tf.ragged.constant([list(p) for p in prompts], tf.int32, ragged_rank=1)
    ids = tokenizer.tokenize(tf.constant(list(prompts), tf.string)).to_list()
    if tokenizer.start_id is not None:
        return tf.ragged.constant([[tokenizer.start_id] + row for row in ids], tf.int32)
    return tf.ragged.constant([row or [end_id] for row in ids], tf.int32)


def _seq2seq_ids(tokenizer, end_id):
    if tokenizer is None:
        if end_id is None:
            raise ValueError("generate needs `end_id` or a tokenizer for a seq2seq model.")
        return end_id, end_id
    start_id, tokenizer_end = seq2seq_tokens(tokenizer)
    return start_id, tokenizer_end if end_id is None else end_id


def _sources(sources, tokenizer, source_length):
    """A seq2seq model's ragged source ids (`source_rows`: as training builds them)."""
    if tokenizer is None:
        return tf.ragged.constant([list(s) for s in sources], tf.int32, ragged_rank=1)
    return source_rows(tokenizer, tf.constant(list(sources), tf.string), source_length)[0]


def _decode_function(model, decoder, num_beams, jit_compile, num_padded):
    """The (cached) `tf.function` decoding `num_padded` padded tensors with `decoder`."""
    key = (type(decoder).__name__, getattr(decoder, "start_id", None), decoder.end_id,
           decoder.pad_id, int(num_beams), bool(jit_compile))
    cache = model.__dict__.setdefault("_generate_functions", {})
    if key not in cache:
        def decode(*args):
            padded, (steps, temperature, top_k, top_p, seed, penalty, copies, controls) = (
                args[:num_padded], args[num_padded:])
            if num_beams > 1:
                return decoder.beam_search_padded(*padded, steps, num_beams, penalty,
                                                  num_return_sequences=copies, **controls)
            return decoder.sample_padded(*padded, steps, temperature, top_k, top_p, seed,
                                         copies, **controls)

        # The padded ids and mask (and a causal LM's positions), and the rows' keys.
        padded = [_MATRIX] * (num_padded - 1) + [tf.TensorSpec([None], tf.int64)]
        signature = [
            *padded, _INT, _FLOAT, _INT, _FLOAT, tf.TensorSpec([], tf.int64), _FLOAT, _INT,
            {"repetition_penalty": _FLOAT, "no_repeat_ngram_size": _INT,
             "min_new_tokens": _INT, "stop_token_ids": tf.TensorSpec([None], tf.int32)}]
        # autograph=False: the decoding loops are tf.while_loops already, and converting
        # the ~40 functions they call took seconds of a short call (tflm-generate's start).
        cache[key] = tf.function(decode, jit_compile=jit_compile, autograph=False,
                                 input_signature=signature)
    return cache[key]
