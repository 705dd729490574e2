"""bfloat16 on the CPU for every head and path (issue 21): bf16 weights (`from_pretrained(..., dtype=torch.bfloat16)`)
and fp32 weights under `torch.autocast("cpu", dtype=torch.bfloat16)` give finite outputs close to float32 (loose
tolerance: bf16 keeps 8 mantissa bits) and the same answers, ranks, choices and boxes on a tiny random model; the
scores that decide answers (beam scores, answer log-likelihoods, P(yes), ITM scores) come back in float32. The
visual-question-answering, image-text-to-text and zero-shot-image-classification pipelines load with
`dtype=torch.bfloat16` and answer as float32 or as their bf16 model does."""

import contextlib

import pytest
import torch
from PIL import Image
from transformers import pipeline

from mplug_hf import (
    MPLUGForCaptioning,
    MPLUGForGrounding,
    MPLUGForQuestionAnswering,
    MPLUGForRetrieval,
    MPLUGImageProcessor,
    MPLUGProcessor,
)
from mplug_hf.evaluation.runner import EvaluationRunner, retrieval_scores
from mplug_hf.original_generation import generate_answer_original, generate_caption_original
from mplug_hf.scoring import choose, encode_image_questions, rank_answers, retrieve, score_yes_no
from tests.conftest import tiny_config


MODES = ["weights", "autocast"]
CANDIDATES = torch.tensor([[101, 20, 102, 0], [101, 21, 22, 102], [101, 23, 102, 0], [101, 24, 25, 102]])
# the shipped BERT tokenizer's ids must fit the tiny model's vocabulary
BERT_TEXT_CONFIG = dict(
    vocab_size=30522, hidden_size=32, intermediate_size=64, num_attention_heads=4, max_position_embeddings=64
)


def build(cls, mode, attn_implementation="sdpa", **overrides):
    torch.manual_seed(0)
    config = tiny_config(**overrides)
    config._attn_implementation = attn_implementation
    model = cls(config).eval()
    return model.to(torch.bfloat16) if mode == "weights" else model


def precision(mode):
    return torch.autocast("cpu", dtype=torch.bfloat16) if mode == "autocast" else contextlib.nullcontext()


def assert_close_loose(actual, expected, atol=0.05, rtol=0.05):
    assert torch.isfinite(actual).all()
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol)


@pytest.fixture
def candidate_mask():
    return (CANDIDATES != 0).long()


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager", "mplug_fused"])
@pytest.mark.parametrize("mode", MODES)
def test_vqa_paths_agree_with_float32(inputs, candidate_mask, mode, attn_implementation):
    reference = build(MPLUGForQuestionAnswering, "fp32", attn_implementation)
    model = build(MPLUGForQuestionAnswering, mode, attn_implementation)
    ids, pixels, mask = inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"]
    choices = CANDIDATES.unsqueeze(0).expand(2, -1, -1)
    choice_mask = candidate_mask.unsqueeze(0).expand(2, -1, -1)
    results = {}
    for name, current in (("fp32", reference), (mode, model)):
        with precision(mode if current is model else "fp32"):
            results[name] = dict(
                encoded=encode_image_questions(current, ids, pixels, mask).last_hidden_state,
                generate=current.generate(**inputs, max_new_tokens=4, num_beams=3),
                original=generate_answer_original(current, ids, pixels, mask, num_beams=3, max_length=4),
                rank=rank_answers(current, ids, pixels, CANDIDATES, candidate_mask, attention_mask=mask, k=3),
                yes=score_yes_no(current, ids, pixels, 30, 31, attention_mask=mask),
                yes_full=score_yes_no(current, ids, pixels, 30, 31, attention_mask=mask, full_sequence=True),
                choose=choose(current, ids, pixels, choices, choice_mask, attention_mask=mask),
                loss=current(**inputs, labels=CANDIDATES[:2]).loss,
            )
    ours, fp32 = results[mode], results["fp32"]
    assert_close_loose(ours["encoded"], fp32["encoded"], atol=0.1)
    assert torch.equal(ours["generate"], fp32["generate"])
    assert torch.equal(ours["original"].sequences, fp32["original"].sequences)
    assert ours["original"].scores.dtype == torch.float32
    assert_close_loose(ours["original"].scores, fp32["original"].scores)
    assert torch.equal(ours["rank"][0], fp32["rank"][0])
    assert ours["rank"][1].dtype == torch.float32
    assert_close_loose(ours["rank"][1], fp32["rank"][1], atol=0.02)
    for key in ("yes", "yes_full"):
        assert ours[key].dtype == torch.float32
        assert_close_loose(ours[key], fp32[key], atol=0.02)
    assert torch.equal(ours["choose"][0], fp32["choose"][0])
    assert ours["choose"][1].dtype == torch.float32
    assert_close_loose(ours["choose"][1], fp32["choose"][1], atol=0.1, rtol=0.02)
    assert ours["loss"].dtype == torch.float32
    assert_close_loose(ours["loss"], fp32["loss"], rtol=0.02)


@pytest.mark.parametrize("mode", MODES)
def test_captioning_agrees_with_float32(inputs, mode):
    outputs = {}
    for name in ("fp32", mode):
        model = build(MPLUGForCaptioning, name)
        with precision(name):
            outputs[name] = (
                model.generate(pixel_values=inputs["pixel_values"], max_new_tokens=5, num_beams=3),
                generate_caption_original(model, pixel_values=inputs["pixel_values"], num_beams=3, max_length=5),
                model(pixel_values=inputs["pixel_values"], labels=CANDIDATES[:2]).loss,
            )
    (generated, original, loss), (generated32, original32, loss32) = outputs[mode], outputs["fp32"]
    assert torch.equal(generated, generated32)
    assert torch.equal(original.sequences, original32.sequences)
    assert_close_loose(original.scores, original32.scores)
    assert loss.dtype == torch.float32
    assert_close_loose(loss, loss32, rtol=0.02)


@pytest.mark.parametrize("mode", MODES)
def test_retrieval_ranks_agree_with_float32(mode):
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(4, 3, 32, 32, generator=generator)
    texts = torch.randint(1000, (5, 6), generator=generator)
    texts[:, 0] = 101
    mask = torch.ones_like(texts)
    outputs = {}
    for name in ("fp32", mode):
        model = build(MPLUGForRetrieval, name)
        with precision(name):
            outputs[name] = retrieve(model, pixels, texts, mask, k=5, batch_size=3)
    for ours, fp32 in zip(outputs[mode], outputs["fp32"]):
        assert ours.dtype == torch.float32
        assert_close_loose(ours, fp32, atol=0.1)
        # a random model's ITM logits are near ties: the top match agrees wherever float32 separates it clearly
        top2 = fp32.topk(2, dim=1).values
        clear = (top2[:, 0] - top2[:, 1]) > 2 * (ours - fp32).abs().max()
        assert torch.equal(ours.argmax(dim=1)[clear], fp32.argmax(dim=1)[clear])


@pytest.mark.parametrize("mode", MODES)
def test_evaluation_retrieval_similarities_are_float32_products(mode):
    """The evaluation runner's ITC similarities (which pick the ITM candidates) are float32 products of the
    model's features, not bfloat16 ones, whose 8 mantissa bits tie similar texts."""
    model = build(MPLUGForRetrieval, mode, text_config=BERT_TEXT_CONFIG)
    processor = MPLUGProcessor(MPLUGImageProcessor(image_size=32))
    images = [Image.new("RGB", (40, 32), colour) for colour in ("red", "blue", "green")]
    texts = ["a red square", "a blue square", "a green square", "a picture"]
    with torch.no_grad(), precision(mode):
        scores = retrieval_scores(EvaluationRunner(model, processor, batch_size=2), images, texts, k=2)
        image_features = model.get_image_features(processor(images=images)["pixel_values"]).pooler_output
        encoded = processor.encode_text(texts, max_length=30, padding="max_length")
        text_features = model.get_text_features(encoded["input_ids"], encoded["attention_mask"]).pooler_output
    assert image_features.dtype == torch.bfloat16
    expected = image_features.float() @ text_features.float().t()
    torch.testing.assert_close(torch.from_numpy(scores["itc_i2t"]), expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_grounding_boxes_agree_with_float32(inputs, mode):
    boxes = {}
    for name in ("fp32", mode):
        model = build(MPLUGForGrounding, name)
        with precision(name):
            boxes[name] = model(**inputs).pred_boxes
    assert boxes[mode].dtype == torch.float32
    assert torch.equal(boxes[mode], boxes["fp32"])


def test_from_pretrained_bfloat16_round_trip(tmp_path, inputs):
    build(MPLUGForQuestionAnswering, "fp32").save_pretrained(tmp_path)
    model = MPLUGForQuestionAnswering.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert model.dtype == torch.bfloat16
    assert all(parameter.dtype == torch.bfloat16 for parameter in model.parameters())
    # loading in bfloat16 is casting the saved weights (a random model's greedy answers may differ from float32 on
    # near-ties; agreement with float32 is measured on trained models in benchmarks/bf16_agreement.py)
    reference = MPLUGForQuestionAnswering.from_pretrained(tmp_path).eval().to(torch.bfloat16)
    # float32 pixel values go in as they come from the processor
    assert torch.equal(model.generate(**inputs, max_new_tokens=4), reference.generate(**inputs, max_new_tokens=4))


# ----------------------------------------------------------------------------------------------------------------------
# Pipelines loaded with dtype=torch.bfloat16
# ----------------------------------------------------------------------------------------------------------------------

PIPELINE_QUESTIONS = ["what is in the picture?", "is there a dog?"]


@pytest.fixture(scope="module")
def pipeline_images():
    generator = torch.Generator().manual_seed(3)
    return [
        Image.fromarray(torch.randint(0, 256, size, generator=generator, dtype=torch.uint8).numpy())
        for size in ((40, 50, 3), (64, 48, 3))
    ]


def float32_and_bfloat16_pipelines(task: str, cls, folder, **config_overrides):
    """The same saved tiny model loaded by `pipeline(task, ...)` in float32 and with `dtype=torch.bfloat16`."""
    build(cls, "fp32", text_config=BERT_TEXT_CONFIG, **config_overrides).save_pretrained(folder)
    MPLUGProcessor(MPLUGImageProcessor(image_size=32)).save_pretrained(folder)
    float32 = pipeline(task, model=str(folder), device="cpu")
    bfloat16 = pipeline(task, model=str(folder), device="cpu", dtype=torch.bfloat16)
    assert bfloat16.model.dtype == torch.bfloat16
    assert all(parameter.dtype == torch.bfloat16 for parameter in bfloat16.model.parameters())
    return float32, bfloat16


def assert_same_answers(ours: list[dict], float32: list[dict], key: str = "answer", atol: float = 0.05):
    assert [item[key] for item in ours] == [item[key] for item in float32]
    assert all(isinstance(item["score"], float) for item in ours)
    assert [item["score"] for item in ours] == pytest.approx([item["score"] for item in float32], abs=atol)


def test_vqa_pipeline_in_bfloat16_answers_as_float32(tmp_path, pipeline_images):
    float32, bfloat16 = float32_and_bfloat16_pipelines(
        "visual-question-answering", MPLUGForQuestionAnswering, tmp_path
    )
    for options in (
        dict(top_k=2, max_new_tokens=4),
        dict(candidate_answers=["a dog", "two cats", "red", "yes"], top_k=4),
        dict(yes_no=True, top_k=2),
    ):
        ours = bfloat16(pipeline_images, PIPELINE_QUESTIONS, batch_size=2, **options)
        for answers, float32_answers in zip(ours, float32(pipeline_images, PIPELINE_QUESTIONS, **options)):
            assert_same_answers(answers, float32_answers)


def test_image_text_to_text_pipeline_in_bfloat16_captions_with_the_bf16_model(tmp_path, pipeline_images):
    """A random model's captions over BERT's 30k word pieces are near ties: the pipeline must give what its bf16
    model generates from bf16 pixels (the model-level tests compare bf16 with float32)."""
    _, bfloat16 = float32_and_bfloat16_pipelines("image-text-to-text", MPLUGForCaptioning, tmp_path)
    for image in pipeline_images:
        pixel_values = bfloat16.processor(images=image)["pixel_values"].to(torch.bfloat16)
        expected = bfloat16.model.generate(pixel_values=pixel_values, max_new_tokens=5)
        caption = bfloat16(image, text="", max_new_tokens=5)
        assert caption[0]["generated_text"] == bfloat16.processor.decode(expected[0], skip_special_tokens=True)


def test_zero_shot_pipeline_in_bfloat16_classifies_as_float32(tmp_path, pipeline_images):
    # a wider initialisation than BERT's 0.02: at 0.02 a random model gives each label 1/3 ± 0.002 (order = noise)
    float32, bfloat16 = float32_and_bfloat16_pipelines(
        "zero-shot-image-classification", MPLUGForRetrieval, tmp_path, initializer_range=0.1
    )
    labels = ["cat", "dog", "car"]
    for image in pipeline_images:
        ours = {item["label"]: item["score"] for item in bfloat16(image, candidate_labels=labels)}
        # the stock pipeline's softmax runs in the model's dtype: bfloat16 probabilities, 8 mantissa bits
        assert sum(ours.values()) == pytest.approx(1.0, abs=1e-2)
        assert ours == pytest.approx(
            {item["label"]: item["score"] for item in float32(image, candidate_labels=labels)}, abs=0.02
        )
