import json

import pytest

from tflm.data import default_corpus_path, load_tokenizer
from tflm.data.vocab_training import KINDS, cleaned_lines, train_vocabulary
from tflm.data.text_cleaning import TextCleaner

FILES = {
    "wordpiece": ["vocab.txt", "tokenizer.json"],
    "sentencepiece_unigram": ["sentencepiece.model", "sentencepiece.vocab", "tokenizer.json"],
    "sentencepiece_bpe": ["sentencepiece.model", "sentencepiece.vocab", "tokenizer.json"],
    "byte_bpe": ["vocab.json", "merges.txt", "tokenizer.json"],
}
SAMPLE = [
    "It is a truth universally acknowledged, that a single man in possession",
    "of a good fortune, must be in want of a wife. Café ＡＢＣ 床前明月光",
]


@pytest.fixture(scope="module")
def corpus_parts(tmp_path_factory):
    """The embedded corpus cut into two files (about 340 KB each), for a glob."""
    directory = tmp_path_factory.mktemp("corpus")
    with open(default_corpus_path(), encoding="utf-8") as f:
        text = f.read()
    half = text.index("\n", len(text) // 2)
    (directory / "part1.txt").write_text(text[:half], encoding="utf-8")
    (directory / "part2.txt").write_text(text[half:], encoding="utf-8")
    return directory


@pytest.mark.parametrize("kind", KINDS)
def test_train_from_glob_saves_files_that_load_identically(kind, corpus_parts, tmp_path):
    stats = {}
    output = tmp_path / kind
    tokenizer = train_vocabulary(kind, str(corpus_parts / "part*.txt"), 800, str(output),
                                 stats=stats)
    assert sorted(p.name for p in output.iterdir()) == sorted(FILES[kind])
    assert stats["files"] == 2 and stats["lines"] > 10_000 and stats["repaired"] == 0
    assert stats["vocabulary_size"] == tokenizer.vocabulary_size
    assert 700 <= tokenizer.vocabulary_size <= 800
    loaded = load_tokenizer(str(output))
    assert type(loaded) is type(tokenizer)
    assert loaded.fingerprint() == tokenizer.fingerprint() == stats["fingerprint"]
    assert loaded.tokenize(SAMPLE).to_list() == tokenizer.tokenize(SAMPLE).to_list()
    config = json.loads((output / "tokenizer.json").read_text())
    assert config["kind"] == tokenizer.kind
    # The usual casing per kind: uncased BERT WordPiece, cased otherwise.
    assert config["lowercase"] is (kind == "wordpiece")


def test_training_sees_the_tokenizers_own_cleaning(tmp_path):
    messy = tmp_path / "messy.txt"
    messy.write_bytes("ＡＢＣ ＡＢＣ ﬁne Café Café\x00\u200b\n".encode() * 50 + b"bad \xff\xfe byte\n")
    stats = {}
    tokenizer = train_vocabulary("wordpiece", str(messy), 100, str(tmp_path / "wp"), stats=stats)
    vocabulary = tokenizer.get_vocabulary()
    assert "abc" in vocabulary and "cafe" in vocabulary and "ＡＢＣ" not in vocabulary
    assert stats["repaired"] == 2 and stats["lines"] == 51


def test_cleaned_lines_counts_and_skips_empty_lines(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"One\n\n  \nTwo \xff\n")
    stats = {}
    lines = list(cleaned_lines([str(path)], TextCleaner(lowercase=True), stats))
    assert lines == ["one", "two"]
    assert stats == {"lines": 4, "characters": 6, "repaired": 1}


def test_jsonl_inputs_train_on_their_text_field(tmp_path):
    path = tmp_path / "reviews.jsonl"
    path.write_bytes('{"label": "pos", "text": "Good \\u00e9t\u00e9!"}\n\n{"label": "neg"}\n'
                     .encode("utf-8") + b'{"text": "bad \xff"}\n')
    stats = {}
    lines = list(cleaned_lines([str(path)], TextCleaner(lowercase=True), stats, text_field="text"))
    assert lines == ["good ete!", "bad"]
    assert stats == {"lines": 4, "characters": 12, "repaired": 1, "missing_field": 1}
    path.write_bytes(b'{"label": "positive", "text": "good good good"}\n' * 3)
    vocabulary = train_vocabulary("wordpiece", str(path), 60, str(tmp_path / "wp"),
                                  text_field="text").get_vocabulary()
    assert "good" in vocabulary and not {"label", "positive", '"'} & set(vocabulary)


def test_several_fields_each_give_a_text(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"en": "Hello", "zh": "你好"}\n{"en": "Bye"}\n', encoding="utf-8")
    stats = {}
    lines = list(cleaned_lines([str(path)], TextCleaner(), stats, text_field="en, zh"))
    # A batch's texts field by field: every "en", then every "zh"; one "zh" missing.
    assert lines == ["Hello", "Bye", "你好"]
    assert stats["missing_field"] == 1 and stats["lines"] == 2


def test_empty_glob_and_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_dir/\\*.txt"):
        train_vocabulary("wordpiece", str(tmp_path / "no_such_dir" / "*.txt"), 500, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        train_vocabulary("byte_bpe", [str(tmp_path / "missing.txt")], 500, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"no \(visible\) files"):
        train_vocabulary("sentencepiece_bpe", [str(tmp_path)], 500, str(tmp_path))


@pytest.mark.parametrize("kind", KINDS)
def test_empty_input_is_a_clear_error(kind, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="No text to train on.*empty.txt"):
        train_vocabulary(kind, str(empty), 600, str(tmp_path / "out"))


@pytest.mark.parametrize("kind, size, needed", [
    ("wordpiece", 5, "special tokens"),
    ("sentencepiece_unigram", 200, "256 byte-fallback pieces"),
    ("sentencepiece_bpe", 6, "special tokens"),
    ("byte_bpe", 256, "256 byte tokens"),
])
def test_vocab_size_too_small_is_a_clear_error(kind, size, needed, tmp_path):
    with pytest.raises(ValueError, match=f"vocab_size={size} is too small.*{needed}"):
        train_vocabulary(kind, default_corpus_path(), size, str(tmp_path))
    assert not any(tmp_path.iterdir())  # nothing written


def test_sentencepiece_size_below_its_alphabet_is_a_clear_error(tmp_path):
    text = tmp_path / "chars.txt"
    text.write_text("".join(chr(0x4E00 + i) for i in range(600)) + "\n")
    with pytest.raises(ValueError, match="vocab_size=400.*required_chars.*character_coverage"):
        train_vocabulary("sentencepiece_unigram", str(text), 400, str(tmp_path / "out"),
                         character_coverage=1.0)


def test_unknown_kind_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="Unknown vocabulary kind 'bpe'.*wordpiece"):
        train_vocabulary("bpe", default_corpus_path(), 500, str(tmp_path))
