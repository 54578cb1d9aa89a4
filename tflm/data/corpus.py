"""The public-domain corpus shipped inside the package, and file globbing."""

import os

import tensorflow as tf

from tflm.errors import MissingFileError

RESOURCES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "resources")


def default_corpus_path():
    """Path of the embedded corpus: Jane Austen's *Pride and Prejudice* (public domain)."""
    return os.path.join(RESOURCES, "pride_and_prejudice.txt")


def files_in_folder(folder):
    """The files under `folder`, recursively, sorted by path; hidden files and folders
    (names starting with ".") are left out."""
    files = []
    for name in sorted(tf.io.gfile.listdir(folder)):
        name = name.rstrip("/")
        if name.startswith("."):
            continue
        path = os.path.join(folder, name)
        if tf.io.gfile.isdir(path):
            files.extend(files_in_folder(path))
        else:
            files.append(path)
    return sorted(files)


def resolve_files(pattern):
    """Files matching a glob (comma-separated globs allowed); empty → the embedded corpus.

    A folder (named, or matched by a glob) means the files in it, recursively, sorted by
    path, hidden files and folders (names starting with ".") left out.

    Raises:
        MissingFileError: naming the pattern, if nothing matches, or the folder, if it
            holds no files.
    """
    if not pattern:
        return [default_corpus_path()]
    files = []
    for part in pattern.split(","):
        part = part.strip()
        matches = sorted(tf.io.gfile.glob(part))
        if not matches:
            raise MissingFileError(f"No input files match {part!r}.")
        for match in matches:
            if tf.io.gfile.isdir(match):
                inside = files_in_folder(match)
                if not inside:
                    raise MissingFileError(f"{match}: a folder with no (visible) files in it.")
                files.extend(inside)
            else:
                files.append(match)
    return files
