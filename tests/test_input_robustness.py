"""Property-based and edge-case input tests: any image size/mode gives the right shape with finite values; any text
gives valid ids; broken inputs give clear errors."""

import logging

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mplug_hf import MPLUGImageProcessor, MPLUGProcessor
from mplug_hf.scoring import choose, rank_answers, retrieve, score_yes_no


PROCESSOR = MPLUGProcessor(MPLUGImageProcessor(image_size=32))
MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "I", "I;16", "F", "HSV"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    width=st.integers(1, 300),
    height=st.integers(1, 300),
    mode=st.sampled_from(MODES),
    seed=st.integers(0, 2**16),
    grounding=st.booleans(),
)
def test_any_image_gives_the_model_shape_with_finite_values(width, height, mode, seed, grounding):
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)
    encoded = PROCESSOR(images=image, mode="grounding" if grounding else "default")
    pixel_values = encoded["pixel_values"]
    assert pixel_values.shape == (1, 3, 32, 32) and pixel_values.dtype == torch.float32
    assert torch.isfinite(pixel_values).all()
    assert pixel_values.abs().max() < 3  # normalised 0..1 pixels stay within a few standard deviations


@settings(max_examples=80, deadline=None)
@given(text=st.text(min_size=1, max_size=200).filter(lambda t: t.strip()), max_length=st.integers(2, 40))
def test_any_text_gives_valid_ids(text, max_length):
    encoded = PROCESSOR(text=text, max_length=max_length)
    ids = encoded["input_ids"][0]
    assert ids[0].item() == 101 and 1 <= len(ids) <= max_length
    assert ((0 <= ids) & (ids < PROCESSOR.tokenizer.vocab_size)).all()
    assert encoded["attention_mask"].sum().item() == len(ids)


def test_extreme_sizes_and_texts(caplog):
    for size in [(1, 1), (1, 5000), (4000, 3)]:
        assert PROCESSOR(images=Image.new("RGB", size, "red"))["pixel_values"].shape == (1, 3, 32, 32)
    # a [SEP] written in the text is text: it is tokenised like the original tokenizer does, not dropped
    assert 102 in PROCESSOR(text="is it yes[SEP] or no")["input_ids"][0].tolist()
    assert PROCESSOR(text="naïve résumé 東京 😀")["input_ids"].shape[1] > 3
    with caplog.at_level(logging.WARNING):
        long = PROCESSOR(text="word " * 600)
    assert long["input_ids"].shape[1] == 512 and "truncated" in caplog.text


def test_broken_files_give_clear_errors(tmp_path):
    Image.new("RGB", (64, 64), "blue").save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.txt").write_text("not an image")
    for name in ("truncated.png", "notes.txt"):
        with pytest.raises(ValueError, match="cannot read image"):
            PROCESSOR(images=str(tmp_path / name))
    with pytest.raises(ValueError, match="not found"):
        PROCESSOR(images=str(tmp_path / "missing.jpg"))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PROCESSOR(images=np.full((8, 8, 3), 2.5, dtype=np.float32))
    with pytest.raises(ValueError, match="channels"):
        PROCESSOR(images=np.zeros((8, 8, 7), dtype=np.uint8))
    with pytest.raises(ValueError, match="batch size mismatch"):
        PROCESSOR(images=[Image.new("RGB", (8, 8))] * 2, text=["one question"])
    with pytest.raises(ValueError, match="empty"):
        PROCESSOR(text="   ")


# Adversarial inputs at the other public boundaries (issue 19): each names the argument and the problem instead of
# a torch/numpy traceback or a quietly wrong result.


@pytest.fixture(scope="module")
def tiny_heads():
    from mplug_hf import MPLUGForQuestionAnswering, MPLUGForRetrieval
    from tests.conftest import tiny_config
    from tests.test_pipelines import tiny_text_config

    torch.manual_seed(0)
    config = tiny_config(text_config=tiny_text_config())
    return MPLUGForQuestionAnswering(config).eval(), MPLUGForRetrieval(config).eval()


@pytest.fixture(scope="module")
def questions():
    image = Image.new("RGB", (40, 30), "red")
    return image, PROCESSOR(images=[image, image], text=["what is it?", "which colour is it?"])


def test_text_lengths_that_cut_the_whole_text_are_refused():
    for max_length in (0, -3, 1, 2.5, True):
        with pytest.raises(ValueError, match=r"max_length must be an integer >= 2 \(the \[CLS\] and the text\)"):
            PROCESSOR.encode_text(["what is it?"], max_length=max_length)
    with pytest.raises(ValueError, match="max_length must be an integer >= 2"):
        PROCESSOR.encode_targets(["yes"], max_length=1)
    assert PROCESSOR.encode_text(["what is it?"], max_length=2)["input_ids"].tolist() == [[101, 2054]]


def test_decoding_refuses_ids_it_cannot_write():
    with pytest.raises(ValueError, match=r"ids \[40000\] are outside the tokenizer's vocabulary of 30522"):
        PROCESSOR.decode([101, 40000, 102])  # decoded to "" before
    for bad in (torch.tensor([101.0, 2748.0, 102.0]), [[101, True]], torch.zeros(2, 2, 3, dtype=torch.long)):
        with pytest.raises(ValueError, match="integer token ids"):
            PROCESSOR.batch_decode(bad if not torch.is_tensor(bad) or bad.ndim != 1 else bad[None])


def test_generation_lengths_and_beams_are_checked(tiny_heads, questions):
    vqa, _ = tiny_heads
    _, inputs = questions
    for name, value in (("num_beams", 0), ("num_return_sequences", -1), ("max_new_tokens", 0), ("max_length", 2.5)):
        with pytest.raises(ValueError, match=rf"{name} must be an integer >= 1, got {value!r}"):
            vqa.generate(**inputs, **{name: value})


def test_scoring_arguments_are_checked(tiny_heads, questions):
    vqa, retrieval = tiny_heads
    _, inputs = questions
    candidates = PROCESSOR.encode_targets(["yes", "no", "red"])
    args = (inputs["input_ids"], inputs["pixel_values"], candidates["input_ids"], candidates["attention_mask"])
    for k in (True, 2.5, 0, 4):
        with pytest.raises(ValueError, match=rf"k={k!r} must be an integer between 1 and the number of candidates"):
            rank_answers(vqa, *args, attention_mask=inputs["attention_mask"], k=k)
    with pytest.raises(ValueError, match=r"candidate_ids holds ids outside the vocabulary \[0, 30522\)"):
        rank_answers(vqa, *args[:2], args[2] + 40000, args[3], k=2)
    with pytest.raises(ValueError, match="candidate_ids must be an integer tensor"):
        rank_answers(vqa, *args[:2], args[2].float(), args[3], k=2)
    # an all-padding candidate row was ranked among the answers
    with pytest.raises(ValueError, match=r"candidates \[1\] attend fewer than 2 tokens"):
        rank_answers(vqa, *args[:3], args[3].index_fill(0, torch.tensor([1]), 0), k=2)
    yes, no = PROCESSOR.tokenizer.convert_tokens_to_ids(["yes", "no"])
    with pytest.raises(ValueError, match="yes_token_id and no_token_id are the same id"):
        score_yes_no(vqa, inputs["input_ids"], inputs["pixel_values"], yes, yes, inputs["attention_mask"])  # was 0.5
    with pytest.raises(ValueError, match="yes_token_id must be a token id"):
        score_yes_no(vqa, inputs["input_ids"], inputs["pixel_values"], float(yes), no, inputs["attention_mask"])
    as_tensors = score_yes_no(
        vqa, inputs["input_ids"], inputs["pixel_values"], torch.tensor(yes), np.int64(no), inputs["attention_mask"]
    )
    as_ints = score_yes_no(vqa, inputs["input_ids"], inputs["pixel_values"], yes, no, inputs["attention_mask"])
    torch.testing.assert_close(as_tensors, as_ints)
    choices = torch.tensor([[[101, yes, 102], [101, no, 102]]] * 2)
    with pytest.raises(ValueError, match="choice_ids holds ids outside the vocabulary"):
        choose(vqa, inputs["input_ids"], inputs["pixel_values"], choices + 40000, torch.ones_like(choices))
    for k in (2.5, True):
        with pytest.raises(ValueError, match=rf"k must be an integer >= 1, got {k!r}"):
            retrieve(retrieval, inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"], k=k)


def test_vqa_and_grounding_pipeline_arguments_are_checked(tiny_heads, questions):
    from transformers import pipeline

    from mplug_hf import MPLUGForGrounding, VisualGroundingPipeline
    from tests.conftest import tiny_config
    from tests.test_pipelines import tiny_text_config

    vqa, _ = tiny_heads
    image, _ = questions
    answerer = pipeline("visual-question-answering", model=vqa, processor=PROCESSOR, device="cpu", max_new_tokens=2)
    with pytest.raises(ValueError, match="the image list is empty"):
        answerer([], "what is it?")  # IndexError inside transformers before
    with pytest.raises(ValueError, match="the question list is empty"):
        answerer(image, [])
    with pytest.raises(ValueError, match="top_k must be a positive integer, got True"):
        answerer(image, "what is it?", top_k=True)
    for count in (0, 2.5):  # 0 silently meant "the default", 2.5 failed inside torch.topk
        with pytest.raises(ValueError, match=f"num_rescored_candidates must be a positive integer, got {count}"):
            answerer(image, "what is it?", candidate_answers=["a", "b", "c"], num_rescored_candidates=count)
    with pytest.raises(ValueError, match=r"candidate_answers repeats \['a'\]"):  # each copy got half the probability
        answerer(image, "what is it?", candidate_answers=["a", "b", "a"])
    grounder = VisualGroundingPipeline(
        model=MPLUGForGrounding(tiny_config(text_config=tiny_text_config())).eval(), processor=PROCESSOR, device="cpu"
    )
    for length in (1, 0, 2.5):  # 1 grounded the bare [CLS]: the query was cut away
        with pytest.raises(ValueError, match=r"max_query_length must be an integer >= 2"):
            grounder(image, query="the dog", max_query_length=length)
    with pytest.raises(ValueError, match="the query list is empty"):
        grounder(image, query=[])
    with pytest.raises(ValueError, match="1 images but 2 queries"):
        grounder([image], query=["a", "b"])


def test_collators_refuse_texts_they_would_misread():
    from mplug_hf.data_collators import (
        MPLUGCaptioningDataCollator,
        MPLUGPreTrainingDataCollator,
        MPLUGRetrievalDataCollator,
        MPLUGVQADataCollator,
    )

    image = Image.new("RGB", (40, 30), "red")
    for collator in (MPLUGCaptioningDataCollator(PROCESSOR), MPLUGPreTrainingDataCollator(PROCESSOR)):
        with pytest.raises(
            ValueError, match=r"example 0 of the batch: 'caption' must be a string or a non-empty list"
        ):
            collator([{"image": image, "caption": []}])  # numpy's "high <= 0" before
    long_prompt = MPLUGCaptioningDataCollator(PROCESSOR, prompt="a picture of a very long prompt ", max_length=4)
    with pytest.raises(ValueError, match="takes 8 of max_length=4 tokens, leaving none of the caption"):
        long_prompt([{"image": image, "caption": "a dog"}])  # labels were all -100
    with pytest.raises(ValueError, match="'answer' must be an answer or a list of answers, got dict"):
        MPLUGVQADataCollator(PROCESSOR)([{"image": image, "question": "what?", "answer": {"red": 1.0}}])
    retrieval = MPLUGRetrievalDataCollator(PROCESSOR)
    # "!!!" normalises to "", which the processor read as the captioning prompt: a [CLS]-only text
    with pytest.raises(ValueError, match="'caption' '!!!' has no words once normalised"):
        retrieval([{"image": image, "caption": "a dog"}, {"image": image, "caption": "!!!"}])
    with pytest.raises(ValueError, match=r"example 0 of the batch: 'caption' must be a string, got \['a dog'"):
        retrieval([{"image": image, "caption": ["a dog", "a cat"]}])
    with pytest.raises(ValueError, match="each 'image_id' must be a hashable id"):
        retrieval([{"image": image, "caption": "a dog", "image_id": [1]}])


def test_task_functions_refuse_the_wrong_head_by_name(tiny_heads, questions):
    from mplug_hf.original_generation import generate_answer_original, generate_caption_original

    vqa, retrieval = tiny_heads
    _, inputs = questions
    ids, pixels = inputs["input_ids"], inputs["pixel_values"]
    candidates = torch.tensor([[101, 2417, 102]])
    calls = {
        "retrieve needs a MPLUGForRetrieval, got MPLUGForQuestionAnswering": lambda: retrieve(vqa, pixels, ids),
        "rank_answers needs a MPLUGForQuestionAnswering, got MPLUGForRetrieval": lambda: rank_answers(
            retrieval, ids, pixels, candidates, torch.ones_like(candidates), k=1
        ),
        "score_yes_no needs a MPLUGForQuestionAnswering, got MPLUGForRetrieval": lambda: score_yes_no(
            retrieval, ids, pixels, 2748, 2053
        ),
        "choose needs a MPLUGForQuestionAnswering, got MPLUGForRetrieval": lambda: choose(
            retrieval, ids, pixels, candidates.unsqueeze(0).expand(2, -1, -1), torch.ones(2, 1, 3)
        ),
        "generate_answer_original needs a MPLUGForQuestionAnswering, got MPLUGForRetrieval": lambda: (
            generate_answer_original(retrieval, ids, pixels)
        ),
        "generate_caption_original needs a MPLUGForCaptioning, got MPLUGForRetrieval": lambda: (
            generate_caption_original(retrieval, pixels)
        ),
    }
    for message, call in calls.items():
        with pytest.raises(TypeError, match=message):
            call()
    # the grounding and pre-training heads also decode over the fused memory, but their decoders write boxes and
    # captions: answering with them would be silently wrong
    from mplug_hf import MPLUGForGrounding, MPLUGForPreTraining

    for other_head in (MPLUGForGrounding(vqa.config).eval(), MPLUGForPreTraining(vqa.config).eval()):
        name = type(other_head).__name__
        with pytest.raises(TypeError, match=f"score_yes_no needs a MPLUGForQuestionAnswering, got {name}"):
            score_yes_no(other_head, ids, pixels, 2748, 2053)
        with pytest.raises(TypeError, match=f"rank_answers needs a MPLUGForQuestionAnswering, got {name}"):
            rank_answers(other_head, ids, pixels, candidates, torch.ones_like(candidates), k=1)
