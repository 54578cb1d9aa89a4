"""Encoder-decoder models on real data: English -> Chinese translation and the next line of
a Chinese poem, trained from scratch on a CPU and scored by greedy decoding.

    python tools/seq2seq_experiment.py translation --work_dir=runs/en_zh --steps=800
    python tools/seq2seq_experiment.py poems --work_dir=runs/poems --steps=500
    python tools/seq2seq_experiment.py all --quick        # a few steps each: does it run?

translation: the Debian Reference's English -> Chinese paragraph pairs
(`../shared/data/en_zh_debian_reference.jsonl`, every 10th held out by the task's
`data.eval_every_nth_document=10`), `configs/small_translation.yaml`.
1. One SentencePiece vocabulary (unigram, `--vocab_size` ids, no NFKC: the references keep
   their full-width punctuation) for both languages, trained
   by `tflm.data.vocab_training` on the pairs' training split (both sides), the poems and
   the start of Austen's novels.
2. From scratch: `seq2seq` for `--steps` steps.
3. Pretrained: `denoising` (T5 span corruption) for half the steps on raw English and
   Chinese text (the pairs' training split, one paragraph a line, the poems, the start of
   Austen), then `seq2seq` for the other half starting from its weights: the same model and
   the same total steps, the weights coming through `model.init_checkpoint`.
Both are scored on the held-out pairs: greedy targets (`Seq2SeqDecoder.sample_padded`
under XLA, at most `data.target_length` tokens) against the references,
`generation_report` (sacrebleu's BLEU with its zh tokenizer, chrF, ROUGE).

poems: `../shared/data/zh_tang_song_poems.txt`, each line of a poem's body -> its next line
(titles and authors left out; every 10th pair held out), the same vocabulary and
model on rows of 32; ROUGE-L (Han characters as tokens), BLEU, chrF and a few samples.

Each stage prints one JSON line (steps; seconds and ms_per_step: the run's wall time,
compilation and the held-out loss included, decoding not; the held-out loss and the scores);
the last line is a summary of them all. Times are of whatever machine runs it.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")
PAIRS = os.path.join(DATA, "en_zh_debian_reference.jsonl")
POEMS = os.path.join(DATA, "zh_tang_song_poems.txt")
AUSTEN = os.path.join(DATA, "austen_6novels.txt")
CONFIG = os.path.join(ROOT, "configs", "small_translation.yaml")
SENTINELS = 16  # the model's vocabulary = the tokenizer's + these (span corruption)
AUSTEN_BYTES = 300_000  # enough English prose beside the pairs, not so much it drowns Chinese
# The poems: the same model on shorter rows.
POEM_OVERRIDES = ("data.source_field=source,data.target_field=target,"
                  "data.sequence_length=32,data.target_length=32")


def _print(record):
    print(json.dumps(record, ensure_ascii=False), flush=True)
    return record


def _progress(line):
    print(line, file=sys.stderr, flush=True)  # the trainer's log lines: progress on stderr


# -- Data. ------------------------------------------------------------------------------------
def poem_lines():
    """The body lines of each poem (entries separated by lines holding `%`; the title
    《...》 and the author line 作者：... left out)."""
    poems, body = [], []
    with open(POEMS, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line == "%":
                poems.append(body)
                body = []
            elif line and not line.startswith("《") and not line.startswith("作者"):
                body.append(line)
    poems.append(body)
    return [p for p in poems if p]


def write_poem_pairs(path):
    """JSONL {"source": line, "target": next line} of every poem; returns the count."""
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for body in poem_lines():
            for source, target in zip(body, body[1:]):
                f.write(json.dumps({"source": source, "target": target},
                                   ensure_ascii=False) + "\n")
                count += 1
    return count


def write_raw_text(path, config):
    """One paragraph or line a line: the pairs' training split (English, then Chinese), the
    poems' lines and the start of Austen. Both the vocabulary and the denoising model read
    it; nothing of the held-out pairs is in it."""
    from tflm.tasks.seq2seq import seq2seq_records

    train = seq2seq_records(config, "train")
    with open(AUSTEN, encoding="utf-8") as f:
        austen = [line.strip() for line in f.read(AUSTEN_BYTES).splitlines() if line.strip()]
    lines = (train.sources + train.targets + [line for p in poem_lines() for line in p]
             + austen)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(" ".join(line.split()) + "\n" for line in lines)
    return len(lines)


# -- Scoring. ---------------------------------------------------------------------------------
def greedy_targets(model, tokenizer, sources, source_length, max_new_tokens, batch_size=32):
    """Greedy targets of `sources` (strings), a fixed `(batch_size, source_length)` shape
    under XLA (one compile): sources cut to fit, their `[end]` kept, as training encodes
    them; the last batch padded with copies of its first source."""
    import tensorflow as tf

    from tflm.generation.decoding import Seq2SeqDecoder, right_pad
    from tflm.tasks.seq2seq import seq2seq_tokens

    target_tokenizer = getattr(tokenizer, "target", tokenizer)
    source_tokenizer = getattr(tokenizer, "source", tokenizer)
    start, end = seq2seq_tokens(target_tokenizer)
    pad = target_tokenizer.pad_id or 0
    decoder = Seq2SeqDecoder(model, start, end, pad)

    @tf.function(jit_compile=True)
    def decode(ids, mask, keys):
        return decoder.sample_padded(ids, mask, keys, max_new_tokens)

    outputs = []
    for first in range(0, len(sources), batch_size):
        batch = list(sources[first:first + batch_size])
        real = len(batch)
        batch += batch[:1] * (batch_size - real)
        ids = tf.cast(source_tokenizer.tokenize(tf.constant(batch)), tf.int32)[
            :, :source_length - 1]
        ids = tf.concat([ids, tf.fill([batch_size, 1], end)], axis=1)
        ids, mask, keys = right_pad(ids, pad)
        width = source_length - tf.shape(ids)[1]
        ids = tf.pad(ids, [[0, 0], [0, width]], constant_values=pad)
        mask = tf.pad(mask, [[0, 0], [0, width]])
        tokens, lengths = decode(ids, mask, keys)
        tokens = tf.RaggedTensor.from_tensor(tokens, lengths=lengths)
        texts = target_tokenizer.detokenize(tokens).numpy()[:real]
        outputs += [t.decode("utf-8") for t in texts]
    return outputs


def score(model, tokenizer, config, samples=0):
    """`generation_report` of greedy targets of the held-out records of `config`."""
    from tflm.tasks.seq2seq import seq2seq_records
    from tflm.training.text_metrics import generation_report

    held_out = seq2seq_records(config, "eval")
    start = time.perf_counter()
    hypotheses = greedy_targets(model, tokenizer, held_out.sources, config.data.sequence_length,
                                config.data.target_length)
    report = generation_report(hypotheses, held_out.targets, language="zh")
    report["decode_seconds"] = time.perf_counter() - start
    for key in ("bleu_signature", "chrf_signature"):
        report.pop(key)
    if samples:
        report["samples"] = [{"source": s, "reference": r, "generated": h} for s, r, h in zip(
            held_out.sources[:samples], held_out.targets[:samples], hypotheses[:samples])]
    return report


# -- Training. --------------------------------------------------------------------------------
def train(config, model_dir):
    """Trains `config` in `model_dir` (mode train_and_eval). Returns `(trainer, seconds)`."""
    from tflm.experiment import run_experiment

    start = time.perf_counter()
    trainer = run_experiment(config, model_dir, "train_and_eval", print_fn=_progress)
    return trainer, time.perf_counter() - start


def _stage(name, config, trainer, seconds, **extra):
    results = trainer.eval_results or {}
    return {"stage": name, "steps": config.trainer.train_steps, "seconds": round(seconds, 1),
            "ms_per_step": round(1e3 * seconds / config.trainer.train_steps, 1),
            "parameters": trainer.model.count_params(),
            "eval_loss": results.get("loss"), "eval_token_accuracy": results.get("accuracy"),
            **extra}


def _scores(report):
    return {k: round(report[k], 4) for k in ("bleu", "chrf", "rouge1", "rougeL", "exact_match")}


def translation(args):
    from tflm.data.vocab_training import train_vocabulary
    from tflm.experiment import load_experiment

    work = os.path.abspath(args.work_dir)
    os.makedirs(work, exist_ok=True)
    vocab = os.path.join(work, "vocab")
    half = args.steps // 2
    base = (f"data.input_path={PAIRS},data.vocab_path={vocab},"
            f"model.vocabulary_size={args.vocab_size + SENTINELS},"
            f"trainer.checkpoint_every={args.steps},trainer.warmup_steps={args.warmup}")
    if args.quick:
        base += ",trainer.log_every=5,trainer.steps_per_loop=5,trainer.eval_steps=2"

    def seq2seq_config(steps, extra=""):
        return load_experiment(CONFIG, ",".join(filter(None, [
            base, f"trainer.train_steps={steps}", extra])))

    config = seq2seq_config(args.steps)
    raw_text = os.path.join(work, "raw_text.txt")
    lines = write_raw_text(raw_text, config)
    start = time.perf_counter()
    # No NFKC: it turns Chinese full-width punctuation (，。（）) into ASCII, which the
    # references keep, and BLEU/chrF would count every one of them wrong.
    tokenizer = train_vocabulary("sentencepiece_unigram", raw_text, args.vocab_size, vocab,
                                 nfkc=False)
    results = [_print({"stage": "vocabulary", "kind": "sentencepiece_unigram",
                       "ids": tokenizer.vocabulary_size, "lines": lines,
                       "seconds": round(time.perf_counter() - start, 1)})]

    trainer, seconds = train(config, os.path.join(work, "scratch"))
    results.append(_print(_stage("translation_from_scratch", config, trainer, seconds,
                                 **_scores(score(trainer.model, trainer.tokenizer, config,
                                                 samples=3)))))

    # Denoising on the raw text: the same model keys, the pairs' vocabulary.
    model_keys = {k: v for k, v in vars(config.model).items()
                  if k in ("vocabulary_size", "num_layers", "num_heads", "hidden_dim",
                           "intermediate_dim", "max_sequence_length", "norm_first", "dropout",
                           "attention_dropout", "shared_embeddings", "num_decoder_layers")}
    trainer_keys = {k: getattr(config.trainer, k) for k in (
        "learning_rate", "warmup_steps", "label_smoothing", "log_every", "steps_per_loop",
        "checkpoint_every")}
    denoise = load_experiment(
        os.path.join(ROOT, "configs", "tiny_denoising.yaml"),
        ",".join([f"model.{k}={v}" for k, v in model_keys.items()]
                 + [f"trainer.{k}={v}" for k, v in trainer_keys.items()]
                 + [f"data.input_path={raw_text}", "data.document_split=line",
                    f"data.tokenizer=sentencepiece,data.vocab_path={vocab}",
                    f"data.num_sentinels={SENTINELS}",
                    f"data.sequence_length={config.data.sequence_length}",
                    f"data.global_batch_size={config.data.global_batch_size}",
                    f"trainer.train_steps={half}", "trainer.eval_steps=10"]))
    pretrained_dir = os.path.join(work, "denoising")
    pretrainer, pretrain_seconds = train(denoise, pretrained_dir)
    results.append(_print(_stage("denoising_pretraining", denoise, pretrainer,
                                 pretrain_seconds)))

    finetune = seq2seq_config(args.steps - half, f"model.init_checkpoint={pretrained_dir}")
    trainer, seconds = train(finetune, os.path.join(work, "finetuned"))
    results.append(_print(_stage(
        "translation_after_denoising", finetune, trainer, seconds,
        total_steps=half + finetune.trainer.train_steps,
        total_seconds=round(pretrain_seconds + seconds, 1),
        **_scores(score(trainer.model, trainer.tokenizer, finetune, samples=3)))))
    return results


def poems(args):
    from tflm.data.tokenizers import load_tokenizer
    from tflm.data.vocab_training import train_vocabulary
    from tflm.experiment import load_experiment

    work = os.path.abspath(args.work_dir)
    os.makedirs(work, exist_ok=True)
    pairs = os.path.join(work, "poem_pairs.jsonl")
    count = write_poem_pairs(pairs)
    vocab = os.path.join(work, "vocab")
    if os.path.exists(os.path.join(vocab, "tokenizer.json")):  # translation's, if it ran
        tokenizer = load_tokenizer(vocab)
    else:
        raw_text = os.path.join(work, "raw_text.txt")
        write_raw_text(raw_text, load_experiment(CONFIG, f"data.input_path={PAIRS}"))
        tokenizer = train_vocabulary("sentencepiece_unigram", raw_text, args.vocab_size, vocab,
                                 nfkc=False)
    overrides = (f"{POEM_OVERRIDES},data.input_path={pairs},data.vocab_path={vocab},"
                 f"model.vocabulary_size={tokenizer.vocabulary_size + SENTINELS},"
                 f"trainer.train_steps={args.steps},trainer.checkpoint_every={args.steps},"
                 f"trainer.warmup_steps={args.warmup}")
    if args.quick:
        overrides += ",trainer.log_every=5,trainer.steps_per_loop=5,trainer.eval_steps=2"
    config = load_experiment(CONFIG, overrides)
    trainer, seconds = train(config, os.path.join(work, "poems"))
    report = score(trainer.model, trainer.tokenizer, config, samples=5)
    return [_print(_stage("poem_next_line", config, trainer, seconds, pairs=count,
                          held_out=report["examples"], **_scores(report),
                          samples=report["samples"]))]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["translation", "poems", "all"])
    parser.add_argument("--work_dir", default="runs/seq2seq_experiment",
                        help="vocabulary, text and model_dirs (overwritten runs start over: "
                        "use a fresh folder)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps: translation's total (half pretraining, half "
                        "fine-tuning for the pretrained model; default 800), the poems' "
                        "(default 500)")
    parser.add_argument("--warmup", type=int, default=100, help="warmup steps of each run")
    parser.add_argument("--vocab_size", type=int, default=8000 - SENTINELS,
                        help="SentencePiece ids (the model has 16 more: the sentinels)")
    parser.add_argument("--quick", action="store_true", help="10 steps each: does it run?")
    args = parser.parse_args(argv)
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    results = []
    for what, default_steps in (("translation", 800), ("poems", 500)):
        if args.what in (what, "all"):
            run = argparse.Namespace(**vars(args))
            run.steps = 10 if args.quick else (args.steps or default_steps)
            run.warmup = 2 if args.quick else args.warmup
            results += (translation if what == "translation" else poems)(run)
    _print({"summary": True, "results": [{k: v for k, v in r.items() if k != "samples"}
                                         for r in results]})


if __name__ == "__main__":
    main()
