"""Byte-level tokenizer: UTF-8 bytes as ids, in-graph, no vocabulary file."""

import tensorflow as tf

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<|endoftext|>")


class ByteTokenizer(tf.Module):
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

    special_tokens = SPECIAL_TOKENS
    byte_offset = len(SPECIAL_TOKENS)

    def __init__(self, name="byte_tokenizer"):
        super().__init__(name=name)
        # Byte value -> one-byte string, for detokenization by gather + join.
        self._byte_strings = tf.constant([bytes([b]) for b in range(256)])

    @property
    def vocabulary_size(self):
        return self.byte_offset + 256

    def token_to_id(self, token):
        return self.special_tokens.index(token)

    @property
    def pad_id(self):
        return self.token_to_id("[PAD]")

    @property
    def cls_id(self):
        return self.token_to_id("[CLS]")

    @property
    def sep_id(self):
        return self.token_to_id("[SEP]")

    @property
    def mask_id(self):
        return self.token_to_id("[MASK]")

    @property
    def end_of_text_id(self):
        return self.token_to_id("<|endoftext|>")

    @property
    def special_ids(self):
        return list(range(self.byte_offset))

    def tokenize(self, inputs):
        """Strings `(batch,)` → RaggedTensor `(batch, None)` int32; a scalar → `(None,)`."""
        inputs = tf.convert_to_tensor(inputs, dtype=tf.string)
        chars = tf.strings.bytes_split(inputs)
        if isinstance(chars, tf.RaggedTensor):
            values = self._bytes_to_ids(chars.flat_values)
            return chars.with_flat_values(values)
        return self._bytes_to_ids(chars)

    def _bytes_to_ids(self, one_byte_strings):
        values = tf.io.decode_raw(one_byte_strings, tf.uint8)  # (n, 1)
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
