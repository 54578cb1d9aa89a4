"""Start-up time of the binaries: how long after start `tflm-generate`, `tflm-eval` and
`tflm-train` give their first output, against TensorFlow's own import time, and where the rest
goes.

    python tools/benchmark_startup.py                      # all, 3 runs each (a few minutes)
    python tools/benchmark_startup.py --binaries=generate --runs=5
    python tools/benchmark_startup.py --breakdown=false    # wall times only
    python tools/benchmark_startup.py --xla_cache=true     # with TensorFlow's persistent XLA
                                                           # cache, filled by a first run
    python tools/benchmark_startup.py --smoke              # one run of tflm-generate (CI)

First it trains a tiny GPT and a tiny BERT for a few steps (configs/tiny_gpt.yaml and
tiny_bert.yaml, `--work_dir`, reused if there). Then, in fresh processes, alternating the
measures within each round, it times (medians of `--runs`):

- `import tensorflow` alone;
- each binary from its start to its first line of substance, read from its stdout: the first
  generated text of `tflm-generate` (the tiny GPT); the first metrics line of `tflm-eval`
  (the tiny BERT, a masked LM); the first logged step of `tflm-train` (`step 1/...`, the
  tiny GPT from scratch, `trainer.log_every=1`);
- with `--breakdown` (default), the same binary once more per round in a probe process that
  times the phases between: the imports (TensorFlow; tflm and what it pulls in: keras,
  tensorflow_text, keras_hub, orbit), config load, tokenizer, dataset, model build, optimizer,
  checkpoint restore, model.keras load, the Python time of tracing each tf.function, the first
  call of each compiled function (its graph optimisation and XLA compilation, and one run),
  and the rest. It also reports each tf.function's tracing count (1: no retracing).

`python -X importtime -c "import tflm.cli.generate"` lists the modules behind the import time.
Each binary runs with the environment it would get from its console script
(`TF_CPP_MIN_LOG_LEVEL` unset: the binaries set it). On a shared machine read
`process_cpu_seconds` (the binary's CPU time, start to exit) beside the wall times, which
follow the load. Prints one JSON line per measure and a summary table with the time
each binary takes beyond TensorFlow's import (goal: at most 5 s).
"""

import argparse
import atexit
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# binary -> (model_dir of the work dir it reads or None, its arguments, the first line of
# substance: a prefix of a stdout line, "" for any line).
BINARIES = {
    "generate": ("gpt", ["--prompt=It is a truth", "--max_new_tokens=16"], ""),
    "eval": ("bert", [], "tflm-eval: {"),
    "train": (None, ["--config_file=configs/tiny_gpt.yaml",
                     "--params_override=trainer.train_steps=2,trainer.log_every=1,"
                     "trainer.checkpoint_every=1000,trainer.sample_prompt="], "step 1/"),
}

# The phases a probe times: (module, attribute) -> name. Class attributes are methods.
PHASES = {
    ("tflm.experiment", "load_experiment"): "config load",
    ("tflm.data.tokenizers", "make_tokenizer"): "tokenizer build",
    ("tflm.data.tokenizers", "load_tokenizer"): "tokenizer build",
    ("tflm.tasks.base", "Task.dataset"): "dataset build",
    ("tflm.tasks.registry", "build_task"): "model build",
    ("tflm.training.optimizer", "make_trainer_optimizer"): "optimizer build",
    ("tflm.training.checkpoints", "TrainingCheckpoints.restore"): "checkpoint restore",
    ("tensorflow", "train.Checkpoint.read"): "checkpoint restore",
    ("tflm.run_dir", "load_keras_model"): "model.keras load",
    ("tflm.training.trainer", "Trainer.__init__"): "trainer setup",
    ("tflm.training.trainer", "Trainer.evaluate"): "evaluate",
    ("tensorflow.python.autograph.impl.api", "_convert_actual"): "autograph conversion",
    ("tflm.generation.generate", "_decode_function"): "decode function (cached)",
    ("tflm.generation", "generate"): "generate",
}


def work_dirs(work_dir):
    """The tiny GPT and BERT model_dirs (a few training steps each), made once."""
    dirs = {}
    for name in ("gpt", "bert"):
        model_dir = os.path.join(work_dir, name)
        if not os.path.exists(os.path.join(model_dir, "model.keras")):
            subprocess.run(
                [sys.executable, "-c", "from tflm.cli.train import run; run()",
                 f"--config_file=configs/tiny_{name}.yaml", f"--model_dir={model_dir}",
                 "--params_override=trainer.train_steps=4,trainer.log_every=4,"
                 "trainer.checkpoint_every=4,trainer.sample_prompt="],
                cwd=REPO, env=_env(), check=True, stdout=subprocess.DEVNULL)
        dirs[name] = model_dir
    return dirs


def _env(extra=None):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    env.update(extra or {})
    return env


def _command(binary, dirs, work_dir, probe_file=None):
    model_dir, args, _ = BINARIES[binary]
    model_dir = dirs[model_dir] if model_dir else os.path.join(work_dir, "train_run")
    if binary == "train":
        subprocess.run(["rm", "-rf", model_dir], check=True)  # a fresh run, not a resume
    args = [f"--model_dir={model_dir}", *args]
    if probe_file:
        return [sys.executable, os.path.abspath(__file__), "--probe", probe_file, binary, *args]
    return [sys.executable, "-c", f"from tflm.cli.{binary} import run; run()", *args]


def first_line_time(command, prefix, env):
    """Seconds from start to the first stdout line starting with `prefix` (the process is
    then left to finish), that line, and the CPU seconds of the whole process (less
    sensitive to a shared machine's load than the wall time)."""
    cpu = _children_cpu()
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    seconds, line = None, None
    for line in process.stdout:
        if line.strip() and line.startswith(prefix):
            seconds = time.perf_counter() - start
            break
    process.stdout.read()
    stderr = process.stderr.read()
    if process.wait() != 0 or seconds is None:
        raise RuntimeError(f"{' '.join(command)} failed or printed no {prefix!r} line:\n"
                           f"{stderr[-2000:]}")
    return seconds, line.rstrip()[:100], _children_cpu() - cpu


def _children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def import_time(module, env):
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], cwd=REPO, check=True,
                   env=dict(env, TF_CPP_MIN_LOG_LEVEL="3"))
    return time.perf_counter() - start


def probe_run(probe_file, binary, argv):
    """In the probe process: times the imports, wraps the phases, runs the binary."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # as the binaries set it
    start = time.perf_counter()
    events = []  # (name, start, end, depth)
    depth = [0]

    def record(name, t0):
        events.append((name, t0 - start, time.perf_counter() - start, depth[0]))

    t0 = time.perf_counter()
    import tensorflow  # noqa: F401
    record("import tensorflow (+ its keras)", t0)
    modules_before = set(sys.modules)
    t0 = time.perf_counter()
    module = __import__(f"tflm.cli.{binary}", fromlist=["main"])
    record("import tflm.cli." + binary, t0)
    heavy = sorted(m for m in ("keras_hub", "tensorflow_text", "orbit", "tf_keras", "sklearn",
                               "tensorflow_datasets", "tokenizers", "sentencepiece")
                   if m in sys.modules and m not in modules_before)

    def timed(name, function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            depth[0] += 1
            try:
                return function(*args, **kwargs)
            finally:
                depth[0] -= 1
                record(name, t0)
        return wrapper

    for (module_name, attribute), name in PHASES.items():
        owner = sys.modules.get(module_name)
        if owner is None:
            continue
        *path, leaf = attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        original = getattr(owner, leaf)
        wrapper = timed(name, original)
        setattr(owner, leaf, wrapper)
        if not path:  # also where it was imported by name
            for other in list(sys.modules.values()):
                if getattr(other, leaf, None) is original:
                    setattr(other, leaf, wrapper)

    # What autograph converts, and how long each takes (it parses and rewrites the source).
    api = sys.modules["tensorflow.python.autograph.impl.api"]
    converted = {}
    convert = api._convert_actual

    def convert_timed(entity, program_ctx):
        t0 = time.perf_counter()
        try:
            return convert(entity, program_ctx)
        finally:
            name = f"{getattr(entity, '__module__', '?')}.{getattr(entity, '__qualname__', '?')}"
            converted[name] = converted.get(name, 0.0) + time.perf_counter() - t0
    api._convert_actual = convert_timed

    # The compiled functions: the first call traced apart (tracing: the Python, autograph
    # included), then run (graph optimisation, XLA compilation, the run itself).
    functions = []
    trainer_class = sys.modules["tflm.training.trainer"].Trainer
    trainer_init = trainer_class.__init__

    def trainer_init_timed(self, *args, **kwargs):
        trainer_init(self, *args, **kwargs)
        step = self.train_step
        for name, owner, attribute in (("train loop", step, "train_loop"),
                                       ("eval step", self, "_eval_step")):
            function = getattr(owner, attribute)
            functions.append((name, function))
            setattr(owner, attribute, _first_call_timed(name, function, timed))
    trainer_class.__init__ = trainer_init_timed
    generate_module = sys.modules["tflm.generation.generate"]
    decode_function = generate_module._decode_function

    def decode_function_timed(*args, **kwargs):
        function = decode_function(*args, **kwargs)
        functions.append(("decode", function))
        return _first_call_timed("decode", function, timed)
    generate_module._decode_function = decode_function_timed

    def dump():
        events.append(("end", 0.0, time.perf_counter() - start, 0))
        counts = {name: f.experimental_get_tracing_count() for name, f in functions
                  if hasattr(f, "experimental_get_tracing_count")}
        with open(probe_file, "w") as f:
            json.dump({"events": events, "heavy_imports": heavy, "tracing_counts": counts,
                       "autograph": dict(sorted(converted.items(), key=lambda kv: -kv[1]))}, f)
    atexit.register(dump)

    from absl import app
    sys.argv = [f"tflm-{binary}", *argv]
    app.run(module.main)


def _first_call_timed(name, function, timed):
    calls = [0]
    trace = timed(f"tracing: {name}", function.get_concrete_function)
    first_call = timed(f"first call: {name} (graph optimisation, XLA, run)", function)

    def call(*args, **kwargs):
        calls[0] += 1
        if calls[0] > 1:
            return function(*args, **kwargs)
        if not function.experimental_get_tracing_count():  # else traced ahead of the call
            trace(*args, **kwargs)
        return first_call(*args, **kwargs)
    call.experimental_get_tracing_count = function.experimental_get_tracing_count
    call.get_concrete_function = trace
    return call


def breakdown(events, first_output):
    """{phase: seconds} of the phases that began before the first output (inclusive times;
    nested phases are listed too), and "other": the top-level time no phase accounts for."""
    phases, covered, last_end = {}, 0.0, 0.0
    for name, t0, t1, depth in events:
        if name == "end" or t0 > first_output:
            continue
        t1 = min(t1, first_output)
        phases[name] = phases.get(name, 0.0) + (t1 - t0)
        if depth == 0 and t0 >= last_end:
            covered += t1 - t0
            last_end = t1
    phases["other (interpreter, flags, untimed work)"] = first_output - covered
    return phases


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binaries", default="generate,eval,train")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--breakdown", default="true", choices=["true", "false"])
    parser.add_argument("--work_dir", default="/tmp/tflm_benchmark_startup")
    parser.add_argument("--xla_cache", default="false", choices=["true", "false"],
                        help="run the binaries with TensorFlow's persistent XLA cache in "
                             "work_dir/xla_cache, filled by one untimed run of each first.")
    parser.add_argument("--smoke", action="store_true",
                        help="one run of tflm-generate, with its breakdown (CI).")
    parser.add_argument("--probe", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        return probe_run(args.probe[0], args.probe[1], args.probe[2:])
    binaries = args.binaries.split(",")
    if args.smoke:
        binaries, args.runs = ["generate"], 1
        BINARIES["generate"] = ("gpt", ["--prompt=It", "--max_new_tokens=2"], "")
    env = _env()
    os.makedirs(args.work_dir, exist_ok=True)
    dirs = work_dirs(args.work_dir)
    if args.xla_cache == "true":
        cache = os.path.join(args.work_dir, "xla_cache")
        env["TF_XLA_FLAGS"] = (env.get("TF_XLA_FLAGS", "")
                               + f" --tf_xla_persistent_cache_directory={cache}").strip()
        for binary in binaries:
            first_line_time(_command(binary, dirs, args.work_dir), BINARIES[binary][2], env)
    load = os.getloadavg()[0]
    results = {"import tensorflow": []}
    phases = {b: [] for b in binaries}
    heavy, counts, cpu_seconds = {}, {}, {}
    for run in range(args.runs):
        results["import tensorflow"].append(import_time("tensorflow", env))
        print(json.dumps({"measure": "import tensorflow", "run": run,
                          "seconds": round(results["import tensorflow"][-1], 2)}), flush=True)
        for binary in binaries:
            prefix = BINARIES[binary][2]
            seconds, line, cpu = first_line_time(_command(binary, dirs, args.work_dir), prefix,
                                                 env)
            results.setdefault(binary, []).append(seconds)
            cpu_seconds.setdefault(binary, []).append(cpu)
            print(json.dumps({"measure": binary, "run": run, "seconds": round(seconds, 2),
                              "process_cpu_seconds": round(cpu, 2), "first_line": line}),
                  flush=True)
            if args.breakdown == "false":
                continue
            probe_file = os.path.join(args.work_dir, f"probe_{binary}.json")
            first, _, _ = first_line_time(_command(binary, dirs, args.work_dir, probe_file),
                                          prefix, env)
            with open(probe_file) as f:
                probe = json.load(f)
            phases[binary].append(breakdown(probe["events"], first))
            heavy[binary], counts[binary] = probe["heavy_imports"], probe["tracing_counts"]
    tf_import = statistics.median(results["import tensorflow"])
    summary = {"load_average": round(load, 2), "import_tensorflow_s": round(tf_import, 2),
               "xla_cache": args.xla_cache == "true", "binaries": {}}
    for binary in binaries:
        first = statistics.median(results[binary])
        entry = {"first_output_s": round(first, 2),
                 "beyond_tensorflow_s": round(first - tf_import, 2),
                 "goal_met": first - tf_import <= 5.0,
                 "process_cpu_s": round(statistics.median(cpu_seconds[binary]), 2)}
        if phases[binary]:
            names = list(dict.fromkeys(n for p in phases[binary] for n in p))
            entry["phases_s"] = {
                n: round(statistics.median([p.get(n, 0.0) for p in phases[binary]]), 2)
                for n in names}
            entry["imported_by_the_binary"] = heavy[binary]
            entry["tracing_counts"] = counts[binary]
        summary["binaries"][binary] = entry
    print(json.dumps(summary, indent=1))
    print(f"\n| binary | first output (s) | beyond `import tensorflow` {tf_import:.1f} s | "
          "goal <= 5 s |\n|---|---:|---:|---|")
    for binary, entry in summary["binaries"].items():
        print(f"| tflm-{binary} | {entry['first_output_s']:.1f} | "
              f"{entry['beyond_tensorflow_s']:.1f} | {'met' if entry['goal_met'] else 'not met'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
