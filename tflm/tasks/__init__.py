"""Tasks: one module per task, registered by name (`model.task`).

    causal_lm                    next-token prediction (GPT)
    masked_lm                    masked-token prediction, next-sentence prediction (BERT)
    classification               a label per text or text pair, class weights
    multi_label_classification   any labels per text, thresholds per label
    regression                   a number per text
    token_classification         BIO tags per character (NER), entity-level F1
    sentence_embedding           contrastive embeddings, retrieval recall
    seq2seq                      a target text from a source text (encoder-decoder)
    denoising                    encoder-decoder pretraining: span corruption, text infilling

A task owns its config checks, model, input pipeline, loss, evaluation report and serving
signatures (`tflm.tasks.base.Task`); the trainer, `tflm-eval` and `tflm-export` ask the
task of the config (`get_task`) and never compare task names. A new task is a new module
here with a `@register_task` class, imported below.

Example:
>>> config = tflm.experiment.load_experiment("configs/tiny_gpt.yaml")
>>> dataset = make_dataset(config)            # the task's batches
>>> model = get_task(config).build_model()
"""

from tflm.tasks import (  # noqa: F401 (importing a task module registers it)
    causal_lm,
    classification,
    denoising,
    masked_lm,
    multi_label_classification,
    regression,
    sentence_embedding,
    seq2seq,
    token_classification,
)
from tflm.tasks.base import Task
from tflm.tasks.pretrained import (
    convert_checkpoint,
    export_model_to_huggingface,
    export_to_huggingface,
    init_from_pretrained,
    load_model_dir,
    load_pretrained,
    load_pretrained_model,
    save_pretrained,
)
from tflm.tasks.registry import (
    architecture_value,
    build_task,
    config_keys_of,
    get_task,
    register_task,
    task_class,
    task_for_model,
    task_names,
)


def make_dataset(config, tokenizer=None, input_context=None, stats=None, training=True,
                 split="train"):
    """The batches of `config`'s task for one input pipeline (see `Task.dataset`).

    Example:
    >>> dataset = strategy.distribute_datasets_from_function(
    ...     lambda context: make_dataset(config, input_context=context))
    """
    return get_task(config).dataset(tokenizer, input_context, stats, training, split)


__all__ = [
    "Task", "architecture_value", "build_task", "config_keys_of", "convert_checkpoint", "get_task",
    "init_from_pretrained", "load_model_dir", "load_pretrained",
    "load_pretrained_model", "make_dataset", "register_task", "save_pretrained", "task_class",
    "task_for_model", "task_names",
]
