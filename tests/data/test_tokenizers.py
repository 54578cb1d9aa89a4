import json
import shutil

import pytest
import tensorflow as tf

from tflm.data import (
    BytePairTokenizer,
    ByteTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    WordPieceTokenizer,
    default_corpus_path,
    load_tokenizer,
    make_tokenizer,
)
from tflm.data.tokenizers import TOKENIZERS
from tflm.data.vocab_training import train_vocabulary

TEXTS = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune",
    "Café ＡＢＣ ﬁne — “quoted”",
    "床前明月光，疑是地上霜。",
    "",
]
KIND_OF = {"wordpiece": "wordpiece", "sentencepiece_unigram": "sentencepiece",
           "byte_bpe": "byte_bpe"}


@pytest.fixture(scope="module")
def corpus_slice(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "slice.txt"
    with open(default_corpus_path(), encoding="utf-8") as f:
        path.write_text(f.read(200_000), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def saved(corpus_slice, tmp_path_factory):
    """One saved folder per kind: {kind: (tokenizer, folder)}."""
    out = {"byte": (ByteTokenizer(), tmp_path_factory.mktemp("byte"))}
    out["byte"][0].save(str(out["byte"][1]))
    for train_kind, kind in KIND_OF.items():
        folder = tmp_path_factory.mktemp(kind)
        out[kind] = (train_vocabulary(train_kind, corpus_slice, 600, str(folder)), folder)
    return out


def test_registry_covers_every_kind():
    assert TOKENIZERS == {"byte": ByteTokenizer, "wordpiece": WordPieceTokenizer,
                          "sentencepiece": SentencePieceTokenizer, "byte_bpe": BytePairTokenizer}
    assert all(issubclass(cls, Tokenizer) for cls in TOKENIZERS.values())


@pytest.mark.parametrize("kind", ["byte", "wordpiece", "sentencepiece", "byte_bpe"])
def test_save_load_gives_same_fingerprint_and_ids(saved, kind, tmp_path):
    tokenizer, folder = saved[kind]
    loaded = load_tokenizer(str(folder))
    assert type(loaded) is type(tokenizer) and loaded.kind == kind
    assert loaded.fingerprint() == tokenizer.fingerprint()
    assert loaded.tokenize(TEXTS).to_list() == tokenizer.tokenize(TEXTS).to_list()
    assert loaded.special_ids == tokenizer.special_ids
    assert loaded.vocabulary_size == tokenizer.vocabulary_size
    # Saving the loaded one again writes byte-identical files.
    loaded.save(str(tmp_path))
    for path in folder.iterdir():
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name
    # make_tokenizer on the folder is the same tokenizer.
    assert make_tokenizer(kind, "" if kind == "byte" else str(folder)).fingerprint() == \
        tokenizer.fingerprint()


@pytest.mark.parametrize("kind", ["wordpiece", "sentencepiece", "byte_bpe"])
def test_different_vocabulary_or_options_give_a_different_fingerprint(saved, kind, tmp_path):
    tokenizer, folder = saved[kind]
    # Same kind trained on other text.
    other_text = tmp_path / "other.txt"
    with open(default_corpus_path(), encoding="utf-8") as f:
        f.seek(400_000)
        other_text.write_text(f.read(200_000), encoding="utf-8")
    train_kind = {v: k for k, v in KIND_OF.items()}[kind]
    other = train_vocabulary(train_kind, str(other_text), 600, str(tmp_path / "other"))
    assert other.fingerprint() != tokenizer.fingerprint()
    # Same files, another option in tokenizer.json.
    changed = tmp_path / "changed"
    shutil.copytree(folder, changed)
    config = json.loads((changed / "tokenizer.json").read_text())
    config["lowercase"] = not config["lowercase"]
    (changed / "tokenizer.json").write_text(json.dumps(config))
    assert load_tokenizer(str(changed)).fingerprint() != tokenizer.fingerprint()


@pytest.mark.parametrize("kind", ["byte", "wordpiece", "sentencepiece", "byte_bpe"])
def test_interface_shapes_dtypes_and_graph_use(saved, kind):
    tokenizer, _ = saved[kind]
    ragged = tokenizer.tokenize(TEXTS)
    assert isinstance(ragged, tf.RaggedTensor) and ragged.dtype == tf.int32
    assert ragged.shape.rank == 2 and ragged.shape[0] == len(TEXTS)
    values = ragged.flat_values.numpy()
    assert values.min() >= 0 and values.max() < tokenizer.vocabulary_size
    scalar = tokenizer.tokenize(TEXTS[0])
    assert isinstance(scalar, tf.Tensor) and scalar.dtype == tf.int32 and scalar.shape.rank == 1
    assert scalar.numpy().tolist() == ragged[0].numpy().tolist()
    # detokenize: ragged rank 2, dense rank 2 padded with a special id, dense rank 1.
    text = tokenizer.detokenize(ragged)
    assert text.shape == (len(TEXTS),) and text.dtype == tf.string
    padding = tokenizer.special_ids[0]
    dense = ragged.to_tensor(default_value=padding)
    assert tokenizer.detokenize(dense).numpy().tolist() == text.numpy().tolist()
    assert tokenizer.detokenize(scalar).numpy() == text.numpy()[0]
    # Round trip: exact for byte, byte_bpe and sentencepiece; WordPiece is tested on its own.
    if kind != "wordpiece":
        assert text.numpy().tolist() == tokenizer.normalize(TEXTS).numpy().tolist()
    starts = tokenizer.word_starts(ragged)
    assert starts.dtype == tf.bool and starts.to_list()[0][0]
    assert tokenizer.word_starts(dense).shape == dense.shape
    for token_id in (0, tokenizer.vocabulary_size // 2, tokenizer.vocabulary_size - 1):
        assert tokenizer.token_to_id(tokenizer.id_to_token(token_id)) == token_id
    # Inside tf.data (scalar elements, then batches) and a tf.function.
    dataset = tf.data.Dataset.from_tensor_slices(TEXTS).map(tokenizer.tokenize)
    assert [d.tolist() for d in dataset.as_numpy_iterator()] == ragged.to_list()
    batches = tf.data.Dataset.from_tensor_slices(TEXTS).batch(2).map(tokenizer.tokenize)
    assert sum((b.to_list() for b in batches), []) == ragged.to_list()
    graph = tf.function(lambda t: tokenizer.detokenize(tokenizer.tokenize(t)))
    assert graph(tf.constant(TEXTS)).numpy().tolist() == text.numpy().tolist()


def _serving_module(tokenizer):
    module = tf.Module()
    module.tokenizer = tokenizer
    module.tokenize = tf.function(lambda t: tokenizer.tokenize(t).to_tensor(),
                                  input_signature=[tf.TensorSpec([None], tf.string)])
    module.detokenize = tf.function(tokenizer.detokenize,
                                    input_signature=[tf.TensorSpec([None, None], tf.int32)])
    return module


def test_every_kind_exports_to_a_saved_model(saved, tmp_path):
    texts = tf.constant(TEXTS)
    for kind, (tokenizer, _) in saved.items():
        tf.saved_model.save(_serving_module(tokenizer), str(tmp_path / kind))
        loaded = tf.saved_model.load(str(tmp_path / kind))
        ids = loaded.tokenize(texts)
        assert ids.numpy().tolist() == tokenizer.tokenize(texts).to_tensor().numpy().tolist(), kind
        assert loaded.detokenize(ids).numpy().tolist() == \
            tokenizer.detokenize(tokenizer.tokenize(texts)).numpy().tolist(), kind


def test_make_tokenizer_from_bare_vocabulary_files(saved):
    wordpiece = make_tokenizer("wordpiece", str(saved["wordpiece"][1] / "vocab.txt"))
    assert wordpiece.fingerprint() == saved["wordpiece"][0].fingerprint()  # uncased defaults
    sentencepiece = make_tokenizer("sentencepiece", str(saved["sentencepiece"][1] /
                                                         "sentencepiece.model"))
    assert sentencepiece.fingerprint() == saved["sentencepiece"][0].fingerprint()
    byte_bpe = make_tokenizer("byte_bpe", str(saved["byte_bpe"][1] / "vocab.json"))
    assert byte_bpe.fingerprint() == saved["byte_bpe"][0].fingerprint()
    assert make_tokenizer("sentencepiece_bpe", str(saved["sentencepiece"][1])).kind == \
        "sentencepiece"


def test_make_tokenizer_errors(saved, tmp_path):
    with pytest.raises(ValueError, match="unknown tokenizer kind 'gpt'"):
        make_tokenizer("gpt", "x")
    with pytest.raises(ValueError, match="byte tokenizer has no vocabulary"):
        make_tokenizer("byte", "vocab.txt")
    with pytest.raises(ValueError, match="wordpiece tokenizer needs a vocabulary path"):
        make_tokenizer("wordpiece")
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        make_tokenizer("wordpiece", str(tmp_path / "nowhere.txt"))
    with pytest.raises(ValueError, match="holds a byte_bpe tokenizer, not wordpiece"):
        make_tokenizer("wordpiece", str(saved["byte_bpe"][1]))


def test_load_tokenizer_errors(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        load_tokenizer(str(tmp_path / "missing_dir"))
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json.*not valid JSON"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text('{"kind": "gpt"}')
    with pytest.raises(ValueError, match="tokenizer.json.*unknown tokenizer kind 'gpt'"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text('{"special_tokens": []}')
    with pytest.raises(ValueError, match="'kind' field"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text('{"kind": "wordpiece", "special_tokens": []}')
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        load_tokenizer(str(tmp_path))
    broken = tmp_path / "broken"
    shutil.copytree(saved["byte_bpe"][1], broken)
    (broken / "merges.txt").unlink()
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        load_tokenizer(str(broken))
    config = json.loads((saved["wordpiece"][1] / "tokenizer.json").read_text())
    (tmp_path / "vocab.txt").write_text((saved["wordpiece"][1] / "vocab.txt").read_text())
    (tmp_path / "tokenizer.json").write_text(json.dumps({**config, "colour": "blue"}))
    with pytest.raises(ValueError, match="tokenizer.json.*colour"):
        load_tokenizer(str(tmp_path))
