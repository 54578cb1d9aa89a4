"""`seq2seq`: a target text from a source text (translation, summarization, rewriting).

Data: labelled JSONL or CSV records holding a source (`data.source_field`) and a target
(`data.target_field`), read whole as `classification` reads its records: a record missing
either string, or with either blank, is a `LabelledDataError` naming file:line, or with
`data.on_bad_record=count` is skipped and counted (`records_missing_field`); every
`data.eval_every_nth_document`-th good record is held out. One tokenizer (`data.tokenizer`)
reads both sides, or each side its own (`data.source_tokenizer`, `data.target_tokenizer`
and their vocab paths, for languages that want their own vocabularies): a `TokenizerPair`,
saved with the run.

Batches (`encode_seq2seq`, in-graph), static shapes:

    encoder_token_ids     source [end]                padded to data.sequence_length
    decoder_token_ids     [start] target              padded to data.target_length
    labels                target [end]                (decoder_token_ids shifted by one)
    sample weights        1 at real target tokens, 0 at padding

`[start]` is the (target) tokenizer's [CLS] (else its end-of-text), `[end]` its end-of-text
(else [SEP]). A side too long for its row is cut and still ends with `[end]`; the cuts are
counted (`sources_truncated`, `targets_truncated` in the run's input counts): size
`data.sequence_length` and `data.target_length` to the data.

Model: `Seq2SeqLM` on a `Seq2SeqBackbone` of the `model` keys (`model.num_decoder_layers`:
decoder blocks, 0 as many as `model.num_layers`; `model.shared_embeddings`: one token
embedding for both sides, which two tokenizers cannot share).
Loss: the mean cross-entropy over the real target tokens, with `trainer.label_smoothing`.

Evaluation: loss, perplexity of the targets, token accuracy (teacher-forced) and the token
count; then the first `data.eval_max_examples` held-out sources are decoded (greedy, or
beam search with `data.eval_num_beams`, up to `data.eval_max_new_tokens`) and scored
against their targets: BLEU, chrF, ROUGE-1/2/L and exact match
(`tflm.training.text_metrics.generation_report`, `data.eval_language`), with a few
(source, reference, hypothesis) `samples` in eval_results.json.

Serving (`Seq2SeqLMServing`): `generate` (`serving_default`; sampling and the decoding
controls), `beam_search` and `score` (a target's log-likelihood given its source), text in
and text out.

Example:
>>> config = tflm.experiment.load_experiment("configs/tiny_seq2seq.yaml",
...                                          "data.input_path=pairs.jsonl")
>>> trainer = tflm.experiment.run_experiment(config, "runs/reverse", "train_and_eval")
>>> trainer.eval_results["perplexity"], trainer.eval_results["bleu"]
"""

import dataclasses

import numpy as np
import tensorflow as tf

from tflm.config import ConfigError, ranged
from tflm.data.classification import (
    AUTOTUNE,
    LABELLED_FORMATS,
    LabelledDataError,
    bad_record_handler,
    evaluation_order,
    file_records,
    finish_labelled_batches,
    record_index_batches,
    records_of_split,
    text_value,
)
from tflm.data.tokenizers import TOKENIZERS, TokenizerPair, make_tokenizer
from tflm.export.serving import Seq2SeqLMServing
from tflm.generation.generate import generate
from tflm.generation.seq2seq_rows import (
    ended_rows,
    seq2seq_features,
    seq2seq_tokens,
    sides,
    source_rows,
)
from tflm.models.factory import build_seq2seq_backbone
from tflm.models.seq2seq_lm import Seq2SeqLM
from tflm.tasks.base import Task
from tflm.tasks.registry import register_task
from tflm.training.text_metrics import LANGUAGES, generation_report

SIDES = ("source", "target")
# How many (source, reference, hypothesis) triples evaluation keeps in eval_results.json.
NUM_SAMPLES = 5

# Warm-up requests of the export: a source and an empty one.
WARMUP_SOURCES = np.array([b"It is a truth universally acknowledged", b""])


# -- Config. ------------------------------------------------------------------------------------
@dataclasses.dataclass
class Seq2SeqData:
    """The `data` keys of `seq2seq` (the source row is `data.sequence_length` long)."""

    source_field: str = "source"
    target_field: str = "target"
    # Decoder positions: `[start] target` in, `target [end]` out.
    target_length: int = ranged(64, at_least=2)
    # A side's own tokenizer ("": data.tokenizer and data.vocab_path); its vocab path
    # ("": data.vocab_path when the side's tokenizer is unset, else none).
    source_tokenizer: str = ""
    source_vocab_path: str = ""
    target_tokenizer: str = ""
    target_vocab_path: str = ""
    # Generation metrics in evaluation: how many held-out records are decoded (0: none),
    # beams (1: greedy), new tokens (0: data.target_length), and the metrics' language.
    eval_max_examples: int = ranged(200, at_least=0)
    eval_num_beams: int = ranged(1, at_least=1)
    eval_max_new_tokens: int = ranged(0, at_least=0)
    eval_language: str = "auto"  # auto | zh | en (see generation_report)


@dataclasses.dataclass
class Seq2SeqModel:
    """The `model` keys of `seq2seq` (see `Seq2SeqBackbone`)."""

    num_decoder_layers: int = ranged(0, at_least=0)  # 0: as many as model.num_layers
    shared_embeddings: bool = True  # one token embedding for source, target and output


# -- Reading. -----------------------------------------------------------------------------------
@dataclasses.dataclass
class Seq2SeqRecords:
    """Source and target texts, and where each record came from ("file:line")."""

    sources: list
    targets: list
    locations: list

    def __len__(self):
        return len(self.sources)

    def select(self, keep):
        """The records at the indices `keep` (in order)."""
        return Seq2SeqRecords([self.sources[i] for i in keep], [self.targets[i] for i in keep],
                              [self.locations[i] for i in keep])


def read_pairs(files, input_format="jsonl", source_field="source", target_field="target",
               csv_delimiter=",", on_bad_record="error", stats=None):
    """Source/target records of JSONL or CSV `files`: a record needs both fields as
    non-blank strings; else a `LabelledDataError` naming file:line, or with
    `on_bad_record="count"` it is skipped and counted (`records_missing_field`)."""
    if input_format not in LABELLED_FORMATS:
        raise LabelledDataError(f"data.input_format={input_format!r}: seq2seq pairs are read "
                                f"from {' or '.join(LABELLED_FORMATS)} files.")
    bad = bad_record_handler(on_bad_record, stats)
    records = Seq2SeqRecords([], [], [])
    fields = (source_field, target_field)
    for path, number, record in file_records(files, input_format, fields, csv_delimiter, stats,
                                             bad):
        source = text_value(record, source_field, path, number, bad)
        target = None if source is None else text_value(record, target_field, path, number,
                                                        bad)
        if target is None:
            continue
        if stats is not None:
            stats.add("documents", 1)
        records.sources.append(source)
        records.targets.append(target)
        records.locations.append(f"{path}:{number}")
    return records


def seq2seq_records(config, split="train", stats=None):
    """The records of a split of `config.data` (see `records_of_split`)."""
    data = config.data
    return records_of_split(
        config, split,
        lambda files, on_bad_record: read_pairs(files, data.input_format, data.source_field,
                                                data.target_field, data.csv_delimiter,
                                                on_bad_record, stats),
        what="source/target pairs",
        fields=f"source field {data.source_field!r}, target field {data.target_field!r}")


# -- In-graph encoding. -------------------------------------------------------------------------
def encode_seq2seq(tokenizer, sources, targets, source_length, target_length, stats=None,
                   real=None):
    """Tokenizes and pads `(batch,)` sources and targets into `Seq2SeqLM` rows, in-graph
    (`tokenizer`: one, or a `TokenizerPair` whose sides read their own texts).

    `stats` counts the first `real` rows' (default: all) tokens of both sides, special
    tokens included, and the sources and targets cut to fit (`sources_truncated`,
    `targets_truncated`).

    Returns:
        `(features, labels, weights)`: features `{"encoder_token_ids",
        "encoder_padding_mask"}` `(batch, source_length)` and `{"decoder_token_ids",
        "decoder_padding_mask"}` `(batch, target_length)` int32; labels (the decoder's ids
        shifted by one) int32 and weights float32 (0 at padding), `(batch, target_length)`.
    """
    source_tokenizer, target_tokenizer = sides(tokenizer)
    start, end = seq2seq_tokens(target_tokenizer)
    source, source_cut = source_rows(source_tokenizer, sources, source_length)
    target, target_cut = ended_rows(target_tokenizer, targets, target_length, end)
    features, labels, weights = seq2seq_features(
        source, target, start, target_tokenizer.pad_id or 0, source_length, target_length)
    if stats is not None:
        real = tf.size(sources) if real is None else real
        stats.add("tokens", tf.reduce_sum(features["encoder_padding_mask"][:real])
                  + tf.reduce_sum(features["decoder_padding_mask"][:real]))
        stats.add("sources_truncated", tf.math.count_nonzero(source_cut[:real]))
        stats.add("targets_truncated", tf.math.count_nonzero(target_cut[:real]))
    return features, labels, weights


def seq2seq_batches(records, tokenizer, source_length, target_length, batch_size,
                    training=True, seed=0, input_context=None, stats=None):
    """`(features, labels, weights)` batches of `records` in the order of
    `record_index_batches` (the final evaluation batch padded with weight-0 rows).
    `stats` counts the real rows' tokens and cuts (see `encode_seq2seq`)."""
    sources = tf.constant(records.sources, tf.string)
    targets = tf.constant(records.targets, tf.string)
    batches = record_index_batches(len(records), batch_size, training, seed, input_context)

    @tf.autograph.experimental.do_not_convert
    def encode(index, real):
        features, labels, weights = encode_seq2seq(
            tokenizer, tf.gather(sources, index), tf.gather(targets, index), source_length,
            target_length, stats, real)
        weights *= tf.sequence_mask(real, batch_size, tf.float32)[:, None]
        source_shape, target_shape = [batch_size, source_length], [batch_size, target_length]
        features = {k: tf.ensure_shape(v, source_shape if k.startswith("encoder") else
                                       target_shape) for k, v in features.items()}
        return (features, tf.ensure_shape(labels, target_shape),
                tf.ensure_shape(weights, target_shape))

    return finish_labelled_batches(
        batches.map(encode, num_parallel_calls=AUTOTUNE, deterministic=True))


def decode_targets(model, tokenizer, sources, source_length, max_new_tokens, num_beams=1,
                   batch_size=32):
    """The targets a `Seq2SeqLM` generates for source texts, as strings: greedy, or beam
    search with `num_beams > 1`, in batches of `batch_size` (`tflm.generation.generate`:
    each source cut to `source_length` as training cuts it, the new ids detokenized by the
    target tokenizer, undecodable bytes replaced)."""
    texts = []
    for begin in range(0, len(sources), batch_size):
        texts += generate(model, sources[begin:begin + batch_size], max_new_tokens,
                          num_beams=num_beams, tokenizer=tokenizer, jit_compile=False,
                          source_length=source_length)
    return texts


def tokenizer_specs(data):
    """`{side: (kind, vocab_path)}` of the source and target tokenizers the `data` keys
    name: a side's own keys, else `data.tokenizer` and `data.vocab_path`."""
    specs = {}
    for side in SIDES:
        kind, path = getattr(data, f"{side}_tokenizer"), getattr(data, f"{side}_vocab_path")
        specs[side] = (kind or data.tokenizer, path if kind or path else data.vocab_path)
    return specs


def has_own_tokenizers(data):
    """Whether any `data.<side>_tokenizer` or `data.<side>_vocab_path` is set."""
    return any(getattr(data, f"{side}_{key}") for side in SIDES
               for key in ("tokenizer", "vocab_path"))


def check_seq2seq_model(config, task_name):
    """What a `Seq2SeqBackbone` does not have (yet): a `ConfigError` naming the key that sets
    it, rather than ignoring it."""
    model = config.model
    # model.causal=false is the encoder's direction (what model.init_checkpoint resolves to).
    unsupported = {"model.causal": bool(model.causal),
                   "model.num_segments": model.num_segments != 0,
                   "model.pooler": model.pooler,
                   "model.final_norm": model.final_norm not in (None, model.norm_first),
                   "model.finetune": model.finetune not in ("full", "lora"),
                   "model.freeze_bottom_layers": model.freeze_bottom_layers != 0}
    for key, is_set in unsupported.items():
        if is_set:
            raise ConfigError(f"{key} is not supported by model.task={task_name!r}; leave it "
                              "at its default.")


# -- The task. ----------------------------------------------------------------------------------
@register_task
class Seq2SeqTask(Task):
    """Sequence-to-sequence generation (a `Seq2SeqLM`)."""

    name = "seq2seq"
    model_class = Seq2SeqLM
    projected_share = 1.0
    causal = False  # the encoder's direction; the decoder is causal by construction
    generates_text = True
    config_keys = {"data": Seq2SeqData, "model": Seq2SeqModel}

    @classmethod
    def validate(cls, config):
        model, data = config.model, config.data
        if data.sequence_length < 2:
            raise ConfigError(f"data.sequence_length={data.sequence_length}: a seq2seq source "
                              "row needs at least 2 (a token and [end]).")
        if data.target_length > model.max_sequence_length:
            raise ConfigError(f"data.target_length={data.target_length} exceeds "
                              f"model.max_sequence_length={model.max_sequence_length}.")
        if data.source_field == data.target_field:
            raise ConfigError(f"data.source_field and data.target_field are both "
                              f"{data.source_field!r}.")
        if data.eval_language not in LANGUAGES:
            raise ConfigError(f"data.eval_language: {data.eval_language!r} is not one of "
                              f"{LANGUAGES}.")
        cls._validate_tokenizers(config)
        check_seq2seq_model(config, cls.name)

    @staticmethod
    def _validate_tokenizers(config):
        data = config.data
        specs = tokenizer_specs(data)
        for side, (kind, path) in specs.items():
            key = f"data.{side}_tokenizer" if getattr(data, f"{side}_tokenizer") else \
                "data.tokenizer"
            if kind not in TOKENIZERS:
                raise ConfigError(f"{key}: {kind!r} is not one of {tuple(TOKENIZERS)}.")
            if kind == "byte" and path:
                raise ConfigError(f"data.{side}_vocab_path={path!r}: the byte tokenizer "
                                  f"({key}) has no vocabulary file.")
            if kind != "byte" and not path:
                raise ConfigError(f"{key}={kind!r} needs data.{side}_vocab_path (a folder "
                                  "written by tflm-vocab).")
        if specs["source"] != specs["target"] and config.model.shared_embeddings:
            raise ConfigError(
                f"model.shared_embeddings=true needs one tokenizer for both sides; the source "
                f"is {specs['source']} and the target {specs['target']} (data.source_tokenizer, "
                "data.target_tokenizer and their vocab paths): set model.shared_embeddings="
                "false.")

    @classmethod
    def create_backbone(cls, model_config, dtype=None):
        return build_seq2seq_backbone(model_config, dtype=dtype)

    def make_tokenizer(self):
        """`data.tokenizer`'s tokenizer, or a `TokenizerPair` when a side has its own."""
        data = self.config.data
        if not has_own_tokenizers(data):
            return super().make_tokenizer()
        specs = tokenizer_specs(data)
        return TokenizerPair(*(make_tokenizer(*specs[side]) for side in SIDES))

    def batches(self, tokenizer, batch_size, input_context, stats, training, split):
        config, data = self.config, self.config.data
        # Checked where the data is read: a converted checkpoint's model_dir, loaded to
        # export or to start a run from (model.init_checkpoint), has no data of its own.
        if data.input_format not in LABELLED_FORMATS:
            raise ConfigError(f"data.input_format={data.input_format!r}: seq2seq reads "
                              "source/target pairs from 'jsonl' or 'csv' files.")
        if not data.input_path:
            raise ConfigError("model.task='seq2seq' needs data.input_path (JSONL or CSV files "
                              "with data.source_field and data.target_field).")
        records = seq2seq_records(config, split, stats)
        return seq2seq_batches(records, tokenizer, config.data.sequence_length,
                               config.data.target_length, batch_size, training=training,
                               seed=config.runtime.seed, input_context=input_context,
                               stats=stats)

    # Evaluation: `Task.eval_sums` / `eval_report` (loss, perplexity, token accuracy), and:
    def generation_report(self, model, tokenizer):
        """BLEU, chrF, ROUGE and exact match of the targets decoded for the first
        `data.eval_max_examples` held-out records (in the order evaluation reads them),
        with the first few as `samples`; {} when it is 0."""
        config, data = self.config, self.config.data
        if not data.eval_max_examples:
            return {}
        records = seq2seq_records(config, "eval")
        order = evaluation_order(len(records), config.runtime.seed)
        records = records.select(order[:data.eval_max_examples])
        hypotheses = decode_targets(model, tokenizer, records.sources, data.sequence_length,
                                    data.eval_max_new_tokens or data.target_length,
                                    data.eval_num_beams, data.global_batch_size)
        report = generation_report(hypotheses, records.targets, data.eval_language)
        report["samples"] = [
            {"source": source, "reference": reference, "hypothesis": hypothesis}
            for source, reference, hypothesis in zip(records.sources, records.targets,
                                                     hypotheses[:NUM_SAMPLES])]
        return report

    # -- Serving. ---------------------------------------------------------------------------
    @classmethod
    def serving_module(cls, model, tokenizer, options):
        return Seq2SeqLMServing(model, tokenizer, num_beams=options.num_beams,
                                jit_compile=options.jit_compile)

    @classmethod
    def warmup_inputs(cls, module):
        plain = {"sources": WARMUP_SOURCES, "max_new_tokens": np.int32(4),
                 "temperature": np.float32(0.0), "top_k": np.int32(0), "top_p": np.float32(1.0),
                 "seed": np.int64(0), "repetition_penalty": np.float32(1.0),
                 "no_repeat_ngram_size": np.int32(0), "min_new_tokens": np.int32(0),
                 "stop_token_ids": np.zeros([0], np.int32), "num_return_sequences": np.int32(1),
                 "stop_strings": np.zeros([0], bytes)}
        controls = dict(plain, temperature=np.float32(0.7), top_k=np.int32(20),
                        top_p=np.float32(0.9), repetition_penalty=np.float32(1.2),
                        no_repeat_ngram_size=np.int32(2), min_new_tokens=np.int32(1),
                        stop_token_ids=np.array([module.end_id], np.int32),
                        num_return_sequences=np.int32(2), stop_strings=np.array([b"\n"]))
        return [
            ("generate", plain),
            ("generate", controls),
            ("beam_search", {"sources": WARMUP_SOURCES, "max_new_tokens": np.int32(4),
                             "length_penalty": np.float32(0.6)}),
            ("score", {"sources": WARMUP_SOURCES, "targets": np.array([b"truth", b""])}),
        ]
