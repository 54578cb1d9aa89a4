"""tflm-export: a trained model_dir → a versioned SavedModel for TF Serving.

    tflm-export --model_dir=runs/tiny_gpt --export_dir=runs/export [--quantize=int8]
    tflm-export --model_dir=runs/lora_a --lora=runs/lora_b/lora.safetensors --export_dir=...

Writes `export_dir/<version>/` (next free version unless --version) with the
tokenizer inside the graph, signatures for the model's task, warmup requests
and the list of its ops, checked against the ops of --serving_release. A LoRA run's
factors are merged into the base kernels first.
"""

from absl import app, flags

from tflm.cli import common_flags
from tflm.experiment import export_model_dir
from tflm.export import quantize as quantize_lib

FLAGS = flags.FLAGS

flags.DEFINE_string("export_dir", None, "Base folder of the versioned SavedModels.")
flags.DEFINE_integer("version", None, "Version folder to write; default: the next free one.")
flags.DEFINE_integer("num_beams", 4, "Beams of a causal LM's or seq2seq model's beam_search.")
flags.DEFINE_string("serving_release", "2.20", "TF Serving release whose ops the export must use.")
flags.DEFINE_boolean("jit_compile", False,
                     "Compile a causal LM's or seq2seq model's decoding loops with XLA (faster; TF "
                     "Serving then needs --xla_cpu_compilation_enabled on a CPU).")
flags.DEFINE_string("lora", None,
                    "A LoRA factors file (a LoRA run's lora.safetensors) to export on the base "
                    "that --model_dir's model.init_checkpoint names; default: --model_dir's own "
                    "weights. LoRA factors are always merged into the kernels.")
flags.DEFINE_enum("quantize", "none", quantize_lib.MODES,
                  "Store dense and embedding kernels as int8 (one scale per output channel, per "
                  "token for embeddings; weight-only) or float16; none: float32 as trained.")
flags.DEFINE_list("label_names", None,
                  "Classifier label names, in class-id order; default: the model's own.")


def export():
    if not FLAGS.model_dir or not FLAGS.export_dir:
        raise app.UsageError("--model_dir and --export_dir are required.")
    return export_model_dir(FLAGS.model_dir, FLAGS.export_dir, version=FLAGS.version,
                            label_names=FLAGS.label_names, num_beams=FLAGS.num_beams,
                            serving_release=FLAGS.serving_release, jit_compile=FLAGS.jit_compile,
                            lora_path=FLAGS.lora, quantize=FLAGS.quantize)


def main(argv):
    del argv
    path = common_flags.run_or_exit("tflm-export", export)
    print(f"tflm-export: {path}", flush=True)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
