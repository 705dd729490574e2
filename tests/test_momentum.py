"""ITC with momentum encoders and feature queues (config.momentum_queue_size > 0), as the original trains it."""

import torch
import torch.nn.functional as F

from mplug_hf import MPLUGForPreTraining, MPLUGForRetrieval
from tests.conftest import tiny_config


def build(cls=MPLUGForRetrieval, **overrides):
    torch.manual_seed(0)
    config = tiny_config(momentum_queue_size=6, momentum=0.9, distillation_alpha=0.4, **overrides)
    config._attn_implementation = "eager"
    return cls(config)


def test_first_step_copies_online_weights_and_matches_the_original_formula(inputs):
    model = build().train()
    momentum = model.momentum_encoders
    queue_before = (momentum.image_queue.clone(), momentum.text_queue.clone(), momentum.idx_queue.clone())
    image_ids = torch.tensor([3, 8])
    out = model(**inputs, image_ids=image_ids, return_loss=True)
    assert bool(momentum.initialized)
    torch.testing.assert_close(momentum.vision_proj.weight, model.contrastive.vision_proj.weight)
    # the momentum model equals the online one at the first step, so its features are the online features
    with torch.no_grad():
        image_feat = model.get_image_features(inputs["pixel_values"]).pooler_output
        text_feat = model.get_text_features(inputs["input_ids"], inputs["attention_mask"]).pooler_output
        image_all = torch.cat([image_feat.t(), queue_before[0]], 1)
        text_all = torch.cat([text_feat.t(), queue_before[1]], 1)
        ids_all = torch.cat([image_ids.view(1, -1), queue_before[2]], 1)
        truth = (image_ids.view(-1, 1) == ids_all).float()
        truth = truth / truth.sum(1, keepdim=True)
        sim_i2t, sim_t2i = (
            image_feat @ text_all / model.contrastive.temp,
            text_feat @ image_all / model.contrastive.temp,
        )
        targets_i2t = 0.4 * sim_i2t.softmax(1) + 0.6 * truth
        targets_t2i = 0.4 * sim_t2i.softmax(1) + 0.6 * truth
        expected = (
            -(F.log_softmax(sim_i2t, 1) * targets_i2t).sum(1).mean()
            - (F.log_softmax(sim_t2i, 1) * targets_t2i).sum(1).mean()
        ) / 2
    torch.testing.assert_close(out.loss_itc, expected, atol=1e-5, rtol=1e-5)
    # the batch went into the queue
    torch.testing.assert_close(momentum.image_queue[:, :2], image_feat.t(), atol=1e-6, rtol=0)
    torch.testing.assert_close(momentum.text_queue[:, :2], text_feat.t(), atol=1e-6, rtol=0)
    assert momentum.idx_queue[0, :2].tolist() == [3, 8] and momentum.queue_ptr.item() == 2


def test_momentum_weights_follow_the_ema_and_get_no_gradients(inputs):
    model = build().train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(**inputs, return_loss=True).loss.backward()
    assert all(p.grad is None for p in model.momentum_encoders.parameters())
    optimizer.step()
    before = model.momentum_encoders.text_proj.weight.clone()
    model(**inputs, return_loss=True)
    expected = 0.9 * before + 0.1 * model.contrastive.text_proj.weight
    torch.testing.assert_close(model.momentum_encoders.text_proj.weight, expected)
    for _ in range(3):  # the pointer wraps around the 6-slot queue
        model(**inputs, return_loss=True)
    assert model.momentum_encoders.queue_ptr.item() == (2 * 5) % 6


def test_eval_mode_and_save_load_keep_the_queue(tmp_path, inputs):
    model = build(MPLUGForPreTraining).train()
    out = model(**inputs)
    assert torch.isfinite(out.loss)
    model.eval()
    snapshot = model.momentum_encoders.image_queue.clone()
    model(**inputs)
    torch.testing.assert_close(model.momentum_encoders.image_queue, snapshot)
    model.save_pretrained(tmp_path)
    reloaded = MPLUGForPreTraining.from_pretrained(tmp_path)
    torch.testing.assert_close(reloaded.momentum_encoders.image_queue, snapshot)
    assert bool(reloaded.momentum_encoders.initialized) and reloaded.momentum_encoders.queue_ptr.item() == 2
    assert not any(p.requires_grad for p in reloaded.momentum_encoders.parameters())


def test_momentum_features_of_a_video_average_its_frames(inputs):
    """A video's momentum feature is the mean over its frames, as the online one: at the first step (momentum ==
    online) the enqueued features equal `get_image_features` of the video, not of its first frame."""
    model = build().train()
    videos = torch.stack([inputs["pixel_values"], inputs["pixel_values"].flip(-1), -inputs["pixel_values"]], dim=1)
    model(
        pixel_values=videos, input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], return_loss=True
    )
    with torch.no_grad():
        video_feat = model.get_image_features(videos).pooler_output
        first_frame_feat = model.get_image_features(videos[:, 0]).pooler_output
    torch.testing.assert_close(model.momentum_encoders.image_queue[:, :2], video_feat.t(), atol=1e-6, rtol=0)
    assert not torch.allclose(video_feat, first_frame_feat, atol=1e-3)
