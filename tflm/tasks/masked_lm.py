"""`masked_lm`: BERT's masked-token pretraining on packed text, with next-sentence
prediction on sentence pairs.

Batches: rows of `[CLS] ... [SEP]` (or `[CLS] A [SEP] B [SEP]` with
`data.sentence_pairs`), 80/10/10 dynamic masking of `data.mask_rate` of the
tokens (`tflm.data.pipeline.masked_lm_batches`). Loss: cross-entropy over the
masked positions; with `data.sentence_pairs=true` plus
`model.next_sentence_weight` times the next-sentence loss (BERT's NSP head on
the pooled output; multi-task training with loss weights). Evaluation: loss,
perplexity, masked-token accuracy (and next-sentence accuracy). Serving:
`fill_mask` and `encode` (`MaskedLMServing`).
"""

import dataclasses
import typing

import numpy as np
import tensorflow as tf

from tflm.config import ConfigError, ranged
from tflm.data.pipeline import masked_lm_batches, token_documents
from tflm.export.serving import MaskedLMServing
from tflm.models.huggingface_export import MASKED_LM_HEAD
from tflm.models.losses import distillation_sums, weighted_correct, weighted_cross_entropy
from tflm.models.masked_lm import MaskedLM
from tflm.tasks.base import Task, check_teacher_outputs, text_input_only
from tflm.tasks.causal_lm import WARMUP_TEXT
from tflm.tasks.registry import register_task


@dataclasses.dataclass
class MaskedLMModelKeys:
    """The masked-LM task's keys of the `model` section."""

    # BERT's next-sentence head; None: on exactly when data.sentence_pairs is.
    next_sentence_prediction: typing.Optional[bool] = None
    # The NSP loss's weight beside the masked-LM loss.
    next_sentence_weight: float = ranged(1.0, at_least=0)


@register_task
class MaskedLMTask(Task):
    """BERT-style masked language modelling (a `MaskedLM`), with next-sentence prediction
    on sentence pairs."""

    name = "masked_lm"
    model_class = MaskedLM
    causal = False
    huggingface_head = MASKED_LM_HEAD
    config_keys = {"model": MaskedLMModelKeys}

    @property
    def projected_share(self):
        """Only the `data.max_predictions_per_seq` predicted positions are projected."""
        data = self.config.data
        return min(data.max_predictions_per_seq, data.sequence_length) / data.sequence_length

    @classmethod
    def validate(cls, config):
        text_input_only(config, cls.name)
        model, data = config.model, config.data
        if model.next_sentence_prediction is None:
            model.next_sentence_prediction = data.sentence_pairs
        if model.next_sentence_prediction != data.sentence_pairs:
            raise ConfigError(
                f"model.next_sentence_prediction={model.next_sentence_prediction} but "
                f"data.sentence_pairs={data.sentence_pairs}: next-sentence prediction trains "
                "on sentence pairs and only on them; set both, or leave the model key unset.")
        if model.next_sentence_prediction and not model.pooler:
            raise ConfigError("data.sentence_pairs=true trains BERT's next-sentence head on the "
                              "pooled output: it needs model.pooler=true.")
        if data.sequence_length < 3:
            raise ConfigError(f"data.sequence_length={data.sequence_length}: a masked_lm row "
                              "needs [CLS], at least one token and [SEP].")
        if data.sentence_pairs and data.sequence_length < 5:
            raise ConfigError(f"data.sequence_length={data.sequence_length}: sentence pairs "
                              "need at least 5.")

    def batches(self, tokenizer, batch_size, input_context, stats, training, split):
        data = self.config.data
        tokens = token_documents(self.config, tokenizer, input_context, stats, training, split)
        offset = 0 if input_context is None else input_context.input_pipeline_id
        return masked_lm_batches(tokens, tokenizer, data.sequence_length, batch_size,
                                 data.max_predictions_per_seq, mask_rate=data.mask_rate,
                                 whole_word_masking=data.whole_word_masking,
                                 sentence_pairs=data.sentence_pairs,
                                 seed=self.config.runtime.seed,
                                 shuffle_buffer_size=data.shuffle_buffer_size, training=training,
                                 drop_remainder=training, seed_offset=offset)

    @classmethod
    def create_model(cls, model_config, backbone, label_names=None):
        del label_names
        return MaskedLM(backbone, next_sentence_prediction=bool(
            model_config.next_sentence_prediction),
            next_sentence_weight=model_config.next_sentence_weight)

    @classmethod
    def describe_model(cls, model, experiment):
        experiment.model.next_sentence_prediction = model.next_sentence_prediction
        experiment.model.next_sentence_weight = model.next_sentence_weight
        experiment.data.sentence_pairs = model.next_sentence_prediction

    def distill_sums(self, model, teacher_outputs, outputs, weights):
        """Over the masked positions; with next-sentence prediction one term per head, as
        `MaskedLM.loss_sums` (the next-sentence term times `next_sentence_weight`)."""
        if not model.next_sentence_prediction:
            if isinstance(teacher_outputs, dict):  # the teacher's next-sentence head unused
                teacher_outputs = teacher_outputs["masked_lm"]
            return super().distill_sums(model, teacher_outputs, outputs, weights)
        if not isinstance(teacher_outputs, dict):
            raise ConfigError("trainer.distill_from: the teacher has no next-sentence head "
                              "and this model has (data.sentence_pairs=true); distill from a "
                              "teacher trained on sentence pairs.")
        sums, weight_sums = [], []
        for head, scale in (("masked_lm", 1.0), ("next_sentence", model.next_sentence_weight)):
            check_teacher_outputs(teacher_outputs[head], outputs[head])
            soft_sum, weight_sum = distillation_sums(
                teacher_outputs[head], outputs[head], weights[head],
                self.config.trainer.distill_temperature)
            sums.append(scale * soft_sum)
            weight_sums.append(weight_sum)
        return tf.stack(sums), tf.stack(weight_sums)

    def eval_sums(self, model, labels, outputs, weights):
        if not model.next_sentence_prediction:
            return super().eval_sums(model, labels, outputs, weights)
        sums = []
        for head in ("masked_lm", "next_sentence"):
            loss_sum, weight_sum = weighted_cross_entropy(labels[head], outputs[head],
                                                          weights[head])
            sums += [loss_sum, weight_sum,
                     weighted_correct(labels[head], outputs[head], weights[head])]
        return tf.stack(sums)

    def eval_report(self, model, totals):
        results = super().eval_report(model, totals)
        results["masked_accuracy"] = results["accuracy"]
        if model.next_sentence_prediction:
            nsp_loss, rows, nsp_correct = totals[3:6]
            results["masked_lm_loss"] = results["loss"]
            results["next_sentence_loss"] = nsp_loss / rows
            results["next_sentence_accuracy"] = nsp_correct / rows
            results["loss"] = results["loss"] + model.next_sentence_weight * nsp_loss / rows
        return results

    @classmethod
    def serving_module(cls, model, tokenizer, options):
        return MaskedLMServing(model, tokenizer)

    @classmethod
    def warmup_inputs(cls, module):
        return [("fill_mask", {"text": np.array([b"It is a [MASK] universally acknowledged"]),
                               "top_k": np.int32(5)}),
                ("encode", {"text": WARMUP_TEXT})]
