# Copyright 2026 The mplug_hf Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Image processor for mPLUG on transformers' PIL backend (no torchvision needed)."""

import io
import os
import re
import urllib.request
from typing import Literal

import numpy as np
import torch
from huggingface_hub.errors import StrictDataclassError
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_backends import PilBackend
from transformers.image_transforms import center_to_corners_format, pad
from transformers.image_utils import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ChannelDimension,
    PILImageResampling,
    SizeDict,
    infer_channel_dimension_format,
)
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import auto_docstring, logging


logger = logging.get_logger(__name__)

CLIP_MEAN = tuple(OPENAI_CLIP_MEAN)
CLIP_STD = tuple(OPENAI_CLIP_STD)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
URL_DOWNLOAD_TIMEOUT = 10.0
_URL_PATTERN = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _as_uint8_image(array: np.ndarray) -> np.ndarray:
    """An image array of any numeric dtype → uint8 0..255: floats must hold 0..1, uint16 is scaled by its range,
    other integers must hold 0..255."""
    dtype = array.dtype
    if dtype == np.bool_:
        raise ValueError("a boolean array is a mask, not an image: pass uint8 0..255 or float 0..1 pixels")
    if np.issubdtype(dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError("a float image array contains NaN or infinity")
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 1:
            raise ValueError(
                f"a float image array must hold values in [0, 1], got [{low:.3g}, {high:.3g}]; "
                "pass uint8 0..255 or rescale it"
            )
        if dtype == np.float16:
            array = array.astype(np.float32)
        return np.round(array * 255).astype(np.uint8)
    if dtype == np.uint16:
        return np.round(array / 65535.0 * 255.0).astype(np.uint8)
    if not np.issubdtype(dtype, np.integer):
        raise ValueError(f"unsupported image array dtype {dtype}: pass uint8 0..255 or float 0..1 pixels")
    if dtype != np.uint8:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ValueError(f"an integer ({dtype}) image array must hold values in 0..255, got {low}..{high}")
    return array.astype(np.uint8)


def _array_to_pil(array, input_data_format: str | ChannelDimension | None = None) -> Image.Image:
    """
    HW / HWC / CHW array or tensor (uint8 0..255, uint16, or float 0..1, bfloat16 and float16 included) → PIL image
    of mode L, RGB or RGBA. The channel axis is inferred as transformers does (`infer_channel_dimension_format` over
    1, 3 or 4 channels: channels first when both ends could be channels) unless `input_data_format` says it.
    """
    if torch.is_tensor(array):
        tensor = array.detach().cpu()
        if tensor.is_complex():
            raise ValueError(f"unsupported image tensor dtype {tensor.dtype}")
        if tensor.is_floating_point() and tensor.dtype != torch.float64:
            tensor = tensor.to(torch.float32)  # numpy has no bfloat16
        array = tensor.numpy()
    array = np.asarray(array)
    if array.ndim not in (2, 3):
        raise ValueError(f"an image array must be 2-D (HW) or 3-D (HWC or CHW), got shape {tuple(array.shape)}")
    if 0 in array.shape:
        raise ValueError(f"an image array must not be empty, got shape {tuple(array.shape)}")
    if array.ndim == 3:
        if input_data_format is None:
            try:
                input_data_format = infer_channel_dimension_format(array, num_channels=(1, 3, 4))
            except ValueError:
                raise ValueError(
                    f"an image array needs 1, 3 or 4 channels on its first or last axis (got shape "
                    f"{tuple(array.shape)})"
                ) from None
        input_data_format = ChannelDimension(input_data_format)
        if input_data_format == ChannelDimension.FIRST:
            array = np.moveaxis(array, 0, -1)
        if array.shape[-1] not in (1, 3, 4):
            raise ValueError(
                f"an image array needs 1, 3 or 4 channels, got {array.shape[-1]} ({input_data_format.value}, "
                f"shape {tuple(array.shape)})"
            )
        if array.shape[-1] == 1:
            array = array[..., 0]
    return Image.fromarray(np.ascontiguousarray(_as_uint8_image(array)))


def _high_depth_to_8_bit(image: Image.Image) -> Image.Image:
    """PIL I / I;16 / F (32-bit float) grayscale → mode L by the value range the image uses: 16-bit modes by 65535,
    float images holding 0..1 by 1, 0..255 as it is, larger values as 16-bit; anything else is refused."""
    array = np.asarray(image, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"a mode {image.mode} image contains NaN or infinity")
    low, high = float(array.min()), float(array.max())
    if image.mode.startswith("I;16") or (low >= 0 and 255 < high <= 65535):
        scale = 65535.0
    elif image.mode == "F" and low >= 0 and high <= 1:
        scale = 1.0
    elif low >= 0 and high <= 255:
        scale = 255.0
    else:
        raise ValueError(
            f"a mode {image.mode} image holds values in [{low:.6g}, {high:.6g}]; expected 0..1 (float), 0..255 or "
            "0..65535"
        )
    return Image.fromarray(np.clip(array / scale * 255.0, 0, 255).round().astype(np.uint8), mode="L")


def _pil_to_rgb(image: Image.Image) -> Image.Image:
    """A PIL image of any mode → RGB: high-depth grayscale scaled to 8 bits by its range, transparency composited on
    white (as transformers' `convert_to_rgb`), everything else through PIL's conversion."""
    if image.mode in _HIGH_DEPTH_MODES:
        image = _high_depth_to_8_bit(image)
    if image.mode == "La":  # premultiplied alpha: PIL converts it only to LA
        image = image.convert("LA")
    if "A" in image.getbands() or "a" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as error:
        raise ValueError(f"cannot convert a mode {image.mode} image to RGB: {error}") from error


def _exif_transpose(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (a no-op without one), as transformers' `load_image` does for files."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception as error:  # a damaged EXIF block must not make the image unreadable
        logger.warning(f"ignoring the image's unreadable EXIF orientation: {error}")
        return image


def _open_image(source: str) -> Image.Image:
    """Open an image file or download an http(s) URL, with a message that names what went wrong."""
    match = _URL_PATTERN.match(source)
    if match:
        scheme = match.group(1).lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"cannot read image {source}: only http(s) URLs and local paths are supported")
        try:
            with urllib.request.urlopen(source, timeout=URL_DOWNLOAD_TIMEOUT) as response:
                content = response.read()
        except Exception as error:
            raise ValueError(f"cannot download the image URL {source}: {error}") from error
        data, name = io.BytesIO(content), f"downloaded from {source}"
    else:
        if os.path.isdir(source):
            raise ValueError(
                f"{source} is a directory, not an image file (for a folder of video frames use sample_frames)"
            )
        if not os.path.exists(source):
            raise ValueError(f"image file not found: {source}")
        if not os.path.isfile(source):
            raise ValueError(f"{source} is not a regular file, cannot read it as an image")
        data, name = source, source
    try:
        with Image.open(data) as opened:
            opened.load()
            image = _exif_transpose(opened)
            if image is opened:
                image = opened.copy()
    except Image.DecompressionBombError as error:
        raise ValueError(
            f"image {name} is too large to decode safely ({error}); if you trust the file, raise "
            "PIL.Image.MAX_IMAGE_PIXELS"
        ) from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot read image {name}: {error}") from error
    return image


def load_image(image, input_data_format: str | ChannelDimension | None = None) -> Image.Image:
    """
    Turn one image input into a PIL RGB image: a PIL image of any mode (L, LA, P, RGBA, CMYK, I;16, F, …), a path or
    http(s) URL, a numpy array or a torch tensor (HW, HWC or CHW; uint8 0..255, uint16 or float 0..1, bfloat16 and
    float16 included). The EXIF orientation is applied to files and to opened PIL images alike.
    """
    return _pil_to_rgb(to_pil_image(image, input_data_format))


def to_pil_image(image, input_data_format: str | ChannelDimension | None = None) -> Image.Image:
    """One image input → a PIL image, upright (EXIF applied), not yet converted to RGB; see [`load_image`]."""
    if isinstance(image, (str, os.PathLike)):
        return _open_image(os.fspath(image))
    if torch.is_tensor(image) or isinstance(image, (np.ndarray, np.generic)):
        return _array_to_pil(image, input_data_format)
    if not isinstance(image, Image.Image):
        raise ValueError(
            f"unsupported image type {type(image).__name__}: pass a PIL image, path, URL, numpy array or tensor"
        )
    if image.width == 0 or image.height == 0:
        raise ValueError("image has zero width or height")
    return _exif_transpose(image)


FRAME_FILE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def sample_frame_indices(num_available: int, num_frames: int) -> list[int]:
    """
    Uniform sampling: frame `floor(i · num_available / num_frames)` for i = 0..num_frames-1, the start of each of
    `num_frames` equal segments (the original's "uniform" strategy; its `np.arange(0, n, n / T, dtype=int)` truncates
    the step to an integer, so for n not a multiple of T it covers only the start of the video). Frames repeat when
    fewer are available than requested.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if num_available < 1:
        raise ValueError("the video has no frames")
    return [index * num_available // num_frames for index in range(num_frames)]


def _read_video_with_pyav(path: str, num_frames: int) -> list[Image.Image]:
    # Optional dependencies are imported in `try`: transformers' remote-code loader then does not require them.
    try:
        import av
    except ImportError as error:
        raise ImportError("decoding video files with PyAV needs `pip install av`") from error

    with av.open(path) as container:
        stream = container.streams.video[0]
        if stream.frames > 0:
            # Decode only up to the last wanted frame; the stored frame count can be wrong, then decode everything.
            indices = sample_frame_indices(stream.frames, num_frames)
            wanted, picked = set(indices), {}
            for index, frame in enumerate(container.decode(stream)):
                if index in wanted:
                    picked[index] = frame.to_image()
                if index == indices[-1]:
                    return [picked[index] for index in indices]
    with av.open(path) as container:
        frames = [frame.to_image() for frame in container.decode(container.streams.video[0])]
    return [frames[index] for index in sample_frame_indices(len(frames), num_frames)]


def _read_video_with_decord(path: str, num_frames: int) -> list[Image.Image]:
    try:
        import decord
    except ImportError as error:
        raise ImportError("decoding video files with decord needs `pip install decord`") from error

    reader = decord.VideoReader(path)
    batch = reader.get_batch(sample_frame_indices(len(reader), num_frames)).asnumpy()
    return [Image.fromarray(frame) for frame in batch]


def read_video(path: str, num_frames: int) -> list[Image.Image]:
    """`num_frames` uniformly sampled frames of a video file, decoded with PyAV, or decord when PyAV is missing."""
    for module_name, reader in (("av", _read_video_with_pyav), ("decord", _read_video_with_decord)):
        try:
            __import__(module_name)
        except ImportError:
            continue
        try:
            return reader(path, num_frames)
        except (OSError, RuntimeError, IndexError, ValueError) as error:
            raise ValueError(f"cannot decode video {path} with {module_name}: {error}") from error
    raise ImportError(
        f"reading the video file {path} needs PyAV (`pip install av`) or decord (`pip install decord`); without "
        "them, pass the frames as a list of images or a folder of frame images"
    )


def sample_frames(frames_or_path, num_frames: int) -> list[Image.Image]:
    """
    `num_frames` uniformly sampled frames (see [`sample_frame_indices`]) as PIL RGB images.

    Args:
        frames_or_path: a list of frames (PIL images, arrays, tensors or image paths; only the sampled ones are
            loaded), a folder of frame images (sorted by file name), or a video file (needs PyAV or decord).
        num_frames: how many frames to return.
    """
    if isinstance(frames_or_path, (str, os.PathLike)):
        path = os.fspath(frames_or_path)
        if os.path.isdir(path):
            frames_or_path = [
                os.path.join(path, name)
                for name in sorted(os.listdir(path))
                if name.lower().endswith(FRAME_FILE_EXTENSIONS)
            ]
            if not frames_or_path:
                raise ValueError(f"the frame folder {path} holds no {'/'.join(FRAME_FILE_EXTENSIONS)} images")
        elif os.path.isfile(path):
            if num_frames < 1:
                raise ValueError(f"num_frames must be at least 1, got {num_frames}")
            return read_video(path, num_frames)
        else:
            raise ValueError(f"video file or frame folder not found: {path}")
    if isinstance(frames_or_path, (np.ndarray, torch.Tensor)) and frames_or_path.ndim == 4:
        frames_or_path = list(frames_or_path)
    if not isinstance(frames_or_path, (list, tuple)):
        raise ValueError(
            f"frames must be a list of images, a frame folder or a video path, got {type(frames_or_path).__name__}"
        )
    if not frames_or_path:
        raise ValueError("the list of frames is empty")
    return [load_image(frames_or_path[index]) for index in sample_frame_indices(len(frames_or_path), num_frames)]


class MPLUGImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    mode (`str`, *optional*, defaults to `"default"`):
        `"default"` (captioning, VQA, retrieval: a square warp) or `"grounding"` (the aspect-preserving resize and
        centred zero pad of the original's grounding evaluation; adds `image_sizes`).
    grounding_resample (`PILImageResampling`, *optional*, defaults to `BILINEAR`):
        Resampling filter of the grounding resize.
    grounding_image_mean (`float` or `list[float]`, *optional*, defaults to the ImageNet mean):
        Mean of the grounding normalisation (the original's grounding evaluation uses ImageNet statistics).
    grounding_image_std (`float` or `list[float]`, *optional*, defaults to the ImageNet std):
        Standard deviation of the grounding normalisation.
    """

    mode: Literal["default", "grounding"] | None
    grounding_resample: PILImageResampling | int | None
    grounding_image_mean: float | list[float] | tuple[float, ...] | None
    grounding_image_std: float | list[float] | tuple[float, ...] | None


@auto_docstring(
    custom_intro="""
    mPLUG's evaluation transform on transformers' PIL backend (there is no torchvision variant: the PIL resampling is
    what the original used, bit for bit). Every input is first made an upright 8-bit RGB image (see `load_image`);
    then the default transform warps it to `size` (bicubic, no crop), rescales it to [0, 1] and normalises it with
    CLIP mean/std. The grounding transform (`mode="grounding"`) keeps the aspect ratio: the long side is resized to
    `size` (bilinear), normalised with ImageNet mean/std (the original's eval quirk) and zero-padded to a centred
    square (offsets round(gap / 2 - 0.1), as the original's eval `NormalizeAndPad`); `grounding_box_transform` and
    `post_process_grounding` map boxes between the input and the padded square.
    """
)
class MPLUGImageProcessor(PilBackend):
    r"""
    image_size (`int`, *optional*):
        Side of a square output, the same as `size={"height": image_size, "width": image_size}`; kept so that
        configurations saved by earlier versions of mplug_hf load unchanged.
    """

    valid_kwargs = MPLUGImageProcessorKwargs
    model_input_names = ["pixel_values"]

    resample = PILImageResampling.BICUBIC
    image_mean = CLIP_MEAN
    image_std = CLIP_STD
    size = {"height": 384, "width": 384}
    default_to_square = True
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    mode = "default"
    grounding_resample = PILImageResampling.BILINEAR
    grounding_image_mean = IMAGENET_MEAN
    grounding_image_std = IMAGENET_STD

    def __init__(self, image_size: int | None = None, **kwargs: Unpack[MPLUGImageProcessorKwargs]):
        r"""
        image_size (`int`, *optional*):
            Side of a square output, the same as `size={"height": image_size, "width": image_size}`; kept so that
            configurations saved by earlier versions of mplug_hf load unchanged.
        """
        kwargs.pop("image_processor_type", None)
        if image_size is not None:
            size = {"height": image_size, "width": image_size}
            if kwargs.get("size") is not None and kwargs["size"] != size and kwargs["size"] != image_size:
                raise ValueError(f"image_size={image_size} and size={kwargs['size']} disagree; give only size")
            kwargs["size"] = size
        super().__init__(**kwargs)

    @property
    def image_size(self) -> int:
        """The side of the square output (`size["height"]`, which must equal `size["width"]`)."""
        if self.size.height is None or self.size.height != self.size.width:
            raise AttributeError(f"image_size is defined for square sizes only, size is {dict(self.size)}")
        return self.size.height

    @image_size.setter
    def image_size(self, value: int) -> None:
        self.size = SizeDict(height=value, width=value)

    def fetch_images(self, image_url_or_urls):
        """Paths and http(s) URLs (nested in lists too) → upright PIL images; other inputs pass through."""
        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(item) for item in image_url_or_urls]
        if isinstance(image_url_or_urls, (str, os.PathLike)):
            return to_pil_image(image_url_or_urls)
        return image_url_or_urls

    def process_image(
        self,
        image,
        do_convert_rgb: bool | None = None,
        input_data_format: str | ChannelDimension | None = None,
        **kwargs,
    ) -> np.ndarray:
        """One raw image (PIL, path, URL, array, tensor) → channels-first uint8 array: RGB, or with
        `do_convert_rgb=False` the image's own channels (as transformers' PIL backend keeps them)."""
        image = to_pil_image(image, input_data_format)
        if do_convert_rgb:
            image = _pil_to_rgb(image)
        elif image.mode in _HIGH_DEPTH_MODES:
            image = _high_depth_to_8_bit(image)
        array = np.asarray(image)
        if array.ndim == 2:
            array = array[..., None]
        return array.transpose(2, 0, 1)

    def _standardize_kwargs(self, grounding_image_mean=None, grounding_image_std=None, **kwargs) -> dict:
        kwargs = super()._standardize_kwargs(**kwargs)
        kwargs["grounding_image_mean"] = (
            tuple(grounding_image_mean) if isinstance(grounding_image_mean, list) else grounding_image_mean
        )
        kwargs["grounding_image_std"] = (
            tuple(grounding_image_std) if isinstance(grounding_image_std, list) else grounding_image_std
        )
        return kwargs

    def _batch_structure(self, images) -> tuple[list, bool]:
        """The batch as a list of images, or of videos (lists of frames) when every item is a list."""
        if images is None:
            raise ValueError("images is required")
        is_batch = isinstance(images, (list, tuple)) or (
            isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4
        )
        batch = list(images) if is_batch else [images]
        if not batch:
            raise ValueError("images is an empty list")
        is_video = all(isinstance(item, (list, tuple)) for item in batch)
        if is_video:
            lengths = {len(video) for video in batch}
            if len(lengths) != 1 or 0 in lengths:
                raise ValueError(f"every video must have the same, non-zero number of frames; got {sorted(lengths)}")
        elif any(isinstance(item, (list, tuple)) for item in batch):
            raise ValueError("images mixes single images and lists of frames: give a list of images or of videos")
        return batch, is_video

    @auto_docstring
    def preprocess(self, images, **kwargs: Unpack[MPLUGImageProcessorKwargs]) -> BatchFeature:
        r"""
        images: one image, a list of images, or a list of videos (each a list of frames, all with the same number of
            frames) — PIL images, paths, URLs, numpy arrays or tensors.

        Returns:
            `pixel_values` `(batch, 3, H, W)` (videos: `(batch, frames, 3, H, W)`); grounding adds `image_sizes`
            `(batch, 2)` = original (height, width). Tensors are PyTorch unless `return_tensors` says otherwise
            (`None` gives lists of arrays).
        """
        kwargs.setdefault("return_tensors", "pt")
        try:
            return super().preprocess(images, **kwargs)
        except StrictDataclassError as error:
            raise ValueError(f"invalid image processor argument: {error}") from error

    def _preprocess_image_like_inputs(
        self, images, *args, do_convert_rgb=None, input_data_format=None, **kwargs
    ) -> BatchFeature:
        batch, is_video = self._batch_structure(images)
        if kwargs.get("mode") not in ("default", "grounding"):
            raise ValueError(f"mode must be 'default' or 'grounding', got {kwargs.get('mode')!r}")

        def prepare(image) -> np.ndarray:
            return self.process_image(image, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format)

        if not is_video:
            return self._preprocess([prepare(image) for image in batch], *args, **kwargs)
        if kwargs["mode"] == "grounding":
            raise ValueError("grounding takes images, not videos")
        return_tensors = kwargs.pop("return_tensors", None)
        frames = [prepare(frame) for video in batch for frame in video]
        flat = self._preprocess(frames, *args, return_tensors=None, **kwargs)["pixel_values"]
        flat = self._stack(flat, "video frames", kwargs.get("do_resize"))
        pixel_values = flat.reshape(len(batch), len(batch[0]), *flat.shape[1:])
        return BatchFeature({"pixel_values": pixel_values}, tensor_type=return_tensors)

    @staticmethod
    def _stack(arrays: list[np.ndarray], what: str, do_resize: bool | None) -> np.ndarray:
        shapes = {array.shape for array in arrays}
        if len(shapes) != 1:
            hint = " (do_resize=False keeps each image's size)" if not do_resize else ""
            raise ValueError(f"{what} of different sizes {sorted(shapes)} cannot be stacked into one batch{hint}")
        return np.stack(arrays)

    def _preprocess(
        self,
        images: list[np.ndarray],
        mode: str = "default",
        return_tensors=None,
        data_format: str | ChannelDimension | None = None,
        **kwargs,
    ) -> BatchFeature:
        if mode == "grounding":
            data = self._preprocess_grounding(images, **kwargs)
        else:
            data = dict(super()._preprocess(images, return_tensors=None, **kwargs))
        if data_format is not None and ChannelDimension(data_format) == ChannelDimension.LAST:
            data["pixel_values"] = [np.moveaxis(array, 0, -1) for array in data["pixel_values"]]
        if return_tensors is not None:
            data["pixel_values"] = self._stack(data["pixel_values"], "images", kwargs.get("do_resize"))
        return BatchFeature(data, tensor_type=return_tensors)

    def grounding_layout(
        self, width: int, height: int, size: SizeDict | None = None, do_resize: bool = True
    ) -> tuple[float, int, int, int, int]:
        """Scale, resized width and height, and the (left, top) offsets of a `width`×`height` image on the padded
        `size` canvas (the processor's `size` by default)."""
        size = self.size if size is None else size
        if size.height is None or size.width is None:
            raise ValueError(f"the grounding transform needs size={{'height', 'width'}}, got {dict(size)}")
        if do_resize:
            scale = min(size.width / width, size.height / height)
            new_width, new_height = max(1, round(width * scale)), max(1, round(height * scale))
        else:
            if width > size.width or height > size.height:
                raise ValueError(
                    f"with do_resize=False a grounding image must fit in {size.width}x{size.height}, got "
                    f"{width}x{height}"
                )
            scale, new_width, new_height = 1.0, width, height
        left = round((size.width - new_width) / 2.0 - 0.1)
        top = round((size.height - new_height) / 2.0 - 0.1)
        return scale, new_width, new_height, left, top

    def _preprocess_grounding(
        self,
        images: list[np.ndarray],
        do_resize: bool,
        size: SizeDict,
        grounding_resample,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        grounding_image_mean,
        grounding_image_std,
        **kwargs,
    ) -> dict:
        pixel_values, image_sizes = [], []
        for image in images:
            height, width = image.shape[-2:]
            _, new_width, new_height, left, top = self.grounding_layout(width, height, size, do_resize)
            if do_resize:
                image = self.resize(image, SizeDict(height=new_height, width=new_width), resample=grounding_resample)
            if do_rescale:
                image = self.rescale(image, rescale_factor)
            if do_normalize:
                image = self.normalize(image, grounding_image_mean, grounding_image_std)
            if not (do_rescale or do_normalize):
                image = image.astype(np.float32)
            padding = ((top, size.height - new_height - top), (left, size.width - new_width - left))
            pixel_values.append(
                pad(image, padding, constant_values=0.0, input_data_format=ChannelDimension.FIRST).astype(np.float32)
            )
            image_sizes.append((height, width))
        return {"pixel_values": pixel_values, "image_sizes": np.array(image_sizes, dtype=np.int64)}

    def _grounding_offsets(self, image_sizes_hw) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per image: scale `(n, 1)`, offsets `(n, 4)` as (left, top, left, top), and canvas `(4,)` (W, H, W, H)."""
        rows = [self.grounding_layout(int(width), int(height)) for height, width in image_sizes_hw]
        scales = torch.tensor([[row[0]] for row in rows], dtype=torch.float32)
        offsets = torch.tensor([[row[3], row[4], row[3], row[4]] for row in rows], dtype=torch.float32)
        canvas = torch.tensor([self.size.width, self.size.height] * 2, dtype=torch.float32)
        return scales, offsets, canvas

    def grounding_box_transform(self, boxes_xyxy, image_size_hw) -> torch.Tensor:
        """Pixel xyxy boxes of the input image → normalised (cx, cy, w, h) on the padded square, in [0, 1]."""
        boxes = torch.as_tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4)
        height, width = image_size_hw
        if ((boxes[:, 2:] < boxes[:, :2]).any() or (boxes[:, :2] < 0).any() or (boxes[:, 2] > width).any()
                or (boxes[:, 3] > height).any()):  # fmt: skip
            raise ValueError(f"boxes {boxes.tolist()} are not valid xyxy boxes inside a {width}x{height} image")
        scales, offsets, canvas = self._grounding_offsets([(height, width)])
        boxes = (boxes * scales + offsets) / canvas
        center = (boxes[:, :2] + boxes[:, 2:]) / 2
        return torch.cat([center, boxes[:, 2:] - boxes[:, :2]], dim=1)

    def grounding_box_inverse(self, boxes_cxcywh, image_size_hw) -> torch.Tensor:
        """Normalised (cx, cy, w, h) on the padded square → pixel xyxy boxes of one input image, clipped to it."""
        boxes = torch.as_tensor(boxes_cxcywh, dtype=torch.float32).reshape(-1, 4)
        return self.post_process_grounding(boxes, torch.as_tensor([image_size_hw]).expand(len(boxes), 2))

    def post_process_grounding(self, pred_boxes, image_sizes=None) -> torch.Tensor:
        """
        Turn the `pred_boxes` of [`MPLUGForGrounding`] into boxes of the input images, as OWL-ViT's
        `post_process_object_detection` does for its predictions.

        Args:
            pred_boxes (`torch.Tensor` of shape `(batch, 4)`):
                Normalised (cx, cy, w, h) boxes on the padded grounding square.
            image_sizes (`torch.Tensor` or `list[tuple[int, int]]` of shape `(batch, 2)`, *optional*):
                Each input image's (height, width), as the grounding transform returns in `image_sizes`. Without
                it, the boxes stay normalised on the padded square (only converted to corners).

        Returns:
            `torch.Tensor` of shape `(batch, 4)`: (x1, y1, x2, y2) boxes, in pixels of each input image and clipped to
            it when `image_sizes` is given.
        """
        boxes = torch.as_tensor(pred_boxes)
        if boxes.ndim == 1:
            boxes = boxes.unsqueeze(0)
        if boxes.ndim != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"pred_boxes must have shape (batch, 4), got {tuple(boxes.shape)}")
        boxes = boxes.detach().to("cpu", torch.float32)
        if not torch.isfinite(boxes).all():
            raise ValueError("pred_boxes contains NaN or infinity")
        corners = center_to_corners_format(boxes)
        if image_sizes is None:
            return corners
        sizes = torch.as_tensor(image_sizes).detach().cpu().reshape(-1, 2) if len(image_sizes) else torch.empty(0, 2)
        if len(sizes) != len(boxes):
            raise ValueError(f"got {len(boxes)} boxes but {len(sizes)} image sizes; give one (height, width) per box")
        if (sizes <= 0).any():
            raise ValueError(f"image sizes must be positive (height, width) pairs, got {sizes.tolist()}")
        scales, offsets, canvas = self._grounding_offsets(sizes.tolist())
        pixels = (corners * canvas - offsets) / scales
        limits = sizes.flip(-1).repeat(1, 2).to(torch.float32)
        return torch.minimum(pixels.clamp(min=0), limits)

    def sample_frames(self, frames_or_path, num_frames: int) -> list[Image.Image]:
        """`num_frames` uniformly sampled frames of a list of frames, a frame folder or a video file, ready for
        `preprocess([frames, ...])`; see [`sample_frames`]."""
        return sample_frames(frames_or_path, num_frames)


__all__ = [
    "MPLUGImageProcessor",
    "MPLUGImageProcessorKwargs",
    "load_image",
    "read_video",
    "sample_frame_indices",
    "sample_frames",
    "to_pil_image",
]
