"""LoRA through the trainer (tflm-train's path), from imported GPT-2 and BERT checkpoints:
the base stays bit-identical, a resumed run ends at the uninterrupted one's factors, the
factors file alone (with the base) is the model, and the merged export answers as it."""

import shutil

import numpy as np
import pytest
import tensorflow as tf

from hf_fixtures import write_bert_folder, write_gpt2_folder
from labelled_fixtures import write_labelled_paragraphs
from tflm.data.classification import encode_classification
from tflm.experiment import export_model_dir, load_experiment, run_experiment
from tflm.models.lora import lora_layers
from tflm.tasks import convert_checkpoint, get_task, load_model_dir
from tflm.training.trainer import Trainer

QUIET = dict(print_fn=lambda line: None)
FAST = ("trainer.log_every=2,trainer.steps_per_loop=2,trainer.checkpoint_every=2,"
        "trainer.warmup_steps=0,trainer.jit_compile=false,trainer.learning_rate=1e-2")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_bases")
    write_gpt2_folder(str(root / "hf_gpt2"))
    write_bert_folder(str(root / "hf_bert"))
    convert_checkpoint(str(root / "hf_gpt2"), str(root / "gpt2"), print_fn=lambda line: None)
    convert_checkpoint(str(root / "hf_bert"), str(root / "bert"), print_fn=lambda line: None)
    return root


def _base_weights(model):
    """The backbone's weights other than LoRA factors, by path below the backbone."""
    return {v.path.split("/", 1)[1]: np.array(v) for v in model.backbone.weights
            if "/lora_" not in v.path}


def _assert_base_unchanged(model, base_dir):
    source, _ = load_model_dir(str(base_dir))
    before, after = _base_weights(source), _base_weights(model)
    assert sorted(before) == sorted(after)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


def test_a_causal_lm_adapts_new_text_resumes_and_reloads_from_its_factors(tmp_path, converted):
    config = load_experiment(None, (
        f"model.task=causal_lm,model.init_checkpoint={converted / 'gpt2'},model.finetune=lora,"
        "model.lora_targets=[query,key,value,attention_output,feed_forward_in,feed_forward_out],"
        f"model.dropout=0.0,model.attention_dropout=0.0,data.sequence_length=16,"
        f"data.global_batch_size=4,trainer.train_steps=4,{FAST}"))
    straight = run_experiment(config, str(tmp_path / "straight"), **QUIET)
    assert straight.status == "completed"
    Trainer(get_task(config), str(tmp_path / "pieces"), **QUIET).train(until_step=2)
    resumed = Trainer(get_task(config), str(tmp_path / "pieces"), **QUIET)
    assert resumed.train() == "completed"
    factors = [v for v in straight.model.weights if "/lora_" in v.path]
    assert factors and all(np.any(np.array(v)) for v in factors if "lora_b" in v.path)
    for a, b in zip(straight.model.weights, resumed.model.weights):
        np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-6, err_msg=a.path)
    _assert_base_unchanged(straight.model, converted / "gpt2")

    # params.yaml, tokenizer/ and lora.safetensors (on the base) are the whole model.
    run = tmp_path / "straight"
    small = tmp_path / "small"
    small.mkdir()
    shutil.copy(run / "params.yaml", small)
    shutil.copytree(run / "tokenizer", small / "tokenizer")
    shutil.copy(run / "lora.safetensors", small)
    reloaded, _ = load_model_dir(str(small))
    ids = np.random.default_rng(0).integers(5, 300, (2, 9)).astype("int32")
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    np.testing.assert_allclose(reloaded(x), straight.model(x), atol=1e-5)


def test_a_classifier_on_imported_bert_with_lora_and_layer_decay(tmp_path, converted):
    labelled = tmp_path / "paragraphs.jsonl"
    write_labelled_paragraphs(str(labelled), limit=100)
    config = load_experiment(None, (
        "model.task=classification,data.input_format=jsonl,"
        f"data.input_path={labelled},model.init_checkpoint={converted / 'bert'},"
        "model.finetune=lora,model.lora_dropout=0.1,trainer.layer_decay=0.5,"
        f"data.sequence_length=32,data.global_batch_size=8,trainer.train_steps=4,{FAST}"))
    lines = []
    trainer = run_experiment(config, str(tmp_path / "run"), print_fn=lines.append)
    assert trainer.status == "completed"
    _assert_base_unchanged(trainer.model, converted / "bert")
    assert len(lora_layers(trainer.model)) == config.model.num_layers
    trained = sum(int(np.prod(v.shape)) for v in trainer.model.trainable_variables)
    assert any(f"({trained:,} trained)" in line for line in lines)
    assert (tmp_path / "run" / "lora.safetensors").stat().st_size < trained * 4 + 4096

    # The export is merged (plain kernels, no factors) and answers as the unmerged model.
    path = export_model_dir(str(tmp_path / "run"), str(tmp_path / "export"))
    saved = [name for name, _ in tf.train.list_variables(f"{path}/variables/variables")]
    assert saved and not [name for name in saved if "lora" in name]
    texts = tf.constant(["\"Indeed,\" said she.", "The house stood on a hill."])
    features, _ = encode_classification(trainer.tokenizer, texts, None, 32, pad_to_length=False)
    expected = tf.nn.softmax(trainer.model(features)).numpy()
    served = tf.saved_model.load(path).signatures["classify"](text=texts)
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-5)
