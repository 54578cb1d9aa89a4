import json
import unicodedata

import pytest
import tensorflow as tf

from tflm.config import ConfigError
from tflm.data import WordPieceTokenizer, default_corpus_path, load_tokenizer
from tflm.data.text_cleaning import is_cjk_character
from tflm.data.vocab_training import train_wordpiece


def _corpus_lines(path, limit=None):
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    return lines[:limit] if limit else lines


@pytest.fixture(scope="module")
def uncased(tmp_path_factory):
    return train_wordpiece(default_corpus_path(), 2000, str(tmp_path_factory.mktemp("wp_uncased")))


@pytest.fixture(scope="module")
def cased(tmp_path_factory):
    return train_wordpiece(default_corpus_path(), 2000, str(tmp_path_factory.mktemp("wp_cased")),
                           lowercase=False)


def _vocab_file(tokenizer, tmp_path):
    tokenizer.save(str(tmp_path))
    return str(tmp_path / "vocab.txt")


def _hf_reference(vocab_file, lowercase, nfkc):
    from tokenizers import BertWordPieceTokenizer, normalizers

    reference = BertWordPieceTokenizer(vocab_file, lowercase=lowercase)
    if nfkc:
        reference.normalizer = normalizers.Sequence(
            [normalizers.NFKC(), normalizers.BertNormalizer(lowercase=lowercase)])
    return reference


def _assert_same_ids(ours, reference, lines):
    ids = ours.tokenize(lines).to_list()
    expected = [e.ids for e in reference.encode_batch(lines, add_special_tokens=False)]
    mismatches = [(line, a, b) for line, a, b in zip(lines, ids, expected) if a != b]
    assert not mismatches, mismatches[:3]
    return ids


@pytest.mark.parametrize("lowercase", [True, False])
def test_matches_hugging_face_wordpiece_on_embedded_corpus(uncased, cased, lowercase, tmp_path):
    tokenizer = uncased if lowercase else cased
    lines = _corpus_lines(default_corpus_path())
    reference = _hf_reference(_vocab_file(tokenizer, tmp_path), lowercase, nfkc=True)
    ids = _assert_same_ids(tokenizer, reference, lines)
    assert sum(map(len, ids)) > 100_000


def test_matches_plain_bert_normalizer_without_nfkc(uncased, tmp_path):
    vocab = _vocab_file(uncased, tmp_path)
    ours = WordPieceTokenizer(vocab, lowercase=True, nfkc=False)
    lines = _corpus_lines(default_corpus_path(), 3000) + [
        "Ｆｕｌｌ ｗｉｄｔｈ ﬁne ½ naïve Crème brûlée — “quotes” ‘x’ … 中文 test",
        "tabs\tand\u00a0spaces\u3000and\x00nul\u200bzwsp",
        "UNKNOWNWORDTHATISVERYLONG" * 5,
    ]
    _assert_same_ids(ours, _hf_reference(vocab, lowercase=True, nfkc=False), lines)


def test_matches_hugging_face_wordpiece_on_austen(uncased, cased, shared_data, tmp_path):
    lines = _corpus_lines(shared_data / "austen_6novels.txt")[::5]  # all six novels, 12k lines
    assert len(lines) > 10_000
    for tokenizer, lowercase in ((uncased, True), (cased, False)):
        directory = tmp_path / str(lowercase)
        reference = _hf_reference(_vocab_file(tokenizer, directory), lowercase, nfkc=True)
        _assert_same_ids(tokenizer, reference, lines)


# Letters of 2, 3 and 4 UTF-8 bytes, added (with their "##" forms) to the trained vocabulary.
_EXTRA_LETTERS = ("д", "ㄱ", "😀")
_EDGE_CASES = [
    "д" * 60,  # 120 bytes: within 100 characters, so pieces, not [UNK]
    "достопримечательность" * 3,
    "ab" * 50, "ab" * 50 + "c", "the " + "ab" * 50 + "c, and " + "ab" * 50 + ".",
    "д" * 100, "д" * 101, "ㄱ" * 100, "ㄱ" * 101, "😀" * 100, "😀" * 101,
    "xa\u0301" * 50, "xa\u0301" * 51,  # 150 and 153 characters before accents go
    "ab,-" * 40 + "…" + "ab" * 50,  # a long run of short words: no [UNK]
    "[MASK]", "It is a [MASK] truth.", "x[MASK]y", "[CLS] hello [SEP]", "a,[SEP]!", "end [SEP]",
    "[MASK][MASK]", "[[MASK]]", "[MASK", "[PAD] and [UNK]", "д" * 101 + "[MASK]" + "ab" * 51,
    "[mask]", "[Mask]", "[ MASK ]", "\uff3bMASK\uff3d",  # text, not the mask token
    "a line\n[SEP] and the next",
    "Mr. Darcy had been standing near enough for her to overhear.",
    "She is tolerable; but not handsome enough to tempt me!",
]


@pytest.mark.parametrize("lowercase", [True, False])
def test_edge_cases_match_hugging_face(uncased, cased, lowercase, tmp_path):
    tokens = (uncased if lowercase else cased).get_vocabulary()
    tokens += [p + c for c in _EXTRA_LETTERS for p in ("", "##")]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    ours = WordPieceTokenizer(str(vocab), lowercase=lowercase)
    reference = _hf_reference(str(vocab), lowercase, nfkc=True)
    ids = _assert_same_ids(ours, reference, _EDGE_CASES)
    # A batch without special tokens takes the path that skips splitting around them.
    _assert_same_ids(ours, reference, [case for case in _EDGE_CASES if "[" not in case])
    assert ids[0] == [ours.token_to_id("д")] + [ours.token_to_id("##д")] * 59
    by_case = dict(zip(_EDGE_CASES, ids))
    assert by_case["д" * 101] == [ours.unk_id] and by_case["😀" * 101] == [ours.unk_id]
    assert by_case["[MASK]"] == [ours.mask_id]
    assert ours.tokenize("x[MASK]y").numpy().tolist() == by_case["x[MASK]y"]  # a scalar, too
    # Special tokens in the text are dropped by detokenize, as the ids the pipeline adds are.
    assert ours.detokenize(ours.tokenize("[CLS] x[MASK]y [SEP]")).numpy() == b"x y"


def test_max_chars_per_word_is_saved_and_checked(uncased, tmp_path):
    directory = tmp_path / "saved"
    WordPieceTokenizer(uncased.get_vocabulary(), max_chars_per_word=5).save(str(directory))
    loaded = load_tokenizer(str(directory))
    assert loaded.max_chars_per_word == 5
    assert loaded.tokenize(["ababa ababab"]).to_list()[0][-1] == loaded.unk_id
    # tokenizer.json of earlier versions named the limit max_bytes_per_word.
    config = json.loads((directory / "tokenizer.json").read_text())
    config["max_bytes_per_word"] = config.pop("max_chars_per_word")
    (directory / "tokenizer.json").write_text(json.dumps(config))
    assert load_tokenizer(str(directory)).max_chars_per_word == 5
    with pytest.raises(ConfigError, match="max_chars_per_word must be in"):
        WordPieceTokenizer(uncased.get_vocabulary(), max_chars_per_word=1000)


def _is_punctuation(char):
    code = ord(char)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _pre_tokens(text):
    """BERT's pre-tokenization of cleaned text: words, and each punctuation character alone."""
    return "".join(f" {c} " if _is_punctuation(c) else c for c in text).split()


def test_round_trip_is_normalized_text_with_pre_tokens_spaced(uncased):
    lines = _corpus_lines(default_corpus_path(), 2000)
    ids = uncased.tokenize(lines)
    decoded = [t.decode("utf-8") for t in uncased.detokenize(ids).numpy()]
    normalized = [t.decode("utf-8") for t in uncased.normalize(lines).numpy()]
    checked = 0
    for line_ids, text, norm in zip(ids.to_list(), decoded, normalized):
        if uncased.unk_id in line_ids:
            continue
        checked += 1
        assert text == " ".join(_pre_tokens(norm))
        assert text.replace(" ", "") == norm.replace(" ", "")
    assert checked > 1900
    # Text whose punctuation already stands between spaces round-trips exactly.
    spaced = "it is a truth universally acknowledged , that a single man !"
    assert uncased.detokenize(uncased.tokenize(spaced)).numpy().decode() == spaced


def test_chinese_tokenizes_to_single_characters_and_round_trips(shared_data, tmp_path):
    with open(shared_data / "zh_tang_song_poems.txt", encoding="utf-8") as f:
        text = f.read(100_000)
    sample = tmp_path / "poems.txt"
    sample.write_text(text, encoding="utf-8")
    tokenizer = train_wordpiece(str(sample), 6000, str(tmp_path / "vocab"))
    lines = [line for line in text.split("\n")[:-1] if line.strip() and line.strip() != "%"]
    cjk_lines = [line for line in lines if any(is_cjk_character(c) for c in line)]
    assert len(cjk_lines) > 1000
    ids = tokenizer.tokenize(cjk_lines)
    normalized = [t.decode() for t in tokenizer.normalize(cjk_lines).numpy()]
    decoded = [t.decode() for t in tokenizer.detokenize(ids).numpy()]
    exact = 0
    for line_ids, norm, back in zip(ids.to_list(), normalized, decoded):
        tokens = [tokenizer.id_to_token(i) for i in line_ids]
        assert tokenizer.unknown_token not in tokens, norm
        for token in tokens:
            if any(is_cjk_character(c) for c in token):
                assert len(token) == 1, (token, norm)  # one character, never "##字" or "字字"
        assert back == " ".join(_pre_tokens(norm))
        exact += back == norm
    # Verse (characters and single punctuation marks) comes back exactly; titles such as
    # "题目：《春怀》" and Latin text differ only by the spaces between adjacent punctuation.
    assert exact > 0.7 * len(cjk_lines)
    poem = "床前明月光，疑是地上霜。"
    assert tokenizer.detokenize(tokenizer.tokenize(poem)).numpy().decode() == \
        "床 前 明 月 光 , 疑 是 地 上 霜 。"


def test_special_tokens_and_vocabulary(uncased, tmp_path):
    assert uncased.special_tokens == ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    assert (uncased.pad_id, uncased.unk_id, uncased.cls_id, uncased.sep_id, uncased.mask_id) == \
        (0, 1, 2, 3, 4)
    assert uncased.special_ids == [0, 1, 2, 3, 4] and uncased.end_of_text_id is None
    assert uncased.vocabulary_size == 2000
    for token_id in (0, 7, 500, 1999):
        assert uncased.token_to_id(uncased.id_to_token(token_id)) == token_id
    with pytest.raises(KeyError, match="not in the WordPiece vocabulary"):
        uncased.token_to_id("no-such-token")
    with pytest.raises(KeyError, match="outside the vocabulary"):
        uncased.id_to_token(2000)


def test_shapes_detokenize_and_word_starts(uncased):
    texts = ["Elizabeth walked quickly.", "", "Mr. Darcy"]
    ragged = uncased.tokenize(texts)
    assert isinstance(ragged, tf.RaggedTensor) and ragged.dtype == tf.int32
    assert ragged.shape[0] == 3 and ragged.row_lengths().numpy()[1] == 0
    scalar = uncased.tokenize(texts[0])
    assert isinstance(scalar, tf.Tensor) and scalar.shape.rank == 1
    assert scalar.numpy().tolist() == ragged[0].numpy().tolist()
    expected = [b"elizabeth walked quickly .", b"", b"mr . darcy"]
    assert uncased.detokenize(ragged).numpy().tolist() == expected
    dense = ragged.to_tensor(default_value=uncased.pad_id)
    assert uncased.detokenize(dense).numpy().tolist() == expected
    with_special = tf.concat([[uncased.cls_id], scalar, [uncased.sep_id, uncased.pad_id]], 0)
    assert uncased.detokenize(with_special).numpy() == expected[0]
    pieces = [uncased.id_to_token(i) for i in scalar.numpy()]
    starts = uncased.word_starts(scalar).numpy().tolist()
    assert starts == [not p.startswith("##") for p in pieces]
    assert uncased.word_starts(ragged).to_list()[0] == starts
    assert uncased.word_starts(dense).shape == dense.shape
    assert uncased.word_starts(tf.constant([uncased.cls_id])).numpy().tolist() == [True]


def test_works_in_tf_data_and_tf_function(uncased):
    texts = ["It is a truth", "universally acknowledged"]
    dataset = tf.data.Dataset.from_tensor_slices(texts).map(uncased.tokenize)
    expected = uncased.tokenize(texts).to_list()
    assert [d.tolist() for d in dataset.as_numpy_iterator()] == expected
    round_trip = tf.function(lambda t: uncased.detokenize(uncased.tokenize(t)))
    assert round_trip(tf.constant(texts)).numpy().tolist() == [t.lower().encode() for t in texts]


def test_bad_vocabularies_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        WordPieceTokenizer(str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.txt.*empty"):
        WordPieceTokenizer(str(empty))
    repeated = tmp_path / "repeated.txt"
    repeated.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\na\nthe\n")
    with pytest.raises(ValueError, match="'the' on line 8 repeats line 6"):
        WordPieceTokenizer(str(repeated))
    no_mask = tmp_path / "no_mask.txt"
    no_mask.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nthe\n")
    with pytest.raises(ValueError, match=r"no_mask.txt.*'\[MASK\]'"):
        WordPieceTokenizer(str(no_mask))
