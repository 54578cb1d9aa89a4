"""Vocabulary training: WordPiece, SentencePiece (unigram, BPE) and byte-level BPE.

Every trainer reads the input files line by line through tf.data, cleans each
line with exactly the `TextCleaner` its tokenizer applies at tokenization time
(so the vocabulary is learned on the text the tokenizer will see; invalid
UTF-8 is replaced and counted), trains, and saves the readable vocabulary
files plus tokenizer.json into `output_dir`. `tflm.data.tokenizers.load_tokenizer(output_dir)`
then loads the identical tokenizer.

Which learner trains what, and why (times: one 2-core CPU, the 4 MB Austen
text, cleaning included):
- WordPiece: Hugging Face `tokenizers`' `WordPieceTrainer` (Rust; BERT's
  `##` pieces): 8k pieces in about 2 s, all 8k of them, where tf-text's
  `bert_vocab_from_dataset` takes 45-60 s for 8k on 5 MB and returns ~6.6k.
  Like any learner it stops when the text has no more pieces of
  `min_frequency` (30k asked on 4 MB: 14.2k). The text is pre-split with
  BERT's pre-tokenizer, the split `FastWordpieceTokenizer` makes. Each
  distinct character is a piece, so with many of them (Chinese) the alphabet
  is capped at `vocab_size` minus the special tokens, rarest out. The
  trainer breaks ties between equally frequent pieces in hash order, so two
  runs on the same text can order (and at the size limit, pick) tied pieces
  differently: the saved vocab.txt, and its fingerprint, is the identity.
- SentencePiece: the `sentencepiece` library (16k unigram pieces in about
  2 s), with the identity normalization rule (our cleaner normalized
  already), byte fallback (no unknown characters) and the special tokens as
  control symbols at ids 0-5. Deterministic.
- Byte-level BPE: `tokenizers`' `ByteLevelBPETokenizer` trainer (all 256
  bytes in the alphabet; 32k asked, 19.4k learned, in 3 s), saved as
  GPT-2's `vocab.json` + `merges.txt`. Deterministic.

Example:
>>> tokenizer = train_vocabulary("wordpiece", "corpus/*.txt", 8000, "vocab/wp")
>>> tokenizer.vocabulary_size, tokenizer.fingerprint()
"""

import io
import os
import tempfile
import time

import tensorflow as tf

from tflm.config import ConfigError
from tflm.data import byte_pair, sentencepiece_tokenizer, wordpiece
from tflm.data.corpus import files_in_folder, resolve_files
from tflm.data.jsonl import extract_string_field
from tflm.data.text_cleaning import TextCleaner, replace_invalid_utf8
from tflm.errors import BadFileError, MissingFileError

KINDS = ("wordpiece", "sentencepiece_unigram", "sentencepiece_bpe", "byte_bpe")
SENTENCEPIECE_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<|endoftext|>")
_LINES_PER_BATCH = 2048


def input_files(inputs):
    """A glob (comma-separated globs allowed) or a list of paths → existing files.

    An empty string means the embedded corpus (Pride and Prejudice).

    Raises:
        FileNotFoundError: naming the glob or path that matches nothing.
    """
    if isinstance(inputs, str):
        return resolve_files(inputs)
    files = [str(f) for f in inputs]
    if not files:
        raise MissingFileError("No input files given.")
    found = []
    for path in files:
        if not tf.io.gfile.exists(path):
            raise MissingFileError(f"Input file {path!r} does not exist.")
        # A folder means the files in it, as in data.input_path.
        inside = files_in_folder(path) if tf.io.gfile.isdir(path) else [path]
        if not inside:
            raise MissingFileError(f"{path}: a folder with no (visible) files in it.")
        found.extend(inside)
    return found


def cleaned_lines(files, cleaner, stats, keep_empty=False, text_field=""):
    """Yields each input line, cleaned by `cleaner`, as str; counts into `stats`.

    With `text_field` the files are JSON Lines and each line's string value of
    that field is the text; several comma-separated fields (e.g. "en,zh", both sides of
    translation pairs) each give a text. A field a line lacks is counted in
    `missing_field`.
    `stats` gets `lines` (read), `characters` (yielded) and
    `repaired` (invalid UTF-8 sequences replaced by U+FFFD).
    """
    stats.update(lines=0, characters=0, repaired=0)
    fields = [field.strip() for field in text_field.split(",") if field.strip()]
    if text_field:
        stats["missing_field"] = 0

    @tf.autograph.experimental.do_not_convert
    def prepare(lines):
        missing = tf.constant(0, tf.int64)
        if not text_field:
            cleaned, repaired = cleaner.clean_and_count(lines)
            return cleaned, repaired, missing, tf.size(lines)
        # Repair first (counted): the JSON field's regexes need valid UTF-8.
        texts, repaired = replace_invalid_utf8(lines)
        blank = tf.equal(tf.strings.length(tf.strings.strip(texts)), 0)
        kept = []
        for field in fields:
            values, found = extract_string_field(texts, field)
            missing += tf.reduce_sum(tf.cast(~found & ~blank, tf.int64))
            kept.append(tf.boolean_mask(values, found))
        return cleaner(tf.concat(kept, axis=0)), repaired, missing, tf.size(lines)

    dataset = tf.data.TextLineDataset(files).batch(_LINES_PER_BATCH)
    dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    for batch, repaired, missing, read in dataset.prefetch(2).as_numpy_iterator():
        stats["lines"] += int(read)
        stats["repaired"] += int(repaired.sum())
        if text_field:
            stats["missing_field"] += int(missing)
        for line in batch:
            if line or keep_empty:
                text = line.decode("utf-8")
                stats["characters"] += len(text)
                yield text


def _check_vocab_size(vocab_size, minimum, why):
    if not isinstance(vocab_size, int) or vocab_size < minimum:
        raise ConfigError(f"vocab_size={vocab_size!r} is too small: {why} need at least {minimum}.")


def _require_text(stats, files):
    if stats["characters"] == 0:
        shown = ", ".join(files[:3]) + (" ..." if len(files) > 3 else "")
        raise BadFileError(f"No text to train on in {len(files)} input file(s): {shown}.")


def train_wordpiece(inputs, vocab_size, output_dir, lowercase=True, nfkc=True, split_cjk=True,
                    strip_accents=None, min_frequency=2, special_tokens=wordpiece.SPECIAL_TOKENS,
                    stats=None, text_field=""):
    """Trains a BERT WordPiece vocabulary; writes vocab.txt + tokenizer.json.

    Special tokens take ids 0.. in the order given (`[PAD]` = 0).
    Returns the `WordPieceTokenizer`.
    """
    from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers, trainers

    special_tokens = list(special_tokens)
    _check_vocab_size(vocab_size, len(special_tokens) + 1,
                      f"the {len(special_tokens)} special tokens {special_tokens} plus one piece")
    stats = {} if stats is None else stats
    files = input_files(inputs)
    start = time.time()
    cleaner = TextCleaner(nfkc=nfkc, lowercase=lowercase, strip_accents=strip_accents,
                          split_cjk=split_cjk)
    learner = HFTokenizer(models.WordPiece(unk_token="[UNK]"))
    learner.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special_tokens,
        limit_alphabet=vocab_size - len(special_tokens), continuing_subword_prefix="##",
        show_progress=False,
    )
    learner.train_from_iterator(cleaned_lines(files, cleaner, stats, text_field=text_field),
                                trainer=trainer)
    _require_text(stats, files)
    vocabulary = sorted(learner.get_vocab().items(), key=lambda item: item[1])
    tokenizer = wordpiece.WordPieceTokenizer(
        [token for token, _ in vocabulary], lowercase=lowercase, nfkc=nfkc, split_cjk=split_cjk,
        strip_accents=strip_accents, special_tokens=special_tokens,
    )
    return _finish(tokenizer, output_dir, files, stats, start)


def train_sentencepiece(inputs, vocab_size, output_dir, model_type="unigram", lowercase=False,
                        nfkc=True, character_coverage=0.9995, byte_fallback=True, max_sentences=0,
                        special_tokens=SENTENCEPIECE_SPECIAL_TOKENS, stats=None, text_field=""):
    """Trains a SentencePiece model; writes sentencepiece.model/.vocab + tokenizer.json.

    Args:
        model_type: "unigram" or "bpe".
        character_coverage: share of characters covered by pieces; with byte
            fallback the rest become byte pieces (use 0.9995 for Chinese, 1.0
            for small alphabets).
        max_sentences: sample this many lines (0: use all).
        special_tokens: ids 0.. in order; the first two are the padding and
            unknown pieces, the rest control symbols.
    Returns the `SentencePieceTokenizer`.
    """
    import sentencepiece as spm

    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"model_type={model_type!r}: expected 'unigram' or 'bpe'.")
    special_tokens = list(special_tokens)
    if len(special_tokens) < 2:
        raise ValueError("SentencePiece needs at least a padding and an unknown special token.")
    minimum = len(special_tokens) + (256 if byte_fallback else 0) + 1
    _check_vocab_size(vocab_size, minimum, f"{len(special_tokens)} special tokens"
                      + (" and 256 byte-fallback pieces" if byte_fallback else ""))
    stats = {} if stats is None else stats
    files = input_files(inputs)
    start = time.time()
    cleaner = TextCleaner(nfkc=nfkc, lowercase=lowercase)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=cleaned_lines(files, cleaner, stats, text_field=text_field),
            model_writer=model,
            vocab_size=vocab_size, model_type=model_type, character_coverage=character_coverage,
            byte_fallback=byte_fallback, normalization_rule_name="identity",
            pad_id=0, unk_id=1, bos_id=-1, eos_id=-1,
            pad_piece=special_tokens[0], unk_piece=special_tokens[1],
            control_symbols=special_tokens[2:], hard_vocab_limit=False,
            input_sentence_size=max_sentences, shuffle_input_sentence=True,
            num_threads=os.cpu_count() or 1, minloglevel=2,
        )
    except RuntimeError as e:
        _require_text(stats, files)
        # Keep SentencePiece's own advice, not its source location and assertion text.
        message = str(e).split("] ")[-1]
        raise BadFileError(f"SentencePiece training (vocab_size={vocab_size}) on {files[:3]} "
                         f"failed: {message}") from None
    _require_text(stats, files)
    tokenizer = sentencepiece_tokenizer.SentencePieceTokenizer(
        model.getvalue(), lowercase=lowercase, nfkc=nfkc, special_tokens=special_tokens)
    return _finish(tokenizer, output_dir, files, stats, start)


def train_byte_bpe(inputs, vocab_size, output_dir, lowercase=False, nfkc=False, min_frequency=2,
                   special_tokens=(byte_pair.END_OF_TEXT,), stats=None, text_field=""):
    """Trains GPT-2 style byte-level BPE; writes vocab.json + merges.txt + tokenizer.json.

    Lines keep their newline, so newlines and indentation get tokens as in
    GPT-2. Special tokens take ids 0.., then the 256 byte tokens, then merges.
    Returns the `BytePairTokenizer`.
    """
    from tokenizers import ByteLevelBPETokenizer

    special_tokens = list(special_tokens)
    _check_vocab_size(vocab_size, len(special_tokens) + 257,
                      f"the 256 byte tokens, {len(special_tokens)} special token(s) and one merge")
    stats = {} if stats is None else stats
    files = input_files(inputs)
    start = time.time()
    cleaner = TextCleaner(nfkc=nfkc, lowercase=lowercase, strip_accents=False,
                          remove_control=False, collapse_whitespace=False)
    learner = ByteLevelBPETokenizer(add_prefix_space=False)
    lines = (line + "\n" for line in cleaned_lines(files, cleaner, stats, keep_empty=True,
                                                   text_field=text_field))
    learner.train_from_iterator(lines, vocab_size=vocab_size, min_frequency=min_frequency,
                                special_tokens=special_tokens, show_progress=False)
    _require_text(stats, files)
    with tempfile.TemporaryDirectory() as scratch:
        vocab_path, merges_path = learner.save_model(scratch)
        tokenizer = byte_pair.BytePairTokenizer(vocab_path, merges_path,
                                                special_tokens=special_tokens,
                                                lowercase=lowercase, nfkc=nfkc)
    return _finish(tokenizer, output_dir, files, stats, start)


def _finish(tokenizer, output_dir, files, stats, start):
    tokenizer.save(output_dir)
    stats.update(
        kind=tokenizer.kind, files=len(files), vocabulary_size=tokenizer.vocabulary_size,
        seconds=round(time.time() - start, 2), output_dir=output_dir,
        fingerprint=tokenizer.fingerprint(),
    )
    return tokenizer


def train_vocabulary(kind, inputs, vocab_size, output_dir, lowercase=None, stats=None, **options):
    """Trains a vocabulary of `kind` (one of `KINDS`); returns the saved tokenizer.

    `lowercase=None` means the kind's usual setting: True for WordPiece
    (uncased BERT), False otherwise. `options` go to the kind's trainer
    (`train_wordpiece`, `train_sentencepiece`, `train_byte_bpe`).
    """
    if kind == "wordpiece":
        return train_wordpiece(inputs, vocab_size, output_dir,
                               lowercase=True if lowercase is None else lowercase,
                               stats=stats, **options)
    if kind in ("sentencepiece_unigram", "sentencepiece_bpe"):
        return train_sentencepiece(inputs, vocab_size, output_dir,
                                   model_type=kind.split("_", 1)[1],
                                   lowercase=bool(lowercase), stats=stats, **options)
    if kind == "byte_bpe":
        return train_byte_bpe(inputs, vocab_size, output_dir, lowercase=bool(lowercase),
                              stats=stats, **options)
    raise ValueError(f"Unknown vocabulary kind {kind!r}; expected one of {KINDS}.")
