"""Numerics and determinism: half precision without inf/NaN, answers independent of batch composition and padding
side, torch.compile equal to eager."""

import pytest
import torch

from mplug_hf import MPLUGForCaptioning, MPLUGForQuestionAnswering
from tests.conftest import tiny_config


def build(cls=MPLUGForQuestionAnswering, attn_implementation="eager"):
    torch.manual_seed(0)
    config = tiny_config()
    config._attn_implementation = attn_implementation
    return cls(config).eval()


def pad(rows, side):
    length = max(len(row) for row in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        if side == "right":
            ids[i, : len(row)] = torch.tensor(row)
        else:
            ids[i, length - len(row) :] = torch.tensor(row)
    return ids, (ids != 0).long()


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_answers_do_not_depend_on_the_batch_or_the_padding_side(side, attn_implementation):
    model = build(attn_implementation=attn_implementation)
    generator = torch.Generator().manual_seed(3)
    pixel_values = torch.randn(3, 3, 32, 32, generator=generator)
    questions = [[101, 7, 8, 9, 10, 11, 12], [101, 13], [101, 14, 15, 16]]
    with torch.no_grad():
        alone = [
            model.generate(input_ids=torch.tensor([q]), pixel_values=pixel_values[i : i + 1], max_new_tokens=5)[0]
            for i, q in enumerate(questions)
        ]
        input_ids, attention_mask = pad(questions, side)
        batched = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, max_new_tokens=5
        )
        memory_alone = model.mplug(input_ids=torch.tensor([questions[1]]), pixel_values=pixel_values[1:2])
        memory_batched = model.mplug(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values)
    for single, row in zip(alone, batched):
        assert single.tolist() == row[: len(single)].tolist()
    # the short question's fused states are the same wherever its padding sits
    real = attention_mask[1].bool()
    text_batched = memory_batched.fused_text_states[1][real]
    torch.testing.assert_close(text_batched, memory_alone.fused_text_states[0], atol=1e-5, rtol=1e-5)


def test_left_padded_caption_prompts_match_unpadded_ones():
    model = build(MPLUGForCaptioning)
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    prompts = [[101, 20, 21, 22], [101, 23]]
    with torch.no_grad():
        alone = [
            model.generate(
                pixel_values=pixel_values[i : i + 1], decoder_input_ids=torch.tensor([p]), max_new_tokens=4
            )[0]
            for i, p in enumerate(prompts)
        ]
        ids, mask = pad(prompts, "left")
        batched = model.generate(
            pixel_values=pixel_values, decoder_input_ids=ids, decoder_attention_mask=mask, max_new_tokens=4
        )
    assert batched[0].tolist() == alone[0].tolist()
    assert batched[1, 2:].tolist() == alone[1].tolist()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_has_no_inf_or_nan_on_worst_case_inputs(dtype):
    model = build()
    with torch.no_grad():  # large activations: scale every feed-forward output up
        for name, parameter in model.named_parameters():
            if name.endswith("mlp.fc2.weight"):
                parameter.mul_(50)
    model = model.to(dtype)
    length = model.config.text_config.max_position_embeddings
    input_ids = torch.randint(1000, (2, length), generator=torch.Generator().manual_seed(0))
    input_ids[:, 0] = 101
    pixel_values = (torch.randn(2, 3, 32, 32) * 10).to(dtype)
    with torch.no_grad():
        encoded = model.mplug(input_ids=input_ids, pixel_values=pixel_values)
        assert torch.isfinite(encoded.last_hidden_state).all()
        out = model(input_ids=input_ids, pixel_values=pixel_values, labels=torch.tensor([[101, 5, 102]] * 2))
        assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
        generated = model.generate(input_ids=input_ids, pixel_values=pixel_values, num_beams=2, max_new_tokens=4)
    assert generated.shape[0] == 2


@pytest.mark.slow
def test_torch_compile_equals_eager(inputs):
    model = build(attn_implementation="sdpa")
    compiled = torch.compile(model.mplug, fullgraph=False)
    with torch.no_grad():
        expected = model.mplug(**inputs).last_hidden_state
        actual = compiled(**inputs).last_hidden_state
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
