r"""Text cleaning and Unicode normalization as TF ops (tf.data, tf.function, SavedModel).

Each step is a small function over a string tensor of any shape; `TextCleaner`
chains the ones a tokenizer needs, in the order BERT's normalizer applies them:

    repair invalid UTF-8 (→ U+FFFD, counted) → NFKC → drop control characters
    → space around CJK ideographs → NFD + drop accents (\p{Mn}) → lower-case
    → collapse whitespace

With `nfkc=False` the result equals Hugging Face `tokenizers`' `BertNormalizer`
(Google BERT's `BasicTokenizer` cleaning) apart from Unicode-version differences
in rare characters: the same control set (`\p{C}` but `\t \n \r`, plus U+FFFD)
is removed, the same CJK ranges are split, accents are stripped the same way.
Two deliberate differences: whitespace runs collapse to one space (tokenizers
split on whitespace anyway), and Google's CJK range U+2B820-U+2CEAF is used
where `tokenizers` has U+2B920.

Example:
>>> cleaner = TextCleaner(lowercase=True, split_cjk=True)
>>> [t.decode() for t in cleaner(["Ｃafé\u200b  au\tlait", "床前明月光"]).numpy()]
['cafe au lait', '床 前 明 月 光']
>>> cleaned, repaired = cleaner.clean_and_count([b"ok \xff"])
>>> repaired.numpy()
array([1], dtype=int32)
"""

import tensorflow as tf
import tensorflow_text as tf_text

REPLACEMENT_CHARACTER = "\ufffd"

#: The ideograph ranges Google BERT treats as "Chinese characters" (`_is_chinese_char`):
#: CJK Unified Ideographs, Extensions A-E, and the compatibility ideographs.
CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)
CJK_CLASS = "[" + "".join(f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in CJK_RANGES) + "]"

# Unicode White_Space (what Python's `regex`, Rust and Oniguruma call \s); RE2's \s is ASCII only.
WHITESPACE_CLASS = r"[\t-\r\x{85}\p{Z}]"
# BERT's "control": every \p{C} except tab, newline, carriage return; plus U+FFFD.
# \x0b, \x0c and \x85 are Cc, so they go too, as in BERT.
_CONTROL = r"[^\t\n\r\PC]|\x{FFFD}"


def is_cjk_character(char):
    """True for a one-character string in `CJK_RANGES`."""
    code = ord(char)
    return any(a <= code <= b for a, b in CJK_RANGES)


def replace_invalid_utf8(texts):
    """Replaces each invalid UTF-8 sequence with U+FFFD; returns `(repaired, num_replaced)`.

    `num_replaced` (int32, same shape as `texts`) counts the U+FFFD the repair
    added, not those already in the text. Sequences are replaced as Python's
    `bytes.decode("utf-8", errors="replace")` does (one U+FFFD per maximal
    invalid subpart). The count is the byte difference between replacing (3
    bytes each) and dropping the bad sequences: no per-character work, and no
    copy of a long text kept beyond the repaired one.

    >>> repaired, counts = replace_invalid_utf8([b"caf\\xc3", b"ok"])
    >>> counts.numpy()
    array([1, 0], dtype=int32)
    """
    texts = tf.convert_to_tensor(texts, tf.string)

    def transcode(errors):
        return tf.strings.unicode_transcode(
            texts, "UTF-8", "UTF-8", errors=errors, replacement_char=0xFFFD
        )

    repaired = transcode("replace")
    dropped = tf.strings.length(transcode("ignore"))
    replacement_bytes = len(REPLACEMENT_CHARACTER.encode("utf-8"))
    return repaired, (tf.strings.length(repaired) - dropped) // replacement_bytes


def repair_utf8(texts):
    """Invalid UTF-8 sequences replaced with U+FFFD: `replace_invalid_utf8` without the count."""
    return tf.strings.unicode_transcode(
        texts, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD)


def nfkc(texts):
    """Unicode NFKC: full-width forms, ligatures and compatibility characters folded."""
    return tf_text.normalize_utf8(texts, "NFKC")


def remove_control_characters(texts):
    """Drops control and format characters (`\\p{C}`, e.g. NUL, U+200B) and U+FFFD.

    Tab, newline and carriage return stay (they are whitespace).
    """
    return tf.strings.regex_replace(texts, _CONTROL, "")


def split_cjk(texts):
    """Puts a space on both sides of every CJK ideograph, so each becomes its own word."""
    return tf.strings.regex_replace(texts, "(" + CJK_CLASS + ")", r" \1 ")


def strip_accents(texts):
    """NFD, then drops combining marks (`\\p{Mn}`): "Café" → "Cafe". The result stays NFD."""
    return tf.strings.regex_replace(tf_text.normalize_utf8(texts, "NFD"), r"\p{Mn}", "")


def lowercase(texts):
    """Unicode lower-casing, character by character (not case folding: "ß" stays "ß").

    ICU would write a word-final "Σ" as "ς"; `tokenizers` (and so BERT
    vocabularies trained with it) map every "Σ" to "σ", and so does this.
    """
    return tf.strings.lower(tf.strings.regex_replace(texts, "Σ", "σ"), encoding="utf-8")


def collapse_whitespace(texts):
    """Every run of Unicode whitespace becomes one space; leading and trailing spaces go."""
    return tf.strings.strip(tf.strings.regex_replace(texts, WHITESPACE_CLASS + "+", " "))


class TextCleaner:
    """The cleaning steps a tokenizer applies before splitting text, as one callable.

    Args:
        nfkc: apply Unicode NFKC first.
        lowercase: lower-case the text.
        strip_accents: NFD and remove combining marks; defaults to `lowercase`
            (BERT's uncased recipe).
        remove_control: drop control/format characters and U+FFFD.
        collapse_whitespace: whitespace runs → one space, ends stripped.
        split_cjk: surround CJK ideographs with spaces.

    Invalid UTF-8 is always replaced by U+FFFD first; `clean_and_count` also
    returns how many replacements each string needed.

    >>> TextCleaner(lowercase=True)(" ＡＢＣ ﬁne Café\\x00 ").numpy()
    b'abc fine cafe'
    """

    def __init__(self, nfkc=True, lowercase=False, strip_accents=None, remove_control=True,
                 collapse_whitespace=True, split_cjk=False):
        self.nfkc = bool(nfkc)
        self.lowercase = bool(lowercase)
        self.strip_accents = self.lowercase if strip_accents is None else bool(strip_accents)
        self.remove_control = bool(remove_control)
        self.collapse_whitespace = bool(collapse_whitespace)
        self.split_cjk = bool(split_cjk)

    def config(self):
        return {
            "nfkc": self.nfkc,
            "lowercase": self.lowercase,
            "strip_accents": self.strip_accents,
            "remove_control": self.remove_control,
            "collapse_whitespace": self.collapse_whitespace,
            "split_cjk": self.split_cjk,
        }

    def __repr__(self):
        options = ", ".join(f"{k}={v}" for k, v in self.config().items())
        return f"TextCleaner({options})"

    def __call__(self, texts):
        """The cleaned strings, same shape as `texts`."""
        return self.clean_valid_utf8(repair_utf8(texts))

    def clean_and_count(self, texts):
        """Returns `(cleaned, num_replaced)`: `num_replaced` counts invalid UTF-8 repairs."""
        texts, num_replaced = replace_invalid_utf8(texts)
        return self.clean_valid_utf8(texts), num_replaced

    def clean_valid_utf8(self, texts):
        """The cleaning steps alone, for text already valid UTF-8 (`repair_utf8` output)."""
        if self.nfkc:
            texts = nfkc(texts)
        if self.remove_control:
            texts = remove_control_characters(texts)
        if self.split_cjk:
            texts = split_cjk(texts)
        if self.strip_accents:
            texts = strip_accents(texts)
        if self.lowercase:
            texts = lowercase(texts)
        if self.collapse_whitespace:
            texts = collapse_whitespace(texts)
        return texts
