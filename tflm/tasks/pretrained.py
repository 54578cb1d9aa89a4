"""Pretrained models as tflm model_dirs: converting Hugging Face checkpoints and keras-hub
presets, loading a model_dir (or a Hugging Face folder, or a keras-hub preset) as a model
of its task, and initializing a new model (a classifier, say) from one. The files are
`tflm.run_dir`'s.

Example:
>>> convert_checkpoint("hf/bert-base-uncased", "runs/bert")   # or tools/convert_checkpoint.py
>>> model, tokenizer, config = load_pretrained("runs/bert")
>>> classifier = SequenceClassifier(build_backbone(config.model), num_classes=2)
>>> init_from_pretrained(classifier, "runs/bert")             # backbone weights copied
"""

import json
import os

import tensorflow as tf

from tflm import config as config_lib
from tflm.models.huggingface import CheckpointError, load_huggingface
from tflm.models.huggingface_export import export_huggingface
from tflm.models.keras_hub_preset import is_keras_hub_preset, load_keras_hub
from tflm.models.lora import load_lora, merge_lora
from tflm.models.pretrained import copy_pretrained_weights, model_config_of
from tflm.run_dir import RunDir, write_new_run_dir
from tflm.tasks.registry import build_task, config_keys_of, task_class, task_for_model
from tflm.version import __version__

# The task a sentence-transformers folder is converted into.
SENTENCE_EMBEDDING = "sentence_embedding"


def experiment_of_model(model, tokenizer):
    """The `ExperimentConfig` that rebuilds `model` (a tflm task model) with `tokenizer`."""
    task = task_for_model(model)
    experiment = config_lib.experiment_config_class(config_keys_of(task.name))()
    experiment.model = model_config_of(model.backbone, task.name, experiment.model)
    task.describe_model(model, experiment)
    experiment.data.tokenizer = tokenizer.kind
    experiment.data.sequence_length = min(experiment.data.sequence_length,
                                          experiment.model.max_sequence_length)
    return experiment


def save_pretrained(model, tokenizer, output_dir, extra=None):
    """Writes `model` (a tflm task model) and `tokenizer` as a model_dir; returns its params.

    The folder is written under a temporary name and renamed when complete;
    an existing `output_dir` is never overwritten.
    """
    experiment = experiment_of_model(model, tokenizer)
    experiment.data.vocab_path = RunDir(output_dir).tokenizer_dir

    def write(run):
        run.save_tokenizer(tokenizer)
        run.save_model(model)
        if extra is not None:
            run.write_conversion(extra)
        run.write_config(experiment)
        return experiment

    return write_new_run_dir(output_dir, write)


def sentence_transformers_modules(directory):
    """`{"pooling": mode, "normalize": bool}` of a sentence-transformers folder (its
    modules.json and `1_Pooling/config.json`: "mean", "cls", "max", ...), else None.

    The embedding such a folder defines is its pooling of the transformer's outputs, not
    BERT's pooler; `convert_checkpoint` records it for the sentence_embedding task.
    """
    modules_file = os.path.join(directory, "modules.json")
    if not os.path.exists(modules_file):
        return None
    with open(modules_file) as f:
        modules = json.load(f)
    found = {"pooling": None, "normalize": False}
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind == "Pooling":
            with open(os.path.join(directory, module.get("path", ""), "config.json")) as f:
                pooling = json.load(f)
            modes = [key[len("pooling_mode_"):] for key, on in pooling.items()
                     if key.startswith("pooling_mode_") and on is True]
            found["pooling"] = "+".join(sorted(m.replace("_tokens", "").replace("_token", "")
                                               for m in modes))
        elif kind == "Normalize":
            found["normalize"] = True
    return found if found["pooling"] else None


def load_checkpoint_folder(directory, dtype=None):
    """The `ImportedCheckpoint` of a keras-hub preset (`load_keras_hub`) or, else, of a
    Hugging Face checkpoint folder (`load_huggingface`): both have a config.json."""
    if is_keras_hub_preset(directory):
        return load_keras_hub(directory, dtype=dtype)
    return load_huggingface(directory, dtype=dtype)


def convert_checkpoint(input_dir, output_dir, dtype=None, print_fn=print):
    """Converts a Hugging Face checkpoint folder (BERT, GPT-2, BART, T5, Llama, Mistral, Qwen2)
    or a keras-hub preset folder (GPT-2, BERT, Llama, Mistral) into a tflm model_dir.

    Returns the `ImportedCheckpoint` (see `tflm.models.huggingface.load_huggingface` and
    `tflm.models.keras_hub_preset.load_keras_hub`).
    """
    imported = load_checkpoint_folder(input_dir, dtype=dtype)
    extra = {"source": os.path.abspath(input_dir), "kind": imported.kind,
             "head_loaded": imported.head_loaded, "unused_tensors": imported.unused_tensors,
             "tflm_version": __version__}
    model = imported.model
    modules = sentence_transformers_modules(input_dir)
    if modules:
        extra["sentence_transformers"] = modules
        # The folder defines a sentence embedding (its pooling of the encoder's outputs):
        # convert it as a sentence_embedding model, whose `encode` serves that embedding.
        embedder = task_class(SENTENCE_EMBEDDING).from_sentence_transformers(model.backbone,
                                                                             modules)
        model = embedder or model
    save_pretrained(model, imported.tokenizer, output_dir, extra=extra)
    backbone = imported.model.backbone
    print_fn(f"convert_checkpoint: {input_dir} ({imported.kind}, {backbone.num_layers} layers, "
             f"width {backbone.hidden_dim}, {imported.model.count_params():,} parameters, "
             f"{imported.tokenizer.kind} vocabulary of {imported.tokenizer.vocabulary_size}) "
             f"-> {output_dir}")
    if model is not imported.model:
        print_fn(f"convert_checkpoint: a sentence-transformers model ({modules['pooling']} "
                 f"pooling): converted as {SENTENCE_EMBEDDING}; `encode` serves its embedding.")
    elif not imported.head_loaded:
        print_fn("convert_checkpoint: the checkpoint has no masked-LM head; the MaskedLM head "
                 "is freshly initialized (fine for fine-tuning and `encode`, not `fill_mask`).")
    if imported.unused_tensors:
        shown = ", ".join(imported.unused_tensors[:5])
        more = len(imported.unused_tensors) - 5
        print_fn(f"convert_checkpoint: {len(imported.unused_tensors)} tensors are not part of "
                 f"the model and were left out: {shown}{f' and {more} more' if more > 0 else ''}")
    return imported


def export_model_to_huggingface(model, tokenizer, output_dir):
    """Writes `model` (a tflm task model) and `tokenizer` as a Hugging Face checkpoint folder,
    as the head its task declares (`Task.huggingface_head`); returns the architecture written
    (see `tflm.models.huggingface_export.export_huggingface`)."""
    return export_huggingface(model, tokenizer, output_dir,
                              head=task_for_model(model).huggingface_head)


def export_to_huggingface(model_dir, output_dir, print_fn=print):
    """Writes a tflm model_dir (BERT-, GPT-2- or Llama-, Mistral- or Qwen2-shaped) as a Hugging
    Face checkpoint folder, the inverse of `convert_checkpoint` (LoRA factors merged first);
    returns the architecture written (see `export_model_to_huggingface`)."""
    model, config = load_model_dir(model_dir)
    tokenizer = RunDir(model_dir).load_tokenizer(config)
    architecture = export_model_to_huggingface(merge_lora(model), tokenizer, output_dir)
    print_fn(f"convert_checkpoint: {model_dir} ({config.model.task}, "
             f"{model.backbone.num_layers} layers, width {model.backbone.hidden_dim}) -> "
             f"{output_dir} (Hugging Face {architecture.kind})")
    return architecture


def _model_dir_config(run):
    """The params.yaml of a model_dir (as training resolved it), checked by its task."""
    config = config_lib.load_experiment(run.params_file(), extensions_of=config_keys_of)
    task_class(config.model.task).validate(config)
    return config


def load_model_dir(model_dir, dtype=None, lora_path=None):
    """`(model, config)` of a tflm model_dir: the latest checkpoint, else model.keras, else
    (a LoRA run) its base and lora.safetensors.

    `lora_path`: a LoRA factors file to load instead, onto the base that the run's
    `model.init_checkpoint` names (another variant of the same run's config).
    """
    run = RunDir(model_dir)
    config = _model_dir_config(run)
    latest = run.latest_checkpoint()
    if lora_path is None and latest is None and not run.has_saved_model() \
            and config.model.finetune == "lora" and tf.io.gfile.exists(run.lora_path):
        lora_path = run.lora_path
    if lora_path is not None:
        if config.model.finetune != "lora" or not config.model.init_checkpoint:
            raise CheckpointError(f"{run.params_path}: a LoRA factors file loads onto a run "
                                  "with model.finetune=lora and the base as "
                                  "model.init_checkpoint.")
        model = build_task(config.model, dtype=dtype, label_names=config.data.label_names or None)
        init_from_pretrained(model, config.model.init_checkpoint)
        load_lora(model, lora_path)
    elif latest is not None:
        model = build_task(config.model, dtype=dtype, label_names=config.data.label_names or None)
        try:
            tf.train.Checkpoint(model=model).read(latest).expect_partial() \
                .assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            raise CheckpointError(f"{latest}: does not fit the model of {run.params_path}: "
                                  f"{str(e).strip().splitlines()[0]}") from None
    elif run.has_saved_model():
        model = run.load_saved_model()
    else:
        raise CheckpointError(f"{model_dir}: neither checkpoints/ nor {run.model_path}.")
    return model, config


def load_pretrained(path, dtype=None):
    """`(model, tokenizer, config)` from a tflm model_dir, a Hugging Face checkpoint folder or
    a keras-hub preset."""
    run = RunDir(path)
    if run.is_huggingface_checkpoint():
        imported = load_checkpoint_folder(path, dtype=dtype)
        return imported.model, imported.tokenizer, experiment_of_model(imported.model,
                                                                       imported.tokenizer)
    model, config = load_model_dir(path, dtype=dtype)
    return model, run.load_tokenizer(config), config


def load_pretrained_model(path):
    """The model alone of `load_pretrained` (no tokenizer is built)."""
    if RunDir(path).is_huggingface_checkpoint():
        return load_checkpoint_folder(path).model
    return load_model_dir(path)[0]


def init_from_pretrained(model, path, print_fn=None, source=None):
    """Initializes `model` from the pretrained model at `path` (model_dir, Hugging Face
    folder or keras-hub preset); returns the paths of the variables left at their initial values.

    `source`: the model `load_pretrained_model(path)` returns, when already loaded (the
    trainer loads it outside its strategy's scope).
    """
    source = load_pretrained_model(path) if source is None else source
    fresh = copy_pretrained_weights(source, model, where=f"model.init_checkpoint={path!r}")
    if print_fn is not None:
        print_fn(f"tflm-train: initialized from {path}: {len(model.weights) - len(fresh)} "
                 f"tensors copied, {len(fresh)} new")
    return fresh
