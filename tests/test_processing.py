import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers import AutoProcessor

from mplug_hf import MPLUGConfig, MPLUGImageProcessor, MPLUGProcessor


@pytest.fixture
def processor():
    return MPLUGProcessor(MPLUGImageProcessor(image_size=32))


def rgb_image(width=40, height=30):
    array = (np.arange(width * height * 3).reshape(height, width, 3) % 251).astype(np.uint8)
    return Image.fromarray(array, mode="RGB")


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "CMYK", "P", "LA", "I;16", "1"])
def test_every_pil_mode_gives_rgb_pixels(processor, mode):
    image = rgb_image().convert(mode) if mode != "I;16" else Image.fromarray(np.full((30, 40), 30000, np.uint16))
    pixel_values = processor(images=image)["pixel_values"]
    assert pixel_values.shape == (1, 3, 32, 32) and pixel_values.dtype == torch.float32
    assert torch.isfinite(pixel_values).all()


def test_input_types_agree(processor, tmp_path):
    image = rgb_image()
    path = tmp_path / "image.png"
    image.save(path)
    array = np.asarray(image)
    reference = processor(images=image)["pixel_values"]
    for variant in (str(path), path, array, array.transpose(2, 0, 1), torch.from_numpy(array), array / 255.0):
        torch.testing.assert_close(processor(images=variant)["pixel_values"], reference, atol=1e-6, rtol=0)


def test_grayscale_is_replicated_to_three_channels(processor):
    gray = processor(images=rgb_image().convert("L"))["pixel_values"][0]
    unnormalised = gray * torch.tensor(processor.image_processor.image_std).view(3, 1, 1) + torch.tensor(
        processor.image_processor.image_mean
    ).view(3, 1, 1)
    torch.testing.assert_close(unnormalised[0], unnormalised[1], atol=1e-5, rtol=0)


def test_text_conventions(processor):
    original = processor(text=["a red cat", "dog"])
    assert original["input_ids"].tolist() == [[101, 1037, 2417, 4937], [101, 3899, 0, 0]]
    assert original["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    bert = MPLUGProcessor(MPLUGImageProcessor(image_size=32), text_convention="bert")
    assert bert(text="dog")["input_ids"].tolist() == [[101, 3899, 102]]
    targets = processor.encode_targets(["yes", "dark blue"])
    assert targets["labels"].tolist() == [[101, 2748, 102, -100], [101, 2601, 2630, 102]]
    truncated = processor.encode_targets(["one two three four five"], max_length=4)
    assert truncated["input_ids"].tolist() == [[101, 2028, 2048, 2093]]  # [SEP] cut as in the original


def test_videos_and_grounding_mode(processor):
    frames = [[rgb_image(), rgb_image()], [rgb_image(20, 50), rgb_image(20, 50)]]
    assert processor(images=frames)["pixel_values"].shape == (2, 2, 3, 32, 32)
    out = processor(images=rgb_image(80, 40), text="the cat", mode="grounding")
    assert out["pixel_values"].shape == (1, 3, 32, 32) and out["image_sizes"].tolist() == [[40, 80]]
    # 80x40 → 32x16, centred as the original: rows 8..23 hold the image, the rest is zero padding
    assert (out["pixel_values"][0, :, :8] == 0).all() and (out["pixel_values"][0, :, 24:] == 0).all()
    assert (out["pixel_values"][0, :, 8:24] != 0).any(dim=0).all()
    image_processor = processor.image_processor
    boxes = torch.tensor([[10.0, 5.0, 50.0, 35.0]])
    normalised = image_processor.grounding_box_transform(boxes, (40, 80))
    # the whole image maps to the centred band: cy = 0.5, height 16/32
    whole = image_processor.grounding_box_transform(torch.tensor([[0.0, 0.0, 80.0, 40.0]]), (40, 80))
    torch.testing.assert_close(whole, torch.tensor([[0.5, 0.5, 1.0, 0.5]]))
    torch.testing.assert_close(image_processor.grounding_box_inverse(normalised, (40, 80)), boxes)
    with pytest.raises(ValueError, match="not valid xyxy boxes"):
        image_processor.grounding_box_transform(torch.tensor([[10.0, 5.0, 90.0, 35.0]]), (40, 80))


def test_bad_input_raises_clear_errors(processor, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        processor(images=rgb_image(), text="   ")
    with pytest.raises(ValueError, match="give images, text or both"):
        processor(images=None, text=None)
    with pytest.raises(ValueError, match="batch size mismatch"):
        processor(images=[rgb_image(), rgb_image()], text=["one question"])
    with pytest.raises(ValueError, match="channels"):
        processor(images=np.zeros((10, 10, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        processor(images=np.full((10, 10, 3), 3.0))
    with pytest.raises(ValueError, match="not found"):
        processor(images=str(tmp_path / "missing.png"))
    (tmp_path / "note.txt").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read image"):
        processor(images=str(tmp_path / "note.txt"))
    with pytest.raises(ValueError, match="strings"):
        processor(text=[3])


def test_save_and_load_through_auto_processor(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    MPLUGConfig().save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, MPLUGProcessor) and loaded.image_processor.image_size == 32
    image = rgb_image()
    assert torch.equal(loaded(images=image, text="hi")["input_ids"], processor(images=image, text="hi")["input_ids"])
    assert torch.equal(loaded(images=image)["pixel_values"], processor(images=image)["pixel_values"])


def test_text_kwargs_and_flat_keywords_use_transformers_merging(processor):
    flat = processor(text=["a red cat", "dog"], max_length=6, padding="max_length")
    nested = processor(text=["a red cat", "dog"], text_kwargs={"max_length": 6, "padding": "max_length"})
    assert (
        flat["input_ids"].tolist()
        == nested["input_ids"].tolist()
        == [[101, 1037, 2417, 4937, 0, 0], [101, 3899, 0, 0, 0, 0]]
    )
    # truncation keeps [CLS] + the first max_length - 1 pieces, as the original
    assert processor(text="one two three four five", max_length=3)["input_ids"].tolist() == [[101, 2028, 2048]]
    assert processor(text="one two three", truncation=False, max_length=2, padding=False)["input_ids"].shape[1] == 4
    left = processor(text=["a red cat", "dog"], padding_side="left")
    assert left["input_ids"].tolist() == [[101, 1037, 2417, 4937], [0, 0, 101, 3899]]
    assert processor(text="dog", pad_to_multiple_of=4)["input_ids"].shape == (1, 4)
    assert "attention_mask" not in processor(text="dog", return_attention_mask=False)
    assert processor(text="dog", return_token_type_ids=True)["token_type_ids"].tolist() == [[0, 0]]
    as_lists = processor(text="dog", return_tensors=None)
    assert as_lists["input_ids"] == [[101, 3899]]
    as_numpy = processor(images=rgb_image(), text="dog", return_tensors="np")
    assert isinstance(as_numpy["pixel_values"], np.ndarray) and isinstance(as_numpy["input_ids"], np.ndarray)


def test_conflicting_and_unsupported_kwargs_raise(processor):
    with pytest.raises(ValueError, match="max_length was passed two times"):
        processor(text="dog", max_length=4, text_kwargs={"max_length": 5})
    with pytest.raises(ValueError, match="mode was passed two times"):
        processor(images=rgb_image(), mode="grounding", images_kwargs={"mode": "grounding"})
    with pytest.raises(ValueError, match="encode_targets"):
        processor(images=rgb_image(), text="what is it?", text_target="a cat")
    with pytest.raises(ValueError, match="text_pair is not supported"):
        processor(text="dog", text_pair="cat")
    with pytest.raises(TypeError, match="bogus"):
        processor(text="dog", text_kwargs={"bogus": True})
    with pytest.raises(ValueError, match="mode"):
        processor(images=rgb_image(), mode="segmentation")


def test_image_kwargs_through_the_processor(processor):
    image = rgb_image()
    small = processor(images=image, text="dog", size={"height": 16, "width": 16})
    assert small["pixel_values"].shape == (1, 3, 16, 16) and small["input_ids"].tolist() == [[101, 3899]]
    nested = processor(images=image, images_kwargs={"size": {"height": 16, "width": 16}})
    assert torch.equal(nested["pixel_values"], small["pixel_values"])
    unnormalised = processor(images=image, do_normalize=False)["pixel_values"]
    assert 0 <= unnormalised.min() and unnormalised.max() <= 1
    grounding = processor(images=image, text="the cat", mode="grounding")
    boxes = processor.post_process_grounding(torch.tensor([[0.5, 0.5, 1.0, 1.0]]), grounding["image_sizes"])
    assert boxes.tolist() == [[0, 0, 40, 30]]


def test_captioning_prompt_and_batch_checks(processor):
    out = processor(images=[rgb_image(), rgb_image()], text="")
    assert out["input_ids"].tolist() == [[101], [101]] and out["pixel_values"].shape[0] == 2
    assert processor(text=["", ""])["input_ids"].tolist() == [[101], [101]]
    with pytest.raises(ValueError, match="batch size mismatch: 2 images but 1 texts"):
        processor(images=[rgb_image(), rgb_image()], text="one question")


# transformers 4's slow BERT decoding, which the original mPLUG evaluation and ModelScope's mPLUG pipeline call
def _bert4_clean_up(text: str) -> str:
    for dirty, clean in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                         (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):  # fmt: skip
        text = text.replace(dirty, clean)
    return text


def original_answer(tokenizer, ids: list[int]) -> str:
    """The original's `tokenizer.decode(ids).replace("[SEP]", "").replace("[CLS]", "").replace("[PAD]", "").strip()`."""
    text = _bert4_clean_up(" ".join(tokenizer.convert_ids_to_tokens(ids)).replace(" ##", "").strip())
    return text.replace("[SEP]", "").replace("[CLS]", "").replace("[PAD]", "").strip()


def modelscope_answer(tokenizer, ids: list[int]) -> str:
    """ModelScope's `tokenizer.decode(ids, skip_special_tokens=True)`."""
    tokens = tokenizer.convert_ids_to_tokens([i for i in ids if i not in tokenizer.all_special_ids])
    return _bert4_clean_up(" ".join(tokens).replace(" ##", "").strip())


def test_decoded_answers_are_the_original_and_modelscope_strings(processor):
    tokenizer = processor.tokenizer

    def answer_ids(text: str, pieces=()) -> list[int]:
        ids = tokenizer.convert_tokens_to_ids(list(pieces)) + tokenizer(text, add_special_tokens=False)["input_ids"]
        return [tokenizer.cls_token_id, *ids, tokenizer.sep_token_id, tokenizer.pad_token_id]

    for text in ("no, it isn't", "what's this? a man's hat, isn't it!", "they're here. i'm sure", "yes"):
        ids = answer_ids(text)
        assert (
            processor.decode(ids, skip_special_tokens=True)
            == original_answer(tokenizer, ids)
            == modelscope_answer(tokenizer, ids)
        )
    assert processor.decode(answer_ids("no, it isn't"), skip_special_tokens=True) == "no, it isn't"
    # a leading continuation piece joins the [CLS] of the original's decoding and goes with it; ModelScope skips
    # [CLS] first and would keep "##ing" (the one string where the two differ: mplug_hf writes the original's)
    ids = answer_ids("dog", pieces=["##ing"])
    assert processor.decode(ids, skip_special_tokens=True) == original_answer(tokenizer, ids) == "ing dog"
    assert processor.batch_decode(torch.tensor([ids, [*answer_ids("yes"), 0]]), skip_special_tokens=True) == [
        "ing dog",
        "yes",
    ]
    assert (
        processor.decode(torch.tensor([*answer_ids("yes"), -100]), skip_special_tokens=True) == "yes"
    )  # label padding
    with pytest.raises(ValueError, match="batch of id sequences.*decode\\(\\)"):
        processor.batch_decode(torch.tensor(answer_ids("yes")))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(999, 30521), min_size=1, max_size=12))
def test_any_answer_decodes_as_the_original(pieces):
    """Every word-piece sequence (ids past the [unused] block) decodes to the original's string."""
    tokenizer = MPLUGProcessor().tokenizer
    ids = [tokenizer.cls_token_id, *pieces, tokenizer.sep_token_id, tokenizer.pad_token_id]
    processor = MPLUGProcessor(tokenizer=tokenizer)
    assert processor.decode(ids, skip_special_tokens=True) == original_answer(tokenizer, ids)
