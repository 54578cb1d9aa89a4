"""Serving modules: text in, text out, with the tokenizer inside the graph.

Each module is a `tf.Module` holding the model, its tokenizer and the
functions that become SavedModel signatures. Every input is checked in the
graph: out-of-range parameters fail with an `InvalidArgument` message naming
the parameter and its value, e.g. "top_p: 1.5; must be in (0, 1]" (TF Serving
returns it as the error text); inputs longer than the model's positions are
truncated and an output says so; `max_new_tokens` is capped at the positions
a prompt (or the decoder) leaves (`num_tokens` says how many came); invalid UTF-8 reads as
U+FFFD, as in training; an empty text is a valid input, and an empty batch
gives empty outputs.

Signatures (all inputs and outputs batched along the first axis, except scalars):

- CausalLM `generate` (also `serving_default`): prompts, max_new_tokens,
  temperature, top_k, top_p, seed -> text, num_tokens, prompt_truncated.
  `generate_with_controls`: the same inputs and repetition_penalty, no_repeat_ngram_size,
  min_new_tokens, stop_token_ids, num_return_sequences, stop_strings -> the same outputs
  and stopped, with num_return_sequences rows per prompt (adjacent); a text ends before
  the first stop string (stopped: whether one did).
  `beam_search`: prompts, max_new_tokens, length_penalty -> the same.
  `score`: text -> log_likelihood, perplexity, num_tokens, truncated.
- Seq2SeqLM `generate` (also `serving_default`): sources, max_new_tokens, temperature,
  top_k, top_p, seed and the controls of `generate_with_controls` -> text, num_tokens,
  source_truncated, stopped (num_return_sequences rows per source, adjacent).
  `beam_search`: sources, max_new_tokens, length_penalty -> the same.
  `score`: sources, targets -> log_likelihood (of `target [end]`, teacher-forced),
  perplexity, num_tokens, source_truncated, target_truncated.
- MaskedLM `fill_mask`: text (with "[MASK]"; the first is filled), top_k -> tokens, scores,
  has_mask, truncated;
  `encode`: text -> pooled_output, sequence_output, padding_mask, truncated.
- SequenceClassifier `classify`: text (and text_pair, for a model fine-tuned on
  pairs) -> label, label_id, probabilities, truncated. Rows are built by
  `tflm.data.classification.encode_classification`, as in training.
"""

import tensorflow as tf

from tflm.data.classification import encode_classification, encode_token_ids
from tflm.generation import (
    CausalDecoder,
    Seq2SeqDecoder,
    cut_at_stop_strings,
    left_pad,
    right_pad,
)
from tflm.generation.seq2seq_rows import (
    ended_rows,
    seq2seq_features,
    seq2seq_tokens,
    sides,
    source_rows,
)

STRINGS = tf.TensorSpec([None], tf.string)
INT = tf.TensorSpec([], tf.int32)
FLOAT = tf.TensorSpec([], tf.float32)
INTS = tf.TensorSpec([None], tf.int32)
SEED = tf.TensorSpec([], tf.int64)


def _truncate_rows(ids, limit, keep="start"):
    """Cuts ragged rows to `limit` tokens; returns the rows and whether each was cut."""
    ids = ids.with_row_splits_dtype(tf.int64)
    truncated = ids.row_lengths() > tf.cast(limit, ids.row_splits.dtype)
    if keep == "end":
        start = tf.maximum(ids.row_lengths() - tf.cast(limit, ids.row_splits.dtype), 0)
        positions = tf.ragged.range(start, ids.row_lengths())
        return tf.gather(ids, positions, batch_dims=1), truncated
    return ids[:, :limit], truncated


def _valid_utf8(text):
    """Each invalid UTF-8 sequence as U+FFFD: request text as the data pipeline reads training
    text (`tflm.data.text_cleaning.replace_invalid_utf8`), and response text a REST (JSON)
    response can carry (a cut multi-byte character)."""
    return tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace")


def unless_empty(count, compute, empty):
    """`compute()`, or `empty()` (the same outputs with no rows) when the batch has no rows."""
    return tf.cond(count > 0, compute, empty)


def serving_label_names(model, label_names=None, what="classes"):
    """The names a classifier's signature returns: `label_names`, else the model's own, else
    "0", "1", ...; one per output of the head (`model.num_classes`)."""
    names = list(label_names or model.label_names or [str(i) for i in range(model.num_classes)])
    if len(names) != model.num_classes:
        raise ValueError(f"{len(names)} label names for {model.num_classes} {what}.")
    return names


def check_input(condition, message):
    """Fails the request with `message` (an InvalidArgument TF Serving returns) unless true."""
    tf.debugging.assert_equal(condition, True, message=message)


def check_parameter(condition, name, value, rule):
    """Fails the request unless `condition`, with the message "`name`: `value`; `rule`" (e.g.
    "top_p: 1.5; must be in (0, 1]"), an InvalidArgument TF Serving returns to the client."""
    tf.debugging.Assert(condition, [tf.strings.format(name + ": {}; " + rule, value)])


def check_max_new_tokens(max_new_tokens):
    """`max_new_tokens` >= 1 (a larger request than the positions hold is capped, not refused)."""
    check_parameter(max_new_tokens >= 1, "max_new_tokens", max_new_tokens, "must be at least 1")


def check_sampling(temperature, top_k, top_p):
    """The checks of `generate`'s sampling parameters."""
    check_parameter((temperature >= 0.0) & tf.math.is_finite(temperature), "temperature",
                    temperature, "must be finite and >= 0 (0: greedy)")
    check_parameter(top_k >= 0, "top_k", top_k, "must be >= 0 (0: no limit)")
    check_parameter((top_p > 0.0) & (top_p <= 1.0), "top_p", top_p,
                    "must be in (0, 1] (1: no limit)")


def check_controls(vocabulary_size, repetition_penalty, no_repeat_ngram_size, min_new_tokens,
                   stop_token_ids, num_return_sequences):
    """The checks of the decoding controls (`tflm.generation.control_logits`)."""
    check_parameter((repetition_penalty > 0.0) & tf.math.is_finite(repetition_penalty),
                    "repetition_penalty", repetition_penalty, "must be finite and > 0 (1: off)")
    check_parameter(no_repeat_ngram_size >= 0, "no_repeat_ngram_size", no_repeat_ngram_size,
                    "must be >= 0 (0: off)")
    check_parameter(min_new_tokens >= 0, "min_new_tokens", min_new_tokens,
                    "must be >= 0 (0: off)")
    check_parameter(tf.reduce_all((stop_token_ids >= 0) & (stop_token_ids < vocabulary_size)),
                    "stop_token_ids", stop_token_ids,
                    f"must be token ids in [0, {vocabulary_size})")
    check_parameter(num_return_sequences >= 1, "num_return_sequences", num_return_sequences,
                    "must be at least 1")


def check_length_penalty(length_penalty):
    """Beam search's `length_penalty`: finite, >= 0."""
    check_parameter((length_penalty >= 0.0) & tf.math.is_finite(length_penalty),
                    "length_penalty", length_penalty, "must be finite and >= 0")


def detokenized(tokenizer, tokens, lengths):
    """The text of the first `lengths` of each row of `tokens` (valid UTF-8)."""
    return _valid_utf8(tokenizer.detokenize(tf.RaggedTensor.from_tensor(tokens, lengths=lengths)))


def cut_at_stops(outputs, stop_strings):
    """`outputs` with each text cut before its first stop string, and `stopped` (whether one
    was); the tokens were all decoded (`num_tokens` counts them), only the text is cut."""
    text, stopped = cut_at_stop_strings(outputs["text"], _valid_utf8(stop_strings))
    return dict(outputs, text=text, stopped=stopped)


# With an XLA decode, prompts are left-padded to a multiple of this many tokens, so that
# requests of any prompt length share a few compiled programs.
PROMPT_BUCKET = 32


class CausalLMServing(tf.Module):
    """`generate`, `beam_search` and `score` for a `CausalLM` and its tokenizer.

    With `jit_compile=True` the decoding loops (not the tokenizer) are XLA
    programs: several times faster, compiled once per batch size, prompt
    bucket and (capped) `max_new_tokens` (warm-up requests compile the usual ones).
    The server must run XLA: TF Serving with `--xla_cpu_compilation_enabled`
    on a CPU; `tf.saved_model.load` always can.
    """

    def __init__(self, model, tokenizer, num_beams=4, jit_compile=False,
                 name="causal_lm_serving"):
        super().__init__(name=name)
        self.model = model
        self.tokenizer = tokenizer
        end_id = tokenizer.end_of_text_id
        self.end_id = tokenizer.sep_id if end_id is None else end_id
        self.pad_id = tokenizer.pad_id or 0
        # What a text is read after: the start token (Llama's <s>), else end-of-text (GPT-2).
        self.first_id = self.end_id if tokenizer.start_id is None else tokenizer.start_id
        self.decoder = CausalDecoder(model, end_id=self.end_id, pad_id=self.pad_id,
                                     xla=jit_compile)
        self.max_length = int(model.backbone.max_sequence_length)
        self.num_beams = int(num_beams)
        self.jit_compile = bool(jit_compile)
        decoder = self.decoder

        def beam_search(ids, mask, positions, keys, max_new_tokens, length_penalty):
            return decoder.beam_search_padded(ids, mask, positions, keys, max_new_tokens,
                                              self.num_beams, length_penalty)

        self._sample, self._beam_search = decoder.sample_padded, beam_search
        if self.jit_compile:
            self._sample = tf.function(decoder.sample_padded, jit_compile=True)
            self._beam_search = tf.function(beam_search, jit_compile=True)

    def _left_padded(self, ids):
        """`left_pad`, and for an XLA decode the prompt width rounded up to a bucket."""
        ids, mask, positions, keys = left_pad(ids, self.pad_id)
        if self.jit_compile:
            extra = -tf.shape(ids)[1] % PROMPT_BUCKET
            pad = [[0, 0], [extra, 0]]
            ids = tf.pad(ids, pad, constant_values=self.pad_id)
            mask, positions = tf.pad(mask, pad), tf.pad(positions, pad)
        return ids, mask, positions, keys

    def _prompts(self, prompts, max_new_tokens):
        """`(ids, truncated, steps)`: the prompts' ids, whether each was cut, and the decode
        loop's length (`max_new_tokens` capped at what the positions hold)."""
        check_max_new_tokens(max_new_tokens)
        ids = self.tokenizer.tokenize(_valid_utf8(prompts))
        # Keep the end of a long prompt (the part next to what is generated), one position
        # for a new token and one for the start token.
        has_start = self.tokenizer.start_id is not None
        ids, truncated = _truncate_rows(ids, self.max_length - 1 - has_start, keep="end")
        # Every prompt starts with the start token where the tokenizer has one (as training's
        # rows do); else an empty prompt starts from the end-of-text token, as GPT-2 does.
        started = tf.logical_or(tf.equal(ids.row_lengths(), 0), has_start)
        starts = tf.RaggedTensor.from_row_lengths(
            tf.fill([tf.reduce_sum(tf.cast(started, tf.int32))], self.first_id),
            tf.cast(started, ids.row_splits.dtype))
        ids = tf.concat([starts, tf.cast(ids, tf.int32)], axis=1)
        return ids, truncated, self.decoder.max_steps(ids.row_lengths(), max_new_tokens)

    @staticmethod
    def _no_rows():
        return {"text": tf.zeros([0], tf.string), "num_tokens": tf.zeros([0], tf.int32),
                "prompt_truncated": tf.zeros([0], tf.bool)}

    def _finish(self, tokens, lengths, truncated):
        return {"text": detokenized(self.tokenizer, tokens, lengths), "num_tokens": lengths,
                "prompt_truncated": truncated}

    @tf.function(input_signature=[STRINGS, INT, FLOAT, INT, FLOAT, SEED])
    def generate(self, prompts, max_new_tokens, temperature, top_k, top_p, seed):
        """Continues each prompt (greedy at temperature 0; else sampled, reproducibly per seed).

        Args:
            prompts: texts, after the tokenizer's start token where it has one (an imported
                Llama's <s>); else an empty one starts from the end-of-text token. A prompt keeps
                its last `max_sequence_length - 1` tokens, its start token included
                (`prompt_truncated`); invalid UTF-8 reads as U+FFFD.
            max_new_tokens: >= 1; each row adds at most this many tokens, and at most what
                the model's positions hold after its prompt (prompt + new tokens <=
                `max_sequence_length`): a larger request returns fewer (`num_tokens`).
            temperature: finite, >= 0; 0 is greedy (then top_k, top_p and seed do nothing).
            top_k: >= 0; sample among the `top_k` likeliest tokens; 0 (or more than the
                vocabulary) is no limit.
            top_p: in (0, 1]; nucleus sampling; 1 is no limit.
            seed: any int64 (negative too); the same seed and prompt give the same text.
        """
        return self._generate(prompts, max_new_tokens, temperature, top_k, top_p, seed)

    @tf.function(input_signature=[STRINGS, INT, FLOAT, INT, FLOAT, SEED, FLOAT, INT, INT, INTS,
                                  INT, STRINGS])
    def generate_with_controls(self, prompts, max_new_tokens, temperature, top_k, top_p, seed,
                               repetition_penalty, no_repeat_ngram_size, min_new_tokens,
                               stop_token_ids, num_return_sequences, stop_strings):
        """`generate` with the decoding controls (`tflm.generation.control_logits`) and stop
        strings; at 1, 0, 0, [], 1 and [] it answers as `generate` (and `stopped` False).

        Args:
            prompts, max_new_tokens, temperature, top_k, top_p, seed: as in `generate`.
            repetition_penalty: finite, > 0; 1 is off; > 1 discourages the tokens of the
                prompt and of the text so far.
            no_repeat_ngram_size: >= 0; 0 is off; no n-gram of this size appears twice in
                prompt + text.
            min_new_tokens: >= 0; end-of-text and stop ids are excluded until this many
                tokens are generated.
            stop_token_ids: token ids (in [0, vocabulary size)) that end a row like
                end-of-text, but are not returned in its text nor counted in num_tokens.
            num_return_sequences: >= 1 texts per prompt, each with its own noise (alike
                when greedy); a prompt's texts are adjacent rows of every output.
            stop_strings: each text ends before the first of these it holds (not returned;
                `stopped` says whether one did); empty strings are ignored, [] is off;
                invalid UTF-8 reads as U+FFFD, as in the text. A stop string may span
                tokens; it is found in the text once decoded, so decoding does not end at
                it: `num_tokens` counts the tokens decoded.
        """
        check_controls(self.model.backbone.vocabulary_size, repetition_penalty,
                       no_repeat_ngram_size, min_new_tokens, stop_token_ids, num_return_sequences)
        outputs = self._generate(prompts, max_new_tokens, temperature, top_k, top_p, seed,
                                 num_return_sequences, repetition_penalty=repetition_penalty,
                                 no_repeat_ngram_size=no_repeat_ngram_size,
                                 min_new_tokens=min_new_tokens, stop_token_ids=stop_token_ids)
        return cut_at_stops(outputs, stop_strings)

    def _generate(self, prompts, max_new_tokens, temperature, top_k, top_p, seed,
                  num_return_sequences=1, **controls):
        check_sampling(temperature, top_k, top_p)
        ids, truncated, steps = self._prompts(prompts, max_new_tokens)

        def decode():
            tokens, lengths = self._sample(*self._left_padded(ids), steps, temperature,
                                           top_k, top_p, seed, num_return_sequences, **controls)
            return self._finish(tokens, lengths, tf.repeat(truncated, num_return_sequences))

        return unless_empty(tf.size(prompts), decode, self._no_rows)

    @tf.function(input_signature=[STRINGS, INT, FLOAT])
    def beam_search(self, prompts, max_new_tokens, length_penalty):
        """The most likely continuation over `num_beams` beams (fixed at export).

        `prompts` and `max_new_tokens` as in `generate`; `length_penalty`: finite, >= 0.
        """
        check_length_penalty(length_penalty)
        ids, truncated, steps = self._prompts(prompts, max_new_tokens)

        def decode():
            tokens, lengths = self._beam_search(*self._left_padded(ids), steps, length_penalty)
            return self._finish(tokens, lengths, truncated)

        return unless_empty(tf.size(prompts), decode, self._no_rows)

    @tf.function(input_signature=[STRINGS])
    def score(self, text):
        """Log-likelihood of each text (each token given the ones before, after the start
        token, or end-of-text where the tokenizer has none)."""
        ids = self.tokenizer.tokenize(_valid_utf8(text))
        ids, truncated = _truncate_rows(ids, self.max_length - 1)
        batch = tf.cast(ids.nrows(), tf.int32)
        ids = tf.concat([tf.fill([batch, 1], self.first_id), tf.cast(ids, tf.int32)], axis=1)
        dense = ids.to_tensor(default_value=self.pad_id)
        mask = tf.ones_like(ids).to_tensor()
        logits = self.model({"token_ids": dense, "padding_mask": mask}, training=False)
        log_probs = tf.nn.log_softmax(tf.cast(logits[:, :-1], tf.float32), axis=-1)
        targets = dense[:, 1:]
        token_log_probs = tf.gather(log_probs, targets, axis=-1, batch_dims=2)
        weights = tf.cast(mask[:, 1:], tf.float32)
        log_likelihood = tf.reduce_sum(token_log_probs * weights, axis=1)
        count = tf.reduce_sum(weights, axis=1)
        perplexity = tf.exp(-log_likelihood / tf.maximum(count, 1.0))
        return {"log_likelihood": log_likelihood, "perplexity": perplexity,
                "num_tokens": tf.cast(count, tf.int32), "truncated": truncated}

    def signatures(self):
        generate = self.generate.get_concrete_function()
        return {"serving_default": generate, "generate": generate,
                "generate_with_controls": self.generate_with_controls.get_concrete_function(),
                "beam_search": self.beam_search.get_concrete_function(),
                "score": self.score.get_concrete_function()}


class Seq2SeqLMServing(tf.Module):
    """`generate`, `beam_search` and `score` for a `Seq2SeqLM`: a target text from a source.

    The source row is `source [end]`, as in training (`tflm.tasks.seq2seq.encode_seq2seq`),
    cut to the encoder's positions keeping its start; the target is generated from
    `[start]` (`tflm.generation.Seq2SeqDecoder`). A tokenizer with `source` and `target`
    attributes reads sources with the one and writes targets with the other. With
    `jit_compile=True` the decoding loops are XLA programs, as in `CausalLMServing`
    (sources right-padded to a multiple of `PROMPT_BUCKET` tokens).
    """

    def __init__(self, model, tokenizer, num_beams=4, jit_compile=False,
                 name="seq2seq_lm_serving"):
        super().__init__(name=name)
        self.model = model
        self.tokenizer = tokenizer
        self.source, self.target = sides(tokenizer)
        self.start_id, self.end_id = seq2seq_tokens(self.target)
        # Pads the sources too: padding is masked out, its id does not matter.
        self.pad_id = self.target.pad_id or 0
        self.decoder = Seq2SeqDecoder(model, start_id=self.start_id, end_id=self.end_id,
                                      pad_id=self.pad_id, xla=jit_compile)
        self.max_length = int(model.backbone.max_sequence_length)
        self.num_beams = int(num_beams)
        self.jit_compile = bool(jit_compile)
        decoder = self.decoder

        def beam_search(ids, mask, keys, max_new_tokens, length_penalty):
            return decoder.beam_search_padded(ids, mask, keys, max_new_tokens, self.num_beams,
                                              length_penalty)

        self._sample, self._beam_search = decoder.sample_padded, beam_search
        if self.jit_compile:
            self._sample = tf.function(decoder.sample_padded, jit_compile=True)
            self._beam_search = tf.function(beam_search, jit_compile=True)

    def _sources(self, sources):
        """`(rows, truncated)`: ragged `source [end]` ids within the encoder's positions (a
        longer source keeps its start), and whether each source was cut."""
        return source_rows(self.source, _valid_utf8(sources), self.max_length)

    def _right_padded(self, ids):
        """`right_pad`, and for an XLA decode the source width rounded up to a bucket."""
        ids, mask, keys = right_pad(ids, self.pad_id)
        if self.jit_compile:
            pad = [[0, 0], [0, -tf.shape(ids)[1] % PROMPT_BUCKET]]
            ids, mask = tf.pad(ids, pad, constant_values=self.pad_id), tf.pad(mask, pad)
        return ids, mask, keys

    @staticmethod
    def _no_rows():
        return {"text": tf.zeros([0], tf.string), "num_tokens": tf.zeros([0], tf.int32),
                "source_truncated": tf.zeros([0], tf.bool)}

    def _finish(self, tokens, lengths, truncated):
        return {"text": detokenized(self.target, tokens, lengths), "num_tokens": lengths,
                "source_truncated": truncated}

    @tf.function(input_signature=[STRINGS, INT, FLOAT, INT, FLOAT, SEED, FLOAT, INT, INT, INTS,
                                  INT, STRINGS])
    def generate(self, sources, max_new_tokens, temperature, top_k, top_p, seed,
                 repetition_penalty, no_repeat_ngram_size, min_new_tokens, stop_token_ids,
                 num_return_sequences, stop_strings):
        """The target of each source (greedy at temperature 0; else sampled, reproducibly
        per seed), with the decoding controls.

        Args:
            sources: texts; an empty one is valid (the row is `[end]`). A source keeps its
                first `max_sequence_length - 1` tokens (`source_truncated`); invalid UTF-8
                reads as U+FFFD.
            max_new_tokens: >= 1; at most this many target tokens (and at most the decoder's
                `max_sequence_length`; `num_tokens` says how many came, [end] counted).
            temperature, top_k, top_p, seed: as in `CausalLMServing.generate`.
            repetition_penalty, no_repeat_ngram_size, min_new_tokens, stop_token_ids,
                num_return_sequences, stop_strings: as in
                `CausalLMServing.generate_with_controls` (the context of the penalties is
                the target so far; `num_tokens` counts the tokens decoded, a stop string
                cuts only the text, and `stopped` says whether one did); at 1, 0, 0, [], 1
                and [] they are off. A source's texts are adjacent rows of every output.
        """
        check_max_new_tokens(max_new_tokens)
        check_sampling(temperature, top_k, top_p)
        check_controls(self.model.backbone.vocabulary_size, repetition_penalty,
                       no_repeat_ngram_size, min_new_tokens, stop_token_ids, num_return_sequences)
        ids, truncated = self._sources(sources)

        def decode():
            tokens, lengths = self._sample(
                *self._right_padded(ids), self.decoder.max_steps(max_new_tokens), temperature,
                top_k, top_p, seed, num_return_sequences, repetition_penalty=repetition_penalty,
                no_repeat_ngram_size=no_repeat_ngram_size, min_new_tokens=min_new_tokens,
                stop_token_ids=stop_token_ids)
            return self._finish(tokens, lengths, tf.repeat(truncated, num_return_sequences))

        return cut_at_stops(unless_empty(tf.size(sources), decode, self._no_rows), stop_strings)

    @tf.function(input_signature=[STRINGS, INT, FLOAT])
    def beam_search(self, sources, max_new_tokens, length_penalty):
        """The most likely target over `num_beams` beams (fixed at export).

        `sources` and `max_new_tokens` as in `generate`; `length_penalty`: finite, >= 0.
        """
        check_max_new_tokens(max_new_tokens)
        check_length_penalty(length_penalty)
        ids, truncated = self._sources(sources)

        def decode():
            tokens, lengths = self._beam_search(*self._right_padded(ids),
                                                self.decoder.max_steps(max_new_tokens),
                                                length_penalty)
            return self._finish(tokens, lengths, truncated)

        return unless_empty(tf.size(sources), decode, self._no_rows)

    @tf.function(input_signature=[STRINGS, STRINGS])
    def score(self, sources, targets):
        """Log-likelihood of each target given its source: the sum of log p over
        `target [end]`, teacher-forced from `[start]` (training's rows). A target keeps its
        first `max_sequence_length - 1` tokens (`target_truncated`)."""
        check_input(tf.equal(tf.size(sources), tf.size(targets)),
                    "sources and targets must have the same number of rows")
        source_ids, source_truncated = self._sources(sources)
        target_ids, target_truncated = ended_rows(self.target, _valid_utf8(targets),
                                                  self.max_length, self.end_id)
        # Lengths None: padded to the longest row of the batch.
        features, labels, weights = seq2seq_features(source_ids, target_ids, self.start_id,
                                                     self.pad_id, None, None)

        def log_probs():
            logits = self.model(features, training=False)
            return tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)

        def nothing():
            return tf.zeros([0, 0, self.model.backbone.vocabulary_size])

        token_log_probs = tf.gather(unless_empty(tf.size(sources), log_probs, nothing), labels,
                                    axis=-1, batch_dims=2)
        log_likelihood = tf.reduce_sum(token_log_probs * weights, axis=1)
        count = tf.reduce_sum(weights, axis=1)
        return {"log_likelihood": log_likelihood,
                "perplexity": tf.exp(-log_likelihood / tf.maximum(count, 1.0)),
                "num_tokens": tf.cast(count, tf.int32), "source_truncated": source_truncated,
                "target_truncated": target_truncated}

    def signatures(self):
        generate = self.generate.get_concrete_function()
        return {"serving_default": generate, "generate": generate,
                "beam_search": self.beam_search.get_concrete_function(),
                "score": self.score.get_concrete_function()}


class MaskedLMServing(tf.Module):
    """`fill_mask` and `encode` for a `MaskedLM` and its tokenizer."""

    def __init__(self, model, tokenizer, name="masked_lm_serving"):
        super().__init__(name=name)
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = int(model.backbone.max_sequence_length)

    @tf.function(input_signature=[STRINGS, INT])
    def fill_mask(self, text, top_k):
        """The `top_k` likeliest tokens for the first "[MASK]" of each text, with probabilities.

        A later "[MASK]" stays a mask token in the context of the first (fill one at a
        time). A text without one (or whose first was cut by truncation) has
        `has_mask` False and empty tokens with score 0. `top_k`: 1 to the vocabulary size.
        """
        vocabulary_size = self.model.backbone.vocabulary_size
        check_parameter(top_k >= 1, "top_k", top_k, "must be at least 1")
        check_parameter(top_k <= vocabulary_size, "top_k", top_k,
                        f"must be at most the vocabulary size ({vocabulary_size})")
        # "[MASK]" in the text is the mask token, not characters to tokenize.
        parts = tf.strings.split(_valid_utf8(text), "[MASK]")
        pieces = self.tokenizer.tokenize(parts.flat_values)
        mask_id = tf.constant([self.tokenizer.mask_id], tf.int32)
        pieces = tf.concat([tf.cast(pieces, tf.int32),
                            tf.RaggedTensor.from_row_lengths(
                                tf.tile(mask_id, [tf.size(parts.flat_values)]),
                                tf.ones_like(parts.flat_values, tf.int64))], axis=1)
        ids = parts.with_flat_values(pieces).merge_dims(1, 2)
        ids = ids[:, :-1]  # no mask after the last part
        features, truncated = encode_token_ids(self.tokenizer, ids, None, self.max_length,
                                               pad_to_length=False)
        is_mask = tf.equal(features["token_ids"], self.tokenizer.mask_id)
        has_mask = tf.reduce_any(is_mask, axis=1)

        def predict():
            first = tf.argmax(tf.cast(is_mask, tf.int32), axis=1, output_type=tf.int32)
            logits = self.model(dict(features, mask_positions=first[:, None]), training=False)
            if isinstance(logits, dict):  # a model with BERT's next-sentence head too
                logits = logits["masked_lm"]
            logits = logits[:, 0]
            probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
            scores, ids = tf.math.top_k(probabilities, k=top_k)
            words = _valid_utf8(self.tokenizer.detokenize(tf.reshape(ids, [-1, 1])))
            return tf.reshape(words, tf.shape(ids)), scores

        def nothing():
            return tf.zeros([0, top_k], tf.string), tf.zeros([0, top_k], tf.float32)

        words, scores = unless_empty(tf.size(text), predict, nothing)
        # has_mask is False also when truncation cut the text before its first "[MASK]".
        words = tf.where(has_mask[:, None], words, "")
        scores = tf.where(has_mask[:, None], scores, 0.0)
        return {"tokens": words, "scores": scores, "has_mask": has_mask, "truncated": truncated}

    @tf.function(input_signature=[STRINGS])
    def encode(self, text):
        """Per-token and pooled embeddings of each text."""
        features, truncated = encode_classification(self.tokenizer, _valid_utf8(text), None,
                                                    self.max_length, pad_to_length=False)
        width = self.model.backbone.hidden_dim

        def embed():
            outputs = self.model.backbone(features, training=False)
            sequence = tf.cast(outputs["sequence_output"], tf.float32)
            if "pooled_output" in outputs:
                return tf.cast(outputs["pooled_output"], tf.float32), sequence
            mask = tf.cast(features["padding_mask"], tf.float32)[:, :, None]
            return tf.reduce_sum(sequence * mask, axis=1) / tf.reduce_sum(mask, axis=1), sequence

        def nothing():
            return tf.zeros([0, width]), tf.zeros([0, tf.shape(features["token_ids"])[1], width])

        pooled, sequence = unless_empty(tf.size(text), embed, nothing)
        return {"pooled_output": pooled, "sequence_output": sequence,
                "padding_mask": features["padding_mask"], "truncated": truncated}

    def signatures(self):
        return {"serving_default": self.fill_mask.get_concrete_function(),
                "fill_mask": self.fill_mask.get_concrete_function(),
                "encode": self.encode.get_concrete_function()}


class ClassifierServing(tf.Module):
    """`classify` for a `SequenceClassifier`, its tokenizer and label names.

    Args:
        model: the classifier.
        tokenizer: its tokenizer.
        label_names: names in class-id order; default the model's own, else "0", "1", ...
        text_pair: whether `classify` takes a second text (a model fine-tuned on pairs).
        sequence_length: the longest row (as in training); default the model's positions.
    """

    def __init__(self, model, tokenizer, label_names=None, text_pair=False, sequence_length=None,
                 name="classifier_serving"):
        super().__init__(name=name)
        self.model = model
        self.tokenizer = tokenizer
        self.label_names = tf.constant(serving_label_names(model, label_names))
        self.text_pair = bool(text_pair)
        self.causal = bool(model.backbone.causal)
        self.max_length = int(sequence_length or model.backbone.max_sequence_length)

    def _classify(self, text, text_pair):
        if text_pair is not None:
            text_pair = _valid_utf8(text_pair)
        features, truncated = encode_classification(self.tokenizer, _valid_utf8(text), text_pair,
                                                    self.max_length, self.causal,
                                                    pad_to_length=False)
        classes = self.model.num_classes
        probabilities = unless_empty(
            tf.size(text),
            lambda: tf.nn.softmax(tf.cast(self.model(features, training=False), tf.float32)),
            lambda: tf.zeros([0, classes]))
        label_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return {"label": tf.gather(self.label_names, label_id), "label_id": label_id,
                "probabilities": probabilities, "truncated": truncated}

    @tf.function(input_signature=[STRINGS])
    def classify(self, text):
        """The most likely label of each text, and every label's probability."""
        return self._classify(text, None)

    @tf.function(input_signature=[STRINGS, STRINGS])
    def classify_pairs(self, text, text_pair):
        """The same for pairs of texts (`[CLS] text [SEP] text_pair [SEP]`)."""
        check_input(tf.equal(tf.size(text), tf.size(text_pair)),
                    "text and text_pair must have the same number of rows")
        return self._classify(text, text_pair)

    def signatures(self):
        classify = (self.classify_pairs if self.text_pair else self.classify).get_concrete_function()
        return {"serving_default": classify, "classify": classify}
