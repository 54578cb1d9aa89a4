"""BERT-style WordPiece tokenizer, in-graph: `TextCleaner` + tf-text `FastWordpieceTokenizer`.

Tokenization = clean (NFKC, control characters, CJK spacing, accents and case
for uncased vocabularies, whitespace) → split on whitespace and punctuation →
greedy longest-match WordPiece with `##` continuation pieces. With the same
`vocab.txt` and lowercase setting it gives the ids of Hugging Face
`tokenizers`' `BertWordPieceTokenizer` (plus an NFKC normalizer when
`nfkc=True`); tests check this token for token on real text and on the
edge cases below. The known differences are Unicode-version differences in
what counts as punctuation or a control character.

As in `tokenizers`:
- a special token written in the text ("[MASK]", "[SEP]", ...) is that token's
  id, wherever it stands ("x[MASK]y" is x, [MASK], y). It is matched in the
  text as given, before cleaning: "[mask]" and "［MASK］" are ordinary text,
  also for a lower-casing tokenizer;
- a word of more than `max_chars_per_word` characters (counted after
  cleaning) is one `[UNK]`.

Speed on one core (the 4 MB Austen text, 30k-asked vocabulary): 3.2 M tokens/s
for the file as one string, 2.3 M/s in 1024-line batches, 1.4 M/s through a
one-thread `tf.data` map; `tokenizers` with one thread: 0.5 M/s.

Round trip: with no `[UNK]` in the output and no special token in the text,
`detokenize(tokenize(s))` is `normalize(s)` with exactly one space between
neighbouring pre-tokens (words, punctuation characters, CJK characters). So it
equals `normalize(s)` once the spaces are removed, and equals it exactly when
punctuation and CJK characters already stand between spaces (Chinese text after
`split_cjk`, for one).
"""

import tensorflow as tf
import tensorflow_text as tf_text

from tflm.config import ConfigError
from tflm.data import tokenizer_utils
from tflm.data.text_cleaning import CJK_CLASS, TextCleaner, repair_utf8
from tflm.data.tokenizer import Tokenizer
from tflm.errors import BadFileError

VOCAB_FILE = "vocab.txt"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# The characters tf-text's splitter makes words of their own (`IsPunctuationOrChineseChar`):
# ASCII punctuation, Unicode punctuation and CJK ideographs.
_PUNCTUATION = r"[!-/:-@\[-`{-~\p{P}" + CJK_CLASS[1:-1] + "]"
# RE2 repeats at most 1000 times; the word-length check uses `{max_chars_per_word + 1,}`.
MAX_CHARS_PER_WORD_LIMIT = 999


def read_vocab_txt(path):
    """Tokens of a BERT `vocab.txt`, one per line, in id order."""
    text = tokenizer_utils.read_text_file(path, "WordPiece vocabulary")
    tokens = text.split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()  # the final newline
    tokens = [t[:-1] if t.endswith("\r") else t for t in tokens]
    if not tokens:
        raise BadFileError(f"WordPiece vocabulary {path!r} is empty.")
    return tokens


class WordPieceTokenizer(Tokenizer):
    """WordPiece tokenizer (BERT), every method a TF op.

    Args:
        vocabulary: path of a `vocab.txt` (one token per line, line number = id)
            or a list of tokens.
        lowercase: lower-case and strip accents (BERT "uncased").
        nfkc: apply Unicode NFKC before everything else.
        split_cjk: make each CJK ideograph a word of its own (BERT does).
        strip_accents: defaults to `lowercase`.
        special_tokens: tokens never produced from text and dropped by
            `detokenize`; each must be in the vocabulary.
        unknown_token: the token for words that cannot be split into pieces.
        suffix_indicator: prefix of word-continuation pieces.
        max_chars_per_word: a word of more characters becomes `unknown_token`
            (`tokenizers`' `max_input_chars_per_word`); at most 999.

    Example:
    >>> tokenizer = WordPieceTokenizer("vocab.txt", lowercase=True)
    >>> ids = tokenizer.tokenize(["Hello, world!", "床前明月光"])   # RaggedTensor int32
    >>> tokenizer.detokenize(ids)          # [b"hello , world !", b"床 前 明 月 光"]
    """

    kind = "wordpiece"

    def __init__(self, vocabulary, lowercase=True, nfkc=True, split_cjk=True, strip_accents=None,
                 special_tokens=SPECIAL_TOKENS, unknown_token="[UNK]", suffix_indicator="##",
                 max_chars_per_word=100, name="wordpiece_tokenizer"):
        super().__init__(special_tokens, name=name)
        if isinstance(vocabulary, str):
            source = vocabulary
            tokens = read_vocab_txt(vocabulary)
        else:
            source = "WordPiece vocabulary"
            tokens = [str(t) for t in vocabulary]
        self._tokens = tokens
        self._ids = tokenizer_utils.check_unique(tokens, source)
        for token in tuple(self.special_tokens) + (unknown_token,):
            if token not in self._ids:
                raise BadFileError(f"{source}: special token {token!r} is not in the vocabulary.")
        self.unknown_token = unknown_token
        self.suffix_indicator = suffix_indicator
        self.max_chars_per_word = int(max_chars_per_word)
        if not 1 <= self.max_chars_per_word <= MAX_CHARS_PER_WORD_LIMIT:
            raise ConfigError(f"max_chars_per_word must be in [1, {MAX_CHARS_PER_WORD_LIMIT}], "
                              f"got {max_chars_per_word}.")
        self.cleaner = TextCleaner(nfkc=nfkc, lowercase=lowercase, strip_accents=strip_accents,
                                   split_cjk=split_cjk)
        # tf-text's word limit counts bytes; `tokenizers`' counts characters. Set tf-text's so
        # that no word within ours reaches it (4 bytes per character at most): `_pre_tokenize`
        # rewrites the words over ours into a run of bytes over tf-text's, which it makes [UNK].
        max_bytes = 4 * self.max_chars_per_word
        self._long_word = f"[^ ]{{{self.max_chars_per_word + 1},}}"
        self._over_byte_limit = "x" * (max_bytes + 1)
        self._wordpiece = tf_text.FastWordpieceTokenizer(
            tokens, suffix_indicator=suffix_indicator, max_bytes_per_word=max_bytes,
            token_out_type=tf.int32, unknown_token=unknown_token, support_detokenization=True,
        )
        special = set(self.special_tokens)
        # Longest first: RE2 takes the first alternative that matches, `tokenizers` the longest.
        matched = sorted(special | {unknown_token}, key=len, reverse=True)
        self._special_pattern = "|".join(tokenizer_utils.regex_literal(t) for t in matched)
        self._holds_special = f"(?s).*(?:{self._special_pattern}).*"
        self._special_strings = tf.constant(matched)
        self._special_ids = tf.constant([self._ids[t] for t in matched], tf.int32)
        self._keep_on_detokenize = tf.constant([t not in special for t in tokens])
        self._word_start_table = tf.constant([
            t in special or not t.startswith(suffix_indicator) for t in tokens
        ])

    @classmethod
    def from_directory(cls, directory, **config):
        """Loads `vocab.txt` (or the given file) with the options `config` records."""
        if "max_bytes_per_word" in config:  # tokenizer.json of earlier versions: the same limit
            config["max_chars_per_word"] = config.pop("max_bytes_per_word")
        return cls(tokenizer_utils.vocabulary_path(directory, VOCAB_FILE), **config)

    def config(self):
        cleaner = self.cleaner
        return {
            "lowercase": cleaner.lowercase,
            "nfkc": cleaner.nfkc,
            "split_cjk": cleaner.split_cjk,
            "strip_accents": cleaner.strip_accents,
            "unknown_token": self.unknown_token,
            "suffix_indicator": self.suffix_indicator,
            "max_chars_per_word": self.max_chars_per_word,
        }

    # -- Vocabulary. -------------------------------------------------------------------
    @property
    def vocabulary_size(self):
        return len(self._tokens)

    def get_vocabulary(self):
        return list(self._tokens)

    def token_to_id(self, token):
        try:
            return self._ids[token]
        except KeyError:
            raise KeyError(f"{token!r} is not in the WordPiece vocabulary.") from None

    def id_to_token(self, token_id):
        token_id = int(token_id)
        if not 0 <= token_id < len(self._tokens):
            raise KeyError(f"id {token_id} is outside the vocabulary (size {len(self._tokens)}).")
        return self._tokens[token_id]

    def _vocabulary_contents(self):
        return ["\n".join(self._tokens)]

    def _save_vocabulary(self, directory):
        tokenizer_utils.write_text_file(
            f"{directory}/{VOCAB_FILE}", "".join(t + "\n" for t in self._tokens)
        )

    # -- Text. -------------------------------------------------------------------------
    def normalize(self, inputs):
        """The cleaned text the WordPiece splitter sees (special tokens in it cleaned too)."""
        return self.cleaner(inputs)

    def tokenize(self, inputs):
        """Strings `(batch,)` → RaggedTensor `(batch, None)` int32; a scalar → `(None,)`."""
        texts = tf.convert_to_tensor(inputs, tf.string)
        if texts.shape.rank == 0:
            return self._tokenize_batch(texts[tf.newaxis])[0]
        if texts.shape.rank not in (None, 1):
            raise ValueError(
                f"tokenize takes a string or a vector of strings, got shape {texts.shape}.")
        return self._tokenize_batch(texts)

    # One graph for the whole batch: eager, each of these ops would be a separate dispatch.
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def _tokenize_batch(self, texts):
        texts = repair_utf8(texts)
        # Most batches hold no special token: they skip the split around them (~20% more time).
        holds_special = tf.reduce_any(tf.strings.regex_full_match(texts, self._holds_special))
        return tf.cond(holds_special, lambda: self._tokenize_with_special(texts),
                       lambda: self._tokenize_text(texts))

    def _tokenize_text(self, texts):
        """Valid UTF-8 strings `(n,)`, special tokens ignored → RaggedTensor `(n, None)`."""
        return self._wordpiece.tokenize(self._pre_tokenize(self.cleaner.clean_valid_utf8(texts)))

    def _tokenize_with_special(self, texts):
        # Special tokens are matched in the text as given, as `tokenizers` matches them, and the
        # text between them is cleaned and split apart: "x[MASK]y" is x, [MASK], y.
        segments = tokenizer_utils.split_around(texts, self._special_pattern)
        text = segments.flat_values
        is_special = tf.equal(text[:, tf.newaxis], self._special_strings)
        special = tf.reduce_any(is_special, axis=1)
        # A special segment becomes a word over tf-text's limit, its one [UNK] then the special id.
        pieces = self._tokenize_text(tf.where(special, self._over_byte_limit, text))
        segment = pieces.value_rowids()
        which = tf.argmax(is_special, axis=1, output_type=tf.int32)
        special_id = tf.gather(self._special_ids, which)
        ids = tf.where(tf.gather(special, segment), tf.gather(special_id, segment), pieces.values)
        return segments.with_flat_values(pieces.with_values(ids)).merge_dims(1, 2)

    def _pre_tokenize(self, cleaned):
        """Words over `max_chars_per_word` rewritten so that tf-text makes each one [UNK]."""

        def rewrite():
            # Spaced out, punctuation and CJK characters end the words as they do in tf-text, so
            # a word is a run of non-spaces (cleaning left no other whitespace).
            texts = tf.strings.regex_replace(cleaned, f"({_PUNCTUATION})", r" \1 ")
            return tf.strings.regex_replace(texts, self._long_word, self._over_byte_limit)

        # Only a text with a longer run of non-spaces can hold such a word; most batches have none.
        long_run = tf.strings.regex_full_match(cleaned, f"(?s).*{self._long_word}.*")
        return tf.cond(tf.reduce_any(long_run), rewrite, lambda: cleaned)

    def detokenize(self, ids):
        """Ids → text: pieces joined, words separated by one space; special tokens dropped."""
        ragged, rank_1 = tokenizer_utils.to_ragged_batch(ids)
        ragged = tokenizer_utils.drop_ids(ragged, self._keep_on_detokenize)
        text = self._wordpiece.detokenize(ragged)
        return text[0] if rank_1 else text

    def word_starts(self, ids):
        """True where the piece does not start with `##` (and at special tokens)."""
        return tokenizer_utils.gather_per_id(self._word_start_table, ids)
