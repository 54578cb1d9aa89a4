"""The interface every tflm tokenizer implements, in-graph.

A tokenizer is a `tf.Module`, so its lookup tables and constants are tracked
resources that travel into a SavedModel. Every method that takes or returns
tensors is made of TF ops (tf.data, `tf.function`, serving).

Interface:
    tokenize(strings)      `(batch,)` → RaggedTensor `(batch, None)` int32; scalar → `(None,)`
    detokenize(ids)        dense or ragged, rank 1 or 2 → strings; special tokens dropped
    normalize(strings)     the text as the tokenizer sees it (cleaning, case, accents);
                           `detokenize(tokenize(s)) == normalize(s)` where the algorithm allows
    word_starts(ids)       bool, same shape: True where a token begins a new word
                           (whole-word masking groups a word's pieces)
    vocabulary_size, special_tokens, special_ids, token_to_id(token), id_to_token(id)
    pad_id, unk_id, cls_id, sep_id, mask_id, end_of_text_id    (None where absent; BERT's
                           [PAD] [UNK] [CLS] [SEP] [MASK], else <pad> <unk> <s> </s> <mask>)
    start_token, start_id  the token a causal LM's every text begins with (None: none):
                           Hugging Face's `add_bos_token` (Llama's <s>). `tokenize` never adds
                           it; the causal LM's rows, prompts and scored texts do.
    save(directory)        readable vocabulary files + tokenizer.json
    fingerprint()          sha256 of the saved vocabulary: identifies the exact tokenizer
`tflm.data.tokenizers.load_tokenizer(directory)` reads back what `save` wrote.
"""

import hashlib
import json
import os

import tensorflow as tf

CONFIG_FILE = "tokenizer.json"


class Tokenizer(tf.Module):
    """Base class: special-token bookkeeping, save/load of the config, fingerprint."""

    #: Name written to tokenizer.json, used by `load_tokenizer` to pick the class.
    kind = None

    def __init__(self, special_tokens, name=None, start_token=None):
        super().__init__(name=name)
        self.special_tokens = tuple(special_tokens)
        # A special token, so that detokenize drops it as Hugging Face's decode does.
        if start_token is not None and start_token not in self.special_tokens:
            raise ValueError(f"start_token={start_token!r} is not one of the special tokens "
                             f"{list(self.special_tokens)}.")
        self.start_token = start_token

    # Subclasses implement: tokenize, detokenize, vocabulary_size (property),
    # token_to_id, id_to_token, _vocabulary_contents() (list of str/bytes, for the
    # fingerprint) and _save_vocabulary(directory); they may override normalize,
    # word_starts and config.

    def config(self):
        """Constructor options (besides the vocabulary files) recorded in tokenizer.json."""
        return {}

    # -- Shared behaviour. -----------------------------------------------------------------
    def normalize(self, inputs):
        return tf.convert_to_tensor(inputs, tf.string)

    def word_starts(self, ids):
        """Default: every token is its own word."""
        return tf.ones_like(ids, dtype=tf.bool)

    def _special_id(self, *tokens):
        """The id of the first of `tokens` (a role's names: BERT's, then RoBERTa's and BART's)
        that is a special token, else None."""
        for token in tokens:
            if token in self.special_tokens:
                return self.token_to_id(token)
        return None

    @property
    def pad_id(self):
        return self._special_id("[PAD]", "<pad>")

    @property
    def unk_id(self):
        return self._special_id("[UNK]", "<unk>")

    @property
    def cls_id(self):
        return self._special_id("[CLS]", "<s>")

    @property
    def sep_id(self):
        return self._special_id("[SEP]", "</s>")

    @property
    def mask_id(self):
        return self._special_id("[MASK]", "<mask>")

    @property
    def end_of_text_id(self):
        return self._special_id("<|endoftext|>")

    @property
    def start_id(self):
        return None if self.start_token is None else self.token_to_id(self.start_token)

    @property
    def special_ids(self):
        return sorted(self.token_to_id(t) for t in self.special_tokens)

    def _options(self):
        """What tokenizer.json records besides the kind (and the fingerprint covers)."""
        options = {"special_tokens": list(self.special_tokens), **self.config()}
        if self.start_token is not None:  # only when set: other fingerprints stay as they were
            options["start_token"] = self.start_token
        return options

    def save(self, directory):
        """Writes the vocabulary files and tokenizer.json into `directory`."""
        tf.io.gfile.makedirs(directory)
        self._save_vocabulary(directory)
        config = {"kind": self.kind, **self._options()}
        with tf.io.gfile.GFile(os.path.join(directory, CONFIG_FILE), "w") as f:
            f.write(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        return directory

    def fingerprint(self):
        """sha256 over the kind, options and vocabulary contents: same value, same tokenizer."""
        digest = hashlib.sha256()
        digest.update(json.dumps({"kind": self.kind, **self._options()},
                                 sort_keys=True).encode())
        for content in self._vocabulary_contents():
            digest.update(content if isinstance(content, bytes) else content.encode("utf-8"))
        return digest.hexdigest()
