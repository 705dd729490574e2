"""Batched VQA judging (P(yes), multiple choice): equal to brute-force per-question decoding, each image encoded once."""

from unittest.mock import patch

import pytest
import torch

from mplug_hf import MPLUGForQuestionAnswering, fused_attention
from mplug_hf.original_generation import generate_answer_original
from mplug_hf.scoring import choose, score_yes_no
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
    first_token = score_yes_no(model, **questions, yes_token_id=YES, no_token_id=NO)
    full = score_yes_no(model, **questions, yes_token_id=YES, no_token_id=NO, full_sequence=True)
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
        choice, scores = choose(
            model, **questions, choice_ids=choice_ids, choice_attention_mask=mask, length_normalize=normalize
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
        score_yes_no(
            model, **{**questions, "image_indices": torch.tensor([0, 0, 0, 1, 2])}, yes_token_id=1, no_token_id=2
        )
    with pytest.raises(ValueError, match="batch size mismatch"):
        score_yes_no(model, **{**questions, "image_indices": None}, yes_token_id=1, no_token_id=2)
    with pytest.raises(ValueError, match="at least one non-empty option"):
        choose(
            model,
            **questions,
            choice_ids=torch.zeros(5, 2, 3, dtype=torch.long),
            choice_attention_mask=torch.zeros(5, 2, 3, dtype=torch.long),
        )


def varied_judge(stride_layer: int, images, questions, image_indices):
    """A tiny [`VQAJudge`] with six fusion layers (S=3: one connected layer, as mPLUG-base; S=6: none, as mPLUG-large,
    the DPG-Bench/TIFA judge) and BERT's vocabulary. Larger random weights, raised "yes", "no" and [SEP] logits, and
    P(yes) centred on these questions (half above 1/2) make the answers vary with image and question whatever the
    random initialisation."""
    from mplug_hf import MPLUGImageProcessor, MPLUGProcessor
    from mplug_hf.t2i_benchmarks import VQAJudge

    torch.manual_seed(0)
    config = tiny_config(
        # one text head and 65 image tokens: folding the memory projections into 10 tokens × 5 beams pays off
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=8),
        text_config=dict(vocab_size=30522, hidden_size=32, intermediate_size=64, num_attention_heads=1),
        fusion_layers=6, stride_layer=stride_layer, initializer_range=0.2,
    )  # fmt: skip
    config.text_config.initializer_range = config.vision_config.initializer_range = 0.2
    judge = VQAJudge(MPLUGForQuestionAnswering(config).eval(), MPLUGProcessor(MPLUGImageProcessor(image_size=64)))
    bias = judge.model.text_decoder.lm_head.decoder.bias
    with torch.no_grad():
        bias[[judge.yes_id, judge.no_id]] += 12.0
        bias[config.eos_token_id] += 13.5
        gaps = torch.tensor([r["p_yes"] for r in judge.answer(images, questions, image_indices, rule="p_yes")]).logit()
        middle = len(gaps) // 2
        bias[judge.no_id] += gaps.sort().values[middle - 1 : middle + 1].mean()  # between the two middle questions
    return judge


@pytest.mark.parametrize("stride_layer", [3, 6])
def test_vqa_judge_answers_equal_one_pipeline_call_per_question(stride_layer):
    """The batched judge on the fused path (each image encoded once; S=6: one decoder memory row per image shared by
    its questions; S=3: each question's own memory attended with folded projections) gives the answer strings of one
    ModelScope-style call per (image, question) on sdpa, and the same P(yes) by both of its rules."""
    import numpy as np
    from PIL import Image

    from mplug_hf.fused_attention import FoldedMemoryCache

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(4)]
    words = ["dog", "cat", "red ball", "tree", "boat", "two birds", "lamp", "sky"]
    # uneven questions per image (4, 4, 2, 1): S=6 decodes three groups of images with equally many questions
    image_indices = [0, 1, 0, 1, 2, 0, 1, 2, 3, 0, 1]
    questions = [f"Is there a {words[(3 * q + i) % len(words)]}?" for q, i in enumerate(image_indices)]
    judge = varied_judge(stride_layer, images, questions, image_indices)
    model, processor = judge.model, judge.processor
    model.set_attn_implementation("mplug_fused")
    caches = []
    original_cache = fused_attention.FusedCrossAttentionShortcuts.generation_cache
    with patch.object(
        fused_attention.FusedCrossAttentionShortcuts,
        "generation_cache",
        lambda self, *args: caches.append(original_cache(self, *args)) or caches[-1],
    ):
        batched = judge.answer(images, questions, image_indices)
    fast = judge.answer(images, questions, image_indices, rule="p_yes")
    with torch.no_grad():
        groups = judge.decoder_memories(
            judge.encode(judge.pixel_values(images), questions, image_indices), image_indices
        )
    if stride_layer == 6:
        assert sorted(mask.shape[:2] for _, _, mask in groups) == [(1, 1), (1, 2), (2, 4)]
        # rows shared by several questions are projected once for all of them; only the one-question image may fold
        assert [isinstance(cache, FoldedMemoryCache) for cache in caches] == [True]
    else:
        assert [mask.ndim for _, _, mask in groups] == [2]
        assert all(isinstance(cache, FoldedMemoryCache) for cache in caches)  # 10 tokens × 5 beams fold
    model.set_attn_implementation("sdpa")
    for image, question, result, quick in zip(image_indices, questions, batched, fast):
        input_ids, attention_mask = judge.encode_questions([question])
        output = generate_answer_original(model, input_ids, judge.pixel_values([images[image]]), attention_mask)
        expected = processor.tokenizer.decode(
            output.sequences[0, 0, : int(output.lengths[0, 0])].tolist(),
            skip_special_tokens=True,
            clean_up_tokenization_spaces=True,
        )
        assert result["answer"] == expected
        assert abs(quick["p_yes"] - result["p_yes"]) < 1e-5
        p_yes = score_yes_no(
            model, input_ids, judge.pixel_values([images[image]]), judge.yes_id, judge.no_id, attention_mask
        )
        assert abs(result["p_yes"] - p_yes.item()) < 1e-5
    answers = [result["answer"] for result in batched]
    assert "yes" in answers and len(set(answers)) > 1, "the tiny judge must give varied answers for a meaningful test"
