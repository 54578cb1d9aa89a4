"""Shared pytest fixtures: the repo root and the optional shared data folder.

Real-text data lives outside the repo, in `../shared/data` next to the repo
root (or wherever `TFLM_SHARED_DATA` points). Tests that need it take the
`shared_data` fixture, which skips them when the folder is absent.
"""

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
