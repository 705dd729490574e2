"""Evaluation metrics: hand-worked cases from the official rules, plus cross-checks against independent computations."""

import itertools
import math
import random
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mplug_hf.evaluation import (
    CiderD,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    cider_d_scores,
    compute_caption_metrics,
    corpus_bleu,
    evaluate_vqa,
    generalized_box_iou,
    grounding_accuracy,
    normalize_vqa_answer,
    paired_box_iou,
    rerank_scores,
    retrieval_metrics,
    rouge_l_scores,
    simple_tokenize,
    vqa_accuracy,
)
from mplug_hf.evaluation import caption as caption_module


# ----------------------------------------------------------------------------------------------------------------------
# VQA
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        # "." is not followed by a digit -> stripped; "two" -> "2".
        ("Two dogs.", "2 dogs"),
        # "!" touches no space -> replaced by a space; the article "a" is dropped.
        ("It's a dog!", "it's dog"),
        # ", " occurs in the text -> "," is removed (not replaced by a space).
        ("yes, it is", "yes it is"),
        # A comma between digits -> every punctuation mark is removed.
        ("1,000", "1000"),
        # ... including the "-" elsewhere in the text: "12,5 and 3 - 4" -> "125 and 3  4" -> split/join.
        ("12,5 and 3 - 4", "125 and 3 4"),
        # A period followed by a digit is kept.
        ("2.5", "2.5"),
        # "/" touches no space -> a space; touching a space -> removed (the double space disappears on split/join).
        ("black/white", "black white"),
        ("black / white", "black white"),
        ("(yes)", "yes"),
        ("The Three cats", "3 cats"),
        ("none", "0"),
        ("dont know", "don't know"),
        ("t-shirt", "t shirt"),
        # "Im" is a contraction key with a capital, unreachable once the text is lower-cased: left alone.
        ("Im here", "im here"),
        ("  left\n", "left"),
        # The official `periodStrip.sub("", text, re.UNICODE)` strips at most re.UNICODE == 32 periods: 40 - 32 = 8.
        ("x" + "." * 40, "x" + "." * 8),
    ],
)
def test_normalize_vqa_answer_follows_official_rules(raw, expected):
    assert normalize_vqa_answer(raw) == expected


@pytest.mark.parametrize(
    "num_matching, expected",
    [
        # With k of the 10 human answers matching, the k matching subsets see k - 1 matches and the 10 - k others k:
        (0, 0.0),
        (1, 0.3),  # (1 * min(1, 0/3) + 9 * min(1, 1/3)) / 10 = 3/10
        (2, 0.6),  # (2 * 1/3 + 8 * 2/3) / 10 = (2/3 + 16/3) / 10 = 6/10
        (3, 0.9),  # (3 * 2/3 + 7 * 1) / 10 = 9/10
        (4, 1.0),  # (4 * min(1, 3/3) + 6 * min(1, 4/3)) / 10 = 1
    ],
)
def test_vqa_accuracy_averages_leave_one_out_subsets(num_matching, expected):
    gt_answers = ["red"] * num_matching + ["blue"] * (10 - num_matching)
    accuracy = vqa_accuracy("Red", gt_answers)
    assert accuracy == pytest.approx(expected)

    # Brute force: enumerate the 10 subsets of 9 answers explicitly.
    subsets = itertools.combinations(gt_answers, 9)
    brute_force = np.mean([min(1.0, sum(answer == "red" for answer in subset) / 3) for subset in subsets])
    assert accuracy == pytest.approx(brute_force)


def test_vqa_accuracy_processes_human_answers_like_the_official_script():
    # Identical human answers are left untouched, so "t-shirt" never equals the normalized prediction "t shirt".
    assert vqa_accuracy("t-shirt", ["t-shirt"] * 10) == 0.0
    # Differing human answers get the punctuation step: 3 x "t shirt" match -> 0.9.
    assert vqa_accuracy("T-shirt", ["t-shirt"] * 3 + ["shirt"] * 7) == pytest.approx(0.9)
    # ... but not the number-word step: only the 5 x "2" match the normalized "two" -> min(1, 4/3 or 5/3) = 1.
    assert vqa_accuracy("two", ["two"] * 5 + ["2"] * 5) == pytest.approx(1.0)
    assert vqa_accuracy("two", ["two"] * 10) == 0.0


def test_evaluate_vqa_overall_and_per_answer_type():
    annotations = [
        {"question_id": 1, "answers": ["yes"] * 10, "answer_type": "yes/no"},
        {"question_id": 2, "answers": ["2"] * 2 + ["3"] * 8, "answer_type": "number"},
        {"question_id": 3, "answers": ["red"] + ["blue"] * 9, "answer_type": "other"},
        {"question_id": 4, "answers": ["blue"] * 10},
    ]
    predictions = [
        {"question_id": 4, "answer": "green"},  # 0 matches -> 0
        {"question_id": 1, "answer": "Yes"},  # 10 matches -> 1
        {"question_id": 2, "answer": "two"},  # "2": 2 matches -> 0.6
        {"question_id": 3, "answer": "red"},  # 1 match -> 0.3
    ]
    result = evaluate_vqa(predictions, annotations)
    # overall = (1 + 0.6 + 0.3 + 0) / 4 = 0.475; question 4 has no answer type.
    assert result["overall"] == pytest.approx(47.5)
    assert result["per_answer_type"] == pytest.approx({"yes/no": 100.0, "number": 60.0, "other": 30.0})


@pytest.mark.parametrize(
    "predictions, annotations, message",
    [
        ([], [{"question_id": 1, "answers": ["a"]}], "no prediction"),
        ([{"question_id": 1, "answer": "a"}], [{"question_id": 1, "answers": []}], "empty list of answers"),
        (
            [{"question_id": 1, "answer": "a"}, {"question_id": 2, "answer": "b"}],
            [{"question_id": 1, "answers": ["a"]}],
            "without annotation",
        ),
        (
            [{"question_id": 1, "answer": "a"}, {"question_id": 1, "answer": "b"}],
            [{"question_id": 1, "answers": ["a"]}],
            "predicted more than once",
        ),
        ([], [], "empty"),
    ],
)
def test_evaluate_vqa_rejects_inconsistent_inputs(predictions, annotations, message):
    with pytest.raises(ValueError, match=message):
        evaluate_vqa(predictions, annotations)


def test_vqa_accuracy_rejects_empty_answers():
    with pytest.raises(ValueError, match="empty"):
        vqa_accuracy("yes", [])


# ----------------------------------------------------------------------------------------------------------------------
# Captioning
# ----------------------------------------------------------------------------------------------------------------------


def _random_clean_corpus(num_images=12, seed=0):
    """Lower-case, punctuation-free captions (PTB and `simple_tokenize` agree on them) with many shared n-grams."""
    rng = random.Random(seed)
    vocabulary = ["a", "man", "dog", "on", "the", "grass", "red", "ball", "with", "plays"]
    references, candidates = [], []
    for _ in range(num_images):
        refs = [" ".join(rng.choices(vocabulary, k=rng.randint(4, 11))) for _ in range(rng.randint(1, 5))]
        # The candidate is a reference with a couple of words changed and possibly truncated or extended.
        words = rng.choice(refs).split()
        for position in rng.sample(range(len(words)), 2):
            words[position] = rng.choice(vocabulary)
        words = words[: rng.randint(3, len(words))] + rng.choices(vocabulary, k=rng.randint(0, 3))
        references.append(refs)
        candidates.append(" ".join(words))
    return candidates, references


def test_simple_tokenize_approximates_ptb():
    # Expected tokens are those of coco-caption's PTB tokenizer (lower-cased, punctuation tokens removed).
    assert simple_tokenize("A man's well-dressed, isn't he?") == ["a", "man", "'s", "well-dressed", "is", "n't", "he"]
    assert simple_tokenize("Two dogs playing with a frisbee.") == ["two", "dogs", "playing", "with", "a", "frisbee"]
    assert simple_tokenize("It costs 3.5 dollars") == ["it", "costs", "3.5", "dollars"]


def test_bleu_hand_worked_with_coco_smoothing():
    # candidate "the cat the cat", reference "the cat sat":
    #   1-grams: the x2, cat x2 vs the x1, cat x1 -> clipped matches 2 of 4
    #   2-grams: "the cat" x2, "cat the" vs "the cat" x1 -> 1 of 3
    #   3-grams: 0 of 2, 4-grams: 0 of 1; lengths 4 >= 3 -> no brevity penalty.
    # BLEU-n = (prod_{k<=n} (correct_k + 1e-15) / (guessed_k + 1e-9)) ** (1/n)
    bleus = corpus_bleu(["the cat the cat"], [["the cat sat"]])
    assert bleus[0] == pytest.approx(0.5)
    assert bleus[1] == pytest.approx(math.sqrt(1 / 2 * 1 / 3))
    # A zero precision does not give exactly 0: (1/2 * 1/3 * 1e-15/2) ** (1/3) ~ 4.37e-6.
    assert bleus[2] == pytest.approx((1 / 2 * 1 / 3 * 1e-15 / 2) ** (1 / 3), rel=1e-6)
    assert bleus[3] == pytest.approx((1 / 2 * 1 / 3 * 1e-15 / 2 * 1e-15 / 1) ** (1 / 4), rel=1e-6)


def test_bleu_uses_closest_reference_length_at_corpus_level():
    # Image 1: "a b c d" vs refs of lengths 3 and 5 (both 1 away) -> the shorter, 3; every n-gram matches "a b c d e".
    # Image 2: "x y" vs a length-5 ref; its 1- and 2-grams match, it has no 3- or 4-grams.
    # Corpus: all precisions are 6/6, 4/4, 2/2, 1/1; candidate length 6, reference length 3 + 5 = 8
    # -> brevity penalty exp(1 - 8/6) = exp(-1/3) on every BLEU-n ("average" would give exp(-1/2), the longer tie
    # exp(-2/3)).
    bleus = corpus_bleu(["a b c d", "x y"], [["a b c", "a b c d e"], ["x y z w v"]])
    np.testing.assert_allclose(bleus, [math.exp(-1 / 3)] * 4, rtol=1e-8)


def test_bleu_matches_nltk():
    bleu_score = pytest.importorskip("nltk.translate.bleu_score")
    candidates, references = _random_clean_corpus()
    ours = corpus_bleu(candidates, references)
    tokenized_refs = [[ref.split() for ref in refs] for refs in references]
    tokenized_candidates = [candidate.split() for candidate in candidates]
    for n in range(1, 5):
        expected = bleu_score.corpus_bleu(tokenized_refs, tokenized_candidates, weights=(1 / n,) * n)
        # Only coco-caption's 1e-9 smoothing of the denominators differs.
        assert ours[n - 1] == pytest.approx(expected, rel=1e-6)


def test_rouge_l_hand_worked_takes_best_precision_and_recall_separately():
    # candidate: a cat sat on the mat (6 tokens)
    #   ref 1 "the cat is on the mat": LCS "cat on the mat" = 4 -> P = 4/6, R = 4/6
    #   ref 2 "a cat": LCS "a cat" = 2 -> P = 2/6, R = 2/2
    # P = max = 2/3 (ref 1), R = max = 1 (ref 2); F = (1 + 1.2^2) P R / (R + 1.2^2 P) = 2.44 * 2/3 / (1 + 0.96)
    scores = rouge_l_scores(["a cat sat on the mat"], [["the cat is on the mat", "a cat"]])
    assert scores[0] == pytest.approx(2.44 * 2 / 3 / 1.96)


def test_rouge_l_matches_brute_force_lcs():
    def brute_force_lcs(first, second):
        # Longest subsequence of `first` that is also a subsequence of `second`.
        def is_subsequence(candidate, sequence):
            remaining = iter(sequence)
            return all(token in remaining for token in candidate)

        for length in range(len(first), 0, -1):
            if any(is_subsequence(combo, second) for combo in itertools.combinations(first, length)):
                return length
        return 0

    candidates, references = _random_clean_corpus(num_images=6, seed=1)
    scores = rouge_l_scores(candidates, references)
    for candidate, refs, score in zip(candidates, references, scores):
        candidate_tokens = candidate.split()
        lcs = [brute_force_lcs(candidate_tokens, ref.split()) for ref in refs]
        precision = max(length / len(candidate_tokens) for length in lcs)
        recall = max(length / len(ref.split()) for length, ref in zip(lcs, refs))
        expected = 2.44 * precision * recall / (recall + 1.44 * precision) if precision and recall else 0.0
        assert score == pytest.approx(expected)


def test_cider_d_hand_worked():
    # Two documents: {"a cat sits"} and {"a dog runs"}. "a" occurs in both -> idf log(2/2) = 0; every other n-gram
    # occurs in one -> idf log(2/1) = L.
    # "a cat sits" vs "a cat sits": cosine 1 for n = 1, 2, 3, no 4-grams (0); equal lengths -> 10 * 3/4 = 7.5.
    # "a dog" vs "a dog runs": n=1: {a: 0, dog: L} . {a: 0, dog: L, runs: L} / (L * sqrt(2) L) = 1/sqrt(2);
    # n=2: {"a dog": L} vs {"a dog": L, "dog runs": L} -> 1/sqrt(2); n=3, 4: 0; length 2 vs 3 -> exp(-1/72).
    scores = cider_d_scores(["a cat sits", "a dog"], [["a cat sits"], ["a dog runs"]])
    np.testing.assert_allclose(scores, [7.5, 10 * math.exp(-1 / 72) * (2 / math.sqrt(2)) / 4])


def test_cider_d_clips_repeated_ngrams():
    # "dog dog" vs "dog cat", second document "bird": idf of dog, cat, "dog cat" = log 2, "dog dog" unseen -> log 2.
    # n=1: candidate {dog: 2L}, norm 2L; reference {dog: L, cat: L}, norm sqrt(2) L; clipped dot min(2L, L) * L = L^2
    # -> 1/(2 sqrt(2)) (unclipped would be 2L^2 -> 1/sqrt(2)); n=2: no common bigram -> 0; same length.
    scores = cider_d_scores(["dog dog", "bird"], [["dog cat"], ["bird"]])
    assert scores[0] == pytest.approx(10 * (1 / (2 * math.sqrt(2))) / 4)


def test_cider_d_fixed_document_frequency():
    # Alone in its batch every n-gram occurs in every document: idf log(1/1) = 0, all vectors vanish -> 0.
    assert cider_d_scores(["a cat sits"], [["a cat sits"]])[0] == 0.0
    # With the document frequencies of the two-document corpus above, the same pair scores 7.5 again.
    scorer = CiderD(document_frequency_corpus=[["a cat sits"], ["a dog runs"]])
    assert scorer(["a cat sits"], [["a cat sits"]])[0] == pytest.approx(7.5)


def test_pure_python_scorers_match_pycocoevalcap():
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer
    from pycocoevalcap.cider.cider_scorer import CiderScorer
    from pycocoevalcap.rouge.rouge import Rouge

    # These coco-caption scorers are pure Python: no Java needed. Repeated references as in an SCST batch.
    candidates, references = _random_clean_corpus(num_images=10, seed=2)
    candidates, references = candidates * 2, references * 2

    cider = CiderScorer(n=4, sigma=6.0)
    bleu = BleuScorer(n=4)
    for candidate, refs in zip(candidates, references):
        cider += (candidate, refs)
        bleu += (candidate, refs)
    _, expected_cider = cider.compute_score()
    expected_bleu, _ = bleu.compute_score(option="closest")
    _, expected_rouge = Rouge().compute_score(
        {i: refs for i, refs in enumerate(references)}, {i: [cand] for i, cand in enumerate(candidates)}
    )

    np.testing.assert_allclose(cider_d_scores(candidates, references), expected_cider, rtol=1e-10)
    np.testing.assert_allclose(corpus_bleu(candidates, references), expected_bleu, rtol=1e-10)
    np.testing.assert_allclose(rouge_l_scores(candidates, references), expected_rouge, rtol=1e-10)


def test_compute_caption_metrics_python_backend():
    candidates, references = _random_clean_corpus(num_images=5, seed=3)
    predictions = {f"img{i}": candidate for i, candidate in enumerate(candidates)}
    # An image without prediction is ignored, as in COCOEvalCap.
    references_by_id = {f"img{i}": refs for i, refs in enumerate(references)} | {"unused": ["a b c"]}
    metrics = compute_caption_metrics(predictions, references_by_id, backend="python")

    assert set(metrics) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}
    np.testing.assert_allclose([metrics[f"Bleu_{n}"] for n in range(1, 5)], corpus_bleu(candidates, references))
    assert metrics["ROUGE_L"] == pytest.approx(rouge_l_scores(candidates, references).mean())
    assert metrics["CIDEr"] == pytest.approx(cider_d_scores(candidates, references).mean())


def test_compute_caption_metrics_falls_back_without_java(monkeypatch):
    monkeypatch.setattr(caption_module, "_coco_caption_available", lambda: False)
    with pytest.warns(UserWarning, match="METEOR and SPICE are skipped"):
        metrics = compute_caption_metrics({1: "a dog"}, {1: ["a dog runs"]})
    assert "METEOR" not in metrics and "SPICE" not in metrics and "CIDEr" in metrics
    with pytest.raises(RuntimeError, match="Java"):
        compute_caption_metrics({1: "a dog"}, {1: ["a dog runs"]}, backend="pycocoevalcap")


@pytest.mark.parametrize(
    "predictions, references, backend, message",
    [
        ({}, {1: ["a"]}, "python", "empty"),
        ({1: "a dog"}, {2: ["a dog"]}, "python", "no reference"),
        ({1: "a dog"}, {1: []}, "python", "no reference"),
        ({1: "a dog"}, {1: ["a dog"]}, "bleu", "Unknown backend"),
    ],
)
def test_compute_caption_metrics_rejects_bad_inputs(predictions, references, backend, message):
    with pytest.raises(ValueError, match=message):
        compute_caption_metrics(predictions, references, backend=backend)


_NEEDS_COCO_CAPTION = pytest.mark.skipif(
    not caption_module._coco_caption_available(), reason="needs the pycocoevalcap package and a Java runtime"
)


class _FixedMeteor:
    """Stands in for pycocoevalcap's METEOR, whose JVM takes ~12 s to load its paraphrase tables."""

    def compute_score(self, gts, res):
        assert gts.keys() == res.keys()
        return 0.25, [0.25] * len(res)


@_NEEDS_COCO_CAPTION
def test_compute_caption_metrics_official_backend_agrees_with_python(monkeypatch):
    import pycocoevalcap.meteor.meteor as meteor_module
    import pycocoevalcap.spice.spice as spice_module

    monkeypatch.setattr(meteor_module, "Meteor", _FixedMeteor)
    candidates, references = _random_clean_corpus(num_images=8, seed=4)
    # Upper case and punctuation exercise the PTB tokenizer, which lower-cases and drops punctuation tokens.
    predictions = {index: candidate.capitalize() + "!" for index, candidate in enumerate(candidates)}
    references_by_id = dict(enumerate(references))
    if (Path(spice_module.__file__).parent / "lib" / "stanford-corenlp-3.6.0.jar").is_file():
        official = compute_caption_metrics(predictions, references_by_id, backend="pycocoevalcap")
        assert 0.0 <= official["SPICE"] <= 1.0
    else:
        with pytest.warns(UserWarning, match="SPICE skipped"):
            official = compute_caption_metrics(predictions, references_by_id, backend="pycocoevalcap")
        assert "SPICE" not in official
    python = compute_caption_metrics(predictions, references_by_id, backend="python")

    # Both tokenizers turn these captions into the same tokens, so the scores must be identical.
    for name in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"):
        assert python[name] == pytest.approx(official[name], rel=1e-9), name
    assert official["METEOR"] == 0.25


@_NEEDS_COCO_CAPTION
@pytest.mark.slow  # METEOR's JVM takes ~12 s to load its paraphrase tables
def test_compute_caption_metrics_official_meteor():
    # After PTB tokenization the prediction equals its reference: one chunk of exact matches, METEOR 1.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SPICE may be skipped
        metrics = compute_caption_metrics({1: "A dog runs fast."}, {1: ["a dog runs fast"]}, backend="pycocoevalcap")
    assert metrics["METEOR"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------------------------------
# Retrieval
# ----------------------------------------------------------------------------------------------------------------------


def test_retrieval_metrics_hand_worked():
    # Image 0 is described by texts 0 and 1, image 1 by texts 2 and 3.
    scores_i2t = np.array([[0.1, 0.9, 0.8, 0.2], [0.7, 0.6, 0.5, 0.1]])
    # Image 0: order t1, t2, t3, t0 -> best ground truth t1 at rank 0.
    # Image 1: order t0, t1, t2, t3 -> best ground truth t2 at rank 2.  -> txt R@1 50, R@5 100, R@10 100.
    # Texts (columns): t0 [0.1, 0.7] -> image 0 at rank 1; t1 [0.9, 0.6] -> 0; t2 [0.8, 0.5] -> image 1 at rank 1;
    # t3 [0.2, 0.1] -> rank 1.  -> img R@1 25, R@5 100, R@10 100.
    metrics = retrieval_metrics(scores_i2t, txt2img=[0, 0, 1, 1], img2txt=[[0, 1], [2, 3]])
    expected = {
        "txt_r1": 50.0,
        "txt_r5": 100.0,
        "txt_r10": 100.0,
        "txt_r_mean": 250 / 3,
        "img_r1": 25.0,
        "img_r5": 100.0,
        "img_r10": 100.0,
        "img_r_mean": 75.0,
        "r_mean": (250 / 3 + 75) / 2,
    }
    assert metrics == pytest.approx(expected)


def _retrieval_problem(seed=0, num_images=15, captions_per_image=3):
    rng = np.random.default_rng(seed)
    txt2img = rng.permutation(np.repeat(np.arange(num_images), captions_per_image)).tolist()
    img2txt = [[text for text, image in enumerate(txt2img) if image == index] for index in range(num_images)]
    # Ground-truth pairs get a boost so that R@1, R@5 and R@10 all differ.
    is_pair = np.array(txt2img)[None, :] == np.arange(num_images)[:, None]
    scores_i2t = rng.normal(size=is_pair.shape) + 1.0 * is_pair
    scores_t2i = rng.normal(size=is_pair.T.shape)
    return scores_i2t, scores_t2i, txt2img, img2txt


def test_retrieval_metrics_match_brute_force_ranks():
    scores_i2t, scores_t2i, txt2img, img2txt = _retrieval_problem()
    num_images, num_texts = scores_i2t.shape

    # Rank = number of candidates scored strictly higher (continuous scores: no ties).
    text_ranks = np.array(
        [min((scores_i2t[i] > scores_i2t[i, t]).sum() for t in img2txt[i]) for i in range(num_images)]
    )
    image_ranks = np.array([(scores_t2i[t] > scores_t2i[t, txt2img[t]]).sum() for t in range(num_texts)])
    metrics = retrieval_metrics(scores_i2t, txt2img, img2txt, scores_t2i=scores_t2i)
    for k in (1, 5, 10):
        assert metrics[f"txt_r{k}"] == pytest.approx(100 * np.mean(text_ranks < k))
        assert metrics[f"img_r{k}"] == pytest.approx(100 * np.mean(image_ranks < k))
    assert 0 < metrics["txt_r1"] < metrics["txt_r5"] < metrics["txt_r10"] < 100
    assert 0 < metrics["img_r1"] < metrics["img_r5"] < metrics["img_r10"] < 100


def test_retrieval_metrics_break_ties_like_itm_eval():
    # Re-ranked matrices are full of -100 ties; ranks must follow the original per-row `np.argsort(score)[::-1]`.
    scores_i2t, scores_t2i, txt2img, img2txt = _retrieval_problem(seed=1)
    scores_i2t = rerank_scores(scores_i2t, np.round(scores_i2t, 1), k=6)
    scores_t2i = rerank_scores(scores_t2i, np.round(scores_t2i, 1), k=4)

    def recalls(ranks):
        return [100.0 * np.mean(ranks < k) for k in (1, 5, 10)]

    text_ranks = []
    for image, score in enumerate(scores_i2t):
        order = np.argsort(score)[::-1]
        text_ranks.append(min(np.where(order == text)[0][0] for text in img2txt[image]))
    image_ranks = [np.where(np.argsort(score)[::-1] == txt2img[text])[0][0] for text, score in enumerate(scores_t2i)]

    metrics = retrieval_metrics(scores_i2t, txt2img, img2txt, scores_t2i=scores_t2i)
    assert [metrics["txt_r1"], metrics["txt_r5"], metrics["txt_r10"]] == pytest.approx(recalls(np.array(text_ranks)))
    assert [metrics["img_r1"], metrics["img_r5"], metrics["img_r10"]] == pytest.approx(recalls(np.array(image_ranks)))


def test_retrieval_metrics_rejects_inconsistent_inputs():
    with pytest.raises(ValueError, match="img2txt"):
        retrieval_metrics(np.zeros((2, 3)), txt2img=[0, 1, 1], img2txt=[[0]])
    with pytest.raises(ValueError, match="at least one"):
        retrieval_metrics(np.zeros((2, 2)), txt2img=[0, 0], img2txt=[[0, 1], []])


def test_rerank_scores_keeps_top_k_by_itc():
    itc = np.array([[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.7, 0.1]])
    itm = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    # Top-2 by ITC: query 0 -> candidates 0, 2; query 1 -> candidates 1, 2.
    expected = np.array([[1.0, -100.0, 3.0, -100.0], [-100.0, 6.0, 7.0, -100.0]])
    np.testing.assert_array_equal(rerank_scores(itc, itm, k=2), expected)

    calls = []

    def itm_fn(query_index, candidate_indices):
        calls.append((query_index, sorted(candidate_indices.tolist())))
        return itm[query_index, candidate_indices]

    np.testing.assert_array_equal(rerank_scores(itc, itm_fn, k=2), expected)
    assert calls == [(0, [0, 2]), (1, [1, 2])]
    # k larger than the number of candidates re-ranks them all.
    np.testing.assert_array_equal(rerank_scores(itc, itm, k=10), itm)


# ----------------------------------------------------------------------------------------------------------------------
# Grounding
# ----------------------------------------------------------------------------------------------------------------------


def test_box_format_conversions():
    cxcywh = torch.tensor([[1.0, 1.0, 2.0, 2.0], [0.5, 0.5, 0.2, 0.4]])
    xyxy = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.4, 0.3, 0.6, 0.7]])
    torch.testing.assert_close(box_cxcywh_to_xyxy(cxcywh), xyxy)
    torch.testing.assert_close(box_xyxy_to_cxcywh(xyxy), cxcywh)


def test_box_iou_and_generalized_iou_hand_worked():
    boxes1 = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    boxes2 = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 2.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0]])
    iou, union = box_iou(boxes1, boxes2)
    # [0,0,2,2] vs [1,1,3,3]: intersection 1, union 4 + 4 - 1 = 7; vs [2,2,3,3]: touching corner -> 0; vs itself 1.
    # [0,0,1,1] vs [1,1,3,3]: 0; vs [2,2,3,3]: 0; vs [0,0,2,2]: 1 / 4.
    torch.testing.assert_close(iou, torch.tensor([[1 / 7, 0.0, 1.0], [0.0, 0.0, 0.25]]))
    torch.testing.assert_close(union, torch.tensor([[7.0, 5.0, 4.0], [5.0, 2.0, 4.0]]))
    # GIoU = IoU - (enclosing - union) / enclosing; enclosing boxes: [0,0,3,3] = 9, 9, 4 and 9, 9, 4.
    torch.testing.assert_close(
        generalized_box_iou(boxes1, boxes2),
        torch.tensor([[1 / 7 - 2 / 9, -4 / 9, 1.0], [-4 / 9, -7 / 9, 0.25]]),
    )
    # The paired IoU is the diagonal of the pairwise one.
    torch.testing.assert_close(paired_box_iou(boxes1, boxes2[:2]), torch.diagonal(iou[:, :2]))
    # Two degenerate boxes: 0, not NaN.
    assert paired_box_iou(torch.zeros(1, 4), torch.zeros(1, 4)).item() == 0.0


def test_grounding_accuracy_hand_worked():
    predictions = np.array([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    ground_truths = np.array([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 3.0, 3.0]])
    # IoUs: 1, 1/2 (intersection 1, union 2 + 1 - 1) and 1/7; IoU >= 0.5 counts -> 2 of 3.
    result = grounding_accuracy(predictions, ground_truths)
    assert result["accuracy"] == pytest.approx(200 / 3)
    assert result["mean_iou"] == pytest.approx((1 + 0.5 + 1 / 7) / 3)
    assert grounding_accuracy(torch.from_numpy(predictions), ground_truths, threshold=0.6)["accuracy"] == (
        pytest.approx(100 / 3)
    )
    with pytest.raises(ValueError, match="num_samples, 4"):
        grounding_accuracy(predictions, ground_truths[:2])


# ----------------------------------------------------------------------------------------------------------------------
# Bad data: numeric answers, single answers, malformed files named by file and line, checked before the run
# ----------------------------------------------------------------------------------------------------------------------


def test_numeric_human_answers_score_as_strings():
    assert vqa_accuracy("2", [2, 2, 2]) == pytest.approx(2 / 3)  # as for ["2", "2", "2"] (was 0)
    assert vqa_accuracy("2", [2, 2, 2]) == vqa_accuracy("2", ["2", "2", "2"])
    assert vqa_accuracy("2", [2.0] * 10) == 1.0 and vqa_accuracy(2, ["2"] * 10) == 1.0
    result = evaluate_vqa([{"question_id": 1, "answer": "2"}], [{"question_id": 1, "answers": [2] * 10}])
    assert result["overall"] == 100.0
    with pytest.raises(ValueError, match="must be strings"):
        vqa_accuracy("2", [None])


def test_single_answer_data_warns_under_the_leave_one_out_rule():
    with pytest.warns(UserWarning, match="1 of 2 questions .* single human answer.* scores them 0"):
        result = evaluate_vqa(
            [{"question_id": 1, "answer": "yes"}, {"question_id": 2, "answer": "no"}],
            [{"question_id": 1, "answers": "yes"}, {"question_id": 2, "answers": ["no"] * 10}],
        )
    assert result["overall"] == 50.0  # the single answer matches and still scores 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate_vqa([{"question_id": 1, "answer": "no"}], [{"question_id": 1, "answers": ["no"] * 10}])


def test_malformed_evaluation_files_name_the_file_and_line(tmp_path):
    from mplug_hf.evaluation.runner import load_records, require_field

    path = tmp_path / "vqa.jsonl"
    path.write_text('{"image": "a.png", "question": "q?"}\n\n{"image": "b.png", "question": }\n')
    with pytest.raises(ValueError, match=r"vqa.jsonl:3: not valid JSON"):
        load_records(str(path))
    path.write_text('{"image": "a.png", "question": "q?"}\n\n{"image": "b.png"}\n[1]\n')
    with pytest.raises(ValueError, match=r"vqa.jsonl:4: a record must be a JSON object"):
        load_records(str(path))
    path.write_text('{"image": "a.png", "question": "q?"}\n\n{"image": "b.png"}\n')
    records = load_records(str(path))
    with pytest.raises(ValueError, match=r"vqa.jsonl:3: no 'question' field"):
        require_field(records, "question")
    json_path = tmp_path / "vqa.json"
    json_path.write_text('[\n {"image": "a.png"},\n {"image": ,}\n]')
    with pytest.raises(ValueError, match=r"vqa.json:3: not valid JSON"):
        load_records(str(json_path))


class _RecordingRunner:
    """A stand-in EvaluationRunner: the real processor, a model that records its inputs."""

    visual_field = "image"

    def __init__(self):
        from mplug_hf import MPLUGImageProcessor, MPLUGProcessor

        self.processor = MPLUGProcessor(MPLUGImageProcessor(image_size=32))
        self.seen = []
        runner = self

        class Model:
            def __call__(self, input_ids, attention_mask, pixel_values):
                runner.seen.append(input_ids)
                return SimpleNamespace(pred_boxes=torch.full((len(input_ids), 4), 0.5))

        self.model = Model()

    def pixel_values(self, visuals, mode="default"):
        return {
            "pixel_values": torch.zeros(len(visuals), 3, 32, 32),
            "image_sizes": torch.tensor([[32, 32]] * len(visuals)),
        }

    def batches(self, items, collate, description):
        yield collate(list(items))


def test_grounding_queries_are_encoded_as_the_processor_encodes_them():
    from mplug_hf.evaluation.runner import ground_phrases

    runner = _RecordingRunner()
    ground_phrases(runner, [{"image": "a.png", "text": "the left dog"}, {"image": "b.png", "text": "a cat"}])
    expected = runner.processor.encode_text(["the left dog", "a cat"], max_length=20)["input_ids"]
    assert runner.seen[0].tolist() == expected.tolist()
    assert runner.processor.tokenizer.sep_token_id not in runner.seen[0][0].tolist()  # [CLS] q, no [SEP]


def test_evaluation_data_is_checked_before_the_run(tmp_path, monkeypatch):
    import mplug_hf.evaluation.runner as runner_module

    def never(*args, **kwargs):
        raise AssertionError("the long run started on bad data")

    monkeypatch.setattr(runner_module, "answer_questions", never)
    monkeypatch.setattr(runner_module, "ground_phrases", never)
    path = tmp_path / "data.jsonl"
    runner = _RecordingRunner()
    cases = [
        ("vqa", '{"image": "a.png", "question": "q?", "answers": ["x", "x"]}\n{"image": "a.png", "question": "q?"}\n',
         "data.jsonl:2: no reference answers"),
        ("vqa", '{"image": "a.png", "question": ""}\n', "data.jsonl:1: 'question' must be a non-empty string"),
        ("vqa", '{"image": "a.png", "question": "q?", "answers": [{"a": 1}]}\n', "data.jsonl:1: answers must be"),
        ("grounding", '{"image": "a.png", "text": "dog", "bbox": [1, 2, 3]}\n',
         r"data.jsonl:1: 'bbox' must be 4 finite numbers"),
        ("grounding", '{"image": "a.png", "text": "dog", "bbox": [1, 2, 3, NaN]}\n',
         r"data.jsonl:1: 'bbox' must be 4 finite numbers"),
    ]  # fmt: skip
    for task, text, message in cases:
        path.write_text(text)
        records = runner_module.load_records(str(path))
        with pytest.raises(ValueError, match=message):
            if task == "vqa":
                runner_module.run_question_answering(runner, records, tmp_path / "out")
            else:
                runner_module.run_grounding(runner, records, tmp_path / "out")
    path.write_text('{"image": "a.png", "question": "q?", "answers": "yes"}\n')
    with pytest.warns(UserWarning, match="single human answer"), pytest.raises(AssertionError, match="long run"):
        runner_module.run_question_answering(runner, runner_module.load_records(str(path)), tmp_path / "out")
    assert not (tmp_path / "out").exists()
