"""train/eval/metrics.py against hand-computed values: Korean morpheme tokens, ROUGE-1/2/L, BLEU (sentence and corpus),
and cosine similarity on the real all-MiniLM-L6-v2 encoder (fetched offline by launch.assets)."""

import math

import pytest

from train.eval import metrics as tm

# ----------------------------------------------------------------------------------------------------------------------
# Tokens
# ----------------------------------------------------------------------------------------------------------------------


def test_korean_particles_are_split_from_the_noun():
    # 삼성전자가 (subject particle) and 삼성전자는 (topic particle) share the noun 삼성전자
    assert tm.tokenize("삼성전자가 급등했다") == ["삼성전자", "가", "급등", "하", "었", "다"]
    assert tm.tokenize("삼성전자는 급등했다") == ["삼성전자", "는", "급등", "하", "었", "다"]
    # so ROUGE-1 recall is 5/6 (only the particle differs); split on spaces the two texts would share nothing but
    # "급등했다" (1 of 2 words)
    assert tm.rouge_n(tm.tokenize("삼성전자는 급등했다"), tm.tokenize("삼성전자가 급등했다"), 1)["recall"] == \
        pytest.approx(5 / 6)


def test_punctuation_dropped_latin_lowercased_numbers_kept():
    assert tm.tokenize("서울입니다.") == tm.tokenize("서울입니다") == ["서울", "이", "ᆸ니다"]
    assert tm.tokenize("The Cat sat!") == ["the", "cat", "sat"]
    assert tm.tokenize('["반도체", "공장"]') == ["반도체", "공장"]  # JSON is compared on its words
    assert tm.tokenize('{"is_stock_related": true}') == ["is", "stock", "related", "true"]
    assert tm.tokenize("주가가 3.5% 올랐다") == ["주가", "가", "3.5", "오르", "었", "다"]
    assert tm.tokenize("") == [] and tm.tokenize("  ...  ") == []


def test_seed_003_korean_example_on_morphemes():
    # seed 003: reference "서울의 인구는 약 천만 명입니다", generated "서울 인구는 약 1천만 명입니다". The seed splits on its
    # own words (7 of 8). On morphemes the reference is 서울 의 인구 는 약 천만 명 이 ᆸ니다 (9) and the generated text
    # has all of them but 의 (1천만 = 1 + 천만): recall 8/9.
    ref = tm.tokenize("서울의 인구는 약 천만 명입니다")
    gen = tm.tokenize("서울 인구는 약 1천만 명입니다")
    assert ref == ["서울", "의", "인구", "는", "약", "천만", "명", "이", "ᆸ니다"]
    assert tm.rouge_n(gen, ref, 1)["recall"] == pytest.approx(8 / 9)


# ----------------------------------------------------------------------------------------------------------------------
# ROUGE
# ----------------------------------------------------------------------------------------------------------------------


def test_seed_003_worked_example_rouge1_recall_and_bleu1_precision():
    # seed 003: reference "the cat is on the mat", generated "the cat sat"
    reference, generated = tm.tokenize("the cat is on the mat"), tm.tokenize("the cat sat")
    assert tm.rouge_n(generated, reference, 1)["recall"] == pytest.approx(2 / 6)  # 0.33
    assert round(tm.rouge_n(generated, reference, 1)["recall"], 2) == 0.33
    assert tm.ngram_precision(generated, reference, 1) == pytest.approx(2 / 3)  # 0.67
    assert round(tm.ngram_precision(generated, reference, 1), 2) == 0.67
    # the direction matters: swapped, recall is 2/3 and precision 2/6
    assert tm.rouge_n(reference, generated, 1)["recall"] == pytest.approx(2 / 3)
    assert tm.ngram_precision(reference, generated, 1) == pytest.approx(2 / 6)


def test_rouge_n_clips_counts_and_f1_by_hand():
    # bigrams of "the cat sat on the mat" vs "the cat is on the mat": {the cat, on the, the mat} shared of 5 each
    r2 = tm.rouge_n("the cat sat on the mat".split(), "the cat is on the mat".split(), 2)
    assert r2 == pytest.approx({"precision": 3 / 5, "recall": 3 / 5, "f1": 3 / 5})
    # "the" four times against once: one match, P = 1/4, R = 1/2, F1 = 2PR/(P+R) = 1/3
    r1 = tm.rouge_n("the the the the".split(), "the cat".split(), 1)
    assert r1 == pytest.approx({"precision": 1 / 4, "recall": 1 / 2, "f1": 1 / 3})
    assert tm.rouge_n([], [], 1)["f1"] == 1.0 and tm.rouge_n(["a"], [], 1)["f1"] == 0.0


def test_rouge_l_lin_2004_example():
    # Lin (2004): reference "police killed the gunman"; S2 "police kill the gunman" has LCS 3 (police the gunman),
    # S3 "the gunman kill police" has LCS 2 (the gunman)
    ref = tm.tokenize("police killed the gunman")
    assert tm.rouge_l(tm.tokenize("police kill the gunman"), ref)["f1"] == pytest.approx(3 / 4)
    assert tm.rouge_l(tm.tokenize("the gunman kill police"), ref)["f1"] == pytest.approx(2 / 4)
    assert tm.lcs_length(list("abcbdab"), list("bdcaba")) == 4  # CLRS's example: BCBA
    # LCS 2 of candidate 3 and reference 6: P 2/3, R 1/3, F1 4/9
    assert tm.rouge_l("the cat sat".split(), "the cat is on the mat".split()) == \
        pytest.approx({"precision": 2 / 3, "recall": 1 / 3, "f1": 4 / 9})


# ----------------------------------------------------------------------------------------------------------------------
# BLEU
# ----------------------------------------------------------------------------------------------------------------------


def test_sentence_bleu_seed_example_by_hand():
    # "the cat sat" vs "the cat is on the mat": p1 = 2/3, p2 = 1/2 (the cat), p3 = 0 matches of 1 -> smoothed 1/(2*1);
    # no 4-grams in a 3-token candidate: scored on 3 orders. BP = exp(1 - 6/3).
    expected = math.exp(1 - 6 / 3) * (2 / 3 * 1 / 2 * 1 / 2) ** (1 / 3)
    assert tm.sentence_bleu("the cat sat".split(), "the cat is on the mat".split()) == pytest.approx(expected)


def test_sentence_bleu_smoothing_and_perfect_match():
    # "a b c d" vs "a b c e": p1 3/4, p2 2/3, p3 1/2, p4 0 of 1 -> 1/2; same length: BP 1
    expected = (3 / 4 * 2 / 3 * 1 / 2 * 1 / 2) ** (1 / 4)
    assert tm.sentence_bleu(list("abcd"), list("abce")) == pytest.approx(expected)
    assert tm.sentence_bleu(list("abcdef"), list("abcdef")) == pytest.approx(1.0)
    assert tm.sentence_bleu([], list("ab")) == 0.0
    assert tm.sentence_bleu(list("xyz"), list("abc")) == 0.0  # nothing in common: no smoothing makes it positive
    # longer than the reference: no brevity penalty, precision alone
    assert tm.sentence_bleu(list("aaaa"), list("a")) == pytest.approx(
        (1 / 4 * 1 / (2 * 3) * 1 / (4 * 2) * 1 / (8 * 1)) ** (1 / 4))


def test_corpus_bleu_sums_counts_before_the_mean():
    cands = [list("abcde"), list("abx")]
    refs = [list("abcde"), list("abcd")]
    # unigram matches 5+2 of 5+3, bigrams 4+1 of 4+2, trigrams 3+0 of 3+1, 4-grams 2+0 of 2+0; c = 8, r = 9
    expected = math.exp(1 - 9 / 8) * (7 / 8 * 5 / 6 * 3 / 4 * 2 / 2) ** (1 / 4)
    assert tm.corpus_bleu(cands, refs) == pytest.approx(expected)
    mean_sentence = (tm.sentence_bleu(cands[0], refs[0]) + tm.sentence_bleu(cands[1], refs[1])) / 2
    assert tm.corpus_bleu(cands, refs) != pytest.approx(mean_sentence)  # not the mean of sentence scores
    assert tm.corpus_bleu([list("ab")], [list("ab")]) == 0.0  # a corpus without 4-grams has no 4-gram precision
    with pytest.raises(ValueError):
        tm.corpus_bleu([["a"]], [])


# ----------------------------------------------------------------------------------------------------------------------
# Cosine similarity on a real encoder
# ----------------------------------------------------------------------------------------------------------------------


def test_cosine_of_vectors_by_hand():
    assert tm.cosine([1, 0], [1, 1]) == pytest.approx(1 / math.sqrt(2))
    assert tm.cosine([1, 2, 3], [-1, -2, -3]) == pytest.approx(-1.0)
    assert tm.cosine([0, 0], [1, 1]) == 0.0


@pytest.fixture(scope="module")
def minilm():
    from launch.assets import all_minilm_l6_v2

    return tm.SentenceEncoder(str(all_minilm_l6_v2()))


def test_minilm_cosine_identical_related_unrelated(minilm):
    cat = "The cat sits on the mat."
    scores = minilm.similarities([cat, cat, cat, ""], [cat, "A cat is sitting on a mat.", "Stock markets fell today.",
                                                        "x"])
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
    assert scores[1] > 0.8 > 0.2 > scores[2]  # a paraphrase is close, an unrelated sentence is not
    assert scores[3] == 0.0  # an empty answer is similar to nothing
    vectors = minilm.encode([cat, "Stock markets fell today."])
    assert tm.cosine(vectors[0], vectors[1]) == pytest.approx(scores[2], abs=1e-5)


def test_english_only_encoder_warns_on_korean(minilm, qwen3_tokenizer):
    korean = ["서울의 인구는 약 천만 명입니다", "오늘 비가 많이 와서 우산을 샀다"]
    assert tm.hangul_coverage(minilm.tokenizer, korean) == 0.0  # Hangul falls apart into jamo and [UNK]
    warning = minilm.language_warning(korean)
    assert warning and "unreliable for Korean" in warning and "eval.embedding_model" in warning
    assert minilm.language_warning(["The cat sits on the mat."]) is None  # no Korean: nothing to warn about
    assert tm.hangul_coverage(qwen3_tokenizer, korean) > 0.5  # a vocabulary with Korean keeps syllables whole
