"""Experiments end to end: a config checked by its task, a run in a model_dir, an export.

The binaries are thin shells over these functions (as Model Garden's `train_lib`):

    load_experiment(files, overrides)        defaults + YAML + overrides, the architecture
                                             from model.init_checkpoint, checked by the task
    run_experiment(config, model_dir, mode)  tflm-train / tflm-eval: train, evaluate or both
    load_trained(model_dir)                  (model, tokenizer, config) of a model_dir
    export_saved_model(model, tokenizer, export_dir, ...)
                                             the task's signatures as a SavedModel

Example:
>>> config = load_experiment("configs/tiny_gpt.yaml", "trainer.train_steps=20")
>>> trainer = run_experiment(config, "runs/tiny_gpt", mode="train_and_eval")
>>> export_model_dir("runs/tiny_gpt", "runs/tiny_gpt_export")
"""

import json
import os

import numpy as np

from tflm import config as config_lib
from tflm.config import ConfigError
from tflm.export.exporter import DEFAULT_RELEASE, ServingOptions, write_saved_model
from tflm.export.quantize import quantize_model
from tflm.generation import generate
from tflm.models.lora import merge_lora
from tflm.models.pretrained import copy_pretrained_weights
from tflm.run_dir import RunDir
from tflm.tasks import (
    architecture_value,
    config_keys_of,
    get_task,
    load_model_dir,
    task_class,
    task_for_model,
)
from tflm.training.trainer import Trainer


def resolve_init_checkpoint(config, explicit=()):
    """Fills the architecture (and tokenizer) from `model.init_checkpoint`, a tflm model_dir.

    A key of `ARCHITECTURE_KEYS` that is in `explicit` (set by a file or an
    override) must agree with the checkpoint, else a `ConfigError` names it;
    the others take the checkpoint's values. `data.tokenizer` and
    `data.vocab_path`, unless set, become the checkpoint's tokenizer. A path
    that does not exist is left for the trainer to report (a run resuming
    from its own checkpoints does not need it).
    """
    path = config.model.init_checkpoint
    if not path or not os.path.exists(path):
        return
    run = RunDir(path)
    if not run.has_params():
        if run.is_huggingface_checkpoint():
            raise ConfigError(
                f"model.init_checkpoint={path!r} is a Hugging Face checkpoint: convert it first "
                f"(python tools/convert_checkpoint.py --input_dir={path} --output_dir=...) and "
                "point model.init_checkpoint at the output.")
        raise ConfigError(f"model.init_checkpoint={path!r} has no params.yaml: not a tflm "
                          "model_dir (a tflm-train run or a converted checkpoint).")
    try:
        source = load_experiment(run.params_file())
    except ConfigError as e:
        raise ConfigError(f"model.init_checkpoint: {e}") from None
    for key in config_lib.architecture_keys(config.model, source.model):
        theirs = architecture_value(source.model, key)
        if f"model.{key}" in explicit:
            mine = architecture_value(config.model, key)
            if mine != theirs:
                raise ConfigError(
                    f"model.{key}={mine!r}, but model.init_checkpoint={path!r} has {theirs!r}: "
                    "remove the key to take the checkpoint's value, or start from another "
                    "checkpoint.")
        else:
            setattr(config.model, key, theirs)
    if not {"data.tokenizer", "data.vocab_path"} & set(explicit):
        if run.has_tokenizer():
            config.data.tokenizer = run.tokenizer_kind()
            config.data.vocab_path = "" if config.data.tokenizer == "byte" else run.tokenizer_dir
        else:
            config.data.tokenizer = source.data.tokenizer
            config.data.vocab_path = source.data.vocab_path


def load_experiment(config_file=None, params_override=None):
    """Defaults, then the YAML file(s) in order, then the overrides; validated.

    `config_file` is one path or a list of paths; later files override earlier ones.
    An unknown key or a value of the wrong type is a `ConfigError` naming the key and
    suggesting the closest valid one; so is an unknown `model.task`. With
    `model.init_checkpoint`, the architecture keys that no file or override sets come
    from the checkpoint (see `resolve_init_checkpoint`).
    """
    config, explicit = config_lib.read_experiment(config_file, params_override,
                                                  extensions_of=config_keys_of)
    task = task_class(config.model.task)
    resolve_init_checkpoint(config, explicit)
    config_lib.validate(config)
    task.validate(config)
    return config


def load_model_dir_config(model_dir, config_files=(), params_override=""):
    """The params.yaml of a tflm model_dir, with more files and overrides on top."""
    return load_experiment([RunDir(model_dir).params_file(), *(config_files or [])],
                           params_override)


def run_experiment(config, model_dir, mode="train", print_fn=print, strategy=None):
    """Runs `mode` ("train", "eval" or "train_and_eval") of `config` in `model_dir`; returns
    the `Trainer`.

    `trainer.status` is "completed", "preempted", "stopped" or "evaluated";
    `trainer.eval_results` holds the last evaluation, and `trainer.sample` the text written
    for `trainer.sample_prompt` after it (None without one). Training writes the resolved
    config to params.yaml and the tokenizer to tokenizer/ (evaluation leaves the run's files
    alone).
    """
    # Inputs, vocabulary and manifest are checked while the trainer builds its
    # dataset, before anything is written.
    trainer = Trainer(get_task(config), model_dir, strategy=strategy, print_fn=print_fn,
                      for_training=mode != "eval")
    run = RunDir(model_dir)
    if trainer.worker.is_chief and mode != "eval":
        run.write_config(config)
        run.save_tokenizer(trainer.tokenizer)
    trainer.eval_results = trainer.sample = None
    if mode == "eval":
        restored = trainer.checkpoints.restore() or _restore_saved_model(trainer, run)
        if restored is None:
            raise ConfigError(f"--mode=eval: no checkpoint in {run.checkpoint_dir} "
                              "and no model.keras.")
        print_fn(f"tflm-eval: {restored}")
        trainer.eval_results = trainer.evaluate()
        trainer.sample = _print_sample(trainer, "tflm-eval")
        trainer.status = "evaluated"
        return trainer
    trainable = sum(int(np.prod(v.shape)) for v in trainer.model.trainable_variables)
    print_fn(
        f"tflm-train: {config.model.task}, {trainer.model.count_params():,} parameters "
        f"({trainable:,} trained), "
        f"{config.data.tokenizer} tokens from {config.data.input_path or 'the embedded corpus'}, "
        f"batch {config.data.global_batch_size} x {config.data.sequence_length}"
        f" x {config.trainer.gradient_accumulation_steps} micro-batches, "
        f"{trainer.strategy.num_replicas_in_sync} replica(s), {config.runtime.mixed_precision}"
    )
    trainer.status = trainer.train()
    evaluate = trainer.status == "completed" and mode == "train_and_eval"
    if evaluate:
        trainer.eval_results = trainer.evaluate()
    summary = dict(trainer.history[-1] if trainer.history else {}, status=trainer.status,
                   checkpoint=trainer.checkpoints.latest(), consumed=trainer.consumed(),
                   read=trainer.stats.as_dict())
    print_fn("tflm-train: " + json.dumps(summary))
    if evaluate:  # last: what the run's model writes ends its output
        trainer.sample = _print_sample(trainer, "tflm-train")
    return trainer


def _print_sample(trainer, program):
    """Prints what the model writes for `trainer.sample_prompt` (greedy `generate`, as
    `tflm-generate` does, without XLA: one short call is not worth compiling); returns it."""
    config = trainer.config
    prompt = config.trainer.sample_prompt
    if not prompt or not trainer.task.generates_text or not trainer.worker.is_chief:
        return None
    text = generate(trainer.model, [prompt], max_new_tokens=config.trainer.sample_tokens,
                    tokenizer=trainer.tokenizer, jit_compile=False,
                    source_length=config.data.sequence_length)[0]
    # JSON strings: one line, whatever newlines the text holds, and its ends visible.
    trainer.print_fn(f"{program}: sample: {json.dumps(prompt, ensure_ascii=False)} -> "
                     f"{json.dumps(text, ensure_ascii=False)}")
    return text


def _restore_saved_model(trainer, run):
    """Loads model.keras (a converted checkpoint has no checkpoints/) into the trainer's
    model; returns its path, or None if there is none."""
    if not run.has_saved_model():
        return None
    copy_pretrained_weights(run.load_saved_model(), trainer.model, where=run.model_path)
    return run.model_path


def load_trained(model_dir, lora_path=None):
    """`(model, tokenizer, config)` of a tflm model_dir (a `tflm-train` run or a converted
    checkpoint): params.yaml, the latest checkpoint or model.keras, and its tokenizer.

    `lora_path`: a LoRA run's factors file to load onto the base its params name (see
    `tflm.tasks.pretrained.load_model_dir`)."""
    model, config = load_model_dir(model_dir, lora_path=lora_path)
    return model, RunDir(model_dir).load_tokenizer(config), config


def serving_module(model, tokenizer, **options):
    """The serving `tf.Module` of `model`'s task (`options`: fields of `ServingOptions`)."""
    return task_for_model(model).serving_module(model, tokenizer, ServingOptions(**options))


def export_saved_model(model, tokenizer, export_dir, version=None, label_names=None, num_beams=4,
                       serving_release=DEFAULT_RELEASE, warmup=True, text_pair=False,
                       sequence_length=None, jit_compile=False, quantize=None):
    """Writes `export_dir/<version>/` with the signatures of `model`'s task; returns its path.

    A LoRA model is served merged (`merge_lora`: plain kernels, no LoRA ops); `model`
    itself is not changed.

    `label_names` default to the classifier's own; `text_pair` and
    `sequence_length` shape the `classify` signature as the model was trained;
    `jit_compile` makes a causal LM's (or an encoder-decoder's) decoding loops XLA
    programs (see `CausalLMServing`). `quantize` "int8" or "float16" stores the
    dense and embedding kernels so (weight-only; `tflm.export.quantize`), in a copy
    of `model`: `model` itself keeps its float weights.

    Raises:
        ExportError: the version exists already.
        UnsupportedOpError: the graph has an op the target TF Serving lacks.
        TflmError: `model` is not the model of a tflm task.
        QuantizeError: an unknown `quantize`, or a model not computing in float32.
    """
    model = merge_lora(model)  # first: quantization sees the plain, merged kernels
    model = quantize_model(model, quantize)
    module = serving_module(model, tokenizer, label_names=label_names, text_pair=text_pair,
                            sequence_length=sequence_length, num_beams=num_beams,
                            jit_compile=jit_compile)
    warmup_requests = task_for_model(model).warmup_inputs(module) if warmup else ()
    return write_saved_model(module, export_dir, warmup_requests=warmup_requests,
                             version=version, serving_release=serving_release)


def export_model_dir(model_dir, export_dir, version=None, label_names=None, num_beams=4,
                     serving_release=DEFAULT_RELEASE, jit_compile=False, lora_path=None,
                     quantize=None):
    """`tflm-export`: the model of a model_dir as `export_dir/<version>/`, shaped as it was
    trained (a classifier's text pairs and row length); returns its path.

    `lora_path`: export the base of a LoRA run (its `model.init_checkpoint`) with this
    factors file instead of the run's own weights."""
    model, tokenizer, config = load_trained(model_dir, lora_path=lora_path)
    return export_saved_model(
        model, tokenizer, export_dir, version=version, label_names=label_names,
        num_beams=num_beams, serving_release=serving_release,
        text_pair=bool(config.data.text_pair_field),
        sequence_length=config.data.sequence_length, jit_compile=jit_compile, quantize=quantize)
