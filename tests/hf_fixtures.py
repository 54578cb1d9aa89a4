"""Small Hugging Face checkpoint folders, made here, for the import tests.

Each folder has the files and tensor names `transformers` writes, with
random weights from `numpy_reference` (so `numpy_reference.bert_forward` /
`gpt2_forward` are the ground truth) and vocabularies trained by Hugging
Face `tokenizers` on the embedded corpus. The weights are written by the
`safetensors` library itself, not by tflm's own writer.
"""

import json
import os

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

from numpy_reference import (random_bart_params, random_bert_params, random_gpt2_params,
                             random_llama_params, random_t5_params)
from tflm.data import default_corpus_path

BERT_CONFIG = {
    "architectures": ["BertForMaskedLM"], "model_type": "bert", "hidden_size": 32,
    "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
    "max_position_embeddings": 64, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
    "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
    "position_embedding_type": "absolute", "pad_token_id": 0,
}
GPT2_CONFIG = {
    "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 32, "n_layer": 2,
    "n_head": 4, "n_positions": 64, "layer_norm_epsilon": 1e-5,
    "activation_function": "gelu_new", "resid_pdrop": 0.1, "attn_pdrop": 0.1,
}


def _corpus_lines():
    with open(default_corpus_path(), encoding="utf-8") as f:
        return [line for line in f.read().splitlines() if line.strip()]


def corpus_paragraphs():
    """The corpus as paragraphs, their newlines kept (and a line of figures for the digits)."""
    with open(default_corpus_path(), encoding="utf-8") as f:
        paragraphs = [p for p in f.read().split("\n\n") if p.strip()]
    return paragraphs + ["In 1811, 2,500 pounds; in 1812, 10,000 pounds a year.\n"]


def write_bert_folder(folder, vocab_size=800, seed=0, prefix="bert.", head=True,
                      next_sentence=False):
    """A `BertForMaskedLM` checkpoint (uncased WordPiece), or with `next_sentence` a
    `BertForPreTraining` one (also BERT's next-sentence head, random, in `params` as
    `cls.seq_relationship.*`); returns `(config, params)` with the params named as
    `numpy_reference` takes them (no prefix)."""
    from tokenizers import BertWordPieceTokenizer

    os.makedirs(folder, exist_ok=True)
    tokenizer = BertWordPieceTokenizer(lowercase=True)
    tokenizer.train_from_iterator(_corpus_lines(), vocab_size=vocab_size, min_frequency=2,
                                  show_progress=False)
    tokenizer.save_model(folder)
    tokenizer.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"do_lower_case": True, "tokenize_chinese_chars": True, "strip_accents": None,
                   "tokenizer_class": "BertTokenizer"}, f)
    config = dict(BERT_CONFIG, vocab_size=tokenizer.get_vocab_size())
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    params = random_bert_params(config, seed=seed)
    saved = {}
    for name, value in params.items():
        if name.startswith("cls."):
            if head:
                saved[name] = value
        else:
            saved[prefix + name] = value
    saved[prefix + "embeddings.position_ids"] = np.arange(64, dtype=np.int64)[None]
    if next_sentence:
        rng = np.random.default_rng(seed + 1)
        width = config["hidden_size"]
        params["cls.seq_relationship.weight"] = rng.normal(0, 0.2, (2, width)).astype(np.float32)
        params["cls.seq_relationship.bias"] = rng.normal(0, 0.2, (2,)).astype(np.float32)
        saved.update({k: params[k] for k in ("cls.seq_relationship.weight",
                                             "cls.seq_relationship.bias")})
    else:
        # What old transformers versions also saved: a buffer, and half an NSP head.
        saved["cls.seq_relationship.weight"] = np.zeros((2, 32), np.float32)
    save_file(saved, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    return config, params


def write_gpt2_folder(folder, vocab_size=600, seed=0, shards=1):
    """A `GPT2LMHeadModel` checkpoint (byte-level BPE), in `shards` files with an index when
    more than one; returns `(config, params)`."""
    from tokenizers import ByteLevelBPETokenizer

    os.makedirs(folder, exist_ok=True)
    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(_corpus_lines(), vocab_size=vocab_size, min_frequency=2,
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tokenizer.save_model(folder)
    config = dict(GPT2_CONFIG, vocab_size=tokenizer.get_vocab_size())
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    params = random_gpt2_params(config, seed=seed)
    _save_sharded(folder, params, shards)
    return config, params


BART_CONFIG = {
    "architectures": ["BartForConditionalGeneration"], "model_type": "bart", "d_model": 32,
    "encoder_layers": 2, "decoder_layers": 1, "encoder_attention_heads": 4,
    "decoder_attention_heads": 4, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
    "max_position_embeddings": 64, "activation_function": "gelu", "scale_embedding": False,
    "dropout": 0.1, "attention_dropout": 0.0, "decoder_start_token_id": 2,
    "bos_token_id": 0, "pad_token_id": 1, "eos_token_id": 2,
}


def write_bart_folder(folder, vocab_size=400, seed=0):
    """A `BartForConditionalGeneration` checkpoint (byte-level BPE with BART's special
    tokens, "model." names, the tied `lm_head.weight` saved too); returns `(config, params)`
    with the params named as `numpy_reference.bart_forward` takes them (no prefix)."""
    from tokenizers import ByteLevelBPETokenizer

    os.makedirs(folder, exist_ok=True)
    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(_corpus_lines(), vocab_size=vocab_size, min_frequency=2,
                                  special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                  show_progress=False)
    tokenizer.save_model(folder)
    # At least the 262 ids of tflm's byte tokenizer, so that a run can also read bytes.
    config = dict(BART_CONFIG, vocab_size=max(tokenizer.get_vocab_size(), 262))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    params = random_bart_params(config, seed=seed)
    saved = {("model." + k if k != "final_logits_bias" else k): v for k, v in params.items()}
    saved["lm_head.weight"] = params["shared.weight"]
    save_file(saved, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    return config, params


T5_CONFIG = {
    "architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "d_model": 32,
    "d_kv": 8, "d_ff": 48, "num_layers": 2, "num_decoder_layers": 1, "num_heads": 4,
    "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
    "layer_norm_epsilon": 1e-6, "feed_forward_proj": "relu", "tie_word_embeddings": True,
    "dropout_rate": 0.1, "is_encoder_decoder": True, "decoder_start_token_id": 0,
    "pad_token_id": 0, "eos_token_id": 1,
}
# T5 v1.1 / flan-t5: gated tanh-GELU, an untied lm_head, heads narrower than d_model / heads.
T5_V1_1_CONFIG = dict(T5_CONFIG, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                      num_heads=3)


def write_t5_folder(folder, config=T5_CONFIG, vocab_size=300, seed=0):
    """A `T5ForConditionalGeneration` checkpoint with a SentencePiece `spiece.model` laid out as
    T5's (<pad>=0, </s>=1, <unk>=2, no <s>), the tied copy `encoder.embed_tokens.weight` saved
    too; returns `(config, params)` as `numpy_reference.t5_forward` takes them."""
    import sentencepiece as spm

    os.makedirs(folder, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus_lines()), model_prefix=os.path.join(folder, "spiece"),
        vocab_size=vocab_size, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        minloglevel=2)
    os.remove(os.path.join(folder, "spiece.vocab"))
    config = dict(config, vocab_size=vocab_size + 28)  # T5's embeddings outnumber its pieces
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    params = random_t5_params(config, seed=seed)
    saved = dict(params, **{"encoder.embed_tokens.weight": params["shared.weight"]})
    save_file(saved, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    return config, params


def padded_seq2seq_inputs(vocab, source_length, source_real):
    """Random `Seq2SeqLM` inputs padded on both sides: 2 rows, the second source keeping its
    first `source_real` of `source_length` tokens and the first target 5 of its 7."""
    rng = np.random.default_rng(0)
    source, target = rng.integers(0, vocab, (2, source_length)), rng.integers(0, vocab, (2, 7))
    source_mask, target_mask = np.ones_like(source), np.ones_like(target)
    source_mask[1, source_real:] = 0
    target_mask[0, 5:] = 0
    return {"encoder_token_ids": source.astype("int32"), "encoder_padding_mask": source_mask,
            "decoder_token_ids": target.astype("int32"), "decoder_padding_mask": target_mask}


# Tiny Llama-family configs: grouped-query attention (8 query heads share 2 key/value heads),
# a non-default rope_theta, an untied lm_head (Llama), a sliding window (Mistral), q/k/v
# biases and tied embeddings (Qwen2).
LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32,
    "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2,
    "intermediate_size": 48, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0, "rope_scaling": None, "hidden_act": "silu",
    "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
    "bos_token_id": 1, "eos_token_id": 2,
}
MISTRAL_CONFIG = dict(LLAMA_CONFIG, architectures=["MistralForCausalLM"], model_type="mistral",
                      sliding_window=5, head_dim=6, rope_theta=1000000.0)
QWEN2_CONFIG = dict(LLAMA_CONFIG, architectures=["Qwen2ForCausalLM"], model_type="qwen2",
                    num_key_value_heads=4, tie_word_embeddings=True, use_sliding_window=False,
                    sliding_window=4096, max_window_layers=2, rope_theta=1000000.0)


# The `Split` regexes of Llama 3's and Qwen2's tokenizer.json (Qwen2: one digit a word).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")


def write_byte_level_tokenizer_json(folder, split, vocab_size=600):
    """A `tokenizer.json` byte-level BPE trained by `tokenizers` as Llama 3's ("llama3":
    `ignore_merges`, no normalizer, <|begin_of_text|> before every text by its
    post_processor) or Qwen2's ("qwen2": NFC, nothing added) are laid out, with special
    tokens after the vocabulary."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers import processors, trainers

    tokenizer = Tokenizer(models.BPE(ignore_merges=split == "llama3"))
    if split == "qwen2":
        tokenizer.normalizer = normalizers.NFC()
    regex = {"llama3": LLAMA3_SPLIT, "qwen2": QWEN2_SPLIT}[split]
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(corpus_paragraphs(), trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    if split == "llama3":
        tokenizer.add_special_tokens(["<|begin_of_text|>"])
        start = ("<|begin_of_text|>", tokenizer.token_to_id("<|begin_of_text|>"))
        tokenizer.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                          pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                          special_tokens=[start])])
    tokenizer.save(os.path.join(folder, "tokenizer.json"))
    return tokenizer


def write_llama_folder(folder, config=LLAMA_CONFIG, vocab_size=600, seed=0, dtype=None,
                       tokenizer="sentencepiece", shards=1):
    """A `LlamaForCausalLM` (or Mistral, Qwen2: `config`) checkpoint with a SentencePiece BPE
    `tokenizer.model` with byte fallback and no normalization, as Llama 2's (<unk>=0, <s>=1,
    </s>=2), or with `tokenizer="llama3"` / `"qwen2"` a `tokenizer.json` byte-level BPE as
    theirs; the tensors saved in `dtype` when given ("float16", "bfloat16"), in `shards` files
    with an index as `save_pretrained(max_shard_size=...)` writes when more than one; returns
    `(config, params)` as `numpy_reference.llama_forward` takes them (float32, as saved).
    The SentencePiece folder's `tokenizer_config.json` is Llama 2's (<s> before every text)."""
    import sentencepiece as spm

    os.makedirs(folder, exist_ok=True)
    if tokenizer != "sentencepiece":
        write_byte_level_tokenizer_json(folder, tokenizer, vocab_size)
    else:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(_corpus_lines()),
            model_prefix=os.path.join(folder, "tokenizer"), vocab_size=vocab_size,
            model_type="bpe", byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            normalization_rule_name="identity", remove_extra_whitespaces=False, minloglevel=2)
        os.remove(os.path.join(folder, "tokenizer.vocab"))
        with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
            json.dump({"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
                       "eos_token": "</s>", "unk_token": "<unk>",
                       "tokenizer_class": "LlamaTokenizer"}, f, indent=2)
    config = dict(config, vocab_size=vocab_size + 20)  # embeddings may outnumber the pieces
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    params = random_llama_params(config, seed=seed)
    # NumPy has no bfloat16; ml_dtypes' is the one the safetensors library writes as BF16.
    dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype
    if dtype is not None:
        params = {k: v.astype(dtype).astype(np.float32) for k, v in params.items()}
    saved = {("model." + k if k != "lm_head.weight" else k): v.astype(dtype or np.float32)
             for k, v in params.items()}
    _save_sharded(folder, saved, shards)
    return config, params


def _save_sharded(folder, tensors, shards):
    """`model.safetensors`, or `shards` files `model-0000i-of-0000n.safetensors` and the
    `model.safetensors.index.json` that lists them, as `transformers` writes them."""
    if shards == 1:
        save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        return
    names, weight_map = sorted(tensors), {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[i::shards]}
        save_file(part, os.path.join(folder, file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    total = sum(v.nbytes for v in tensors.values())
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
