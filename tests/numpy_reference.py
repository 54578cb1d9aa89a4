"""Plain NumPy implementations of the formulas, the ground truth of the numerics tests.

Written for clarity, not speed: loops over heads, float64 throughout. The
BERT and GPT-2 forwards take parameters named and laid out exactly as in
Hugging Face checkpoints (torch `Linear` weights are `(out, in)`, GPT-2
`Conv1D` weights are `(in, out)`).
"""

import math

import numpy as np


def layer_norm(x, gamma, beta, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def rms_norm(x, scale, eps):
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * scale


_erf = np.vectorize(math.erf)


def gelu(x):
    """Exact GELU: x * Phi(x), Phi the standard normal CDF (BERT)."""
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def gelu_tanh(x):
    """The tanh approximation of GELU (GPT-2's gelu_new)."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def silu(x):
    return x / (1.0 + np.exp(-x))


def softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def attention(q, k, v, mask=None):
    """One head: softmax(q k^T / sqrt(d_k)) v. q (T, d), k and v (S, d), mask (T, S) bool."""
    scores = q @ k.T / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = np.where(mask, scores, -1e30)
    return softmax(scores) @ v


def _attention_heads(q, k, v, num_heads, mask):
    """q (B, T, H*d), k and v (B, S, H*d), mask (B, T, S) bool or None: heads concatenated."""
    batch, length, inner = q.shape
    head_dim = inner // num_heads
    out = np.zeros((batch, length, inner))
    for b in range(batch):
        for h in range(num_heads):
            s = slice(h * head_dim, (h + 1) * head_dim)
            m = None if mask is None else mask[b]
            out[b, :, s] = attention(q[b, :, s], k[b, :, s], v[b, :, s], m)
    return out


def multi_head_attention(x, w_qkv, b_qkv, w_o, b_o, num_heads, mask=None,
                         num_key_value_heads=None):
    """x (B, T, D); w_qkv (D, (H + 2*K)*d) laid out [Q|K|V]; mask (B, T, T) bool or None.

    With K = `num_key_value_heads` < H (grouped-query attention), each key/value head is
    repeated for its H / K query heads (Hugging Face's `repeat_kv`): multi-head attention
    over the repeated heads."""
    kv_heads = num_key_value_heads or num_heads
    head_dim = w_qkv.shape[1] // (num_heads + 2 * kv_heads)
    inner, kv_inner = num_heads * head_dim, kv_heads * head_dim
    qkv = x @ w_qkv + b_qkv
    q, k, v = qkv[..., :inner], qkv[..., inner:inner + kv_inner], qkv[..., inner + kv_inner:]
    k, v = (repeat_key_value_heads(t, num_heads // kv_heads, head_dim) for t in (k, v))
    return _attention_heads(q, k, v, num_heads, mask) @ w_o + b_o


def repeat_key_value_heads(t, groups, head_dim):
    """(B, S, K*d) -> (B, S, K*groups*d): each head repeated `groups` times in place."""
    batch, length, _ = t.shape
    heads = t.reshape(batch, length, -1, 1, head_dim)
    return np.repeat(heads, groups, axis=3).reshape(batch, length, -1)


def rotary(x, positions, theta=10000.0, layout="half"):
    """x (B, T, H, d) rotated by RoPE at `positions` (T,): pair i is channels (i, i + d/2)
    (`"half"`, Hugging Face's rotate_half) or (2i, 2i + 1) (`"interleaved"`), turned by
    `position * theta^(-2i/d)`."""
    d = x.shape[-1]
    angles = np.asarray(positions, np.float64)[:, None] * theta ** (-np.arange(0, d, 2) / d)
    cos, sin = np.cos(angles)[None, :, None], np.sin(angles)[None, :, None]
    if layout == "half":
        a, b = x[..., : d // 2], x[..., d // 2 :]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = a * cos - b * sin, b * cos + a * sin
    return out


def sliding_window_causal_mask(length, window):
    """(T, T) bool: query i sees keys j with i - window < j <= i (window 0: all j <= i)."""
    i, j = np.arange(length)[:, None], np.arange(length)[None, :]
    return (j <= i) & ((i - j < window) if window else True)


def cross_attention(x, context, w_q, b_q, w_kv, b_kv, w_o, b_o, num_heads, mask=None):
    """x (B, T, D) queries over context (B, S, C); w_kv (C, 2*H*d) laid out [K|V];
    mask (B, T, S) bool or None."""
    inner = w_q.shape[1]
    kv = context @ w_kv + b_kv
    k, v = kv[..., :inner], kv[..., inner:]
    return _attention_heads(x @ w_q + b_q, k, v, num_heads, mask) @ w_o + b_o


def feed_forward(x, w1, b1, w2, b2, activation):
    h = x @ w1 + b1
    if activation == "relu":
        h = np.maximum(0.0, h)
    elif activation == "gelu":
        h = gelu(h)
    elif activation == "gelu_tanh":
        h = gelu_tanh(h)
    elif activation == "swiglu":
        gate, up = np.split(h, 2, axis=-1)
        h = silu(gate) * up
    elif activation == "geglu":
        gate, up = np.split(h, 2, axis=-1)
        h = gelu_tanh(gate) * up
    return h @ w2 + b2


def sinusoidal_encoding(length, dim, max_wavelength=10000.0):
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d))."""
    pe = np.zeros((length, dim))
    for pos in range(length):
        for i in range(0, dim, 2):
            angle = pos / max_wavelength ** (i / dim)
            pe[pos, i] = math.sin(angle)
            if i + 1 < dim:
                pe[pos, i + 1] = math.cos(angle)
    return pe


def _linear(x, params, name):
    """torch.nn.Linear: y = x W^T + b, W (out, in)."""
    return x @ params[name + ".weight"].T + params[name + ".bias"]


def bert_forward(params, config, input_ids, token_type_ids=None, attention_mask=None):
    """Hugging Face `BertModel` forward: (sequence_output, pooled_output)."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    batch, length = input_ids.shape
    if token_type_ids is None:
        token_type_ids = np.zeros_like(input_ids)
    if attention_mask is None:
        attention_mask = np.ones_like(input_ids)
    eps = config["layer_norm_eps"]
    heads = config["num_attention_heads"]
    x = (
        p["embeddings.word_embeddings.weight"][input_ids]
        + p["embeddings.position_embeddings.weight"][np.arange(length)][None]
        + p["embeddings.token_type_embeddings.weight"][token_type_ids]
    )
    x = layer_norm(x, p["embeddings.LayerNorm.weight"], p["embeddings.LayerNorm.bias"], eps)
    key_mask = attention_mask.astype(bool)[:, None, :].repeat(length, axis=1)
    hidden = x.shape[-1]
    head_dim = hidden // heads
    for i in range(config["num_hidden_layers"]):
        pre = f"encoder.layer.{i}."
        q = _linear(x, p, pre + "attention.self.query")
        k = _linear(x, p, pre + "attention.self.key")
        v = _linear(x, p, pre + "attention.self.value")
        context = np.zeros_like(x)
        for b in range(batch):
            for h in range(heads):
                s = slice(h * head_dim, (h + 1) * head_dim)
                context[b, :, s] = attention(q[b, :, s], k[b, :, s], v[b, :, s], key_mask[b])
        attn = _linear(context, p, pre + "attention.output.dense")
        x = layer_norm(
            attn + x,
            p[pre + "attention.output.LayerNorm.weight"],
            p[pre + "attention.output.LayerNorm.bias"],
            eps,
        )
        h = gelu(_linear(x, p, pre + "intermediate.dense"))
        x = layer_norm(
            _linear(h, p, pre + "output.dense") + x,
            p[pre + "output.LayerNorm.weight"],
            p[pre + "output.LayerNorm.bias"],
            eps,
        )
    pooled = np.tanh(_linear(x[:, 0], p, "pooler.dense"))
    return x, pooled


def bert_mlm_logits(params, config, sequence_output):
    """`BertForMaskedLM` head on hidden states: transform, LayerNorm, tied decoder + bias."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    h = gelu(_linear(sequence_output, p, "cls.predictions.transform.dense"))
    h = layer_norm(
        h,
        p["cls.predictions.transform.LayerNorm.weight"],
        p["cls.predictions.transform.LayerNorm.bias"],
        config["layer_norm_eps"],
    )
    return h @ p["embeddings.word_embeddings.weight"].T + p["cls.predictions.bias"]


def gpt2_forward(params, config, input_ids, attention_mask=None):
    """Hugging Face `GPT2Model` forward (after ln_f) and the tied LM logits."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    batch, length = input_ids.shape
    eps = config["layer_norm_epsilon"]
    heads = config["n_head"]
    if attention_mask is None:
        attention_mask = np.ones_like(input_ids)
    causal = np.tril(np.ones((length, length), bool))
    mask = causal[None] & attention_mask.astype(bool)[:, None, :]
    x = p["wte.weight"][input_ids] + p["wpe.weight"][np.arange(length)][None]
    hidden = x.shape[-1]
    head_dim = hidden // heads
    for i in range(config["n_layer"]):
        pre = f"h.{i}."
        a = layer_norm(x, p[pre + "ln_1.weight"], p[pre + "ln_1.bias"], eps)
        qkv = a @ p[pre + "attn.c_attn.weight"] + p[pre + "attn.c_attn.bias"]
        q, k, v = np.split(qkv, 3, axis=-1)
        context = np.zeros_like(x)
        for b in range(batch):
            for h in range(heads):
                s = slice(h * head_dim, (h + 1) * head_dim)
                context[b, :, s] = attention(q[b, :, s], k[b, :, s], v[b, :, s], mask[b])
        x = x + context @ p[pre + "attn.c_proj.weight"] + p[pre + "attn.c_proj.bias"]
        m = layer_norm(x, p[pre + "ln_2.weight"], p[pre + "ln_2.bias"], eps)
        m = gelu_tanh(m @ p[pre + "mlp.c_fc.weight"] + p[pre + "mlp.c_fc.bias"])
        x = x + m @ p[pre + "mlp.c_proj.weight"] + p[pre + "mlp.c_proj.bias"]
    x = layer_norm(x, p["ln_f.weight"], p["ln_f.bias"], eps)
    return x, x @ p["wte.weight"].T


def random_bert_params(config, seed=0):
    """Random parameters in the `BertForMaskedLM` layout (without the "bert." prefix)."""
    rng = np.random.default_rng(seed)
    h, inter = config["hidden_size"], config["intermediate_size"]

    def w(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    p = {
        "embeddings.word_embeddings.weight": w(config["vocab_size"], h),
        "embeddings.position_embeddings.weight": w(config["max_position_embeddings"], h),
        "embeddings.token_type_embeddings.weight": w(config["type_vocab_size"], h),
        "embeddings.LayerNorm.weight": 1 + w(h, scale=0.1),
        "embeddings.LayerNorm.bias": w(h, scale=0.1),
        "pooler.dense.weight": w(h, h),
        "pooler.dense.bias": w(h),
        "cls.predictions.transform.dense.weight": w(h, h),
        "cls.predictions.transform.dense.bias": w(h),
        "cls.predictions.transform.LayerNorm.weight": 1 + w(h, scale=0.1),
        "cls.predictions.transform.LayerNorm.bias": w(h, scale=0.1),
        "cls.predictions.bias": w(config["vocab_size"]),
    }
    for i in range(config["num_hidden_layers"]):
        pre = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"):
            p[pre + name + ".weight"] = w(h, h)
            p[pre + name + ".bias"] = w(h)
        p[pre + "intermediate.dense.weight"] = w(inter, h)
        p[pre + "intermediate.dense.bias"] = w(inter)
        p[pre + "output.dense.weight"] = w(h, inter)
        p[pre + "output.dense.bias"] = w(h)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            p[pre + name + ".weight"] = 1 + w(h, scale=0.1)
            p[pre + name + ".bias"] = w(h, scale=0.1)
    return p


def random_gpt2_params(config, seed=0):
    """Random parameters in the `GPT2Model` layout."""
    rng = np.random.default_rng(seed)
    h = config["n_embd"]
    inter = config.get("n_inner") or 4 * h

    def w(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    p = {
        "wte.weight": w(config["vocab_size"], h),
        "wpe.weight": w(config["n_positions"], h),
        "ln_f.weight": 1 + w(h, scale=0.1),
        "ln_f.bias": w(h, scale=0.1),
    }
    for i in range(config["n_layer"]):
        pre = f"h.{i}."
        p[pre + "attn.c_attn.weight"] = w(h, 3 * h)
        p[pre + "attn.c_attn.bias"] = w(3 * h)
        p[pre + "attn.c_proj.weight"] = w(h, h)
        p[pre + "attn.c_proj.bias"] = w(h)
        p[pre + "mlp.c_fc.weight"] = w(h, inter)
        p[pre + "mlp.c_fc.bias"] = w(inter)
        p[pre + "mlp.c_proj.weight"] = w(inter, h)
        p[pre + "mlp.c_proj.bias"] = w(h)
        for name in ("ln_1", "ln_2"):
            p[pre + name + ".weight"] = 1 + w(h, scale=0.1)
            p[pre + name + ".bias"] = w(h, scale=0.1)
    return p


def bart_forward(params, config, input_ids, decoder_input_ids, attention_mask=None,
                 decoder_attention_mask=None):
    """Hugging Face `BartForConditionalGeneration` forward (names without the "model."
    prefix): `(encoder_output, decoder_output, logits)`.

    Post-LN blocks, learned positions read at row `i + 2`, `layernorm_embedding` on both
    sides, exact GELU, the shared embedding as the tied LM head plus `final_logits_bias`.
    """
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    eps, heads = 1e-5, config["encoder_attention_heads"]
    scale = math.sqrt(config["d_model"]) if config.get("scale_embedding") else 1.0
    if attention_mask is None:
        attention_mask = np.ones_like(input_ids)
    if decoder_attention_mask is None:
        decoder_attention_mask = np.ones_like(decoder_input_ids)
    source_mask = attention_mask.astype(bool)[:, None, :]
    length = decoder_input_ids.shape[1]
    target_mask = np.tril(np.ones((length, length), bool))[None] \
        & decoder_attention_mask.astype(bool)[:, None, :]

    def attend(x, context, name, mask):
        q = _linear(x, p, name + ".q_proj")
        k, v = _linear(context, p, name + ".k_proj"), _linear(context, p, name + ".v_proj")
        return _linear(_attention_heads(q, k, v, heads, mask), p, name + ".out_proj")

    def norm(x, name):
        return layer_norm(x, p[name + ".weight"], p[name + ".bias"], eps)

    def embed(ids, half):
        positions = p[f"{half}.embed_positions.weight"][np.arange(ids.shape[1]) + 2]
        return norm(p["shared.weight"][ids] * scale + positions[None],
                    f"{half}.layernorm_embedding")

    def feed_forward_sublayer(x, pre):
        h = _linear(gelu(_linear(x, p, pre + "fc1")), p, pre + "fc2")
        return norm(x + h, pre + "final_layer_norm")

    x = embed(input_ids, "encoder")
    for i in range(config["encoder_layers"]):
        pre = f"encoder.layers.{i}."
        x = norm(x + attend(x, x, pre + "self_attn", source_mask), pre + "self_attn_layer_norm")
        x = feed_forward_sublayer(x, pre)
    memory = x
    y = embed(decoder_input_ids, "decoder")
    for i in range(config["decoder_layers"]):
        pre = f"decoder.layers.{i}."
        y = norm(y + attend(y, y, pre + "self_attn", target_mask), pre + "self_attn_layer_norm")
        y = norm(y + attend(y, memory, pre + "encoder_attn", source_mask),
                 pre + "encoder_attn_layer_norm")
        y = feed_forward_sublayer(y, pre)
    logits = y @ p["shared.weight"].T + p["final_logits_bias"]
    return memory, y, logits


def random_bart_params(config, seed=0):
    """Random parameters in the `BartForConditionalGeneration` layout (without the "model."
    prefix), `final_logits_bias` zero as BART keeps it."""
    rng = np.random.default_rng(seed)
    h = config["d_model"]

    def w(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    p = {"shared.weight": w(config["vocab_size"], h),
         "final_logits_bias": np.zeros((1, config["vocab_size"]), np.float32)}
    for half, attentions in (("encoder", ("self_attn",)),
                             ("decoder", ("self_attn", "encoder_attn"))):
        inter = config[f"{half}_ffn_dim"]
        p[f"{half}.embed_positions.weight"] = w(config["max_position_embeddings"] + 2, h)
        for i in range(config[f"{half}_layers"]):
            pre = f"{half}.layers.{i}."
            for attention in attentions:
                for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                    p[f"{pre}{attention}.{proj}.weight"] = w(h, h)
                    p[f"{pre}{attention}.{proj}.bias"] = w(h)
            p[pre + "fc1.weight"], p[pre + "fc1.bias"] = w(inter, h), w(inter)
            p[pre + "fc2.weight"], p[pre + "fc2.bias"] = w(h, inter), w(h)
        norms = [f"{half}.layernorm_embedding"] + [
            f"{half}.layers.{i}.{n}" for i in range(config[f"{half}_layers"])
            for n in [a + "_layer_norm" for a in attentions] + ["final_layer_norm"]]
        for name in norms:
            p[name + ".weight"] = 1 + w(h, scale=0.1)
            p[name + ".bias"] = w(h, scale=0.1)
    return p


def t5_relative_bucket(relative_position, bidirectional, num_buckets=32, max_distance=128):
    """Hugging Face `T5Attention._relative_position_bucket`, its log in float32 as torch's."""
    buckets = np.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0) * num_buckets
        distance = np.abs(relative_position)
    else:
        distance = -np.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    # (The exact distances, 0 among them, take the other branch of the `where`.)
    ratio = np.log(np.maximum(distance, 1).astype(np.float32) / np.float32(max_exact))
    large = max_exact + (ratio / np.float32(math.log(max_distance / max_exact))
                         * np.float32(num_buckets - max_exact)).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return buckets + np.where(distance < max_exact, distance, large)


def t5_forward(params, config, input_ids, decoder_input_ids, attention_mask=None,
               decoder_attention_mask=None):
    """Hugging Face `T5ForConditionalGeneration` forward: `(encoder_output, decoder_output,
    logits)`.

    Pre-norm blocks with T5's RMSNorm (no mean, no bias), no biases anywhere, attention
    logits unscaled plus the relative position bias of block 0 of each stack (bidirectional
    buckets in the encoder, causal in the decoder, none in cross-attention), relu or
    gated-gelu feed-forward, a final norm on each stack; with `tie_word_embeddings` (the
    default) the decoder output times `d_model ** -0.5` through the shared embedding, else
    through `lm_head.weight`.
    """
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    eps, heads, d_kv = config["layer_norm_epsilon"], config["num_heads"], config["d_kv"]
    num_buckets = config.get("relative_attention_num_buckets", 32)
    max_distance = config.get("relative_attention_max_distance", 128)
    gated = config.get("feed_forward_proj", "relu").startswith("gated-")
    if attention_mask is None:
        attention_mask = np.ones_like(input_ids)
    if decoder_attention_mask is None:
        decoder_attention_mask = np.ones_like(decoder_input_ids)
    source_keys = attention_mask.astype(bool)[:, None, :]
    length = decoder_input_ids.shape[1]
    target_mask = np.tril(np.ones((length, length), bool))[None] \
        & decoder_attention_mask.astype(bool)[:, None, :]

    def norm(x, name):
        return rms_norm(x, p[name + ".weight"], eps)

    def position_bias(stack, query_length, key_length, bidirectional):
        distance = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
        buckets = t5_relative_bucket(distance, bidirectional, num_buckets, max_distance)
        table = p[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
        return table[buckets].transpose(2, 0, 1)  # (heads, T, S)

    def attend(x, context, name, mask, bias):
        q = x @ p[f"{name}.q.weight"].T
        k, v = context @ p[f"{name}.k.weight"].T, context @ p[f"{name}.v.weight"].T
        batch, t = x.shape[0], x.shape[1]
        out = np.zeros((batch, t, heads * d_kv))
        for b in range(batch):
            for h in range(heads):
                c = slice(h * d_kv, (h + 1) * d_kv)
                scores = q[b, :, c] @ k[b, :, c].T  # T5 does not scale the logits
                if bias is not None:
                    scores = scores + bias[h]
                scores = np.where(mask[b], scores, -1e30)
                out[b, :, c] = softmax(scores) @ v[b, :, c]
        return out @ p[f"{name}.o.weight"].T

    def feed_forward_sublayer(x, pre):
        h = norm(x, pre + "layer_norm")
        name = pre + "DenseReluDense."
        if gated:
            h = gelu_tanh(h @ p[name + "wi_0.weight"].T) * (h @ p[name + "wi_1.weight"].T)
        else:
            h = np.maximum(0.0, h @ p[name + "wi.weight"].T)
        return x + h @ p[name + "wo.weight"].T

    x = p["shared.weight"][input_ids]
    bias = position_bias("encoder", x.shape[1], x.shape[1], True)
    for i in range(config["num_layers"]):
        pre = f"encoder.block.{i}.layer."
        h = norm(x, pre + "0.layer_norm")
        x = x + attend(h, h, pre + "0.SelfAttention", source_keys, bias)
        x = feed_forward_sublayer(x, pre + "1.")
    memory = norm(x, "encoder.final_layer_norm")
    y = p["shared.weight"][decoder_input_ids]
    bias = position_bias("decoder", length, length, False)
    for i in range(config.get("num_decoder_layers") or config["num_layers"]):
        pre = f"decoder.block.{i}.layer."
        h = norm(y, pre + "0.layer_norm")
        y = y + attend(h, h, pre + "0.SelfAttention", target_mask, bias)
        y = y + attend(norm(y, pre + "1.layer_norm"), memory, pre + "1.EncDecAttention",
                       source_keys, None)
        y = feed_forward_sublayer(y, pre + "2.")
    decoded = norm(y, "decoder.final_layer_norm")
    if config.get("tie_word_embeddings", True):
        logits = (decoded * config["d_model"] ** -0.5) @ p["shared.weight"].T
    else:
        logits = decoded @ p["lm_head.weight"].T
    return memory, decoded, logits


def random_t5_params(config, seed=0):
    """Random parameters in the `T5ForConditionalGeneration` layout (`lm_head.weight` only
    when `tie_word_embeddings` is false)."""
    rng = np.random.default_rng(seed)
    h, inner, ff = config["d_model"], config["num_heads"] * config["d_kv"], config["d_ff"]

    def w(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    gated = config.get("feed_forward_proj", "relu").startswith("gated-")
    buckets = config.get("relative_attention_num_buckets", 32)
    p = {"shared.weight": w(config["vocab_size"], h, scale=1.0)}
    if not config.get("tie_word_embeddings", True):
        p["lm_head.weight"] = w(config["vocab_size"], h)
    layers = {"encoder": config["num_layers"],
              "decoder": config.get("num_decoder_layers") or config["num_layers"]}
    for stack, count in layers.items():
        attentions = ["SelfAttention"] + (["EncDecAttention"] if stack == "decoder" else [])
        p[f"{stack}.final_layer_norm.weight"] = 1 + w(h, scale=0.1)
        p[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = \
            w(buckets, config["num_heads"], scale=1.0)
        for i in range(count):
            pre = f"{stack}.block.{i}.layer."
            for j, attention in enumerate(attentions):
                for proj in "qkv":
                    p[f"{pre}{j}.{attention}.{proj}.weight"] = w(inner, h)
                p[f"{pre}{j}.{attention}.o.weight"] = w(h, inner)
                p[f"{pre}{j}.layer_norm.weight"] = 1 + w(h, scale=0.1)
            ff_layer = f"{pre}{len(attentions)}."
            wi = ("wi_0", "wi_1") if gated else ("wi",)
            for name in wi:
                p[f"{ff_layer}DenseReluDense.{name}.weight"] = w(ff, h)
            p[f"{ff_layer}DenseReluDense.wo.weight"] = w(h, ff)
            p[f"{ff_layer}layer_norm.weight"] = 1 + w(h, scale=0.1)
    return p


def llama_forward(params, config, input_ids):
    """Hugging Face `LlamaForCausalLM` (also Mistral, Qwen2: q/k/v biases when the params have
    them) forward, names without the "model." prefix: `(hidden after the final norm, logits)`;
    `lm_head.weight` when present, else the tied embeddings. RMSNorm, rotate_half RoPE,
    `repeat_kv` grouped-query attention, SwiGLU MLP; a sliding window when the config has one."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    batch, length = input_ids.shape
    eps, theta = config.get("rms_norm_eps", 1e-6), config.get("rope_theta", 10000.0)
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    window = config.get("sliding_window") if config.get("model_type") == "mistral" else 0
    mask = sliding_window_causal_mask(length, window or 0)
    positions = np.arange(length)

    def project(x, name):
        y = x @ p[name + ".weight"].T
        return y + p[name + ".bias"] if name + ".bias" in p else y

    x = p["embed_tokens.weight"][input_ids]
    for i in range(config["num_hidden_layers"]):
        pre = f"layers.{i}."
        a = rms_norm(x, p[pre + "input_layernorm.weight"], eps)
        q, k, v = (project(a, f"{pre}self_attn.{n}_proj") for n in "qkv")
        q = rotary(q.reshape(batch, length, heads, head_dim), positions, theta)
        k = rotary(k.reshape(batch, length, kv_heads, head_dim), positions, theta)
        q, k = q.reshape(batch, length, -1), k.reshape(batch, length, -1)
        k, v = (repeat_key_value_heads(t, heads // kv_heads, head_dim) for t in (k, v))
        context = _attention_heads(q, k, v, heads, np.broadcast_to(mask, (batch, length, length)))
        x = x + context @ p[pre + "self_attn.o_proj.weight"].T
        m = rms_norm(x, p[pre + "post_attention_layernorm.weight"], eps)
        m = silu(m @ p[pre + "mlp.gate_proj.weight"].T) * (m @ p[pre + "mlp.up_proj.weight"].T)
        x = x + m @ p[pre + "mlp.down_proj.weight"].T
    x = rms_norm(x, p["norm.weight"], eps)
    return x, x @ p.get("lm_head.weight", p["embed_tokens.weight"]).T


def random_llama_params(config, seed=0):
    """Random parameters in the `LlamaForCausalLM` layout (without the "model." prefix;
    `lm_head.weight` unless `tie_word_embeddings`; q/k/v biases for Qwen2)."""
    rng = np.random.default_rng(seed)
    h, inter = config["hidden_size"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or h // heads
    widths = {"q": heads * head_dim, "k": kv_heads * head_dim, "v": kv_heads * head_dim}

    def w(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    p = {"embed_tokens.weight": w(config["vocab_size"], h), "norm.weight": 1 + w(h, scale=0.1)}
    if not config.get("tie_word_embeddings", False):
        p["lm_head.weight"] = w(config["vocab_size"], h)
    for i in range(config["num_hidden_layers"]):
        pre = f"layers.{i}."
        for n, width in widths.items():
            p[f"{pre}self_attn.{n}_proj.weight"] = w(width, h)
            if config.get("model_type") == "qwen2":
                p[f"{pre}self_attn.{n}_proj.bias"] = w(width)
        p[pre + "self_attn.o_proj.weight"] = w(h, widths["q"])
        p[pre + "mlp.gate_proj.weight"] = w(inter, h)
        p[pre + "mlp.up_proj.weight"] = w(inter, h)
        p[pre + "mlp.down_proj.weight"] = w(h, inter)
        for name in ("input_layernorm", "post_attention_layernorm"):
            p[pre + name + ".weight"] = 1 + w(h, scale=0.1)
    return p
