"""The package's shape, read from its syntax tree: imports point down the layers, no module
imports itself back through others, imports stand at the top of each file (except the few
listed below, with their reason), and no code outside `tflm/tasks/` decides by task name; and
what importing the binaries loads."""

import ast
import functools
import os
import pathlib
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "tflm"

# Lower layers first; a module may import from its own layer or any layer below it
# (../DESIGN.md: cli -> experiment -> tasks -> training / export / generation ->
# models / run_dir / data -> layers -> config / errors).
LAYERS = {
    "errors": 0, "version": 0, "random": 0,
    "config": 1,
    "layers": 2,
    "data": 3,
    "models": 4, "run_dir": 4,
    "generation": 5, "training": 5,
    "export": 6,
    "tasks": 7,
    "experiment": 8,
    "cli": 9,
}

# Imports inside functions that stay there, each for a reason a user sees.
LAZY_IMPORTS = {
    # The TF Serving client needs no TensorFlow for REST: gRPC and protos load on first use.
    ("export/client.py", "tensorflow"),
    ("export/client.py", "tensorflow_serving.apis"),
    ("export/client.py", "grpc"),
    # Vocabulary learners load only for the kind being trained (each takes seconds to import
    # with its native library).
    ("data/vocab_training.py", "tokenizers"),
    ("data/vocab_training.py", "sentencepiece"),
    # keras-hub (seconds to import) loads only to convert one of its presets.
    ("models/keras_hub_preset.py", "keras_hub"),
    # orbit (with the tf_keras it imports, 0.4 s) loads only when training starts: tflm-eval
    # and tflm-generate import the trainer's module but never run its actions.
    ("training/actions.py", "orbit"),
}


@functools.cache
def _modules():
    """(module name, path, syntax tree) of every module, parsed once for all the tests."""
    modules = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(relative.parts).removesuffix(".__init__")
        modules.append((name, path, ast.parse(path.read_text(encoding="utf-8"))))
    return tuple(modules)


def _layer(module):
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else None


def _imported(node, module, is_package):
    """The tflm modules an import statement names."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".")
        base = base if is_package else base[:-1]
        base = base[: len(base) - node.level + 1]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module
    return [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]


def _graph():
    modules = {name: (path, tree) for name, path, tree in _modules()}
    edges = {}
    for name, (path, tree) in modules.items():
        targets = set()
        for node in tree.body:  # module-level imports only; function-local ones are checked below
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _imported(node, name, path.name == "__init__.py"):
                    if target in modules and target != name:
                        targets.add(target)
        edges[name] = targets
    return modules, edges


def test_every_top_level_folder_has_a_layer():
    names = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())}
    assert names - {"__init__"} <= set(LAYERS), names - set(LAYERS)


def test_imports_point_down():
    _, edges = _graph()
    upward = [f"{a} -> {b}" for a, targets in edges.items() for b in targets
              if _layer(a) is not None and _layer(b) is not None and _layer(b) > _layer(a)]
    assert not upward, "imports that point up the layers:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    modules, edges = _graph()
    packages = {name for name, (path, _) in modules.items() if path.name == "__init__.py"}
    # A package's __init__ re-exports its modules; an edge into it is not a cycle of modules.
    graph = {a: {b for b in targets if b not in packages} for a, targets in edges.items()}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_imports_inside_functions_are_only_the_listed_ones():
    found = set()
    unexpected = []
    for name, path, tree in _modules():
        relative = str(path.relative_to(PACKAGE))
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    top = (node.names[0].name if isinstance(node, ast.Import)
                           else node.module or "").split(".")[0]
                    key = next((k for k in LAZY_IMPORTS
                                if k[0] == relative and k[1].split(".")[0] == top), None)
                    if key is None:
                        unexpected.append(f"{relative}:{node.lineno} {ast.unparse(node)}")
                    else:
                        found.add(key)
    assert not unexpected, "imports inside functions:\n" + "\n".join(unexpected)
    assert found == LAZY_IMPORTS, f"listed but no longer lazy: {LAZY_IMPORTS - found}"


def test_no_task_name_decisions_outside_the_tasks():
    from tflm.tasks import task_names

    names = set(task_names())
    decisions = []
    for name, path, tree in _modules():
        if name.startswith("tflm.tasks"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                values = [node.left, *node.comparators]
                values += [e for c in node.comparators if isinstance(c, (ast.Tuple, ast.List, ast.Set))
                           for e in c.elts]
                if any(isinstance(v, ast.Constant) and v.value in names for v in values):
                    decisions.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not decisions, "task-name comparisons outside tflm/tasks/:\n" + "\n".join(decisions)

# tf.data transformations that take a function, and which argument it is.
DATASET_FUNCTIONS = {"map": 0, "filter": 0, "flat_map": 0, "interleave": 0, "scan": 1}
DO_NOT_CONVERT = "tf.autograph.experimental.do_not_convert"


def test_dataset_functions_are_kept_from_autograph():
    """Every function the package gives a tf.data transformation is decorated with
    `tf.autograph.experimental.do_not_convert` (or wrapped in it): autograph's conversion of
    a pipeline's functions cost seconds of each binary's start
    (tests/tasks/test_registry.py checks the built datasets)."""
    unmarked = []
    for _, path, tree in _modules():
        marked = {}  # function name -> whether a definition of that name is decorated
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                marked[node.name] = marked.get(node.name, False) or (
                    DO_NOT_CONVERT in map(ast.unparse, node.decorator_list))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in DATASET_FUNCTIONS
                    and len(node.args) > DATASET_FUNCTIONS[node.func.attr]):
                continue
            function = node.args[DATASET_FUNCTIONS[node.func.attr]]
            if isinstance(function, ast.Call) and ast.unparse(function.func) == DO_NOT_CONVERT:
                continue
            if isinstance(function, ast.Lambda) or (
                    isinstance(function, ast.Name) and marked.get(function.id) is False):
                unmarked.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not unmarked, "dataset functions autograph would convert:\n" + "\n".join(unmarked)



def test_the_binaries_import_nothing_heavy_they_do_not_use():
    """Each second of imports is a second before a binary answers: keras-hub (converting its
    presets), orbit and the tf_keras it pulls in (training's actions) load only when used."""
    code = ("import sys, tflm; assert 'tensorflow' not in sys.modules; "
            # The binaries a user waits on (tflm-export defines some of tflm-generate's flags).
            "import tflm.cli.train, tflm.cli.eval, tflm.cli.generate; "
            "print(' '.join(m for m in ('keras_hub', 'orbit', 'tf_keras') if m in sys.modules))")
    path = os.pathsep.join([str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=path)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [], "imported by the binaries: " + result.stdout
