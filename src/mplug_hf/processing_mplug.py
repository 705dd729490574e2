"""Processor for mPLUG: image processor + bert-base-uncased WordPiece tokenizer."""

import os

import torch
from transformers import BertTokenizer
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging

from .image_processing_mplug import MPLUGImageProcessor


logger = logging.get_logger(__name__)

VOCAB_FILE = os.path.join(os.path.dirname(__file__), "data", "bert-base-uncased-vocab.txt")


def default_tokenizer(vocab_file: str = VOCAB_FILE) -> BertTokenizer:
    """The bert-base-uncased tokenizer mPLUG was trained with, built from the vocabulary shipped in this package, or
    the same (lower-casing) BERT tokenizer over another WordPiece `vocab_file`."""
    return BertTokenizer(vocab=vocab_file, do_lower_case=True, model_max_length=512)


class MPLUGProcessor(ProcessorMixin):
    r"""
    Wraps [`MPLUGImageProcessor`] and a bert-base-uncased tokenizer.

    **Tokenization convention.** The original mPLUG tokenizer builds a single text as `[CLS] text` *without* a
    trailing `[SEP]`, and the released weights were trained on questions, captions and queries encoded that way. With
    `text_convention="original"` (the default) this processor reproduces it exactly, truncation included (`[CLS]` plus
    the first `max_length - 1` word pieces). `text_convention="bert"` gives the standard `[CLS] text [SEP]`.
    Decoder targets (answers, captions) are always `[CLS] text [SEP]` (see [`~MPLUGProcessor.encode_targets`]); as in
    the original, a target longer than `max_length` loses its `[SEP]`.

    Args:
        image_processor ([`MPLUGImageProcessor`]): the image transform.
        tokenizer ([`BertTokenizer`]): the WordPiece tokenizer.
        text_convention (`str`): `"original"` or `"bert"` (see above).
    """

    def __init__(self, image_processor=None, tokenizer=None, text_convention: str = "original", **kwargs):
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

    def _encode(self, texts: list[str], max_length: int | None, append_sep: bool, padding) -> BatchFeature:
        """`[CLS] pieces ([SEP])`, truncated to `max_length` the original way (the [SEP] is cut first), padded."""
        tokenizer = self.tokenizer
        limit = max_length if max_length is not None else tokenizer.model_max_length
        rows = []
        for text in texts:
            pieces = tokenizer(text, add_special_tokens=False)["input_ids"]
            if append_sep:
                pieces = pieces + [tokenizer.sep_token_id]
            row = [tokenizer.cls_token_id] + pieces
            if len(row) > limit:
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
            return_attention_mask=True,
            return_tensors="pt",
        )
        return BatchFeature({"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]})

    def encode_text(self, text, max_length: int | None = None, padding="longest") -> BatchFeature:
        """Encode questions / queries / retrieval texts with the processor's convention."""
        texts = self._validate_texts(text)
        return self._encode(texts, max_length, append_sep=self.text_convention == "bert", padding=padding)

    def encode_targets(self, text, max_length: int | None = None, padding="longest") -> BatchFeature:
        """
        Encode decoder targets as `[CLS] text [SEP]` and add `labels` (pads → -100), the original's answers/captions.
        """
        texts = self._validate_texts(text)
        encoded = self._encode(texts, max_length, append_sep=True, padding=padding)
        encoded["labels"] = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
        return encoded

    def __call__(
        self,
        images=None,
        text=None,
        max_length: int | None = None,
        padding="longest",
        mode: str = "default",
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """
        Args:
            images: image(s) or video(s) for [`MPLUGImageProcessor`].
            text: a string or list of strings (questions, queries, texts to score). `""` means no text (captioning):
                `input_ids` is then the `[CLS]` decoder start alone.
            max_length: truncate texts to this many tokens.
            mode: image transform, `"default"` or `"grounding"`.
        Returns:
            `pixel_values`, `input_ids`, `attention_mask` (each when given).
        """
        if images is None and text is None:
            raise ValueError("give images, text or both")
        data = {}
        if images is not None:
            data.update(self.image_processor(images, mode=mode, return_tensors="pt"))
        captioning_prompt = text == "" or (isinstance(text, (list, tuple)) and text and all(t == "" for t in text))
        if text is not None and not captioning_prompt:
            data.update(self.encode_text(text, max_length=max_length, padding=padding))
            if images is not None and data["pixel_values"].shape[0] != data["input_ids"].shape[0]:
                raise ValueError(
                    f"batch size mismatch: {data['pixel_values'].shape[0]} images but {data['input_ids'].shape[0]} texts"
                )
        elif captioning_prompt:
            # The empty prompt is the decoder start alone, so generate() captions from [CLS] and the image-text-to-text
            # pipeline, which reads input_ids, takes text="".
            prompts = [text] if isinstance(text, str) else text
            count = data["pixel_values"].shape[0] if images is not None else len(prompts)
            data["input_ids"] = torch.full((count, 1), self.tokenizer.cls_token_id, dtype=torch.long)
        return BatchFeature(data, tensor_type=return_tensors)

    def batch_decode(self, sequences, skip_special_tokens: bool = True, **kwargs) -> list[str]:
        if torch.is_tensor(sequences):
            sequences = sequences.tolist()
        cleaned = [[token for token in row if token >= 0] for row in sequences]
        return [
            text.strip()
            for text in self.tokenizer.batch_decode(cleaned, skip_special_tokens=skip_special_tokens, **kwargs)
        ]

    def decode(self, sequence, skip_special_tokens: bool = True, **kwargs) -> str:
        return self.batch_decode([sequence], skip_special_tokens=skip_special_tokens, **kwargs)[0]

    def post_process_image_text_to_text(
        self, generated_outputs, skip_special_tokens: bool = True, **kwargs
    ) -> list[str]:
        return self.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]


__all__ = ["MPLUGProcessor", "default_tokenizer"]
