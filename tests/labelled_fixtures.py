"""A small labelled set made from the embedded corpus, for tests that must run anywhere.

Paragraphs of *Pride and Prejudice* labelled "dialogue" when they hold a
quotation mark, else "narration": real text, a learnable label, no files
from outside the repo.
"""

import json

from tflm.data import default_corpus_path


def paragraphs(limit=None):
    with open(default_corpus_path(), encoding="utf-8") as f:
        parts = [" ".join(p.split()) for p in f.read().split("\n\n")]
    parts = [p for p in parts if len(p) > 20]
    return parts[:limit]


def write_labelled_paragraphs(path, limit=600, max_chars=200):
    """JSONL of `{"text", "label"}`; returns the number of records."""
    texts = [p[:max_chars] for p in paragraphs(limit)]
    records = [{"text": t, "label": "dialogue" if '"' in t else "narration"} for t in texts]
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return len(records)


def write_reversal_pairs(path, count=256, seed=0):
    """JSONL of `{"source": word, "target": word reversed}` for short random lowercase
    words (3 to 8 letters): a seq2seq task a tiny model learns in seconds. Returns the
    records."""
    import random

    rng = random.Random(seed)
    records = []
    for _ in range(count):
        word = "".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 8)))
        records.append({"source": word, "target": word[::-1]})
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return records
