"""Knowledge distillation on real data: a 2-layer student distilled from a 6-layer teacher
against the same student trained alone for the same steps, on a CPU.

    python tools/distill_experiment.py all --work_dir=runs/distill    # ~20 min on 2 busy cores
    python tools/distill_experiment.py causal_lm --work_dir=runs/distill --steps=600
    python tools/distill_experiment.py all --quick        # a few steps each: does it run?

causal_lm: `configs/tiny_gpt.yaml` (byte-level, width 128) on Jane Austen's novels
(`../shared/data/austen_6novels.txt`, about 1 paragraph in 20 held out by the task's
`data.eval_every_nth_document`); scored by held-out perplexity (`--eval_steps` batches).

reviews: `configs/finetune_reviews.yaml` (Chinese product reviews, pos/neg, every 10th
held out) on a WordPiece vocabulary learned from the review texts
(`tflm.data.vocab_training`, as the config's header does with `tflm-vocab`); scored by
held-out accuracy over the whole held-out split.

For each: the teacher (`--teacher_layers`, `--teacher_steps`), then the student
(`--student_layers`) for `--steps` steps alone and again with
`trainer.distill_from=<teacher>` (`--temperature`, `--weight`), from the same seed, on
the same batches. Each run prints one JSON line (its held-out metrics, steps, seconds:
the run's wall time with compilation and evaluation); the last line sums them up.

Measured with the defaults (teacher 6 layers x 450 steps, students 2 layers x 150 steps,
T=2, weight 0.5, width 128, one seed; a 2-core CPU shared with other jobs):
causal_lm held-out perplexity: teacher 7.94, student alone 11.75, distilled 11.86 (no gain
this short); reviews held-out accuracy (3,513 reviews): teacher 0.810, student alone 0.770,
distilled 0.787. The distilled student's steps took 1.8x (causal_lm) and 1.5x (reviews)
the wall time of the student's alone (the teacher's forward).
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
AUSTEN = os.path.join(DATA, "austen_6novels.txt")
REVIEWS = os.path.join(DATA, "zh_review_sentiment.jsonl")


def _print(record):
    print(json.dumps(record, ensure_ascii=False), flush=True)
    return record


def _run(name, config_file, overrides, model_dir, metric):
    from tflm.experiment import load_experiment, run_experiment

    config = load_experiment(config_file, ",".join(filter(None, overrides)))
    start = time.time()
    trainer = run_experiment(config, model_dir, mode="train_and_eval", print_fn=lambda line: None)
    results = trainer.eval_results
    return _print({"run": name, "layers": config.model.num_layers,
                   "steps": config.trainer.train_steps, metric: round(results[metric], 4),
                   "loss": round(results["loss"], 4), "seconds": round(time.time() - start, 1),
                   "distill_from": config.trainer.distill_from or None})


def _experiment(name, config_file, overrides, metric, args):
    """Teacher, student alone, student distilled; returns their records."""
    work = os.path.join(args.work_dir, name)
    common = [*overrides, f"trainer.warmup_steps={max(1, args.steps // 10)}",
              f"trainer.log_every={args.steps}", "trainer.checkpoint_every=100000"]
    teacher_dir = os.path.join(work, "teacher")
    teacher = _run(f"{name}/teacher", config_file, [
        *common, f"model.num_layers={args.teacher_layers}",
        f"trainer.train_steps={args.teacher_steps}",
        f"trainer.warmup_steps={max(1, args.teacher_steps // 10)}"], teacher_dir, metric)
    student = [*common, f"model.num_layers={args.student_layers}",
               f"trainer.train_steps={args.steps}"]
    alone = _run(f"{name}/student_alone", config_file, student, os.path.join(work, "alone"),
                 metric)
    distilled = _run(f"{name}/student_distilled", config_file, [
        *student, f"trainer.distill_from={teacher_dir}",
        f"trainer.distill_temperature={args.temperature}",
        f"trainer.distill_weight={args.weight}"], os.path.join(work, "distilled"), metric)
    return {"teacher": teacher, "alone": alone, "distilled": distilled}


def causal_lm(args):
    overrides = [f"data.input_path={AUSTEN}", f"trainer.eval_steps={args.eval_steps}"]
    return _experiment("causal_lm", os.path.join(ROOT, "configs", "tiny_gpt.yaml"), overrides,
                       "perplexity", args)


def reviews(args):
    from tflm.data.vocab_training import train_vocabulary

    vocab_dir = os.path.join(args.work_dir, "zh_vocab")
    if not os.path.isdir(vocab_dir):
        train_vocabulary("wordpiece", [REVIEWS], 4000, vocab_dir, text_field="text")
    overrides = [f"data.input_path={REVIEWS}", f"data.vocab_path={vocab_dir}",
                 f"trainer.eval_steps={args.eval_steps if args.quick else 0}"]  # 0: all
    return _experiment("reviews", os.path.join(ROOT, "configs", "finetune_reviews.yaml"),
                       overrides, "accuracy", args)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("which", choices=["causal_lm", "reviews", "all"])
    parser.add_argument("--work_dir", default="runs/distill")
    parser.add_argument("--steps", type=int, default=0,
                        help="student steps (default 150)")
    parser.add_argument("--teacher_steps", type=int, default=0,
                        help="teacher steps (default 3x the students')")
    parser.add_argument("--teacher_layers", type=int, default=6)
    parser.add_argument("--student_layers", type=int, default=2)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--weight", type=float, default=0.5)
    parser.add_argument("--eval_steps", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="a few steps each")
    args = parser.parse_args()
    summary = {}
    for which, run, steps in (("causal_lm", causal_lm, 150), ("reviews", reviews, 150)):
        if args.which not in (which, "all"):
            continue
        run_args = argparse.Namespace(**vars(args))
        run_args.steps = 4 if args.quick else (args.steps or steps)
        run_args.teacher_steps = 4 if args.quick else (args.teacher_steps or 3 * run_args.steps)
        run_args.eval_steps = 2 if args.quick else args.eval_steps
        summary[which] = run(run_args)
    _print({"summary": {which: {run: {k: v for k, v in record.items() if k != "run"}
                                for run, record in records.items()}
                        for which, records in summary.items()},
            "temperature": args.temperature, "weight": args.weight})


if __name__ == "__main__":
    main()
