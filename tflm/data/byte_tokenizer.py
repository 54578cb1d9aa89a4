"""Byte-level tokenizer: UTF-8 bytes as ids, in-graph, no vocabulary file."""

import tensorflow as tf

from tflm.data.tokenizer import Tokenizer

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<|endoftext|>")


class ByteTokenizer(Tokenizer):
    """Maps text to its UTF-8 bytes, offset past a few special tokens.

    Ids `0..5` are `[PAD] [UNK] [CLS] [SEP] [MASK] <|endoftext|>`; byte `b`
    is id `b + 6`, so the vocabulary has 262 ids. Every string tokenizes (no
    unknown tokens) and `detokenize(tokenize(s)) == s` for any bytes. All
    methods are TensorFlow ops, usable inside `tf.data` and a SavedModel.

    Example:
    >>> tokenizer = ByteTokenizer()
    >>> ids = tokenizer.tokenize(["héllo", "a"])    # RaggedTensor of int32
    >>> tokenizer.detokenize(ids)                     # [b"h\\xc3\\xa9llo", b"a"]
    """

    kind = "byte"
    byte_offset = len(SPECIAL_TOKENS)

    def __init__(self, special_tokens=SPECIAL_TOKENS, name="byte_tokenizer"):
        if tuple(special_tokens) != SPECIAL_TOKENS:
            raise ValueError(f"ByteTokenizer has the fixed special tokens {SPECIAL_TOKENS}.")
        super().__init__(SPECIAL_TOKENS, name=name)
        # Byte value -> one-byte string, for detokenization by gather + join.
        self._byte_strings = tf.constant([bytes([b]) for b in range(256)])

    @property
    def vocabulary_size(self):
        return self.byte_offset + 256

    def token_to_id(self, token):
        if token in self.special_tokens:
            return self.special_tokens.index(token)
        raw = token.encode("utf-8") if isinstance(token, str) else bytes(token)
        if len(raw) != 1:
            raise KeyError(f"{token!r} is not a single byte or a special token.")
        return raw[0] + self.byte_offset

    def id_to_token(self, token_id):
        token_id = int(token_id)
        if token_id < self.byte_offset:
            return self.special_tokens[token_id]
        return bytes([token_id - self.byte_offset])

    def _vocabulary_contents(self):
        return []

    def _save_vocabulary(self, directory):
        del directory  # the vocabulary is the 256 byte values: nothing to write

    def tokenize(self, inputs):
        """Strings `(batch,)` → RaggedTensor `(batch, None)` int32; a scalar → `(None,)`."""
        inputs = tf.convert_to_tensor(inputs, dtype=tf.string)
        if inputs.shape.rank == 0:
            return self._bytes_to_ids(inputs)
        # One decode of the joined batch, then rows by length: no per-byte strings.
        flat = tf.reshape(inputs, [-1])
        ids = tf.RaggedTensor.from_row_lengths(
            self._bytes_to_ids(tf.strings.reduce_join(flat)),
            tf.cast(tf.strings.length(flat), tf.int64),
        )
        return ids if inputs.shape.rank == 1 else tf.RaggedTensor.from_uniform_row_length(
            ids, tf.shape(inputs)[-1]
        )

    def _bytes_to_ids(self, text):
        values = tf.io.decode_raw(text, tf.uint8)
        return tf.cast(tf.reshape(values, [-1]), tf.int32) + self.byte_offset

    def detokenize(self, ids):
        """Ids (dense or ragged, rank 1 or 2) → strings; special tokens are dropped."""
        if not isinstance(ids, tf.RaggedTensor):
            ids = tf.convert_to_tensor(ids)
            if ids.shape.rank == 1:
                return tf.squeeze(self.detokenize(ids[tf.newaxis]), 0)
            ids = tf.RaggedTensor.from_tensor(ids)
        ids = tf.cast(ids, tf.int32)
        ids = tf.ragged.boolean_mask(ids, ids >= self.byte_offset)
        pieces = tf.gather(self._byte_strings, ids - self.byte_offset)
        return tf.strings.reduce_join(pieces, axis=-1)

    def word_starts(self, ids):
        """A word is a run of non-space ASCII bytes, or one multi-byte character.

        True at: whitespace bytes, special tokens, the lead byte of a multi-byte
        UTF-8 character, and an ASCII byte after whitespace, a special token or
        a multi-byte character. Works on the last axis of dense or ragged ids.
        """
        if isinstance(ids, tf.RaggedTensor):
            values = ids.values
            first = tf.cast(ids.row_starts(), tf.int32)
            first = tf.boolean_mask(first, first < tf.size(values))  # skip empty trailing rows
            row_start = tf.tensor_scatter_nd_update(
                tf.zeros_like(values, tf.bool), first[:, None], tf.ones_like(first, tf.bool)
            )
            return ids.with_values(self._word_starts_1d(values, row_start))
        ids = tf.convert_to_tensor(ids)
        if ids.shape.rank == 1:
            return self._word_starts_1d(ids, tf.zeros_like(ids, tf.bool))
        flat = tf.reshape(ids, [-1])
        row_start = tf.equal(tf.range(tf.size(flat)) % tf.shape(ids)[-1], 0)
        return tf.reshape(self._word_starts_1d(flat, row_start), tf.shape(ids))

    def _word_starts_1d(self, ids, row_start):
        byte = ids - self.byte_offset
        special = ids < self.byte_offset
        space = (byte == 32) | ((byte >= 9) & (byte <= 13))
        continuation = (byte >= 0x80) & (byte < 0xC0)
        lead = byte >= 0xC0
        boundary = special | space | lead | continuation  # tokens after which ASCII starts a word
        previous_boundary = tf.concat([[True], boundary[:-1]], axis=0) | row_start
        ascii_start = (~special) & (~space) & (byte < 0x80) & previous_boundary
        return special | space | lead | ascii_start
