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
