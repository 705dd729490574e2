"""
Training-time image augmentation of mPLUG, ported to PIL/numpy (no torchvision, no OpenCV).

- [`MPLUGTrainAugmentation`]: the original's `train_transform` (VQA, captioning, retrieval) and `pretrain_transform`:
  RandomResizedCrop (scale 0.5–1, or 0.2–1 for pretraining, bicubic) → horizontal flip (p = 0.5) → RandomAugment(2, 7).
  The text is not touched: outside grounding the original flips images without editing "left"/"right".
- [`RandomAugment`]: the original `RandomAugment(2, 7, augs=[...])` (from ALBEF): `num_ops` operations drawn with
  replacement from its 10-operation list, each applied with probability 0.5 at magnitude 7 of 10, on uint8 RGB arrays.
- [`MPLUGGroundingAugmentation`]: the original grounding `make_transforms(train)`: random long-side resize (optionally
  via a random crop), colour jitter, horizontal flip that also flips the box and swaps "left"/"right" in the query, and
  a random placement on the zero-padded square.

Every random draw comes from a `numpy.random.Generator` passed in, so a seed reproduces an augmentation exactly.
"""

import math
import re
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageEnhance

from .image_processing_mplug import CLIP_MEAN, CLIP_STD, load_image


def _as_generator(rng: np.random.Generator | None) -> np.random.Generator:
    return rng if rng is not None else np.random.default_rng()


# ----------------------------------------------------------------------------------------------------------------------
# RandomAugment operations (uint8 HWC arrays in, uint8 HWC arrays out)
# ----------------------------------------------------------------------------------------------------------------------


def _warp_affine(image: np.ndarray, forward_matrix: np.ndarray, fill: Sequence[int]) -> np.ndarray:
    """
    Bilinear affine warp with the semantics of OpenCV's `warpAffine(image, M, (W, H), borderValue=fill)` used by the
    original: `M` (2×3) maps source pixel indices (pixel centres at integers) to output indices. PIL samples the inverse
    map in coordinates whose pixel centres sit at +0.5, hence the half-pixel conjugation.
    """
    linear, shift = forward_matrix[:, :2], forward_matrix[:, 2]
    inverse_linear = np.linalg.inv(linear)
    inverse_shift = -inverse_linear @ shift
    pil_shift = inverse_shift + 0.5 - inverse_linear @ np.array([0.5, 0.5])
    data = (*inverse_linear[0], pil_shift[0], *inverse_linear[1], pil_shift[1])
    warped = Image.fromarray(image).transform(
        (image.shape[1], image.shape[0]),
        Image.Transform.AFFINE,
        data,
        resample=Image.Resampling.BILINEAR,
        fillcolor=tuple(fill),
    )
    return np.asarray(warped)


def _autocontrast(image: np.ndarray) -> np.ndarray:
    """Stretch each channel from its [min, max] to [0, 255] (cutoff 0)."""
    output = image.copy()
    for channel in range(image.shape[2]):
        values = image[..., channel]
        low, high = int(values.min()), int(values.max())
        if high <= low:
            continue
        scale = 255.0 / (high - low)
        table = (np.arange(256) * scale - low * scale).clip(0, 255).astype(np.uint8)
        output[..., channel] = table[values]
    return output


def _equalize(image: np.ndarray) -> np.ndarray:
    """Histogram equalisation per channel with PIL's `ImageOps.equalize` lookup table."""
    output = image.copy()
    for channel in range(image.shape[2]):
        values = image[..., channel]
        histogram = np.bincount(values.ravel(), minlength=256)
        step = int(histogram[histogram != 0][:-1].sum()) // 255
        if step == 0:
            continue
        shifted = np.concatenate([[step // 2], histogram[:-1]])
        table = (np.cumsum(shifted) // step).clip(0, 255).astype(np.uint8)
        output[..., channel] = table[values]
    return output


def _brightness(image: np.ndarray, factor: float) -> np.ndarray:
    table = (np.arange(256, dtype=np.float32) * np.float32(factor)).clip(0, 255).astype(np.uint8)
    return table[image]


def _sharpness(image: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the 3×3 smoothing kernel [[1,1,1],[1,5,1],[1,1,1]] / 13 on the interior (borders unchanged). Values
    are clipped to [0, 255]; the original's float → uint8 cast wraps them instead."""
    if image.shape[0] < 3 or image.shape[1] < 3:
        return image
    pixels = image.astype(np.float32)
    height, width = image.shape[:2]
    neighbourhood = sum(
        pixels[dy : dy + height - 2, dx : dx + width - 2] for dy in range(3) for dx in range(3)
    )  # 3×3 box sum of every interior pixel
    centre = pixels[1:-1, 1:-1]
    smoothed = np.rint((neighbourhood + 4 * centre) / 13).clip(0, 255)
    output = pixels.copy()
    output[1:-1, 1:-1] = smoothed + factor * (centre - smoothed)
    return output.clip(0, 255).astype(np.uint8)


def _shear_x(image: np.ndarray, factor: float, fill) -> np.ndarray:
    return _warp_affine(image, np.array([[1, factor, 0], [0, 1, 0]], dtype=np.float64), fill)


def _shear_y(image: np.ndarray, factor: float, fill) -> np.ndarray:
    return _warp_affine(image, np.array([[1, 0, 0], [factor, 1, 0]], dtype=np.float64), fill)


def _translate_x(image: np.ndarray, offset: float, fill) -> np.ndarray:
    return _warp_affine(image, np.array([[1, 0, -offset], [0, 1, 0]], dtype=np.float64), fill)


def _translate_y(image: np.ndarray, offset: float, fill) -> np.ndarray:
    return _warp_affine(image, np.array([[1, 0, 0], [0, 1, -offset]], dtype=np.float64), fill)


def _rotate(image: np.ndarray, degrees: float, fill) -> np.ndarray:
    """Counter-clockwise rotation about (W / 2, H / 2) in pixel-index coordinates (OpenCV's `getRotationMatrix2D`)."""
    height, width = image.shape[:2]
    centre_x, centre_y = width / 2, height / 2
    cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    matrix = np.array(
        [
            [cos, sin, (1 - cos) * centre_x - sin * centre_y],
            [-sin, cos, sin * centre_x + (1 - cos) * centre_y],
        ]
    )
    return _warp_affine(image, matrix, fill)


class RandomAugment:
    r"""
    The original mPLUG/ALBEF `RandomAugment(N, M, isPIL=True, augs=...)`: draw `num_ops` operations with replacement
    from `operations`; apply each with probability `probability` at level `magnitude` of `max_level`. Arguments per
    level (as the original): enhancement factor `level / max_level · 1.8 + 0.1` (Brightness, Sharpness); shear
    `level / max_level · 0.3`, translation `level / max_level · translate_pixels` pixels and rotation
    `level / max_level · 30` degrees, each with a random sign, filling with `fill`.

    Args:
        num_ops (`int`): operations drawn per image (N).
        magnitude (`int`): level of every operation (M).
        operations (`Sequence[str]`): names from [`RandomAugment.OPERATIONS`]; default the original's list.
        probability (`float`): chance that a drawn operation is applied.
    """

    OPERATIONS = (
        "Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness",
        "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
    )  # fmt: skip

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: int = 7,
        operations: Sequence[str] = OPERATIONS,
        probability: float = 0.5,
        max_level: int = 10,
        translate_pixels: float = 10.0,
        fill: Sequence[int] = (128, 128, 128),
    ):
        unknown = sorted(set(operations) - set(self.OPERATIONS))
        if unknown or not operations:
            raise ValueError(f"operations must be a non-empty subset of {self.OPERATIONS}; unknown: {unknown}")
        if num_ops < 0 or not 0 <= magnitude <= max_level or not 0 <= probability <= 1:
            raise ValueError(
                f"need num_ops >= 0, 0 <= magnitude <= max_level and 0 <= probability <= 1; got num_ops={num_ops}, "
                f"magnitude={magnitude}, max_level={max_level}, probability={probability}"
            )
        self.num_ops = num_ops
        self.magnitude = magnitude
        self.operations = list(operations)
        self.probability = probability
        self.max_level = max_level
        self.translate_pixels = translate_pixels
        self.fill = tuple(fill)

    def _signed(self, value: float, rng: np.random.Generator) -> float:
        return -value if rng.random() > 0.5 else value

    def apply(self, name: str, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Apply one named operation at `magnitude` to a uint8 `(H, W, 3)` array (random signs drawn from `rng`)."""
        level = self.magnitude / self.max_level
        if name == "Identity":
            return image
        if name == "AutoContrast":
            return _autocontrast(image)
        if name == "Equalize":
            return _equalize(image)
        if name == "Brightness":
            return _brightness(image, level * 1.8 + 0.1)
        if name == "Sharpness":
            return _sharpness(image, level * 1.8 + 0.1)
        if name == "ShearX":
            return _shear_x(image, self._signed(level * 0.3, rng), self.fill)
        if name == "ShearY":
            return _shear_y(image, self._signed(level * 0.3, rng), self.fill)
        if name == "TranslateX":
            return _translate_x(image, self._signed(level * self.translate_pixels, rng), self.fill)
        if name == "TranslateY":
            return _translate_y(image, self._signed(level * self.translate_pixels, rng), self.fill)
        if name == "Rotate":
            return _rotate(image, self._signed(level * 30, rng), self.fill)
        raise ValueError(f"unknown operation {name!r}; choose from {self.OPERATIONS}")

    def __call__(self, image: Image.Image, rng: np.random.Generator | None = None) -> Image.Image:
        rng = _as_generator(rng)
        pixels = np.asarray(load_image(image))
        for name in rng.choice(self.operations, self.num_ops):
            if rng.random() > self.probability:
                continue
            pixels = self.apply(str(name), pixels, rng)
        return Image.fromarray(pixels)


# ----------------------------------------------------------------------------------------------------------------------
# Crops and the task transforms
# ----------------------------------------------------------------------------------------------------------------------


def random_resized_crop_box(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[int, int, int, int]:
    """
    The crop of torchvision's `RandomResizedCrop.get_params` as `(left, top, crop_width, crop_height)`: up to 10 draws
    of an area fraction in `scale` and a log-uniform aspect ratio in `ratio`; otherwise the largest centred crop whose
    aspect ratio is within `ratio`.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect_ratio = math.exp(rng.uniform(*log_ratio))
        crop_width = round(math.sqrt(target_area * aspect_ratio))
        crop_height = round(math.sqrt(target_area / aspect_ratio))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = int(rng.integers(0, height - crop_height + 1))
            left = int(rng.integers(0, width - crop_width + 1))
            return left, top, crop_width, crop_height
    in_ratio = width / height
    if in_ratio < min(ratio):
        crop_width, crop_height = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        crop_width, crop_height = round(height * max(ratio)), height
    else:
        crop_width, crop_height = width, height
    return (width - crop_width) // 2, (height - crop_height) // 2, crop_width, crop_height


class MPLUGTrainAugmentation:
    r"""
    The original training image transform up to the tensor conversion: RandomResizedCrop to `image_size` (bicubic) →
    horizontal flip with probability 0.5 → [`RandomAugment`]. The result is a PIL image of `image_size`² that
    [`MPLUGImageProcessor`] then only normalises (its resize to the same size is a no-op).

    Args:
        image_size (`int`): output side.
        scale (`tuple[float, float]`): crop area fraction range; (0.5, 1.0) fine-tuning, (0.2, 1.0) pretraining.
        ratio (`tuple[float, float]`): crop aspect-ratio range.
        horizontal_flip (`bool`): flip with probability 0.5.
        rand_augment ([`RandomAugment`] or `bool`): the operations (`True`: the original `RandomAugment(2, 7)`,
            `False`: none).
    """

    def __init__(
        self,
        image_size: int,
        scale: tuple[float, float] = (0.5, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        horizontal_flip: bool = True,
        rand_augment: RandomAugment | bool = True,
    ):
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < low <= high, got {ratio}")
        self.image_size = image_size
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.horizontal_flip = horizontal_flip
        self.rand_augment = RandomAugment() if rand_augment is True else rand_augment or None

    @classmethod
    def for_pretraining(cls, image_size: int, **kwargs) -> "MPLUGTrainAugmentation":
        """The original `pretrain_transform`: crop scale 0.2–1."""
        return cls(image_size, scale=(0.2, 1.0), **kwargs)

    def __call__(self, image, rng: np.random.Generator | None = None) -> Image.Image:
        rng = _as_generator(rng)
        image = load_image(image)
        left, top, width, height = random_resized_crop_box(image.width, image.height, self.scale, self.ratio, rng)
        image = image.resize(
            (self.image_size, self.image_size),
            resample=Image.Resampling.BICUBIC,
            box=(left, top, left + width, top + height),
        )
        if self.horizontal_flip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return self.rand_augment(image, rng) if self.rand_augment is not None else image


# The original swaps the substrings "left"/"right" ("bright" becomes "bleft"); only whole words and word starts
# ("leftmost", "right-hand") are swapped here.
_LEFT_RIGHT = re.compile(r"(?<![a-z])(left|right)", flags=re.IGNORECASE)
# A query naming a direction never takes the crop path (the original's RandomSelect).
_DIRECTION_WORDS = ("left", "right", "top", "bottom", "middle")


def swap_left_right(text: str) -> str:
    """Swap the words "left" and "right" (keeping their case), as a horizontal flip changes what the text refers to."""

    def swap(match: re.Match) -> str:
        word = match.group(1)
        replacement = "right" if word.lower() == "left" else "left"
        return replacement.capitalize() if word[0].isupper() else replacement

    return _LEFT_RIGHT.sub(swap, text)


class MPLUGGroundingAugmentation:
    r"""
    The original grounding training transform (`make_transforms(train)` with `aug_scale`, `aug_crop`,
    `aug_translate`, no blur):

    1. resize the long side to one of `scales` (default `image_size − k · (image_size // 20)`, k = 0..6); with
       probability `crop_probability`, unless the query names a direction, first resize the short side to one of
       `crop_resize_sizes` and take a random crop of `crop_min_size`–`crop_max_size` pixels (kept only when the box
       centre lies right of and below the crop corner; the box is clipped to the crop);
    2. colour jitter with probability 0.8: brightness, contrast and saturation factors in [1 − j, 1 + j], random order;
    3. horizontal flip with probability 0.5: image, box, and "left" ↔ "right" in the query;
    4. normalise (CLIP mean/std, as the original's training; its evaluation uses ImageNet statistics — see
       [`MPLUGImageProcessor`]) and paste at a random offset on a zero `image_size`² square.

    Deliberate differences: the crop check compares the box centre with the crop's left/top (the original compares
    x with the top and y with the left), and only whole words "left"/"right" are swapped.

    Returns from `__call__`: `(pixel_values (3, S, S) float32, box (4,) normalised (cx, cy, w, h), query)`.
    """

    def __init__(
        self,
        image_size: int,
        scales: Sequence[int] | None = None,
        crop_probability: float = 0.5,
        crop_resize_sizes: Sequence[int] = (400, 500, 600),
        crop_min_size: int = 384,
        crop_max_size: int = 600,
        color_jitter: float = 0.4,
        random_translate: bool = True,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
    ):
        self.image_size = image_size
        self.scales = list(scales) if scales is not None else [image_size - (image_size // 20) * k for k in range(7)]
        if not self.scales or max(self.scales) > image_size or min(self.scales) < 1:
            raise ValueError(f"scales must be sides in 1..{image_size}, got {self.scales}")
        self.crop_probability = crop_probability
        self.crop_resize_sizes = list(crop_resize_sizes)
        self.crop_min_size = crop_min_size
        self.crop_max_size = crop_max_size
        self.color_jitter = color_jitter
        self.random_translate = random_translate
        self.image_mean = np.asarray(image_mean, dtype=np.float32)
        self.image_std = np.asarray(image_std, dtype=np.float32)

    @staticmethod
    def _resize(image: Image.Image, box: np.ndarray, side: int, long_side: bool) -> tuple[Image.Image, np.ndarray]:
        reference = max(image.size) if long_side else min(image.size)
        ratio = side / reference
        size = (max(1, round(image.width * ratio)), max(1, round(image.height * ratio)))
        return image.resize(size, resample=Image.Resampling.BILINEAR), box * ratio

    def _random_crop(self, image: Image.Image, box: np.ndarray, rng) -> tuple[Image.Image, np.ndarray]:
        image, box = self._resize(image, box, int(rng.choice(self.crop_resize_sizes)), long_side=False)
        if min(image.size) < self.crop_min_size:
            return image, box
        centre = (box[:2] + box[2:]) / 2
        for _ in range(20):
            width = int(rng.integers(self.crop_min_size, min(image.width, self.crop_max_size) + 1))
            height = int(rng.integers(self.crop_min_size, min(image.height, self.crop_max_size) + 1))
            top = int(rng.integers(0, image.height - height + 1))
            left = int(rng.integers(0, image.width - width + 1))
            if centre[0] > left and centre[1] > top:
                cropped = box - np.array([left, top, left, top], dtype=np.float32)
                cropped = np.minimum(cropped.reshape(2, 2), [width, height]).clip(min=0).reshape(-1)
                return image.crop((left, top, left + width, top + height)), cropped
        return image, box

    def _jitter(self, image: Image.Image, rng) -> Image.Image:
        if rng.random() >= 0.8:
            return image
        enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
        for index in rng.permutation(3):
            factor = rng.uniform(1 - self.color_jitter, 1 + self.color_jitter)
            image = enhancers[index](image).enhance(factor)
        return image

    def __call__(
        self, image, box_xyxy: Sequence[float], text: str, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray, str]:
        rng = _as_generator(rng)
        image = load_image(image)
        box = np.asarray(box_xyxy, dtype=np.float32).reshape(-1)
        if box.shape != (4,) or (box[2:] < box[:2]).any():
            raise ValueError(f"box must be pixel (x1, y1, x2, y2) with x2 >= x1 and y2 >= y1, got {list(box_xyxy)}")
        names_direction = any(word in text.lower() for word in _DIRECTION_WORDS)
        if not names_direction and rng.random() < self.crop_probability:
            image, box = self._random_crop(image, box, rng)
        image, box = self._resize(image, box, int(rng.choice(self.scales)), long_side=True)
        image = self._jitter(image, rng)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            box = np.array([image.width - box[2], box[1], image.width - box[0], box[3]], dtype=np.float32)
            text = swap_left_right(text)
        pixels = (np.asarray(image, dtype=np.float32) / 255.0 - self.image_mean) / self.image_std
        gap_x, gap_y = self.image_size - image.width, self.image_size - image.height
        if self.random_translate:
            top, left = int(rng.integers(0, gap_y + 1)), int(rng.integers(0, gap_x + 1))
        else:
            top, left = round(gap_y / 2.0 - 0.1), round(gap_x / 2.0 - 0.1)
        padded = np.zeros((3, self.image_size, self.image_size), dtype=np.float32)
        padded[:, top : top + image.height, left : left + image.width] = pixels.transpose(2, 0, 1)
        box = (box + np.array([left, top, left, top], dtype=np.float32)) / self.image_size
        box_cxcywh = np.concatenate([(box[:2] + box[2:]) / 2, box[2:] - box[:2]]).astype(np.float32)
        return padded, box_cxcywh, text


__all__ = [
    "MPLUGGroundingAugmentation",
    "MPLUGTrainAugmentation",
    "RandomAugment",
    "random_resized_crop_box",
    "swap_left_right",
]
