"""SentencePiece (unigram or BPE) tokenizer, in-graph through tf-text's `SentencepieceTokenizer`.

Text is cleaned by `TextCleaner` (NFKC, control characters, whitespace, and
case/accents when `lowercase`), then segmented by the SentencePiece model.
CJK text is not pre-split: the model learns multi-character Chinese pieces.

Round trip: `tflm-vocab` trains models with the identity normalization rule
and byte fallback, so the model sees exactly `normalize(s)` and no character
is unknown: `detokenize(tokenize(s)) == normalize(s)` for every string. A
model trained elsewhere may normalize further inside (e.g. `nmt_nfkc`) or
map characters to its unknown piece; then the round trip holds up to that.
(tf-text's `FastSentencepieceTokenizer` is faster but segments BPE and
byte-fallback models differently from the library, so it is not used.)
"""

import tensorflow as tf
import tensorflow_text as tf_text
from sentencepiece import sentencepiece_model_pb2

from tflm.data import tokenizer_utils
from tflm.data.text_cleaning import TextCleaner, is_cjk_character
from tflm.data.tokenizer import Tokenizer
from tflm.errors import BadFileError, MissingFileError

MODEL_FILE = "sentencepiece.model"
VOCAB_FILE = "sentencepiece.vocab"
WORD_BOUNDARY = "\u2581"  # "▁", SentencePiece's visible space


def read_model(path):
    if not tf.io.gfile.exists(path):
        raise MissingFileError(f"SentencePiece model {path!r} does not exist.")
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


def parse_model(model_proto, source):
    """The `ModelProto` of serialized model bytes; a clear error when they are not one."""
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(model_proto)
    except Exception:  # protobuf raises DecodeError or RuntimeError by implementation
        raise BadFileError(f"{source} is not a SentencePiece model (.model file).") from None
    if not proto.pieces:
        raise BadFileError(f"{source} is not a SentencePiece model: it has no pieces.")
    return proto


class SentencePieceTokenizer(Tokenizer):
    """SentencePiece tokenizer, every method a TF op.

    Args:
        model: path of a `.model` file, or its bytes.
        lowercase: lower-case and strip accents before segmentation.
        nfkc: apply Unicode NFKC first.
        strip_accents: defaults to `lowercase`.
        special_tokens: pieces dropped by `detokenize`; default: the model's
            control and unknown pieces (for `tflm-vocab` models
            `[PAD] [UNK] [CLS] [SEP] [MASK] <|endoftext|>`, ids 0-5).
        clean_whitespace: drop control characters and collapse whitespace runs before
            segmentation; `False` gives the model the text as it is (Hugging Face's Llama
            tokenizer does: its pieces include runs of spaces, tabs and newlines).
        start_token: a special token a causal LM's texts begin with (`Tokenizer`), or None.

    Example:
    >>> tokenizer = SentencePieceTokenizer("sentencepiece.model")
    >>> ids = tokenizer.tokenize(["It is a truth", "床前明月光"])   # RaggedTensor int32
    >>> tokenizer.detokenize(ids)                                 # the same two strings
    """

    kind = "sentencepiece"

    def __init__(self, model, lowercase=False, nfkc=True, strip_accents=None, special_tokens=None,
                 clean_whitespace=True, start_token=None, name="sentencepiece_tokenizer"):
        if isinstance(model, str):
            source = f"SentencePiece model {model!r}"
            model = read_model(model)
        else:
            source = "SentencePiece model bytes"
            model = bytes(model)
        proto = parse_model(model, source)
        types = proto.SentencePiece.Type
        pieces = [p.piece for p in proto.pieces]
        if special_tokens is None:
            special_tokens = [p.piece for p in proto.pieces if p.type in (types.CONTROL, types.UNKNOWN)]
        super().__init__(special_tokens, name=name, start_token=start_token)
        self._model = model
        self._pieces = pieces
        self._ids = {piece: i for i, piece in enumerate(pieces)}
        self._scores = [p.score for p in proto.pieces]
        for token in self.special_tokens:
            if token not in self._ids:
                raise BadFileError(f"{source}: special token {token!r} is not one of its pieces.")
        self.normalization_rule = proto.normalizer_spec.name
        self.cleaner = TextCleaner(nfkc=nfkc, lowercase=lowercase, strip_accents=strip_accents,
                                   remove_control=clean_whitespace,
                                   collapse_whitespace=clean_whitespace)
        self._sentencepiece = tf_text.SentencepieceTokenizer(model, out_type=tf.int32)
        special = set(self.special_tokens)
        self._keep_on_detokenize = tf.constant([p not in special for p in pieces])
        self._word_start_table = tf.constant([
            p in special or p.startswith(WORD_BOUNDARY) or (p[:1] != "" and is_cjk_character(p[0]))
            for p in pieces
        ])

    @classmethod
    def from_directory(cls, directory, **config):
        return cls(tokenizer_utils.vocabulary_path(directory, MODEL_FILE), **config)

    def config(self):
        config = {
            "lowercase": self.cleaner.lowercase,
            "nfkc": self.cleaner.nfkc,
            "strip_accents": self.cleaner.strip_accents,
        }
        if not self.cleaner.collapse_whitespace:  # only when set: fingerprints stay as they were
            config["clean_whitespace"] = False
        return config

    # -- Vocabulary. -------------------------------------------------------------------
    @property
    def vocabulary_size(self):
        return len(self._pieces)

    def get_vocabulary(self):
        return list(self._pieces)

    def token_to_id(self, token):
        try:
            return self._ids[token]
        except KeyError:
            raise KeyError(f"{token!r} is not a piece of the SentencePiece model.") from None

    def id_to_token(self, token_id):
        token_id = int(token_id)
        if not 0 <= token_id < len(self._pieces):
            raise KeyError(f"id {token_id} is outside the vocabulary (size {len(self._pieces)}).")
        return self._pieces[token_id]

    @property
    def model_proto(self):
        """The serialized SentencePiece model."""
        return self._model

    def _vocabulary_contents(self):
        return [self._model]

    def _save_vocabulary(self, directory):
        with tf.io.gfile.GFile(f"{directory}/{MODEL_FILE}", "wb") as f:
            f.write(self._model)
        # The same readable listing SentencePiece's trainer writes: piece <tab> score.
        tokenizer_utils.write_text_file(
            f"{directory}/{VOCAB_FILE}",
            "".join(f"{p}\t{s:g}\n" for p, s in zip(self._pieces, self._scores)),
        )

    # -- Text. -------------------------------------------------------------------------
    def normalize(self, inputs):
        return self.cleaner(inputs)

    def tokenize(self, inputs):
        """Strings `(batch,)` → RaggedTensor `(batch, None)` int32; a scalar → `(None,)`."""
        return self._sentencepiece.tokenize(self.cleaner(inputs))

    def detokenize(self, ids):
        """Ids → text, special tokens dropped; byte pieces are reassembled into characters."""
        ragged, rank_1 = tokenizer_utils.to_ragged_batch(ids)
        ragged = tokenizer_utils.drop_ids(ragged, self._keep_on_detokenize)
        text = self._sentencepiece.detokenize(ragged)
        return text[0] if rank_1 else text

    def word_starts(self, ids):
        """True for pieces that start with "▁", begin with a CJK character, or are special."""
        return tokenizer_utils.gather_per_id(self._word_start_table, ids)
