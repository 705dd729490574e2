"""Batched VQA judging (P(yes), multiple choice): equal to brute-force per-question decoding, each image encoded once."""

import pytest
import torch

from mplug_hf import MPLUGForQuestionAnswering
from tests.conftest import tiny_config


YES, NO = 40, 41


@pytest.fixture
def model():
    torch.manual_seed(0)
    config = tiny_config()
    config._attn_implementation = "eager"
    return MPLUGForQuestionAnswering(config).eval()


@pytest.fixture
def questions():
    """Two images, five questions: three about image 0, two about image 1."""
    generator = torch.Generator().manual_seed(1)
    pixel_values = torch.randn(2, 3, 32, 32, generator=generator)
    input_ids = torch.tensor([[101, 7, 8, 9], [101, 11, 0, 0], [101, 12, 13, 0], [101, 14, 15, 16], [101, 17, 0, 0]])
    return dict(
        pixel_values=pixel_values,
        input_ids=input_ids,
        attention_mask=(input_ids != 0).long(),
        image_indices=torch.tensor([0, 0, 0, 1, 1]),
    )


def answer_log_likelihood(model, questions, q, answer):
    """Brute force: one forward for one question about its own image and one answer; the VQA loss of a single
    answer is its summed token CE."""
    image = questions["pixel_values"][questions["image_indices"][q]].unsqueeze(0)
    length = int(questions["attention_mask"][q].sum())
    labels = torch.tensor([[101, *answer, 102]])
    out = model(input_ids=questions["input_ids"][q : q + 1, :length], pixel_values=image, labels=labels)
    return -out.loss.item()


def count_vision_calls(model):
    calls = []
    model.mplug.vision_model.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    return calls


def test_score_yes_no_equals_per_question_decoding(model, questions):
    calls = count_vision_calls(model)
    first_token = model.score_yes_no(**questions, yes_token_id=YES, no_token_id=NO)
    full = model.score_yes_no(**questions, yes_token_id=YES, no_token_id=NO, full_sequence=True)
    assert calls == [2, 2], "each image must be encoded once per call, not once per question"
    for q in range(5):
        image = questions["pixel_values"][questions["image_indices"][q]].unsqueeze(0)
        length = int(questions["attention_mask"][q].sum())
        with torch.no_grad():
            logits = model(
                input_ids=questions["input_ids"][q : q + 1, :length],
                pixel_values=image,
                decoder_input_ids=torch.tensor([[101]]),
            ).logits[0, 0]
            expected = logits[[YES, NO]].softmax(-1)[0]
            yes, no = (answer_log_likelihood(model, questions, q, [token]) for token in (YES, NO))
        torch.testing.assert_close(first_token[q], expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(full[q], torch.tensor([yes, no]).softmax(-1)[0], atol=1e-5, rtol=1e-5)


def test_choose_equals_brute_force_and_skips_padding_options(model, questions):
    options = [[[30], [31, 32]], [[33, 34, 35], [30]], [[36], [37]], [[38], [0]], [[31], [39, 30]]]
    choice_ids = torch.zeros(5, 2, 5, dtype=torch.long)
    for q, pair in enumerate(options):
        for c, option in enumerate(pair):
            if option != [0]:
                choice_ids[q, c, : len(option) + 2] = torch.tensor([101, *option, 102])
    mask = (choice_ids != 0).long()
    calls = count_vision_calls(model)
    for normalize in (False, True):
        calls.clear()
        choice, scores = model.choose(
            **questions, choice_ids=choice_ids, choice_attention_mask=mask, length_normalize=normalize
        )
        assert calls == [2], "each image must be encoded once per call"
        for q, pair in enumerate(options):
            for c, option in enumerate(pair):
                if option == [0]:
                    assert scores[q, c] == float("-inf")
                    continue
                with torch.no_grad():
                    summed = answer_log_likelihood(model, questions, q, option)
                expected = summed / (len(option) + 1) if normalize else summed
                assert abs(scores[q, c].item() - expected) < 1e-4
        assert choice.tolist() == scores.argmax(1).tolist()
        assert choice[3] == 0


def test_judging_rejects_bad_indices(model, questions):
    with pytest.raises(ValueError, match="image_indices must lie"):
        model.score_yes_no(
            **{**questions, "image_indices": torch.tensor([0, 0, 0, 1, 2])}, yes_token_id=1, no_token_id=2
        )
    with pytest.raises(ValueError, match="batch size mismatch"):
        model.score_yes_no(**{**questions, "image_indices": None}, yes_token_id=1, no_token_id=2)
    with pytest.raises(ValueError, match="at least one non-empty option"):
        model.choose(
            **questions,
            choice_ids=torch.zeros(5, 2, 3, dtype=torch.long),
            choice_attention_mask=torch.zeros(5, 2, 3, dtype=torch.long),
        )
