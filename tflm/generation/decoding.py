"""Decoding over a key/value cache: sampling loop and beam search, for a causal LM
(`CausalDecoder`) and an encoder-decoder (`Seq2SeqDecoder`, which reads the same loops
with its own step: see its docstring).

Prompts of different lengths are left-padded to one length `P`; each row's
real tokens keep their true positions (0, 1, ...) and the padding is masked
out of attention, so a prompt decodes the same alone or in a batch. The
prompt (all but its last token) fills the cache in one forward pass; then
each new token costs one position:

    cache <- backbone(prompt[:, :-1])                      # prefill
    token <- prompt[:, -1]
    for i in range(max_new_tokens):                        # one tf.while_loop
        logits <- head(backbone(token, cache at P - 1 + i))
        logits <- control_logits(logits, prompt + new tokens, ...)   # penalties, bans
        token  <- next_token(logits, i, temperature, top_k, top_p, seed)
        stop a row at the end-of-text token (or a stop id); stop all when every row has

All shapes are static inside the loop (the cache is allocated for
`P + max_new_tokens` positions), so the loop compiles with XLA.

A row stops, too, when its prompt and new tokens fill the model's
`max_sequence_length` positions: it gets fewer than `max_new_tokens` (its
length says how many), and its result does not depend on the other rows of
its batch. `max_steps` bounds the loop (and the memory) by the positions the
shortest prompt leaves.
"""

import tensorflow as tf

from tflm.generation.sampling import control_logits, is_any, next_token, prompt_keys

# The controls of `control_logits`, as keyword arguments of the decoders, and their defaults
# (which change nothing).
CONTROLS = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "min_new_tokens": 0,
            "stop_token_ids": ()}


def left_pad(prompts, pad_id):
    """Ragged `(batch, None)` ids → `(ids, mask, positions, keys)`, left-padded to `(batch, P)`.

    `keys` `(batch,)` identify each prompt for per-row sampling noise. Empty
    prompts are not allowed here (callers start them with a token).
    """
    prompts = tf.cast(prompts, tf.int32)
    reversed_ids = tf.reverse(prompts, axis=[1])
    ids = tf.reverse(reversed_ids.to_tensor(default_value=pad_id), axis=[1])
    mask = tf.reverse(tf.ones_like(reversed_ids).to_tensor(), axis=[1])
    positions = tf.maximum(tf.cumsum(mask, axis=1) - 1, 0)
    return ids, mask, positions, prompt_keys(prompts)


class _Decoder(tf.Module):
    """The decoding loops both model kinds share: sampling and beam search over a key/value
    cache, stopping rows at `end_id`.

    A subclass says how a step runs: `step(token, i, state) -> (logits, state)` feeds the
    `(rows,)` tokens chosen at step `i - 1` (the start tokens at step 0) and returns the
    `(rows, vocab)` logits of the next ones; `state` (the cache, a nest of tensors with one
    row per decoded row) is carried through the loop, and reordered with the beams.
    """

    def __init__(self, model, end_id, pad_id=0, name=None, xla=False):
        super().__init__(name=name)
        self.model = model
        self.xla = bool(xla)
        self.backbone = model.backbone
        self.end_id = int(end_id)
        self.pad_id = int(pad_id)

    def _head(self):
        """The step's `(rows, 1, hidden_dim)` output -> `(rows, vocab)` float32 logits.

        Called once per decode, outside the loop. A tied table is the matmul's operand as it
        is: `reverse=True` transposes the whole `(vocab, hidden)` table first, and without XLA
        that copy runs every step (Grappler does not fold it), about half of a small model's
        step. XLA's CPU dot is slower on a transposed operand, so for XLA the table is
        transposed once here, before the loop.
        """
        embedding = self.backbone.token_embedding
        if embedding.quantization_mode:
            return lambda hidden: embedding(hidden[:, 0], reverse=True)
        matrix, transposed = embedding.output_projection()
        if self.xla and transposed:
            matrix, transposed = tf.transpose(matrix), False
        return lambda hidden: tf.cast(
            tf.matmul(hidden[:, 0], matrix, transpose_b=transposed), tf.float32)

    def _controls(self, controls):
        """The logits controls (see `control_logits`) as tensors, with their defaults."""
        unknown = set(controls) - set(CONTROLS)
        if unknown:
            raise TypeError(f"Unknown decoding controls: {', '.join(sorted(unknown))}; "
                            f"expected some of {', '.join(CONTROLS)}.")
        values = dict(CONTROLS, **controls)
        values["stop_token_ids"] = tf.reshape(
            tf.cast(tf.convert_to_tensor(values["stop_token_ids"], tf.int32), tf.int32), [-1])
        return values

    def _history(self, context, generated, i):
        """`(rows, W + T)` ids for `control_logits`: the context, then the `i` tokens
        generated so far; -1 where no token is."""
        generated = tf.where(tf.range(tf.shape(generated)[1]) < i, generated, -1)
        return tf.concat([context, generated], axis=1)

    def _sample_loop(self, step, state, token, room, context, max_new_tokens, temperature, top_k,
                     top_p, seed, keys, controls):
        """`(tokens, lengths)` of `step`'s rows, each of which holds `room` new tokens;
        `context` `(rows, W)`: each row's ids before the new ones (-1: none)."""
        controls = self._controls(controls)
        stop_ids = controls["stop_token_ids"]
        batch = tf.shape(token)[0]
        output = tf.fill([batch, max_new_tokens], self.pad_id)
        width = tf.shape(context)[1]

        def body(i, token, state, output, done):
            logits, state = step(token, i, state)
            logits = control_logits(logits, self._history(context, output, i), width + i, i,
                                     self.end_id, **controls)
            chosen = next_token(logits, i, temperature, top_k, top_p, seed, keys)
            chosen = tf.where(done, self.pad_id, chosen)
            output = tf.tensor_scatter_nd_update(
                output, tf.stack([tf.range(batch), tf.fill([batch], i)], axis=1), chosen)
            done = (done | tf.equal(chosen, self.end_id) | is_any(chosen, stop_ids)
                    | (i + 1 >= room))
            return i + 1, chosen, state, output, done

        def keep_going(i, token, state, output, done):
            del token, state, output
            return (i < max_new_tokens) & ~tf.reduce_all(done)

        _, _, _, output, _ = tf.while_loop(
            keep_going, body, (tf.constant(0), token, state, output, room <= 0),
            maximum_iterations=max_new_tokens,
        )
        return self._drop_stop_tokens(output, self._lengths(output, room, stop_ids), stop_ids)

    def _lengths(self, output, room, stop_ids):
        """New tokens per row: up to and including the first end-of-text (or stop id), or its
        room."""
        is_end = tf.equal(output, self.end_id) | is_any(output, stop_ids)
        first_end = tf.argmax(tf.cast(is_end, tf.int32), axis=1, output_type=tf.int32)
        has_end = tf.reduce_any(is_end, axis=1)
        return tf.where(has_end, first_end + 1,
                        tf.clip_by_value(room, 0, tf.shape(output)[1]))

    def _drop_stop_tokens(self, tokens, lengths, stop_ids):
        """`(tokens, lengths)` without a stop id that ends a row: it becomes padding, and the
        length does not count it (an end-of-text id stays)."""
        last = tf.maximum(lengths - 1, 0)
        stopped = (lengths > 0) & is_any(tf.gather(tokens, last, batch_dims=1), stop_ids)
        drop = stopped[:, None] & tf.equal(tf.range(tf.shape(tokens)[1]), last[:, None])
        return tf.where(drop, self.pad_id, tokens), lengths - tf.cast(stopped, lengths.dtype)

    @staticmethod
    def _copies(t, count):
        """`(rows, ...)` -> `(rows * count, ...)`, the copies of a row adjacent."""
        return tf.repeat(t, count, axis=0)

    @staticmethod
    def _copy_keys(keys, count):
        """Each row's `keys` repeated `count` times, each copy its own noise (copy 0 the
        row's own key, so one copy draws as the row alone)."""
        copy = tf.tile(tf.range(count, dtype=tf.int64), [tf.shape(keys)[0]])
        return tf.repeat(keys, count) + copy

    def _beam_loop(self, step, state, token, room, context, max_new_tokens, num_beams,
                   length_penalty, return_scores, num_return_sequences, controls):
        """Beam search over `step`'s rows: `num_beams` adjacent rows per input row, all
        alike at the start; `room` `(rows,)` and `context` as in `_sample_loop`."""
        controls = self._controls(controls)
        stop_ids = controls["stop_token_ids"]
        length_penalty = tf.cast(length_penalty, tf.float32)
        beams, vocab = num_beams, self.backbone.vocabulary_size
        batch = tf.shape(token)[0] // beams
        room = tf.reshape(room, [batch, beams])
        width = tf.shape(context)[1]
        # Only the first beam is alive at the start: the others would duplicate it.
        scores = tf.tile(tf.constant([[0.0] + [-1e9] * (beams - 1)]), [batch, 1])
        tokens = tf.fill([batch, beams, max_new_tokens], self.pad_id)
        finished = room <= 0
        lengths = tf.clip_by_value(room, 0, max_new_tokens)
        # A finished hypothesis can only continue with padding, at no cost.
        pad_only = tf.where(tf.range(vocab) == self.pad_id, 0.0, -1e9)

        def body(i, token, state, scores, tokens, finished, lengths):
            logits, state = step(token, i, state)
            history = self._history(context, tf.reshape(tokens, [batch * beams, -1]), i)
            logits = control_logits(logits, history, width + i, i, self.end_id, **controls)
            log_probs = tf.nn.log_softmax(logits, axis=-1)
            log_probs = tf.reshape(log_probs, [batch, beams, vocab])
            log_probs = tf.where(finished[:, :, None], pad_only, log_probs)
            candidates = tf.reshape(scores[:, :, None] + log_probs, [batch, beams * vocab])
            scores, best = tf.math.top_k(candidates, k=beams)
            origin, chosen = best // vocab, best % vocab
            tokens = tf.gather(tokens, origin, batch_dims=1)
            finished = tf.gather(finished, origin, batch_dims=1)
            lengths = tf.gather(lengths, origin, batch_dims=1)
            tokens = tf.where(tf.range(max_new_tokens) == i, chosen[:, :, None], tokens)
            ends_now = ~finished & (tf.equal(chosen, self.end_id) | is_any(chosen, stop_ids))
            lengths = tf.where(ends_now, i + 1, lengths)
            # A hypothesis out of positions ends here: its length is its room already.
            finished = finished | ends_now | (i + 1 >= room)
            flat_origin = tf.reshape(origin + tf.range(batch)[:, None] * beams, [-1])
            state = tf.nest.map_structure(lambda t: tf.gather(t, flat_origin), state)
            return i + 1, tf.reshape(chosen, [-1]), state, scores, tokens, finished, lengths

        def keep_going(i, token, state, scores, tokens, finished, lengths):
            del token, state, scores, tokens, lengths
            return (i < max_new_tokens) & ~tf.reduce_all(finished)

        _, _, _, scores, tokens, _, lengths = tf.while_loop(
            keep_going, body, (tf.constant(0), token, state, scores, tokens, finished, lengths),
            maximum_iterations=max_new_tokens,
        )
        normalizer = tf.pow((5.0 + tf.cast(lengths, tf.float32)) / 6.0, length_penalty)
        normalized = scores / normalizer
        # The best `num_return_sequences` hypotheses of each row, best first (ties: lower beam).
        count = tf.cast(num_return_sequences, tf.int32)
        tf.debugging.assert_less_equal(count, beams, message=(
            f"num_return_sequences must be at most num_beams ({beams})"))
        ranked = tf.math.top_k(normalized, k=beams).indices[:, :count]

        def best(t):  # (batch, beams, ...) -> (batch * count, ...)
            t = tf.gather(t, ranked, batch_dims=1)
            return tf.reshape(t, tf.concat([[-1], tf.shape(t)[2:]], axis=0))

        result = self._drop_stop_tokens(best(tokens), best(lengths), stop_ids)
        if return_scores:
            result += (best(normalized),)
        return result


class CausalDecoder(_Decoder):
    """Sampling and beam-search decoding for a `CausalLM`.

    Args:
        model: a `CausalLM` (its backbone must be causal).
        end_id: the end-of-text id: a row stops when it emits it.
        pad_id: fills rows after they stop, and the left of short prompts.
        xla: whether the loops will run under XLA (`jit_compile=True`): it lays out the
            output projection for XLA's dot (the tokens are the same either way).

    Example:
    >>> decoder = CausalDecoder(model, end_id=tokenizer.end_of_text_id, pad_id=0)
    >>> tokens, lengths = decoder.sample(prompt_ids, max_new_tokens=20, temperature=0.8,
    ...                                  top_p=0.9, seed=1)
    """

    def __init__(self, model, end_id, pad_id=0, name="causal_decoder", xla=False):
        super().__init__(model, end_id, pad_id, name=name, xla=xla)

    def max_steps(self, prompt_lengths, max_new_tokens):
        """`max_new_tokens` capped at what the positions left by the shortest prompt hold (of
        `prompt_lengths`, tokens per row): a larger request decodes the same, in less memory."""
        room = self.backbone.max_sequence_length - tf.reduce_min(prompt_lengths)
        room = tf.cast(tf.maximum(room, 0), tf.int32)  # an empty batch: no room needed
        return tf.minimum(tf.cast(max_new_tokens, tf.int32), room)

    def _room(self, last_position):
        """New tokens each row's positions hold: prompt + new tokens fill at most the model's."""
        return self.backbone.max_sequence_length - 1 - last_position

    def _step_positions(self, last_position, i):
        """Positions of the tokens fed at step `i`; rows past their room (whose tokens are
        dropped) stay at the last position, inside the position table."""
        return tf.minimum(last_position + i, self.backbone.max_sequence_length - 1)[:, None]

    def _prefill(self, ids, mask, positions, max_new_tokens):
        """Cache filled with all but the last prompt token; the key mask over all positions."""
        batch, width = tf.shape(ids)[0], tf.shape(ids)[1]
        total = width + max_new_tokens
        cache = self.backbone.init_cache(batch, total)
        key_mask = tf.concat([mask, tf.ones([batch, max_new_tokens], mask.dtype)], axis=1)
        if ids.shape[1] is None or ids.shape[1] > 1:
            _, cache = tf.cond(
                width > 1,
                lambda: self.backbone.call_with_cache(
                    ids[:, :-1], cache, 0, padding_mask=key_mask, positions=positions[:, :-1]),
                lambda: (tf.zeros([batch, 0, self.backbone.hidden_dim], self.backbone.compute_dtype),
                         cache),
            )
        return cache, key_mask

    def _start(self, ids, mask, positions, max_new_tokens):
        """`(step, cache, token, room, context)` for `_Decoder`'s loops: the prompts
        prefilled, each step one new position; the context is the prompt."""
        width = tf.shape(ids)[1]
        cache, key_mask = self._prefill(ids, mask, positions, max_new_tokens)
        last_position = positions[:, -1]
        head = self._head()

        def step(token, i, cache):
            hidden, cache = self.backbone.call_with_cache(
                token[:, None], cache, width - 1 + i, padding_mask=key_mask,
                positions=self._step_positions(last_position, i))
            return head(hidden), cache

        context = tf.where(mask > 0, ids, -1)
        return step, cache, ids[:, -1], self._room(last_position), context

    def sample(self, prompts, max_new_tokens, temperature=0.0, top_k=0, top_p=1.0, seed=0,
               num_return_sequences=1, **controls):
        """Greedy or sampled continuations.

        Args:
            prompts: ragged `(batch, None)` token ids, each at least one token.
            max_new_tokens: how many tokens to add at most (fewer where the
                model's positions end first).
            temperature, top_k, top_p, seed: see `next_token`.
            num_return_sequences: >= 1 continuations per prompt, each with its own
                noise (copy 0 draws as the prompt alone); they are alike when greedy.
            **controls: `repetition_penalty`, `no_repeat_ngram_size`, `min_new_tokens`,
                `stop_token_ids`: see `control_logits` (the context of a row is its prompt
                and new tokens). A row stops after a stop id as after end-of-text, but the
                stop id is not returned (it is padding, and not counted in the length).
            All but `num_beams` may be tensors: one traced loop serves every setting.

        Returns:
            `(tokens, lengths)`: `(batch * num_return_sequences, max_new_tokens)` new ids
            (a prompt's rows adjacent; padded with `pad_id` after a row's end-of-text,
            which is included, or its last position), and the number of new tokens per
            row (end-of-text counted).
        """
        return self.sample_padded(*left_pad(prompts, self.pad_id), max_new_tokens, temperature,
                                  top_k, top_p, seed, num_return_sequences, **controls)

    def sample_padded(self, ids, mask, positions, keys, max_new_tokens, temperature=0.0, top_k=0,
                      top_p=1.0, seed=0, num_return_sequences=1, **controls):
        """`sample` on `left_pad`'s output: dense tensors only, so it compiles with XLA."""
        max_new_tokens = tf.cast(max_new_tokens, tf.int32)
        count = tf.cast(num_return_sequences, tf.int32)
        ids, mask, positions = (self._copies(t, count) for t in (ids, mask, positions))
        return self._sample_loop(*self._start(ids, mask, positions, max_new_tokens),
                                 max_new_tokens, temperature, top_k, top_p, seed,
                                 self._copy_keys(keys, count), controls)

    def beam_search(self, prompts, max_new_tokens, num_beams=4, length_penalty=0.6,
                    return_scores=False, num_return_sequences=1, **controls):
        """The most likely continuation under GNMT length normalization.

        `num_beams` hypotheses per prompt; each step keeps the `num_beams`
        best extensions (by log-probability) of all hypotheses. A hypothesis
        that chooses the end-of-text token is finished: it keeps its slot and
        its log-probability. At the end, hypotheses are ranked by
        `log p / ((5 + length) / 6) ** length_penalty`, so a larger
        `length_penalty` favours longer outputs. A hypothesis that reaches the
        model's last position is finished too. With one beam this is exactly
        greedy decoding. (`official.nlp.modeling.ops.beam_search` also ranks
        end-of-text candidates outside the beam as finished hypotheses, so
        its one-beam search is not greedy; and its sampling module draws
        with stateful RNG, which a served model cannot reseed.)

        `num_beams` is a Python integer (it fixes shapes). The `controls` (see `sample`)
        act on the logits before their log-softmax, so the scores are of the controlled
        distribution. (Hugging Face applies them to the log-probabilities in beam search.)

        Returns:
            `(tokens, lengths)` of the `num_return_sequences` (at most `num_beams`) best
            hypotheses of each prompt, best first, as `sample` returns them; with
            `return_scores`, also their normalized scores `(batch * num_return_sequences,)`.
        """
        return self.beam_search_padded(*left_pad(prompts, self.pad_id), max_new_tokens,
                                       num_beams, length_penalty, return_scores,
                                       num_return_sequences, **controls)

    def beam_search_padded(self, ids, mask, positions, keys, max_new_tokens, num_beams=4,
                           length_penalty=0.6, return_scores=False, num_return_sequences=1,
                           **controls):
        """`beam_search` on `left_pad`'s output: dense tensors only, so it compiles with XLA."""
        del keys  # deterministic: no noise
        max_new_tokens = tf.cast(max_new_tokens, tf.int32)

        def expand(t):  # (batch, ...) -> (batch * beams, ...), beams of a row adjacent
            return tf.repeat(t, num_beams, axis=0)

        return self._beam_loop(
            *self._start(expand(ids), expand(mask), expand(positions), max_new_tokens),
            max_new_tokens, num_beams, length_penalty, return_scores, num_return_sequences,
            controls)


def right_pad(sources, pad_id):
    """Ragged `(batch, None)` source ids → `(ids, mask, keys)`, right-padded to `(batch, S)`
    (the encoder sees the whole source: its padding may lie anywhere), with `keys` `(batch,)`
    of `prompt_keys`."""
    sources = tf.cast(sources, tf.int32)
    ids = sources.to_tensor(default_value=pad_id)
    mask = tf.ones_like(sources).to_tensor()
    return ids, mask, prompt_keys(sources)


class Seq2SeqDecoder(_Decoder):
    """Sampling and beam-search decoding for a `Seq2SeqLM`: the target given a source.

    The encoder runs once, and so does every decoder block's projection of its output
    to cross-attention keys and values; each step then runs the decoder on one token
    over its self-attention cache, from the decoder start token at position 0::

        memory <- encoder(source)                                 # once
        cross  <- decoder.cross_attention_caches(memory)          # once (tiled per beam)
        token  <- start_id
        for i in range(max_new_tokens):                           # one tf.while_loop
            logits <- head(decoder(token at position i, cache, cross))
            token  <- next_token(logits, ...)   or a beam search step

    The decoder reads the start token and every new token but the last, so a target
    holds at most the decoder's `max_sequence_length` new tokens.

    Args:
        model: a `Seq2SeqLM`.
        start_id: the decoder's first token (the one its training targets start with,
            e.g. the tokenizer's [CLS] or end-of-text id).
        end_id: a row stops when it emits it.
        pad_id: fills rows after they stop, and the right of short sources.
        xla: as `CausalDecoder`'s.

    Example:
    >>> decoder = Seq2SeqDecoder(model, start_id=tokenizer.cls_id, end_id=tokenizer.sep_id)
    >>> tokens, lengths = decoder.beam_search(source_ids, max_new_tokens=20, num_beams=4)
    """

    def __init__(self, model, start_id, end_id, pad_id=0, name="seq2seq_decoder", xla=False):
        super().__init__(model, end_id, pad_id, name=name, xla=xla)
        self.start_id = int(start_id)

    def max_steps(self, max_new_tokens):
        """`max_new_tokens` capped at what the decoder's positions hold."""
        return tf.minimum(tf.cast(max_new_tokens, tf.int32), self.backbone.max_sequence_length)

    def _start(self, ids, mask, max_new_tokens, copies=1):
        """`(step, cache, token, room, context)` for `_Decoder`'s loops, `copies` rows per
        source (adjacent, as `_beam_loop` reads beams); the context is empty (a target's
        history is its own tokens)."""
        decoder = self.backbone.decoder
        cross = decoder.cross_attention_caches(self.backbone.encode(ids, mask, training=False))
        if not isinstance(copies, int) or copies > 1:
            cross, mask = self._copies(cross, copies), self._copies(mask, copies)
        rows = tf.shape(mask)[0]
        head = self._head()

        def step(token, i, cache):
            hidden, cache = decoder.call_with_cache(
                token[:, None], cache, i, cross_attention_caches=cross,
                encoder_padding_mask=mask)
            return head(hidden), cache

        return (step, decoder.init_cache(rows, max_new_tokens), tf.fill([rows], self.start_id),
                tf.fill([rows], self.backbone.max_sequence_length), tf.zeros([rows, 0], tf.int32))

    def sample(self, sources, max_new_tokens, temperature=0.0, top_k=0, top_p=1.0, seed=0,
               num_return_sequences=1, **controls):
        """Greedy or sampled targets of ragged `(batch, None)` source ids (each at least one
        token); arguments and results as `CausalDecoder.sample` (the context of the controls
        is the target generated so far; the encoder runs once per source). A row's draws
        depend on its source, its copy, the seed and the step only."""
        return self.sample_padded(*right_pad(sources, self.pad_id), max_new_tokens, temperature,
                                  top_k, top_p, seed, num_return_sequences, **controls)

    def sample_padded(self, ids, mask, keys, max_new_tokens, temperature=0.0, top_k=0,
                      top_p=1.0, seed=0, num_return_sequences=1, **controls):
        """`sample` on `right_pad`'s output: dense tensors only, so it compiles with XLA."""
        max_new_tokens = tf.cast(max_new_tokens, tf.int32)
        count = tf.cast(num_return_sequences, tf.int32)
        return self._sample_loop(*self._start(ids, mask, max_new_tokens, count), max_new_tokens,
                                 temperature, top_k, top_p, seed, self._copy_keys(keys, count),
                                 controls)

    def beam_search(self, sources, max_new_tokens, num_beams=4, length_penalty=0.6,
                    return_scores=False, num_return_sequences=1, **controls):
        """The most likely targets of each source, as `CausalDecoder.beam_search` ranks and
        returns them."""
        return self.beam_search_padded(*right_pad(sources, self.pad_id), max_new_tokens,
                                       num_beams, length_penalty, return_scores,
                                       num_return_sequences, **controls)

    def beam_search_padded(self, ids, mask, keys, max_new_tokens, num_beams=4,
                           length_penalty=0.6, return_scores=False, num_return_sequences=1,
                           **controls):
        """`beam_search` on `right_pad`'s output: dense tensors only, so it compiles with XLA."""
        del keys  # deterministic: no noise
        max_new_tokens = tf.cast(max_new_tokens, tf.int32)
        return self._beam_loop(*self._start(ids, mask, max_new_tokens, num_beams),
                               max_new_tokens, num_beams, length_penalty, return_scores,
                               num_return_sequences, controls)
