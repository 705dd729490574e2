# Copyright 2026 The mplug_hf Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""mPLUG's task losses (as transformers keeps model-specific losses in `loss/loss_*.py`)."""

import torch
import torch.nn.functional as F
from transformers.image_transforms import center_to_corners_format
from transformers.loss.loss_for_object_detection import generalized_box_iou


def answer_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """
    Per-token negative log-likelihood of teacher-forced `[CLS] answer [SEP]` rows: position t predicts label t+1.

    Args:
        logits: `(batch, length, vocab_size)`. labels: `(batch, length)`, -100 where no loss is wanted.
    Returns:
        `(batch, length - 1)`, 0 where the label is -100.
    """
    next_labels = F.pad(labels, (0, 1), value=-100)[:, 1:]
    return F.cross_entropy(logits.float().transpose(1, 2), next_labels, ignore_index=-100, reduction="none")[:, :-1]


def weighted_answer_loss(
    logits: torch.Tensor, labels: torch.Tensor, answer_weights: torch.Tensor | None, num_questions: int
) -> torch.Tensor:
    """The original VQA loss: Σ weight · (summed token NLL of the answer) / number of questions."""
    per_answer = answer_token_nll(logits, labels).sum(dim=1)
    if answer_weights is None:
        answer_weights = torch.ones_like(per_answer)
    elif answer_weights.shape != per_answer.shape:
        raise ValueError(
            f"answer_weights must have shape {tuple(per_answer.shape)}, got {tuple(answer_weights.shape)}"
        )
    return (answer_weights.to(per_answer.dtype) * per_answer).sum() / num_questions


def contrastive_loss(logits_per_image: torch.Tensor, image_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric in-batch ITC loss; with `image_ids`, every text of the same image is a positive (soft targets)."""
    if image_ids is None:
        targets = torch.eye(logits_per_image.shape[0], device=logits_per_image.device)
    else:
        targets = (image_ids.view(-1, 1) == image_ids.view(1, -1)).float()
    targets = targets / targets.sum(dim=1, keepdim=True)
    loss_i2t = -(F.log_softmax(logits_per_image, dim=1) * targets).sum(dim=1).mean()
    loss_t2i = -(F.log_softmax(logits_per_image.t(), dim=1) * targets).sum(dim=1).mean()
    return (loss_i2t + loss_t2i) / 2


def grounding_loss(bin_logits: torch.Tensor, target_bins: torch.Tensor, boxes: torch.Tensor, num_box_bins: int):
    """
    The original grounding loss, per sample: token CE of the 4 coordinate bins weighted by the L1 error of the argmax
    box (clamped at 5) and by 1 − GIoU (the original's broadcasting to (batch, batch, 4) is not reproduced).

    Args:
        bin_logits: `(batch, 4, num_box_bins)`. target_bins: `(batch, 4)`. boxes: `(batch, 4)` normalised cx, cy, w, h.
    Returns:
        the loss and the argmax boxes `(batch, 4)`.
    """
    token_ce = F.cross_entropy(bin_logits.float().transpose(1, 2), target_bins, reduction="none")
    pred_boxes = bin_logits.argmax(dim=-1).float() / (num_box_bins - 1)
    with torch.no_grad():
        weight_l1 = (pred_boxes - boxes).abs().clamp(0, 5)
        giou = generalized_box_iou(center_to_corners_format(pred_boxes), center_to_corners_format(boxes)).diagonal()
        weight_giou = 1 - giou
    return (token_ce * weight_l1 * weight_giou.unsqueeze(1)).mean(), pred_boxes


def image_text_matching_loss(itm_logits: torch.Tensor, batch_size: int) -> torch.Tensor:
    """ITM cross-entropy over `batch_size` positives followed by `2 · batch_size` negatives."""
    targets = torch.cat([torch.ones(batch_size, dtype=torch.long), torch.zeros(2 * batch_size, dtype=torch.long)])
    return F.cross_entropy(itm_logits.float(), targets.to(itm_logits.device))
