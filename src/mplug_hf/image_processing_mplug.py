"""Image processor for mPLUG (PIL/numpy only; no torchvision)."""

import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _array_to_pil(array: np.ndarray) -> Image.Image:
    """HWC/CHW/HW array (uint8 0..255, or float 0..1) → PIL RGB. Channels-first is recognised when the first axis has
    1, 3 or 4 entries and the last does not."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise ValueError(f"an image array must be 2-D or 3-D, got shape {array.shape}")
    if array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"an image array needs 1, 3 or 4 channels (got shape {array.shape})")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"an image array must not be empty, got shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError("a float image array contains NaN or infinity")
        if array.min() < 0 or array.max() > 1:
            raise ValueError(
                f"a float image array must hold values in [0, 1], got [{array.min():.3g}, {array.max():.3g}]; "
                "pass uint8 0..255 or rescale it"
            )
        array = np.round(array * 255)
    elif array.dtype == np.uint16:
        array = array / 257.0
    elif array.dtype != np.uint8:
        if array.dtype == np.bool_ or array.min() < 0 or array.max() > 255:
            raise ValueError(f"an integer image array must hold values in 0..255, got dtype {array.dtype}")
    array = array.astype(np.uint8)
    channels = array.shape[-1]
    image = Image.fromarray(array[..., 0] if channels == 1 else array, mode={1: "L", 3: "RGB", 4: "RGBA"}[channels])
    return image


def load_image(image) -> Image.Image:
    """
    Turn one image input into a PIL RGB image: a PIL image of any mode (L, LA, P, RGBA, CMYK, I;16, …), a path, a
    numpy array or a torch tensor (HWC or CHW; uint8 0..255 or float 0..1). EXIF orientation is applied to files.
    """
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise ValueError(f"image file not found: {path}")
        try:
            with Image.open(path) as opened:
                opened.load()
                image = ImageOps.exif_transpose(opened)
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            raise ValueError(f"cannot read image {path}: {error}") from error
    if torch.is_tensor(image):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        return _array_to_pil(image)
    if not isinstance(image, Image.Image):
        raise ValueError(
            f"unsupported image type {type(image).__name__}: pass a PIL image, path, numpy array or tensor"
        )
    if image.width == 0 or image.height == 0:
        raise ValueError("image has zero width or height")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16/32-bit grayscale: scale to 8 bits by the type's range rather than clipping.
        array = np.asarray(image, dtype=np.float64)
        scale = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / scale * 255.0, 0, 255).round().astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite on white so transparent regions do not become black.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


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


class MPLUGImageProcessor(BaseImageProcessor):
    r"""
    mPLUG's evaluation transform: square bicubic resize to `image_size` (a warp, no crop), scale to [0, 1], normalise
    with CLIP mean/std. The grounding transform (`mode="grounding"`) keeps the aspect ratio: the long side is resized
    to `image_size` (bilinear), normalised with ImageNet mean/std (the original's eval quirk), and zero-padded to a
    centred square (offsets round(gap / 2 - 0.1), as the original's eval `NormalizeAndPad`);
    `grounding_box_transform` / `grounding_box_inverse` map boxes between the input and the padded square.

    Args:
        image_size (`int`): output side.
        image_mean, image_std (`tuple[float]`): normalisation of the default transform (CLIP).
        grounding_image_mean, grounding_image_std (`tuple[float]`): normalisation of the grounding transform.
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        image_size: int = 384,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        grounding_image_mean: Sequence[float] = IMAGENET_MEAN,
        grounding_image_std: Sequence[float] = IMAGENET_STD,
        **kwargs,
    ):
        kwargs.pop("image_processor_type", None)
        super().__init__(**kwargs)
        self.image_size = image_size
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.grounding_image_mean = list(grounding_image_mean)
        self.grounding_image_std = list(grounding_image_std)

    def to_dict(self):
        output = super().to_dict()
        output.pop("_valid_kwargs_names", None)
        return output

    def _normalize(self, image: Image.Image, mean, std) -> np.ndarray:
        array = np.asarray(image, dtype=np.float32) / np.float32(255.0)
        array = (array - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
        return array.transpose(2, 0, 1)

    def transform(self, image) -> np.ndarray:
        """One image → `(3, image_size, image_size)` float32."""
        image = load_image(image)
        image = image.resize((self.image_size, self.image_size), resample=Image.Resampling.BICUBIC)
        return self._normalize(image, self.image_mean, self.image_std)

    def grounding_scale(self, width: int, height: int) -> float:
        return self.image_size / max(width, height)

    def grounding_layout(self, width: int, height: int) -> tuple[float, int, int, int, int]:
        """Scale, resized width and height, and the (left, top) offsets of the image on the padded square."""
        scale = self.grounding_scale(width, height)
        new_width, new_height = max(1, round(width * scale)), max(1, round(height * scale))
        left = round((self.image_size - new_width) / 2.0 - 0.1)
        top = round((self.image_size - new_height) / 2.0 - 0.1)
        return scale, new_width, new_height, left, top

    def transform_grounding(self, image) -> tuple[np.ndarray, tuple[int, int]]:
        """One image → padded square `(3, image_size, image_size)` and its original `(height, width)`."""
        image = load_image(image)
        _, new_width, new_height, left, top = self.grounding_layout(image.width, image.height)
        resized = self._normalize(
            image.resize((new_width, new_height), resample=Image.Resampling.BILINEAR),
            self.grounding_image_mean,
            self.grounding_image_std,
        )
        padded = np.zeros((3, self.image_size, self.image_size), dtype=np.float32)
        padded[:, top : top + new_height, left : left + new_width] = resized
        return padded, (image.height, image.width)

    def grounding_box_transform(self, boxes_xyxy, image_size_hw) -> torch.Tensor:
        """Pixel xyxy boxes of the input image → normalised (cx, cy, w, h) on the padded square, in [0, 1]."""
        boxes = torch.as_tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4)
        height, width = image_size_hw
        if ((boxes[:, 2:] < boxes[:, :2]).any() or (boxes[:, :2] < 0).any() or (boxes[:, 2] > width).any()
                or (boxes[:, 3] > height).any()):  # fmt: skip
            raise ValueError(f"boxes {boxes.tolist()} are not valid xyxy boxes inside a {width}x{height} image")
        scale, _, _, left, top = self.grounding_layout(width, height)
        boxes = (boxes * scale + torch.tensor([left, top, left, top], dtype=torch.float32)) / self.image_size
        center = (boxes[:, :2] + boxes[:, 2:]) / 2
        return torch.cat([center, boxes[:, 2:] - boxes[:, :2]], dim=1)

    def grounding_box_inverse(self, boxes_cxcywh, image_size_hw) -> torch.Tensor:
        """Normalised (cx, cy, w, h) on the padded square → pixel xyxy boxes of the input image, clipped to it."""
        boxes = torch.as_tensor(boxes_cxcywh, dtype=torch.float32).reshape(-1, 4)
        height, width = image_size_hw
        half = boxes[:, 2:] / 2
        xyxy = torch.cat([boxes[:, :2] - half, boxes[:, :2] + half], dim=1)
        scale, _, _, left, top = self.grounding_layout(width, height)
        xyxy = (xyxy * self.image_size - torch.tensor([left, top, left, top], dtype=torch.float32)) / scale
        limits = torch.tensor([width, height, width, height], dtype=torch.float32)
        return torch.minimum(xyxy.clamp(min=0), limits)

    def preprocess(self, images, mode: str = "default", return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        """
        Args:
            images: one image, a list of images, or a list of videos (each a list of frames, all with the same
                number of frames) — PIL images, paths, numpy arrays or tensors.
            mode: `"default"` (captioning, VQA, retrieval) or `"grounding"`.
        Returns:
            `pixel_values` `(batch, 3, S, S)` (videos: `(batch, frames, 3, S, S)`); grounding adds `image_sizes`
            `(batch, 2)` = original (height, width).
        """
        if mode not in ("default", "grounding"):
            raise ValueError(f"mode must be 'default' or 'grounding', got {mode!r}")
        if images is None:
            raise ValueError("images is required")
        is_single = not isinstance(images, (list, tuple)) and not (
            isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4
        )
        batch = [images] if is_single else list(images)
        if not batch:
            raise ValueError("images is an empty list")
        if all(isinstance(item, (list, tuple)) for item in batch):
            if mode == "grounding":
                raise ValueError("grounding takes images, not videos")
            lengths = {len(video) for video in batch}
            if len(lengths) != 1 or 0 in lengths:
                raise ValueError(f"every video must have the same, non-zero number of frames; got {sorted(lengths)}")
            pixel_values = np.stack([np.stack([self.transform(frame) for frame in video]) for video in batch])
            return BatchFeature({"pixel_values": pixel_values}, tensor_type=return_tensors)
        if mode == "grounding":
            transformed = [self.transform_grounding(image) for image in batch]
            data = {
                "pixel_values": np.stack([pixels for pixels, _ in transformed]),
                "image_sizes": np.array([size for _, size in transformed], dtype=np.int64),
            }
            return BatchFeature(data, tensor_type=return_tensors)
        pixel_values = np.stack([self.transform(image) for image in batch])
        return BatchFeature({"pixel_values": pixel_values}, tensor_type=return_tensors)

    def sample_frames(self, frames_or_path, num_frames: int) -> list[Image.Image]:
        """`num_frames` uniformly sampled frames of a list of frames, a frame folder or a video file, ready for
        `preprocess([frames, ...])`; see [`sample_frames`]."""
        return sample_frames(frames_or_path, num_frames)


__all__ = ["MPLUGImageProcessor", "load_image", "read_video", "sample_frame_indices", "sample_frames"]
