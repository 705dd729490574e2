"""
COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE) and the CIDEr-D reward used for SCST.

With `pycocoevalcap` and a Java runtime the official coco-caption code is used (PTB tokenizer, METEOR and SPICE are
Java programs). Without them, BLEU, ROUGE-L and CIDEr come from the pure-Python implementations below, which follow
coco-caption's formulas (the scores match whenever both see the same tokens), and METEOR and SPICE are left out.
"""

import importlib.util
import math
import re
import shutil
import subprocess
import warnings
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np


# Lower-case words, keeping hyphenated words and decimal numbers whole and splitting off the clitics "n't" and "'s"
# like the PTB tokenizer; every other punctuation character is dropped (coco-caption removes punctuation tokens).
_TOKEN_PATTERN = re.compile(r"\d+(?:[.,]\d+)+|\w+(?=n't\b)|n't\b|'\w+|\w+(?:-\w+)*")
# coco-caption's BLEU smoothing: `tiny` keeps a zero precision (almost) zero, `small` avoids dividing by zero.
_BLEU_TINY = 1e-15
_BLEU_SMALL = 1e-9
_SPICE_CORENLP_JAR = "stanford-corenlp-3.6.0.jar"


def simple_tokenize(text: str) -> list[str]:
    """
    Java-free approximation of coco-caption's tokenization (Stanford PTB tokenizer, lower-cased, punctuation removed).

    Args:
        text (`str`): A caption, e.g. `"A man's well-dressed, isn't he?"`.

    Returns:
        `list[str]`: Its tokens, e.g. `["a", "man", "'s", "well-dressed", "is", "n't", "he"]`.
    """
    return _TOKEN_PATTERN.findall(text.lower())


def _ngram_counts(tokens: Sequence[str], max_n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for n in range(1, max_n + 1) for i in range(len(tokens) - n + 1))


def _corpus_bleu_from_tokens(
    candidates: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]], max_n: int = 4
) -> list[float]:
    total_candidate_length = 0
    total_reference_length = 0
    num_guessed = [0] * max_n
    num_correct = [0] * max_n
    for candidate, candidate_references in zip(candidates, references):
        max_reference_counts = Counter()
        for reference in candidate_references:
            max_reference_counts |= _ngram_counts(reference, max_n)
        for ngram, count in _ngram_counts(candidate, max_n).items():
            num_correct[len(ngram) - 1] += min(count, max_reference_counts[ngram])
        for n in range(1, max_n + 1):
            num_guessed[n - 1] += max(0, len(candidate) - n + 1)
        total_candidate_length += len(candidate)
        # "closest" effective reference length; ties go to the shorter reference.
        total_reference_length += min((abs(len(ref) - len(candidate)), len(ref)) for ref in candidate_references)[1]

    bleus = []
    precision_product = 1.0
    for n in range(max_n):
        precision_product *= (num_correct[n] + _BLEU_TINY) / (num_guessed[n] + _BLEU_SMALL)
        bleus.append(precision_product ** (1.0 / (n + 1)))
    length_ratio = (total_candidate_length + _BLEU_TINY) / (total_reference_length + _BLEU_SMALL)
    if length_ratio < 1:
        brevity_penalty = math.exp(1 - 1 / length_ratio)
        bleus = [bleu * brevity_penalty for bleu in bleus]
    return bleus


def corpus_bleu(candidates: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> list[float]:
    """
    Corpus-level BLEU-1..`max_n` as coco-caption computes it.

    Clipped n-gram matches and candidate lengths are summed over the corpus; the reference length of each candidate
    is the length of its closest reference (the shorter one on ties); a zero precision is smoothed to about 1e-15
    rather than making the score exactly 0.

    Args:
        candidates (`Sequence[str]`): `num_captions` generated captions, tokenized with [`simple_tokenize`].
        references (`Sequence[Sequence[str]]`): `num_captions` lists of reference captions.
        max_n (`int`, *optional*, defaults to 4): Longest n-gram.

    Returns:
        `list[float]`: `[BLEU-1, ..., BLEU-max_n]`, each in [0, 1].
    """
    _check_aligned(candidates, references)
    return _corpus_bleu_from_tokens(
        [simple_tokenize(candidate) for candidate in candidates],
        [[simple_tokenize(reference) for reference in refs] for refs in references],
        max_n,
    )


def _longest_common_subsequence_length(first: Sequence[str], second: Sequence[str]) -> int:
    previous_row = [0] * (len(second) + 1)
    for first_token in first:
        row = [0]
        for j, second_token in enumerate(second):
            row.append(previous_row[j] + 1 if first_token == second_token else max(previous_row[j + 1], row[j]))
        previous_row = row
    return previous_row[-1]


def _rouge_l_from_tokens(candidate: Sequence[str], references: Sequence[Sequence[str]], beta: float) -> float:
    if len(candidate) == 0:
        return 0.0
    lcs_lengths = [_longest_common_subsequence_length(reference, candidate) for reference in references]
    # coco-caption takes the best precision and the best recall independently, possibly from different references.
    precision = max(lcs / len(candidate) for lcs in lcs_lengths)
    recall = max(lcs / len(reference) if reference else 0.0 for lcs, reference in zip(lcs_lengths, references))
    if precision == 0 or recall == 0:
        return 0.0
    return (1 + beta**2) * precision * recall / (recall + beta**2 * precision)


def rouge_l_scores(candidates: Sequence[str], references: Sequence[Sequence[str]], beta: float = 1.2) -> np.ndarray:
    """
    Per-caption ROUGE-L as coco-caption computes it (coco-caption's ROUGE_L is their mean).

    Args:
        candidates (`Sequence[str]`): `num_captions` generated captions, tokenized with [`simple_tokenize`].
        references (`Sequence[Sequence[str]]`): `num_captions` lists of reference captions.
        beta (`float`, *optional*, defaults to 1.2): Weight of recall relative to precision in the F-measure.

    Returns:
        `np.ndarray` of shape `(num_captions,)`: ROUGE-L F-measures in [0, 1].
    """
    _check_aligned(candidates, references)
    return np.array(
        [
            _rouge_l_from_tokens(simple_tokenize(candidate), [simple_tokenize(ref) for ref in refs], beta)
            for candidate, refs in zip(candidates, references)
        ],
        dtype=np.float64,
    )


class CiderD:
    """
    CIDEr-D (coco-caption's "CIDEr", also the reward of self-critical sequence training in mPLUG and ALBEF).

    Each caption becomes, for n = 1..4, a tf-idf vector of its n-grams, the idf being `log(num_documents / df)` where
    `df` counts the documents (reference sets) containing the n-gram. The score of a candidate is
    `10 * mean_n mean_refs [sum_g min(c_g, r_g) * r_g / (|c| |r|)] * exp(-(len_c - len_r)^2 / (2 sigma^2))`:
    clipped cosine similarities with a Gaussian penalty on the length difference.

    Args:
        n (`int`, *optional*, defaults to 4): Longest n-gram.
        sigma (`float`, *optional*, defaults to 6.0): Standard deviation of the length penalty.
        document_frequency_corpus (`Sequence[Sequence[str]]`, *optional*):
            Reference sets (one list of captions per image, e.g. the training captions) whose document frequencies are
            used for every call. When `None`, each call takes them from the references it scores, as coco-caption
            does on a test set and mPLUG does on each SCST batch.
    """

    def __init__(
        self, n: int = 4, sigma: float = 6.0, document_frequency_corpus: Sequence[Sequence[str]] | None = None
    ):
        self.n = n
        self.sigma = sigma
        self._fixed_document_frequency = None
        if document_frequency_corpus is not None:
            self._fixed_document_frequency = self._document_frequency(
                [[_ngram_counts(simple_tokenize(ref), n) for ref in refs] for refs in document_frequency_corpus]
            )

    @staticmethod
    def _document_frequency(reference_counts: Sequence[Sequence[Counter]]) -> tuple[Counter, float]:
        document_frequency = Counter()
        for counts_of_one_image in reference_counts:
            document_frequency.update({ngram for counts in counts_of_one_image for ngram in counts})
        return document_frequency, math.log(float(len(reference_counts)))

    def _tfidf_vectors(
        self, counts: Counter, document_frequency: Counter, log_num_documents: float
    ) -> tuple[list[dict], list[float]]:
        vectors = [{} for _ in range(self.n)]
        squared_norms = [0.0] * self.n
        for ngram, term_frequency in counts.items():
            # n-grams absent from the corpus get a document frequency of 1.
            weight = term_frequency * (log_num_documents - math.log(max(1.0, document_frequency[ngram])))
            vectors[len(ngram) - 1][ngram] = weight
            squared_norms[len(ngram) - 1] += weight**2
        return vectors, [math.sqrt(squared_norm) for squared_norm in squared_norms]

    def _similarity(self, candidate: tuple, reference: tuple) -> float:
        (candidate_vectors, candidate_norms, candidate_length) = candidate
        (reference_vectors, reference_norms, reference_length) = reference
        # Token counts; coco-caption counts bigrams instead, which gives the same difference whenever the similarity
        # it multiplies is non-zero.
        length_penalty = math.exp(-((candidate_length - reference_length) ** 2) / (2 * self.sigma**2))
        total = 0.0
        for candidate_vector, reference_vector, candidate_norm, reference_norm in zip(
            candidate_vectors, reference_vectors, candidate_norms, reference_norms
        ):
            # "-D" clipping: a candidate n-gram counts at most as much as in the reference.
            dot = sum(
                min(weight, reference_vector.get(ngram, 0.0)) * reference_vector.get(ngram, 0.0)
                for ngram, weight in candidate_vector.items()
            )
            if candidate_norm != 0 and reference_norm != 0:
                dot /= candidate_norm * reference_norm
            total += dot * length_penalty
        return total / self.n

    def __call__(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
        """
        Args:
            candidates (`Sequence[str]`): `num_captions` generated captions, tokenized with [`simple_tokenize`].
            references (`Sequence[Sequence[str]]`):
                `num_captions` non-empty lists of reference captions; each list is one document for the document
                frequencies, so references repeated for several samples of an image count once per sample (as in
                mPLUG's SCST).

        Returns:
            `np.ndarray` of shape `(num_captions,)`: CIDEr-D scores (0 to about 10 when the candidate matches its
            references; coco-caption's CIDEr is their mean).
        """
        _check_aligned(candidates, references)
        return self._scores_from_tokens(
            [simple_tokenize(candidate) for candidate in candidates],
            [[simple_tokenize(reference) for reference in refs] for refs in references],
        )

    def _scores_from_tokens(
        self, candidates: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]]
    ) -> np.ndarray:
        reference_counts = [[_ngram_counts(ref, self.n) for ref in refs] for refs in references]
        if self._fixed_document_frequency is None:
            document_frequency, log_num_documents = self._document_frequency(reference_counts)
        else:
            document_frequency, log_num_documents = self._fixed_document_frequency

        def represent(tokens: Sequence[str], counts: Counter) -> tuple:
            return (*self._tfidf_vectors(counts, document_frequency, log_num_documents), len(tokens))

        scores = np.zeros(len(candidates), dtype=np.float64)
        for index, (candidate, refs, counts_of_refs) in enumerate(zip(candidates, references, reference_counts)):
            candidate_representation = represent(candidate, _ngram_counts(candidate, self.n))
            similarities = [
                self._similarity(candidate_representation, represent(ref, counts))
                for ref, counts in zip(refs, counts_of_refs)
            ]
            scores[index] = 10.0 * sum(similarities) / len(similarities)
        return scores


def cider_d_scores(
    candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0
) -> np.ndarray:
    """
    Per-caption CIDEr-D with document frequencies taken from `references`, e.g. as the SCST reward of a batch.

    Args:
        candidates (`Sequence[str]`): `num_captions` generated captions.
        references (`Sequence[Sequence[str]]`): `num_captions` non-empty lists of reference captions.
        n (`int`, *optional*, defaults to 4): Longest n-gram.
        sigma (`float`, *optional*, defaults to 6.0): Standard deviation of the length penalty.

    Returns:
        `np.ndarray` of shape `(num_captions,)`: CIDEr-D scores, see [`CiderD`].
    """
    return CiderD(n=n, sigma=sigma)(candidates, references)


def _check_aligned(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(candidates) != len(references):
        raise ValueError(f"Got {len(candidates)} candidates but {len(references)} lists of references.")
    if any(len(refs) == 0 for refs in references):
        raise ValueError("Every candidate needs at least one reference caption.")


def _coco_caption_available() -> bool:
    return importlib.util.find_spec("pycocoevalcap") is not None and shutil.which("java") is not None


def _coco_caption_metrics(predictions: Mapping, references: Mapping) -> dict[str, float]:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.spice import spice as spice_module
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    tokenized_predictions = tokenizer.tokenize({key: [{"caption": caption}] for key, caption in predictions.items()})
    tokenized_references = tokenizer.tokenize(
        {key: [{"caption": caption} for caption in references[key]] for key in predictions}
    )

    bleus, _ = Bleu(4).compute_score(tokenized_references, tokenized_predictions, verbose=0)
    metrics = {f"Bleu_{n}": float(bleu) for n, bleu in enumerate(bleus, start=1)}
    metrics["METEOR"] = float(Meteor().compute_score(tokenized_references, tokenized_predictions)[0])
    metrics["ROUGE_L"] = float(Rouge().compute_score(tokenized_references, tokenized_predictions)[0])
    metrics["CIDEr"] = float(Cider().compute_score(tokenized_references, tokenized_predictions)[0])

    # Spice() would otherwise try to download Stanford CoreNLP (~400 MB) on first use.
    if not (Path(spice_module.__file__).parent / "lib" / _SPICE_CORENLP_JAR).is_file():
        warnings.warn(
            f"SPICE skipped: pycocoevalcap's SPICE needs {_SPICE_CORENLP_JAR} in its spice/lib folder; fetch it "
            "with `python -m pycocoevalcap.spice.get_stanford_models`.",
            stacklevel=3,
        )
        return metrics
    try:
        metrics["SPICE"] = float(spice_module.Spice().compute_score(tokenized_references, tokenized_predictions)[0])
    except subprocess.CalledProcessError as error:
        # The SPICE jar is known to fail on some Java versions; keep the other metrics rather than lose them all.
        warnings.warn(f"SPICE skipped: the SPICE jar failed ({error}).", stacklevel=3)
    return metrics


def _python_caption_metrics(predictions: Mapping, references: Mapping) -> dict[str, float]:
    candidates = [simple_tokenize(caption) for caption in predictions.values()]
    tokenized_references = [[simple_tokenize(caption) for caption in references[key]] for key in predictions]
    bleus = _corpus_bleu_from_tokens(candidates, tokenized_references)
    metrics = {f"Bleu_{n}": bleu for n, bleu in enumerate(bleus, start=1)}
    metrics["ROUGE_L"] = float(
        np.mean([_rouge_l_from_tokens(cand, refs, beta=1.2) for cand, refs in zip(candidates, tokenized_references)])
    )
    metrics["CIDEr"] = float(np.mean(CiderD()._scores_from_tokens(candidates, tokenized_references)))
    return metrics


def compute_caption_metrics(
    predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]], backend: str = "auto"
) -> dict[str, float]:
    """
    COCO caption metrics of generated captions, as coco-caption's `COCOEvalCap` reports them.

    As in `COCOEvalCap`, only the images that have a prediction are evaluated.

    Args:
        predictions (`Mapping[Hashable, str]`): One generated caption per image id.
        references (`Mapping[Hashable, Sequence[str]]`): The reference captions of (at least) every predicted image.
        backend (`str`, *optional*, defaults to `"auto"`):
            `"pycocoevalcap"` for the official code (needs the `pycocoevalcap` package and Java), `"python"` for the
            pure-Python BLEU, ROUGE-L and CIDEr with [`simple_tokenize`], `"auto"` for the former when available.

    Returns:
        `dict[str, float]`: `"Bleu_1"` to `"Bleu_4"`, `"ROUGE_L"`, `"CIDEr"` and, with the official backend,
        `"METEOR"` and `"SPICE"` (left out, with a warning, when SPICE's CoreNLP models are not installed). Values are
        on coco-caption's scale (papers report them ×100).

    Raises:
        `ValueError`: If there is no prediction, if a predicted image has no references or if `backend` is unknown.
        `RuntimeError`: If `backend="pycocoevalcap"` but `pycocoevalcap` or Java is missing.
    """
    if backend not in ("auto", "pycocoevalcap", "python"):
        raise ValueError(f"Unknown backend {backend!r}; use 'auto', 'pycocoevalcap' or 'python'.")
    if len(predictions) == 0:
        raise ValueError("`predictions` is empty: there is nothing to evaluate.")
    for image_id in predictions:
        if len(references.get(image_id, ())) == 0:
            raise ValueError(f"Image id {image_id!r} has a prediction but no reference caption.")

    if backend == "python":
        return _python_caption_metrics(predictions, references)
    if _coco_caption_available():
        return _coco_caption_metrics(predictions, references)
    if backend == "pycocoevalcap":
        raise RuntimeError("backend='pycocoevalcap' needs the `pycocoevalcap` package and a Java runtime.")
    warnings.warn(
        "pycocoevalcap or Java is missing: computing BLEU, ROUGE-L and CIDEr in pure Python with a simplified "
        "tokenizer (scores can differ slightly from the official ones); METEOR and SPICE are skipped.",
        stacklevel=2,
    )
    return _python_caption_metrics(predictions, references)
