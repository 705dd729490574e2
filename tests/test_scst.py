"""SCST: beams re-scored with gradients equal the original beam search's scores; the loss is the self-critical
policy gradient with the mean-of-beams baseline."""

import numpy as np
import pytest
import torch

from mplug_hf import MPLUGForCaptioning, MPLUGProcessor
from mplug_hf.evaluation.caption import CiderD
from mplug_hf.original_generation import generate_caption_original, original_beam_search
from mplug_hf.scst import self_critical_loss
from tests.conftest import tiny_config


@pytest.fixture
def model():
    torch.manual_seed(0)
    config = tiny_config()
    config._attn_implementation = "eager"
    return MPLUGForCaptioning(config).eval()


REFERENCES = [["a red circle on a table", "a red ball"], ["two dogs play in the park"]]


class FixedRewards:
    """A reward that differs between beams (random-weight captions all score CIDEr-D 0)."""

    def __call__(self, candidates, references):
        return np.arange(len(candidates), dtype=float) % 3


def test_scores_are_the_beam_scores_and_the_loss_backpropagates(model, inputs):
    processor = MPLUGProcessor()
    pixel_values = inputs["pixel_values"]
    out = self_critical_loss(
        model, processor, pixel_values, REFERENCES, FixedRewards(), num_beams=3, min_length=2, max_length=5
    )
    beams = original_beam_search(
        model.text_decoder,
        model.vision_model(pixel_values).last_hidden_state,
        None,
        None,
        3,
        2,
        5,
        num_return_sequences=3,
    )
    torch.testing.assert_close(out.scores.detach(), beams.scores, atol=1e-4, rtol=1e-4)
    assert out.rewards.tolist() == [[0, 1, 2], [0, 1, 2]] and len(out.captions[1]) == 3
    advantage = out.rewards - out.rewards.mean(1, keepdim=True)
    torch.testing.assert_close(out.loss, -(out.scores * advantage).mean())
    out.loss.backward()
    for prefix in ("vision_model", "text_decoder"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(prefix) and p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), prefix


def test_cider_d_is_the_default_reward(model, inputs):
    out = self_critical_loss(model, MPLUGProcessor(), inputs["pixel_values"], REFERENCES, num_beams=2, max_length=4)
    expected = CiderD()(sum(out.captions, []), [refs for refs in REFERENCES for _ in range(2)])
    torch.testing.assert_close(out.rewards, torch.tensor(expected, dtype=torch.float32).view(2, 2))


def test_equal_rewards_give_no_gradient_signal(model, inputs):
    class ConstantReward:
        def __call__(self, candidates, references):
            return np.full(len(candidates), 0.7)

    out = self_critical_loss(
        model, MPLUGProcessor(), inputs["pixel_values"], REFERENCES, cider=ConstantReward(), num_beams=2, max_length=4
    )
    assert out.loss.item() == 0.0


def test_prompt_tokens_are_not_scored(model, inputs):
    prompt = torch.tensor([[101, 20, 21]])
    out = self_critical_loss(
        model, MPLUGProcessor(), inputs["pixel_values"], REFERENCES, num_beams=2, min_length=1, max_length=4,
        prompt_ids=prompt,
    )  # fmt: skip
    beams = generate_caption_original(model, inputs["pixel_values"], prompt, num_beams=2, min_length=1, max_length=4,
                                    num_return_sequences=2)  # fmt: skip
    torch.testing.assert_close(out.scores.detach(), beams.scores, atol=1e-4, rtol=1e-4)


def test_bad_references_raise(model, inputs):
    with pytest.raises(ValueError, match="non-empty list of captions"):
        self_critical_loss(model, MPLUGProcessor(), inputs["pixel_values"], [["x"]])
    with pytest.raises(ValueError, match="num_beams >= 2"):
        self_critical_loss(model, MPLUGProcessor(), inputs["pixel_values"], REFERENCES, num_beams=1)
