"""GPT-2 byte-level BPE tokenizer, in-graph, from GPT-2's `vocab.json` + `merges.txt`.

The algorithm is GPT-2's (`openai/gpt-2` `encoder.py`), and the same as Hugging
Face `tokenizers`' `ByteLevelBPETokenizer` (tests check both ways on real text):

1. split the text with GPT-2's regex
   `'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+`.
   RE2 has no look-ahead, so `\\s+(?!\\S)` is done by cutting every whitespace
   run that precedes a non-space just before its last character (that
   character then starts the next word, as in GPT-2); `\\s` is Unicode
   White_Space, as in Python's `regex` and Oniguruma (RE2's `\\s` is ASCII).
   `pre_tokenizer="llama3"` / `"qwen2"` split with Llama 3's / Qwen2's regex instead
   (see `PRE_TOKENIZERS`; `tokenizers` agrees on real and random text);
2. map each word's UTF-8 bytes to byte tokens; then, step after step, merge
   in every word all occurrences of its lowest-ranked pair, until no adjacent
   pair has a merge. This runs once per distinct word of a call (`tf.unique`),
   all words at once in one `tf.while_loop` over int32 ids, with a hash table
   of `(left id, right id) → rank`. A run of one character (100k spaces)
   takes a few dozen steps; a single 100 KB word of varied letters takes
   seconds, as in GPT-2's own loop. Words found in a cache skip the loop: a table from
   each of the vocabulary's first `word_cache_size` tokens' bytes, as a word, to what the
   loop makes of it (built once, by the loop; the earliest merges are the most frequent
   words of the vocabulary's training text).

Speed on one core (Austen, 19.4k vocabulary): 1.7 M tokens/s for the file as
one string, 1.1 M/s in 1024-line batches; `tokenizers` with one thread: 0.55 M/s.
With a GPT-2-sized vocabulary (50,257), per CPU second on Austen's paragraphs, 1024 a
call: ~0.55x tiktoken, the word cache 1.2x of that without it; on Chinese poems (a line
of Han characters is one word, merged in the loop): ~0.19x (tools/benchmark_tokenize.py).

keras-hub's `BytePairTokenizer` runs the same algorithm on TF ops, but in
keras-hub 0.32 an eager call goes through the `tokenizers` library instead
(Python, not a graph), it merges strings rather than ids, and it must be
called once before export. This module is plain TF ops.

Round trip: `detokenize(tokenize(s)) == s` for any valid UTF-8 string (and
`== normalize(s)` for any bytes: invalid UTF-8 becomes U+FFFD first).
Special tokens (`<|endoftext|>`) are ids the pipeline appends; the same text
inside a document is tokenized as ordinary text, as GPT-2's encoder does
(`tokenizers` would match it as the special token).
"""

import json

import tensorflow as tf
import tensorflow_text as tf_text

from tflm.data import tokenizer_utils
from tflm.data.text_cleaning import WHITESPACE_CLASS, TextCleaner
from tflm.data.tokenizer import Tokenizer
from tflm.errors import BadFileError

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
MERGES_HEADER = "#version: 0.2"
END_OF_TEXT = "<|endoftext|>"

_WS = WHITESPACE_CLASS[1:-1]  # the class body, to combine with others
# The last whitespace character before a non-space starts the next word: cut in front of it.
_CUT_BEFORE_LAST_SPACE = f"([{_WS}])([^{_WS}])"
_CUT = b"\xff"  # never in valid UTF-8, so it cannot collide with text
_WORD = (
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+"
    f"| ?[^{_WS}\\p{{L}}\\p{{N}}]+|[{_WS}]+"
)
# Llama 3's and Qwen2's split (their tokenizer.json's `Split` regex):
#   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*
#   |\s*[\r\n]+|\s+(?!\S)|\s+
# (Qwen2: \p{N}, one digit a word). `\s+(?!\S)` is cut as in GPT-2's, except before a newline
# that ends a run: `\s*[\r\n]+` (and punctuation's `[\r\n]*`) keep it with what precedes.
_CUT_BEFORE_LAST_BLANK = r"([\t\x0b\x0c\x{85}\p{Z}])" + f"([^{_WS}])"


def _split_regex(digits):
    return (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|" + digits
            + f"| ?[^{_WS}\\p{{L}}\\p{{N}}]+[\\r\\n]*|[{_WS}]*[\\r\\n]+|[{_WS}]+")


# pre_tokenizer → (where whitespace runs are cut, the word regex).
PRE_TOKENIZERS = {
    "gpt2": (_CUT_BEFORE_LAST_SPACE, _WORD),
    "llama3": (_CUT_BEFORE_LAST_BLANK, _split_regex(r"\p{N}{1,3}")),
    "qwen2": (_CUT_BEFORE_LAST_BLANK, _split_regex(r"\p{N}")),
}
_NO_MERGE = 2**31 - 1
# Words whose merges are cached (`word_cache_size`): GPT-2's 50k tokens take ~0.3 s to
# cache when built; a word found skips the merge loop.
WORD_CACHE_SIZE = 65_536


def bytes_to_unicode():
    """GPT-2's reversible byte → printable character table (`encoder.py`)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def read_vocab_json(path):
    """`vocab.json` (token → id) with ids checked to be exactly 0..n-1."""
    vocabulary = tokenizer_utils.read_json_file(path, "byte-level BPE vocabulary")
    if not isinstance(vocabulary, dict) or not vocabulary:
        raise BadFileError(f"byte-level BPE vocabulary {path!r} must be a non-empty JSON object "
                         "mapping tokens to ids.")
    return _check_vocabulary(vocabulary, repr(path))


def _check_vocabulary(vocabulary, source):
    by_id = {}
    for token, token_id in vocabulary.items():
        if not isinstance(token_id, int) or isinstance(token_id, bool):
            raise BadFileError(f"byte-level BPE vocabulary {source}: id of {token!r} is "
                             f"{token_id!r}, not an integer.")
        if token_id in by_id:
            raise BadFileError(f"byte-level BPE vocabulary {source}: {token!r} and "
                             f"{by_id[token_id]!r} share id {token_id}.")
        by_id[token_id] = token
    missing = sorted(set(range(len(vocabulary))) - set(by_id))
    if missing:
        raise BadFileError(f"byte-level BPE vocabulary {source}: ids must be 0..{len(vocabulary) - 1}; "
                         f"{missing[0]} is missing.")
    return dict(vocabulary)


def read_merges_txt(path):
    """`merges.txt`: an optional `#version` line, then one `left right` pair per line."""
    text = tokenizer_utils.read_text_file(path, "byte-level BPE merges")
    merges = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line or (number == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise BadFileError(f"byte-level BPE merges {path!r} line {number}: expected "
                             f"'left right', got {line!r}.")
        merges.append((parts[0], parts[1]))
    return merges


class BytePairTokenizer(Tokenizer):
    """Byte-level BPE (GPT-2) tokenizer, every method a TF op.

    Args:
        vocabulary: path of a `vocab.json` or a dict token → id (ids 0..n-1).
        merges: path of a `merges.txt` or a list of `(left, right)` pairs
            (or `"left right"` strings), highest priority first.
        special_tokens: tokens dropped by `detokenize`, each in the vocabulary.
        lowercase, nfkc: optional normalization before splitting (GPT-2: off).
        nfc: Unicode NFC before splitting (Qwen2's normalizer).
        pre_tokenizer: the word split, one of `PRE_TOKENIZERS`: "gpt2", or the regex of
            "llama3" (Llama 3) or "qwen2" (Qwen2, Qwen2.5), as their `tokenizer.json`s split.
        ignore_merges: a word that is a token is that token, merges or not (`tokenizers`'
            BPE option of that name; Llama 3 sets it).
        start_token: a special token a causal LM's texts begin with (`Tokenizer`), or None.
        word_cache_size: how many of the vocabulary's first tokens (the earliest merges, so
            the most frequent words of its training text) have their merges cached as
            words: a word found there skips the merge loop. 0: no cache. Ids are the same
            either way (the cache holds what the merge loop gives).

    Example:
    >>> tokenizer = BytePairTokenizer("gpt2/vocab.json", "gpt2/merges.txt")
    >>> tokenizer.tokenize("Hello world")       # GPT-2: [15496, 995]
    >>> tokenizer.detokenize([15496, 995])      # b"Hello world"
    """

    kind = "byte_bpe"

    def __init__(self, vocabulary, merges, special_tokens=(END_OF_TEXT,), lowercase=False,
                 nfkc=False, nfc=False, pre_tokenizer="gpt2", ignore_merges=False,
                 start_token=None, word_cache_size=WORD_CACHE_SIZE, name="byte_pair_tokenizer"):
        super().__init__(special_tokens, name=name, start_token=start_token)
        if pre_tokenizer not in PRE_TOKENIZERS:
            raise ValueError(f"pre_tokenizer={pre_tokenizer!r}: expected one of "
                             f"{sorted(PRE_TOKENIZERS)}.")
        self.pre_tokenizer, self.nfc = pre_tokenizer, bool(nfc)
        self.ignore_merges = bool(ignore_merges)
        if isinstance(vocabulary, str):
            source = repr(vocabulary)
            vocabulary = read_vocab_json(vocabulary)
        else:
            source = "(dict)"
            vocabulary = _check_vocabulary(dict(vocabulary), source)
        if isinstance(merges, str):
            merges_source = repr(merges)
            merges = read_merges_txt(merges)
        else:
            merges_source = "(list)"
            merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
        self._vocabulary = vocabulary
        # Filled before it becomes an attribute: tf.Module tracks a list attribute, and each
        # item set on it then copies the whole list (minutes for GPT-2's 50k tokens).
        tokens = [None] * len(vocabulary)
        for token, token_id in vocabulary.items():
            tokens[token_id] = token
        self._tokens = tokens
        self._size = len(vocabulary)
        special = set(self.special_tokens)
        for token in self.special_tokens:
            if token not in vocabulary:
                raise BadFileError(f"byte-level BPE vocabulary {source}: special token {token!r} "
                                 "is not in it.")
        byte_chars = bytes_to_unicode()
        char_bytes = {c: b for b, c in byte_chars.items()}
        missing = [b for b, c in byte_chars.items() if c not in vocabulary]
        if missing:
            raise BadFileError(f"byte-level BPE vocabulary {source} lacks the token for byte "
                             f"{missing[0]:#04x} ({byte_chars[missing[0]]!r}); all 256 are needed.")
        for token in self._tokens:
            if token not in special and any(c not in char_bytes for c in token):
                raise BadFileError(f"byte-level BPE vocabulary {source}: token {token!r} is not made "
                                 "of GPT-2 byte characters (and is not a special token).")
        # What each token stands for; a special token stands for its own text.
        self._raw = [t.encode("utf-8") if t in special else bytes(char_bytes[c] for c in t)
                     for t in self._tokens]
        self._merges = merges
        keys, results = [], []
        for rank, pair in enumerate(merges):
            if len(pair) != 2 or any(p not in vocabulary for p in pair) or "".join(pair) not in vocabulary:
                raise BadFileError(f"byte-level BPE merges {merges_source} rule {rank + 1} {pair!r}: "
                                 "its parts and their concatenation must all be in the vocabulary.")
            keys.append(vocabulary[pair[0]] * self._size + vocabulary[pair[1]])
            results.append(vocabulary[pair[0] + pair[1]])
        self.cleaner = TextCleaner(nfkc=nfkc, lowercase=lowercase, strip_accents=False,
                                   remove_control=False, collapse_whitespace=False)

        # -- TF constants and tables. ------------------------------------------------------
        self._byte_ids = tf.constant([vocabulary[byte_chars[b]] for b in range(256)], tf.int32)
        self._merge_ranks = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(keys, tf.int64), tf.range(len(keys), dtype=tf.int32)),
            default_value=_NO_MERGE,
        ) if keys else None
        self._merge_results = tf.constant(results, tf.int32)
        self._whole_words = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant([r for t, r in zip(self._tokens, self._raw) if t not in special]),
                tf.constant([i for i, t in enumerate(self._tokens) if t not in special],
                            tf.int32)),
            default_value=-1,
        ) if self.ignore_merges else None
        self._word_cache = self._cache_words(word_cache_size)
        self._token_bytes = tf.constant(self._raw)
        self._keep_on_detokenize = tf.constant([t not in special for t in self._tokens])
        # Word starts: a token beginning with whitespace ("Ġword", "Ċ"), and one after a token
        # ending in a newline, tab or special token. Not after a space: GPT-2 joins a space to
        # the next word, so "Ġ" + "ä¸Ń" (" 中" unmerged) is one word.
        space = (b" ", b"\n", b"\t", b"\r", b"\x0b", b"\x0c")
        self._starts_word = tf.constant([t in special or r[:1] in space
                                         for t, r in zip(self._tokens, self._raw)])
        self._ends_in_space = tf.constant([t in special or r[-1:] in space[1:]
                                           for t, r in zip(self._tokens, self._raw)])

    def _cache_words(self, size):
        """word → slot table and the slots' ids, for the first `size` non-special tokens'
        bytes as words, each holding what the merge loop makes of it."""
        special = set(self.special_tokens)
        words = [r for t, r in zip(self._tokens, self._raw) if t not in special][:size]
        if not words:
            return None
        pieces = self._bpe(tf.constant(words))
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(words),
                                                tf.range(len(words), dtype=tf.int32)),
            default_value=-1)
        return table, pieces.values, tf.cast(pieces.row_splits, tf.int32)

    @classmethod
    def from_directory(cls, directory, **config):
        return cls(f"{directory}/{VOCAB_FILE}", f"{directory}/{MERGES_FILE}", **config)

    def config(self):
        config = {"lowercase": self.cleaner.lowercase, "nfkc": self.cleaner.nfkc}
        # Only when set: the fingerprints of GPT-2-style tokenizers stay as they were.
        if self.nfc:
            config["nfc"] = True
        if self.pre_tokenizer != "gpt2":
            config["pre_tokenizer"] = self.pre_tokenizer
        if self.ignore_merges:
            config["ignore_merges"] = True
        return config

    # -- Vocabulary. -------------------------------------------------------------------
    @property
    def vocabulary_size(self):
        return self._size

    def get_vocabulary(self):
        return list(self._tokens)

    @property
    def merges(self):
        return list(self._merges)

    def token_to_id(self, token):
        try:
            return self._vocabulary[token]
        except KeyError:
            raise KeyError(f"{token!r} is not in the byte-level BPE vocabulary.") from None

    def id_to_token(self, token_id):
        token_id = int(token_id)
        if not 0 <= token_id < self._size:
            raise KeyError(f"id {token_id} is outside the vocabulary (size {self._size}).")
        return self._tokens[token_id]

    def token_bytes(self, token_id):
        """The bytes a token stands for (a special token: its UTF-8 text)."""
        return self._raw[int(token_id)]

    def _vocabulary_contents(self):
        return [json.dumps(self._tokens, ensure_ascii=False),
                "\n".join(f"{a} {b}" for a, b in self._merges)]

    def _save_vocabulary(self, directory):
        # GPT-2's formats: one JSON object (token → id, in id order); merges after a version line.
        ordered = {t: i for i, t in enumerate(self._tokens)}
        tokenizer_utils.write_text_file(f"{directory}/{VOCAB_FILE}",
                                        json.dumps(ordered, ensure_ascii=False))
        tokenizer_utils.write_text_file(
            f"{directory}/{MERGES_FILE}",
            MERGES_HEADER + "\n" + "".join(f"{a} {b}\n" for a, b in self._merges))

    # -- Text. -------------------------------------------------------------------------
    def normalize(self, inputs):
        texts = self.cleaner(inputs)
        return tf_text.normalize_utf8(texts, "NFC") if self.nfc else texts

    def pre_tokenize(self, inputs):
        """GPT-2's word split: strings `(batch,)` → RaggedTensor of words; scalar → `(None,)`."""
        texts = self.normalize(inputs)
        if texts.shape.rank == 0:
            return self.pre_tokenize(texts[tf.newaxis])[0]
        if texts.shape.rank != 1:
            raise ValueError(f"tokenize takes a string or a vector of strings, got shape {texts.shape}.")
        # Mark each cut with a byte that valid UTF-8 never holds, then split once on it: a
        # global regex replace is ~10x faster here than tf_text.regex_split with the same regex.
        cut, word = PRE_TOKENIZERS[self.pre_tokenizer]
        # `\0` (the whole match, the same as `\1\2`) needs no submatches: RE2's fast path.
        marked = tf.strings.regex_replace(texts, cut, _CUT + rb"\0")
        marked = tf.strings.regex_replace(marked, word, _CUT + rb"\0")
        words = tf.strings.split(marked, sep=_CUT)
        return tf.ragged.boolean_mask(words, tf.strings.length(words) > 0)

    def tokenize(self, inputs):
        """Strings `(batch,)` → RaggedTensor `(batch, None)` int32; a scalar → `(None,)`."""
        inputs = tf.convert_to_tensor(inputs, tf.string)
        if inputs.shape.rank == 0:
            return self._tokenize_batch(inputs[tf.newaxis])[0]
        return self._tokenize_batch(inputs)

    # One graph for the whole batch: eager, each of these ops would be a separate dispatch.
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def _tokenize_batch(self, inputs):
        words = self.pre_tokenize(inputs)
        unique_words, index = tf.unique(words.values)
        pieces, row = self._cached_bpe(unique_words)
        per_word = tf.gather(pieces, tf.gather(row, index))  # (words, pieces)
        return tf.RaggedTensor.from_row_splits(
            per_word.values, tf.gather(per_word.row_splits, words.row_splits), validate=False)

    def _cached_bpe(self, words):
        """Distinct words → (RaggedTensor of pieces, the row of each word in it): words in
        the cache take its rows, the others go through `_bpe`."""
        if self._word_cache is None:
            return self._bpe(words), tf.range(tf.size(words))
        table, cached_ids, cached_splits = self._word_cache
        slot = table.lookup(words)
        hits = tf.where(slot >= 0)[:, 0]
        misses = tf.where(slot < 0)[:, 0]
        cached = tf.gather(tf.RaggedTensor.from_row_splits(cached_ids, cached_splits,
                                                           validate=False),
                           tf.gather(slot, hits))
        pieces = tf.concat([cached, self._bpe(tf.gather(words, misses))], axis=0)
        return pieces, tf.math.invert_permutation(tf.concat([hits, misses], 0))

    def _bpe(self, words):
        """Distinct words → RaggedTensor of merged token ids, all words in one while_loop."""
        lengths = tf.strings.length(words)
        num_words = tf.size(words)
        data = tf.io.decode_raw(tf.strings.reduce_join(words), tf.uint8)
        ids = tf.gather(self._byte_ids, tf.cast(data, tf.int32))
        rows = tf.repeat(tf.range(num_words), lengths)
        if self._merge_ranks is not None:
            ids, rows = self._merge(ids, rows, num_words)
        if self._whole_words is not None:
            # A word that is a token becomes it, in place of what the merges made of it.
            whole = self._whole_words.lookup(words)
            merged = tf.gather(whole, rows) < 0
            found = tf.cast(tf.where(whole >= 0)[:, 0], rows.dtype)
            rows = tf.concat([rows[merged], found], 0)
            ids = tf.concat([ids[merged], tf.gather(whole, found)], 0)
            order = tf.argsort(rows, stable=True)
            ids, rows = tf.gather(ids, order), tf.gather(rows, order)
        return tf.RaggedTensor.from_value_rowids(ids, rows, nrows=num_words, validate=False)

    def _merge(self, ids, rows, num_words):
        """GPT-2's merge loop for all words at once: each step, every word merges all
        occurrences of its lowest-ranked pair, left to right without overlap."""
        size = tf.constant(self._size, tf.int64)

        def step(ids, rows, _):
            same_word = tf.equal(rows[:-1], rows[1:])
            keys = tf.cast(ids[:-1], tf.int64) * size + tf.cast(ids[1:], tf.int64)
            ranks = tf.where(same_word, self._merge_ranks.lookup(keys), _NO_MERGE)
            best = tf.math.unsorted_segment_min(ranks, rows[:-1], num_words)
            candidates = tf.where(tf.equal(ranks, tf.gather(best, rows[:-1])) & (ranks < _NO_MERGE))
            candidates = tf.cast(tf.reshape(candidates, [-1]), tf.int32)
            # Adjacent candidates overlap only in runs like "a a a" (pair "a a"): keep every
            # other one from the start of each run, as GPT-2's left-to-right scan does.
            previous = tf.concat([[-2], candidates], 0)[:-1]
            run_start = tf.not_equal(candidates, previous + 1)
            run_first = tf.gather(tf.boolean_mask(candidates, run_start),
                                  tf.cumsum(tf.cast(run_start, tf.int32)) - 1)
            chosen = tf.boolean_mask(candidates, (candidates - run_first) % 2 == 0)
            delete = tf.scatter_nd(chosen[:, None] + 1, tf.ones_like(chosen, tf.bool), tf.shape(ids))
            # The left symbol becomes the merged token; the right one is deleted.
            merged = tf.tensor_scatter_nd_update(
                ids, chosen[:, None], tf.gather(self._merge_results, tf.gather(ranks, chosen)))
            keep = tf.logical_not(delete)
            return (tf.boolean_mask(merged, keep), tf.boolean_mask(rows, keep),
                    tf.size(chosen) > 0)

        ids, rows, _ = tf.while_loop(
            lambda ids, rows, any_merge: any_merge, step, (ids, rows, tf.size(ids) > 1),
            shape_invariants=(tf.TensorShape([None]), tf.TensorShape([None]), tf.TensorShape([])),
        )
        return ids, rows

    def detokenize(self, ids):
        """Ids → the bytes they stand for, joined; special tokens dropped."""
        ragged, rank_1 = tokenizer_utils.to_ragged_batch(ids)
        ragged = tokenizer_utils.drop_ids(ragged, self._keep_on_detokenize)
        text = tf.strings.reduce_join(tokenizer_utils.gather_per_id(self._token_bytes, ragged), axis=-1)
        return text[0] if rank_1 else text

    def word_starts(self, ids):
        """True at a token that begins with whitespace (GPT-2's "Ġword"), follows a newline,
        tab or special token, begins its row, or is special: "Ġwalk ed ," is one word."""
        return tokenizer_utils.word_starts_from_previous(ids, self._starts_word, self._ends_in_space)
