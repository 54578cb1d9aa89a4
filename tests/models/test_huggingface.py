"""The backbone expresses Hugging Face BERT and GPT-2 exactly (NumPy references)."""

import numpy as np
import pytest

from numpy_reference import (
    bert_forward,
    bert_mlm_logits,
    gpt2_forward,
    random_bert_params,
    random_gpt2_params,
)
from tflm.models import MaskedLM
from tflm.models.huggingface import CheckpointError, load_bert, load_gpt2, set_masked_lm_head

BERT_CONFIG = {
    "vocab_size": 97, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
    "intermediate_size": 64, "max_position_embeddings": 40, "type_vocab_size": 2,
    "layer_norm_eps": 1e-12, "hidden_act": "gelu",
}
GPT2_CONFIG = {
    "vocab_size": 101, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 40,
    "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
}


def _bert_inputs():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 97, (2, 11)).astype("int32")
    types = np.zeros_like(ids)
    types[:, 6:] = 1
    mask = np.ones_like(ids)
    mask[1, 8:] = 0
    return ids, types, mask


def test_bert_matches_reference():
    params = random_bert_params(BERT_CONFIG)
    backbone, head = load_bert(BERT_CONFIG, {"bert." + k: v for k, v in params.items()})
    ids, types, mask = _bert_inputs()
    expected_seq, expected_pooled = bert_forward(params, BERT_CONFIG, ids, types, mask)
    outputs = backbone({"token_ids": ids, "segment_ids": types, "padding_mask": mask})
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(outputs["sequence_output"])[real], expected_seq[real], atol=1e-4)
    np.testing.assert_allclose(np.asarray(outputs["pooled_output"]), expected_pooled, atol=1e-4)

    model = MaskedLM(backbone)
    set_masked_lm_head(model, head)
    positions = np.array([[1, 4, 9], [0, 2, 7]], "int32")
    logits = model({"token_ids": ids, "segment_ids": types, "padding_mask": mask,
                    "mask_positions": positions})
    expected_logits = bert_mlm_logits(params, BERT_CONFIG, expected_seq)
    expected_logits = np.take_along_axis(expected_logits, positions[:, :, None], axis=1)
    np.testing.assert_allclose(np.asarray(logits), expected_logits, atol=1e-4)


def test_gpt2_matches_reference():
    params = random_gpt2_params(GPT2_CONFIG)
    backbone = load_gpt2(GPT2_CONFIG, params)
    ids = np.random.default_rng(1).integers(0, 101, (2, 13)).astype("int32")
    mask = np.ones_like(ids)
    mask[0, 10:] = 0
    expected_hidden, expected_logits = gpt2_forward(params, GPT2_CONFIG, ids, mask)
    hidden = backbone({"token_ids": ids, "padding_mask": mask})["sequence_output"]
    logits = backbone.token_embedding(hidden, reverse=True)
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(hidden)[real], expected_hidden[real], atol=1e-4)
    np.testing.assert_allclose(np.asarray(logits)[real], expected_logits[real], atol=1e-4)


def test_gelu_choice_matters():
    # GPT-2 weights run with BERT's erf GELU differ from the reference by more
    # than the parity tolerance (1e-4): the parity tests would catch that mix-up.
    params = random_gpt2_params(GPT2_CONFIG)
    backbone = load_gpt2(GPT2_CONFIG, params)
    for block in backbone.blocks:
        block.feed_forward.activation = "gelu"
    ids = np.arange(12, dtype="int32")[None]
    expected, _ = gpt2_forward(params, GPT2_CONFIG, ids)
    hidden = np.asarray(backbone({"token_ids": ids, "padding_mask": np.ones_like(ids)})["sequence_output"])
    assert np.abs(hidden - expected).max() > 2e-4


def test_wrong_shape_names_tensor():
    params = random_gpt2_params(GPT2_CONFIG)
    params["h.1.mlp.c_fc.weight"] = params["h.1.mlp.c_fc.weight"][:, :10]
    with pytest.raises(CheckpointError, match=r"h\.1\.mlp\.c_fc\.weight.*\(32, 10\)"):
        load_gpt2(GPT2_CONFIG, params, source="model.safetensors")


def test_missing_tensor_names_tensor():
    params = random_bert_params(BERT_CONFIG)
    del params["encoder.layer.1.attention.self.key.bias"]
    with pytest.raises(CheckpointError, match=r"encoder\.layer\.1\.attention\.self\.key\.bias"):
        load_bert(BERT_CONFIG, params)


def test_unsupported_activation():
    with pytest.raises(CheckpointError, match="relu"):
        load_gpt2(dict(GPT2_CONFIG, activation_function="relu"), {})
