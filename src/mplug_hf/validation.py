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
"""Checks at the model's boundary: every public forward names the problem with its inputs instead of failing deep
inside torch (or returning a wrong answer)."""

import warnings
from collections.abc import Callable, Mapping

import torch
from torch import nn
from transformers.utils import TransformersKwargs

from .configuration_mplug import MPLUGTextConfig, MPLUGVisionConfig


# Keyword arguments every forward accepts besides its own: transformers' shared ones (output capture, attention
# backends). Anything else is a typo or a removed argument and raises instead of being ignored.
SHARED_FORWARD_KWARGS = frozenset(TransformersKwargs.__annotations__)


def check_forward_kwargs(kwargs: dict, owner: nn.Module) -> None:
    """Raise a TypeError for keyword arguments `owner.forward` does not know. BERT tokenizers' `token_type_ids` are
    accepted (and dropped) when all zero, the only token type mPLUG has."""
    token_type_ids = kwargs.pop("token_type_ids", None)
    if token_type_ids is not None and bool(torch.as_tensor(token_type_ids).ne(0).any()):
        raise ValueError("mPLUG has a single token type: token_type_ids must be all zeros (or left out)")
    unknown = sorted(set(kwargs) - SHARED_FORWARD_KWARGS)
    if unknown:
        raise TypeError(f"{type(owner).__name__}.forward() got unexpected keyword arguments: {', '.join(unknown)}")


def validate_pixel_values(pixel_values: torch.Tensor | None, config: MPLUGVisionConfig, interpolate: bool) -> None:
    """Raise a ValueError naming the problem when `pixel_values` cannot be an image (or video) batch."""
    if pixel_values is None:
        raise ValueError("pixel_values is required (batch, channels, height, width) or (batch, frames, C, H, W)")
    if not torch.is_tensor(pixel_values) or not pixel_values.is_floating_point():
        raise ValueError(
            f"pixel_values must be a float tensor, got {getattr(pixel_values, 'dtype', type(pixel_values))}"
        )
    if pixel_values.ndim not in (4, 5) or pixel_values.shape[-3] != config.num_channels or pixel_values.shape[0] == 0:
        raise ValueError(
            f"pixel_values must have shape (batch >= 1, {config.num_channels}, H, W) or (batch, frames, "
            f"{config.num_channels}, H, W), got {tuple(pixel_values.shape)}"
        )
    if not bool(torch.isfinite(pixel_values).all()):
        raise ValueError("pixel_values contain NaN or infinite values (a broken image or a failed normalisation)")
    height, width = pixel_values.shape[-2:]
    if not interpolate and (height, width) != (config.image_size, config.image_size):
        raise ValueError(
            f"pixel_values are {height}x{width} but the model expects {config.image_size}x{config.image_size}; "
            "resize with the processor, or pass interpolate_pos_encoding=True"
        )
    if interpolate and (height % config.patch_size or width % config.patch_size or height != width):
        raise ValueError(
            f"interpolated pixel_values must be square multiples of {config.patch_size}, got {height}x{width}"
        )


def validate_text_inputs(
    input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, config: MPLUGTextConfig, name="input_ids"
) -> None:
    """Raise a ValueError naming the problem when `input_ids` / `attention_mask` cannot be a text batch."""
    if input_ids is None:
        raise ValueError(f"{name} (the tokenized text) is required")
    if not torch.is_tensor(input_ids) or input_ids.is_floating_point() or input_ids.is_complex():
        raise ValueError(f"{name} must be an integer tensor, got {getattr(input_ids, 'dtype', type(input_ids))}")
    if input_ids.ndim != 2 or 0 in input_ids.shape:
        raise ValueError(f"{name} must be (batch >= 1, length >= 1), got shape {tuple(input_ids.shape)}")
    if bool((input_ids < 0).any()) or bool((input_ids >= config.vocab_size).any()):
        raise ValueError(
            f"{name} holds ids outside the vocabulary [0, {config.vocab_size}): min {int(input_ids.min())}, "
            f"max {int(input_ids.max())}"
        )
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} does not match {name} {tuple(input_ids.shape)}"
        )


def validate_target_labels(labels: torch.LongTensor | None, config) -> torch.LongTensor | None:
    """
    Decoder targets as the heads train on them: `[CLS] text [SEP]` with -100 where no loss is wanted. The BLIP habit
    `labels=processor(text=answer).input_ids` gives `[CLS] text` padded with [PAD]: padding is never a target, so
    [PAD] becomes -100, but a padded row without an end token would teach the decoder never to stop, so it is
    refused with the recipe that builds them (`processor.encode_targets`); rows cut by truncation are kept.
    """
    if labels is None:
        return None
    if not torch.is_tensor(labels) or labels.is_floating_point() or labels.ndim != 2 or 0 in labels.shape:
        raise ValueError(
            f"labels must be integer ids of shape (num_targets, length), got {getattr(labels, 'shape', labels)}"
        )
    vocab_size = config.text_config.vocab_size
    if bool(((labels != -100) & ((labels < 0) | (labels >= vocab_size))).any()):
        raise ValueError(f"labels hold ids outside the vocabulary [0, {vocab_size}) (other than -100)")
    labels = labels.masked_fill(labels == config.pad_token_id, -100)
    # a row that ends in padding but never in [SEP] lost its end token; a full row without it was truncated
    unended = ~(labels == config.eos_token_id).any(dim=1) & (labels[:, -1] == -100)
    if bool(unended.any()):
        raise ValueError(
            f"{int(unended.sum())} of {labels.shape[0]} padded label rows have no end token [SEP] (id "
            f"{config.eos_token_id}), so the decoder would learn never to stop: build targets with "
            "processor.encode_targets(texts), which gives [CLS] text [SEP] and -100 on padding"
        )
    return labels


def describe_nonfinite(tensors: Mapping[str, torch.Tensor], where: str) -> str | None:
    """`"N tensor(s) {where} hold NaN or inf values: a, b, ..."` naming at most ten of the floating-point `tensors`
    holding NaN or ±inf, or None when all are finite (tensors on the meta device hold no values)."""
    bad = [
        name
        for name, value in tensors.items()
        if torch.is_tensor(value)
        and value.is_floating_point()
        and value.device.type != "meta"
        and not bool(torch.isfinite(value).all())
    ]
    if not bad:
        return None
    shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
    return f"{len(bad)} tensor(s) {where} hold NaN or inf values: {shown}"


def load_with_finite_weights(
    load: Callable, pretrained_model_name_or_path, *model_args, allow_nonfinite: bool = False, **kwargs
):
    """
    `load(pretrained_model_name_or_path, *model_args, **kwargs)` (a `from_pretrained`), refusing a model whose
    weights hold NaN or ±inf: it would answer, rank and ground without a word, every output meaningless. Raises a
    ValueError naming the tensors; `allow_nonfinite=True` loads the model anyway and only warns, naming them.
    """
    loaded = load(pretrained_model_name_or_path, *model_args, **kwargs)
    model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True
    message = describe_nonfinite(
        {**dict(model.named_parameters()), **dict(model.named_buffers())},
        f"loaded from {pretrained_model_name_or_path}",
    )
    if message is None:
        return loaded
    if not allow_nonfinite:
        raise ValueError(
            f"{message}. The checkpoint is damaged, was saved after training diverged, or holds values outside the "
            "range of the dtype it was loaded in; pass allow_nonfinite=True to load it anyway"
        )
    warnings.warn(message, stacklevel=3)
    return loaded


# What the task functions need of a head, told by its parts rather than its class (the same head loaded as remote code
# is another class). The grounding and pre-training heads also decode over the fused memory, but they are not
# encoder-decoders: their decoders write boxes and captions, not answers.
HEAD_SIGNATURES = {
    "MPLUGForQuestionAnswering": lambda model: (
        bool(getattr(model, "is_encoder_decoder_model", False))
        and hasattr(model, "mplug")
        and hasattr(model, "text_decoder")
    ),
    "MPLUGForCaptioning": lambda model: hasattr(model, "vision_model") and hasattr(model, "text_decoder"),
    "MPLUGForRetrieval": lambda model: hasattr(model, "contrastive") and hasattr(model, "get_image_features"),
}


def is_head(model, expected: str) -> bool:
    """Whether `model` is the head `expected` (a key of `HEAD_SIGNATURES`) as far as the task functions are concerned."""
    return HEAD_SIGNATURES[expected](model)


def check_head(model, function: str, expected: str) -> None:
    """A task function over a head refuses any other model by name (instead of an AttributeError deep inside, or a
    silent answer from a decoder trained for another task)."""
    if not is_head(model, expected):
        raise TypeError(f"{function} needs a {expected}, got {type(model).__name__}")
