"""Pipelines end to end on tiny models: visual-question-answering (mPLUG and BLIP), image-text-to-text,
zero-shot-image-classification and grounding."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForQuestionAnswering,
    BlipImageProcessorPil,
    BlipProcessor,
    pipeline,
)
from transformers.pipelines import check_task

from mplug_hf import (
    MPLUGForCaptioning,
    MPLUGForGrounding,
    MPLUGForQuestionAnswering,
    MPLUGForRetrieval,
    MPLUGImageProcessor,
    MPLUGProcessor,
    VisualGroundingPipeline,
    VisualQuestionAnsweringPipeline,
)
from mplug_hf.processing_mplug import VOCAB_FILE
from mplug_hf.scoring import rank_answers, score_yes_no
from tests.conftest import tiny_config


QUESTIONS = ["what is in the picture?", "how many dogs are there?"]


def tiny_text_config(**overrides) -> dict:
    """The tiny BERT widths with the real bert-base-uncased vocabulary, so that the shipped tokenizer's ids fit."""
    values = dict(
        vocab_size=30522, hidden_size=32, intermediate_size=64, num_attention_heads=4, max_position_embeddings=64,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    values.update(overrides)
    return values


def build(cls):
    torch.manual_seed(0)
    return cls(tiny_config(text_config=tiny_text_config())).eval()


@pytest.fixture(scope="module")
def processor() -> MPLUGProcessor:
    return MPLUGProcessor(MPLUGImageProcessor(image_size=32))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two small RGB images of different sizes, as PIL images and as PNG paths."""
    folder = tmp_path_factory.mktemp("images")
    pictures = [
        Image.fromarray(np.random.RandomState(seed).randint(0, 256, size, dtype=np.uint8))
        for seed, size in ((0, (40, 50, 3)), (1, (64, 48, 3)))
    ]
    paths = []
    for index, picture in enumerate(pictures):
        paths.append(str(folder / f"image{index}.png"))
        picture.save(paths[-1])
    return pictures, paths


@pytest.fixture(scope="module")
def vqa_model():
    return build(MPLUGForQuestionAnswering)


@pytest.fixture(scope="module")
def vqa_folder(tmp_path_factory, vqa_model, processor):
    folder = tmp_path_factory.mktemp("mplug-vqa")
    vqa_model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def vqa_pipe(vqa_folder):
    return pipeline("visual-question-answering", model=vqa_folder, device="cpu")


def answer_log_prob(model, inputs, answer_ids) -> float:
    """log p(answer | image, question) by teacher forcing: the sum of the answer tokens' log-probabilities."""
    decoder_input_ids = torch.cat([torch.tensor([[model.config.decoder_start_token_id]]), answer_ids[None]], dim=1)
    with torch.no_grad():
        logits = model(**inputs, decoder_input_ids=decoder_input_ids).logits
    log_probs = logits[0, :-1].log_softmax(dim=-1)
    return log_probs.gather(1, answer_ids[:, None]).sum().item()


def test_vqa_pipeline_answers_are_the_beam_search_answers_with_their_probabilities(
    vqa_pipe, vqa_model, processor, images
):
    pictures, _ = images
    result = vqa_pipe(pictures[0], QUESTIONS[0], top_k=3, max_new_tokens=4)
    assert isinstance(result, list) and 1 <= len(result) <= 3
    assert all(isinstance(item["answer"], str) and isinstance(item["score"], float) for item in result)
    scores = [item["score"] for item in result]
    assert scores == sorted(scores, reverse=True) and all(0.0 < score <= 1.0 for score in scores)

    inputs = processor(images=pictures[0], text=QUESTIONS[0])
    generated = vqa_model.generate(**inputs, num_beams=3, num_return_sequences=3, max_new_tokens=4)
    expected = {processor.decode(sequence[1:], skip_special_tokens=True) for sequence in generated}
    assert {item["answer"] for item in result} <= expected
    # each score is the answer's sequence probability, which teacher forcing recomputes
    for sequence in generated:
        answer_ids = sequence[1:][sequence[1:] != 0]
        match = [item for item in result if item["answer"] == processor.decode(answer_ids, skip_special_tokens=True)]
        if match:
            assert match[0]["score"] == pytest.approx(np.exp(answer_log_prob(vqa_model, inputs, answer_ids)), rel=1e-3)


def test_vqa_pipeline_call_forms_and_batching_agree(vqa_pipe, images):
    pictures, paths = images
    single = [vqa_pipe(picture, question, top_k=2, max_new_tokens=3) for picture, question in zip(pictures, QUESTIONS)]
    batched = vqa_pipe(paths, QUESTIONS, top_k=2, max_new_tokens=3, batch_size=2)
    as_dicts = vqa_pipe(
        [{"image": p, "question": q} for p, q in zip(paths, QUESTIONS)], top_k=2, max_new_tokens=3, batch_size=1
    )
    for expected, got_batched, got_dicts in zip(single, batched, as_dicts):
        assert [item["answer"] for item in got_batched] == [item["answer"] for item in expected]
        assert [item["answer"] for item in got_dicts] == [item["answer"] for item in expected]
        assert [item["score"] for item in got_batched] == pytest.approx([item["score"] for item in expected], rel=1e-4)
    # one image with several questions pairs the image with each question
    broadcast = vqa_pipe(pictures[0], QUESTIONS, max_new_tokens=3)
    assert len(broadcast) == 2 and all(len(answers) == 1 for answers in broadcast)
    # the v4 alias and pipeline-level generation settings
    alias = pipeline("vqa", model=vqa_pipe.model, processor=vqa_pipe.processor, device="cpu", max_new_tokens=3)
    assert alias(pictures[0], QUESTIONS[0], top_k=2) == vqa_pipe(pictures[0], QUESTIONS[0], top_k=2, max_new_tokens=3)


def test_vqa_pipeline_ranks_candidate_answers_with_rank_answers(vqa_pipe, vqa_model, processor, images):
    pictures, _ = images
    candidates = ["cat", "two dogs", "red", "a bicycle"]
    result = vqa_pipe(pictures, QUESTIONS, candidate_answers=candidates, top_k=4, batch_size=2)
    inputs = processor(images=pictures, text=QUESTIONS)
    encoded = processor.encode_targets(candidates)
    indices, probs = rank_answers(vqa_model,
        inputs["input_ids"], inputs["pixel_values"], encoded["input_ids"], encoded["attention_mask"],
        attention_mask=inputs["attention_mask"], k=4,
    )  # fmt: skip
    for row, answers in enumerate(result):
        assert [item["answer"] for item in answers] == [candidates[i] for i in indices[row].tolist()]
        assert [item["score"] for item in answers] == pytest.approx(probs[row].tolist(), abs=1e-6)
        assert sum(item["score"] for item in answers) == pytest.approx(1.0, abs=1e-5)
    top_one = vqa_pipe(pictures[0], QUESTIONS[0], candidate_answers=candidates)
    assert top_one == result[0][:1]


def test_vqa_pipeline_yes_no_scores_are_score_yes_no(vqa_pipe, vqa_model, processor, images):
    pictures, _ = images
    result = vqa_pipe(pictures, QUESTIONS, yes_no=True, top_k=2, batch_size=2)
    inputs = processor(images=pictures, text=QUESTIONS)
    yes, no = processor.tokenizer.convert_tokens_to_ids(["yes", "no"])
    p_yes = score_yes_no(vqa_model, **inputs, yes_token_id=yes, no_token_id=no)
    for row, answers in enumerate(result):
        scores = {item["answer"]: item["score"] for item in answers}
        assert scores["yes"] == pytest.approx(p_yes[row].item(), abs=1e-5)
        assert answers[0]["score"] >= answers[1]["score"]
    with pytest.raises(ValueError, match="either yes_no=True or candidate_answers"):
        vqa_pipe(pictures[0], QUESTIONS[0], yes_no=True, candidate_answers=["a"])


@pytest.fixture(scope="module")
def blip():
    """A tiny random BLIP VQA model with a processor built offline (BERT vocabulary shipped with mplug_hf)."""
    torch.manual_seed(0)
    config = BlipConfig(
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
            patch_size=8,
        ),
        text_config=dict(
            vocab_size=30524, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=64,
        ),
        projection_dim=16, image_text_hidden_size=32,
    )  # fmt: skip
    tokenizer = BertTokenizer(vocab=VOCAB_FILE, do_lower_case=True)
    blip_processor = BlipProcessor(BlipImageProcessorPil(size={"height": 32, "width": 32}), tokenizer)
    return BlipForQuestionAnswering(config).eval(), blip_processor


def test_vqa_pipeline_serves_other_generative_vqa_models(blip, images):
    model, blip_processor = blip
    pictures, _ = images
    vqa = pipeline("visual-question-answering", model=model, processor=blip_processor, device="cpu")
    result = vqa(pictures[1], QUESTIONS[1], top_k=2, max_new_tokens=4)
    inputs = blip_processor(images=pictures[1], text=QUESTIONS[1], return_tensors="pt")
    generated = model.generate(
        **inputs,
        num_beams=2,
        num_return_sequences=2,
        max_new_tokens=4,
        output_scores=True,
        return_dict_in_generate=True,
    )
    log_probs = model.compute_transition_scores(
        generated.sequences, generated.scores, generated.beam_indices, normalize_logits=True
    ).sum(dim=1)
    # BLIP's sequences start with its [DEC] token, outside the BERT vocabulary: only the generated tokens are answers
    expected = {
        blip_processor.decode(sequence[1:], skip_special_tokens=True).strip(): log_prob.exp().item()
        for sequence, log_prob in zip(generated.sequences, log_probs)
    }
    assert len(result) == len(expected)
    for item in result:
        assert item["score"] == pytest.approx(expected[item["answer"]], rel=1e-4)
    with pytest.raises(ValueError, match="candidate_answers needs a VQA model"):
        vqa(pictures[1], QUESTIONS[1], candidate_answers=["yes", "no"])


def test_vqa_pipeline_rejects_bad_inputs(vqa_pipe, images, tmp_path, processor):
    pictures, paths = images
    with pytest.raises(ValueError, match="image is required"):
        vqa_pipe(None, QUESTIONS[0])
    with pytest.raises(ValueError, match="not found"):
        vqa_pipe(str(tmp_path / "missing.jpg"), QUESTIONS[0])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read image"):
        vqa_pipe(str(broken), QUESTIONS[0])
    with pytest.raises(ValueError, match="URLs are not fetched"):
        vqa_pipe("https://example.com/cat.jpg", QUESTIONS[0])
    with pytest.raises(ValueError, match="question is empty"):
        vqa_pipe(pictures[0], "   ")
    with pytest.raises(ValueError, match="give a question"):
        vqa_pipe(pictures[0])
    with pytest.raises(ValueError, match="2 images but 1 questions"):
        vqa_pipe(paths, QUESTIONS[:1])
    with pytest.raises(ValueError, match="top_k"):
        vqa_pipe(pictures[0], QUESTIONS[0], top_k=0)
    with pytest.raises(ValueError, match="unknown parameters"):
        vqa_pipe(pictures[0], QUESTIONS[0], answer_count=2)
    with pytest.raises(ValueError, match="non-empty list"):
        vqa_pipe(pictures[0], QUESTIONS[0], candidate_answers=[])
    for head in (MPLUGForCaptioning, MPLUGForRetrieval):
        with pytest.raises(ValueError, match="not a visual question answering model"):
            pipeline("visual-question-answering", model=build(head), processor=processor, device="cpu")


def test_vqa_pipeline_from_a_tokenizer_and_an_image_processor_encodes_as_the_processor(
    vqa_pipe, vqa_model, processor, images
):
    """Without a processor the mPLUG pipeline still encodes `[CLS] question` (a bare tokenizer would add [SEP]) and
    answers as with the processor; another model's processor is refused."""
    pictures, _ = images
    from_parts = pipeline(
        "visual-question-answering",
        model=vqa_model,
        tokenizer=processor.tokenizer,
        image_processor=processor.image_processor,
        device="cpu",
    )
    item = {"image": pictures[0], "question": QUESTIONS[0]}
    assert from_parts.preprocess(item)["input_ids"].tolist() == processor(text=QUESTIONS[0])["input_ids"].tolist()
    assert from_parts(**item, top_k=2, max_new_tokens=3) == vqa_pipe(**item, top_k=2, max_new_tokens=3)
    blip_processor = BlipProcessor(BlipImageProcessorPil(size={"height": 32, "width": 32}), processor.tokenizer)
    with pytest.raises(ValueError, match="needs its MPLUGProcessor, got BlipProcessor"):
        pipeline("visual-question-answering", model=vqa_model, processor=blip_processor, device="cpu")


def test_only_the_visual_question_answering_removal_is_lifted():
    for task in ("visual-question-answering", "vqa"):
        name, implementation, _ = check_task(task)
        assert name == "visual-question-answering" and implementation["impl"] is VisualQuestionAnsweringPipeline
    with pytest.raises(KeyError, match="removed"):
        check_task("summarization")


def test_image_text_to_text_pipeline_captions_and_answers(tmp_path, processor, vqa_model, images):
    pictures, paths = images
    captioner = build(MPLUGForCaptioning)
    captioner.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    pipe = pipeline("image-text-to-text", model=str(tmp_path), device="cpu")
    assert isinstance(pipe.model, MPLUGForCaptioning)

    caption = pipe(paths[0], text="", max_new_tokens=5)
    expected = captioner.generate(pixel_values=processor(images=pictures[0])["pixel_values"], max_new_tokens=5)
    assert caption[0]["generated_text"] == processor.decode(expected[0], skip_special_tokens=True)

    prompt = "a picture of"
    continued = pipe(pictures[0], text=prompt, max_new_tokens=3, return_full_text=False)
    prompted = captioner.generate(**processor(images=pictures[0], text=prompt), max_new_tokens=3)
    full = processor.decode(prompted[0], skip_special_tokens=True)
    assert full.startswith(prompt) and continued[0]["generated_text"].strip() == full[len(prompt) :].strip()

    # the VQA head answers through the same pipeline when passed as a model instance
    answerer = pipeline("image-text-to-text", model=vqa_model, processor=processor, device="cpu")
    answer = answerer(pictures[1], text=QUESTIONS[1], max_new_tokens=4, num_beams=1, return_full_text=False)
    generated = vqa_model.generate(**processor(images=pictures[1], text=QUESTIONS[1]), max_new_tokens=4, num_beams=1)
    assert answer[0]["generated_text"] == processor.decode(generated[0], skip_special_tokens=True)


def test_zero_shot_image_classification_pipeline_uses_logits_per_image(tmp_path, processor, images):
    pictures, paths = images
    model = build(MPLUGForRetrieval)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    classify = pipeline("zero-shot-image-classification", model=str(tmp_path), device="cpu")
    labels = ["cat", "dog", "car"]
    result = classify(paths[0], candidate_labels=labels)
    assert sorted(item["label"] for item in result) == sorted(labels)
    assert sum(item["score"] for item in result) == pytest.approx(1.0, abs=1e-5)
    # the stock pipeline tokenizes the hypotheses with the BERT convention ([CLS] text [SEP])
    texts = classify.tokenizer([f"This is a photo of {label}." for label in labels], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(
            input_ids=texts["input_ids"],
            attention_mask=texts["attention_mask"],
            pixel_values=processor(images=pictures[0])["pixel_values"],
        ).logits_per_image
    expected = dict(zip(labels, logits[0].softmax(-1).tolist()))
    assert {item["label"]: item["score"] for item in result} == pytest.approx(expected, abs=1e-6)


def test_grounding_pipeline_returns_pixel_boxes_of_the_greedy_boxes(processor, images):
    pictures, paths = images
    model = build(MPLUGForGrounding)
    grounder = VisualGroundingPipeline(model=model, processor=processor, device="cpu")
    query = "the dog on the left"
    result = grounder(paths[1], query=query)
    image_inputs = processor.image_processor(pictures[1], mode="grounding")
    text_inputs = processor.encode_text(query)  # `[CLS] query`, the processor's (original) convention
    normalised = model(
        input_ids=text_inputs["input_ids"],
        pixel_values=image_inputs["pixel_values"],
        attention_mask=text_inputs["attention_mask"],
    ).pred_boxes
    expected = processor.post_process_grounding(normalised, image_inputs["image_sizes"])[0]
    box = result["box"]
    assert [box["xmin"], box["ymin"], box["xmax"], box["ymax"]] == pytest.approx(expected.tolist(), abs=1e-4)
    width, height = pictures[1].size
    assert 0 <= box["xmin"] <= box["xmax"] <= width and 0 <= box["ymin"] <= box["ymax"] <= height
    batched = grounder(paths[::-1], query=[query, "a red car"], batch_size=2)
    assert batched[0]["box"] == pytest.approx(box, abs=1e-4)
    assert batched[1]["box"] == pytest.approx(grounder(pictures[0], query="a red car")["box"], abs=1e-4)
    with pytest.raises(ValueError, match="non-empty string"):
        grounder(paths[0], query="")
    with pytest.raises(ValueError, match="not a grounding model"):
        VisualGroundingPipeline(model=build(MPLUGForRetrieval), processor=processor, device="cpu")
