"""`masked_lm`: BERT's masked-token pretraining on packed text.

Batches: rows of `[CLS] ... [SEP]` (or `[CLS] A [SEP] B [SEP]` with
`data.sentence_pairs`), 80/10/10 dynamic masking of `data.mask_rate` of the
tokens (`tflm.data.pipeline.masked_lm_batches`). Loss: cross-entropy over the
masked positions. Evaluation: loss, perplexity, masked-token accuracy.
Serving: `fill_mask` and `encode` (`MaskedLMServing`).
"""

import numpy as np

from tflm.config import ConfigError
from tflm.data.pipeline import masked_lm_batches, token_documents
from tflm.export.serving import MaskedLMServing
from tflm.models.masked_lm import MaskedLM
from tflm.tasks.base import Task, text_input_only
from tflm.tasks.causal_lm import WARMUP_TEXT
from tflm.tasks.registry import register_task


@register_task
class MaskedLMTask(Task):
    """BERT-style masked language modelling (a `MaskedLM`)."""

    name = "masked_lm"
    model_class = MaskedLM
    causal = False

    @classmethod
    def validate(cls, config):
        text_input_only(config, cls.name)
        data = config.data
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

    def eval_report(self, model, totals):
        results = super().eval_report(model, totals)
        results["masked_accuracy"] = results["accuracy"]
        return results

    @classmethod
    def serving_module(cls, model, tokenizer, options):
        return MaskedLMServing(model, tokenizer)

    @classmethod
    def warmup_inputs(cls, module):
        return [("fill_mask", {"text": np.array([b"It is a [MASK] universally acknowledged"]),
                               "top_k": np.int32(5)}),
                ("encode", {"text": WARMUP_TEXT})]
