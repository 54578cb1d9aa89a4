"""Tokenizing a dataset of documents in batches (one op call for many documents)."""

import tensorflow as tf

# Documents tokenized per op call: amortizes per-op overhead (the byte-level BPE's merge loop
# runs once a call, for the call's distinct words). GPT-2-sized BPE on Austen's paragraphs,
# one core: 256 takes ~1.1x fewer CPU seconds than 64 (tools/benchmark_tokenize.py).
TOKENIZE_BATCH = 256
# tflm-prepare's batches: nothing waits on the first one, so larger.
PREPARE_BATCH = 2048


def tokenize_documents(documents, tokenizer, stats=None, batched=False,
                       batch_size=TOKENIZE_BATCH):
    """Dataset of document strings → dataset of 1-D int32 token tensors.

    With `batched=True` the elements are the tokenizer's ragged `(n, None)`
    batches of up to `batch_size` documents instead (same documents, same
    order): `pack_token_stream` and the `*_lm_batches` functions take either,
    and batches skip a per-document step (about 25 us a document).
    """

    @tf.autograph.experimental.do_not_convert
    def tokenize(batch):
        ids = tokenizer.tokenize(batch)
        if stats is not None:
            stats.add("tokens", tf.size(ids.flat_values))
        return ids

    tokens = documents.batch(batch_size).map(tokenize, num_parallel_calls=tf.data.AUTOTUNE,
                                             deterministic=True)
    return tokens if batched else tokens.unbatch()
