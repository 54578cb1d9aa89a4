"""The public-domain corpus shipped inside the package, and file globbing."""

import os

import tensorflow as tf

from tflm.errors import MissingFileError

RESOURCES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "resources")


def default_corpus_path():
    """Path of the embedded corpus: Jane Austen's *Pride and Prejudice* (public domain)."""
    return os.path.join(RESOURCES, "pride_and_prejudice.txt")


def resolve_files(pattern):
    """Files matching a glob (comma-separated globs allowed); empty → the embedded corpus.

    Raises:
        FileNotFoundError: naming the pattern, if nothing matches.
    """
    if not pattern:
        return [default_corpus_path()]
    files = []
    for part in pattern.split(","):
        part = part.strip()
        matches = sorted(tf.io.gfile.glob(part))
        if not matches:
            raise MissingFileError(f"No input files match {part!r}.")
        files.extend(matches)
    return files
