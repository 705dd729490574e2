"""The image processor on transformers' conventions (size dict, resample, do_* flags, call-time overrides, old
`image_size` configs), bit-exact against the original transform, grounding post-processing, and image inputs of any
kind (issue 19): grayscale / 1-channel / RGBA arrays and tensors, CHW with 3 rows, EXIF on opened files, mode F,
bfloat16, decompression bombs, directories and URLs; hypothesis over dtypes, shapes and modes."""

import io
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers import AutoProcessor

from mplug_hf import MPLUGConfig, MPLUGImageProcessor, MPLUGProcessor
from mplug_hf.image_processing_mplug import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
from mplug_hf.processing_mplug import default_tokenizer


S = 32
PROCESSOR = MPLUGImageProcessor(size={"height": S, "width": S})


def rgb_image(width=40, height=30, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def original_transform(image: Image.Image, size=S, resample=Image.Resampling.BICUBIC, mean=CLIP_MEAN, std=CLIP_STD):
    """The original's evaluation transform, written out: PIL resize of the RGB image, ToTensor, Normalize."""
    array = np.asarray(image.convert("RGB").resize((size, size), resample=resample), dtype=np.float32)
    array = array / np.float32(255.0)
    array = (array - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def original_grounding_transform(image: Image.Image, size=S):
    """The original's grounding eval transform: long side to `size` (bilinear), ImageNet normalisation, centred pad."""
    width, height = image.size
    scale = size / max(width, height)
    new_width, new_height = max(1, round(width * scale)), max(1, round(height * scale))
    resized = np.asarray(image.convert("RGB").resize((new_width, new_height), Image.Resampling.BILINEAR), np.float32)
    resized = (resized / np.float32(255.0) - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(
        IMAGENET_STD, np.float32
    )
    left, top = round((size - new_width) / 2.0 - 0.1), round((size - new_height) / 2.0 - 0.1)
    padded = np.zeros((3, size, size), dtype=np.float32)
    padded[:, top : top + new_height, left : left + new_width] = resized.transpose(2, 0, 1)
    return torch.from_numpy(padded)


# ---------------------------------------------------------------------------------------------------------------
# transformers' conventions
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(40, 30), (17, 93), (32, 32), (1, 200)])
def test_default_and_grounding_transforms_are_bit_exact_to_the_original(width, height):
    image = rgb_image(width, height)
    assert torch.equal(PROCESSOR(image)["pixel_values"][0], original_transform(image))
    grounding = PROCESSOR(image, mode="grounding")
    assert torch.equal(grounding["pixel_values"][0], original_grounding_transform(image))
    assert grounding["image_sizes"].tolist() == [[height, width]]


def test_size_dict_and_old_image_size_are_the_same_processor():
    by_size, by_image_size = MPLUGImageProcessor(size={"height": 48, "width": 48}), MPLUGImageProcessor(image_size=48)
    assert by_size.to_dict() == by_image_size.to_dict() and by_image_size.image_size == 48
    assert MPLUGImageProcessor(size=24).size.height == 24
    rectangular = MPLUGImageProcessor(size={"height": 16, "width": 24})
    assert rectangular(rgb_image())["pixel_values"].shape == (1, 3, 16, 24)
    with pytest.raises(ValueError, match="disagree"):
        MPLUGImageProcessor(image_size=32, size={"height": 48, "width": 48})


def test_call_time_overrides_are_honoured():
    image = rgb_image()
    assert PROCESSOR(image, size={"height": 20, "width": 28})["pixel_values"].shape == (1, 3, 20, 28)
    nearest = PROCESSOR(image, resample=Image.Resampling.NEAREST)["pixel_values"][0]
    assert torch.equal(nearest, original_transform(image, resample=Image.Resampling.NEAREST))
    assert PROCESSOR(image, do_resize=False)["pixel_values"].shape == (1, 3, 30, 40)
    raw = PROCESSOR(image, do_rescale=False, do_normalize=False)["pixel_values"][0]
    assert torch.equal(
        raw, torch.from_numpy(np.asarray(image.resize((S, S), Image.Resampling.BICUBIC))).permute(2, 0, 1)
    )
    rescaled = PROCESSOR(image, do_normalize=False, rescale_factor=1 / 127.5)["pixel_values"][0]
    torch.testing.assert_close(rescaled, raw.float() / 127.5)
    mean, std = [0.5, 0.25, 0.125], [0.5, 2.0, 4.0]
    custom = PROCESSOR(image, image_mean=mean, image_std=std)["pixel_values"][0]
    assert torch.equal(custom, original_transform(image, mean=mean, std=std))
    # do_convert_rgb=False keeps the channels, as transformers' PIL backend does
    rgba = np.random.default_rng(0).integers(0, 256, (30, 40, 4), dtype=np.uint8)
    kept = PROCESSOR(rgba, do_convert_rgb=False, image_mean=[0.0] * 4, image_std=[1.0] * 4)["pixel_values"]
    assert kept.shape == (1, 4, S, S)
    # the instance keeps its settings: overrides apply to one call only
    assert PROCESSOR(image)["pixel_values"].shape == (1, 3, S, S) and PROCESSOR.do_normalize


def test_bad_arguments_raise():
    with pytest.raises(TypeError, match="bogus"):
        PROCESSOR(rgb_image(), bogus=1)
    with pytest.raises(ValueError, match="mode"):
        PROCESSOR(rgb_image(), mode="segmentation")
    with pytest.raises(ValueError, match="size"):
        PROCESSOR(rgb_image(), size={"depth": 3})
    with pytest.raises(ValueError, match="different sizes"):
        PROCESSOR([rgb_image(40, 30), rgb_image(20, 50)], do_resize=False)
    with pytest.raises(ValueError, match="fit"):
        PROCESSOR(rgb_image(40, 30), mode="grounding", do_resize=False)


def test_processor_images_kwargs_reach_the_image_processor():
    processor = MPLUGProcessor(MPLUGImageProcessor(image_size=S))
    image = rgb_image()
    assert processor(images=image, images_kwargs={"size": {"height": 16, "width": 16}})["pixel_values"].shape[-1] == 16
    assert processor(images=image, size={"height": 16, "width": 16})["pixel_values"].shape[-1] == 16
    mean, std = [0.5, 0.25, 0.125], [0.5, 2.0, 4.0]
    custom = processor(images=image, text="a cat", images_kwargs={"image_mean": mean, "image_std": std})
    assert torch.equal(custom["pixel_values"][0], original_transform(image, mean=mean, std=std))
    grounding = processor(images=image, text="a cat", images_kwargs={"mode": "grounding"})
    assert grounding["image_sizes"].tolist() == [[30, 40]]
    with pytest.raises(ValueError, match="passed two times"):
        processor(images=image, size=16, images_kwargs={"size": 16})
    with pytest.raises(TypeError, match="bogus"):
        processor(images=image, images_kwargs={"bogus": 1})


def test_old_image_size_configs_still_load(tmp_path):
    old_image_processor = {
        "image_size": 32,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "grounding_image_mean": list(IMAGENET_MEAN),
        "grounding_image_std": list(IMAGENET_STD),
        "image_processor_type": "MPLUGImageProcessor",
    }
    config = {
        "image_processor": old_image_processor,
        "processor_class": "MPLUGProcessor",
        "text_convention": "original",
    }
    (tmp_path / "processor_config.json").write_text(json.dumps(config))
    default_tokenizer().save_pretrained(tmp_path)
    MPLUGConfig().save_pretrained(tmp_path)
    for loaded in (AutoProcessor.from_pretrained(tmp_path), MPLUGProcessor.from_pretrained(tmp_path)):
        assert isinstance(loaded, MPLUGProcessor)
        assert dict(loaded.image_processor.size) == {"height": 32, "width": 32}
        assert torch.equal(loaded(images=rgb_image())["pixel_values"][0], original_transform(rgb_image()))
    assert MPLUGImageProcessor.from_dict(old_image_processor).image_size == 32
    # and a new save writes the size dict, which loads back to the same processor
    loaded.save_pretrained(tmp_path / "new")
    saved = json.loads((tmp_path / "new" / "processor_config.json").read_text())["image_processor"]
    assert saved["size"] == {"height": 32, "width": 32} and "image_size" not in saved
    assert (
        MPLUGProcessor.from_pretrained(tmp_path / "new").image_processor.to_dict() == loaded.image_processor.to_dict()
    )


# ---------------------------------------------------------------------------------------------------------------
# grounding boxes
# ---------------------------------------------------------------------------------------------------------------


def test_post_process_grounding_maps_padded_square_boxes_to_input_pixels():
    sizes = torch.tensor([[40, 80], [100, 50], [32, 32]])  # (height, width)
    pixel_boxes = torch.tensor([[10.0, 5.0, 50.0, 35.0], [0.0, 0.0, 50.0, 100.0], [3.0, 4.0, 30.0, 31.0]])
    normalised = torch.cat(
        [PROCESSOR.grounding_box_transform(box, tuple(size.tolist())) for box, size in zip(pixel_boxes, sizes)]
    )
    torch.testing.assert_close(PROCESSOR.post_process_grounding(normalised, sizes), pixel_boxes)
    torch.testing.assert_close(PROCESSOR.post_process_grounding(normalised, sizes.tolist()), pixel_boxes)
    # the whole padded square clips to the whole image
    whole = PROCESSOR.post_process_grounding(torch.tensor([[0.5, 0.5, 1.0, 1.0]] * 3), sizes)
    assert whole.tolist() == [[0, 0, 80, 40], [0, 0, 50, 100], [0, 0, 32, 32]]
    # without sizes: corners on the normalised square
    corners = PROCESSOR.post_process_grounding(torch.tensor([[0.5, 0.5, 0.2, 0.4]]))
    torch.testing.assert_close(corners, torch.tensor([[0.4, 0.3, 0.6, 0.7]]))
    processor = MPLUGProcessor(PROCESSOR)
    assert torch.equal(
        processor.post_process_grounding(normalised, sizes), PROCESSOR.post_process_grounding(normalised, sizes)
    )
    with pytest.raises(ValueError, match="3 boxes but 2 image sizes"):
        PROCESSOR.post_process_grounding(normalised, sizes[:2])
    with pytest.raises(ValueError, match=r"shape \(batch, 4\)"):
        PROCESSOR.post_process_grounding(torch.zeros(2, 3), sizes[:2])
    with pytest.raises(ValueError, match="positive"):
        PROCESSOR.post_process_grounding(normalised[:1], [[0, 10]])


def test_post_process_grounding_inverts_the_grounding_transform_of_real_images():
    image = rgb_image(80, 40)
    encoded = PROCESSOR(image, mode="grounding")
    box = torch.tensor([[10.0, 5.0, 50.0, 35.0]])
    normalised = PROCESSOR.grounding_box_transform(box, (40, 80))
    torch.testing.assert_close(PROCESSOR.post_process_grounding(normalised, encoded["image_sizes"]), box)


# ---------------------------------------------------------------------------------------------------------------
# image inputs of every kind (issue 19)
# ---------------------------------------------------------------------------------------------------------------


def test_grayscale_one_channel_and_rgba_arrays_and_tensors_match_their_pil_images():
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    expected_gray = PROCESSOR(Image.fromarray(gray))["pixel_values"]
    for variant in (gray, gray[..., None], gray[None], torch.from_numpy(gray), torch.from_numpy(gray)[None]):
        assert torch.equal(PROCESSOR(variant)["pixel_values"], expected_gray)
    rgba = rng.integers(0, 256, (30, 40, 4), dtype=np.uint8)
    expected_rgba = PROCESSOR(Image.fromarray(rgba, mode="RGBA"))["pixel_values"]
    for variant in (rgba, rgba.transpose(2, 0, 1), torch.from_numpy(rgba).permute(2, 0, 1)):
        assert torch.equal(PROCESSOR(variant)["pixel_values"], expected_rgba)
    # transparency is composited on white (a transparent pixel is white, not black)
    transparent = np.zeros((8, 8, 4), dtype=np.uint8)
    white = PROCESSOR(Image.new("RGB", (8, 8), "white"))["pixel_values"]
    assert torch.equal(PROCESSOR(transparent)["pixel_values"], white)


def test_chw_tensor_with_three_rows_is_channels_first():
    rng = np.random.default_rng(2)
    hwc = rng.integers(0, 256, (3, 50, 3), dtype=np.uint8)  # 3 rows, 50 columns, RGB
    chw = torch.from_numpy(hwc).permute(2, 0, 1)  # (3, 3, 50)
    expected = PROCESSOR(Image.fromarray(hwc))["pixel_values"]
    assert torch.equal(PROCESSOR(chw)["pixel_values"], expected)
    assert torch.equal(PROCESSOR(chw.numpy())["pixel_values"], expected)
    # an ambiguous (3, H, 3) array is channels first as transformers infers it; input_data_format says otherwise
    assert torch.equal(PROCESSOR(hwc, input_data_format="channels_last")["pixel_values"], expected)
    channels_first = PROCESSOR(hwc)["pixel_values"]
    assert torch.equal(channels_first, PROCESSOR(Image.fromarray(hwc.transpose(1, 2, 0).copy()))["pixel_values"])


def test_opened_jpeg_is_exif_rotated_like_its_path(tmp_path):
    image = rgb_image(60, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    by_path = PROCESSOR(str(path), mode="grounding")
    with Image.open(path) as opened:
        by_opened = PROCESSOR(opened, mode="grounding")
        unrotated = PROCESSOR(Image.fromarray(np.asarray(opened)), mode="grounding")  # pixels without the EXIF
    assert by_path["image_sizes"].tolist() == [[60, 30]] == by_opened["image_sizes"].tolist()
    assert torch.equal(by_path["pixel_values"], by_opened["pixel_values"])
    assert unrotated["image_sizes"].tolist() == [[30, 60]]


def test_mode_f_images_in_zero_one_are_not_black():
    values = np.random.default_rng(3).random((30, 40)).astype(np.float32)
    as_float = PROCESSOR(Image.fromarray(values, mode="F"))["pixel_values"]
    as_uint8 = PROCESSOR(Image.fromarray(np.round(values * 255).astype(np.uint8)))["pixel_values"]
    assert torch.equal(as_float, as_uint8)
    black = PROCESSOR(Image.new("L", (40, 30), 0))["pixel_values"]
    assert not torch.equal(as_float, black)
    # 0..255 float images keep their scale; values outside every range are refused
    scaled = PROCESSOR(Image.fromarray(values * 255, mode="F"))["pixel_values"]
    torch.testing.assert_close(scaled, as_uint8, atol=0.1, rtol=0)
    with pytest.raises(ValueError, match="mode F image holds values"):
        PROCESSOR(Image.fromarray(values - 0.5, mode="F"))


def test_bfloat16_and_float16_tensors():
    values = torch.rand(3, 30, 40)
    for dtype in (torch.bfloat16, torch.float16):
        low_precision = values.to(dtype)
        out = PROCESSOR(low_precision)["pixel_values"]
        assert out.shape == (1, 3, S, S) and out.dtype == torch.float32
        assert torch.equal(out, PROCESSOR(low_precision.float())["pixel_values"])


def test_decompression_bomb_directory_and_url_messages(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    rgb_image(64, 64).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64*64 > 2 * 100: PIL's bomb error
    with pytest.raises(ValueError, match=r"huge\.png is too large to decode safely.*MAX_IMAGE_PIXELS"):
        PROCESSOR(str(path))
    monkeypatch.undo()
    with pytest.raises(ValueError, match="is a directory, not an image file"):
        PROCESSOR(str(tmp_path))
    with pytest.raises(ValueError, match="only http"):
        PROCESSOR("ftp://example.com/cat.png")
    with pytest.raises(ValueError, match="image file not found"):
        PROCESSOR(str(tmp_path / "missing.png"))

    requested = []

    def urlopen(url, timeout=None):
        requested.append((url, timeout))
        return io.BytesIO(path.read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    assert torch.equal(PROCESSOR("https://example.com/cat.png")["pixel_values"], PROCESSOR(str(path))["pixel_values"])
    assert requested == [("https://example.com/cat.png", 10.0)]

    def refuse(url, timeout=None):
        raise urllib.error.URLError("connection refused")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    with pytest.raises(ValueError, match=r"cannot download the image URL https://example\.com/cat\.png"):
        PROCESSOR("https://example.com/cat.png")


def test_in_memory_png_and_every_pil_mode():
    buffer = io.BytesIO()
    rgb_image().save(buffer, format="PNG")
    buffer.seek(0)
    with Image.open(buffer) as opened:
        assert torch.equal(PROCESSOR(opened)["pixel_values"], PROCESSOR(rgb_image())["pixel_values"])
    for mode in (
        "1",
        "L",
        "LA",
        "P",
        "PA",
        "RGB",
        "RGBA",
        "RGBa",
        "La",
        "CMYK",
        "YCbCr",
        "LAB",
        "HSV",
        "I",
        "I;16",
        "F",
    ):
        image = rgb_image().convert("RGBA" if mode in ("RGBa", "PA", "La") else "RGB")
        image = Image.fromarray(np.full((30, 40), 1000, np.uint16)) if mode == "I;16" else image.convert(mode)
        out = PROCESSOR(image)["pixel_values"]
        assert out.shape == (1, 3, S, S) and torch.isfinite(out).all(), mode


# ---------------------------------------------------------------------------------------------------------------
# hypothesis: any dtype / shape / mode gives a correct output or a ValueError naming the problem
# ---------------------------------------------------------------------------------------------------------------

PROBLEM_WORDS = ("channel", "dtype", "empty", "[0, 1]", "0..255", "NaN", "2-D", "mask", "values", "images")
NUMPY_DTYPES = [
    "uint8",
    "uint16",
    "int8",
    "int16",
    "int32",
    "int64",
    "float16",
    "float32",
    "float64",
    "bool",
    "complex64",
]
TORCH_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16, torch.bfloat16,
                torch.float32, torch.float64, torch.bool]  # fmt: skip


def check_output_or_named_error(image, expected_batch=1, **kwargs):
    try:
        encoded = PROCESSOR(image, **kwargs)
    except ValueError as error:
        assert any(word in str(error) for word in PROBLEM_WORDS), f"message does not name the problem: {error}"
        return None
    pixel_values = encoded["pixel_values"]
    assert pixel_values.shape == (expected_batch, 3, S, S) and pixel_values.dtype == torch.float32
    assert torch.isfinite(pixel_values).all()
    return pixel_values


@st.composite
def arrays(draw):
    ndim = draw(st.integers(0, 4))
    shape = tuple(draw(st.lists(st.sampled_from([0, 1, 2, 3, 4, 5, 7, 16, 33]), min_size=ndim, max_size=ndim)))
    dtype = np.dtype(draw(st.sampled_from(NUMPY_DTYPES)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    kind = draw(st.sampled_from(["unit", "bytes", "wide", "special"]))
    if kind == "unit":
        values = rng.random(shape)
    elif kind == "bytes":
        values = rng.integers(0, 256, shape)
    elif kind == "wide":
        values = rng.integers(-(2**20), 2**20, shape)
    else:
        values = (
            rng.choice(np.array([np.nan, np.inf, -1.0, 0.0, 1.0, 255.0]), shape) if np.prod(shape) else np.zeros(shape)
        )
    with np.errstate(invalid="ignore", over="ignore"):
        array = values.astype(dtype) if dtype.kind != "b" else values > 0.5
    return array


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(array=arrays(), as_tensor=st.booleans(), grounding=st.booleans())
def test_any_array_gives_model_pixels_or_a_named_error(array, as_tensor, grounding):
    image = array
    if as_tensor and array.dtype.kind != "c" and array.dtype != np.uint16:
        image = torch.from_numpy(np.ascontiguousarray(array))
    expected_batch = array.shape[0] if array.ndim == 4 else 1
    check_output_or_named_error(image, expected_batch=expected_batch, mode="grounding" if grounding else "default")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.tuples(st.sampled_from([1, 2, 3, 4, 9, 40]), st.sampled_from([1, 2, 3, 4, 9, 40])),
    channels_first=st.booleans(),
    channels=st.sampled_from([None, 1, 3, 4]),
    dtype=st.sampled_from(TORCH_DTYPES),
    seed=st.integers(0, 2**16),
)
def test_any_tensor_layout_and_dtype(shape, channels_first, channels, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    full = shape if channels is None else ((channels, *shape) if channels_first else (*shape, channels))
    if dtype.is_floating_point:
        tensor = torch.rand(full, generator=generator).to(dtype)
    elif dtype == torch.bool:
        tensor = torch.rand(full, generator=generator) > 0.5
    else:
        tensor = torch.randint(0, 128, full, generator=generator).to(dtype)
    layout = None if channels is None else ("channels_first" if channels_first else "channels_last")
    pixel_values = check_output_or_named_error(tensor, input_data_format=layout)
    if dtype != torch.bool:
        assert pixel_values is not None, "a valid 1/3/4-channel tensor with its layout given must be accepted"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    low=st.floats(-10, 70000, allow_nan=False),
    span=st.floats(0, 70000, allow_nan=False),
    special=st.sampled_from([None, np.nan, np.inf]),
    mode=st.sampled_from(["F", "I"]),
    seed=st.integers(0, 2**16),
)
def test_high_depth_pil_images_of_any_range(low, span, special, mode, seed):
    values = low + np.random.default_rng(seed).random((12, 9)) * span
    if special is not None and mode == "F":
        values[0, 0] = special
    image = Image.fromarray(values.astype(np.float32 if mode == "F" else np.int32), mode=mode)
    pixel_values = check_output_or_named_error(image)
    in_range = special is None and values.min() >= 0 and values.max() <= 65535
    if in_range and (mode == "F" or np.floor(values).min() >= 0):
        assert pixel_values is not None
