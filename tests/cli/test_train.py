import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

from tflm.data import ByteTokenizer
from tflm.experiment import load_trained, run_experiment
from tflm.generation import generate
from tflm.config import ConfigError
from tflm.experiment import load_experiment

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SMALL = (
    "trainer.train_steps=6,trainer.log_every=3,data.global_batch_size=4,"
    "data.sequence_length=32,data.shuffle_buffer_size=64"
)


def _run_in_process(config_name, model_dir):
    config = load_experiment(str(REPO_ROOT / "configs" / config_name), SMALL)
    lines = []
    trainer = run_experiment(config, str(model_dir), print_fn=lines.append)
    assert trainer.status == "completed"
    return config, trainer.model, trainer.history, lines


def _check_run(config, model_dir, records, lines):
    assert (model_dir / "params.yaml").is_file()
    assert (model_dir / "model.keras").is_file()
    assert load_experiment(str(model_dir / "params.yaml")) == config
    assert [r["step"] for r in records] == [3, 6]
    for record in records:
        assert record["tokens_per_second"] > 0
        assert record["learning_rate"] > 0 and record["grad_norm"] > 0
        assert math.isfinite(record["loss"]) and record["loss"] > 0
        assert record["tflops"] > 0
    assert any("tokens/s" in line and "loss" in line for line in lines)
    assert "(includes compilation)" in next(line for line in lines if line.startswith("step 3"))


def test_train_tiny_gpt(tmp_path):
    model_dir = tmp_path / "gpt"
    config, model, records, lines = _run_in_process("tiny_gpt.yaml", model_dir)
    _check_run(config, model_dir, records, lines)
    # Byte-level LM from scratch: the loss starts near ln(262) and only goes down from there.
    assert records[0]["loss"] < math.log(262) + 1.0
    assert str(model_dir) in lines[-1]
    assert model.count_params() > 0


def test_train_tiny_bert(tmp_path):
    model_dir = tmp_path / "bert"
    config, _, records, lines = _run_in_process("tiny_bert.yaml", model_dir)
    assert config.model.task == "masked_lm"
    _check_run(config, model_dir, records, lines)
    assert lines[0].startswith("tflm-train: masked_lm")


def test_train_rejects_a_vocabulary_larger_than_the_model(tmp_path):
    config = load_experiment(None, "model.vocabulary_size=100")
    with pytest.raises(ConfigError, match="model.vocabulary_size=100"):
        run_experiment(config, str(tmp_path / "b"), print_fn=lambda line: None)


def _cli(*args):
    # TF_CPP_MIN_LOG_LEVEL as a user has it (unset): the binaries quiet TensorFlow themselves.
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "tflm.cli.train", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# TensorFlow's native log lines that a binary's output must not carry: the CPU and oneDNN
# banners, the failed cuInit of a machine without a GPU, the end of an input iterator, XLA's.
TENSORFLOW_NOISE = ("cpu_feature_guard", "This TensorFlow binary is optimized", "oneDNN",
                    "cuInit", "Could not find cuda drivers", "OUT_OF_RANGE", "End of sequence",
                    "absl::InitializeLog", "Compiled cluster using XLA")


def test_console_entry_trains(tmp_path):
    model_dir = tmp_path / "cli"
    result = _cli(
        "--config_file=configs/tiny_gpt.yaml",
        f"--model_dir={model_dir}",
        "--mode=train_and_eval",
        "--params_override=trainer.train_steps=4,trainer.log_every=2,data.global_batch_size=2,"
        "data.sequence_length=16,trainer.learning_rate=1e-3,trainer.eval_steps=2,"
        "trainer.sample_tokens=8",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "tokens/s" in result.stdout and "loss" in result.stdout
    assert [noise for noise in TENSORFLOW_NOISE if noise in output] == [], output
    # The job ends with the trained model's continuation of the config's prompt.
    assert result.stdout.splitlines()[-1].startswith(
        'tflm-train: sample: "It is a truth universally acknowledged" -> "')
    assert (model_dir / "params.yaml").is_file() and (model_dir / "model.keras").is_file()
    assert load_experiment(str(model_dir / "params.yaml")).trainer.learning_rate == 1e-3


def test_console_entry_bad_override_fails_naming_key(tmp_path):
    result = _cli(
        "--config_file=configs/tiny_gpt.yaml",
        f"--model_dir={tmp_path / 'bad'}",
        "--params_override=trainer.train_step=4",
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "trainer.train_step" in output and "train_steps" in output
    assert not (tmp_path / "bad").exists()


def test_modes_train_and_eval_then_eval(tmp_path):
    model_dir = tmp_path / "modes"
    config = load_experiment(str(REPO_ROOT / "configs" / "tiny_gpt.yaml"),
                             SMALL + ",data.eval_every_nth_document=4,trainer.eval_steps=3")
    lines = []
    trained = run_experiment(config, str(model_dir), mode="train_and_eval", print_fn=lines.append)
    results = trained.eval_results
    assert results["step"] == 6 and math.isclose(results["perplexity"], math.exp(results["loss"]))
    assert 0 <= results["accuracy"] <= 1 and results["tokens"] == 3 * 4 * 32
    assert (model_dir / "eval_results.json").is_file()
    assert any(path.name.startswith("events") for path in (model_dir / "eval").iterdir())
    # Last, the sample: greedy `generate` of the config's prompt by the trained checkpoint.
    prompt = "It is a truth universally acknowledged"
    assert config.trainer.sample_prompt == prompt and config.trainer.sample_tokens == 48
    model, tokenizer, _ = load_trained(str(model_dir))
    expected = generate(model, [prompt], max_new_tokens=48, tokenizer=tokenizer,
                        jit_compile=False)[0]
    assert expected
    sample = f"sample: {json.dumps(prompt)} -> {json.dumps(expected, ensure_ascii=False)}"
    assert lines[-1] == f"tflm-train: {sample}"
    assert trained.sample == expected
    evaluated = run_experiment(config, str(model_dir), mode="eval", print_fn=lines.append)
    assert evaluated.status == "evaluated"
    assert math.isclose(evaluated.eval_results["loss"], results["loss"], rel_tol=1e-5)
    assert lines[-1] == f"tflm-eval: {sample}"


def test_eval_without_checkpoint_is_an_error(tmp_path):
    config = load_experiment(str(REPO_ROOT / "configs" / "tiny_gpt.yaml"),
                             SMALL + ",data.eval_every_nth_document=4")
    with pytest.raises(ConfigError, match="no checkpoint"):
        run_experiment(config, str(tmp_path / "empty"), mode="eval", print_fn=lambda line: None)


def test_sigterm_saves_a_checkpoint_and_exits_143(tmp_path):
    import signal

    model_dir = tmp_path / "preempted"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    process = subprocess.Popen(
        [sys.executable, "-m", "tflm.cli.train", "--config_file=configs/tiny_gpt.yaml",
         f"--model_dir={model_dir}",
         "--params_override=trainer.train_steps=100000,trainer.log_every=5,"
         "trainer.steps_per_loop=5,trainer.checkpoint_every=100000,data.global_batch_size=2,"
         "data.sequence_length=16"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        lines = []
        for line in process.stdout:  # wait until training runs
            lines.append(line)
            if line.startswith("step 10/"):
                break
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 143, "".join(lines) + output
    assert "SIGTERM: saved" in output
    checkpoints = sorted((model_dir / "checkpoints").glob("ckpt-*.index"))
    assert len(checkpoints) == 1
    saved_step = int(checkpoints[0].name.split("-")[1].split(".")[0])
    assert 10 <= saved_step < 100000
    assert (model_dir / "data" / "worker-0" / f"ckpt-{saved_step}.index").is_file()


def test_train_llama_tiny_and_generate(tmp_path):
    """The Llama-style decoder (GQA, rotary, RMS norm, SwiGLU, untied, no biases) trains by
    the causal LM task as it is, and its model_dir generates text."""
    model_dir = tmp_path / "llama"
    config, model, records, lines = _run_in_process("llama_tiny.yaml", model_dir)
    _check_run(config, model_dir, records, lines)
    backbone = model.backbone
    assert (backbone.num_heads, backbone.num_key_value_heads, backbone.tie_embeddings) == (4, 2,
                                                                                          False)
    assert backbone.init_cache(1, 8).shape[-2] == 2  # the cache holds the 2 key/value heads
    assert not [w.path for w in model.weights if w.path.endswith("bias")]
    texts = generate(model, ["It is a truth", "Mr."], max_new_tokens=5, tokenizer=ByteTokenizer())
    assert len(texts) == 2 and all(isinstance(text, str) for text in texts)
