"""Evaluation metrics of the mPLUG downstream tasks (pure Python/numpy; pycocoevalcap is used when installed)."""

from .caption import CiderD, cider_d_scores, compute_caption_metrics, corpus_bleu, rouge_l_scores, simple_tokenize
from .grounding import (
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
    grounding_accuracy,
    paired_box_iou,
)
from .retrieval import rerank_scores, retrieval_metrics
from .vqa import evaluate_vqa, normalize_vqa_answer, vqa_accuracy


__all__ = [
    "CiderD",
    "box_cxcywh_to_xyxy",
    "box_iou",
    "box_xyxy_to_cxcywh",
    "cider_d_scores",
    "compute_caption_metrics",
    "corpus_bleu",
    "evaluate_vqa",
    "generalized_box_iou",
    "grounding_accuracy",
    "normalize_vqa_answer",
    "paired_box_iou",
    "rerank_scores",
    "retrieval_metrics",
    "rouge_l_scores",
    "simple_tokenize",
    "vqa_accuracy",
]
