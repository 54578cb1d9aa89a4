import re
import unicodedata

import pytest
import tensorflow as tf

from tflm.data.text_cleaning import (
    TextCleaner,
    collapse_whitespace,
    is_cjk_character,
    nfkc,
    remove_control_characters,
    replace_invalid_utf8,
    split_cjk,
    strip_accents,
)


def _text(tensor):
    return [t.decode("utf-8") for t in tensor.numpy().reshape(-1)]


def test_nfkc_folds_full_width_ligatures_and_compatibility_forms():
    out = _text(nfkc(["ＡＢＣ", "ﬁne", "①②", "ｶﾀｶﾅ", "x²", "Café"]))
    assert out == ["ABC", "fine", "12", "カタカナ", "x2", "Café"]
    assert _text(TextCleaner()(["ＡＢＣ ﬁ"])) == ["ABC fi"]


def test_accents_are_stripped_only_when_uncased():
    texts = ["Café Noël", "naïve Ångström"]
    assert _text(TextCleaner(lowercase=True)(texts)) == ["cafe noel", "naive angstrom"]
    assert _text(TextCleaner(lowercase=False)(texts)) == texts
    assert _text(TextCleaner(lowercase=False, strip_accents=True)(texts)) == ["Cafe Noel",
                                                                           "naive Angstrom"]
    assert _text(strip_accents(["éà"])) == ["ea"]


def test_control_and_format_characters_are_removed_tab_and_newline_kept():
    text = "a\x00b\x07c\u200bd\ufeffe\x7ff\u00adg\ttab\nline"
    assert _text(remove_control_characters([text])) == ["abcdefg\ttab\nline"]
    # As whitespace, tab and newline then collapse to one space.
    assert _text(TextCleaner()([text])) == ["abcdefg tab line"]


def test_whitespace_runs_collapse_and_ends_are_stripped():
    text = "  one \t\n two\u00a0\u3000three\u2003 "
    assert _text(collapse_whitespace([text])) == ["one two three"]
    assert _text(TextCleaner(nfkc=False)([text])) == ["one two three"]
    kept = TextCleaner(collapse_whitespace=False, nfkc=False)([text])
    assert _text(kept) == [text]


def test_cjk_ideographs_become_single_words():
    assert _text(split_cjk(["中文abc字，好"])) == [" 中  文 abc 字 ， 好 "]
    cleaned = _text(TextCleaner(split_cjk=True)(["床前明月光，疑是地上霜。"]))[0]
    words = cleaned.split(" ")
    assert all(len(w) == 1 for w in words), words
    assert "".join(words) == "床前明月光,疑是地上霜。"  # NFKC: full-width comma → ","
    assert is_cjk_character("中") and not is_cjk_character("a") and not is_cjk_character("，")


def test_invalid_utf8_is_replaced_and_counted():
    raw = [b"ok", b"caf\xc3", b"\xff\xfe bad", b"already \xef\xbf\xbd there", b"\xe4\xb8"]
    repaired, counts = replace_invalid_utf8(raw)
    assert counts.numpy().tolist() == [0, 1, 2, 0, 1]
    assert [r.decode("utf-8") for r in repaired.numpy()] == [
        "ok", "caf\ufffd", "\ufffd\ufffd bad", "already \ufffd there", "\ufffd"]
    # The cleaner counts the repairs, then drops U+FFFD with the control characters (BERT does).
    cleaned, counts = TextCleaner().clean_and_count(raw)
    assert counts.numpy().tolist() == [0, 1, 2, 0, 1]
    assert _text(cleaned) == ["ok", "caf", "bad", "already there", ""]
    # The count matches Python's own decoder on every input.
    assert counts.numpy().tolist() == [
        r.decode("utf-8", "replace").count("\ufffd") - r.count("\ufffd".encode()) for r in raw]


def test_shapes_scalar_matrix_and_graph_use():
    cleaner = TextCleaner(lowercase=True, split_cjk=True)
    scalar, count = cleaner.clean_and_count(b"  A\xff ")
    assert scalar.shape == () and scalar.numpy() == b"a" and count.numpy() == 1
    matrix, counts = cleaner.clean_and_count(tf.constant([[b"A", b"\xff\xff"], [b"", b"B C"]]))
    assert matrix.shape == (2, 2) and counts.numpy().tolist() == [[0, 2], [0, 0]]
    dataset = tf.data.Dataset.from_tensor_slices(["Ｘ Y", "中文"]).map(cleaner)
    assert [t.decode() for t in dataset.as_numpy_iterator()] == ["x y", "中 文"]
    graph = tf.function(cleaner.clean_and_count)
    out, n = graph(tf.constant([b"\xc3"]))
    assert _text(out) == [""] and n.numpy().tolist() == [1]


def test_config_round_trip():
    cleaner = TextCleaner(nfkc=False, lowercase=True, split_cjk=True)
    assert cleaner.config()["strip_accents"] is True
    assert TextCleaner(**cleaner.config()).config() == cleaner.config()


# Codepoints across scripts: ASCII, Latin-1, Latin Extended, Greek, Cyrillic, combining
# marks, general punctuation, CJK, Hangul, full-width forms, controls and format characters.
_SAMPLE = (list(range(0x00, 0x250)) + list(range(0x370, 0x400)) + list(range(0x400, 0x460))
           + list(range(0x2000, 0x2070)) + list(range(0x3000, 0x3040)) + list(range(0x4E00, 0x4E40))
           + list(range(0xAC00, 0xAC20)) + list(range(0xFF00, 0xFF60)) + [0xFEFF, 0xFFFD])


@pytest.mark.parametrize("lowercase", [True, False])
def test_matches_bert_normalizer_of_hugging_face_tokenizers(lowercase):
    """Without NFKC, the cleaner is BERT's normalizer up to whitespace collapsing."""
    from tokenizers import normalizers

    reference = normalizers.BertNormalizer(lowercase=lowercase)
    texts = [f"x{chr(c)}y {chr(c)}Z{chr(c)}" for c in _SAMPLE if unicodedata.category(chr(c)) != "Cs"]
    ours = _text(TextCleaner(nfkc=False, lowercase=lowercase, split_cjk=True)(texts))
    expected = [re.sub(r"\s+", " ", reference.normalize_str(t)).strip(" ") for t in texts]
    mismatches = [(t, o, e) for t, o, e in zip(texts, ours, expected) if o != e]
    assert not mismatches, mismatches[:5]
