"""Corpus-level measures of generated text: BLEU, chrF, ROUGE-1/2/L and exact match.

`generation_report(hypotheses, references)` scores a list of generated strings against
one reference string each. All scores are fractions in [0, 1], as the other evaluation
reports give accuracy (sacrebleu prints BLEU and chrF out of 100: multiply by 100 to
compare with published figures).

- BLEU and chrF are sacrebleu's corpus scores (its defaults: BLEU-4 with exponential
  smoothing, chrF with character 6-grams and beta 2); their sacrebleu signatures come
  with the report so a number can be reproduced.
- ROUGE-1/2/L are the F-measures of Google's rouge-score with its default tokenizer
  (lowercase, words of [a-z0-9], no stemming), averaged over the examples, which is the
  mean its bootstrap aggregator estimates. rouge-score's tokenizer drops every other
  character, so Chinese text would score 0: for Chinese each Han character is a token.
- Exact match compares the strings with the whitespace at both ends stripped.

`language` picks the tokenization: "zh" (sacrebleu's Chinese tokenizer, Han characters
as ROUGE tokens), "en" (sacrebleu's default 13a, rouge-score's words; right for any
language that puts spaces between words) or "auto": "zh" when any reference holds a Han
character. Both tokenizers leave text without Han characters (nearly) as "en" does, so a
stray Chinese name in an English corpus changes little.

Example:
>>> report = generation_report(["the cat sat"], ["the cat sat down"])
>>> report["rouge1"], report["exact_match"]          # 0.857..., 0.0
"""

import collections
import re

import sacrebleu

from tflm.errors import TflmError

LANGUAGES = ("auto", "zh", "en")

# Han ideographs: the unified blocks (and extensions A to H) and the compatibility blocks.
_HAN = ("\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
        "\U00020000-\U0002ebef\U0002f800-\U0002fa1f\U00030000-\U000323af")
_HAN_RE = re.compile(f"[{_HAN}]")
# rouge-score's tokens: lowercased runs of [a-z0-9]; for Chinese also each Han character.
_WORD_RE = re.compile("[a-z0-9]+")
_WORD_OR_HAN_RE = re.compile(f"[a-z0-9]+|[{_HAN}]")


class TextMetricsError(TflmError, ValueError):
    """Hypotheses and references that cannot be scored; the message names which and why."""


def generation_report(hypotheses, references, language="auto"):
    """BLEU, chrF, ROUGE-1/2/L F-measure and exact match of `hypotheses` against
    `references` (one reference string per hypothesis), all in [0, 1].

    Returns a dict: bleu, chrf, rouge1, rouge2, rougeL, exact_match, examples, the
    `language` used ("zh" or "en") and sacrebleu's bleu_signature and chrf_signature.
    Strings may be `bytes` (as TensorFlow hands them), read as UTF-8.
    """
    hypotheses = _strings(hypotheses, "hypotheses")
    references = _strings(references, "references")
    if len(hypotheses) != len(references):
        raise TextMetricsError(
            f"generation_report needs one reference per hypothesis: got {len(hypotheses)} "
            f"hypotheses and {len(references)} references.")
    if not hypotheses:
        raise TextMetricsError("generation_report got no hypotheses and no references: "
                               "there is nothing to score.")
    if language not in LANGUAGES:
        raise TextMetricsError(f"language must be one of {', '.join(LANGUAGES)}; "
                               f"got {language!r}.")
    if language == "auto":
        language = "zh" if any(_HAN_RE.search(text) for text in references) else "en"

    bleu = sacrebleu.BLEU(tokenize="zh" if language == "zh" else "13a")
    chrf = sacrebleu.CHRF()
    bleu_score = bleu.corpus_score(hypotheses, [references])
    chrf_score = chrf.corpus_score(hypotheses, [references])

    word_re = _WORD_OR_HAN_RE if language == "zh" else _WORD_RE
    rouge = collections.defaultdict(float)
    for hypothesis, reference in zip(hypotheses, references):
        for name, value in rouge_f1(hypothesis, reference, word_re).items():
            rouge[name] += value
    count = len(hypotheses)
    exact = sum(h.strip() == r.strip() for h, r in zip(hypotheses, references))
    return {
        "bleu": bleu_score.score / 100.0,
        "chrf": chrf_score.score / 100.0,
        "rouge1": rouge["rouge1"] / count,
        "rouge2": rouge["rouge2"] / count,
        "rougeL": rouge["rougeL"] / count,
        "exact_match": exact / count,
        "examples": count,
        "language": language,
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }


def rouge_f1(hypothesis, reference, word_re=_WORD_RE):
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measures of one pair, as rouge-score computes them
    (`word_re` finds the tokens in the lowercased text)."""
    hypothesis_tokens = word_re.findall(hypothesis.lower())
    reference_tokens = word_re.findall(reference.lower())
    scores = {f"rouge{n}": _ngram_f1(hypothesis_tokens, reference_tokens, n) for n in (1, 2)}
    if hypothesis_tokens and reference_tokens:
        lcs = _lcs_length(hypothesis_tokens, reference_tokens)
        scores["rougeL"] = _f1(lcs / len(hypothesis_tokens), lcs / len(reference_tokens))
    else:
        scores["rougeL"] = 0.0
    return scores


def _ngram_f1(hypothesis_tokens, reference_tokens, n):
    hypothesis_ngrams = _ngrams(hypothesis_tokens, n)
    reference_ngrams = _ngrams(reference_tokens, n)
    overlap = sum((hypothesis_ngrams & reference_ngrams).values())
    # max(..., 1): a side with no n-grams has precision or recall 0, not a division by 0.
    return _f1(overlap / max(hypothesis_ngrams.total(), 1),
               overlap / max(reference_ngrams.total(), 1))


def _ngrams(tokens, n):
    return collections.Counter(zip(*(tokens[i:] for i in range(n))))


def _lcs_length(a, b):
    """Length of the longest common subsequence, one row of the table at a time."""
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if token == other
                           else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def _f1(precision, recall):
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _strings(texts, name):
    """`texts` as a list of str; bytes are decoded as UTF-8."""
    if isinstance(texts, (str, bytes)):
        raise TextMetricsError(f"{name} must be a list of strings, one per example; got a "
                               f"single {type(texts).__name__}.")
    strings = []
    for i, text in enumerate(texts):
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as error:
                raise TextMetricsError(f"{name}[{i}] is not UTF-8: {error}.") from None
        if not isinstance(text, str):
            raise TextMetricsError(f"{name}[{i}] is a {type(text).__name__}, not a string "
                                   "(one reference per hypothesis).")
        strings.append(text)
    return strings


__all__ = ["LANGUAGES", "TextMetricsError", "generation_report", "rouge_f1"]
