import pytest
import sacrebleu
from rouge_score import rouge_scorer

from tflm.training.text_metrics import TextMetricsError, generation_report, rouge_f1

ENGLISH_HYPOTHESES = ["The cat sat on the mat.", "A quick brown fox jumps over the dog!",
                      "it is raining", "", "Hello, World"]
ENGLISH_REFERENCES = ["The cat is sitting on the mat.", "The quick brown fox jumped over the lazy dog.",
                      "It is raining today", "nothing", "hello world"]


def test_english_bleu_and_chrf_are_sacrebleus():
    report = generation_report(ENGLISH_HYPOTHESES, ENGLISH_REFERENCES)
    assert report["language"] == "en" and report["examples"] == 5
    assert report["bleu"] == pytest.approx(
        sacrebleu.corpus_bleu(ENGLISH_HYPOTHESES, [ENGLISH_REFERENCES]).score / 100)
    assert report["chrf"] == pytest.approx(
        sacrebleu.corpus_chrf(ENGLISH_HYPOTHESES, [ENGLISH_REFERENCES]).score / 100)
    assert 0 < report["bleu"] < 1 and "tok:13a" in report["bleu_signature"]


def test_chinese_is_detected_and_scored_by_characters():
    hypotheses = ["我爱北京天安门。", "今天天气很好"]
    references = ["我爱北京。", "今天天气不错"]
    report = generation_report(hypotheses, references)  # "auto": the references are Chinese
    assert report["language"] == "zh" and "tok:zh" in report["bleu_signature"]
    assert report["bleu"] == pytest.approx(
        sacrebleu.corpus_bleu(hypotheses, [references], tokenize="zh").score / 100)
    assert report["chrf"] == pytest.approx(
        sacrebleu.corpus_chrf(hypotheses, [references]).score / 100)
    # Each Han character a token, punctuation dropped. Pair 1: 7 and 4 characters, the 4 in
    # common (3 of 3 bigrams); pair 2: 6 and 6, 4 in common (3 of 5 bigrams, LCS 4).
    f1 = lambda p, r: 2 * p * r / (p + r)
    assert report["rouge1"] == pytest.approx((f1(4 / 7, 1) + f1(4 / 6, 4 / 6)) / 2)
    assert report["rouge2"] == pytest.approx((f1(3 / 6, 1) + f1(3 / 5, 3 / 5)) / 2)
    assert report["rougeL"] == pytest.approx((f1(4 / 7, 1) + f1(4 / 6, 4 / 6)) / 2)
    # As English, rouge-score's tokenizer finds no token in Chinese text.
    assert generation_report(hypotheses, references, language="en")["rouge1"] == 0.0


def test_rouge_by_hand():
    # Tokens: [the, cat, sat, on, a, mat] and [a, cat, sat, on, the, mat, today].
    # Unigrams: all 6 in common. Bigrams: (cat sat), (sat on) of 5 and 6. LCS: cat sat on mat.
    scores = rouge_f1("The cat sat on a MAT.", "a cat sat on the mat, today")
    f1 = lambda p, r: 2 * p * r / (p + r)
    assert scores["rouge1"] == pytest.approx(f1(6 / 6, 6 / 7))
    assert scores["rouge2"] == pytest.approx(f1(2 / 5, 2 / 6))
    assert scores["rougeL"] == pytest.approx(f1(4 / 6, 4 / 7))


def test_rouge_equals_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    report = generation_report(ENGLISH_HYPOTHESES, ENGLISH_REFERENCES)
    for name in ("rouge1", "rouge2", "rougeL"):
        expected = [scorer.score(r, h)[name].fmeasure
                    for h, r in zip(ENGLISH_HYPOTHESES, ENGLISH_REFERENCES)]
        assert report[name] == pytest.approx(sum(expected) / len(expected), rel=1e-12)


def test_exact_match_strips_whitespace_and_reads_bytes():
    report = generation_report([b" yes\n", "No", "maybe"], ["yes", "no", "maybe "])
    assert report["exact_match"] == pytest.approx(2 / 3)  # case matters


def test_empty_hypotheses_score_zero():
    report = generation_report(["", "  "], ["a reference", "another one"])
    assert {k: report[k] for k in ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "exact_match")} \
        == dict.fromkeys(("bleu", "chrf", "rouge1", "rouge2", "rougeL", "exact_match"), 0.0)


def test_bad_inputs_are_named():
    with pytest.raises(TextMetricsError, match="got 2 hypotheses and 3 references"):
        generation_report(["a", "b"], ["a", "b", "c"])
    with pytest.raises(TextMetricsError, match="nothing to score"):
        generation_report([], [])
    with pytest.raises(TextMetricsError, match="language must be one of auto, zh, en; got 'fr'"):
        generation_report(["a"], ["a"], language="fr")
    with pytest.raises(TextMetricsError, match=r"references\[0\] is a list"):
        generation_report(["a"], [["a", "b"]])
    with pytest.raises(TextMetricsError, match="hypotheses must be a list of strings"):
        generation_report("a", ["a"])
