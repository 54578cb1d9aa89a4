"""Tokenizing a dataset of documents in batches (one op call for many documents)."""

import tensorflow as tf

TOKENIZE_BATCH = 64  # documents tokenized per op call: amortizes per-op overhead


def tokenize_documents(documents, tokenizer, stats=None, batched=False):
    """Dataset of document strings → dataset of 1-D int32 token tensors.

    With `batched=True` the elements are the tokenizer's ragged `(n, None)`
    batches of up to `TOKENIZE_BATCH` documents instead (same documents, same
    order): `pack_token_stream` and the `*_lm_batches` functions take either,
    and batches skip a per-document step (about 25 us a document).
    """

    def tokenize(batch):
        ids = tokenizer.tokenize(batch)
        if stats is not None:
            stats.add("tokens", tf.size(ids.flat_values))
        return ids

    tokens = documents.batch(TOKENIZE_BATCH).map(tokenize, num_parallel_calls=tf.data.AUTOTUNE,
                                                 deterministic=True)
    return tokens if batched else tokens.unbatch()
