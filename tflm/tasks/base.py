"""`Task`: what one kind of training job is, in one place (as Model Garden's `base_task`).

A task owns, for its name in `model.task`:

- its own config keys (`config_keys`), their checks (`validate`) and its attention
  direction (`causal`);
- its model (`create_model`, on the backbone of `create_backbone`), started from
  `model.init_checkpoint` and with the parts `model.finetune` names frozen (`build_model`);
- its input pipeline from the `data` section (`batches`);
- its loss (`loss_sums`: the model's own definition, which `model.fit` uses too), and
  with `trainer.distill_from` a teacher (`load_teacher`) and the soft loss against its
  outputs (`distill_sums`);
- its evaluation (`eval_sums`, added over replicas and batches, and `eval_report`; a
  generating task adds metrics of decoded text in `generation_report`);
- its serving signatures (`serving_module`) and their warm-up requests (`warmup_inputs`).

The trainer, `tflm-eval` and `tflm-export` call these and nothing task-specific. A new
task is one module of `tflm/tasks/` with a `@register_task` class.

Example:
>>> task = get_task(config)                  # config.model.task == "causal_lm"
>>> model = task.build_model()
>>> dataset = task.dataset(split="train")
"""

import abc
import math

import tensorflow as tf

from tflm.config import ConfigError
from tflm.data.tokenizers import make_tokenizer
from tflm.models.backbone import set_gradient_checkpointing
from tflm.models.factory import build_backbone
from tflm.models.finetuning import apply_finetuning
from tflm.models.losses import distillation_sums, weighted_correct
from tflm.models.task import has_vocabulary_head
from tflm.run_dir import RunDir
from tflm.tasks.pretrained import init_from_pretrained, load_pretrained, load_pretrained_model
from tflm.tasks.registry import architecture_value, build_task


class Task(abc.ABC):
    """Base class of the tasks; a subclass sets `name` and `model_class` and fills in
    `batches`, `serving_module` and `warmup_inputs`.

    Args:
        config: the `ExperimentConfig` of the run.
    """

    name = ""
    model_class = None
    causal = False  # the attention direction when `model.causal` is unset
    generates_text = False  # whether `tflm.generation.generate` writes text with its model
    # Whether `loss_sums` communicates across replicas (e.g. gathers in-batch negatives);
    # the trainer then runs the forward pass directly in the replica function.
    cross_replica_loss = False
    # Whether `trainer.distill_from` applies: the outputs are the logits of distributions
    # (over tokens, classes or tags) that a teacher's can be compared with.
    distillable = True
    # The Hugging Face head its model exports as (`huggingface_export.CAUSAL_LM_HEAD`, ...);
    # None: the model does not export to Hugging Face.
    huggingface_head = None
    # The task's own config keys: {section: dataclass of keys with defaults}, e.g.
    # {"data": TokenClassificationData}; they join that section for this task only.
    config_keys = {}
    # The share of a training sequence's positions the vocabulary projection runs on (the
    # FLOPs of MFU): 1 for a language model, 0 for a task with a small head of its own.
    projected_share = 0.0

    def __init__(self, config):
        self.config = config

    # -- Config. ---------------------------------------------------------------------------
    @classmethod
    def validate(cls, config):
        """Checks the keys this task reads; a `ConfigError` naming the key."""

    # -- Model. ----------------------------------------------------------------------------
    @classmethod
    def create_backbone(cls, model_config, dtype=None):
        """The backbone of the task's model: a `TransformerBackbone` in the task's attention
        direction unless `model.causal` says otherwise."""
        return build_backbone(model_config, dtype=dtype,
                              causal=architecture_value(model_config, "causal"))

    @classmethod
    def create_model(cls, model_config, backbone, label_names=None):
        """The task's compiled model on `backbone`."""
        del model_config, label_names
        return cls.model_class(backbone)

    @classmethod
    def describe_model(cls, model, experiment):
        """Writes what `model` has beyond its backbone into `experiment` (saved model_dirs)."""

    def label_names(self):
        """The class names of the task's outputs, if it has classes (else None)."""
        return None

    def load_init_checkpoint(self):
        """The model of `model.init_checkpoint` (a model_dir or Hugging Face folder), or None.

        Loaded outside any strategy scope; `build_model(source=...)` copies it.
        """
        path = self.config.model.init_checkpoint
        if not path:
            return None
        if not tf.io.gfile.isdir(path):
            raise ConfigError(f"model.init_checkpoint={path!r} does not exist.")
        return load_pretrained_model(path)

    def build_model(self, dtype=None, source=None, print_fn=None):
        """The task's model: from `source`'s weights (see `load_init_checkpoint`) if given,
        with `model.finetune` applied and `trainer.gradient_checkpointing` set."""
        model_config = self.config.model
        model = build_task(model_config, dtype=dtype, label_names=self.label_names())
        if source is not None:
            init_from_pretrained(model, model_config.init_checkpoint, print_fn, source=source)
        if model_config.loss_chunk_size:
            if not has_vocabulary_head(model):
                raise ConfigError(f"model.loss_chunk_size={model_config.loss_chunk_size}: the "
                                  f"{self.name} task's model has no vocabulary head to chunk; "
                                  "set it to 0.")
            model.loss_chunk_size = model_config.loss_chunk_size
        apply_finetuning(model, model_config.finetune, model_config.freeze_bottom_layers)
        set_gradient_checkpointing(model, self.config.trainer.gradient_checkpointing)
        return model

    # -- Data. -----------------------------------------------------------------------------
    def make_tokenizer(self):
        return make_tokenizer(self.config.data.tokenizer, self.config.data.vocab_path)

    def dataset(self, tokenizer=None, input_context=None, stats=None, training=True,
                split="train"):
        """The task's batches for one input pipeline.

        Args:
            tokenizer: default: built from `data.tokenizer` and `data.vocab_path`.
            input_context: a `tf.distribute.InputContext`, as passed by
                `strategy.distribute_datasets_from_function`; the global batch is
                split across replicas and the input across pipelines (with
                `data.sharding=files`; with `global_batch` every pipeline gets the
                whole global batches).
            stats: an `InputStats` counting skips and repairs.
            training: endless, shuffled, static-shape batches if True; one
                ordered pass (final batch kept) if False.
            split: `"train"` or `"eval"`. Evaluation reads `data.eval_input_path`,
                or else the documents (about 1 in `data.eval_every_nth_document`,
                chosen by a hash of each) or every n-th record of labelled data, which
                training then never reads.

        Returns:
            A `tf.data.Dataset` of `(features, labels, sample_weight)`.
        """
        if split not in ("train", "eval"):
            raise ValueError(f"split={split!r}; expected 'train' or 'eval'.")
        tokenizer = tokenizer or self.make_tokenizer()
        model_config = self.config.model
        if tokenizer.vocabulary_size > model_config.vocabulary_size:
            raise ConfigError(
                f"model.vocabulary_size={model_config.vocabulary_size} is smaller than the "
                f"{tokenizer.kind} tokenizer's {tokenizer.vocabulary_size} ids.")
        batch_size = self.config.data.global_batch_size
        if input_context is None or self.config.data.sharding == "global_batch":
            # global_batch: every worker reads the same global batches (the trainer keeps
            # each worker's rows), so the batches and the iterator's position do not depend
            # on the number of workers.
            return self.batches(tokenizer, batch_size, None, stats, training, split)
        batch_size = input_context.get_per_replica_batch_size(batch_size)
        return self.batches(tokenizer, batch_size, input_context, stats, training, split)

    @abc.abstractmethod
    def batches(self, tokenizer, batch_size, input_context, stats, training, split):
        """The task's batches of `batch_size` rows (see `dataset`)."""

    # -- Loss and evaluation. ----------------------------------------------------------------
    def loss_sums(self, model, labels, outputs, weights):
        """`(sum of w * loss, sum of w)` of a batch for training: the model's own loss."""
        return model.loss_sums(labels, outputs, weights, self.config.trainer.label_smoothing)

    def chunked_loss_sums(self, model, features, labels, weights):
        """`loss_sums(model, labels, model(features, training=True), weights)` without the
        whole logits (a model with `loss_chunk_size`: `Task.chunked_loss_sums`)."""
        return model.chunked_loss_sums(features, labels, weights,
                                       self.config.trainer.label_smoothing, training=True)

    def eval_sums(self, model, labels, outputs, weights):
        """A float32 vector of sums over one batch, which evaluation adds over replicas and
        batches: loss, weight and correct predictions (subclasses append their own)."""
        loss_sum, weight_sum = model.loss_sums(labels, outputs, weights)
        return tf.stack([loss_sum, weight_sum, weighted_correct(labels, outputs, weights)])

    # -- Distillation. -----------------------------------------------------------------------
    def load_teacher(self, tokenizer, dtype=None):
        """The frozen teacher model of `trainer.distill_from` (a model_dir or Hugging Face
        folder), or None when it is unset.

        The trainer calls it in its strategy's scope, so the teacher's variables are placed
        as the student's and its forward runs inside the same distributed step. The teacher
        must be a model of this task's kind (`model_class`) whose tokenizer is `tokenizer`
        (the same kind and vocabulary) and whose classes, if any, are this run's in the same
        order; otherwise a `ConfigError` names trainer.distill_from.
        """
        path = self.config.trainer.distill_from
        if not path:
            return None
        key = f"trainer.distill_from={path!r}"
        if not self.distillable:
            raise ConfigError(f"{key}: the {self.name} task's outputs are not a distribution "
                              "over tokens or classes, so there is nothing to distill "
                              "(distillation is for the language models, classifiers and "
                              "seq2seq); unset trainer.distill_from.")
        if not tf.io.gfile.isdir(path):
            raise ConfigError(f"{key} does not exist.")
        teacher, teacher_tokenizer, teacher_config = load_pretrained(path, dtype=dtype)
        if type(teacher) is not self.model_class:
            raise ConfigError(f"{key} is a {type(teacher).__name__} ({teacher_config.model.task}"
                              f"); model.task={self.name!r} learns from a "
                              f"{self.model_class.__name__}.")
        if (teacher_tokenizer.kind, teacher_tokenizer.fingerprint()) != (
                tokenizer.kind, tokenizer.fingerprint()):
            raise ConfigError(
                f"{key}: teacher and student must share the tokenizer, but the teacher's is "
                f"{teacher_tokenizer.kind} of {teacher_tokenizer.vocabulary_size} ids "
                f"(fingerprint {teacher_tokenizer.fingerprint()[:12]}) and this run's "
                f"{tokenizer.kind} of {tokenizer.vocabulary_size} ids (fingerprint "
                f"{tokenizer.fingerprint()[:12]}): set data.tokenizer and data.vocab_path to "
                f"the teacher's ({RunDir(path).tokenizer_dir}).")
        names, teacher_names = self.label_names(), getattr(teacher, "label_names", None)
        if names is not None and teacher_names is not None and \
                list(map(str, names)) != list(map(str, teacher_names)):
            raise ConfigError(f"{key}: the teacher's classes are {list(teacher_names)}, this "
                              f"run's {list(names)}: they must be the same, in the same order "
                              "(set data.label_names).")
        teacher.trainable = False
        return teacher

    def distill_sums(self, model, teacher_outputs, outputs, weights):
        """`(sum of w * soft loss, sum of w)` of a batch, shaped as `loss_sums`' sums: the
        KL divergence of the teacher's tempered distribution over the last axis (tokens,
        classes, tags) from the model's, times T^2 (`distillation_sums`), over the positions
        (or examples) that the task's loss counts, with its weights."""
        del model
        check_teacher_outputs(teacher_outputs, outputs)
        return distillation_sums(teacher_outputs, outputs, weights,
                                 self.config.trainer.distill_temperature)

    def after_evaluation(self, model, results, run_dir):
        """Keeps in `run_dir` (a `RunDir`) what an evaluation decided about the model, such as
        thresholds tuned on the held-out split; the chief calls it after writing
        eval_results.json. By default nothing."""

    def eval_report(self, model, totals):
        """The metrics of the summed `eval_sums` (float64 NumPy): the language models'
        loss, perplexity, accuracy and token count."""
        del model
        loss_sum, weight, correct = totals[:3]
        loss = loss_sum / weight
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)),
                "accuracy": correct / weight, "tokens": int(weight)}

    def generation_report(self, model, tokenizer):
        """Metrics of text the model generates for held-out inputs (e.g. BLEU), which
        evaluation adds to `eval_report`'s; by default none."""
        del model, tokenizer
        return {}

    # -- Serving. --------------------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def serving_module(cls, model, tokenizer, options):
        """The `tf.Module` whose functions become the SavedModel's signatures.

        `options`: a `ServingOptions` (`tflm.export.exporter`); each task reads its own.
        """

    @classmethod
    @abc.abstractmethod
    def warmup_inputs(cls, module):
        """One small, valid request per signature, as `(signature, {input: value})`."""


def check_teacher_outputs(teacher_outputs, outputs):
    """A `ConfigError` unless the teacher gives as many values per position (the vocabulary
    or the classes) as the model; checked on the static shapes, when the step is traced."""
    if teacher_outputs.shape[-1] != outputs.shape[-1]:
        raise ConfigError(
            f"trainer.distill_from: the teacher has {teacher_outputs.shape[-1]} outputs per "
            f"position (vocabulary or classes) and this model {outputs.shape[-1]}: they must "
            "agree (model.vocabulary_size, model.num_classes).")


def text_input_only(config, task_name):
    """Language-model text is text, JSONL or prepared TFRecords; CSV is labelled data."""
    if config.data.input_format == "csv":
        raise ConfigError(f"data.input_format='csv' is for labelled data; model.task="
                          f"{task_name!r} reads 'text', 'jsonl' or 'tfrecord'.")
