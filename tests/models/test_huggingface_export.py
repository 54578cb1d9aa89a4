"""Export to Hugging Face folders: tflm -> HF -> tflm is bit-identical (weights and ids) for
BERT, GPT-2 and the Llama family, the names and config keys are those transformers writes (as
tests/hf_fixtures.py writes them), the exported tensors compute tflm's outputs in the NumPy
references, and what the architectures cannot express is refused by name."""

import importlib.util
import json

import numpy as np
import pytest

from hf_fixtures import (corpus_paragraphs, write_bert_folder, write_byte_level_tokenizer_json,
                         write_gpt2_folder, write_llama_folder)
from numpy_reference import bert_forward, bert_mlm_logits, gpt2_forward, llama_forward
from tflm.data.byte_pair import BytePairTokenizer
from tflm.data.sentencepiece_tokenizer import SentencePieceTokenizer
from tflm.data.wordpiece import WordPieceTokenizer
from tflm.models import MaskedLM
from tflm.models.backbone import TransformerBackbone
from tflm.models.causal_lm import CausalLM
from tflm.models.huggingface import byte_level_bpe_of_tokenizer_json, load_huggingface
from tflm.models.huggingface_export import LLAMA_CLASSES, ExportError, export_huggingface
from tflm.models.safetensors_file import read_safetensors
from tflm.models.sequence_classifier import SequenceClassifier
from tflm.tasks.pretrained import export_model_to_huggingface

# Real text, and text that NFKC changes (ligatures, full-width, circled digits).
TEXTS = ["It is a truth universally acknowledged, that a single man in possession",
         "Mr. Darcy's \"pride\" — and Elizabeth's [MASK] prejudice!",
         "ﬁne ＡＢＣ ① café naïve 東京", ""]


def _corpus_texts(limit=150):
    from tflm.data import default_corpus_path

    with open(default_corpus_path(), encoding="utf-8") as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    return lines[:: len(lines) // limit][:limit] + TEXTS


def _assert_same_weights(a, b):
    assert len(a.weights) == len(b.weights)
    for x, y in zip(a.weights, b.weights):
        assert np.array_equal(np.asarray(x), np.asarray(y)), x.path


@pytest.fixture(scope="module")
def hf_root(tmp_path_factory):
    return tmp_path_factory.mktemp("hf")


def test_bert_round_trip_is_exact(hf_root):
    from tokenizers import Tokenizer

    fixture = hf_root / "bert"
    config, _ = write_bert_folder(str(fixture))
    source = load_huggingface(str(fixture)).model
    # tflm's own WordPiece default: NFKC before BERT's normalizer (tokenizer.json says so).
    tokenizer = WordPieceTokenizer(str(fixture / "vocab.txt"), nfkc=True)
    out = hf_root / "bert_export"
    assert export_model_to_huggingface(source, tokenizer, str(out)).kind == "bert"

    written = json.loads((out / "config.json").read_text())
    assert {k: written[k] for k in config} == config  # transformers' keys, the same values
    saved = read_safetensors(str(fixture / "model.safetensors"))
    names = set(saved) - {"bert.embeddings.position_ids", "cls.seq_relationship.weight"}
    tensors = read_safetensors(str(out / "model.safetensors"))
    assert set(tensors) == names

    again = load_huggingface(str(out))
    assert again.unused_tensors == [] and again.head_loaded
    _assert_same_weights(source, again.model)
    texts = _corpus_texts()
    ours = tokenizer.tokenize(texts).to_list()
    assert again.tokenizer.tokenize(texts).to_list() == ours
    fast = Tokenizer.from_file(str(out / "tokenizer.json"))  # what AutoTokenizer reads
    assert [e.ids for e in fast.encode_batch(texts, add_special_tokens=False)] == ours
    assert fast.encode(texts[0]).ids == [tokenizer.cls_id] + ours[0] + [tokenizer.sep_id]

    # The exported tensors compute tflm's logits in BertForMaskedLM's reference forward.
    params = {k.removeprefix("bert."): v for k, v in tensors.items()}
    ids = np.array([[2, 40, 41, 42, 3]], "int32")
    sequence, _ = bert_forward(params, config, ids)
    expected = bert_mlm_logits(params, config, sequence)
    logits = source({"token_ids": ids, "padding_mask": np.ones_like(ids),
                     "segment_ids": np.zeros_like(ids), "mask_positions": np.arange(5)[None]})
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-4)


def test_gpt2_round_trip_is_exact(hf_root):
    from tokenizers import ByteLevelBPETokenizer

    fixture = hf_root / "gpt2"
    config, params = write_gpt2_folder(str(fixture))
    imported = load_huggingface(str(fixture))
    out = hf_root / "gpt2_export"
    export_model_to_huggingface(imported.model, imported.tokenizer, str(out))

    written = json.loads((out / "config.json").read_text())
    assert {k: written[k] for k in config} == config
    tensors = read_safetensors(str(out / "model.safetensors"))
    assert {k.removeprefix("transformer.") for k in tensors} == set(params)
    assert all(k.startswith("transformer.") for k in tensors)  # GPT2LMHeadModel's names

    again = load_huggingface(str(out))
    assert again.unused_tensors == []
    _assert_same_weights(imported.model, again.model)
    texts = _corpus_texts()
    ours = imported.tokenizer.tokenize(texts).to_list()
    assert again.tokenizer.tokenize(texts).to_list() == ours
    reference = ByteLevelBPETokenizer(str(out / "vocab.json"), str(out / "merges.txt"))
    assert [e.ids for e in reference.encode_batch(texts)] == ours

    ids = np.array([ours[0][:12]], "int32")
    _, expected = gpt2_forward({k.removeprefix("transformer."): v for k, v in tensors.items()},
                               config, ids)
    logits = imported.model({"token_ids": ids, "padding_mask": np.ones_like(ids)})
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-4)


def test_bert_classifier_exports_as_sequence_classification(hf_root):
    imported = load_huggingface(str(hf_root / "bert"))
    classifier = SequenceClassifier(imported.model.backbone, num_classes=3,
                                    label_names=["neg", "neutral", "pos"])
    out = hf_root / "classifier_export"
    export_model_to_huggingface(classifier, imported.tokenizer, str(out))
    written = json.loads((out / "config.json").read_text())
    assert written["architectures"] == ["BertForSequenceClassification"]
    assert written["id2label"] == {"0": "neg", "1": "neutral", "2": "pos"}
    tensors = read_safetensors(str(out / "model.safetensors"))
    np.testing.assert_array_equal(tensors["classifier.weight"],
                                  np.asarray(classifier.head.kernel).T)
    again = load_huggingface(str(out))  # the importer takes the encoder, leaves the head out
    assert again.unused_tensors == ["classifier.bias", "classifier.weight"]
    _assert_same_weights(imported.model.backbone, again.model.backbone)


def _llama_backbone(**overrides):
    """A Llama-shaped tflm backbone: 8 query heads share 2 key/value heads, untied output."""
    kwargs = dict(vocabulary_size=620, num_layers=2, num_heads=8, num_key_value_heads=2,
                  hidden_dim=32, intermediate_dim=48, max_sequence_length=64, causal=True,
                  position_encoding="rotary", rope_theta=500000.0, activation="swiglu",
                  normalization="rms_norm", norm_first=True, use_bias=False,
                  tie_embeddings=False)
    return TransformerBackbone(**dict(kwargs, **overrides))


@pytest.fixture(scope="module")
def llama_fixture(hf_root):
    folder = hf_root / "llama"
    config, _ = write_llama_folder(str(folder))
    return folder, config


def _random_causal_lm(backbone, seed=0):
    """A `CausalLM` on `backbone` with every weight random (norm scales too)."""
    model = CausalLM(backbone)
    ids = np.zeros((1, 4), "int32")
    model({"token_ids": ids, "padding_mask": np.ones_like(ids)})
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        weight.assign(rng.normal(0, 0.2, weight.shape).astype(np.float32))
    return model


def _round_trip_tokenizers(hf_root, llama_fixture):
    """SentencePiece (Llama 2's layout, <s> before every text), Qwen2's byte-level BPE (NFC,
    its split, no start token) and GPT-2's (here with a start token: the template case)."""
    qwen2 = hf_root / "qwen2_tokenizer"
    qwen2.mkdir(exist_ok=True)
    write_byte_level_tokenizer_json(str(qwen2), "qwen2")
    return {
        "sentencepiece": SentencePieceTokenizer(str(llama_fixture[0] / "tokenizer.model"),
                                                nfkc=False, clean_whitespace=False,
                                                start_token="<s>"),
        "qwen2": byte_level_bpe_of_tokenizer_json(str(qwen2 / "tokenizer.json")),
        "gpt2": BytePairTokenizer(str(hf_root / "gpt2" / "vocab.json"),
                                  str(hf_root / "gpt2" / "merges.txt"),
                                  start_token="<|endoftext|>"),
    }


# kind: (backbone changes, tokenizer, config.json values that say so).
LLAMA_CASES = {
    "llama": ({}, "sentencepiece", {"num_key_value_heads": 2, "tie_word_embeddings": False,
                                    "bos_token_id": 1, "eos_token_id": 2}),
    "qwen2": (dict(num_heads=4, qkv_bias=True, tie_embeddings=True), "qwen2",
              {"num_key_value_heads": 2, "tie_word_embeddings": True,
               "use_sliding_window": False}),
    "mistral": (dict(sliding_window=5, head_dim=6), "gpt2", {"sliding_window": 5, "head_dim": 6}),
}


def test_llama_family_round_trips_exactly(hf_root, llama_fixture):
    import sentencepiece as spm
    from tokenizers import Tokenizer

    tokenizers = _round_trip_tokenizers(hf_root, llama_fixture)
    texts = _corpus_texts(40) + corpus_paragraphs()[-1:] + ["  two  spaces,\ttab\n\n  y"]
    ids = np.random.default_rng(1).integers(0, 600, (2, 12)).astype("int32")  # past the window
    for seed, (kind, (changes, tokenizer_name, expected)) in enumerate(LLAMA_CASES.items()):
        model = _random_causal_lm(_llama_backbone(**changes), seed)
        tokenizer = tokenizers[tokenizer_name]
        out = hf_root / f"{kind}_export"
        assert export_model_to_huggingface(model, tokenizer, str(out)).kind == kind

        config = json.loads((out / "config.json").read_text())
        assert config["architectures"] == [LLAMA_CLASSES[kind]]
        assert {k: config[k] for k in expected} == expected, kind
        assert (config["hidden_act"], config["rope_theta"]) == ("silu", 500000.0)
        if tokenizer_name != "sentencepiece":  # <|endoftext|> begins and ends text
            end = tokenizer.token_to_id("<|endoftext|>")
            assert (config["bos_token_id"], config["eos_token_id"]) == (end, end)
        tensors = read_safetensors(str(out / "model.safetensors"))
        assert ("lm_head.weight" in tensors) == (not changes.get("tie_embeddings"))
        assert ("model.layers.1.self_attn.k_proj.bias" in tensors) == (kind == "qwen2")
        assert tensors["model.layers.0.self_attn.k_proj.weight"].shape == (
            2 * model.backbone.head_dim, 32)  # torch's (out, in), two key/value heads

        again = load_huggingface(str(out))
        assert again.kind == kind and again.unused_tensors == []
        _assert_same_weights(model, again.model)
        ours = tokenizer.tokenize(texts).to_list()
        assert again.tokenizer.tokenize(texts).to_list() == ours
        assert again.tokenizer.start_token == tokenizer.start_token
        start = [] if tokenizer.start_id is None else [tokenizer.start_id]
        if tokenizer_name == "sentencepiece":  # Hugging Face's LlamaTokenizer segments so
            reference = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
            assert [reference.encode(t) for t in texts] == ours
            written = json.loads((out / "tokenizer_config.json").read_text())
            assert (written["add_bos_token"], written["bos_token"]) == (True, "<s>")
        else:  # what PreTrainedTokenizerFast reads, the start token included
            reference = Tokenizer.from_file(str(out / "tokenizer.json"))
            assert [e.ids for e in reference.encode_batch(texts)] == [start + o for o in ours]

        # The exported tensors compute tflm's logits in LlamaForCausalLM's reference forward.
        _, logits = llama_forward({k.removeprefix("model."): v for k, v in tensors.items()},
                                  config, ids)
        np.testing.assert_allclose(
            np.asarray(model({"token_ids": ids, "padding_mask": np.ones_like(ids)})), logits,
            atol=2e-5, rtol=1e-5)


def test_llama_checkpoint_exports_as_it_was(hf_root, llama_fixture):
    """Hugging Face Llama -> tflm -> Hugging Face: the same config values, tensor names and
    arrays, the same tokenizer.model."""
    folder, config = llama_fixture
    imported = load_huggingface(str(folder))
    out = hf_root / "llama_reexport"
    export_model_to_huggingface(imported.model, imported.tokenizer, str(out))
    written = json.loads((out / "config.json").read_text())
    assert {k: written[k] for k in config} == config
    original = read_safetensors(str(folder / "model.safetensors"))
    exported = read_safetensors(str(out / "model.safetensors"))
    assert set(exported) == set(original)
    for name, value in original.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
    assert (out / "tokenizer.model").read_bytes() == (folder / "tokenizer.model").read_bytes()
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert (tokenizer_config["tokenizer_class"], tokenizer_config["bos_token"],
            tokenizer_config["add_bos_token"]) == ("LlamaTokenizer", "<s>", True)


def _backbone(**overrides):
    kwargs = dict(vocabulary_size=600, num_layers=1, num_heads=2, hidden_dim=16,
                  intermediate_dim=64, max_sequence_length=32, causal=True, norm_first=True,
                  activation="gelu_tanh", final_norm=True)
    return TransformerBackbone(**dict(kwargs, **overrides))


def test_what_hugging_face_cannot_express_is_named(hf_root, tmp_path):
    gpt2 = load_huggingface(str(hf_root / "gpt2"))
    bert = load_huggingface(str(hf_root / "bert"))
    out = str(tmp_path / "out")
    with pytest.raises(ExportError, match=r"nearest gpt2.*model.position_encoding='rotary'"):
        export_model_to_huggingface(CausalLM(_backbone(position_encoding="rotary")),
                                    gpt2.tokenizer, out)
    with pytest.raises(ExportError, match=r"model.tie_embeddings=False"):
        export_model_to_huggingface(CausalLM(_backbone(tie_embeddings=False)), gpt2.tokenizer,
                                    out)
    # A Llama but for its layer norm: nearest llama, the key named.
    with pytest.raises(ExportError, match=r"nearest llama, which differs in: model.normalization="
                                          r"'layer_norm' \(Hugging Face llama has 'rms_norm'\)\.$"):
        export_model_to_huggingface(CausalLM(_llama_backbone(normalization="layer_norm")),
                                    gpt2.tokenizer, out)
    with pytest.raises(ExportError, match=r"nearest llama.*model.rotary_layout='interleaved'"):
        export_model_to_huggingface(CausalLM(_llama_backbone(rotary_layout="interleaved")),
                                    gpt2.tokenizer, out)
    # Hugging Face's LlamaTokenizer gives the SentencePiece model the text as it is.
    collapsing = SentencePieceTokenizer(str(hf_root / "llama" / "tokenizer.model"), nfkc=False)
    with pytest.raises(ExportError, match=r"tokenizer: clean_whitespace at its default "
                                          r"\(Hugging Face llama reads False\)"):
        export_model_to_huggingface(CausalLM(_llama_backbone()), collapsing, out)
    with pytest.raises(ExportError, match=r"its task has no Hugging Face head"):
        export_huggingface(gpt2.model, gpt2.tokenizer, out, head=None)
    pre_ln_bert = dict(bert.model.backbone.get_config(), norm_first=True)
    with pytest.raises(ExportError, match=r"nearest bert.*model.norm_first=True"):
        export_model_to_huggingface(MaskedLM(TransformerBackbone.from_config(pre_ln_bert)),
                           bert.tokenizer, out)
    no_segments = dict(bert.model.backbone.get_config(), num_segments=0)
    with pytest.raises(ExportError, match=r"model.num_segments=0"):
        export_model_to_huggingface(MaskedLM(TransformerBackbone.from_config(no_segments)),
                           bert.tokenizer, out)
    with pytest.raises(ExportError, match=r"data.tokenizer='wordpiece'.*byte-level BPE"):
        export_model_to_huggingface(gpt2.model, bert.tokenizer, out)
    with pytest.raises(ExportError, match=r"tokenizer: max_chars_per_word=50"):
        export_model_to_huggingface(bert.model, WordPieceTokenizer(
            str(hf_root / "bert" / "vocab.txt"), max_chars_per_word=50), out)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    with pytest.raises(FileExistsError, match="exists"):
        export_model_to_huggingface(gpt2.model, gpt2.tokenizer, str(hf_root / "gpt2"))


def test_tool_exports_a_model_dir(hf_root, repo_root, tmp_path, capsys):
    from tflm.tasks import convert_checkpoint

    spec = importlib.util.spec_from_file_location("convert_checkpoint",
                                                  repo_root / "tools" / "convert_checkpoint.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    convert_checkpoint(str(hf_root / "gpt2"), str(tmp_path / "run"), print_fn=lambda line: None)
    args = ["--to=huggingface", f"--input_dir={tmp_path / 'run'}"]
    assert tool.main(args + [f"--output_dir={tmp_path / 'hf'}"]) == 0
    assert "(Hugging Face gpt2)" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "hf").iterdir()} == {
        "config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer_config.json"}
    assert tool.main(args + [f"--output_dir={tmp_path / 'hf'}"]) == 2
    assert "exists" in capsys.readouterr().err
