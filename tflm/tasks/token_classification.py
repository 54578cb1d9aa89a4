"""`token_classification`: named entities (NER) as BIO tags on tokens, from character spans.

Data: JSON Lines, one text per line with its entities as character-offset spans,
`{"text": "...", "entities": [[start, end, "PER"], ...]}` (`data.text_field`,
`data.entities_field`; Python `str` offsets, end exclusive). Every record is checked
in Python while it is read: a missing or non-string text, an empty text, a missing
entity list, a malformed span, a span past the end of the text, overlapping spans and
an unknown entity type are `LabelledDataError`s naming `file:line`, or with
`data.on_bad_record=count` are skipped and counted (`records_missing_field`).

Tags: `O`, then `B-X`, `I-X` for each entity type `X` in sorted order; the tag names
are `data.label_names` (default: from the types of the training split, written into the
config so that params.yaml and the saved model carry them). Rows are
`[CLS] tokens [SEP]`; the first token of each character carries its character's tag
with weight 1, every other token (the rest of a character's bytes, [CLS], [SEP],
padding) weight 0, so the loss, the tag accuracy and the entities see one position per
character. Only the byte tokenizer maps tokens back to characters exactly (the
lead byte of each UTF-8 character); tflm's WordPiece and SentencePiece tokenizers
normalize the text first (NFKC, case, accents, CJK spacing), so their offsets index the
normalized text, not the input: they are a `ConfigError`.

Loss: weighted cross-entropy (`tflm.models.losses.weighted_cross_entropy`, shared by
the trainer and `model.fit`). Evaluation: entity-level precision, recall and F1 per type
and micro-averaged, with exact matching as seqeval's strict IOB2 mode: an entity is a
`B-X` followed by its run of `I-X`, an `I-X` that follows no `B-X`/`I-X` starts none,
and a predicted entity counts only if its type, start and end equal a gold entity's
(on the characters that fit in `data.sequence_length`). Serving: `tag`
(`TokenClassifierServing`).

Example:
>>> config = load_experiment("configs/ner_zh.yaml")
>>> run_experiment(config, "runs/ner", mode="train_and_eval").eval_results["f1"]
"""

import dataclasses
import json

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tflm.config import TOKENIZER_ALIASES, ConfigError, labelled_on_bad_record
from tflm.data.byte_tokenizer import ByteTokenizer
from tflm.data.classification import (
    LabelledDataError,
    bad_record_handler,
    finish_labelled_batches,
    jsonl_records,
    record_index_batches,
    records_of_split,
    text_value,
)
from tflm.errors import MissingFileError
from tflm.export.serving import STRINGS, unless_empty
from tflm.layers.layer_utils import clone_initializer
from tflm.models.task import Task as TaskModel
from tflm.tasks.base import Task
from tflm.tasks.registry import register_task

AUTOTUNE = tf.data.AUTOTUNE
OUTSIDE = "O"
WARMUP_TEXT = np.array(["江泽民在北京会见了新华社记者。".encode("utf-8"), b"", b"Mr. Darcy"])


@dataclasses.dataclass
class TokenClassificationData:
    """The `data` keys of `token_classification`."""

    entities_field: str = "entities"  # a list of [start, end, type], character offsets


# -- Tags. ----------------------------------------------------------------------------------
def tag_names(entity_types):
    """`["O", "B-X", "I-X", ...]` for the entity types in the given order."""
    names = [OUTSIDE]
    for name in entity_types:
        names += [f"B-{name}", f"I-{name}"]
    return names


def entity_types_of(names, key="data.label_names"):
    """The entity types of tag names `["O", "B-X", "I-X", ...]`; a `ConfigError` naming
    `key` for any other layout."""
    names = list(names)
    types = [name[2:] for name in names[1::2]]
    if (not names or names[0] != OUTSIDE or len(names) % 2 != 1
            or names != tag_names(types) or len(set(types)) != len(types)):
        raise ConfigError(f"{key}={names}: token_classification tags are 'O' followed by "
                          "'B-X', 'I-X' for each entity type X (e.g. ['O', 'B-LOC', 'I-LOC']).")
    return types


# -- Reading. -------------------------------------------------------------------------------
@dataclasses.dataclass
class EntityRecords:
    """Texts with their entity spans `[(start, end, type)]`, and where each came from."""

    texts: list
    entities: list
    locations: list  # "file:line" per record

    def __len__(self):
        return len(self.texts)

    def select(self, keep):
        pick = lambda values: [values[i] for i in keep]  # noqa: E731
        return EntityRecords(pick(self.texts), pick(self.entities), pick(self.locations))


def _span_problem(span, length):
    """Why `span` is not `[start, end, type]` inside a text of `length` characters, or None."""
    if not isinstance(span, (list, tuple)) or len(span) != 3:
        return f"the entity {json.dumps(span, ensure_ascii=False)} is not [start, end, type]"
    start, end, label = span
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)):
        return f"the entity {json.dumps(span, ensure_ascii=False)} has non-integer offsets"
    if not isinstance(label, str) or not label.strip():
        return f"the entity {json.dumps(span, ensure_ascii=False)} has no type name"
    if not 0 <= start < end:
        return f"the entity {json.dumps(span, ensure_ascii=False)} is not a span start < end"
    if end > length:
        return (f"the entity {json.dumps(span, ensure_ascii=False)} ends past the end of the "
                f"text ({length} characters)")
    return None


def read_entity_records(files, text_field="text", entities_field="entities",
                        on_bad_record="error", stats=None):
    """Reads JSONL records of a text and its entity spans (see the module docstring).

    Returns:
        `EntityRecords` (spans sorted by start, types stripped).
    """
    bad = bad_record_handler(on_bad_record, stats)
    texts, entities, locations = [], [], []
    for path in files:
        if not tf.io.gfile.exists(path):
            raise MissingFileError(f"Labelled data file {path!r} does not exist.")
        for number, record in jsonl_records(path, stats, bad):
            text = text_value(record, text_field, path, number, bad)
            if text is None:
                continue
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                bad(path, number, f"the text field {text_field!r} is not valid Unicode "
                                  "(a lone surrogate)")
                continue
            spans = record.get(entities_field)
            if not isinstance(spans, list):
                why = "missing" if spans is None else f"a {type(spans).__name__}, not a list"
                bad(path, number, f"the entities field {entities_field!r} is {why} "
                                  "(data.entities_field)")
                continue
            problems = (_span_problem(span, len(text)) for span in spans)
            problem = next((p for p in problems if p), None)
            if problem is None:
                spans = sorted((s, e, label.strip()) for s, e, label in spans)
                overlap = next((pair for pair in zip(spans, spans[1:])
                                if pair[1][0] < pair[0][1]), None)
                if overlap:
                    problem = (f"the entities {list(overlap[0])} and {list(overlap[1])} "
                               "overlap (BIO tags hold one entity per character)")
            if problem:
                bad(path, number, problem)
                continue
            if stats is not None:
                stats.add("documents", 1)
            texts.append(text)
            entities.append(spans)
            locations.append(f"{path}:{number}")
    return EntityRecords(texts, entities, locations)


def character_tags(records, entity_types, on_bad_record="error", stats=None):
    """`(texts, tags)`: per record the int32 tag id of each character (0 = O, `2t + 1` =
    B of type t, `2t + 2` = I). A span of a type not in `entity_types` is an error naming
    its file and line and the known types, or (`on_bad_record="count"`) its record is
    skipped and counted."""
    index = {name: i for i, name in enumerate(entity_types)}
    texts, tags = [], []
    for text, spans, where in zip(records.texts, records.entities, records.locations):
        unknown = next((label for _, _, label in spans if label not in index), None)
        if unknown is not None:
            if on_bad_record == "error":
                raise LabelledDataError(f"{where}: unknown entity type {unknown!r}; the model "
                                        f"knows {list(entity_types)}.")
            if stats is not None:
                stats.add("records_missing_field", 1)
            continue
        row = np.zeros(len(text), np.int32)
        for start, end, label in spans:
            row[start] = 2 * index[label] + 1
            row[start + 1:end] = 2 * index[label] + 2
        texts.append(text)
        tags.append(row)
    return texts, tags


def entity_records(config, split="train", stats=None):
    """The records of a split of `config.data`; none at all is an error naming the files."""
    data = config.data
    return records_of_split(config, split, lambda files, on_bad_record: read_entity_records(
        files, data.text_field, data.entities_field, on_bad_record, stats), what="records")


# -- In-graph encoding. -----------------------------------------------------------------------
def check_tokenizer(tokenizer, key="data.tokenizer"):
    """Entities need each token's character; only the byte tokenizer gives it exactly."""
    if not isinstance(tokenizer, ByteTokenizer):
        raise ConfigError(f"{key}={tokenizer.kind!r}: token_classification maps tokens to "
                          "character offsets with the byte tokenizer only; use "
                          "data.tokenizer=byte.")


def character_starts(tokenizer, ids):
    """True at the first token of each character: a byte that is not a UTF-8 continuation
    byte (ragged `(batch, None)` ids of the byte tokenizer)."""
    byte = ids - tokenizer.byte_offset
    return (byte >= 0) & ((byte < 0x80) | (byte >= 0xC0))


def encode_tagged(tokenizer, texts, tags=None, sequence_length=128, pad_to_length=True):
    """`[CLS] tokens [SEP]` rows with a tag and a weight per position, in-graph.

    Args:
        tokenizer: the byte tokenizer.
        texts: `(batch,)` strings.
        tags: ragged `(batch, None)` int32 tag ids, one per character, or None (serving).
        sequence_length: the longest row, [CLS] and [SEP] included; longer texts keep
            their start.
        pad_to_length: pad to `sequence_length` (training) or to the longest row (serving).

    Returns:
        `(features, labels, weights, truncated)`: features `{"token_ids", "padding_mask",
        "segment_ids"}` and int32 labels `(batch, length)`, float32 weights (1 at the first
        token of each character), bool `truncated` `(batch,)`.
    """
    budget = sequence_length - 2
    if budget < 1:
        raise ValueError(f"sequence_length={sequence_length} leaves no room for text.")
    ids = tf.cast(tokenizer.tokenize(texts), tf.int32).with_row_splits_dtype(tf.int64)
    truncated = ids.row_lengths() > budget
    ids = ids[:, :budget]
    first = character_starts(tokenizer, ids)
    if tags is None:
        labels = tf.zeros_like(ids)
    else:
        # The characters whose first token fits, in order: scatter their tags there.
        tags = tf.cast(tags, tf.int32).with_row_splits_dtype(tf.int64)
        kept = tf.reduce_sum(tf.cast(first, tf.int64), axis=1)
        kept_tags = tf.gather(tags, tf.ragged.range(kept), batch_dims=1)
        values = tf.scatter_nd(tf.where(first.values), kept_tags.values,
                               tf.shape(ids.values, out_type=tf.int64))
        labels = ids.with_values(values)
    batch = ids.nrows()

    def column(value):
        return tf.fill([batch, 1], tf.constant(value, tf.int32))

    def row(middle, start, end):
        return tf.concat([column(start), middle, column(end)], axis=1)

    shape = [None, sequence_length] if pad_to_length else None
    zeros = tf.zeros_like(ids)
    features = {
        "token_ids": row(ids, tokenizer.cls_id, tokenizer.sep_id).to_tensor(
            default_value=tokenizer.pad_id or 0, shape=shape),
        "padding_mask": row(tf.ones_like(ids), 1, 1).to_tensor(shape=shape),
        "segment_ids": row(zeros, 0, 0).to_tensor(shape=shape),
    }
    labels = row(labels, 0, 0).to_tensor(shape=shape)
    weights = tf.cast(row(tf.cast(first, tf.int32), 0, 0).to_tensor(shape=shape), tf.float32)
    return features, labels, weights, truncated


def tagged_batches(texts, tags, tokenizer, sequence_length, batch_size, training=True, seed=0,
                   input_context=None, stats=None):
    """Batches of `(features, labels, weights)` from in-memory texts and character tags.

    In the order of `tflm.data.classification.record_index_batches` (the final evaluation
    batch padded with weight-0 rows).
    """
    count = len(texts)
    text_values = tf.constant(list(texts), tf.string)
    tag_values = tf.RaggedTensor.from_row_lengths(
        tf.constant(np.concatenate(tags).astype(np.int32) if count else np.zeros(0, np.int32)),
        tf.constant([len(t) for t in tags], tf.int64))
    batches = record_index_batches(count, batch_size, training, seed, input_context)

    @tf.autograph.experimental.do_not_convert
    def encode(index, real):
        features, labels, weights, _ = encode_tagged(
            tokenizer, tf.gather(text_values, index), tf.gather(tag_values, index),
            sequence_length)
        real_rows = tf.sequence_mask(real, batch_size, tf.float32)[:, None]
        weights = weights * real_rows
        if stats is not None:
            stats.add("tokens", tf.reduce_sum(tf.cast(features["padding_mask"], tf.float32)
                                              * real_rows))
        shape = [batch_size, sequence_length]
        return ({k: tf.ensure_shape(v, shape) for k, v in features.items()},
                tf.ensure_shape(labels, shape), tf.ensure_shape(weights, shape))

    return finish_labelled_batches(
        batches.map(encode, num_parallel_calls=AUTOTUNE, deterministic=True))


# -- Entities from tags, in-graph. --------------------------------------------------------------
def entity_spans(tags):
    """The entities of BIO tag rows, as seqeval's strict IOB2 mode reads them.

    Args:
        tags: ragged `(batch, None)` int32 tag ids (0 = O, odd = B, even = I), one per
            character.

    Returns:
        A dict of flat int32 vectors, one entry per position of `tags.values`:
        `is_start` (an entity begins here), `end` (its exclusive end, as a flat index),
        `type` (its type id), `group` (each position's run id: an entity's positions share
        it), plus `row` and `position` (the row and the index within the row).
    """
    tags = tags.with_row_splits_dtype(tf.int64)
    values = tf.cast(tags.values, tf.int32)
    count = tf.size(values)
    rows = tf.cast(tags.value_rowids(), tf.int32)
    position = tf.range(count) - tf.gather(tf.cast(tags.row_splits, tf.int32), rows)
    kind = tf.math.floormod(values - 1, 2)  # 0: B, 1: I (for tags > 0)
    entity_type = tf.math.floordiv(values - 1, 2)
    previous = tf.concat([[0], values], axis=0)[:-1]
    previous = tf.where(position > 0, previous, 0)
    # I-X continues the run before it when that run's tag is B-X or I-X.
    continues = ((values > 0) & (kind == 1) & (previous > 0)
                 & (tf.math.floordiv(previous - 1, 2) == entity_type))
    group = tf.cumsum(tf.cast(~continues, tf.int32)) - 1
    groups = tf.maximum(tf.reduce_max(tf.concat([group, [-1]], axis=0)) + 1, 0)
    group_end = tf.math.unsorted_segment_max(tf.range(count), group, groups) + 1
    return {"is_start": (~continues) & (values > 0) & (kind == 0),
            "end": tf.gather(group_end, group), "type": entity_type, "group": group,
            "row": rows, "position": position}


def entity_counts(labels, predicted, weights, num_types):
    """float32 `(num_types, 3)`: per type, the predicted entities that match a gold one
    exactly (type, start, end), the predicted entities and the gold entities, over the
    positions of weight > 0 (one per character)."""
    keep = tf.cast(weights, tf.float32) > 0
    gold = entity_spans(tf.ragged.boolean_mask(tf.cast(labels, tf.int32), keep))
    guess = entity_spans(tf.ragged.boolean_mask(tf.cast(predicted, tf.int32), keep))
    match = (gold["is_start"] & guess["is_start"] & tf.equal(gold["type"], guess["type"])
             & tf.equal(gold["end"], guess["end"]))

    def per_type(is_entity, types):
        chosen = tf.boolean_mask(types, is_entity)
        return tf.math.bincount(chosen, minlength=num_types, maxlength=num_types,
                                dtype=tf.float32)

    return tf.stack([per_type(match, gold["type"]), per_type(guess["is_start"], guess["type"]),
                     per_type(gold["is_start"], gold["type"])], axis=1)


def _ratio(a, b):
    return float(a / b) if b else 0.0


def _f1(precision, recall):
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def entity_report(counts, entity_types):
    """Precision, recall and F1 per type and micro-averaged (all entities together), and
    the macro average of the F1s, from `(num_types, 3)` counts (matched, predicted, gold)."""
    counts = np.asarray(counts, np.float64).reshape(len(entity_types), 3)
    per_type = {}
    for name, (matched, predicted, gold) in zip(entity_types, counts):
        p, r = _ratio(matched, predicted), _ratio(matched, gold)
        per_type[name] = {"precision": p, "recall": r, "f1": _f1(p, r), "support": int(gold),
                          "predicted": int(predicted)}
    matched, predicted, gold = counts.sum(axis=0)
    precision, recall = _ratio(matched, predicted), _ratio(matched, gold)
    return {"precision": precision, "recall": recall, "f1": _f1(precision, recall),
            "macro_f1": float(np.mean([v["f1"] for v in per_type.values()])) if per_type else 0.0,
            "entities": int(gold), "predicted_entities": int(predicted),
            "matched_entities": int(matched), "per_class": per_type}


# -- Model. -------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="tflm")
class TokenClassifier(TaskModel):
    """Labels every position of a sequence: backbone -> dropout -> Dense(num_classes).

    Features: `{"token_ids", "padding_mask", "segment_ids" (optional)}`. Labels: tag ids
    `(batch, length)`, with weights `(batch, length)` (0 where a position has no tag).
    Logits: `(batch, length, num_classes)`, float32. Loss: the weighted cross-entropy of
    `tflm.models.task.Task` (`loss_sums` / `default_loss`, the trainer's and `fit`'s).

    Args:
        backbone: a `TransformerBackbone`.
        num_classes: the number of tags.
        dropout: dropout rate before the tag layer.
        label_names: the tag names in id order (saved with the model; the exported `tag`
            signature reads the entity types from them).

    Example:
    >>> backbone = TransformerBackbone(vocabulary_size=262, num_layers=1, num_heads=2,
    ...     hidden_dim=16, intermediate_dim=32, max_sequence_length=16)
    >>> model = TokenClassifier(backbone, num_classes=3, label_names=["O", "B-X", "I-X"])
    >>> x = {"token_ids": keras.ops.ones((2, 8), "int32"), "padding_mask": keras.ops.ones((2, 8))}
    >>> history = model.fit(x, keras.ops.zeros((2, 8), "int32"), verbose=0)
    """

    default_learning_rate = 5e-5

    def __init__(self, backbone, num_classes, dropout=0.1, label_names=None, **kwargs):
        super().__init__(backbone, **kwargs)
        if label_names is not None:
            label_names = [str(name) for name in label_names]
            if len(label_names) != int(num_classes):
                raise ValueError(f"{len(label_names)} label names for {num_classes} tags.")
        self.label_names = label_names
        self.num_classes = int(num_classes)
        self.dropout = float(dropout)
        self.head_dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        self.head = keras.layers.Dense(
            self.num_classes,
            kernel_initializer=clone_initializer(
                keras.initializers.TruncatedNormal(stddev=backbone.initializer_range)),
            dtype=self.dtype_policy,
            name="token_classifier",
        )
        self.head.build((None, None, backbone.hidden_dim))
        self._finish_init()

    def call(self, inputs, training=None):
        backbone_training = training if self.backbone.trainable else False
        hidden = self.backbone(inputs, training=backbone_training)["sequence_output"]
        hidden = self.head_dropout(hidden, training=training)
        return ops.cast(self.head(hidden), "float32")

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "dropout": self.dropout,
                       "label_names": self.label_names})
        return config


# -- Serving. -------------------------------------------------------------------------------
class TokenClassifierServing(tf.Module):
    """`tag` for a `TokenClassifier` and the byte tokenizer: text in, entities out.

    Outputs (padded to the most entities of any row in the request; `num_entities[i]` of
    row i are real, the rest are "" / -1 / 0):

        entity_text   (batch, max_entities) string   the entity's characters of the text
        entity_label  (batch, max_entities) string   its type ("PER", ...)
        entity_start  (batch, max_entities) int32    character offset in the text (Python
        entity_end    (batch, max_entities) int32      `str` indices; end exclusive)
        entity_score  (batch, max_entities) float32  mean over its characters of the
                                                       probability of the predicted tag
        num_entities  (batch,) int32
        truncated     (batch,) bool                  the text was longer than the rows:
                                                       its end was not tagged

    Entities are read from the most likely tag of each character as the evaluation reads
    them (strict IOB2). Rows are built by `encode_tagged`, as in training.

    Args:
        model: the `TokenClassifier`.
        tokenizer: the byte tokenizer.
        label_names: tag names in id order; default the model's own.
        sequence_length: the longest row (as in training); default the model's positions.
    """

    def __init__(self, model, tokenizer, label_names=None, sequence_length=None,
                 name="token_classifier_serving"):
        super().__init__(name=name)
        check_tokenizer(tokenizer, "the tokenizer")
        self.model = model
        self.tokenizer = tokenizer
        names = list(label_names or model.label_names or [])
        if len(names) != model.num_classes:
            raise ValueError(f"{len(names)} label names for {model.num_classes} tags.")
        self.entity_types = tf.constant(entity_types_of(names, "label_names") or [""])
        self.max_length = int(sequence_length or model.backbone.max_sequence_length)

    @tf.function(input_signature=[STRINGS])
    def tag(self, text):
        """The entities of each text, with character offsets and scores."""
        features, _, weights, truncated = encode_tagged(self.tokenizer, text, None,
                                                        self.max_length, pad_to_length=False)
        classes = self.model.num_classes
        probabilities = unless_empty(
            tf.size(text),
            lambda: tf.nn.softmax(tf.cast(self.model(features, training=False), tf.float32)),
            lambda: tf.zeros([0, tf.shape(features["token_ids"])[1], classes]))
        keep = weights > 0
        predicted = tf.ragged.boolean_mask(
            tf.argmax(probabilities, axis=-1, output_type=tf.int32), keep)
        score = tf.ragged.boolean_mask(tf.reduce_max(probabilities, axis=-1), keep)
        spans = entity_spans(predicted)
        group_score = tf.math.unsorted_segment_mean(
            score.values, spans["group"], tf.maximum(tf.reduce_max(
                tf.concat([spans["group"], [-1]], axis=0)) + 1, 0))
        starts = tf.where(spans["is_start"])[:, 0]
        flat_start = tf.cast(starts, tf.int32)
        rows = tf.gather(spans["row"], starts)
        start = tf.gather(spans["position"], starts)
        end = start + tf.gather(spans["end"], starts) - flat_start
        batch = tf.size(text)
        entity_text = tf.strings.substr(tf.gather(text, rows), start, end - start,
                                        unit="UTF8_CHAR")

        def padded(values, default):
            ragged = tf.RaggedTensor.from_value_rowids(values, rows, nrows=batch)
            return ragged.to_tensor(default_value=default)

        return {
            "entity_text": padded(entity_text, ""),
            "entity_label": padded(tf.gather(self.entity_types, tf.gather(spans["type"], starts)),
                                   ""),
            "entity_start": padded(start, -1),
            "entity_end": padded(end, -1),
            "entity_score": padded(tf.gather(group_score, tf.gather(spans["group"], starts)),
                                   0.0),
            "num_entities": tf.math.bincount(rows, minlength=batch, maxlength=batch,
                                             dtype=tf.int32),
            "truncated": truncated,
        }

    def signatures(self):
        tag = self.tag.get_concrete_function()
        return {"serving_default": tag, "tag": tag}


# -- The task. ------------------------------------------------------------------------------
@register_task
class TokenClassificationTask(Task):
    """Named-entity recognition as BIO tagging (a `TokenClassifier`)."""

    name = "token_classification"
    model_class = TokenClassifier
    causal = False
    config_keys = {"data": TokenClassificationData}

    @classmethod
    def validate(cls, config):
        model, data = config.model, config.data
        if data.input_format != "jsonl":
            raise ConfigError(f"data.input_format={data.input_format!r}: token_classification "
                              "reads JSONL records with character-offset entity spans.")
        if not data.input_path:
            raise ConfigError("model.task='token_classification' needs data.input_path "
                              "(JSONL files of texts and entity spans).")
        if not data.entities_field:
            raise ConfigError("data.entities_field is empty: name the field of entity spans.")
        if TOKENIZER_ALIASES.get(data.tokenizer, data.tokenizer) != ByteTokenizer.kind:
            raise ConfigError(f"data.tokenizer={data.tokenizer!r}: token_classification maps "
                              "tokens to character offsets with the byte tokenizer only; use "
                              "data.tokenizer=byte.")
        if data.sequence_length < 3:
            raise ConfigError(f"data.sequence_length={data.sequence_length}: a row needs "
                              "[CLS], at least one token and [SEP].")
        if data.label_names:
            entity_types_of(data.label_names)
            if model.num_classes and model.num_classes != len(data.label_names):
                raise ConfigError(f"model.num_classes={model.num_classes}, but data.label_names "
                                  f"has {len(data.label_names)} tags.")
        if model.num_classes and model.num_classes % 2 != 1:
            raise ConfigError(f"model.num_classes={model.num_classes}: BIO tags are 'O' plus "
                              "two per entity type (an odd number).")

    @classmethod
    def create_model(cls, model_config, backbone, label_names=None):
        num_classes = model_config.num_classes or len(label_names or ())
        if not num_classes:
            raise ConfigError("A token classifier needs model.num_classes or label names.")
        return TokenClassifier(backbone, num_classes=num_classes,
                               dropout=model_config.classifier_dropout, label_names=label_names)

    @classmethod
    def describe_model(cls, model, experiment):
        experiment.model.num_classes = model.num_classes
        experiment.data.label_names = list(model.label_names or [])

    def label_names(self):
        """`data.label_names`, else the tags of the training split's entity types (written
        into the config, so that params.yaml and the saved model carry them)."""
        config = self.config
        if config.data.label_names:
            names = list(config.data.label_names)
        else:
            records = entity_records(config, "train")
            names = tag_names(sorted({label for spans in records.entities
                                      for _, _, label in spans}))
        if config.model.num_classes and config.model.num_classes != len(names):
            raise ConfigError(f"model.num_classes={config.model.num_classes}, but the tags are "
                              f"{names}: set model.num_classes={len(names)} (or 0), or list "
                              "data.label_names.")
        config.data.label_names = list(names)
        return names

    def make_tokenizer(self):
        tokenizer = super().make_tokenizer()
        check_tokenizer(tokenizer)
        return tokenizer

    def batches(self, tokenizer, batch_size, input_context, stats, training, split):
        check_tokenizer(tokenizer)
        config = self.config
        records = entity_records(config, split, stats)
        types = entity_types_of(self.label_names())
        texts, tags = character_tags(records, types, labelled_on_bad_record(config.data), stats)
        if not texts:
            raise LabelledDataError(f"{records.locations[0].rsplit(':', 1)[0]}: no records of "
                                    f"the known entity types {types} in the {split} split.")
        return tagged_batches(texts, tags, tokenizer, config.data.sequence_length, batch_size,
                              training=training, seed=config.runtime.seed,
                              input_context=input_context, stats=stats)

    def eval_sums(self, model, labels, outputs, weights):
        predicted = tf.argmax(outputs, axis=-1, output_type=tf.int32)
        counts = entity_counts(labels, predicted, weights, model.num_classes // 2)
        return tf.concat([super().eval_sums(model, labels, outputs, weights),
                          tf.reshape(counts, [-1])], axis=0)

    def eval_report(self, model, totals):
        loss_sum, weight, correct = totals[:3]
        names = model.label_names or self.config.data.label_names
        report = entity_report(totals[3:], entity_types_of(names))
        return {"loss": loss_sum / weight, "accuracy": correct / weight,
                "characters": int(weight), **report, "label_names": list(names)}

    @classmethod
    def serving_module(cls, model, tokenizer, options):
        return TokenClassifierServing(model, tokenizer, options.label_names,
                                      sequence_length=options.sequence_length)

    @classmethod
    def warmup_inputs(cls, module):
        return [("tag", {"text": WARMUP_TEXT})]
