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
"""
The ITC / ITM training of the retrieval and pretraining heads: in-batch or momentum-distilled ITC (the original's
ALBEF-style training with `config.momentum_queue_size > 0`: momentum (EMA) copies of the unimodal encoders and ITC
projections, queues of their features gathered over processes) and ITM with hard negatives.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .loss_mplug import contrastive_loss, image_text_matching_loss


class MPLUGMomentumEncoders(nn.Module):
    """
    The momentum copies and the feature queues. Never updated by gradients: [`momentum_itc_loss`] moves them towards
    the online weights before each training step. They are copied from the online weights at the first training step
    unless a checkpoint provided them (`initialized`).

    Args:
        config: the [`MPLUGConfig`]. vision_model, text_encoder: freshly built modules of the online encoders' classes.
    """

    def __init__(self, config, vision_model: nn.Module, text_encoder: nn.Module):
        super().__init__()
        hidden, size = config.text_config.hidden_size, config.momentum_queue_size
        self.momentum = config.momentum
        self.vision_model = vision_model
        self.text_encoder = text_encoder
        self.vision_proj = nn.Linear(hidden, config.embed_dim)
        self.text_proj = nn.Linear(hidden, config.embed_dim)
        # filled by the model's _init_weights (random unit columns, ids -100, pointer 0, not initialised)
        self.image_queue = nn.Buffer(torch.empty(config.embed_dim, size))
        self.text_queue = nn.Buffer(torch.empty(config.embed_dim, size))
        self.idx_queue = nn.Buffer(torch.empty((1, size), dtype=torch.long))
        self.queue_ptr = nn.Buffer(torch.empty(1, dtype=torch.long))
        self.initialized = nn.Buffer(torch.empty((), dtype=torch.bool))
        self.requires_grad_(False)

    def train(self, mode: bool = True):
        # from_pretrained re-creates parameters as trainable (and ends with eval()); the momentum copies never are
        self.requires_grad_(False)
        return super().train(mode)

    def _pairs(self, model) -> list[tuple[nn.Module, nn.Module]]:
        return [
            (model.mplug.vision_model, self.vision_model),
            (model.mplug.text_encoder, self.text_encoder),
            (model.contrastive.vision_proj, self.vision_proj),
            (model.contrastive.text_proj, self.text_proj),
        ]

    @torch.no_grad()
    def update(self, model):
        """θ_m ← m·θ_m + (1 − m)·θ (a copy the first time)."""
        pairs = self._pairs(model)
        online = [p for online_module, _ in pairs for p in online_module.parameters()]
        momentum = [p for _, momentum_module in pairs for p in momentum_module.parameters()]
        if not bool(self.initialized):
            torch._foreach_copy_(momentum, online)
            self.initialized.fill_(True)
        else:
            torch._foreach_lerp_(momentum, online, 1.0 - self.momentum)

    @torch.no_grad()
    def features(self, pixel_values, input_ids, attention_mask, contrastive) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised momentum ITC features of images and texts, `(batch, embed_dim)` each."""
        from .modeling_mplug import frame_count  # modeling imports this module

        image_tokens = self.vision_model(pixel_values, return_dict=True).last_hidden_state
        image_feat = contrastive.image_features(image_tokens, frame_count(pixel_values), projection=self.vision_proj)
        text_states = self.text_encoder(input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state
        return image_feat, F.normalize(self.text_proj(text_states[:, 0]), dim=-1)

    @torch.no_grad()
    def enqueue(self, image_feat: torch.Tensor, text_feat: torch.Tensor, image_ids: torch.Tensor):
        """Write the batch's momentum features (gathered from every process) over the oldest queue entries."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            gathered = []
            for tensor in (image_feat, text_feat, image_ids):
                parts = [torch.empty_like(tensor) for _ in range(world)]
                torch.distributed.all_gather(parts, tensor.contiguous())
                gathered.append(torch.cat(parts))
            image_feat, text_feat, image_ids = gathered
        size = self.image_queue.shape[1]
        slots = (self.queue_ptr + torch.arange(image_feat.shape[0], device=image_feat.device)) % size
        self.image_queue[:, slots] = image_feat.t().to(self.image_queue.dtype)
        self.text_queue[:, slots] = text_feat.t().to(self.text_queue.dtype)
        self.idx_queue[:, slots] = image_ids.view(1, -1)
        self.queue_ptr.copy_((self.queue_ptr + image_feat.shape[0]) % size)


def momentum_itc_loss(
    model, image_feat, text_feat, pixel_values, input_ids, attention_mask, image_ids=None
) -> torch.Tensor:
    """
    The original's ITC loss: similarities against the momentum features of the batch and of the queue, targets
    α · softmax(momentum similarities) + (1 − α) · ground truth (texts of the same `image_ids` are positives, in the
    queue too); then the batch is enqueued.
    """
    momentum, temp = model.momentum_encoders, model.contrastive.temp
    with torch.no_grad():
        momentum.update(model)
        image_feat_m, text_feat_m = momentum.features(pixel_values, input_ids, attention_mask, model.contrastive)
        image_feat_all = torch.cat([image_feat_m.t(), momentum.image_queue.clone()], dim=1)
        text_feat_all = torch.cat([text_feat_m.t(), momentum.text_queue.clone()], dim=1)
        if image_ids is None:  # each pair is its own image; queued features are negatives
            positives = torch.eye(image_feat.shape[0], text_feat_all.shape[1], device=image_feat.device)
        else:
            ids_all = torch.cat([image_ids.view(1, -1), momentum.idx_queue.clone()], dim=1)
            positives = (image_ids.view(-1, 1) == ids_all).float()
        ground_truth = positives / positives.sum(dim=1, keepdim=True)
        alpha = model.config.distillation_alpha
        targets_i2t = alpha * (image_feat_m @ text_feat_all / temp).softmax(dim=1) + (1 - alpha) * ground_truth
        targets_t2i = alpha * (text_feat_m @ image_feat_all / temp).softmax(dim=1) + (1 - alpha) * ground_truth
    loss_i2t = -(F.log_softmax(image_feat @ text_feat_all / temp, dim=1) * targets_i2t).sum(dim=1).mean()
    loss_t2i = -(F.log_softmax(text_feat @ image_feat_all / temp, dim=1) * targets_t2i).sum(dim=1).mean()
    if image_ids is None:
        image_ids = torch.full((image_feat.shape[0],), -100, dtype=torch.long, device=image_feat.device)
    momentum.enqueue(image_feat_m, text_feat_m, image_ids)
    return (loss_i2t + loss_t2i) / 2


def init_momentum_buffers(module: MPLUGMomentumEncoders, init) -> None:
    """Fresh queues (random unit columns), no ids, pointer 0, not yet copied from the online weights."""
    init.copy_(module.image_queue, F.normalize(torch.randn_like(module.image_queue), dim=0))
    init.copy_(module.text_queue, F.normalize(torch.randn_like(module.text_queue), dim=0))
    init.constant_(module.idx_queue, -100)
    init.zeros_(module.queue_ptr)
    init.copy_(module.initialized, torch.zeros_like(module.initialized))


def pick_hard_negatives(weights: torch.Tensor, sample: bool) -> torch.LongTensor:
    """One column per row of `weights`: sampled in proportion to them (training), else the heaviest."""
    return torch.multinomial(weights, 1).view(-1) if sample else weights.argmax(dim=1)


def hard_negative_itm_loss(model, image_states, text_states, attention_mask, logits_per_image, image_ids=None):
    """ITM over positives + one hard negative text per image and one hard negative image per text, sampled in
    proportion to the softmax of ITC similarities with positives excluded (as the original). Outside training the
    hardest negative is taken instead, so that an evaluation loss is reproducible."""
    batch_size = image_states.shape[0]
    with torch.no_grad():
        if image_ids is None:
            positive = torch.eye(batch_size, dtype=torch.bool, device=image_states.device)
        else:
            positive = image_ids.view(-1, 1) == image_ids.view(1, -1)
        weights_i2t = logits_per_image.float().softmax(dim=1).masked_fill(positive, 0) + 1e-12
        weights_t2i = logits_per_image.t().float().softmax(dim=1).masked_fill(positive, 0) + 1e-12
        negative_texts = pick_hard_negatives(weights_i2t, sample=model.training)
        negative_images = pick_hard_negatives(weights_t2i, sample=model.training)
    fused = model.mplug(
        image_states=torch.cat([image_states, image_states[negative_images], image_states], dim=0),
        text_states=torch.cat([text_states, text_states, text_states[negative_texts]], dim=0),
        attention_mask=torch.cat([attention_mask, attention_mask, attention_mask[negative_texts]], dim=0),
        return_dict=True,
    )
    return image_text_matching_loss(model.contrastive.itm_head(fused.fused_text_states[:, 0]), batch_size)


def image_text_contrastive_loss(model, image_feat, text_feat, pixel_values, input_ids, attention_mask, image_ids):
    """ITC loss and the in-batch `logits_per_image`: the original's momentum distillation when the model has momentum
    encoders and trains, in-batch InfoNCE otherwise."""
    logits_per_image = image_feat @ text_feat.t() / model.contrastive.temp
    # CODEPATH: the original's retrieval and pretraining runs (momentum_queue_size=65536) distil from momentum
    # encoders; converted checkpoints fine-tune with in-batch negatives unless converted with --keep-momentum.
    if model.momentum_encoders is None or not model.training:
        return contrastive_loss(logits_per_image, image_ids), logits_per_image
    loss = momentum_itc_loss(model, image_feat, text_feat, pixel_values, input_ids, attention_mask, image_ids)
    return loss, logits_per_image
