import pytest
import tensorflow as tf

from tflm.data import SentencePieceTokenizer, default_corpus_path
from tflm.data.text_cleaning import is_cjk_character
from tflm.data.vocab_training import train_sentencepiece

EXTRA = [
    "Café crème, naïve façade — “quoted” … ½ ﬁne ＡＢＣ",
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
    "emoji 🙂👍🏽 and symbols ∑ ≠ ∞",
    "tabs\tand  spaces\n\nnew lines\x00 nul \u200b",
    "",
    "[MASK] [CLS] <|endoftext|> are text here",
]


def _lines(limit=3000):
    with open(default_corpus_path(), encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()][:limit]


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def tokenizer(request, tmp_path_factory):
    return train_sentencepiece(default_corpus_path(), 1000,
                               str(tmp_path_factory.mktemp(f"sp_{request.param}")),
                               model_type=request.param, character_coverage=1.0)


def test_round_trip_is_exact_after_normalization(tokenizer):
    texts = _lines() + EXTRA
    ids = tokenizer.tokenize(texts)
    back = tokenizer.detokenize(ids).numpy().tolist()
    assert back == tokenizer.normalize(texts).numpy().tolist()
    # Byte fallback: characters never seen in training still round-trip, with no [UNK].
    assert tokenizer.unk_id not in ids.flat_values.numpy().tolist()
    assert back[-5].decode() == "床前明月光,疑是地上霜。举头望明月,低头思故乡。"


def test_agrees_with_the_sentencepiece_library(tokenizer):
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_proto=tokenizer.model_proto)
    texts = _lines() + EXTRA
    normalized = [t.decode() for t in tokenizer.normalize(texts).numpy()]
    assert tokenizer.tokenize(texts).to_list() == processor.encode(normalized)


def test_special_tokens_are_ids_0_to_5_and_never_come_from_text(tokenizer):
    assert tokenizer.special_tokens == ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
                                        "<|endoftext|>")
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id,
            tokenizer.mask_id, tokenizer.end_of_text_id) == (0, 1, 2, 3, 4, 5)
    assert tokenizer.special_ids == [0, 1, 2, 3, 4, 5]
    ids = tokenizer.tokenize(EXTRA[-1]).numpy().tolist()
    assert not set(ids) & set(tokenizer.special_ids)
    assert tokenizer.vocabulary_size == 1000
    assert tokenizer.id_to_token(6) == "<0x00>"  # byte pieces follow the special tokens
    for token_id in (0, 300, 999):
        assert tokenizer.token_to_id(tokenizer.id_to_token(token_id)) == token_id


def test_detokenize_shapes_and_drops_special_tokens(tokenizer):
    texts = ["It is a truth", "", "universally acknowledged"]
    ragged = tokenizer.tokenize(texts)
    assert isinstance(ragged, tf.RaggedTensor) and ragged.dtype == tf.int32
    scalar = tokenizer.tokenize(texts[0])
    assert scalar.shape.rank == 1 and scalar.numpy().tolist() == ragged[0].numpy().tolist()
    expected = [t.encode() for t in texts]
    assert tokenizer.detokenize(ragged).numpy().tolist() == expected
    dense = ragged.to_tensor(default_value=tokenizer.pad_id)
    assert tokenizer.detokenize(dense).numpy().tolist() == expected
    wrapped = tf.concat([[tokenizer.cls_id], scalar, [tokenizer.sep_id, tokenizer.unk_id, 0]], 0)
    assert tokenizer.detokenize(wrapped).numpy() == expected[0]


def test_word_starts_follow_the_word_boundary_marker(tokenizer):
    ids = tokenizer.tokenize("Elizabeth walked in the shrubbery")
    pieces = [tokenizer.id_to_token(i) for i in ids.numpy()]
    starts = tokenizer.word_starts(ids).numpy().tolist()
    assert starts == [p.startswith("▁") for p in pieces]
    assert sum(starts) == 5
    special = tf.constant([[tokenizer.cls_id, tokenizer.mask_id]])
    assert tokenizer.word_starts(special).numpy().tolist() == [[True, True]]


def test_works_in_tf_data(tokenizer):
    texts = ["It is a truth", "universally acknowledged"]
    dataset = tf.data.Dataset.from_tensor_slices(texts).map(tokenizer.tokenize)
    assert [d.tolist() for d in dataset.as_numpy_iterator()] == tokenizer.tokenize(texts).to_list()


def test_lowercase_option_normalizes_case_and_accents(tmp_path):
    tokenizer = train_sentencepiece(default_corpus_path(), 600, str(tmp_path), lowercase=True)
    assert tokenizer.normalize("Café ÉCLAIR").numpy().decode() == "cafe eclair"
    ids = tokenizer.tokenize("Café ÉCLAIR")
    assert tokenizer.detokenize(ids).numpy().decode() == "cafe eclair"
    assert tokenizer.config() == {"lowercase": True, "nfkc": True, "strip_accents": True}


def test_chinese_pieces_and_round_trip(shared_data, tmp_path):
    with open(shared_data / "zh_tang_song_poems.txt", encoding="utf-8") as f:
        text = f.read(150_000)
    sample = tmp_path / "poems.txt"
    sample.write_text(text, encoding="utf-8")
    # 99% character coverage: the rarest characters are spelled in byte pieces.
    tokenizer = train_sentencepiece(str(sample), 3000, str(tmp_path / "vocab"),
                                    character_coverage=0.99)
    lines = [line for line in text.split("\n")[:-1] if line.strip()]
    ids = tokenizer.tokenize(lines)
    assert tokenizer.detokenize(ids).numpy().tolist() == tokenizer.normalize(lines).numpy().tolist()
    pieces = tokenizer.get_vocabulary()
    assert any(pieces[i].startswith("<0x") for i in ids.flat_values.numpy())
    # Unlike WordPiece with CJK splitting, SentencePiece learns multi-character Chinese words.
    words = [p.lstrip("▁") for p in pieces if p.lstrip("▁") and
             all(is_cjk_character(c) for c in p.lstrip("▁"))]
    assert sum(len(w) >= 2 for w in words) > 50
    starts = tokenizer.word_starts(ids.flat_values).numpy()
    first = [pieces[i] for i in ids.flat_values.numpy()]
    assert all(s for s, p in zip(starts, first) if is_cjk_character(p[0]))


def test_bad_model_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.model"):
        SentencePieceTokenizer(str(tmp_path / "nothing.model"))
    bogus = tmp_path / "bogus.model"
    bogus.write_bytes(b"this is not a protobuf \xff\xff\xff")
    with pytest.raises(ValueError, match="bogus.model.*not a SentencePiece model"):
        SentencePieceTokenizer(str(bogus))
