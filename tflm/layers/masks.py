"""Attention masks: padding, causal, document, and their combination.

Masks are boolean, `True` where a query may attend to a key. They broadcast
to `(batch, query_length, key_length)`.
"""

from keras import ops


def causal_mask(query_length, key_length, start_index=0, sliding_window=0):
    """`(query_length, key_length)` mask: query `i` sees keys `<= start_index + i`
    (and, with a `sliding_window` W > 0, only the last W of them: keys
    `> start_index + i - W`, as Mistral's).

    `start_index` is the position of the first query among the keys; with a
    key/value cache the keys span the whole cache and the queries are the new
    tokens written at `start_index`. Distances are between indices: in a
    left-padded row they equal the distances between its real tokens.
    """
    query_positions = ops.arange(query_length)[:, None] + start_index
    key_positions = ops.arange(key_length)[None, :]
    mask = ops.greater_equal(query_positions, key_positions)
    if sliding_window:
        mask = ops.logical_and(mask, ops.less(query_positions - key_positions, sliding_window))
    return mask


def document_mask(document_ids):
    """`(batch, T, T)` mask: a token sees only the tokens of its own document.

    `document_ids` `(batch, T)` numbers the documents packed into each row; with the
    causal mask this is the block-diagonal causal mask of a packed row.
    """
    return ops.equal(document_ids[:, :, None], document_ids[:, None, :])


def merge_attention_masks(
    query_length,
    key_length,
    padding_mask=None,
    attention_mask=None,
    use_causal_mask=False,
    start_index=0,
    sliding_window=0,
):
    """Combines the masks that are given into one boolean mask, or `None`.

    Args:
        query_length, key_length: sizes of the score matrix.
        padding_mask: `(batch, key_length)`, nonzero at real tokens.
        attention_mask: `(batch, query_length, key_length)` explicit mask.
        use_causal_mask: whether to add the causal mask.
        start_index: position of the first query among the keys.
        sliding_window: with the causal mask, how many of the latest keys a
            query sees (itself included); 0: all.

    Returns:
        A boolean tensor broadcastable to `(batch, query_length, key_length)`,
        or `None` when every query may attend to every key.
    """
    mask = None
    if padding_mask is not None:
        mask = ops.cast(padding_mask, "bool")[:, None, :]
    if attention_mask is not None:
        attention_mask = ops.cast(attention_mask, "bool")
        mask = attention_mask if mask is None else ops.logical_and(mask, attention_mask)
    if use_causal_mask:
        causal = causal_mask(query_length, key_length, start_index,
                             sliding_window)[None, :, :]
        mask = causal if mask is None else ops.logical_and(mask, causal)
    return mask
