"""`causal_lm`: next-token prediction on packed text (GPT pretraining, or adapting one).

Batches: documents packed into `data.sequence_length` rows, no padding
(`tflm.data.pipeline.causal_lm_batches`); with `data.document_mask=true` each token
attends only within its own document, at positions restarting per document (training
and evaluation alike). Loss: token-mean cross-entropy.
Evaluation: loss, perplexity, next-token accuracy. Serving: `generate`
(`serving_default`), `beam_search` and `score` (`CausalLMServing`).
"""

import dataclasses

import numpy as np

from tflm.data.pipeline import causal_lm_batches, token_documents
from tflm.export.serving import CausalLMServing
from tflm.models.causal_lm import CausalLM
from tflm.models.huggingface_export import CAUSAL_LM_HEAD
from tflm.tasks.base import Task, text_input_only
from tflm.tasks.registry import register_task

WARMUP_TEXT = np.array([b"It is a truth universally acknowledged", b""])


@dataclasses.dataclass
class CausalLMData:
    """The `data` keys of `causal_lm`."""

    # Each token of a packed row attends only within its own document, at positions
    # restarting per document (a block-diagonal causal mask); false: across the whole row.
    document_mask: bool = False


@register_task
class CausalLMTask(Task):
    """GPT-style language modelling (a `CausalLM`)."""

    name = "causal_lm"
    model_class = CausalLM
    projected_share = 1.0
    causal = True
    huggingface_head = CAUSAL_LM_HEAD
    generates_text = True
    config_keys = {"data": CausalLMData}

    @classmethod
    def validate(cls, config):
        text_input_only(config, cls.name)

    def batches(self, tokenizer, batch_size, input_context, stats, training, split):
        data = self.config.data
        tokens = token_documents(self.config, tokenizer, input_context, stats, training, split)
        return causal_lm_batches(tokens, tokenizer, data.sequence_length, batch_size,
                                 seed=self.config.runtime.seed,
                                 shuffle_buffer_size=data.shuffle_buffer_size, training=training,
                                 drop_remainder=training, document_mask=data.document_mask)

    @classmethod
    def serving_module(cls, model, tokenizer, options):
        return CausalLMServing(model, tokenizer, num_beams=options.num_beams,
                               jit_compile=options.jit_compile)

    @classmethod
    def warmup_inputs(cls, module):
        return [
            ("generate", {"prompts": WARMUP_TEXT, "max_new_tokens": np.int32(4),
                          "temperature": np.float32(0.0), "top_k": np.int32(0),
                          "top_p": np.float32(1.0), "seed": np.int64(0)}),
            ("generate_with_controls", {
                "prompts": WARMUP_TEXT, "max_new_tokens": np.int32(4),
                "temperature": np.float32(0.0), "top_k": np.int32(0), "top_p": np.float32(1.0),
                "seed": np.int64(0), "repetition_penalty": np.float32(1.2),
                "no_repeat_ngram_size": np.int32(2), "min_new_tokens": np.int32(1),
                "stop_token_ids": np.zeros([0], np.int32), "num_return_sequences": np.int32(2),
                "stop_strings": np.array([b"\n"])}),
            ("beam_search", {"prompts": WARMUP_TEXT, "max_new_tokens": np.int32(4),
                             "length_penalty": np.float32(0.6)}),
            ("score", {"text": WARMUP_TEXT}),
        ]
