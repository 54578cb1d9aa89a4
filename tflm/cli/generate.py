"""tflm-generate: continue prompts with a trained causal LM, or write the target of each
source with an encoder-decoder (one output line per prompt), from the terminal.

    tflm-generate --model_dir=runs/tiny_gpt --prompt="It is a truth" --max_new_tokens=60 \\
        --temperature=0.8 --top_p=0.95 --seed=1
    tflm-generate --model_dir=runs/translate --prompt="Install the package." --num_beams=4
"""

from absl import app, flags

from tflm.cli import common_flags
from tflm.errors import TflmError
from tflm.experiment import load_trained
from tflm.generation import generate
from tflm.tasks import task_for_model

FLAGS = flags.FLAGS

flags.DEFINE_multi_string("prompt", None, "A prompt; repeat the flag for several.")
flags.DEFINE_integer("max_new_tokens", 64, "Most tokens added to each prompt.")
flags.DEFINE_float("temperature", 0.0, "0: greedy; else sampling temperature.")
flags.DEFINE_integer("top_k", 0, "Sample among the k likeliest tokens (0: all).")
flags.DEFINE_float("top_p", 1.0, "Sample within this probability mass (1: all).")
flags.DEFINE_integer("seed", 0, "Seed of the sampling: the same seed, the same text.")
flags.DEFINE_integer("num_beams", 1, "Beam search with this many beams (1: no beam search).")
flags.DEFINE_float("length_penalty", 0.6, "Beam search: larger favours longer outputs.")
flags.DEFINE_multi_string("stop", None, "A stop string: the output ends before it.")


def continue_prompts():
    if not FLAGS.model_dir or not FLAGS.prompt:
        raise app.UsageError("--model_dir and at least one --prompt are required.")
    model, tokenizer, _ = load_trained(FLAGS.model_dir)
    if not task_for_model(model).generates_text:
        raise TflmError(f"{FLAGS.model_dir} holds a {type(model).__name__}, which does not "
                        "generate text (a causal LM or an encoder-decoder does).")
    outputs = generate(
        model, FLAGS.prompt, max_new_tokens=FLAGS.max_new_tokens, temperature=FLAGS.temperature,
        top_k=FLAGS.top_k, top_p=FLAGS.top_p, seed=FLAGS.seed, num_beams=FLAGS.num_beams,
        length_penalty=FLAGS.length_penalty, tokenizer=tokenizer, stop_strings=FLAGS.stop or (),
    )
    if hasattr(model.backbone, "encoder"):
        return outputs  # a target, not a continuation of its source
    return [f"{prompt}{output}" for prompt, output in zip(FLAGS.prompt, outputs)]


def main(argv):
    del argv
    for line in common_flags.run_or_exit("tflm-generate", continue_prompts):
        print(line, flush=True)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
