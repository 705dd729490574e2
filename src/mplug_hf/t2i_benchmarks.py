"""
Drop-in DPG-Bench and TIFA scoring with an mPLUG VQA judge (`examples/dpg_bench.py`, `examples/tifa.py`).

Both benchmarks ask ModelScope's mPLUG-large VQA pipeline one question per call. Here every crop / image is encoded
once for all of its questions and many crops are answered per batch, with the pipeline's exact preprocessing and
decoding (see [`VQAJudge`]); the scores follow the official scripts' rules (DPG-Bench: TencentQQGYLab/ELLA
`dpg_bench/compute_dpg_bench.py`; TIFA: Yushi-Hu/tifa `tifa/tifa_score.py`).

Scale-out and resumption. The work is cut into batches over the *whole* input (a batch is the same set of images
whatever the number of processes), so results do not depend on how many processes ran them; under
`accelerate launch --num_processes N` each process takes its share of the unfinished batches with
`Accelerator.split_between_processes`, the results are gathered with `gather_object` and the main process writes the
outputs. Every finished batch is stored at once in `<output>.parts/` (temporary file + `os.replace`, so a kill never
leaves a half-written batch); a run started again with the same settings skips them. The output folder must be
shared by the processes (as the official scripts' result files are).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from .fused_attention import FUSED_ATTENTION
from .io_utils import atomic_write_text
from .original_generation import original_beam_search
from .scoring import (
    choose,
    encode_image_questions,
    first_token_logits,
    fusion_keeps_image_tokens,
    image_shared_memories,
)


# ----------------------------------------------------------------------------------------------------------------------
# The judge: ModelScope's mPLUG VQA pipeline, batched
# ----------------------------------------------------------------------------------------------------------------------

# ModelScope's MPlugPreprocessor: question.lower(), BertTokenizer(padding="max_length", truncation=True,
# max_length=25) -> "[CLS] question [SEP]"; MPlugConfig defaults beam_size=5, min_length=1, max_length=10.
MODELSCOPE_QUESTION_MAX_LENGTH = 25
MODELSCOPE_GENERATION = {"num_beams": 5, "min_length": 1, "max_length": 10}


def modelscope_generation_settings(model) -> dict[str, int]:
    """The converted checkpoint's generation_config.json (written from the original task YAML), else ModelScope's
    defaults (beam 5, min 1, max 10)."""
    settings = dict(MODELSCOPE_GENERATION)
    config = getattr(model, "generation_config", None)
    for key in settings:
        value = getattr(config, key, None) if config is not None else None
        if isinstance(value, int) and value > 0:
            settings[key] = value
    return settings


class VQAJudge:
    """
    Answers many (image, question) pairs the way ModelScope's `visual_question_answering` pipeline answers one.

    Preprocessing as `MPlugPreprocessor`: the image converted to RGB, bicubic-resized to the model's square and
    CLIP-normalised (the [`MPLUGProcessor`] image transform); the question lower-cased and tokenized by BERT's own rule,
    `[CLS] question [SEP]`, truncated to 25 tokens. Decoding as `MPlugForAllTasks`: the original beam search (beam 5,
    min length 1, max length 10, length penalty ((5+step)/6)^0.6; `generate_*_original`'s algorithm) and the best
    hypothesis decoded with `skip_special_tokens=True`.

    Batching: `pixel_values` holds each image once; each image is encoded once and fused with every question asking
    about it (`image_indices`), and the beams share their question's memory. When the fusion keeps the image tokens
    (mPLUG-large, the judge of both benchmarks) the questions about one image also share one decoder memory row
    ([`image_shared_memories`]: the image's keys/values projected once for all of them). On the `mplug_fused`
    attention path (what [`load_vqa_judge`] loads) the image keys/values of the co-attention layers are projected once
    per image, and a question's own memory (mPLUG-base) is attended with folded projections instead of projected.
    P(yes) comes from the beam search's first step.
    """

    def __init__(
        self,
        model,
        processor,
        num_beams: int | None = None,
        min_length: int | None = None,
        max_length: int | None = None,
        question_max_length: int = MODELSCOPE_QUESTION_MAX_LENGTH,
    ):
        self.model, self.processor = model, processor
        settings = modelscope_generation_settings(model)
        self.num_beams = num_beams or settings["num_beams"]
        self.min_length = settings["min_length"] if min_length is None else min_length
        self.max_length = max_length or settings["max_length"]
        self.question_max_length = question_max_length
        tokenizer = processor.tokenizer
        self.yes_id, self.no_id = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")

    @property
    def device(self) -> torch.device:
        return self.model.device

    def pixel_values(self, images: list[Image.Image]) -> torch.Tensor:
        return self.processor(images=images)["pixel_values"].to(self.device, self.model.dtype)

    def encode_questions(self, questions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self.processor.tokenizer(
            [question.lower() for question in questions],
            padding="longest",
            truncation=True,
            max_length=self.question_max_length,
            return_tensors="pt",
        )
        return encoded["input_ids"].to(self.device), encoded["attention_mask"].to(self.device)

    @torch.no_grad()
    def encode(self, pixel_values: torch.Tensor, questions: list[str], image_indices: list[int]):
        """The decoder memory of every question, each image through the visual encoder once (`image_indices`)."""
        input_ids, attention_mask = self.encode_questions(questions)
        indices = torch.tensor(image_indices, dtype=torch.long, device=self.device)
        return encode_image_questions(self.model, input_ids, pixel_values, attention_mask, indices)

    def decoder_memories(
        self, encoded, image_indices: list[int]
    ) -> list[tuple[torch.LongTensor, torch.Tensor, torch.Tensor]]:
        """`(question positions, memory, memory_mask)` groups for the decoder: questions sharing their image's memory
        row when the fusion keeps the image tokens, else every question with its own memory."""
        if fusion_keeps_image_tokens(self.model.config):
            return image_shared_memories(encoded, image_indices)
        positions = torch.arange(len(image_indices), device=self.device)
        return [(positions, encoded.last_hidden_state, encoded.encoder_attention_mask)]

    def yes_probabilities(self, first_token_logits: torch.Tensor) -> torch.Tensor:
        """P(yes) against P(no) from the first answer token's logits."""
        return first_token_logits[:, [self.yes_id, self.no_id]].float().softmax(dim=-1)[:, 0]

    @torch.no_grad()
    def p_yes(self, encoded, image_indices: list[int]) -> list[float]:
        """P(yes) of every question from the decoder's first answer token (the memory of `encode`), no beam search."""
        p_yes = torch.empty(len(image_indices), device=self.device)
        for positions, memory, memory_mask in self.decoder_memories(encoded, image_indices):
            logits = first_token_logits(self.model.text_decoder, memory, memory_mask)
            p_yes[positions] = self.yes_probabilities(logits)
        return p_yes.tolist()

    @torch.no_grad()
    def generate(self, encoded, image_indices: list[int]) -> tuple[list[str], list[float]]:
        """The pipeline's answer strings (the original beam search, best hypothesis, special tokens skipped) and
        P(yes) from the search's first step."""
        answers, p_yes = [None] * len(image_indices), torch.empty(len(image_indices), device=self.device)
        tokenizer = self.processor.tokenizer
        for positions, memory, memory_mask in self.decoder_memories(encoded, image_indices):
            output = original_beam_search(
                self.model.text_decoder, memory, memory_mask, None, self.num_beams, self.min_length, self.max_length
            )
            p_yes[positions] = self.yes_probabilities(output.first_token_logits)
            for position, sequence, length in zip(positions.tolist(), output.sequences, output.lengths):
                answers[position] = tokenizer.decode(
                    sequence[0][: int(length[0])].tolist(), skip_special_tokens=True, clean_up_tokenization_spaces=True
                )
        return answers, p_yes.tolist()

    def answer(
        self, images: list[Image.Image], questions: list[str], image_indices: list[int], rule: str = "string"
    ) -> list[dict]:
        """
        `rule="string"`: `{"answer", "p_yes"}` per question (the pipeline's answer, plus P(yes) for the agreement
        report); `rule="p_yes"`: `{"answer": "yes"|"no", "p_yes"}` from the first answer token only (no beam search).
        """
        if not questions:
            return []
        if rule not in ("string", "p_yes"):
            raise ValueError(f"unknown answer rule {rule!r}: 'string' or 'p_yes'")
        encoded = self.encode(self.pixel_values(images), questions, image_indices)
        if rule == "p_yes":
            return [
                {"answer": "yes" if value > 0.5 else "no", "p_yes": value}
                for value in self.p_yes(encoded, image_indices)
            ]
        answers, p_yes = self.generate(encoded, image_indices)
        return [{"answer": text, "p_yes": value} for text, value in zip(answers, p_yes)]

    @torch.no_grad()
    def choose(
        self, images: list[Image.Image], questions: list[str], image_indices: list[int], choices: list[list[str]]
    ) -> list[int]:
        """Index of the most likely option per question (`MPLUGForQuestionAnswering.choose`, summed log-probs)."""
        if not questions:
            return []
        num_options = max(len(options) for options in choices)
        flat = [option for options in choices for option in options]
        targets = self.processor.encode_targets(flat)
        length = targets["input_ids"].shape[1]
        choice_ids = torch.zeros(len(questions), num_options, length, dtype=torch.long)
        choice_mask = torch.zeros_like(choice_ids)
        offset = 0
        for row, options in enumerate(choices):
            choice_ids[row, : len(options)] = targets["input_ids"][offset : offset + len(options)]
            choice_mask[row, : len(options)] = targets["attention_mask"][offset : offset + len(options)]
            offset += len(options)
        input_ids, attention_mask = self.encode_questions(questions)
        best, _ = choose(
            self.model,
            input_ids,
            self.pixel_values(images),
            choice_ids.to(self.device),
            choice_mask.to(self.device),
            attention_mask=attention_mask,
            image_indices=torch.tensor(image_indices, dtype=torch.long, device=self.device),
        )
        return best.tolist()


# ----------------------------------------------------------------------------------------------------------------------
# Sharded, resumable batches
# ----------------------------------------------------------------------------------------------------------------------


def file_digest(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class BatchStore:
    """Finished batches of one run, one JSON file each in `folder`, tied to the run's `settings` (a run with other
    settings is refused instead of mixing results)."""

    def __init__(self, folder: Path, settings: dict, is_main: bool, wait: Callable[[], None]):
        self.folder = Path(folder)
        settings_file = self.folder / "settings.json"
        text = json.dumps(settings, indent=1, sort_keys=True)
        if is_main:
            self.folder.mkdir(parents=True, exist_ok=True)
            if settings_file.exists() and settings_file.read_text(encoding="utf-8") != text:
                raise ValueError(
                    f"{self.folder} holds batches of a run with other settings ({settings_file}); remove the folder or "
                    "choose another output"
                )
            atomic_write_text(settings_file, text)
        wait()
        if settings_file.read_text(encoding="utf-8") != text:
            raise ValueError(f"{self.folder} holds batches of a run with other settings")

    def path(self, index: int) -> Path:
        return self.folder / f"batch-{index:06d}.json"

    def done(self, count: int) -> set[int]:
        return {index for index in range(count) if self.path(index).is_file()}

    def save(self, index: int, records: list) -> None:
        atomic_write_text(self.path(index), json.dumps(records))

    def load(self, index: int) -> list:
        return json.loads(self.path(index).read_text(encoding="utf-8"))


def run_batches(
    batches: list,
    work: Callable[[Any], list],
    store: BatchStore,
    accelerator,
    desc: str,
    max_batches: int | None = None,
) -> list | None:
    """
    Run `work` on every batch not yet in `store`, each process on its share (`split_between_processes`), storing
    each batch as it finishes. Returns, on the main process, the records of all batches in batch order (None
    elsewhere, and None everywhere when `max_batches` stopped the run early).
    """
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    pending = sorted(set(range(len(batches))) - store.done(len(batches)))
    accelerator.wait_for_everyone()
    stopped = False
    with accelerator.split_between_processes(pending) as mine:
        mine = list(mine)
        progress = tqdm(
            mine,
            desc=f"{desc} [process {accelerator.process_index}]",
            unit="batch",
            position=accelerator.process_index,
            dynamic_ncols=True,
        )
        for number, index in enumerate(progress):
            if max_batches is not None and number >= max_batches:
                stopped = True
                break
            store.save(index, work(batches[index]))
        progress.close()
    stopped = any(gather_object([stopped]))
    accelerator.wait_for_everyone()
    if stopped or not accelerator.is_main_process:
        return None
    return [store.load(index) for index in range(len(batches))]


def batched(values: list, size: int) -> list[list]:
    if size < 1:
        raise ValueError("the batch size must be >= 1")
    return [values[start : start + size] for start in range(0, len(values), size)]


# ----------------------------------------------------------------------------------------------------------------------
# DPG-Bench
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class DPGQuestion:
    proposition_id: int
    question: str
    tuple: str
    dependency: list[int]

    @property
    def category(self) -> str:
        """L2 category: the tuple's text before its first "(" (e.g. "entity - whole")."""
        return self.tuple.split("(")[0].strip()


@dataclass
class DPGItem:
    item_id: str
    questions: dict[int, DPGQuestion] = field(default_factory=dict)


def read_dpg_csv(path: str | os.PathLike, official: bool = False) -> dict[str, DPGItem]:
    """
    DPG-Bench's question CSV (`item_id, text, keywords, proposition_id, dependency, category_broad,
    category_detailed, tuple, question_natural_language`; `dependency` a comma-separated list of parent proposition
    ids, 0 = none).

    `official=True` reads it as the official script: the first data row is skipped, and an item whose rows are not
    contiguous keeps only its last run. Otherwise every row is read and the CSV is checked (duplicate proposition ids
    and dependencies on unknown propositions are errors naming the row).
    """
    items: dict[str, DPGItem] = {}
    previous = None
    with open(path, newline="", encoding="utf-8") as handle:
        for row_number, row in enumerate(csv.DictReader(handle)):
            if official and row_number == 0:
                continue
            item_id = str(row["item_id"]).strip()
            question = DPGQuestion(
                proposition_id=int(float(row["proposition_id"])),
                question=row["question_natural_language"],
                tuple=row["tuple"],
                dependency=[int(float(part.strip())) for part in str(row["dependency"]).split(",")],
            )
            if official:
                if item_id != previous:
                    items[item_id] = DPGItem(item_id)
                items[item_id].questions[question.proposition_id] = question
            else:
                item = items.setdefault(item_id, DPGItem(item_id))
                if question.proposition_id in item.questions:
                    raise ValueError(
                        f"{path}: data row {row_number + 1}: item {item_id!r} repeats proposition "
                        f"{question.proposition_id}"
                    )
                item.questions[question.proposition_id] = question
            previous = item_id
    if not official:
        for item in items.values():
            for question in item.questions.values():
                unknown = [p for p in question.dependency if p != 0 and p not in item.questions]
                if unknown:
                    raise ValueError(
                        f"{path}: item {item.item_id!r} proposition {question.proposition_id} depends on unknown "
                        f"proposition(s) {unknown}"
                    )
    return items


def crop_boxes(resolution: int, pic_num: int) -> list[tuple[int, int, int, int]]:
    """The grid crops in the official order: top-left, top-right, bottom-left, bottom-right."""
    r = resolution
    return [(0, 0, r, r), (r, 0, 2 * r, r), (0, r, r, 2 * r), (r, r, 2 * r, 2 * r)][:pic_num]


def dpg_item_key(filename: str) -> str:
    """The official script's item of an image file: its name up to the first dot."""
    return os.path.basename(filename).split(".")[0]


def open_grid_crops(path: str, resolution: int | None, pic_num: int, official: bool):
    """The crops of one generated grid as RGB images (the pipeline converts its input to RGB) and their boxes."""
    with Image.open(path) as opened:
        opened.load()
        image = opened.copy()
    if resolution is None:
        if pic_num > 1:
            resolution = min(image.size) // 2
        else:
            resolution = None
    if resolution is None:
        boxes = [(0, 0, image.width, image.height)]
    else:
        boxes = crop_boxes(resolution, pic_num)
        needed = (2 * resolution if pic_num > 1 else resolution, 2 * resolution if pic_num > 2 else resolution)
        if not official and (image.width < needed[0] or image.height < needed[1]):
            raise ValueError(
                f"image is {image.width}x{image.height}, smaller than {pic_num} crop(s) of side {resolution} "
                f"({needed[0]}x{needed[1]})"
            )
    return [image.crop(box).convert("RGB") for box in boxes], boxes


def dpg_judge_batch(judge: VQAJudge, files: list[dict], resolution, pic_num, official, rule) -> list[dict]:
    """Answer every question of every crop of a batch of images. A file that cannot be read (or, outside
    `official`, is smaller than its grid) gets `error` instead of answers."""
    records, images, questions, indices, slots = [], [], [], [], []
    for entry in files:
        record = {"file": entry["file"], "path": entry["path"], "item_id": entry["item_id"]}
        records.append(record)
        if entry["item_id"] is None:
            record["error"] = f"no DPG-Bench item named {dpg_item_key(entry['file'])!r} in the CSV"
            continue
        try:
            crops, boxes = open_grid_crops(entry["path"], resolution, pic_num, official)
        except Exception as error:  # noqa: BLE001 - every unreadable image is reported, as the official's bare except
            record["error"] = f"{type(error).__name__}: {error}"
            continue
        record["boxes"] = [list(box) for box in boxes]
        record["answers"] = [[None] * len(entry["questions"]) for _ in crops]
        for crop_index, crop in enumerate(crops):
            images.append(crop)
            for question_index, question in enumerate(entry["questions"]):
                questions.append(question)
                indices.append(len(images) - 1)
                slots.append((record, crop_index, question_index))
    for (record, crop_index, question_index), answer in zip(slots, judge.answer(images, questions, indices, rule)):
        record["answers"][crop_index][question_index] = answer
    return records


def apply_dependencies_official(yes: dict[int, float], dependency: dict[int, list[int]]) -> dict[int, float]:
    """The official rule, in place and in CSV order: a question whose non-zero parent *currently* scores 0 is set to
    0 (a parent listed after its child is read before it is zeroed; an unknown parent raises KeyError)."""
    scores = dict(yes)
    for qid, parents in dependency.items():
        if any(scores[parent] == 0 for parent in parents if parent != 0):
            scores[qid] = 0
    return scores


def apply_dependencies(yes: dict[int, float], dependency: dict[int, list[int]]) -> dict[int, float]:
    """The dependency rule independent of CSV order: a question counts only if it and all its ancestors are "yes"
    (equal to the official rule whenever parents come before their children, as in DPG-Bench's CSV)."""
    scores = dict(yes)
    changed = True
    while changed:
        changed = False
        for qid, parents in dependency.items():
            if scores[qid] != 0 and any(scores[parent] == 0 for parent in parents if parent != 0):
                scores[qid] = 0
                changed = True
    return scores


def mean(values) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def dpg_aggregate(
    records: list[dict], items: dict[str, DPGItem], official: bool, rule: str, num_crops: int = 1
) -> tuple[dict, list]:
    """
    Scores from the answered records. Per crop: a question scores 1 if its answer is exactly "yes", then the
    dependency rule; crop score = mean over the item's questions; image score = mean over crops; DPG-Bench score =
    100 × mean over images.

    `official`: the official numbers, quirks included: a failed image (unreadable, unknown item, or a dependency on a
    proposition the skipped first CSV row removed) is dropped from the mean; category scores take the LAST crop's
    scores BEFORE the dependency rule. Otherwise a failed image scores 0 for every question of each of its
    `num_crops` crops (it stays in the mean), and category scores use every crop's scores after the dependency rule.

    Returns the summary and the detail rows `(record, crop, question, answer)` in the order the official script
    writes them (a crop's answers are written before its dependency rule runs, so an image failing there keeps its
    first crop's rows).
    """
    images, categories, failed, detail = [], defaultdict(list), [], []
    agree = answered = 0
    dependency_rule = apply_dependencies_official if official else apply_dependencies
    for record in records:
        item = items.get(record["item_id"]) if record["item_id"] is not None else None
        questions = list(item.questions.values()) if item is not None else []
        try:
            if "error" in record:
                raise RuntimeError(record["error"])
            dependency = {q.proposition_id: q.dependency for q in questions}
            crop_scores, image_categories, last_raw = [], defaultdict(list), {}
            for crop_index, answers in enumerate(record["answers"]):
                detail.extend((record, crop_index, q, a) for q, a in zip(questions, answers))
                yes = {q.proposition_id: float(a["answer"] == "yes") for q, a in zip(questions, answers)}
                if rule == "string":
                    answered += len(answers)
                    agree += sum((a["p_yes"] > 0.5) == (a["answer"] == "yes") for a in answers)
                try:
                    final = dependency_rule(yes, dependency)
                except KeyError as error:
                    raise RuntimeError(f"dependency on unknown proposition {error}") from error
                crop_scores.append(sum(final.values()) / len(final))
                last_raw = yes
                for q in questions:
                    image_categories[q.category].append(final[q.proposition_id])
            if official:
                image_categories = defaultdict(list)
                for q in questions:
                    image_categories[q.category].append(last_raw[q.proposition_id])
            for category, values in image_categories.items():
                categories[category].extend(values)
            score = sum(crop_scores) / len(crop_scores)
            images.append({"file": record["file"], "path": record["path"], "crop_scores": crop_scores, "score": score})
        except RuntimeError as error:
            failed.append({"file": record["file"], "path": record["path"], "error": str(error)})
            if not official and item is not None:
                images.append({"file": record["file"], "path": record["path"], "crop_scores": [0.0] * num_crops,
                               "score": 0.0, "failed": True})  # fmt: skip
                for q in questions:
                    categories[q.category].extend([0.0] * num_crops)
    l1_values = defaultdict(list)
    for category in sorted(categories):
        l1_values[category.split("-")[0].strip()].extend(categories[category])
    summary = {
        "dpg_bench_score": mean([image["score"] for image in images]) * 100,
        "l1_category_scores": {name: mean(values) * 100 for name, values in l1_values.items()},
        "l2_category_scores": {category: mean(categories[category]) * 100 for category in sorted(categories)},
        "num_images_scored": len([image for image in images if not image.get("failed")]),
        "num_failed": len(failed),
        "failed": failed,
        "images": images,
    }
    if rule == "string":
        summary["p_yes_agreement"] = agree / answered if answered else None
    return summary, detail


def dpg_bench(args, accelerator, load_judge: Callable[[], VQAJudge]) -> dict | None:
    """The DPG-Bench run behind `examples/dpg_bench.py` (see there for the arguments)."""
    official = args.official
    items = read_dpg_csv(args.csv, official=official)
    root = Path(args.image_root_path)
    res_path = Path(args.res_path) if args.res_path else root / "dpg-bench_results.txt"
    parts = Path(f"{res_path}.parts")
    own = {path.name for path in dpg_output_paths(res_path).values()} | {parts.name}
    names = sorted(name for name in os.listdir(root) if name not in own and not name.endswith(".tmp"))
    files, ignored = [], []
    for name in names:
        path = root / name
        if path.is_dir():
            ignored.append(name)
            continue
        key = dpg_item_key(name)
        if key not in items and not official:
            ignored.append(name)
            continue
        item = items.get(key)
        files.append({
            "file": name, "path": os.path.join(str(root), name), "item_id": key if item is not None else None,
            "questions": [q.question for q in item.questions.values()] if item is not None else [],
        })  # fmt: skip
    judge = load_judge()
    settings = {
        "benchmark": "dpg-bench", "csv": file_digest(args.csv), "model": str(args.model), "official": official,
        "resolution": args.resolution, "pic_num": args.pic_num, "score": args.score, "files": names,
        "batch_images": args.batch_images, "dtype": str(judge.model.dtype),
        "generation": [judge.num_beams, judge.min_length, judge.max_length, judge.question_max_length],
    }  # fmt: skip
    store = BatchStore(parts, settings, accelerator.is_main_process, accelerator.wait_for_everyone)
    batches = batched(files, args.batch_images)

    def work(batch):
        return dpg_judge_batch(judge, batch, args.resolution, args.pic_num, official, args.score)

    records = run_batches(batches, work, store, accelerator, "dpg-bench", args.max_batches)
    if records is None:
        return None
    records = [record for batch in records for record in batch]
    summary, detail = dpg_aggregate(records, items, official, args.score, args.pic_num)
    seen = {record["item_id"] for record in records}
    summary["missing_items"] = sorted(set(items) - seen)
    summary["ignored_files"] = ignored
    summary["mode"] = "official" if official else "fixed"
    summary["score_rule"] = args.score
    write_dpg_outputs(res_path, args, summary, detail, official)
    return summary


def dpg_output_paths(res_path: str | os.PathLike) -> dict[str, Path]:
    """`results.txt` → the official `results_detail.txt`, plus `results.json` (summary) and `results_detail.jsonl`
    (every answer with P(yes))."""
    res_path = Path(res_path)
    stem = str(res_path)[: -len(".txt")] if res_path.suffix == ".txt" else str(res_path)
    return {
        "results": res_path,
        "detail": Path(f"{stem}_detail.txt"),
        "summary": Path(f"{stem}.json"),
        "detail_jsonl": Path(f"{stem}_detail.jsonl"),
    }


FIXES = (
    "Fixed mode (default; --official reproduces the official script): every CSV row is read (the official skips the "
    "first one), a failed image scores 0 instead of leaving the mean, category scores use every crop after the "
    "dependency rule (the official: the last crop, before it; ELLA issue #60)."
)


def write_dpg_outputs(res_path: Path, args, summary: dict, detail: list, official: bool) -> None:
    """The official outputs (results file, `_detail` file, category and final scores), a JSON summary and a JSONL
    detail with P(yes) and the post-dependency scores, each written atomically."""
    lines = [
        f"{image['path']}, " + ", ".join(str(s) for s in image["crop_scores"]) + f", {image['score']}\n"
        for image in summary["images"]
        if not image.get("failed")
    ]
    model_id = os.path.basename(os.path.normpath(str(args.image_root_path)))
    output = f"Model: {model_id}\nL1 category scores:\n"
    output += "".join(f"\t{name}: {value}\n" for name, value in summary["l1_category_scores"].items())
    output += "L2 category scores:\n"
    output += "".join(f"\t{name}: {value}\n" for name, value in summary["l2_category_scores"].items())
    output += f"Image path: {args.image_root_path}\nSave results to: {res_path}\n"
    output += f"DPG-Bench score: {summary['dpg_bench_score']}\n"
    output += f"Failed images: {summary['num_failed']}\n"
    output += "".join(f"\tFailed filename: {f['file']} ({f['error']})\n" for f in summary["failed"])
    if not official:
        output += FIXES + "\n"
    if summary.get("p_yes_agreement") is not None:
        output += (
            f"P(yes) > P(no) agrees with the answer string on {summary['p_yes_agreement'] * 100:.2f}% of answers\n"
        )
    atomic_write_text(res_path, "".join(lines) + output)
    detail_lines, detail_rows = [], []
    for record, crop_index, question, answer in detail:
        box = tuple(record["boxes"][crop_index])
        detail_lines.append(f"{record['path']}, {box}, {question.question}, {answer['answer']}\n")
        detail_rows.append(json.dumps({
            "file": record["file"], "item_id": record["item_id"], "crop": crop_index, "box": list(box),
            "proposition_id": question.proposition_id, "question": question.question, "answer": answer["answer"],
            "p_yes": answer["p_yes"],
        }) + "\n")  # fmt: skip
    paths = dpg_output_paths(res_path)
    atomic_write_text(paths["detail"], "".join(detail_lines))
    atomic_write_text(paths["detail_jsonl"], "".join(detail_rows))
    atomic_write_text(paths["summary"], json.dumps(summary, indent=1))
    print(output, end="")


# ----------------------------------------------------------------------------------------------------------------------
# TIFA
# ----------------------------------------------------------------------------------------------------------------------


class SentenceEmbeddingChooser:
    """TIFA's choice mapping (`tifascore/mc_sbert.py`): mean-pooled, L2-normalised sentence embeddings of a
    sentence-transformers model folder (TIFA: all-mpnet-base-v2); the option closest to the free answer wins."""

    def __init__(self, folder: str, device: torch.device | str = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).to(device).eval()

    @torch.no_grad()
    def embed(self, sentences: list[str]) -> torch.Tensor:
        encoded = self.tokenizer(sentences, padding=True, truncation=True, return_tensors="pt").to(self.model.device)
        tokens = self.model(**encoded)[0]
        mask = encoded["attention_mask"].unsqueeze(-1).expand(tokens.size()).float()
        pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1).cpu()

    def choose(self, answer: str, choices: list[str]) -> str:
        return choices[int(torch.argmax(self.embed(choices) @ self.embed([answer]).T))]


def tifa_open_image(path: str) -> Image.Image:
    """As ModelScope's `load_image` for a path: EXIF orientation applied, converted to RGB."""
    with Image.open(path) as opened:
        opened.load()
        return ImageOps.exif_transpose(opened).convert("RGB")


def tifa_judge_batch(judge: VQAJudge, images: list[dict], chooser: SentenceEmbeddingChooser | None) -> list[dict]:
    """Answers for every question of a batch of images. `chooser` given: TIFA's rule (free-form answer; if not one
    of the choices, the closest choice by sentence embedding). Otherwise mPLUG's likelihood of each choice."""
    records, loaded, questions, indices, choices, slots = [], [], [], [], [], []
    for entry in images:
        try:
            image = tifa_open_image(entry["path"])
        except Exception as error:  # noqa: BLE001 - reported, never silently dropped
            records.extend({"index": i, "error": f"{type(error).__name__}: {error}"} for i in entry["questions"])
            continue
        loaded.append(image)
        for index, question, options in zip(entry["questions"], entry["texts"], entry["choices"]):
            questions.append(question)
            choices.append(options)
            indices.append(len(loaded) - 1)
            slots.append(index)
    if chooser is None:
        best = judge.choose(loaded, questions, indices, choices)
        records.extend(
            {"index": i, "free_form_vqa": None, "multiple_choice_vqa": options[b]}
            for i, options, b in zip(slots, choices, best)
        )
    else:
        answers = judge.answer(loaded, questions, indices, "string")
        for i, options, answer in zip(slots, choices, answers):
            free = answer["answer"]
            records.append({
                "index": i, "free_form_vqa": free,
                "multiple_choice_vqa": free if free in options else chooser.choose(free, options),
            })  # fmt: skip
    return records


def tifa_aggregate(pairs: list[dict], answers: dict[int, dict]) -> dict:
    """TIFA's result dict (`tifa_score_benchmark`): per caption the mean question score; `tifa_average` and
    `tifa_stdev` over captions; `accuracy_by_type` by `element_type`; `question_details[caption][question]` (the
    input entry with `free_form_vqa`, `multiple_choice_vqa`, `scores`; a question asked twice of one caption keeps
    its first entry updated by its last answer, both scores count, as in TIFA); `caption_scores`. A question whose
    image failed to load scores 0 and is listed in `failed_images`."""
    scores, type_scores = defaultdict(list), defaultdict(list)
    logs: dict = defaultdict(dict)
    failed = {}
    for index, pair in enumerate(pairs):
        caption_id = pair["id"]
        if pair["question"] not in logs[caption_id]:
            logs[caption_id][pair["question"]] = dict(pair)
        log = logs[caption_id][pair["question"]]
        answer = answers[index]
        if "error" in answer:
            failed.setdefault(str(caption_id), {"image": pair["_image"], "error": answer["error"]})
            free, choice, score = None, None, 0
        else:
            free, choice = answer["free_form_vqa"], answer["multiple_choice_vqa"]
            score = int(choice == pair["answer"])
        log.update(free_form_vqa=free, multiple_choice_vqa=choice, scores=score)
        log.pop("_image", None)
        scores[caption_id].append(score)
        type_scores[pair["element_type"]].append(score)
    averaged = [statistics.mean(values) for values in scores.values()]
    return {
        "tifa_average": statistics.mean(averaged),
        "tifa_stdev": statistics.stdev(averaged) if len(averaged) > 1 else None,
        "accuracy_by_type": {name: statistics.mean(values) for name, values in type_scores.items()},
        "question_details": dict(logs),
        "caption_scores": {caption_id: statistics.mean(values) for caption_id, values in scores.items()},
        "num_failed_images": len(failed),
        "failed_images": failed,
    }


def read_tifa(question_answer_path: str, id2img_path: str) -> tuple[list[dict], list[dict]]:
    """TIFA's question-answer JSON and id → image map (relative paths are relative to the map's folder). Returns the
    questions (each with its image path in `_image`) and the images with the indices of their questions."""
    with open(question_answer_path, encoding="utf-8") as handle:
        pairs = json.load(handle)
    with open(id2img_path, encoding="utf-8") as handle:
        id2img = json.load(handle)
    parent = os.path.dirname(id2img_path)
    images: dict[str, dict] = {}
    for index, pair in enumerate(pairs):
        for key in ("id", "question", "choices", "answer", "element_type"):
            if key not in pair:
                raise ValueError(f"{question_answer_path}: entry {index} has no {key!r}")
        if not pair["choices"]:
            raise ValueError(f"{question_answer_path}: entry {index} has no choices")
        if str(pair["id"]) not in id2img:
            raise KeyError(f"Image corresponding to {pair['id']} not found in {id2img_path}!")
        path = id2img[str(pair["id"])]
        if not os.path.isabs(path):
            path = os.path.join(parent, path)
        pair = dict(pair, _image=path)
        pairs[index] = pair
        entry = images.setdefault(path, {"path": path, "questions": [], "texts": [], "choices": []})
        entry["questions"].append(index)
        entry["texts"].append(pair["question"])
        entry["choices"].append(list(pair["choices"]))
    return pairs, list(images.values())


def tifa(args, accelerator, load_judge: Callable[[], VQAJudge]) -> dict | None:
    """The TIFA run behind `examples/tifa.py` (see there for the arguments)."""
    pairs, images = read_tifa(args.question_answer_path, args.id2img_path)
    judge = load_judge()
    chooser = SentenceEmbeddingChooser(args.sbert, judge.device) if args.sbert else None
    output = Path(args.output)
    settings = {
        "benchmark": "tifa", "questions": file_digest(args.question_answer_path),
        "images": file_digest(args.id2img_path), "model": str(args.model), "sbert": args.sbert,
        "batch_images": args.batch_images, "dtype": str(judge.model.dtype),
        "generation": [judge.num_beams, judge.min_length, judge.max_length, judge.question_max_length],
    }  # fmt: skip
    store = BatchStore(Path(f"{output}.parts"), settings, accelerator.is_main_process, accelerator.wait_for_everyone)
    batches = batched(images, args.batch_images)
    records = run_batches(batches, lambda b: tifa_judge_batch(judge, b, chooser), store, accelerator, "tifa",
                          args.max_batches)  # fmt: skip
    if records is None:
        return None
    answers = {record["index"]: record for batch in records for record in batch}
    result = tifa_aggregate(pairs, answers)
    result["choice_rule"] = "tifa: free-form answer, sentence-embedding match" if chooser else "mplug-likelihood"
    atomic_write_text(output, json.dumps(result, indent=1))
    stdev = result["tifa_stdev"]
    print(f"Average TIFA is {result['tifa_average']}" + (f" (stdev {stdev})" if stdev is not None else ""))
    if result["num_failed_images"]:
        print(f"Failed images: {result['num_failed_images']} (listed under failed_images in {output})")
    return result


def positive_int(text: str) -> int:
    """argparse type of counts and sizes: an integer >= 1 (0 would run nothing, crop nothing or mean "unset")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def add_run_arguments(parser) -> None:
    """The options DPG-Bench and TIFA runs share: the judge's dtype, the device and threads, partial runs."""
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--cpu", action="store_true", help="run on CPU even where a GPU is available")
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads per process")
    parser.add_argument(
        "--max-batches", type=positive_int, help="stop after this many batches per process (resume later)"
    )


def run_benchmark_script(args, benchmark: Callable) -> dict | None:
    """Set the threads, build the accelerator and run `benchmark` (`dpg_bench` or `tifa`) with a lazily loaded judge."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    accelerator = make_accelerator(args.cpu)
    return benchmark(args, accelerator, lambda: load_vqa_judge(args.model, accelerator.device, args.dtype))


def make_accelerator(cpu: bool = False):
    """The run's `Accelerator`. Without an accelerator device it is made with `cpu=True`, so that several CPU
    processes started by `torchrun` (or `accelerate launch` with a multi-CPU config) form one distributed run instead
    of each running everything."""
    from accelerate import Accelerator

    has_device = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    return Accelerator(cpu=cpu or not has_device)


def load_vqa_judge(model_path: str, device, dtype: str = "float32", **generation) -> VQAJudge:
    """An [`MPLUGForQuestionAnswering`] folder (e.g. converted from ModelScope's mPLUG-large VQA) as a judge."""
    from transformers import AutoProcessor

    from .modeling_mplug import MPLUGForQuestionAnswering

    model = MPLUGForQuestionAnswering.from_pretrained(
        model_path, dtype=getattr(torch, dtype), attn_implementation=FUSED_ATTENTION
    )
    model = model.to(device).eval()
    return VQAJudge(model, AutoProcessor.from_pretrained(model_path), **generation)


__all__ = [
    "BatchStore",
    "DPGItem",
    "DPGQuestion",
    "SentenceEmbeddingChooser",
    "VQAJudge",
    "apply_dependencies",
    "apply_dependencies_official",
    "crop_boxes",
    "dpg_aggregate",
    "dpg_bench",
    "load_vqa_judge",
    "make_accelerator",
    "positive_int",
    "read_dpg_csv",
    "read_tifa",
    "run_batches",
    "tifa",
    "tifa_aggregate",
]
