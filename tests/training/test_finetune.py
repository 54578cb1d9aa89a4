"""Fine-tuning through the trainer (tflm-train's path): from a pretrained model_dir, in each
mode, with labelled data; errors for bad input; real data beats the majority class."""

import json

import numpy as np
import pytest

from labelled_fixtures import write_labelled_paragraphs
from tflm.experiment import run_experiment
from tflm.config import ConfigError
from tflm.experiment import load_experiment
from tflm.data.classification import LabelledDataError
from tflm.tasks import load_model_dir

QUIET = dict(print_fn=lambda line: None)
FAST = ("trainer.log_every=4,trainer.steps_per_loop=4,trainer.checkpoint_every=100,"
        "trainer.warmup_steps=0,trainer.jit_compile=false")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny BERT pretrained (masked LM) for a few steps by tflm-train."""
    model_dir = tmp_path_factory.mktemp("pretrained") / "bert"
    config = load_experiment("configs/tiny_bert.yaml",
                             "trainer.train_steps=4,data.global_batch_size=4,"
                             f"data.sequence_length=64,{FAST}")
    run_experiment(config, str(model_dir), **QUIET)
    return model_dir


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    path = tmp_path_factory.mktemp("labelled") / "paragraphs.jsonl"
    write_labelled_paragraphs(str(path), limit=300)
    return path


def _finetune_config(labelled, pretrained, extra=""):
    return load_experiment(None, ",".join(filter(None, [
        "model.task=classification,data.input_format=jsonl,data.eval_every_nth_document=5,"
        f"data.input_path={labelled},model.init_checkpoint={pretrained},"
        "data.sequence_length=48,data.global_batch_size=8,trainer.train_steps=8,"
        f"trainer.learning_rate=1e-3,{FAST}", extra])))


def _backbone_weights(model, keep=lambda path: True):
    return {v.path.split("/", 1)[1]: np.array(v) for v in model.backbone.weights
            if keep(v.path)}


def test_adapters_leave_the_pretrained_backbone_bit_identical(tmp_path, labelled, pretrained):
    config = _finetune_config(labelled, pretrained, "model.finetune=adapters,model.adapter_dim=8")
    lines = []
    trainer = run_experiment(config, str(tmp_path / "run"), mode="train_and_eval",
                             print_fn=lines.append)
    assert any("initialized from" in line and "new" in line for line in lines)
    source, _ = load_model_dir(str(pretrained))
    before = _backbone_weights(source)
    after = _backbone_weights(trainer.model, keep=lambda p: "adapter" not in p)
    assert sorted(before) == sorted(after)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    adapters = [v for v in trainer.model.trainable_variables if "adapter" in v.path]
    assert len(adapters) == 8 * config.model.num_layers
    assert any(np.any(np.array(v)) for v in adapters if "/up/" in v.path), "adapters trained"

    # Label names are saved with the run and the model; the tokenizer too.
    saved = load_experiment(str(tmp_path / "run" / "params.yaml"))
    assert saved.data.label_names == ["dialogue", "narration"]
    model, _ = load_model_dir(str(tmp_path / "run"))
    assert model.label_names == ["dialogue", "narration"]
    assert (tmp_path / "run" / "tokenizer" / "tokenizer.json").is_file()
    results = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert results["examples"] == 60 and len(results["confusion_matrix"]) == 2
    assert sum(map(sum, results["confusion_matrix"])) == 60
    assert set(results["per_class"]) == {"dialogue", "narration"}
    assert 0 <= results["macro_f1"] <= 1 and results == trainer.eval_results

    # Resuming continues from the run's own checkpoint, not from the pretrained model.
    lines = []
    config.trainer.train_steps = 12
    run_experiment(config, str(tmp_path / "run"), print_fn=lines.append)
    assert any("resumed from" in line for line in lines)
    assert not any("initialized from" in line for line in lines)


def test_frozen_bottom_layers_and_layer_decay(tmp_path, labelled, pretrained):
    config = _finetune_config(labelled, pretrained,
                              "model.freeze_bottom_layers=1,trainer.layer_decay=0.5")
    trainer = run_experiment(config, str(tmp_path / "run"), **QUIET)
    source, _ = load_model_dir(str(pretrained))
    before, after = _backbone_weights(source), _backbone_weights(trainer.model)
    for name in before:
        frozen = "block_0/" in name or "embedding" in name
        assert np.array_equal(after[name], before[name]) == frozen, name


def test_feature_extraction_trains_only_the_head(tmp_path, labelled, pretrained):
    config = _finetune_config(labelled, pretrained, "model.finetune=feature_extraction")
    trainer = run_experiment(config, str(tmp_path / "run"), **QUIET)
    assert [v.path.split("/")[-2] for v in trainer.model.trainable_variables] == ["classifier"] * 2
    source, _ = load_model_dir(str(pretrained))
    before, after = _backbone_weights(source), _backbone_weights(trainer.model)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


def test_a_jsonl_line_without_the_text_field_names_file_and_line(tmp_path, labelled, pretrained):
    bad = tmp_path / "bad.jsonl"
    lines = labelled.read_text().splitlines()
    lines[6] = json.dumps({"body": "the text is under another key", "label": "narration"})
    bad.write_text("\n".join(lines) + "\n")
    config = _finetune_config(bad, pretrained)
    with pytest.raises(LabelledDataError, match=r"bad.jsonl:7: the text field 'text' is missing"):
        run_experiment(config, str(tmp_path / "run"), **QUIET)
    assert not (tmp_path / "run").exists()
    counted = _finetune_config(bad, pretrained, "data.on_bad_record=count")
    assert run_experiment(counted, str(tmp_path / "counted"), **QUIET).status == "completed"


def test_an_unknown_label_at_eval_time_names_file_and_line(tmp_path, labelled, pretrained):
    config = _finetune_config(labelled, pretrained)
    run_experiment(config, str(tmp_path / "run"), **QUIET)
    held_out = tmp_path / "test.jsonl"
    held_out.write_text(json.dumps({"text": "Fine.", "label": "narration"}) + "\n"
                        + json.dumps({"text": "Who knows?", "label": "question"}) + "\n")
    config.data.eval_input_path = str(held_out)
    with pytest.raises(LabelledDataError, match=r"test.jsonl:2: unknown label 'question'; the "
                                                r"model knows \['dialogue', 'narration'\]"):
        run_experiment(config, str(tmp_path / "run"), mode="eval", **QUIET)


def test_an_empty_labelled_file_is_an_error(tmp_path, pretrained):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(LabelledDataError, match="empty.jsonl: no labelled records"):
        run_experiment(_finetune_config(empty, pretrained), str(tmp_path / "run"), **QUIET)


def test_a_checkpoint_of_another_architecture_is_an_error(tmp_path, labelled, pretrained):
    with pytest.raises(ConfigError, match=r"model.hidden_dim=64, but model.init_checkpoint=.* "
                                          "has 128"):
        _finetune_config(labelled, pretrained, "model.hidden_dim=64,model.num_heads=4")
    with pytest.raises(ConfigError, match="does not exist"):
        config = _finetune_config(labelled, tmp_path / "missing")
        run_experiment(config, str(tmp_path / "run"), **QUIET)


def test_a_small_classifier_beats_the_majority_on_real_reviews(tmp_path, shared_data):
    """Chinese product reviews (35k, pos/neg): a character vocabulary trained on the
    training texts, a tiny BERT pretrained (masked LM) on them, then fine-tuned; held out:
    every 10th review."""
    from tflm.data import train_vocabulary

    reviews = shared_data / "zh_review_sentiment.jsonl"
    texts = tmp_path / "train_texts.txt"
    with open(reviews, encoding="utf-8") as f, open(texts, "w", encoding="utf-8") as out:
        for i, line in enumerate(f):
            if i % 10 and i % 3 == 0:  # a third of the training split, none of the held-out
                out.write(json.loads(line)["text"].replace("\n", " ") + "\n")
    tokenizer = train_vocabulary("wordpiece", [str(texts)], 4000, str(tmp_path / "vocab"))
    common = (f"model.vocabulary_size={tokenizer.vocabulary_size},data.tokenizer=wordpiece,"
              f"data.vocab_path={tmp_path / 'vocab'},data.sequence_length=64,"
              "trainer.warmup_steps=20,trainer.log_every=50,trainer.checkpoint_every=1000")
    pretrain = load_experiment("configs/tiny_bert.yaml", common + (
        f",data.input_path={texts},data.document_split=line,data.global_batch_size=32,"
        "trainer.train_steps=60"))
    run_experiment(pretrain, str(tmp_path / "pretrained"), **QUIET)
    finetune = load_experiment(None, common + (
        f",model.task=classification,model.init_checkpoint={tmp_path / 'pretrained'},"
        f"data.input_format=jsonl,data.input_path={reviews},data.eval_every_nth_document=10,"
        "data.global_batch_size=32,trainer.train_steps=150,trainer.learning_rate=1e-3,"
        "model.pooling=mean,model.dropout=0.1,trainer.eval_steps=20"))
    results = run_experiment(finetune, str(tmp_path / "finetuned"), mode="train_and_eval",
                             **QUIET).eval_results
    assert results["examples"] == 20 * 32
    assert results["accuracy"] > results["majority_accuracy"] + 0.10, results
    assert results["macro_f1"] > 0.6, results


def test_a_restarted_fine_tuning_run_ends_where_an_uninterrupted_one_does(tmp_path, labelled,
                                                                          pretrained):
    """The classification input position is part of the checkpoint: 4 + 4 steps == 8."""
    from tflm.training.trainer import Trainer
    from tflm.tasks import get_task

    config = _finetune_config(labelled, pretrained, "model.dropout=0.0,model.classifier_dropout=0.0")
    straight = Trainer(get_task(config), str(tmp_path / "straight"), **QUIET)
    straight.train()
    Trainer(get_task(config), str(tmp_path / "pieces"), **QUIET).train(until_step=4)
    resumed = Trainer(get_task(config), str(tmp_path / "pieces"), **QUIET)
    assert resumed.train() == "completed"
    for a, b in zip(straight.model.weights, resumed.model.weights):
        np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-6, err_msg=a.path)


def test_a_published_checkpoint_fine_tunes_on_real_tweets(tmp_path, shared_data, real_bert_dir):
    """all-MiniLM-L6-v2, converted, fine-tuned for 60 steps on the English tweets (3 labels),
    exported; the served classifier answers as the model does."""
    import tensorflow as tf

    from tflm.data.classification import encode_classification
    from tflm.experiment import export_saved_model, load_trained
    from tflm.tasks import convert_checkpoint

    convert_checkpoint(str(real_bert_dir), str(tmp_path / "minilm"), **QUIET)
    config = load_experiment(None, (
        f"model.task=classification,model.init_checkpoint={tmp_path / 'minilm'},"
        f"data.input_format=jsonl,data.input_path={shared_data / 'en_tweet_sentiment.jsonl'},"
        "data.eval_every_nth_document=10,data.sequence_length=48,data.global_batch_size=16,"
        "trainer.train_steps=60,trainer.learning_rate=5e-5,trainer.warmup_steps=6,"
        "trainer.log_every=30,trainer.checkpoint_every=1000,trainer.eval_steps=20,"
        "model.pooling=mean,model.dropout=0.1,"
        "trainer.jit_compile=false"))  # 49 s here against 61 s with XLA's compile
    assert config.model.num_layers == 6 and config.data.tokenizer == "wordpiece"
    run = tmp_path / "tweets"
    results = run_experiment(config, str(run), mode="train_and_eval", **QUIET).eval_results
    assert results["label_names"] == ["negative", "neutral", "positive"]
    assert results["accuracy"] > results["majority_accuracy"] + 0.15, results

    model, tokenizer, trained = load_trained(str(run))
    path = export_saved_model(model, tokenizer, str(tmp_path / "export"), warmup=False,
                              sequence_length=trained.data.sequence_length)
    texts = ["I love the idea of a car that drives itself!", "self-driving cars scare me",
             "Google is testing autonomous cars in California."]
    served = tf.saved_model.load(path).signatures["classify"](text=tf.constant(texts))
    features, _ = encode_classification(tokenizer, tf.constant(texts), None, 48,
                                        pad_to_length=False)
    expected = tf.nn.softmax(model(features, training=False)).numpy()
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-5)


def _event_tags(folder):
    import tensorflow as tf

    tags = set()
    for path in folder.iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(value.tag for value in event.summary.value)
    return tags


def test_sentence_pairs_from_csv_train_evaluate_and_serve(tmp_path, pretrained):
    """Pairs of paragraphs: does the second follow the first? CSV with two text columns."""
    import csv

    import tensorflow as tf

    from labelled_fixtures import paragraphs
    from tflm.data.classification import encode_classification
    from tflm.experiment import export_saved_model, load_trained

    parts = paragraphs(200)
    path = tmp_path / "pairs.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["first", "second", "relation"])
        for i in range(0, len(parts) - 2, 2):
            follows = i % 4 == 0
            writer.writerow([parts[i][:80], parts[i + 1 if follows else (i * 7) % len(parts)][:80],
                             "next" if follows else "random"])
    config = _finetune_config(path, pretrained, "data.input_format=csv,data.text_field=first,"
                                                "data.text_pair_field=second,data.label_field=relation")
    trainer = run_experiment(config, str(tmp_path / "run"), mode="train_and_eval", **QUIET)
    assert trainer.eval_results["label_names"] == ["next", "random"]
    assert {"loss", "accuracy", "macro_f1"} <= _event_tags(tmp_path / "run" / "eval")

    model, tokenizer, trained = load_trained(str(tmp_path / "run"))
    export = export_saved_model(model, tokenizer, str(tmp_path / "export"), warmup=True,
                                text_pair=True, sequence_length=trained.data.sequence_length)
    served = tf.saved_model.load(export).signatures["classify"]
    first, second = tf.constant(parts[:2]), tf.constant(parts[1:3])
    output = served(text=first, text_pair=second)
    features, _ = encode_classification(tokenizer, first, second, 48, pad_to_length=False)
    np.testing.assert_allclose(output["probabilities"].numpy(),
                               tf.nn.softmax(model(features)).numpy(), atol=1e-5)


def test_masked_lm_evaluation_reports_masked_token_accuracy(pretrained):
    config = load_experiment(str(pretrained / "params.yaml"), "trainer.eval_steps=2")
    results = run_experiment(config, str(pretrained), mode="eval", **QUIET).eval_results
    assert results["masked_accuracy"] == results["accuracy"] and 0 <= results["accuracy"] <= 1
    assert results["tokens"] > 0 and np.isfinite(results["perplexity"])
