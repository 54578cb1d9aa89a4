"""Model FLOPs per token, for tokens/s → TFLOP/s and MFU."""

import tensorflow as tf


def non_embedding_parameters(backbone):
    """Parameters of the blocks and norms: the ones every token multiplies through."""
    total = sum(int(v.numpy().size) for v in backbone.trainable_variables)
    embeddings = backbone.token_embedding.vocabulary_size * backbone.hidden_dim
    if backbone.position_embedding is not None and backbone.position_encoding == "learned":
        embeddings += backbone.max_sequence_length * backbone.hidden_dim
    if backbone.segment_embedding is not None:
        embeddings += backbone.num_segments * backbone.hidden_dim
    return total - embeddings


def training_flops_per_token(backbone, sequence_length, projected_share=1.0):
    """`6N + 12 L H Q T` (PaLM appendix B; nanoGPT's MFU), plus the output projection.

    `N` counts the non-embedding parameters; the output projection
    (`hidden_dim x vocabulary_size`) is a real matmul per predicted token and
    is added as `6 * hidden_dim * vocabulary_size` times `projected_share`, the share of
    the positions it runs on (`Task.projected_share`: all of a causal LM's, a masked
    LM's predicted positions, none for a classifier). `12 L H Q T` is the
    attention score and value products, forward and backward.
    """
    encoder, decoder = getattr(backbone, "encoder", None), getattr(backbone, "decoder", None)
    if encoder is not None and decoder is not None:
        # An encoder-decoder (`Seq2SeqBackbone`), per source token with (an estimate) one
        # target token beside it: the encoder's blocks (no output projection), the decoder's
        # blocks and output projection, and the decoder's cross-attention products over as
        # many source positions. A shared token embedding is left out of both counts.
        cross_attention = (12 * decoder.num_layers * decoder.num_heads * decoder.head_dim
                           * sequence_length)
        return (training_flops_per_token(encoder, sequence_length, projected_share=0.0)
                + training_flops_per_token(decoder, sequence_length, projected_share)
                + cross_attention)
    n = non_embedding_parameters(backbone)
    projection = backbone.hidden_dim * backbone.vocabulary_size
    if not backbone.tie_embeddings:  # an untied output kernel is among the parameters
        n -= projection
    n += projection * projected_share
    attention = 12 * backbone.num_layers * backbone.num_heads * backbone.head_dim * sequence_length
    return 6 * n + attention


# Dense bf16/fp16 peak TFLOP/s per device, by the name TensorFlow reports.
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,  # SXM; the PCIe card peaks at 756
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
    "V100": 125.0,
    "T4": 65.0,
}


def peak_flops_per_device(override_tflops=0.0):
    """Peak FLOP/s of one device: the override, else a known GPU, else None (no MFU on CPU)."""
    if override_tflops:
        return override_tflops * 1e12
    for gpu in tf.config.list_physical_devices("GPU"):
        name = tf.config.experimental.get_device_details(gpu).get("device_name", "")
        for key, tflops in PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12
    return None
