"""Tokenizer registry: build one by kind, or load what `Tokenizer.save` / `tflm-vocab` wrote.

Kinds (the `kind` field of tokenizer.json, and `data.tokenizer` in a config):

    byte           ByteTokenizer          no vocabulary
    wordpiece      WordPieceTokenizer     vocab.txt
    sentencepiece  SentencePieceTokenizer sentencepiece.model (unigram or BPE)
    byte_bpe       BytePairTokenizer      vocab.json + merges.txt (GPT-2 formats)
    pair           TokenizerPair          source/ and target/: one tokenizer each (seq2seq
                                          with a vocabulary per language; not a data.tokenizer)

Example:
>>> tokenizer = load_tokenizer("vocab/wordpiece")          # folder from tflm-vocab
>>> tokenizer = make_tokenizer("byte")
>>> tokenizer = make_tokenizer("wordpiece", "bert-base-uncased/vocab.txt")
"""

import hashlib
import json
import os

import tensorflow as tf

from tflm.config import TOKENIZER_ALIASES
from tflm.data import tokenizer_utils
from tflm.data.byte_pair import MERGES_FILE, BytePairTokenizer
from tflm.data.byte_tokenizer import ByteTokenizer
from tflm.data.sentencepiece_tokenizer import SentencePieceTokenizer
from tflm.data.tokenizer import CONFIG_FILE, Tokenizer
from tflm.data.wordpiece import WordPieceTokenizer
from tflm.errors import BadFileError, MissingFileError

TOKENIZERS = {
    ByteTokenizer.kind: ByteTokenizer,
    WordPieceTokenizer.kind: WordPieceTokenizer,
    SentencePieceTokenizer.kind: SentencePieceTokenizer,
    BytePairTokenizer.kind: BytePairTokenizer,
}


def _class_for(kind, where):
    kind = TOKENIZER_ALIASES.get(kind, kind)
    if kind not in TOKENIZERS:
        raise BadFileError(f"{where}: unknown tokenizer kind {kind!r}; "
                         f"expected one of {sorted(TOKENIZERS)}.")
    return TOKENIZERS[kind]


def load_tokenizer(directory):
    """The tokenizer saved in `directory` (tokenizer.json + its vocabulary files).

    Raises:
        FileNotFoundError: naming the folder or file that is missing.
        ValueError: naming tokenizer.json when it is malformed or names an unknown kind.
    """
    if not tf.io.gfile.isdir(directory):
        raise MissingFileError(f"Tokenizer folder {directory!r} does not exist.")
    path = os.path.join(directory, CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        raise MissingFileError(f"{path!r} does not exist: {directory!r} was not written by "
                                "Tokenizer.save or tflm-vocab.")
    config = tokenizer_utils.read_json_file(path, "tokenizer config")
    if not isinstance(config, dict) or "kind" not in config:
        raise BadFileError(f"{path!r} must be a JSON object with a 'kind' field.")
    if config.get("kind") == TokenizerPair.kind:
        return TokenizerPair.from_directory(directory)
    cls = _class_for(config.pop("kind"), path)
    try:
        if cls is ByteTokenizer:
            return ByteTokenizer(**config)
        return cls.from_directory(directory, **config)
    except TypeError as e:  # an option this version does not know
        raise BadFileError(f"{path!r}: {e}") from None


def make_tokenizer(kind, vocab_path=""):
    """A tokenizer of `kind` from a saved folder or a bare vocabulary file.

    `vocab_path` is a folder written by `Tokenizer.save`/`tflm-vocab` (its
    kind must match), or the vocabulary file itself: `vocab.txt` for
    wordpiece (uncased BERT options), a `.model` for sentencepiece, a
    `vocab.json` with `merges.txt` beside it for byte_bpe. "byte" takes none.
    """
    cls = _class_for(kind, "make_tokenizer")
    if cls is ByteTokenizer:
        if vocab_path:
            raise ValueError(f"The byte tokenizer has no vocabulary file; got {vocab_path!r}.")
        return ByteTokenizer()
    if not vocab_path:
        raise ValueError(f"The {cls.kind} tokenizer needs a vocabulary path (a folder written "
                         "by tflm-vocab, or its vocabulary file).")
    if tf.io.gfile.isdir(vocab_path) and tf.io.gfile.exists(os.path.join(vocab_path, CONFIG_FILE)):
        tokenizer = load_tokenizer(vocab_path)
        if tokenizer.kind != cls.kind:
            raise BadFileError(f"{vocab_path!r} holds a {tokenizer.kind} tokenizer, not {cls.kind}.")
        return tokenizer
    if not tf.io.gfile.exists(vocab_path):
        raise MissingFileError(f"Vocabulary path {vocab_path!r} does not exist.")
    if cls is BytePairTokenizer and not tf.io.gfile.isdir(vocab_path):
        merges = os.path.join(os.path.dirname(vocab_path), MERGES_FILE)
        return BytePairTokenizer(vocab_path, merges)
    return cls.from_directory(vocab_path)


class TokenizerPair(tf.Module):
    """A seq2seq model's two tokenizers: `source` reads the encoder's text, `target` the
    decoder's (and detokenizes what it generates), for languages that want their own
    vocabularies. One embedding table holds both sides' ids, so `vocabulary_size` is the
    larger of the two.

    Saved as a folder: tokenizer.json of kind "pair", and each tokenizer's own folder in
    source/ and target/ (`load_tokenizer` reads it back).

    Example:
    >>> pair = TokenizerPair(make_tokenizer("byte"), make_tokenizer("wordpiece", "zh/vocab.txt"))
    >>> load_tokenizer(pair.save("run/tokenizer")).target.kind      # "wordpiece"
    """

    kind = "pair"
    SIDES = ("source", "target")

    def __init__(self, source, target, name="tokenizer_pair"):
        super().__init__(name=name)
        for side, tokenizer in zip(self.SIDES, (source, target)):
            if not isinstance(tokenizer, Tokenizer):
                raise TypeError(f"TokenizerPair's {side} must be a tflm Tokenizer; "
                                f"got {type(tokenizer).__name__}.")
        self.source = source
        self.target = target

    @property
    def vocabulary_size(self):
        return max(self.source.vocabulary_size, self.target.vocabulary_size)

    @property
    def pad_id(self):
        # Padding ids are masked; the target's keeps one value for the decoder's rows.
        return self.target.pad_id

    def save(self, directory):
        """Writes source/, target/ and tokenizer.json into `directory`."""
        for side in self.SIDES:
            getattr(self, side).save(os.path.join(directory, side))
        with tf.io.gfile.GFile(os.path.join(directory, CONFIG_FILE), "w") as f:
            f.write(json.dumps({"kind": self.kind, "sides": list(self.SIDES)}, indent=2) + "\n")
        return directory

    @classmethod
    def from_directory(cls, directory):
        return cls(*(load_tokenizer(os.path.join(directory, side)) for side in cls.SIDES))

    def fingerprint(self):
        """sha256 over both sides' fingerprints."""
        return hashlib.sha256(" ".join(
            [self.kind, self.source.fingerprint(), self.target.fingerprint()]).encode()
        ).hexdigest()
