"""
Data collators for fine-tuning mPLUG with `Trainer`: each turns a list of raw examples (dicts holding a PIL image,
array or image path plus text) into the inputs of one head, through [`MPLUGProcessor`].

| collator | head | example keys (defaults) |
|---|---|---|
| [`MPLUGVQADataCollator`] | [`MPLUGForQuestionAnswering`] | `image`, `question`, `answer` (str or list), optional `answer_weights` |
| [`MPLUGCaptioningDataCollator`] | [`MPLUGForCaptioning`] | `image`, `caption` (str, or list: one drawn) |
| [`MPLUGRetrievalDataCollator`] | [`MPLUGForRetrieval`] | `image`, `caption`, optional `image_id` |
| [`MPLUGGroundingDataCollator`] | [`MPLUGForGrounding`] | `image`, `text`, `bbox` |
| [`MPLUGPreTrainingDataCollator`] | [`MPLUGForPreTraining`] | `image`, `caption` |

Targets are optional: without them a collator returns only what the model needs for inference. Training-time image
augmentation ([`mplug_hf.augmentation`]) is applied when given; its random draws are seeded from torch's global
generator, so `torch.manual_seed` (or `Trainer`'s seed and the RNG states it checkpoints) reproduces a run, and each
`DataLoader` worker draws differently.
"""

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers.feature_extraction_utils import BatchFeature

from .augmentation import MPLUGGroundingAugmentation
from .image_processing_mplug import load_image
from .processing_mplug import MPLUGProcessor


def normalize_caption(caption: str, max_words: int | None = 30) -> str:
    """The original `pre_caption`: lower-case, drop `,.'!?"()*#:;~`, `-` and `/` → space, collapse spaces, keep the
    first `max_words` words (retrieval and pretraining texts)."""
    caption = re.sub(r"([,.'!?\"()*#:;~])", "", caption.lower())
    caption = caption.replace("-", " ").replace("/", " ").replace("<person>", "person")
    words = re.sub(r"\s{2,}", " ", caption).strip().split(" ")
    return " ".join(words[:max_words] if max_words is not None else words)


def vqa_answer_weights(answers: Sequence[str]) -> tuple[list[str], list[float]]:
    """The original VQA targets: each distinct answer once, weighted by its share of the annotators' answers."""
    weights: dict[str, float] = {}
    for answer in answers:
        weights[answer] = weights.get(answer, 0.0) + 1.0 / len(answers)
    return list(weights), list(weights.values())


def _answer_text(answer, position: int, key: str) -> str:
    """An answer as text: numbers (VQA's `2`) become their string, anything else but a string is refused."""
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise ValueError(f"example {position} of the batch: each {key!r} must be a string, got {answer!r}")
    if isinstance(answer, float):
        if not math.isfinite(answer):
            raise ValueError(f"example {position} of the batch: {key!r} is {answer}, not an answer")
        answer = int(answer) if answer.is_integer() else answer
    return str(answer)


def _finite_weights(weights, position: int, key: str) -> list[float]:
    """`weights` as floats; NaN/inf, negative or non-numeric weights raise (they would train a NaN or inverted loss)."""
    values = []
    for weight in weights:
        try:
            value = float(weight)
        except (TypeError, ValueError):
            raise ValueError(f"example {position} of the batch: {key!r} must be numbers, got {weight!r}") from None
        if not math.isfinite(value) or value < 0 or isinstance(weight, bool):
            raise ValueError(
                f"example {position} of the batch: {key!r} holds {weight!r}; answer weights must be finite numbers"
                " >= 0 (a NaN weight makes the loss and then every trained weight NaN)"
            )
        values.append(value)
    return values


def _require(examples: Sequence[dict], key: str) -> list:
    missing = [index for index, example in enumerate(examples) if example.get(key) is None]
    if missing:
        raise ValueError(f"examples {missing[:5]} have no {key!r}; set the collator's key names to match the dataset")
    return [example[key] for example in examples]


def _draw_text(text, position: int, key: str, rng: np.random.Generator) -> str:
    """An example's text: a string, or one drawn from its non-empty list (the references of an image)."""
    if isinstance(text, str):
        return text
    if not isinstance(text, (list, tuple)) or not text:
        raise ValueError(
            f"example {position} of the batch: {key!r} must be a string or a non-empty list, got {text!r}"
        )
    return text[int(rng.integers(len(text)))]


def _normalized_texts(texts: Sequence, key: str) -> list[str]:
    """The original `pre_caption` of each text; a text it empties (punctuation only) is refused, not encoded as
    nothing."""
    normalized = []
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"example {position} of the batch: {key!r} must be a string, got {text!r}")
        normalized.append(normalize_caption(text))
        if not normalized[-1]:
            raise ValueError(f"example {position} of the batch: {key!r} {text!r} has no words once normalised")
    return normalized


def _has_all(examples: Sequence[dict], key: str) -> bool:
    present = [example.get(key) is not None for example in examples]
    if any(present) and not all(present):
        raise ValueError(f"{key!r} is given for some examples of the batch but not all")
    return all(present)


@dataclass
class MPLUGDataCollatorMixin:
    """
    Shared fields: the processor, an optional training augmentation, where relative image paths live and the key of
    the image column.
    """

    processor: MPLUGProcessor
    augmentation: Callable | None = None
    image_root: str | None = None
    image_key: str = "image"

    def __post_init__(self):
        if not isinstance(self.processor, MPLUGProcessor):
            raise ValueError(f"processor must be an MPLUGProcessor, got {type(self.processor).__name__}")

    def _generator(self) -> np.random.Generator:
        # Drawn from torch's global generator: seeded by Trainer, restored on resume, distinct per DataLoader worker.
        return np.random.default_rng(int(torch.randint(0, 2**62, ())))

    def _load_image(self, image):
        if isinstance(image, (str, os.PathLike)) and self.image_root is not None and not os.path.isabs(image):
            image = os.path.join(self.image_root, image)
        return load_image(image)

    def load_images(self, examples: Sequence[dict], rng: np.random.Generator | None = None) -> list:
        """The examples' images as PIL images, augmented when the collator has an augmentation."""
        images = [self._load_image(image) for image in _require(examples, self.image_key)]
        if self.augmentation is not None:
            images = [self.augmentation(image, rng) for image in images]
        return images


@dataclass
class MPLUGVQADataCollator(MPLUGDataCollatorMixin):
    r"""
    VQA with several weighted answers per question (the original `vqa_collate_fn`). An example's `answer` is a string
    or a list; a list without `answer_weights` becomes its distinct answers weighted by their frequency (VQA v2's 10
    annotators). Returns `pixel_values`, `input_ids`, `attention_mask` and, with answers, `labels`
    (`(num_answers, length)`, `[CLS] answer [SEP]`), `decoder_attention_mask`, `answer_counts`, `answer_weights` —
    the inputs of [`MPLUGForQuestionAnswering.forward`].

    Several questions about one image: an example whose `question` is a list holds all the questions about its image,
    with `answer` (and `answer_weights`) lists of the same length, one entry per question. The image is then encoded
    once for all its questions: the batch adds `image_indices` (`(num_questions,)`, the image of each question), and
    `Trainer`'s batch size counts images.

    Args:
        max_question_length (`int`): question tokens (25 in the original VQA fine-tuning).
        max_answer_length (`int`, *optional*): answer tokens; `None` keeps answers whole.
    """

    question_key: str = "question"
    answer_key: str = "answer"
    weights_key: str = "answer_weights"
    max_question_length: int | None = 25
    max_answer_length: int | None = None

    def __call__(self, examples: Sequence[dict]) -> BatchFeature:
        rng = self._generator() if self.augmentation is not None else None
        questions = _require(examples, self.question_key)
        grouped = [not isinstance(question, str) for question in questions]
        images = self.load_images(examples, rng)
        if any(grouped):
            if not all(grouped):
                raise ValueError(f"{self.question_key!r} is a list of questions for some examples but not all")
            examples = self._one_example_per_question(examples, questions)
            batch = self.processor(images=images)
            batch.update(
                self.processor.encode_text(
                    [question for group in questions for question in group], max_length=self.max_question_length
                )
            )
            batch["image_indices"] = torch.tensor([index for index, group in enumerate(questions) for _ in group])
        else:
            batch = self.processor(images=images, text=questions, max_length=self.max_question_length)
        if not _has_all(examples, self.answer_key):
            return batch
        all_answers, all_weights, counts = [], [], []
        for position, example in enumerate(examples):
            answers = example[self.answer_key]
            if not isinstance(answers, (str, int, float, list, tuple)):
                raise ValueError(
                    f"example {position} of the batch: {self.answer_key!r} must be an answer or a list of answers, "
                    f"got {type(answers).__name__} (pass the weights as {self.weights_key!r})"
                )
            answers = [answers] if isinstance(answers, (str, int, float)) else list(answers)
            answers = [_answer_text(answer, position, self.answer_key) for answer in answers]
            weights = example.get(self.weights_key)
            if weights is None:
                answers, weights = vqa_answer_weights(answers)
            elif isinstance(weights, (int, float)):
                weights = [weights]
            if not answers or len(weights) != len(answers):
                raise ValueError(f"need at least one answer and one weight per answer, got {answers} and {weights}")
            all_answers += answers
            all_weights += _finite_weights(weights, position, self.weights_key)
            counts.append(len(answers))
        targets = self.processor.encode_targets(all_answers, max_length=self.max_answer_length)
        batch["labels"] = targets["labels"]
        batch["decoder_attention_mask"] = targets["attention_mask"]
        batch["answer_counts"] = torch.tensor(counts)
        batch["answer_weights"] = torch.tensor(all_weights)
        return batch

    def _one_example_per_question(self, examples: Sequence[dict], questions: list[list[str]]) -> list[dict]:
        """Split image-grouped examples into one `{answer, answer_weights}` dict per question, checking the lengths."""
        per_question = []
        for index, (example, group) in enumerate(zip(examples, questions)):
            if not group:
                raise ValueError(f"example {index} has an empty list of questions")
            columns = {}
            for key in (self.answer_key, self.weights_key):
                values = example.get(key)
                if values is not None and (isinstance(values, str) or len(values) != len(group)):
                    raise ValueError(
                        f"example {index} has {len(group)} questions, so {key!r} must be a list with one entry per "
                        f"question, got {values!r}"
                    )
                columns[key] = [None] * len(group) if values is None else list(values)
            per_question += [dict(zip(columns, entries)) for entries in zip(*columns.values())]
        return per_question


@dataclass
class MPLUGCaptioningDataCollator(MPLUGDataCollatorMixin):
    r"""
    Captioning. With captions: `decoder_input_ids` = `[CLS] prompt caption [SEP]`, `decoder_attention_mask` and
    `labels` (-100 on padding and on the prompt, which is given, not predicted). Without: `pixel_values` and, with a
    prompt, its `input_ids` (`[CLS] prompt`) to start `generate()` from. A list of captions in an example (the
    references of an image) contributes one drawn at random.

    Args:
        prompt (`str`): text every caption starts with ("a picture of " for VATEX in the original; "" for COCO).
        max_length (`int`): decoder tokens, prompt included (25 in the original).
    """

    caption_key: str = "caption"
    prompt: str = ""
    max_length: int | None = 25

    def __call__(self, examples: Sequence[dict]) -> BatchFeature:
        rng = self._generator()
        batch = self.processor(images=self.load_images(examples, rng if self.augmentation is not None else None))
        if not _has_all(examples, self.caption_key):
            if self.prompt.strip():
                prompt = self.processor.encode_text([self.prompt.strip()] * len(examples))
                batch["input_ids"], batch["attention_mask"] = prompt["input_ids"], prompt["attention_mask"]
            return batch
        captions = [
            _draw_text(caption, position, self.caption_key, rng)
            for position, caption in enumerate(_require(examples, self.caption_key))
        ]
        targets = self.processor.encode_targets([self.prompt + caption for caption in captions], self.max_length)
        labels = targets["labels"]
        if self.prompt.strip():
            prompt_length = 1 + len(self.processor.tokenizer(self.prompt, add_special_tokens=False)["input_ids"])
            if self.max_length is not None and prompt_length >= self.max_length:
                raise ValueError(
                    f"the prompt {self.prompt!r} takes {prompt_length} of max_length={self.max_length} tokens, "
                    "leaving none of the caption to train on"
                )
            labels[:, :prompt_length] = -100
        batch["decoder_input_ids"] = targets["input_ids"]
        batch["decoder_attention_mask"] = targets["attention_mask"]
        batch["labels"] = labels
        return batch


@dataclass
class MPLUGRetrievalDataCollator(MPLUGDataCollatorMixin):
    r"""
    Image-text retrieval (ITC + ITM). Returns `pixel_values`, `input_ids`, `attention_mask` (texts normalised as the
    original's `pre_caption`, 30 tokens), `return_loss=True` and `image_ids`: for each pair the index of the first
    pair of the batch showing the same image (by `image_id`, or all distinct without it), so that two captions of
    one image are not each other's negatives.
    """

    text_key: str = "caption"
    image_id_key: str = "image_id"
    max_length: int | None = 30
    normalize_text: bool = True

    def __call__(self, examples: Sequence[dict]) -> BatchFeature:
        rng = self._generator() if self.augmentation is not None else None
        texts = _require(examples, self.text_key)
        if self.normalize_text:
            texts = _normalized_texts(texts, self.text_key)
        batch = self.processor(images=self.load_images(examples, rng), text=texts, max_length=self.max_length)
        if _has_all(examples, self.image_id_key):
            first_index: dict = {}
            try:
                ids = [
                    first_index.setdefault(example[self.image_id_key], index) for index, example in enumerate(examples)
                ]
            except TypeError:
                raise ValueError(
                    f"each {self.image_id_key!r} must be a hashable id (a number or a string), got "
                    f"{[example[self.image_id_key] for example in examples][:3]}"
                ) from None
            batch["image_ids"] = torch.tensor(ids)
        else:
            batch["image_ids"] = torch.arange(len(examples))
        batch["return_loss"] = True
        return batch


@dataclass
class MPLUGGroundingDataCollator(MPLUGDataCollatorMixin):
    r"""
    Visual grounding (referring expressions). Queries are encoded with the processor's convention (`[CLS] query`,
    20 tokens), as the pipeline and the evaluation runner encode them.
    Boxes (`bbox`) are pixel `xyxy`, or COCO/RefCOCO `xywh` with `box_format="xywh"`; `labels` are the normalised
    (cx, cy, w, h) on the padded square. Without augmentation the processor's grounding mode gives the centred,
    ImageNet-normalised square and `image_sizes` (to map [`MPLUGForGrounding`]'s `pred_boxes` back); with a
    [`MPLUGGroundingAugmentation`] the image, box and query are augmented together.
    """

    augmentation: MPLUGGroundingAugmentation | None = None
    text_key: str = "text"
    box_key: str = "bbox"
    box_format: str = "xyxy"
    max_length: int = 20

    def __post_init__(self):
        super().__post_init__()
        if self.box_format not in ("xyxy", "xywh"):
            raise ValueError(f"box_format must be 'xyxy' or 'xywh', got {self.box_format!r}")

    def boxes_xyxy(self, examples: Sequence[dict]) -> torch.Tensor:
        """The examples' boxes as pixel `(x1, y1, x2, y2)` `(batch, 4)`."""
        try:
            boxes = torch.tensor([list(box) for box in _require(examples, self.box_key)], dtype=torch.float32)
        except (TypeError, ValueError) as error:
            raise ValueError(f"each {self.box_key!r} must be 4 numbers: {error}") from None
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"each {self.box_key!r} must have 4 numbers, got shape {tuple(boxes.shape)}")
        bad = (~torch.isfinite(boxes)).any(dim=1).nonzero().view(-1).tolist()
        if bad:
            raise ValueError(
                f"examples {bad} of the batch have a non-finite {self.box_key!r} ({boxes[bad[0]].tolist()}); boxes must"
                " be finite pixel coordinates"
            )
        if self.box_format == "xywh":
            boxes = torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], dim=1)
        return boxes

    def __call__(self, examples: Sequence[dict]) -> BatchFeature:
        texts = _require(examples, self.text_key)
        has_boxes = _has_all(examples, self.box_key)
        images = [self._load_image(image) for image in _require(examples, self.image_key)]
        data = {}
        if self.augmentation is not None:
            if not has_boxes:
                raise ValueError("grounding augmentation needs the boxes (training examples)")
            rng = self._generator()
            augmented = [
                self.augmentation(image, box, text, rng)
                for image, box, text in zip(images, self.boxes_xyxy(examples).tolist(), texts)
            ]
            data["pixel_values"] = torch.from_numpy(np.stack([pixels for pixels, _, _ in augmented]))
            data["labels"] = torch.from_numpy(np.stack([box for _, box, _ in augmented]))
            texts = [text for _, _, text in augmented]
        else:
            data.update(self.processor(images=images, mode="grounding"))
            if has_boxes:
                image_processor = self.processor.image_processor
                data["labels"] = torch.cat(
                    [
                        image_processor.grounding_box_transform(box, tuple(size.tolist()))
                        for box, size in zip(self.boxes_xyxy(examples), data["image_sizes"])
                    ]
                )
        # the processor's convention (`[CLS] query`, as the released weights were trained), as the pipeline and the
        # evaluation runner encode the queries at inference
        queries = self.processor.encode_text(texts, max_length=self.max_length)
        data["input_ids"], data["attention_mask"] = queries["input_ids"], queries["attention_mask"]
        return BatchFeature(data)


@dataclass
class MPLUGPreTrainingDataCollator(MPLUGDataCollatorMixin):
    r"""
    Pretraining batches for [`MPLUGForPreTraining`]: image-text pairs for ITC/ITM (`input_ids`, `attention_mask`),
    MLM inputs as the original (ALBEF's `mask`): each non-special, non-padding token is selected with
    `mlm_probability` (15%); selected tokens become `[MASK]` (80%), a random token (10%) or stay (10%);
    `mlm_labels` hold the selected tokens' ids, -100 elsewhere. With `prefix_lm`, each text is split at a random
    word boundary: `prefix_input_ids` (`[CLS]` + the first words, possibly none) is encoded and fused, `labels` are
    `[CLS] rest [SEP]` for the decoder (the original pretraining code was not released; this follows the paper's
    PrefixLM).
    """

    text_key: str = "caption"
    max_length: int | None = 30
    mlm_probability: float = 0.15
    prefix_lm: bool = True
    normalize_text: bool = True

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.mlm_probability < 1:
            raise ValueError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")

    def mask_tokens(self, input_ids: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """MLM masking of a `(batch, length)` id tensor → `(masked_ids, labels)`."""
        tokenizer = self.processor.tokenizer
        special = torch.tensor(
            [[token in tokenizer.all_special_ids for token in row] for row in input_ids.tolist()], dtype=torch.bool
        )
        shape = tuple(input_ids.shape)
        selected = torch.from_numpy(rng.random(shape) < self.mlm_probability) & ~special
        labels = input_ids.masked_fill(~selected, -100)
        masked_ids = input_ids.clone()
        to_mask = selected & torch.from_numpy(rng.random(shape) < 0.8)
        masked_ids[to_mask] = tokenizer.mask_token_id
        to_randomize = selected & ~to_mask & torch.from_numpy(rng.random(shape) < 0.5)
        random_tokens = torch.from_numpy(rng.integers(0, len(tokenizer), shape))
        masked_ids[to_randomize] = random_tokens[to_randomize]
        return masked_ids, labels

    def _split_prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, rng) -> dict:
        tokenizer = self.processor.tokenizer
        prefixes, continuations = [], []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            pieces = [token for token, keep in zip(ids, mask) if keep and token not in tokenizer.all_special_ids]
            tokens = tokenizer.convert_ids_to_tokens(pieces)
            word_starts = [index for index, token in enumerate(tokens) if not token.startswith("##")]
            split = word_starts[int(rng.integers(len(word_starts)))] if word_starts else 0
            prefixes.append([tokenizer.cls_token_id] + pieces[:split])
            continuations.append([tokenizer.cls_token_id] + pieces[split:] + [tokenizer.sep_token_id])
        prefix = tokenizer.pad({"input_ids": prefixes}, return_tensors="pt")
        continuation = tokenizer.pad({"input_ids": continuations}, return_tensors="pt")
        return {
            "prefix_input_ids": prefix["input_ids"],
            "prefix_attention_mask": prefix["attention_mask"],
            "labels": continuation["input_ids"].masked_fill(continuation["attention_mask"] == 0, -100),
        }

    def __call__(self, examples: Sequence[dict]) -> BatchFeature:
        rng = self._generator()
        texts = _require(examples, self.text_key)
        texts = [_draw_text(text, position, self.text_key, rng) for position, text in enumerate(texts)]
        if self.normalize_text:
            texts = _normalized_texts(texts, self.text_key)
        images = self.load_images(examples, rng if self.augmentation is not None else None)
        batch = self.processor(images=images, text=texts, max_length=self.max_length)
        batch["mlm_input_ids"], batch["mlm_labels"] = self.mask_tokens(batch["input_ids"], rng)
        if self.prefix_lm:
            batch.update(self._split_prefix(batch["input_ids"], batch["attention_mask"], rng))
        return batch


__all__ = [
    "MPLUGCaptioningDataCollator",
    "MPLUGDataCollatorMixin",
    "MPLUGGroundingDataCollator",
    "MPLUGPreTrainingDataCollator",
    "MPLUGRetrievalDataCollator",
    "MPLUGVQADataCollator",
    "normalize_caption",
    "vqa_answer_weights",
]
