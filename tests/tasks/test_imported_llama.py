"""An imported Llama-family checkpoint (grouped-query attention, SentencePiece) through the
whole path: converted, fine-tuned by tflm-train's path (every weight, or LoRA factors on a
bit-identical base), exported (LoRA merged) and served over REST and gRPC, where it answers
as the loaded SavedModel and the fine-tuned Python model do."""

import pathlib
import sys

import numpy as np
import pytest
import tensorflow as tf

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "export"))
from hf_fixtures import LLAMA_CONFIG, corpus_paragraphs, write_llama_folder  # noqa: E402
from serving_adapters import GrpcServer, RestServer, ServedModels  # noqa: E402

from tflm.experiment import export_model_dir, load_experiment, run_experiment  # noqa: E402
from tflm.export.client import ServingClient, typed_inputs  # noqa: E402
from tflm.generation import generate  # noqa: E402
from tflm.models.lora import lora_layers  # noqa: E402
from tflm.tasks import convert_checkpoint, get_task, load_model_dir, make_dataset  # noqa: E402

CONFIG = dict(LLAMA_CONFIG, num_hidden_layers=1)
QUIET = dict(print_fn=lambda line: None)
PROMPTS = ["It is a truth universally", "Mr. Darcy"]
TRAIN = ("model.task=causal_lm,model.dropout=0.0,model.attention_dropout=0.0,"
         "data.sequence_length=16,data.global_batch_size=4,trainer.train_steps=4,"
         "trainer.log_every=2,trainer.steps_per_loop=2,trainer.checkpoint_every=100,"
         "trainer.warmup_steps=0,trainer.jit_compile=false,trainer.learning_rate=1e-2")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A tiny Llama (8 query heads sharing 2 key/value heads; one block: an export's tracing
    time grows with the blocks) converted to a model_dir, and some of the novel to tune on."""
    root = tmp_path_factory.mktemp("imported_llama")
    write_llama_folder(str(root / "hf"), config=CONFIG, vocab_size=400)
    convert_checkpoint(str(root / "hf"), str(root / "base"), **QUIET)
    text = root / "novel.txt"
    text.write_text("\n\n".join(corpus_paragraphs()[:40]), encoding="utf-8")
    return root


def _fine_tune(converted, run, extra=""):
    config = load_experiment(None, f"{TRAIN},model.init_checkpoint={converted / 'base'},"
                                   f"data.input_path={converted / 'novel.txt'}{extra}")
    trainer = run_experiment(config, str(run), **QUIET)
    assert trainer.status == "completed"
    return config, trainer


def _weights(model):
    """The model's weights (LoRA factors too) by their paths below the model."""
    return {v.path.split("/", 1)[1]: np.array(v) for v in model.weights}


def _loss(config, model, batch):
    features, labels, weights = batch
    loss_sum, weight_sum = get_task(config).loss_sums(model, labels, model(features), weights)
    return float(loss_sum / weight_sum)


def _check_served(trainer, export_base, name):
    """REST and gRPC answer `generate` (greedy) as the loaded export does, and that as the
    fine-tuned model's own `generate`."""
    served = ServedModels({name: str(export_base)})
    loaded = served.models[name][1]
    request = dict(prompts=np.array(PROMPTS, object), max_new_tokens=6, temperature=0.0, top_k=0,
                   top_p=1.0, seed=0)
    expected = loaded.signatures["generate"](
        **{k: tf.constant(v) for k, v in typed_inputs("generate", request).items()})
    texts = [t.decode("utf-8") for t in expected["text"].numpy()]
    assert texts == generate(trainer.model, PROMPTS, max_new_tokens=6,
                             tokenizer=trainer.tokenizer, jit_compile=False)
    assert all(expected["num_tokens"].numpy() > 0)  # something to compare
    rest, grpc_server = RestServer(served), GrpcServer(served)
    client = ServingClient("127.0.0.1", rest.port, grpc_server.port, name)
    try:
        for protocol in ("rest", "grpc"):
            answer = client.predict("generate", request, protocol)
            assert sorted(answer) == sorted(expected), protocol
            assert [t if isinstance(t, bytes) else t.encode() for t in answer["text"]] \
                == expected["text"].numpy().tolist(), protocol
            for key in ("num_tokens", "prompt_truncated"):
                assert np.asarray(answer[key]).tolist() == expected[key].numpy().tolist()
    finally:
        client.close()
        grpc_server.close()
        rest.close()


def test_full_fine_tuning_moves_every_weight_and_serves(converted, tmp_path):
    config, trainer = _fine_tune(converted, tmp_path / "run")
    base, _ = load_model_dir(str(converted / "base"))
    assert base.backbone.num_key_value_heads == CONFIG["num_key_value_heads"]
    before, after = _weights(base), _weights(trainer.model)
    assert sorted(before) == sorted(after)
    unmoved = [name for name in before if np.array_equal(before[name], after[name])]
    assert not unmoved
    batch = next(iter(make_dataset(config, trainer.tokenizer)))
    assert _loss(config, trainer.model, batch) < _loss(config, base, batch) - 0.1

    export = tmp_path / "export"
    export_model_dir(str(tmp_path / "run"), str(export))
    _check_served(trainer, export, "llama")


def test_lora_keeps_the_base_trains_the_factors_and_serves_merged(converted, tmp_path):
    _, trainer = _fine_tune(converted, tmp_path / "run", ",model.finetune=lora")
    base, _ = load_model_dir(str(converted / "base"))
    before = _weights(base)
    after = {k: v for k, v in _weights(trainer.model).items() if "/lora_" not in k}
    assert sorted(before) == sorted(after)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    assert len(lora_layers(trainer.model)) == CONFIG["num_hidden_layers"]  # qkv
    factors = [v for v in trainer.model.weights if "/lora_b" in v.path]
    assert factors and all(np.any(np.array(v)) for v in factors)

    export = tmp_path / "export"
    path = export_model_dir(str(tmp_path / "run"), str(export))
    saved = [name for name, _ in tf.train.list_variables(f"{path}/variables/variables")]
    assert saved and not [name for name in saved if "lora" in name]
    _check_served(trainer, export, "llama_lora")
