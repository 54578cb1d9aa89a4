"""tflm-generate: continue prompts with a trained causal LM, from the terminal.

    tflm-generate --model_dir=runs/tiny_gpt --prompt="It is a truth" --max_new_tokens=60 \\
        --temperature=0.8 --top_p=0.95 --seed=1
"""

from absl import app, flags

from tflm.cli import common_flags

FLAGS = flags.FLAGS

flags.DEFINE_multi_string("prompt", None, "A prompt; repeat the flag for several.")
flags.DEFINE_integer("max_new_tokens", 64, "Most tokens added to each prompt.")
flags.DEFINE_float("temperature", 0.0, "0: greedy; else sampling temperature.")
flags.DEFINE_integer("top_k", 0, "Sample among the k likeliest tokens (0: all).")
flags.DEFINE_float("top_p", 1.0, "Sample within this probability mass (1: all).")
flags.DEFINE_integer("seed", 0, "Seed of the sampling: the same seed, the same text.")
flags.DEFINE_integer("num_beams", 1, "Beam search with this many beams (1: no beam search).")
flags.DEFINE_float("length_penalty", 0.6, "Beam search: larger favours longer outputs.")


def main(argv):
    del argv
    from tflm.export import ExportError, load_trained
    from tflm.models import CausalLM

    common_flags.quiet_tensorflow_logs()
    if not FLAGS.model_dir or not FLAGS.prompt:
        raise app.UsageError("--model_dir and at least one --prompt are required.")
    try:
        model, tokenizer, _ = load_trained(FLAGS.model_dir)
    except (ExportError, FileNotFoundError, ValueError) as e:
        common_flags.exit_with_error("tflm-generate", e)
    if not isinstance(model, CausalLM):
        common_flags.exit_with_error("tflm-generate", f"{FLAGS.model_dir} holds a "
                                     f"{type(model).__name__}, not a causal LM.")
    outputs = model.generate(
        FLAGS.prompt, max_new_tokens=FLAGS.max_new_tokens, temperature=FLAGS.temperature,
        top_k=FLAGS.top_k, top_p=FLAGS.top_p, seed=FLAGS.seed, num_beams=FLAGS.num_beams,
        length_penalty=FLAGS.length_penalty, tokenizer=tokenizer,
    )
    for prompt, output in zip(FLAGS.prompt, outputs):
        print(f"{prompt}{output}", flush=True)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
