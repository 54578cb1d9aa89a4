"""Hugging Face BART imports exactly (NumPy reference), converts to a seq2seq model_dir, and
starts a `seq2seq` run through `model.init_checkpoint`."""

import pathlib

import numpy as np
import pytest

from hf_fixtures import BART_CONFIG, padded_seq2seq_inputs, write_bart_folder
from numpy_reference import bart_forward, random_bart_params
from tflm.config import ENCODER_DECODER_KEYS, architecture_keys
from tflm.experiment import load_experiment
from tflm.models import Seq2SeqLM
from tflm.models.huggingface import (
    CheckpointError,
    bart_backbone_kwargs,
    load_bart,
    load_huggingface,
)
from tflm.tasks import get_task
from tflm.tasks.registry import architecture_value
from tflm.tasks.pretrained import convert_checkpoint, load_pretrained

CONFIG = dict(BART_CONFIG, vocab_size=97)
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _inputs(vocab=97):
    return padded_seq2seq_inputs(vocab, 11, 8)


def _reference(params, config, inputs):
    return bart_forward(params, config, inputs["encoder_token_ids"], inputs["decoder_token_ids"],
                        inputs["encoder_padding_mask"], inputs["decoder_padding_mask"])


def test_bart_matches_reference():
    params = random_bart_params(CONFIG)
    saved = {("model." + k if k != "final_logits_bias" else k): v for k, v in params.items()}
    model = Seq2SeqLM(load_bart(CONFIG, dict(saved, **{"lm_head.weight": params["shared.weight"]})))
    assert model.backbone.num_layers == 2 and model.backbone.num_decoder_layers == 1
    inputs = _inputs()
    memory, decoded, expected_logits = _reference(params, CONFIG, inputs)
    outputs = model.backbone(inputs)
    source, target = (inputs[k].astype(bool) for k in ("encoder_padding_mask",
                                                       "decoder_padding_mask"))
    np.testing.assert_allclose(np.asarray(outputs["encoder_sequence_output"])[source],
                               memory[source], atol=1e-4)
    np.testing.assert_allclose(np.asarray(outputs["decoder_sequence_output"])[target],
                               decoded[target], atol=1e-4)
    logits = np.asarray(model(inputs))
    assert np.abs(logits - expected_logits)[target].max() < 1e-4
    # Positions read row i + 2 of embed_positions: rows 0..T-1 would compute another function.
    shifted = dict(params)
    for half in ("encoder", "decoder"):
        table = params[f"{half}.embed_positions.weight"]
        shifted[f"{half}.embed_positions.weight"] = np.concatenate([table[:2], table[:-2]])
    assert np.abs(logits - _reference(shifted, CONFIG, inputs)[2])[target].max() > 1e-2


@pytest.mark.parametrize("change, match", [
    ({"scale_embedding": True}, "scale_embedding=True"),
    ({"activation_function": "relu"}, "activation_function='relu'"),
    ({"decoder_ffn_dim": 32}, "decoder_ffn_dim=32"),
])
def test_unsupported_bart_config_names_the_key(change, match):
    with pytest.raises(CheckpointError, match=match):
        load_bart(dict(CONFIG, **change), {})


def test_bad_bart_tensors_are_named():
    params = random_bart_params(CONFIG)
    params["final_logits_bias"] = params["final_logits_bias"] + 0.5
    with pytest.raises(CheckpointError, match="'final_logits_bias' is not zero"):
        load_bart(CONFIG, params)
    params = random_bart_params(CONFIG)
    del params["decoder.layers.0.encoder_attn.k_proj.bias"]
    with pytest.raises(CheckpointError, match=r"decoder\.layers\.0\.encoder_attn\.k_proj\.bias"):
        load_bart(CONFIG, params)
    params = random_bart_params(CONFIG)
    params["lm_head.weight"] = params["shared.weight"] + 1
    with pytest.raises(CheckpointError, match="'lm_head.weight' differs"):
        load_bart(CONFIG, params)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("bart")
    config, params = write_bart_folder(str(root / "hf_bart"))
    lines = []
    convert_checkpoint(str(root / "hf_bart"), str(root / "bart"), print_fn=lines.append)
    return root, config, params, lines


def test_bart_folder_converts_and_reloads_exactly(converted):
    root, config, params, lines = converted
    imported = load_huggingface(str(root / "hf_bart"))
    assert imported.kind == "bart" and imported.unused_tensors == [] and imported.head_loaded
    tokenizer = imported.tokenizer
    assert [tokenizer.token_to_id(t) for t in ("<s>", "<pad>", "</s>")] == [0, 1, 2]
    ids = np.asarray(tokenizer.tokenize(["It is a truth universally acknowledged"]).to_tensor(),
                     "int32")
    inputs = {"encoder_token_ids": ids, "encoder_padding_mask": np.ones_like(ids),
              "decoder_token_ids": np.concatenate([[[2]], ids[:, :-1]], 1).astype("int32"),
              "decoder_padding_mask": np.ones_like(ids)}
    expected = _reference(params, config, inputs)[2]
    np.testing.assert_allclose(np.asarray(imported.model(inputs)), expected, atol=1e-4)
    model, _, experiment = load_pretrained(str(root / "bart"))
    assert isinstance(model, Seq2SeqLM) and "(bart, 2 layers" in lines[0]
    assert (experiment.model.task, experiment.model.num_decoder_layers) == ("seq2seq", 1)
    np.testing.assert_allclose(np.asarray(model(inputs)), expected, atol=1e-4)


def test_seq2seq_run_starts_from_a_converted_bart(converted, tmp_path):
    root, config, _, _ = converted
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"source": "abc", "target": "cba"}\n')
    # No architecture keys: they all come from the checkpoint (its 1 decoder block too).
    run_config = load_experiment(None, f"model.task=seq2seq,model.init_checkpoint={root / 'bart'},"
                                       f"data.input_format=jsonl,data.input_path={pairs},"
                                       "data.sequence_length=8,data.target_length=8")
    assert (run_config.model.num_layers, run_config.model.num_decoder_layers,
            run_config.model.norm_first, run_config.data.tokenizer) == (2, 1, False, "byte_bpe")
    task = get_task(run_config)
    model = task.build_model(source=task.load_init_checkpoint())
    source = load_pretrained(str(root / "bart"))[0]
    inputs = _inputs(config["vocab_size"])
    np.testing.assert_allclose(np.asarray(model(inputs)), np.asarray(source(inputs)), atol=1e-6)
    # BART's tokenizer reads the pairs: `abc </s>` in, `<s> cba` to the decoder, `cba </s>` out.
    tokenizer = task.make_tokenizer()
    features, labels, weights = next(iter(task.dataset(tokenizer, training=False, split="train")))
    real = int(features["encoder_padding_mask"][0].numpy().sum())
    target = int(weights[0].numpy().sum())
    assert features["encoder_token_ids"][0, real - 1] == 2 and labels[0, target - 1] == 2
    assert features["decoder_token_ids"][0, 0] == 0 and tokenizer.pad_id == 1
    with pytest.raises(Exception, match="num_layers=3"):
        load_experiment(None, f"model.task=seq2seq,model.init_checkpoint={root / 'bart'},"
                              f"data.input_format=jsonl,data.input_path={pairs},model.num_layers=3")


def test_bart_base_config_is_facebook_bart_base():
    # facebook/bart-base's config.json (its architecture keys) through the importer's mapping.
    bart_base = dict(BART_CONFIG, vocab_size=50265, d_model=768, encoder_layers=6,
                     decoder_layers=6, encoder_attention_heads=12, decoder_attention_heads=12,
                     encoder_ffn_dim=3072, decoder_ffn_dim=3072, max_position_embeddings=1024)
    expected = bart_backbone_kwargs(bart_base)
    model = load_experiment(str(REPO_ROOT / "configs" / "bart_base.yaml")).model
    for key in architecture_keys(model):
        assert architecture_value(model, key) == expected.get(key, architecture_value(model, key)), key
    assert all(getattr(model, key) == expected[key] for key in ENCODER_DECODER_KEYS)
