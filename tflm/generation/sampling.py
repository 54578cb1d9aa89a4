"""Choosing the next token from logits: greedy, temperature, top-k, top-p, with a seed.

The settings are tensors, so a single compiled decode loop serves any mix of
them, and a SavedModel takes them as inputs; conditionals on them skip the
work a setting does not need (no vocabulary sort when greedy, or when
sampling without top-k or top-p). Sampling is stateless and per row: the draw for a row at step `i`
depends only on `(seed, i, the row's prompt)`, so the same prompt and seed give
the same text whatever else shares its batch (a server may batch requests).
"""

import tensorflow as tf

from tflm.random import uniform as counter_uniform


def next_token(logits, step, temperature=0.0, top_k=0, top_p=1.0, seed=0, row_keys=None):
    """`(batch,)` int32 next tokens from `(batch, vocab)` float32 logits.

    Args:
        logits: scores of the next token.
        step: the decoding step (part of the random seed).
        temperature: 0 (or less) chooses the most likely token (greedy);
            otherwise logits are divided by it before sampling.
        top_k: if > 0, sample only among the `top_k` most likely tokens.
        top_p: if < 1, sample only among the smallest set of most likely
            tokens whose probabilities add up to at least `top_p` (nucleus).
        seed: an integer seed of the draws.
        row_keys: `(batch,)` int64 per-row keys (see `prompt_keys`); rows with
            the same key and seed draw the same noise. Default: all zero.
    """
    logits = tf.cast(logits, tf.float32)
    temperature = tf.cast(temperature, tf.float32)
    vocab = tf.shape(logits)[-1]
    if row_keys is None:
        row_keys = tf.zeros(tf.shape(logits)[:1], tf.int64)

    def sample():
        scaled = logits / tf.maximum(temperature, 1e-6)

        def cut():
            # One descending sort gives both cut-offs.
            ordered = tf.sort(scaled, axis=-1, direction="DESCENDING")
            k = tf.cast(top_k, tf.int32)
            k = tf.where(k > 0, tf.minimum(k, vocab), vocab)
            kth_best = tf.gather(ordered, k - 1, axis=-1)[:, None]
            probs = tf.nn.softmax(ordered, axis=-1)
            # Keep a token while the mass of the tokens before it is below top_p.
            mass_before = tf.cumsum(probs, axis=-1, exclusive=True)
            keep = tf.reduce_sum(tf.cast(mass_before < tf.cast(top_p, tf.float32), tf.int32),
                                 axis=-1)
            nucleus_cut = tf.gather(ordered, tf.maximum(keep, 1) - 1, axis=-1, batch_dims=1)
            threshold = tf.maximum(kth_best, nucleus_cut[:, None])
            return tf.where(scaled >= threshold, scaled, tf.float32.min)

        # The sort over the vocabulary runs only when top-k or top-p asks for it.
        filtered = tf.cond((tf.cast(top_k, tf.int32) > 0) | (tf.cast(top_p, tf.float32) < 1.0),
                           cut, lambda: scaled)
        # Gumbel-max: argmax(logits + Gumbel noise) is a draw from softmax(logits).
        uniform = counter_uniform(row_keys, vocab, seed, step)
        return tf.argmax(filtered - tf.math.log(-tf.math.log(uniform)), axis=-1,
                         output_type=tf.int32)

    # Greedy decoding skips the sampling work altogether.
    return tf.cond(temperature > 0.0, sample,
                   lambda: tf.argmax(logits, axis=-1, output_type=tf.int32))


def prompt_keys(prompts):
    """`(batch,)` int64 keys of ragged prompt ids: equal prompts, equal keys."""
    text = tf.strings.reduce_join(tf.strings.as_string(prompts), axis=1, separator=",")
    return tf.strings.to_hash_bucket_fast(text, 2**62)


def is_any(ids, candidates):
    """Whether each of the int `ids` is one of the 1-D `candidates` (False where none)."""
    return tf.reduce_any(tf.equal(ids[..., None], tf.cast(candidates, ids.dtype)), axis=-1)


def _mark(history, flags, vocab):
    """`(rows, vocab)` float32: 1 at the token `history[r, j]` wherever `flags[r, j]`, else 0."""
    rows, width = tf.shape(history)[0], tf.shape(history)[1]
    row = tf.repeat(tf.range(rows), width)
    indices = tf.stack([row, tf.maximum(tf.reshape(history, [-1]), 0)], axis=1)
    return tf.tensor_scatter_nd_max(tf.zeros([rows, vocab]), indices,
                                    tf.cast(tf.reshape(flags, [-1]), tf.float32))


def control_logits(logits, history, length, step, end_id, repetition_penalty=1.0,
                   no_repeat_ngram_size=0, min_new_tokens=0, stop_token_ids=()):
    """The `(rows, vocab)` float32 logits of the next token under the decoding controls.

    Each control is a tensor (one compiled loop serves every setting), and its default
    leaves the logits unchanged; those that cost a pass over the history run only when set.

    Args:
        logits: the model's scores of the next token.
        history: `(rows, L)` int32: each row's context (for a causal LM its prompt, for an
            encoder-decoder nothing) and the tokens generated so far, -1 where none
            (padding, or the steps to come); its first `length` columns hold the sequence
            the next token extends.
        length: scalar int32; see `history`.
        step: how many tokens were generated before this one.
        end_id: the end-of-text id.
        repetition_penalty: > 0; 1 is off. Every token of the row's history has its logit
            divided by it where positive, multiplied by it where not (CTRL's rule, as
            Hugging Face's `RepetitionPenaltyLogitsProcessor`): > 1 discourages repeats.
        no_repeat_ngram_size: >= 0; 0 is off. A token that would complete an n-gram of this
            size already in the row's history is excluded (Hugging Face's
            `NoRepeatNGramLogitsProcessor`).
        min_new_tokens: >= 0; until this many tokens are generated, `end_id` and the
            `stop_token_ids` are excluded.
        stop_token_ids: 1-D int ids that end a row like `end_id` (see the decoders).
    """
    logits = tf.cast(logits, tf.float32)
    vocab = tf.shape(logits)[-1]
    penalty = tf.cast(repetition_penalty, tf.float32)
    size = tf.cast(no_repeat_ngram_size, tf.int32)

    def penalize():
        seen = _mark(history, history >= 0, vocab) > 0
        return tf.where(seen, tf.where(logits > 0, logits / penalty, logits * penalty), logits)

    def ban_repeated_ngrams():
        # An n-gram starting at column s of the history repeats if its first n - 1 tokens are
        # the last n - 1 of the sequence: then its n-th token (column s + n - 1) is banned.
        width = tf.shape(history)[1]
        starts = tf.range(width)
        suffix = length - (size - 1)

        def compare(k, match):
            earlier = tf.gather(history, tf.minimum(starts + k, width - 1), axis=1)
            last = history[:, tf.maximum(suffix + k, 0)][:, None]
            return k + 1, match & tf.equal(earlier, last) & (last >= 0)

        valid = (starts + size - 1 < length) & (suffix >= 0)
        _, match = tf.while_loop(lambda k, match: k < size - 1, compare,
                                 (tf.constant(0), tf.tile(valid[None], [tf.shape(history)[0], 1])))
        banned = tf.gather(history, tf.minimum(starts + size - 1, width - 1), axis=1)
        return tf.where(_mark(banned, match & (banned >= 0), vocab) > 0, -float("inf"), logits)

    logits = tf.cond(tf.not_equal(penalty, 1.0), penalize, lambda: logits)
    logits = tf.cond(size > 0, ban_repeated_ngrams, lambda: logits)

    def hold_back_endings():
        ending = is_any(tf.range(vocab), tf.concat(
            [[end_id], tf.reshape(tf.cast(stop_token_ids, tf.int32), [-1])], axis=0))
        return tf.where(ending[None], -float("inf"), logits)

    # Past `min_new_tokens` (always, by default) the logits pass through untouched: no pass
    # over the vocabulary.
    too_soon = tf.cast(step, tf.int32) < tf.cast(min_new_tokens, tf.int32)
    return tf.cond(too_soon, hold_back_endings, lambda: logits)
