"""Image-text retrieval recall (the `itm_eval` protocol of ALBEF and mPLUG) and ITC-then-ITM re-ranking."""

from collections.abc import Callable, Sequence

import numpy as np


def _rank_positions(scores: np.ndarray) -> np.ndarray:
    # Same ordering as the original `np.argsort(score)[::-1]`, so ties are broken identically.
    order = np.argsort(scores, axis=1)[:, ::-1]
    positions = np.empty_like(order)
    positions[np.arange(len(scores))[:, None], order] = np.arange(scores.shape[1])
    return positions


def _recalls(ranks: np.ndarray, prefix: str) -> dict[str, float]:
    recalls = {f"{prefix}_r{k}": 100.0 * float(np.mean(ranks < k)) for k in (1, 5, 10)}
    recalls[f"{prefix}_r_mean"] = sum(recalls.values()) / 3
    return recalls


def retrieval_metrics(
    scores_i2t: np.ndarray,
    txt2img: Sequence[int],
    img2txt: Sequence[Sequence[int]],
    scores_t2i: np.ndarray | None = None,
) -> dict[str, float]:
    """
    Recall@1/5/10 of image-to-text and text-to-image retrieval, in percent.

    An image is retrieved at the best rank of its ground-truth captions; a caption at the rank of its image.

    Args:
        scores_i2t (`np.ndarray` of shape `(num_images, num_texts)`): Similarity of every image to every text.
        txt2img (`Sequence[int]`): `num_texts` indices: the image each text describes.
        img2txt (`Sequence[Sequence[int]]`): `num_images` non-empty lists of the texts describing each image.
        scores_t2i (`np.ndarray` of shape `(num_texts, num_images)`, *optional*):
            Text-to-image scores when they are computed separately (mPLUG re-ranks the top-k images of each text);
            defaults to `scores_i2t.T`.

    Returns:
        `dict[str, float]`: `txt_r1`, `txt_r5`, `txt_r10`, `txt_r_mean` (image-to-text), `img_r1`, `img_r5`,
        `img_r10`, `img_r_mean` (text-to-image) and `r_mean`, their average.
    """
    scores_i2t = np.asarray(scores_i2t)
    scores_t2i = scores_i2t.T if scores_t2i is None else np.asarray(scores_t2i)
    num_images, num_texts = scores_i2t.shape
    if scores_t2i.shape != (num_texts, num_images):
        raise ValueError(f"`scores_t2i` has shape {scores_t2i.shape}, expected {(num_texts, num_images)}.")
    if len(txt2img) != num_texts or len(img2txt) != num_images:
        raise ValueError(
            f"Scores are for {num_images} images and {num_texts} texts but `img2txt` has {len(img2txt)} entries and "
            f"`txt2img` {len(txt2img)}."
        )
    if any(len(texts) == 0 for texts in img2txt):
        raise ValueError("Every image needs at least one ground-truth text in `img2txt`.")

    text_positions = _rank_positions(scores_i2t)
    image_to_text_ranks = np.array([text_positions[image, texts].min() for image, texts in enumerate(img2txt)])
    image_positions = _rank_positions(scores_t2i)
    text_to_image_ranks = image_positions[np.arange(num_texts), np.asarray(txt2img)]

    metrics = {**_recalls(image_to_text_ranks, "txt"), **_recalls(text_to_image_ranks, "img")}
    metrics["r_mean"] = (metrics["txt_r_mean"] + metrics["img_r_mean"]) / 2
    return metrics


def rerank_scores(
    itc_scores: np.ndarray,
    itm_scores: np.ndarray | Callable[[int, np.ndarray], np.ndarray],
    k: int,
    fill_value: float = -100.0,
) -> np.ndarray:
    """
    Keeps, for each query, its top-`k` candidates by ITC similarity and scores them with ITM; the others get
    `fill_value` (-100, as in ALBEF/mPLUG's evaluation, so they rank after every re-ranked candidate).

    Args:
        itc_scores (`np.ndarray` of shape `(num_queries, num_candidates)`): Contrastive (ITC) similarities.
        itm_scores (`np.ndarray` of shape `(num_queries, num_candidates)` or `Callable`):
            Image-text matching scores, either precomputed or as a function `(query_index, candidate_indices)` ->
            `np.ndarray` of shape `(len(candidate_indices),)` so that only the top-`k` pairs are run through the
            fusion model.
        k (`int`): Number of candidates re-ranked per query (`k_test` in mPLUG's configs); clipped to
            `num_candidates`.
        fill_value (`float`, *optional*, defaults to -100.0): Score of the candidates outside the top-`k`.

    Returns:
        `np.ndarray` of shape `(num_queries, num_candidates)`: The re-ranked score matrix.
    """
    itc_scores = np.asarray(itc_scores)
    if k < 1:
        raise ValueError(f"`k` must be at least 1, got {k}.")
    if not callable(itm_scores):
        itm_matrix = np.asarray(itm_scores)
        if itm_matrix.shape != itc_scores.shape:
            raise ValueError(f"ITM scores have shape {itm_matrix.shape} but ITC scores {itc_scores.shape}.")

        def itm_scores(query_index: int, candidate_indices: np.ndarray) -> np.ndarray:
            return itm_matrix[query_index, candidate_indices]

    k = min(k, itc_scores.shape[1])
    reranked = np.full(itc_scores.shape, fill_value, dtype=np.float64)
    top_k_indices = np.argsort(-itc_scores, axis=1, kind="stable")[:, :k]
    for query_index, candidate_indices in enumerate(top_k_indices):
        reranked[query_index, candidate_indices] = itm_scores(query_index, candidate_indices)
    return reranked
