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
"""Processor for mPLUG: image processor + bert-base-uncased WordPiece tokenizer."""

import os

import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import BertTokenizer
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, TextKwargs, Unpack
from transformers.utils import auto_docstring, logging

from .image_processing_mplug import MPLUGImageProcessor, MPLUGImageProcessorKwargs


logger = logging.get_logger(__name__)

VOCAB_FILE = os.path.join(os.path.dirname(__file__), "data", "bert-base-uncased-vocab.txt")


def default_tokenizer(vocab_file: str = VOCAB_FILE) -> BertTokenizer:
    """The bert-base-uncased tokenizer mPLUG was trained with, built from the vocabulary shipped in this package, or
    the same (lower-casing) BERT tokenizer over another WordPiece `vocab_file`."""
    return BertTokenizer(vocab=vocab_file, do_lower_case=True, model_max_length=512)


class MPLUGProcessorKwargs(ProcessingKwargs, total=False):
    images_kwargs: MPLUGImageProcessorKwargs


# Text options the original-convention encoding cannot honour: refused instead of silently ignored.
_UNSUPPORTED_TEXT_KWARGS = {
    "text_pair": "mPLUG encodes single texts",
    "text_pair_target": "mPLUG encodes single texts",
    "text_target": "build decoder targets with processor.encode_targets(texts), which ends them with [SEP] and marks "
    "padding -100 in `labels`",
    "stride": "overflowing windows are not produced",
    "is_split_into_words": "pass the text as a string",
    "return_overflowing_tokens": "overflowing windows are not produced",
    "return_special_tokens_mask": "not produced by mPLUG's encoding",
    "return_offsets_mapping": "not produced by mPLUG's encoding",
    "return_length": "not produced by mPLUG's encoding",
    "return_mm_token_type_ids": "mPLUG has no multimodal placeholder tokens",
    "return_text_replacement_offsets": "mPLUG has no multimodal placeholder tokens",
    "sanitize_control_tokens": "mPLUG has no multimodal placeholder tokens",
}


@auto_docstring(
    custom_intro="""
    Wraps [`MPLUGImageProcessor`] and a bert-base-uncased tokenizer.

    **Tokenization convention.** The original mPLUG tokenizer builds a single text as `[CLS] text` *without* a
    trailing `[SEP]`, and the released weights were trained on questions, captions and queries encoded that way. With
    `text_convention="original"` (the default) this processor reproduces it exactly, truncation included (`[CLS]` plus
    the first `max_length - 1` word pieces). `text_convention="bert"` gives the standard `[CLS] text [SEP]`.
    Decoder targets (answers, captions) are always `[CLS] text [SEP]` (see [`~MPLUGProcessor.encode_targets`]); as in
    the original, a target longer than `max_length` loses its `[SEP]`.

    Keyword arguments follow transformers' processor conventions: `text_kwargs={...}` / `images_kwargs={...}` or flat
    keywords routed to the modality that takes them (`max_length`, `padding` → text; `mode`, `size`, `image_mean`, … →
    images); a keyword given both ways raises, one that no modality takes is ignored with a warning (as transformers'
    pipelines pass their generation keywords along).
    """
)
class MPLUGProcessor(ProcessorMixin):
    valid_processor_kwargs = MPLUGProcessorKwargs
    text_kwargs = {"padding": "longest", "return_tensors": "pt"}
    images_kwargs = {"return_tensors": "pt"}

    def __init__(self, image_processor=None, tokenizer=None, text_convention: str = "original", **kwargs):
        r"""
        text_convention (`str`, *optional*, defaults to `"original"`):
            `"original"` (`[CLS] text`, as the released weights were trained) or `"bert"` (`[CLS] text [SEP]`).
        """
        if text_convention not in ("original", "bert"):
            raise ValueError(f"text_convention must be 'original' or 'bert', got {text_convention!r}")
        image_processor = image_processor if image_processor is not None else MPLUGImageProcessor()
        tokenizer = tokenizer if tokenizer is not None else default_tokenizer()
        self.text_convention = text_convention
        super().__init__(image_processor, tokenizer, **kwargs)

    @staticmethod
    def _validate_texts(text) -> list[str]:
        texts = [text] if isinstance(text, str) else text
        if not isinstance(texts, (list, tuple)) or not texts:
            raise ValueError(f"text must be a string or a non-empty list of strings, got {type(text).__name__}")
        for item in texts:
            if not isinstance(item, str):
                raise ValueError(f"text must contain strings, got {type(item).__name__}")
            if not item.strip():
                raise ValueError("text is empty (or whitespace only); give a question, caption or query")
        return list(texts)

    def _encode(
        self,
        texts: list[str],
        max_length: int | None,
        append_sep: bool,
        padding="longest",
        truncation=None,
        add_special_tokens: bool | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_attention_mask: bool | None = None,
        return_token_type_ids: bool | None = None,
        return_tensors="pt",
        **unused,
    ) -> BatchFeature:
        """`[CLS] pieces ([SEP])`, truncated to `max_length` the original way (the [SEP] is cut first), padded."""
        unknown = sorted(set(unused) - set(TextKwargs.__annotations__))
        if unknown:
            raise TypeError(f"unexpected text keyword argument(s) {', '.join(unknown)}")
        for key, value in unused.items():
            if key in _UNSUPPORTED_TEXT_KWARGS and value not in (None, False):
                raise ValueError(f"{key} is not supported by MPLUGProcessor: {_UNSUPPORTED_TEXT_KWARGS[key]}")
        tokenizer = self.tokenizer
        # [CLS] plus at least one word piece: a shorter limit would cut the whole text away
        shortest = 2 if add_special_tokens is not False else 1
        if max_length is not None and (
            isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < shortest
        ):
            raise ValueError(
                f"max_length must be an integer >= {shortest} (the [CLS] and the text), got {max_length!r}"
            )
        truncate = truncation not in (False, "do_not_truncate")
        limit = max_length if max_length is not None else tokenizer.model_max_length
        rows = []
        for text in texts:
            row = tokenizer(text, add_special_tokens=False)["input_ids"]
            if add_special_tokens is not False:
                row = [tokenizer.cls_token_id] + row + ([tokenizer.sep_token_id] if append_sep else [])
            if truncate and len(row) > limit:
                if max_length is None:
                    logger.warning(
                        f"text of {len(row)} tokens is longer than the model's {limit}: truncated (pass max_length "
                        "to choose the length)"
                    )
                row = row[:limit]
            rows.append(row)
        padded = tokenizer.pad(
            {"input_ids": rows},
            padding=padding,
            max_length=max_length,
            pad_to_multiple_of=pad_to_multiple_of,
            padding_side=padding_side,
            return_attention_mask=True,
            return_tensors=return_tensors,
        )
        data = {"input_ids": padded["input_ids"]}
        if return_attention_mask is not False:
            data["attention_mask"] = padded["attention_mask"]
        if return_token_type_ids:
            data["token_type_ids"] = [[0] * len(row) for row in padded["input_ids"]]
        return BatchFeature(data, tensor_type=return_tensors)

    def encode_text(self, text, max_length: int | None = None, padding="longest", **kwargs) -> BatchFeature:
        """Encode questions / queries / retrieval texts with the processor's convention."""
        texts = self._validate_texts(text)
        return self._encode(texts, max_length, append_sep=self.text_convention == "bert", padding=padding, **kwargs)

    def encode_targets(self, text, max_length: int | None = None, padding="longest") -> BatchFeature:
        """
        Encode decoder targets as `[CLS] text [SEP]` and add `labels` (pads → -100), the original's answers/captions.
        """
        texts = self._validate_texts(text)
        encoded = self._encode(texts, max_length, append_sep=True, padding=padding)
        encoded["labels"] = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
        return encoded

    @auto_docstring
    def __call__(
        self,
        images=None,
        text: str | list[str] | None = None,
        **kwargs: Unpack[MPLUGProcessorKwargs],
    ) -> BatchFeature:
        r"""
        images: image(s) or video(s) for [`MPLUGImageProcessor`] (PIL images, paths, URLs, arrays, tensors; a list of
            frame lists for videos).
        text: a string or list of strings (questions, queries, texts to score). `""` means no text (captioning):
            `input_ids` is then the `[CLS]` decoder start alone.

        Returns:
            [`BatchFeature`]: `pixel_values` (grounding: and `image_sizes`), `input_ids`, `attention_mask` (each when
            given); PyTorch tensors unless `return_tensors` says otherwise.
        """
        if images is None and text is None:
            raise ValueError("give images, text or both")
        try:
            output_kwargs = self._merge_kwargs(
                MPLUGProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs
            )
        except StrictDataclassError as error:
            raise ValueError(f"invalid processor argument: {error}") from error
        text_kwargs, images_kwargs = output_kwargs["text_kwargs"], output_kwargs["images_kwargs"]
        return_tensors = text_kwargs.get("return_tensors") if text is not None else images_kwargs.get("return_tensors")
        data = {}
        if images is not None:
            data.update(self.image_processor(images, **images_kwargs))
        num_images = len(data["pixel_values"]) if images is not None else None
        captioning_prompt = text == "" or (isinstance(text, (list, tuple)) and text and all(t == "" for t in text))
        if text is not None and not captioning_prompt:
            text_kwargs = {**text_kwargs, "return_tensors": None}
            encoded = self.encode_text(text, **text_kwargs)
            if num_images is not None and num_images != len(encoded["input_ids"]):
                raise ValueError(f"batch size mismatch: {num_images} images but {len(encoded['input_ids'])} texts")
            data.update(encoded)
        elif captioning_prompt:
            # The empty prompt is the decoder start alone, so generate() captions from [CLS] and the image-text-to-text
            # pipeline, which reads input_ids, takes text="".
            count = num_images if num_images is not None else (1 if isinstance(text, str) else len(text))
            data["input_ids"] = [[self.tokenizer.cls_token_id] for _ in range(count)]
        return BatchFeature(data, tensor_type=return_tensors)

    def post_process_grounding(self, pred_boxes, image_sizes=None) -> torch.Tensor:
        """
        Pixel (x1, y1, x2, y2) boxes of the input images from the normalised `pred_boxes` of [`MPLUGForGrounding`]
        (cx, cy, w, h) on the padded square; see [`MPLUGImageProcessor.post_process_grounding`].
        """
        return self.image_processor.post_process_grounding(pred_boxes, image_sizes)

    def batch_decode(self, sequences, skip_special_tokens: bool = False, **kwargs) -> list[str]:
        """
        With `skip_special_tokens=True` (or through `post_process_image_text_to_text`, which answers and captions
        use), the answer / caption strings the original's evaluation and ModelScope's mPLUG pipeline write (transformers 4's
        BERT decoding): word pieces joined, tokenization spaces cleaned up (`"isn't"`, not `"isn ' t"`; `"no, it"`),
        and a leading `##` piece joined to the `[CLS]` before it, so removed with it (`"##ing dog"` → `"ing dog"`).
        Negative ids (the -100 of label padding) are dropped. Keyword arguments go to the tokenizer's `batch_decode`.
        """
        if hasattr(sequences, "tolist"):  # tensors and numpy arrays
            sequences = sequences.tolist()
        if not isinstance(sequences, (list, tuple)) or not all(isinstance(row, (list, tuple)) for row in sequences):
            raise ValueError(
                "batch_decode takes a batch of id sequences (a 2-D tensor or a list of lists); decode one sequence "
                "with decode()"
            )
        if not all(isinstance(token, int) and not isinstance(token, bool) for row in sequences for token in row):
            raise ValueError("the sequences to decode must hold integer token ids")
        # an id the tokenizer does not know would vanish from the text (a model whose vocabulary outgrew it)
        unknown = sorted({token for row in sequences for token in row if token >= len(self.tokenizer)})
        if unknown:
            raise ValueError(
                f"ids {unknown[:5]} are outside the tokenizer's vocabulary of {len(self.tokenizer)}: decode with the "
                "tokenizer the model was trained with"
            )
        kwargs.setdefault("clean_up_tokenization_spaces", True)
        cleaned = [[token for token in row if token >= 0] for row in sequences]
        texts = self.tokenizer.batch_decode(cleaned, skip_special_tokens=skip_special_tokens, **kwargs)
        return [text.strip().removeprefix("##") for text in texts]

    def decode(self, sequence, skip_special_tokens: bool = False, **kwargs) -> str:
        """One id sequence as [`~MPLUGProcessor.batch_decode`] writes it."""
        if hasattr(sequence, "tolist"):
            sequence = sequence.tolist()
        return self.batch_decode([sequence], skip_special_tokens=skip_special_tokens, **kwargs)[0]

    def post_process_image_text_to_text(
        self, generated_outputs, skip_special_tokens: bool = True, **kwargs
    ) -> list[str]:
        return self.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]


__all__ = ["MPLUGProcessor", "default_tokenizer"]
