"""Box utilities and the visual grounding metric (Acc@0.5: a prediction is correct when its IoU is at least 0.5)."""

import numpy as np
import torch


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """
    Args:
        boxes (`torch.Tensor` of shape `(..., 4)`): Boxes as (center x, center y, width, height).

    Returns:
        `torch.Tensor` of shape `(..., 4)`: The same boxes as (x min, y min, x max, y max).
    """
    center_x, center_y, width, height = boxes.unbind(-1)
    return torch.stack(
        [center_x - 0.5 * width, center_y - 0.5 * height, center_x + 0.5 * width, center_y + 0.5 * height], dim=-1
    )


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """
    Args:
        boxes (`torch.Tensor` of shape `(..., 4)`): Boxes as (x min, y min, x max, y max).

    Returns:
        `torch.Tensor` of shape `(..., 4)`: The same boxes as (center x, center y, width, height).
    """
    x_min, y_min, x_max, y_max = boxes.unbind(-1)
    return torch.stack([(x_min + x_max) / 2, (y_min + y_max) / 2, x_max - x_min, y_max - y_min], dim=-1)


def _area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def _safe_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    # Two degenerate (zero-area) boxes have a zero union: their IoU is 0 rather than NaN.
    return numerator / denominator.clamp(min=torch.finfo(denominator.dtype).tiny)


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Pairwise IoU of two sets of boxes.

    Args:
        boxes1 (`torch.Tensor` of shape `(num_boxes1, 4)`): Boxes as (x min, y min, x max, y max).
        boxes2 (`torch.Tensor` of shape `(num_boxes2, 4)`): Boxes as (x min, y min, x max, y max).

    Returns:
        `tuple(torch.Tensor, torch.Tensor)`: The IoU and the union area, both of shape `(num_boxes1, num_boxes2)`.
    """
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    intersection_sides = (bottom_right - top_left).clamp(min=0)
    intersection = intersection_sides[..., 0] * intersection_sides[..., 1]
    union = _area(boxes1)[:, None] + _area(boxes2)[None, :] - intersection
    return _safe_divide(intersection, union), union


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """
    Pairwise generalized IoU (https://giou.stanford.edu/): IoU minus the fraction of the smallest enclosing box that
    the union does not cover.

    Args:
        boxes1 (`torch.Tensor` of shape `(num_boxes1, 4)`): Boxes as (x min, y min, x max, y max).
        boxes2 (`torch.Tensor` of shape `(num_boxes2, 4)`): Boxes as (x min, y min, x max, y max).

    Returns:
        `torch.Tensor` of shape `(num_boxes1, num_boxes2)`: GIoU values in [-1, 1].
    """
    iou, union = box_iou(boxes1, boxes2)
    enclosing_top_left = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    enclosing_bottom_right = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    enclosing_sides = (enclosing_bottom_right - enclosing_top_left).clamp(min=0)
    enclosing_area = enclosing_sides[..., 0] * enclosing_sides[..., 1]
    return iou - _safe_divide(enclosing_area - union, enclosing_area)


def paired_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """
    IoU of each box with the box at the same index of the other set.

    Args:
        boxes1 (`torch.Tensor` of shape `(num_boxes, 4)`): Boxes as (x min, y min, x max, y max).
        boxes2 (`torch.Tensor` of shape `(num_boxes, 4)`): Boxes as (x min, y min, x max, y max).

    Returns:
        `torch.Tensor` of shape `(num_boxes,)`: IoU values in [0, 1].
    """
    intersection_sides = (torch.min(boxes1[:, 2:], boxes2[:, 2:]) - torch.max(boxes1[:, :2], boxes2[:, :2])).clamp(
        min=0
    )
    intersection = intersection_sides[:, 0] * intersection_sides[:, 1]
    return _safe_divide(intersection, _area(boxes1) + _area(boxes2) - intersection)


def grounding_accuracy(
    pred_boxes_xyxy: torch.Tensor | np.ndarray, gt_boxes_xyxy: torch.Tensor | np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """
    Visual grounding accuracy: the share of predicted boxes whose IoU with the ground-truth box is at least
    `threshold`.

    mPLUG predicts normalized (center x, center y, width, height) boxes and clamps them to [0, 1] after converting
    them with [`box_cxcywh_to_xyxy`]; any coordinate system works as long as both sets share it.

    Args:
        pred_boxes_xyxy (`torch.Tensor` or `np.ndarray` of shape `(num_samples, 4)`): Predicted boxes.
        gt_boxes_xyxy (`torch.Tensor` or `np.ndarray` of shape `(num_samples, 4)`): Ground-truth boxes.
        threshold (`float`, *optional*, defaults to 0.5): Minimum IoU of a correct prediction.

    Returns:
        `dict[str, float]`: `"accuracy"` (percent) and `"mean_iou"` (in [0, 1]).
    """
    pred_boxes = torch.as_tensor(pred_boxes_xyxy, dtype=torch.float64)
    gt_boxes = torch.as_tensor(gt_boxes_xyxy, dtype=torch.float64)
    if pred_boxes.ndim != 2 or pred_boxes.shape[-1] != 4 or pred_boxes.shape != gt_boxes.shape:
        raise ValueError(
            f"Expected two (num_samples, 4) sets of boxes, got {tuple(pred_boxes.shape)} and {tuple(gt_boxes.shape)}."
        )
    if len(pred_boxes) == 0:
        raise ValueError("No boxes to evaluate.")
    iou = paired_box_iou(pred_boxes, gt_boxes)
    return {"accuracy": 100.0 * (iou >= threshold).double().mean().item(), "mean_iou": iou.mean().item()}
