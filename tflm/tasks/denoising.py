"""`denoising`: encoder-decoder pretraining on raw text, T5's span corruption or BART's
text infilling (`tflm.data.noising`), in-graph in tf.data.

Data: the language models' text (`token_documents`: text, JSONL or prepared TFRecords;
`data.input_path` empty reads the embedded corpus), packed into rows with the tokenizer's
end-of-text (else [SEP]) between documents, then noised a batch at a time. A row's noise
depends on `(runtime.seed, its index in the stream)` only: deterministic, and redrawn each
epoch (the stream keeps counting).

`data.noise`:

    span_corruption   T5: `data.noise_density` of a row's tokens in spans of mean length
                      `data.mean_noise_span_length`; each span becomes one sentinel in the
                      inputs, the targets are the sentinels and their spans. Rows are as long
                      as `span_corruption_row_length(data.sequence_length, ...)` says, so
                      that the inputs fill `data.sequence_length` exactly.
    text_infilling    BART: `data.mask_ratio` of a row's tokens in spans of
                      Poisson(`data.poisson_lambda`) lengths, each span one mask; with
                      `data.permute_sentences` the sentences (ending at ".", "!", "?") are
                      shuffled first. The targets are the row. Rows are `data.sequence_length
                      - 1 - slack` long (`infilling_row_length`): zero-length spans make the
                      inputs longer than the row; a row whose inputs still do not fit is
                      dropped and counted (`noised_rows_too_long`).

Both append [end] to inputs and targets. Batches are `seq2seq`'s: encoder rows of
`data.sequence_length`, decoder rows of `data.target_length` (0: as long as the noise
needs), labels the targets, weights 0 at padding.

Reserved ids: tflm's vocabularies have no sentinels, so the top `data.num_sentinels` ids
of the model's vocabulary are the sentinels, `model.vocabulary_size - 1` the first span's
(T5's `<extra_id_0>`), down to `model.vocabulary_size - data.num_sentinels`.
`model.vocabulary_size` must exceed the tokenizer's vocabulary by that many, so that text
never gives them. Text infilling's mask is the tokenizer's [MASK], else the top id of the
model's vocabulary (reserved the same way).

Model, loss, evaluation and serving: `seq2seq`'s (a `Seq2SeqLM`; loss, perplexity, token
accuracy; `Seq2SeqLMServing`).

Example:
>>> config = tflm.experiment.load_experiment("configs/tiny_denoising.yaml")
>>> trainer = tflm.experiment.run_experiment(config, "runs/denoise", "train_and_eval")
>>> trainer.eval_results["perplexity"]
"""

import dataclasses

import tensorflow as tf

from tflm.config import ConfigError, ranged
from tflm.data.noising import (
    span_corruption,
    span_corruption_lengths,
    span_corruption_row_length,
    text_infilling,
)
from tflm.data.pipeline import AUTOTUNE, _shuffle, pack_token_stream, token_documents
from tflm.tasks.base import Task, text_input_only
from tflm.tasks.registry import register_task
from tflm.tasks.seq2seq import (
    Seq2SeqModel,
    Seq2SeqTask,
    check_seq2seq_model,
    seq2seq_features,
    seq2seq_tokens,
)

NOISES = ("span_corruption", "text_infilling")
SENTENCE_ENDS = (".", "!", "?")  # BART's sentence permutation splits after these


@dataclasses.dataclass
class DenoisingData:
    """The `data` keys of `denoising` (the encoder's row is `data.sequence_length` long)."""

    noise: str = "span_corruption"  # span_corruption (T5) | text_infilling (BART)
    # Decoder positions; 0: exactly as many as the noise's targets need.
    target_length: int = ranged(0, at_least=2, also=(0,))
    # T5 span corruption.
    noise_density: float = ranged(0.15, above=0, below=1)
    mean_noise_span_length: float = ranged(3.0, at_least=1)
    num_sentinels: int = ranged(100, at_least=1)  # the top ids of model.vocabulary_size
    # BART text infilling.
    mask_ratio: float = ranged(0.3, at_least=0, at_most=1)
    poisson_lambda: float = ranged(3.0, above=0)
    permute_sentences: bool = False


def infilling_row_length(sequence_length):
    """Text infilling's row length: `sequence_length` less [end] and a slack of
    `max(1, sequence_length // 32)` for the masks of zero-length spans."""
    return sequence_length - 1 - max(1, sequence_length // 32)


def denoising_lengths(data):
    """`(row_length, targets_length)` of `data`'s noise: the packed rows, and the targets
    (with [end]) they give; a `ConfigError` naming the key if the rows are too short."""
    if data.noise == "span_corruption":
        try:
            return span_corruption_row_length(data.sequence_length, data.noise_density,
                                              data.mean_noise_span_length)
        except ConfigError:
            raise ConfigError(f"data.sequence_length={data.sequence_length} is too short for "
                              "span corruption.") from None
    row_length = infilling_row_length(data.sequence_length)
    if row_length < 1:
        raise ConfigError(f"data.sequence_length={data.sequence_length} is too short for text "
                          "infilling: rows need [end] and a slack of 1.")
    return row_length, row_length + 1


def num_noise_spans(data):
    """The noise spans of each span-corrupted row (all rows have one length)."""
    row_length, _ = denoising_lengths(data)
    inputs, targets = span_corruption_lengths(row_length, data.noise_density,
                                              data.mean_noise_span_length)
    # inputs = row - noise + spans + 1 and targets = noise + spans + 1.
    return (inputs + targets - 2 - row_length) // 2


def reserved_ids(config, tokenizer):
    """`(sentinel_ids, mask_id)` of the config's noise (see the module docstring); the
    unused one is None. A `ConfigError` naming the keys if text could give them."""
    data, vocabulary_size = config.data, config.model.vocabulary_size
    if data.noise == "text_infilling" and tokenizer.mask_id is not None:
        return None, tokenizer.mask_id
    count = data.num_sentinels if data.noise == "span_corruption" else 1
    if vocabulary_size - count < tokenizer.vocabulary_size:
        what = (f"data.num_sentinels={count} sentinels" if data.noise == "span_corruption"
                else "a mask id (it has no [MASK])")
        raise ConfigError(
            f"model.vocabulary_size={vocabulary_size} must hold the {tokenizer.kind} "
            f"tokenizer's {tokenizer.vocabulary_size} ids and {what} above them: set it to "
            f"{tokenizer.vocabulary_size + count} or more.")
    if data.noise == "span_corruption":
        return list(range(vocabulary_size - 1, vocabulary_size - 1 - count, -1)), None
    return None, vocabulary_size - 1


def sentence_end_ids(tokenizer):
    """The ids of `SENTENCE_ENDS` that the tokenizer has as whole tokens, and its [end]."""
    ids = {seq2seq_tokens(tokenizer)[1]}
    for token in SENTENCE_ENDS:
        try:
            ids.add(int(tokenizer.token_to_id(token)))
        except (KeyError, ValueError):
            continue
    return sorted(ids)


def denoising_batches(documents, tokenizer, config, batch_size, training=True, stats=None,
                      seed_offset=0):
    """`(features, labels, weights)` batches of `Seq2SeqLM` rows from a dataset of token
    documents (see the module docstring), in-graph.

    The `i`-th row of the stream is noised with `(runtime.seed, seed_offset, i)` only.
    Training: shuffled, endless, every batch full; otherwise one ordered pass whose last
    batch may be smaller.
    """
    data = config.data
    start, end = seq2seq_tokens(tokenizer)
    pad_id = tokenizer.pad_id or 0
    row_length, targets_length = denoising_lengths(data)
    target_length = data.target_length or targets_length
    sentinel_ids, mask_id = reserved_ids(config, tokenizer)
    seed = tf.constant(config.runtime.seed * 1_000_003 + seed_offset, tf.int64)
    rows = pack_token_stream(documents, row_length, end)
    rows = _shuffle(rows, data.shuffle_buffer_size if training else 0, config.runtime.seed)
    infilling = data.noise == "text_infilling"
    # Text infilling drops rows that do not fit: batch them again afterwards.
    rows = rows.enumerate().batch(batch_size, drop_remainder=training and not infilling)

    @tf.autograph.experimental.do_not_convert
    def noise(index, batch):
        if infilling:
            noised = text_infilling(
                batch, index, seed, mask_id, data.mask_ratio, data.poisson_lambda,
                sentence_end_ids(tokenizer) if data.permute_sentences else None, end_id=end)
        else:
            noised = span_corruption(batch, index, seed, sentinel_ids, data.noise_density,
                                     data.mean_noise_span_length, end_id=end)
        return noised["inputs"], noised["targets"]

    rows = rows.map(noise, num_parallel_calls=AUTOTUNE, deterministic=True)
    if infilling:
        @tf.autograph.experimental.do_not_convert
        def fits(inputs, targets):
            del targets
            return tf.shape(inputs)[0] <= data.sequence_length

        @tf.autograph.experimental.do_not_convert
        def count(inputs, targets):
            too_long = tf.cast(tf.shape(inputs)[0] > data.sequence_length, tf.int64)
            with tf.control_dependencies([stats.add("noised_rows_too_long", too_long)]):
                return tf.identity(inputs), targets

        rows = rows.unbatch()
        if stats is not None:
            rows = rows.map(count)
        rows = rows.filter(fits).ragged_batch(batch_size, drop_remainder=training)

    rows_shape = [batch_size if training else None]

    @tf.autograph.experimental.do_not_convert
    def encode(inputs, targets):
        # Span corruption's lengths are exact and the infilled rows that fit were kept:
        # `seq2seq_features` cuts nothing.
        features, labels, weights = seq2seq_features(inputs, targets, start, pad_id,
                                                     data.sequence_length, target_length)
        source_shape = rows_shape + [data.sequence_length]
        target_shape = rows_shape + [target_length]
        features = {k: tf.ensure_shape(v, source_shape if k.startswith("encoder") else
                                       target_shape) for k, v in features.items()}
        if stats is not None:
            stats.add("tokens", tf.reduce_sum(features["encoder_padding_mask"])
                      + tf.reduce_sum(features["decoder_padding_mask"]))
        return (features, tf.ensure_shape(labels, target_shape),
                tf.ensure_shape(weights, target_shape))

    return rows.map(encode, num_parallel_calls=AUTOTUNE, deterministic=True).prefetch(AUTOTUNE)


@register_task
class DenoisingTask(Seq2SeqTask):
    """Encoder-decoder pretraining by denoising raw text (a `Seq2SeqLM`)."""

    name = "denoising"
    config_keys = {"data": DenoisingData, "model": Seq2SeqModel}

    @classmethod
    def validate(cls, config):
        text_input_only(config, cls.name)
        data, model = config.data, config.model
        if data.noise not in NOISES:
            raise ConfigError(f"data.noise: {data.noise!r} is not one of {NOISES}")
        _, targets_length = denoising_lengths(data)
        if data.target_length and data.target_length < targets_length:
            raise ConfigError(f"data.target_length={data.target_length} is shorter than the "
                              f"{targets_length} positions of the {data.noise} targets (0: "
                              "exactly those).")
        target_length = data.target_length or targets_length
        if target_length > model.max_sequence_length:
            raise ConfigError(f"data.target_length={target_length} (the {data.noise} targets) "
                              f"exceeds model.max_sequence_length={model.max_sequence_length}.")
        if data.noise == "span_corruption" and num_noise_spans(data) > data.num_sentinels:
            raise ConfigError(f"data.num_sentinels={data.num_sentinels} is fewer than the "
                              f"{num_noise_spans(data)} noise spans of a row.")
        check_seq2seq_model(config, cls.name)

    # One token stream, so one tokenizer; the targets are spans, not text to score.
    make_tokenizer = Task.make_tokenizer
    generation_report = Task.generation_report

    def batches(self, tokenizer, batch_size, input_context, stats, training, split):
        tokens = token_documents(self.config, tokenizer, input_context, stats, training, split)
        offset = 0 if input_context is None else input_context.input_pipeline_id
        return denoising_batches(tokens, tokenizer, self.config, batch_size, training=training,
                                 stats=stats, seed_offset=offset)
