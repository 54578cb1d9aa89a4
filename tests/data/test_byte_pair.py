import json

import pytest
import tensorflow as tf

from tflm.data import BytePairTokenizer, default_corpus_path
from tflm.data.byte_pair import bytes_to_unicode
from tflm.data.vocab_training import train_byte_bpe

# Cases where GPT-2's regex (look-ahead on whitespace, Unicode \s, contractions) is subtle.
EDGE = [
    "Hello world", "a  b", "a\n\nb", "a \nb", "a\n b", "trailing  ", " leading", "   ", "",
    "don't 's I'm we'll they've you'd 'S", "x\u00a0\u00a0y z\u3000\u3000w", "tab\tand\r\nend  \n",
    "1234 5678.90 3.14e-10", "It's   'quoted'  (parens) [brackets] {braces}", "--- *** !!!",
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。", "中文 English 混合 text",
    "emoji 🙂👍🏽 👨‍👩‍👧 flags 🇫🇷", "Café naïve Ångström Ελληνικά русский עברית",
    "\u2028line\u2029para\x85nel\x0bvt\x0cff", "zero\u200bwidth\ufeffbom",
]


def _corpus(limit_chars=None):
    with open(default_corpus_path(), encoding="utf-8") as f:
        return f.read(limit_chars) if limit_chars else f.read()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    directory = tmp_path_factory.mktemp("byte_bpe")
    return train_byte_bpe(default_corpus_path(), 1000, str(directory)), directory


@pytest.fixture(scope="module")
def tokenizer(trained):
    return trained[0]


@pytest.fixture(scope="module")
def reference(trained):
    from tokenizers import ByteLevelBPETokenizer

    directory = trained[1]
    return ByteLevelBPETokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))


def _assert_matches(tokenizer, reference, texts):
    ragged = tokenizer.tokenize(texts)
    ids = ragged.to_list()
    expected = [e.ids for e in reference.encode_batch(texts)]
    mismatches = [(t, a, b) for t, a, b in zip(texts, ids, expected) if a != b]
    assert not mismatches, mismatches[:3]
    back = tokenizer.detokenize(ragged)
    assert [b.decode("utf-8") for b in back.numpy()] == list(texts)  # exact round trip
    return ids


def test_matches_hugging_face_byte_level_bpe_on_edge_cases(tokenizer, reference):
    _assert_matches(tokenizer, reference, EDGE)


def test_word_cache_gives_the_merge_loops_ids(trained, tokenizer):
    """Words found in the cache skip the merge loop; a batch mixes found and missed words."""
    directory = trained[1]
    files = (str(directory / "vocab.json"), str(directory / "merges.txt"))
    lines = _corpus(200_000).split("\n") + EDGE
    expected = BytePairTokenizer(*files, word_cache_size=0).tokenize(lines).to_list()
    for size in (300, None):  # some of the vocabulary's words, and all of them
        options = {} if size is None else {"word_cache_size": size}
        cached = BytePairTokenizer(*files, **options)
        assert cached._word_cache is not None
        assert cached.tokenize(lines).to_list() == expected
    assert tokenizer.tokenize([" the", ""]).to_list() == [[tokenizer.token_to_id("Ġthe")], []]
    assert tokenizer.tokenize(tf.constant([], tf.string)).to_list() == []


def test_building_sets_no_item_of_a_tracked_list(trained, monkeypatch):
    """tf.Module tracks list attributes and copies the whole list on each item set: filling
    the token list that way took ~30 s for GPT-2's 50k tokens."""
    from tensorflow.python.trackable import data_structures

    item_sets = []
    original = data_structures.ListWrapper.__setitem__
    monkeypatch.setattr(data_structures.ListWrapper, "__setitem__",
                        lambda self, *args: item_sets.append(1) or original(self, *args))
    directory = trained[1]
    BytePairTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    assert not item_sets


def test_long_runs_merge_in_few_steps_and_match(tokenizer, reference):
    """Each step merges every occurrence of a word's best pair, as GPT-2 does: long runs of
    one character take a logarithmic number of steps, not one per merge."""
    runs = ["x" + " " * 100_000 + "y", "=" * 50_000, "ab" * 50_000, "\n" * 10_000 + "end"]
    _assert_matches(tokenizer, reference, runs)


def test_matches_hugging_face_on_embedded_corpus(tokenizer, reference):
    text = _corpus()
    lines = text.split("\n")
    ids = _assert_matches(tokenizer, reference, lines)
    assert sum(map(len, ids)) > 100_000
    # Whole chunks: newlines, blank-line runs and indentation inside one string.
    chunks = [text[i:i + 20_000] for i in range(0, 100_000, 20_000)]
    _assert_matches(tokenizer, reference, chunks)


def test_matches_hugging_face_on_real_english_and_tweets(tokenizer, reference, shared_data):
    with open(shared_data / "austen_6novels.txt", encoding="utf-8") as f:
        austen = f.read()
    _assert_matches(tokenizer, reference, [austen[i:i + 50_000] for i in range(0, len(austen), 400_000)])
    with open(shared_data / "en_tweet_sentiment.jsonl", encoding="utf-8") as f:
        tweets = [json.loads(line)["text"] for _, line in zip(range(3000), f)]
    tweets = [t for t in tweets if "<|endoftext|>" not in t]  # tokenizers would match it as special
    _assert_matches(tokenizer, reference, tweets)


def test_invalid_utf8_round_trips_to_its_repair(tokenizer):
    raw = [b"caf\xc3", b"\xff\xfe bad bytes", b"ok"]
    ids = tokenizer.tokenize(raw)
    assert tokenizer.detokenize(ids).numpy().tolist() == tokenizer.normalize(raw).numpy().tolist()
    assert tokenizer.normalize(raw).numpy().tolist() == [
        "caf\ufffd".encode(), "\ufffd\ufffd bad bytes".encode(), b"ok"]


def test_files_are_gpt2_formats(trained):
    tokenizer, directory = trained
    vocabulary = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
    assert vocabulary == {t: i for i, t in enumerate(tokenizer.get_vocabulary())}
    assert vocabulary["<|endoftext|>"] == 0 and vocabulary["Ġ"] == vocabulary["Ġ"]
    merges = (directory / "merges.txt").read_text(encoding="utf-8").split("\n")
    assert merges[0] == "#version: 0.2" and merges[-1] == ""
    assert len(merges) - 2 == len(tokenizer.merges) == 1000 - 257
    assert all(len(line.split(" ")) == 2 for line in merges[1:-1])


def test_gpt2_layout_end_of_text_last_no_header_crlf(tokenizer, tmp_path):
    """GPT-2's own files put <|endoftext|> last (50256) and may lack the version line."""
    from tokenizers import ByteLevelBPETokenizer

    tokens = [t for t in tokenizer.get_vocabulary() if t != "<|endoftext|>"] + ["<|endoftext|>"]
    (tmp_path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    with open(tmp_path / "merges.txt", "w", encoding="utf-8", newline="") as f:
        f.write("".join(f"{a} {b}\r\n" for a, b in tokenizer.merges))
    gpt2 = BytePairTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    assert gpt2.end_of_text_id == gpt2.vocabulary_size - 1 == 999
    reference = ByteLevelBPETokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    _assert_matches(gpt2, reference, EDGE + _corpus(30_000).split("\n"))


def test_pre_tokenize_is_gpt2_word_split(tokenizer):
    from tokenizers import pre_tokenizers

    split = pre_tokenizers.ByteLevel(add_prefix_space=False)
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    for text in EDGE:
        ours = [w.decode("utf-8") for w in tokenizer.pre_tokenize(text).numpy()]
        theirs = [bytes(byte_of[c] for c in w).decode("utf-8")
                  for w, _ in split.pre_tokenize_str(text)]
        assert ours == theirs, text


def test_special_tokens_shapes_and_detokenize(tokenizer):
    assert tokenizer.special_tokens == ("<|endoftext|>",)
    assert tokenizer.end_of_text_id == 0 and tokenizer.special_ids == [0]
    assert tokenizer.pad_id is None and tokenizer.mask_id is None
    assert tokenizer.vocabulary_size == 1000
    texts = ["It is a truth", "", "universally acknowledged"]
    ragged = tokenizer.tokenize(texts)
    assert isinstance(ragged, tf.RaggedTensor) and ragged.dtype == tf.int32
    scalar = tokenizer.tokenize(texts[0])
    assert isinstance(scalar, tf.Tensor) and scalar.numpy().tolist() == ragged[0].numpy().tolist()
    eot = tokenizer.end_of_text_id
    joined = tf.concat([scalar, [eot], ragged[2], [eot]], 0)
    assert tokenizer.detokenize(joined).numpy() == b"It is a truthuniversally acknowledged"
    dense = ragged.to_tensor(default_value=eot)
    assert tokenizer.detokenize(dense).numpy().tolist() == [t.encode() for t in texts]
    # The special token's text inside a document is ordinary text (GPT-2's encoder does the same).
    assert eot not in tokenizer.tokenize("a <|endoftext|> b").numpy().tolist()
    for token_id in (0, 1, 300, 999):
        assert tokenizer.token_to_id(tokenizer.id_to_token(token_id)) == token_id
    assert tokenizer.token_bytes(tokenizer.token_to_id("Ġ")) == b" "


def test_word_starts(tokenizer):
    text = "Elizabeth walked,\nquickly  home. 中文"
    ids = tokenizer.tokenize(text)
    raw = [tokenizer.token_bytes(i) for i in ids.numpy()]
    starts = tokenizer.word_starts(ids).numpy().tolist()
    previous = [b"\n"] + raw[:-1]
    expected = [r[:1] in (b" ", b"\n") or p[-1:] == b"\n" for r, p in zip(raw, previous)]
    assert starts == expected
    words = b"".join(b"|" + r if s else r for r, s in zip(raw, starts)).split(b"|")[1:]
    assert words == [b"Elizabeth", b" walked,", b"\n", b"quickly", b" ", b" home.", b" \xe4\xb8\xad\xe6\x96\x87"]
    batch = tokenizer.tokenize([text, "x y"])
    assert tokenizer.word_starts(batch).to_list()[0] == starts
    dense = batch.to_tensor()
    assert tokenizer.word_starts(dense).numpy()[0, : len(starts)].tolist() == starts


def test_works_in_tf_data_and_tf_function(tokenizer):
    texts = ["It is a truth", "universally acknowledged"]
    expected = tokenizer.tokenize(texts).to_list()
    dataset = tf.data.Dataset.from_tensor_slices(texts).map(tokenizer.tokenize)
    assert [d.tolist() for d in dataset.as_numpy_iterator()] == expected
    batched = tf.data.Dataset.from_tensor_slices(texts).batch(2).map(tokenizer.tokenize)
    assert next(iter(batched)).to_list() == expected
    round_trip = tf.function(lambda t: tokenizer.detokenize(tokenizer.tokenize(t)))
    assert round_trip(tf.constant(texts)).numpy().tolist() == [t.encode() for t in texts]


def test_bad_files_are_clear_errors(tokenizer, tmp_path):
    vocabulary = {t: i for i, t in enumerate(tokenizer.get_vocabulary())}
    vocab_path = tmp_path / "vocab.json"
    vocab_path.write_text(json.dumps(vocabulary))
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        BytePairTokenizer(str(vocab_path), str(tmp_path / "merges.txt"))
    bad_merge = tmp_path / "bad_merges.txt"
    bad_merge.write_text("#version: 0.2\nĠ t\nnot_a_token also_not\n")
    with pytest.raises(ValueError, match=r"bad_merges.txt.*rule 2"):
        BytePairTokenizer(str(vocab_path), str(bad_merge))
    malformed = tmp_path / "malformed.txt"
    malformed.write_text("#version: 0.2\nĠ t extra\n")
    with pytest.raises(ValueError, match="malformed.txt' line 2"):
        BytePairTokenizer(str(vocab_path), str(malformed))
    no_bytes = tmp_path / "no_bytes.json"
    no_bytes.write_text(json.dumps({"<|endoftext|>": 0, "a": 1}))
    with pytest.raises(ValueError, match="no_bytes.json.*all 256"):
        BytePairTokenizer(str(no_bytes), [])
    gap = tmp_path / "gap.json"
    gap.write_text(json.dumps({**vocabulary, "extra": 5000}))
    with pytest.raises(ValueError, match="gap.json.*ids must be 0..1000"):
        BytePairTokenizer(str(gap), [])
    not_json = tmp_path / "not.json"
    not_json.write_text("{oops")
    with pytest.raises(ValueError, match="not.json.*not valid JSON"):
        BytePairTokenizer(str(not_json), [])


def test_ignore_merges_takes_a_word_that_is_a_token_whole():
    # Merges by rank make "abc" into "a" + "bc"; with ignore_merges (Llama 3) it is "abc".
    tokens = list(bytes_to_unicode().values()) + ["bc", "ab", "abc"]
    vocabulary = {t: i for i, t in enumerate(tokens)}
    merges = [("b", "c"), ("a", "b"), ("ab", "c")]
    plain = BytePairTokenizer(vocabulary, merges, special_tokens=())
    whole = BytePairTokenizer(vocabulary, merges, special_tokens=(), ignore_merges=True)
    texts = ["abc abc", "xabc"]
    def ids(*words):
        return [[vocabulary[t] for t in word] for word in words]

    assert plain.tokenize(texts).to_list() == ids(("a", "bc", "Ġ", "a", "bc"), ("x", "a", "bc"))
    assert whole.tokenize(texts).to_list() == ids(("abc", "Ġ", "a", "bc"), ("x", "a", "bc"))
