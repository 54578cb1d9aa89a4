"""Converted checkpoints as model_dirs; initializing classifiers and LMs from them."""

import json

import numpy as np
import pytest

from hf_fixtures import write_bert_folder, write_gpt2_folder
from tflm.config import ModelConfig
from tflm.models import CausalLM, MaskedLM, SequenceClassifier
from tflm.models.factory import build_backbone
from tflm.tasks import build_task
from tflm.models.huggingface import CheckpointError, load_huggingface
from tflm.tasks.pretrained import (
    convert_checkpoint,
    copy_pretrained_weights,
    init_from_pretrained,
    load_pretrained,
)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained")
    write_bert_folder(str(root / "hf_bert"))
    write_gpt2_folder(str(root / "hf_gpt2"))
    lines = []
    convert_checkpoint(str(root / "hf_bert"), str(root / "bert"), print_fn=lines.append)
    convert_checkpoint(str(root / "hf_gpt2"), str(root / "gpt2"), print_fn=lines.append)
    return root, lines


def _ids(n=2, length=9, vocab=500):
    ids = np.random.default_rng(0).integers(5, vocab, (n, length)).astype("int32")
    return {"token_ids": ids, "padding_mask": np.ones_like(ids), "segment_ids": np.zeros_like(ids)}


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_converted_folder_reloads_the_same_model(converted):
    root, lines = converted
    assert sorted(p.name for p in (root / "bert").iterdir()) == [
        "conversion.json", "model.keras", "params.yaml", "tokenizer"]
    info = json.loads((root / "bert" / "conversion.json").read_text())
    assert info["kind"] == "bert" and info["unused_tensors"] == ["cls.seq_relationship.weight"]
    assert any("left out: cls.seq_relationship.weight" in line for line in lines)
    for name, task in (("bert", MaskedLM), ("gpt2", CausalLM)):
        model, tokenizer, config = load_pretrained(str(root / name))
        original = load_huggingface(str(root / f"hf_{name}"))
        assert isinstance(model, task)
        assert config.model.task == ("masked_lm" if name == "bert" else "causal_lm")
        assert tokenizer.fingerprint() == original.tokenizer.fingerprint()
        x = _ids()
        if name == "bert":
            x["mask_positions"] = np.array([[1, 2], [3, 4]], "int32")
        else:
            del x["segment_ids"]
        _close(model(x), original.model(x))
        assert config.model.causal == (name == "gpt2")
    # Loading the Hugging Face folder directly gives the same model too.
    model, _, config = load_pretrained(str(root / "hf_gpt2"))
    assert config.model.task == "causal_lm" and isinstance(model, CausalLM)


def test_an_existing_output_folder_is_never_overwritten(converted, tmp_path):
    root, _ = converted
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        convert_checkpoint(str(root / "hf_bert"), str(tmp_path / "taken"), print_fn=print)
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "taken.partial").exists()


def _model_config(converted_dir, **changes):
    _, _, config = load_pretrained(str(converted_dir))
    model_config = config.model
    for key, value in changes.items():
        setattr(model_config, key, value)
    return model_config


def test_classifier_from_a_converted_bert(converted):
    root, _ = converted
    source, _, _ = load_pretrained(str(root / "bert"))
    config = _model_config(root / "bert", task="classification", num_classes=3,
                           finetune="adapters", adapter_dim=4)
    classifier = build_task(config)
    fresh = init_from_pretrained(classifier, str(root / "bert"))
    # New: the classification head and the adapters (8 tensors a block); all else copied.
    assert sorted(p.split("/")[-2] for p in fresh if "adapter" not in p) == ["classifier"] * 2
    assert sum("adapter" in p for p in fresh) == 8 * config.num_layers
    x = _ids()
    # Fresh adapters are the identity: the backbone computes what the source's does.
    source_out = source.backbone(x)
    out = classifier.backbone(x)
    _close(out["sequence_output"], source_out["sequence_output"])
    _close(out["pooled_output"], source_out["pooled_output"])


def test_same_task_continues_from_the_head(converted):
    root, _ = converted
    source, _, _ = load_pretrained(str(root / "bert"))
    target = build_task(_model_config(root / "bert"))
    assert init_from_pretrained(target, str(root / "bert")) == []
    x = dict(_ids(), mask_positions=np.array([[1, 2], [3, 4]], "int32"))
    _close(target(x), source(x))


def test_a_checkpoint_of_another_architecture_is_named(converted):
    root, _ = converted
    config = _model_config(root / "bert", task="classification", num_classes=2, num_layers=3)
    with pytest.raises(CheckpointError, match=r"has model.num_layers=2, the model to initialize 3"):
        init_from_pretrained(build_task(config), str(root / "bert"))
    gpt2, _, _ = load_pretrained(str(root / "gpt2"))
    bert_classifier = build_task(_model_config(root / "bert", task="classification",
                                               num_classes=2))
    with pytest.raises(CheckpointError, match="model.vocabulary_size"):
        copy_pretrained_weights(gpt2, bert_classifier)


def test_model_config_round_trip(converted):
    root, _ = converted
    _, _, config = load_pretrained(str(root / "gpt2"))
    assert isinstance(config.model, ModelConfig)
    backbone = build_backbone(config.model)
    original = load_huggingface(str(root / "hf_gpt2")).model.backbone
    config_a, config_b = backbone.get_config(), original.get_config()
    for key in ("name", "dtype"):
        config_a.pop(key), config_b.pop(key)
    assert config_a == config_b
    assert isinstance(SequenceClassifier(backbone, 2).backbone, type(original))
