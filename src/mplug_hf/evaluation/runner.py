"""
What the evaluation scripts (`examples/evaluate_*.py`, `examples/video_*.py`) share: reading a dataset (JSON/JSONL in
the original mPLUG formats, or a `datasets` dataset), loading a model folder, running a task head over the data in
batches with a progress bar, writing result files and printing metric tables. Images and videos go through the same
code: a video is a list of frames sampled uniformly from a video file, a folder of frames or a list of frame paths.
"""

import argparse
import json
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..image_processing_mplug import load_image, sample_frames
from ..io_utils import atomic_open, atomic_write_json
from ..modeling_mplug import MPLUGForCaptioning, MPLUGForQuestionAnswering, MPLUGForRetrieval
from ..original_generation import generate_answer_original, generate_caption_original
from ..processing_mplug import MPLUGProcessor
from ..scoring import rank_answers, rerank_with_itm
from .caption import _coco_caption_available as coco_caption_available
from .caption import compute_caption_metrics
from .grounding import grounding_accuracy
from .retrieval import retrieval_metrics
from .vqa import evaluate_vqa


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# COCO file names carry the image id the official result files use, e.g. COCO_val2014_000000391895.jpg -> 391895.
_COCO_FILE_NAME = re.compile(r"^COCO_[a-z]+\d*_(\d+)$")


def evaluation_argument_parser(description: str, video: bool = False, num_frames: int = 8) -> argparse.ArgumentParser:
    """The options every evaluation script has (model, data, batching, device), plus frame sampling for videos."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", required=True, help="model folder saved with save_pretrained (with its processor)")
    parser.add_argument(
        "--data", required=True, help="JSON/JSONL annotation file, a `datasets` folder (save_to_disk) or dataset name"
    )
    parser.add_argument("--split", default=None, help="split of a `datasets` dataset")
    parser.add_argument(
        "--media-root", default=None, help="folder of relative image/video paths (default: the annotation file's)"
    )
    parser.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="FIELD=NAME",
        help="read FIELD (e.g. caption) from column NAME",
    )
    parser.add_argument("--output-dir", default="eval_results", help="where the result files are written")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=0, help="data-loading processes")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N records")
    if video:
        parser.add_argument("--num-frames", type=int, default=num_frames, help="frames sampled uniformly per video")
        parser.add_argument(
            "--video-suffix", default="", help="appended to every video name, e.g. .mp4 for MSRVTT's clip names"
        )
    return parser


def parse_column_mapping(specs: Sequence[str]) -> dict[str, str]:
    mapping = {}
    for spec in specs:
        field, separator, column = spec.partition("=")
        if not separator or not field or not column:
            raise ValueError(f"--column expects FIELD=NAME, got {spec!r}")
        mapping[field] = column
    return mapping


def load_records(
    data: str, split: str | None = None, columns: dict[str, str] | None = None, limit: int | None = None
) -> list[dict]:
    """
    Read the annotation records: a `.json` file holding a list, a `.jsonl` file (one record per line), a folder written
    by `datasets`' `save_to_disk`, or a dataset name for `datasets.load_dataset` (which needs `split`). `columns` maps
    the field names the scripts read to the dataset's column names.
    """
    path = Path(data)
    locations = None
    if path.is_file() and path.suffix == ".jsonl":
        records, locations = [], []
        with open(path, encoding="utf-8") as file:
            for line_number, line in enumerate(file, 1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{data}:{line_number}: not valid JSON ({error.msg})") from None
                locations.append(f"{data}:{line_number}")
    elif path.is_file():
        with open(path, encoding="utf-8") as file:
            try:
                records = json.load(file)
            except json.JSONDecodeError as error:
                raise ValueError(f"{data}:{error.lineno}: not valid JSON ({error.msg})") from None
        if not isinstance(records, list):
            raise ValueError(f"{data} must hold a JSON list of records, got {type(records).__name__}")
        locations = [f"{data} record {index}" for index in range(len(records))]
    else:
        import datasets

        if path.is_dir():
            dataset = datasets.load_from_disk(str(path))
        else:
            if split is None:
                raise ValueError(f"{data} is not a file or folder; pass --split to load it with datasets")
            dataset = datasets.load_dataset(data, split=split)
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise ValueError(f"{data} has the splits {sorted(dataset)}; choose one with --split")
            dataset = dataset[split]
        records = list(dataset)
    if limit is not None:
        records = records[:limit]
    if not records:
        raise ValueError(f"{data} holds no records")
    records = Records(
        records, locations[: len(records)] if locations else [f"{data} record {i}" for i in range(len(records))]
    )
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"{records.where(index)}: a record must be a JSON object, got {type(record).__name__}")
    for field, column in (columns or {}).items():
        for index, record in enumerate(records):
            if column not in record:
                raise ValueError(f"{records.where(index)}: no column {column!r} (mapped to {field!r})")
            record[field] = record[column]
    return records


class Records(list):
    """The records of [`load_records`], remembering where each came from (`file:line`) for error messages."""

    def __init__(self, records: Iterable[dict], locations: Sequence[str]):
        super().__init__(records)
        self.locations = list(locations)

    def where(self, index: int) -> str:
        return self.locations[index] if index < len(self.locations) else f"record {index}"


def where(records: Sequence[dict], index: int) -> str:
    """`file:line` of a record of [`load_records`], `record N` for records from elsewhere."""
    return records.where(index) if isinstance(records, Records) else f"record {index}"


def require_field(records: Sequence[dict], field: str) -> None:
    for index, record in enumerate(records):
        if field not in record:
            raise ValueError(
                f"{where(records, index)}: no {field!r} field (has {sorted(record)}); map a column with"
                f" --column {field}=NAME"
            )


def require_text(records: Sequence[dict], field: str) -> None:
    """Every record's `field` is a non-empty string (checked before a long run, not in the middle of it)."""
    require_field(records, field)
    for index, record in enumerate(records):
        value = record[field]
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{where(records, index)}: {field!r} must be a non-empty string, got {value!r}")


def answer_text(answer, location: str) -> str:
    """A human answer as text: numbers (VQA's `2`) become their string; anything else but a string is refused."""
    if isinstance(answer, str):
        return answer
    if isinstance(answer, bool) or not isinstance(answer, (int, float)):
        raise ValueError(f"{location}: answers must be strings (or numbers), got {answer!r}")
    if isinstance(answer, float) and answer.is_integer():
        answer = int(answer)
    return str(answer)


def reference_boxes(records: Sequence[dict], field: str = "bbox") -> torch.Tensor:
    """The records' boxes `(n, 4)`; a record whose box is not 4 finite numbers raises naming it."""
    require_field(records, field)
    for index, record in enumerate(records):
        box = record[field]
        if (
            not isinstance(box, (list, tuple))
            or len(box) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in box)
        ):
            raise ValueError(f"{where(records, index)}: {field!r} must be 4 finite numbers, got {box!r}")
    return torch.tensor([record[field] for record in records], dtype=torch.float64)


def visual_id(record: dict, field: str, index: int):
    """The id of a record's image or video: its `image_id`/`video_id`, else the COCO id in its file name, else its
    path; `index` when the visual is not a path (e.g. a decoded image of a `datasets` dataset)."""
    explicit = record.get(f"{field}_id")
    if explicit is not None:
        return explicit
    value = record[field]
    if isinstance(value, str):
        coco = _COCO_FILE_NAME.match(Path(value).stem)
        return int(coco.group(1)) if coco else value
    return index


def group_by_visual(records: Sequence[dict], field: str, text_field: str) -> list[dict]:
    """
    One entry per distinct image/video, `{"id", "visual", "texts"}`, in order of first appearance: the original
    files give a list of captions per image, other datasets one (image, caption) pair per record.
    """
    require_field(records, field)
    require_field(records, text_field)
    groups = {}
    for index, record in enumerate(records):
        key = visual_id(record, field, index)
        texts = record[text_field]
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ValueError(
                f"{where(records, index)}: {text_field!r} must be a non-empty string or a list of them, got {texts!r}"
            )
        if key not in groups:
            groups[key] = {"id": key, "visual": record[field], "texts": []}
        groups[key]["texts"].extend(texts)
    return list(groups.values())


class EvaluationRunner:
    """
    A model, its processor and the data settings of one evaluation run.

    Args:
        model: a task head, already on `device` in eval mode.
        processor ([`MPLUGProcessor`]): its processor.
        media_root (`str`, *optional*): folder that relative image/video paths start from.
        num_frames (`int`, *optional*): frames per video; `None` for images.
        video_suffix (`str`): appended to video names (MSRVTT lists clip names without `.mp4`).
        batch_size, num_workers (`int`): batching of the data loader.
    """

    def __init__(
        self,
        model,
        processor: MPLUGProcessor,
        media_root: str | None = None,
        num_frames: int | None = None,
        video_suffix: str = "",
        batch_size: int = 16,
        num_workers: int = 0,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if num_frames is not None and num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {num_frames}")
        self.model = model
        self.processor = processor
        self.media_root = media_root
        self.num_frames = num_frames
        self.video_suffix = video_suffix
        self.batch_size = batch_size
        self.num_workers = num_workers

    @classmethod
    def from_args(cls, model_class, args: argparse.Namespace) -> "EvaluationRunner":
        """Load `args.model` into `model_class` with its processor; relative media paths default to the folder of
        the annotation file."""
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = model_class.from_pretrained(args.model, dtype=DTYPES[args.dtype]).to(device).eval()
        processor = MPLUGProcessor.from_pretrained(args.model)
        media_root = args.media_root
        if media_root is None and Path(args.data).is_file():
            media_root = str(Path(args.data).resolve().parent)
        return cls(
            model,
            processor,
            media_root=media_root,
            num_frames=getattr(args, "num_frames", None),
            video_suffix=getattr(args, "video_suffix", ""),
            batch_size=args.batch_size,
            num_workers=args.num_workers,
        )

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def visual_field(self) -> str:
        return "image" if self.num_frames is None else "video"

    def _resolve(self, value):
        if isinstance(value, str) and self.media_root is not None and not os.path.isabs(value):
            return os.path.join(self.media_root, value)
        return value

    def load_visual(self, value):
        """An image (path or decoded) → PIL image; a video (file, frame folder or list of frames) → sampled frames."""
        if self.num_frames is None:
            return load_image(self._resolve(value))
        if isinstance(value, str):
            return sample_frames(self._resolve(value + self.video_suffix), self.num_frames)
        return sample_frames([self._resolve(frame) for frame in value], self.num_frames)

    def pixel_values(self, visuals: Sequence, mode: str = "default") -> dict[str, torch.Tensor]:
        loaded = [self.load_visual(value) for value in visuals]
        return dict(self.processor.image_processor(loaded, mode=mode, return_tensors="pt"))

    def to_device(self, batch: dict) -> dict:
        moved = {}
        for name, value in batch.items():
            if torch.is_tensor(value):
                value = value.to(self.device, self.model.dtype if value.is_floating_point() else None)
            moved[name] = value
        return moved

    def batches(self, items: Sequence, collate: Callable[[list], dict], description: str) -> Iterator[dict]:
        """`collate`d batches of `items` (loaded by `num_workers` processes), on the model's device, with a progress
        bar."""
        loader = DataLoader(
            list(items), batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers, collate_fn=collate
        )
        for batch in tqdm(loader, desc=description, unit="batch"):
            yield self.to_device(batch)


def prompt_token_ids(processor: MPLUGProcessor, prompt: str, drop_last_token: bool = False) -> torch.LongTensor:
    """
    `[CLS] prompt` as a `(1, length)` start for captioning. `drop_last_token` reproduces the original video caption
    model (VATEX), which trained with the prompt's last word as a target and so starts generating without it
    ("a picture of" → `[CLS] a picture`).
    """
    tokenizer = processor.tokenizer
    ids = [tokenizer.cls_token_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if drop_last_token:
        if len(ids) < 3:
            raise ValueError(f"prompt {prompt!r} is too short to drop its last token")
        ids = ids[:-1]
    return torch.tensor([ids])


def answer_questions(
    runner: EvaluationRunner,
    records: Sequence[dict],
    answer_list: Sequence[str] | None = None,
    k: int = 128,
    num_beams: int = 5,
    min_length: int = 1,
    max_length: int = 10,
) -> list[dict]:
    """
    Answer every record's `question` about its image/video with a [`MPLUGForQuestionAnswering`]: pick from
    `answer_list` with `rank_answers` (top `k` by first-token probability, re-scored by the full answer), or generate
    with the original beam search (`generate_*_original`, which reproduces the original's answers).

    Returns:
        `[{"question_id", "answer"}]` (the VQA result-file format); records without `question_id` get their index.
    """
    require_field(records, runner.visual_field)
    require_text(records, "question")
    model, processor = runner.model, runner.processor
    candidates = None
    if answer_list is not None:
        if len(answer_list) == 0:
            raise ValueError("the answer list is empty")
        candidates = runner.to_device(dict(processor.encode_targets(list(answer_list))))
        k = min(k, len(answer_list))

    def collate(items: list) -> dict:
        batch = runner.pixel_values([record[runner.visual_field] for _, record in items])
        batch.update(processor.encode_text([record["question"] for _, record in items]))
        batch["question_id"] = [record.get("question_id", index) for index, record in items]
        return batch

    results = []
    with torch.no_grad():
        for batch in runner.batches(list(enumerate(records)), collate, "answering"):
            inputs = {name: batch[name] for name in ("input_ids", "pixel_values", "attention_mask")}
            if candidates is not None:
                top_ids, _ = rank_answers(
                    model,
                    candidate_ids=candidates["input_ids"],
                    candidate_attention_mask=candidates["attention_mask"],
                    k=k,
                    **inputs,
                )
                answers = [answer_list[index] for index in top_ids[:, 0].tolist()]
            else:
                output = generate_answer_original(
                    model, **inputs, num_beams=num_beams, min_length=min_length, max_length=max_length
                )
                answers = processor.batch_decode(output.sequences[:, 0], skip_special_tokens=True)
            results.extend(
                {"question_id": question_id, "answer": answer}
                for question_id, answer in zip(batch["question_id"], answers)
            )
    return results


def reference_answers(record: dict, location: str = "record") -> list[str] | None:
    """A record's human answers: `answers` or `answer` (the original files' field), a list or a single string;
    numbers (`[2, 2, 2]`) become strings, as the predictions are."""
    answers = record.get("answers", record.get("answer"))
    if answers is None:
        return None
    if isinstance(answers, dict) or not isinstance(answers, (str, int, float, list, tuple)):
        raise ValueError(f"{location}: the answers must be a string or a list, got {answers!r}")
    answers = [answers] if isinstance(answers, (str, int, float)) else list(answers)
    return [answer_text(answer, location) for answer in answers]


def check_answer_references(records: Sequence[dict], metric: str = "vqa") -> list[list[str]] | None:
    """
    The records' reference answers, validated before any answering: all records or none have answers, each
    answer a string or number. With the VQA v2 metric, questions with a single human answer warn: its
    leave-one-out rule scores them 0 whatever the prediction (use `--metric exact` for one-answer data).
    """
    references = [reference_answers(record, where(records, index)) for index, record in enumerate(records)]
    if all(answers is None for answers in references):
        return None
    missing = [where(records, index) for index, answers in enumerate(references) if not answers]
    if missing:
        raise ValueError(f"{', '.join(missing[:5])}: no reference answers while other records have them")
    if metric == "vqa":
        single = [index for index, answers in enumerate(references) if len(answers) == 1]
        if single:
            warnings.warn(
                f"{len(single)} of {len(references)} questions (first: {where(records, single[0])}) have a single"
                " human answer: the VQA v2 accuracy (leave-one-out over the human answers) scores them 0 whatever"
                " the prediction; use the exact-match metric (--metric exact) for one-answer data",
                UserWarning,
                stacklevel=2,
            )
    return references


def answer_metrics(predictions: Sequence[dict], records: Sequence[dict], metric: str = "vqa") -> dict | None:
    """
    Accuracy of `predictions` (aligned with `records`), in percent. `"vqa"`: the official VQA v2 accuracy over the
    human answers (with `answer_type` breakdown); `"exact"`: the share of predictions equal to one of the reference
    answers (MSRVTT-QA, MSVD-QA, GQA, which have one answer per question). `None` when no record has answers (e.g. a
    test-dev split to submit).
    """
    if metric not in ("vqa", "exact"):
        raise ValueError(f"metric must be 'vqa' or 'exact', got {metric!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # warned before the run (run_question_answering)
        references = check_answer_references(records, metric)
    if references is None:
        return None
    if metric == "exact":
        correct = [str(prediction["answer"]) in answers for prediction, answers in zip(predictions, references)]
        return {"accuracy": 100.0 * sum(correct) / len(correct)}
    annotations = [
        {"question_id": prediction["question_id"], "answers": answers, "answer_type": record.get("answer_type")}
        for prediction, answers, record in zip(predictions, references, records)
    ]
    result = evaluate_vqa(predictions, annotations)
    metrics = {"accuracy": result["overall"]}
    metrics.update({f"accuracy_{name}": value for name, value in sorted(result["per_answer_type"].items())})
    return metrics


def caption_visuals(
    runner: EvaluationRunner,
    visuals: Sequence,
    prompt: str = "",
    drop_last_prompt_token: bool = False,
    num_beams: int = 5,
    min_length: int = 8,
    max_length: int = 25,
) -> list[str]:
    """
    Caption every image/video with a [`MPLUGForCaptioning`] and the original beam search (`generate_*_original`),
    starting from `prompt` (see [`prompt_token_ids`] for `drop_last_prompt_token`). The prompt is removed from the
    front of each caption (the whole prompt when the model regenerated its dropped last word).
    """
    model, processor = runner.model, runner.processor
    prompt_ids, prefixes = None, []
    if prompt:
        prompt_ids = prompt_token_ids(processor, prompt, drop_last_prompt_token).to(runner.device)
        prefixes = [
            processor.decode(prompt_token_ids(processor, prompt)[0], skip_special_tokens=True),
            processor.decode(prompt_ids[0], skip_special_tokens=True),
        ]

    def collate(items: list) -> dict:
        return runner.pixel_values(items)

    captions = []
    with torch.no_grad():
        for batch in runner.batches(visuals, collate, "captioning"):
            pixel_values = batch["pixel_values"]
            prompts = prompt_ids.expand(pixel_values.shape[0], -1) if prompt_ids is not None else None
            output = generate_caption_original(
                model, pixel_values, prompts, num_beams=num_beams, min_length=min_length, max_length=max_length
            )
            captions.extend(
                _strip_prefix(text, prefixes)
                for text in processor.batch_decode(output.sequences[:, 0], skip_special_tokens=True)
            )
    return captions


def _strip_prefix(text: str, prefixes: Sequence[str]) -> str:
    for prefix in prefixes:
        if text == prefix or text.startswith(prefix + " "):
            return text[len(prefix) :].strip()
    return text


def retrieval_scores(
    runner: EvaluationRunner,
    visuals: Sequence,
    texts: Sequence[str],
    k: int = 256,
    text_max_length: int = 30,
    add_itc_to_itm: bool = False,
) -> dict[str, np.ndarray]:
    """
    Score every image/video against every text with a [`MPLUGForRetrieval`] as the original evaluation: ITC
    similarity (normalised projections, no temperature; a video's is the mean over its frames) picks the top `k`
    candidates of each query, which are re-scored by the ITM match logit of the fusion over the image (or the
    concatenated frame) tokens; the others get -100. The original video retrieval scores ITM + ITC
    (`add_itc_to_itm=True`). Same scores as `MPLUGForRetrieval.retrieve`, computed in batches with progress bars;
    the similarities in float32 also for a bfloat16 model.

    Returns:
        `{"scores_i2t": (num_visuals, num_texts), "scores_t2i": (num_texts, num_visuals), "itc_i2t": (num_visuals,
        num_texts)}`.
    """
    model, processor = runner.model, runner.processor
    if len(visuals) == 0 or len(texts) == 0:
        raise ValueError("retrieval needs at least one image/video and one text")
    with torch.no_grad():
        image_features = [
            model.get_image_features(batch["pixel_values"])
            for batch in runner.batches(visuals, runner.pixel_values, "encoding images")
        ]

        def encode_texts(items: list) -> dict:
            return dict(processor.encode_text(items, max_length=text_max_length, padding="max_length"))

        encoded_texts = list(runner.batches(texts, encode_texts, "encoding texts"))
        text_features = [
            model.get_text_features(batch["input_ids"], batch["attention_mask"]) for batch in encoded_texts
        ]
        attention_mask = torch.cat([batch["attention_mask"] for batch in encoded_texts])
        image_embeddings = torch.cat([f.pooler_output for f in image_features]).float()
        text_embeddings = torch.cat([f.pooler_output for f in text_features]).float()
        # in float32 also under autocast: bfloat16 keeps 8 mantissa bits, and the similarities of normalised
        # features, all below 1, then tie often, which changes the ITC top k
        with torch.autocast(image_embeddings.device.type, enabled=False):
            itc = image_embeddings @ text_embeddings.t()
        scores_i2t, scores_t2i = rerank_with_itm(
            model,
            itc,
            torch.cat([f.last_hidden_state for f in image_features]),
            torch.cat([f.last_hidden_state for f in text_features]),
            attention_mask,
            k,
            runner.batch_size,
            add_itc=add_itc_to_itm,
        )
        return {
            "scores_i2t": scores_i2t.float().cpu().numpy(),
            "scores_t2i": scores_t2i.float().cpu().numpy(),
            "itc_i2t": itc.float().cpu().numpy(),
        }


def ground_phrases(runner: EvaluationRunner, records: Sequence[dict], max_length: int = 20) -> torch.Tensor:
    """
    Boxes of every record's referring expression (`text`) in its `image` with a [`MPLUGForGrounding`]: the
    processor's grounding transform (long side resized, padded square), queries as `[CLS] text` (the processor's
    convention) truncated to `max_length` tokens as the original's grounding dataset, 4 greedy coordinate tokens.

    Returns:
        `(num_records, 4)` pixel (x1, y1, x2, y2) boxes of the input images.
    """
    require_field(records, "image")
    require_text(records, "text")

    def collate(items: list) -> dict:
        batch = runner.pixel_values([record["image"] for record in items], mode="grounding")
        # the processor's convention (`[CLS] query`), as the grounding collator trains and the pipeline answers
        queries = runner.processor.encode_text([record["text"] for record in items], max_length=max_length)
        batch.update(input_ids=queries["input_ids"], attention_mask=queries["attention_mask"])
        return batch

    boxes = []
    with torch.no_grad():
        for batch in runner.batches(records, collate, "grounding"):
            image_sizes = batch.pop("image_sizes")
            boxes.append(runner.processor.post_process_grounding(runner.model(**batch).pred_boxes, image_sizes))
    return torch.cat(boxes)


def format_metric_table(title: str, metrics: dict[str, float]) -> str:
    """A two-column text table of `metrics`, e.g. for printing."""
    width = max(len(name) for name in [*metrics, "metric"])
    lines = [title, f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 9}"]
    lines += [f"{name:<{width}}  {value:9.4f}" for name, value in metrics.items()]
    return "\n".join(lines)


def write_json(path: str | os.PathLike, content) -> Path:
    """Write `content` as JSON atomically (a killed run leaves the previous file, never a half-written one)."""
    return atomic_write_json(path, content, indent=1)


def report_metrics(output_dir: str | os.PathLike, title: str, metrics: dict[str, float]) -> None:
    """Print the metric table and write it to `metrics.json` beside the predictions."""
    print(format_metric_table(title, metrics))
    write_json(Path(output_dir) / "metrics.json", metrics)


def load_answer_list(path: str) -> list[str]:
    """A JSON list of candidate answers, or a `{answer: label}` dict (the original's `answer_list.json` /
    `train_ans2label.json`)."""
    with open(path, encoding="utf-8") as file:
        content = json.load(file)
    answers = list(content) if isinstance(content, (list, dict)) else None
    if not answers or not all(isinstance(answer, str) for answer in answers):
        raise ValueError(f"{path} must hold a non-empty JSON list of answers (or a dict keyed by answer)")
    return answers


def flatten_texts(groups: Iterable[dict]) -> tuple[list[str], list[int], list[list[int]]]:
    """Texts of grouped records in order, with the image index of each text and the text indices of each image."""
    texts, text_to_visual, visual_to_texts = [], [], []
    for visual_index, group in enumerate(groups):
        visual_to_texts.append(list(range(len(texts), len(texts) + len(group["texts"]))))
        texts.extend(group["texts"])
        text_to_visual.extend([visual_index] * len(group["texts"]))
    return texts, text_to_visual, visual_to_texts


def caption_metrics(predictions: dict, references: dict, backend: str = "auto") -> dict[str, float]:
    """[`compute_caption_metrics`] that says which implementation scored the captions when `backend="auto"`."""
    if backend == "auto" and not coco_caption_available():
        print(
            "pycocoevalcap or Java not found: BLEU, ROUGE-L and CIDEr(-D) are computed in pure Python with a simplified "
            "tokenizer and METEOR/SPICE are skipped; install pycocoevalcap and a Java runtime for the official scores."
        )
        backend = "python"
    return compute_caption_metrics(predictions, references, backend=backend)


def run_question_answering(
    runner: EvaluationRunner,
    records: Sequence[dict],
    output_dir: str | os.PathLike,
    answer_list: Sequence[str] | None = None,
    metric: str = "vqa",
    **answer_kwargs,
) -> dict | None:
    """Answer, write `vqa_result.json` and score it ([`answer_questions`], [`answer_metrics`]). The records (and
    their reference answers) are checked before answering."""
    if metric not in ("vqa", "exact"):
        raise ValueError(f"metric must be 'vqa' or 'exact', got {metric!r}")
    require_field(records, runner.visual_field)
    require_text(records, "question")
    check_answer_references(records, metric)
    predictions = answer_questions(runner, records, answer_list, **answer_kwargs)
    path = write_json(Path(output_dir) / "vqa_result.json", predictions)
    print(f"wrote {len(predictions)} answers to {path}")
    metrics = answer_metrics(predictions, records, metric)
    if metrics is None:
        print("the records have no reference answers: nothing to score")
        return None
    report_metrics(output_dir, "Question answering", metrics)
    return metrics


def run_captioning(
    runner: EvaluationRunner,
    records: Sequence[dict],
    output_dir: str | os.PathLike,
    backend: str = "auto",
    **caption_kwargs,
) -> dict | None:
    """Caption every distinct image/video, write `caption_result.json` (`[{"image_id", "caption"}]`, the COCO result
    format; the id of a video is its `video_id` or path) and score it against the records' `caption`s."""
    require_field(records, runner.visual_field)
    has_references = any("caption" in record for record in records)
    if has_references:
        groups = group_by_visual(records, runner.visual_field, "caption")
    else:
        groups = [
            {"id": visual_id(record, runner.visual_field, index), "visual": record[runner.visual_field], "texts": []}
            for index, record in enumerate(records)
        ]
    captions = caption_visuals(runner, [group["visual"] for group in groups], **caption_kwargs)
    results = [{"image_id": group["id"], "caption": caption} for group, caption in zip(groups, captions)]
    path = write_json(Path(output_dir) / "caption_result.json", results)
    print(f"wrote {len(results)} captions to {path}")
    if not has_references:
        print("the records have no reference captions: nothing to score")
        return None
    metrics = caption_metrics(
        {group["id"]: caption for group, caption in zip(groups, captions)},
        {group["id"]: group["texts"] for group in groups},
        backend,
    )
    report_metrics(output_dir, "Captioning", metrics)
    return metrics


def run_retrieval(
    runner: EvaluationRunner,
    records: Sequence[dict],
    output_dir: str | os.PathLike,
    num_top: int = 10,
    **score_kwargs,
) -> dict[str, float]:
    """
    Score all images/videos against all their `caption`s ([`retrieval_scores`]), write the score matrices
    (`retrieval_scores.npz`: `scores_i2t`, `scores_t2i`, `itc_i2t`, `txt2img`) and the rankings (`retrieval_ranks.json`:
    ids, texts, `txt2img`, `img2txt` and the `num_top` best candidates of every query), and compute Recall@K.
    """
    groups = group_by_visual(records, runner.visual_field, "caption")
    texts, text_to_visual, visual_to_texts = flatten_texts(groups)
    scores = retrieval_scores(runner, [group["visual"] for group in groups], texts, **score_kwargs)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with atomic_open(output_dir / "retrieval_scores.npz", "wb") as handle:
        np.savez(handle, **scores, txt2img=np.array(text_to_visual))
    ranks = {
        "ids": [group["id"] for group in groups],
        "texts": texts,
        "txt2img": text_to_visual,
        "img2txt": visual_to_texts,
        "i2t_top": np.argsort(-scores["scores_i2t"], axis=1, kind="stable")[:, :num_top].tolist(),
        "t2i_top": np.argsort(-scores["scores_t2i"], axis=1, kind="stable")[:, :num_top].tolist(),
    }
    path = write_json(output_dir / "retrieval_ranks.json", ranks)
    print(f"wrote the score matrices of {len(groups)} x {len(texts)} pairs and their rankings to {path.parent}")
    metrics = retrieval_metrics(scores["scores_i2t"], text_to_visual, visual_to_texts, scores["scores_t2i"])
    if runner.visual_field == "video":
        # The original video evaluation's names: txt_* = video→text, vid_* = text→video.
        metrics = {name.replace("img_", "vid_"): value for name, value in metrics.items()}
    report_metrics(
        output_dir, f"Retrieval (txt: {runner.visual_field}→text, other: text→{runner.visual_field})", metrics
    )
    return metrics


def run_grounding(
    runner: EvaluationRunner,
    records: Sequence[dict],
    output_dir: str | os.PathLike,
    box_format: str = "xywh",
    max_length: int = 20,
) -> dict | None:
    """
    Ground every record's `text` in its `image` ([`ground_phrases`]), write `grounding_result.json` (`[{"id", "text",
    "box"}]`, pixel x1, y1, x2, y2) and compute Acc@0.5 and mean IoU against the records' `bbox` (`box_format`
    `"xywh"`: COCO/RefCOCO pixel x, y, width, height; `"xyxy"`: pixel corners).
    """
    if box_format not in ("xywh", "xyxy"):
        raise ValueError(f"box_format must be 'xywh' or 'xyxy', got {box_format!r}")
    # the data is checked before the run, not after it
    require_field(records, "image")
    require_text(records, "text")
    has_references = any("bbox" in record for record in records)
    targets = reference_boxes(records) if has_references else None
    boxes = ground_phrases(runner, records, max_length=max_length)
    results = [
        {"id": record.get("id", index), "text": record["text"], "box": [round(value, 2) for value in box.tolist()]}
        for index, (record, box) in enumerate(zip(records, boxes))
    ]
    path = write_json(Path(output_dir) / "grounding_result.json", results)
    print(f"wrote {len(results)} boxes to {path}")
    if not has_references:
        print("the records have no reference boxes: nothing to score")
        return None
    if box_format == "xywh":
        targets[:, 2:] += targets[:, :2]
    predicted = torch.tensor([result["box"] for result in results], dtype=torch.float64)
    metrics = grounding_accuracy(predicted, targets)
    report_metrics(output_dir, "Grounding", metrics)
    return metrics


# ----------------------------------------------------------------------------------------------------------------------
# Command lines of the scripts: one per task, the image and video scripts differing only in the protocol defaults
# ----------------------------------------------------------------------------------------------------------------------


def question_answering_main(
    argv: Sequence[str] | None, description: str, video: bool = False, num_frames: int = 16, metric: str = "vqa"
) -> dict | None:
    """`examples/evaluate_vqa.py` (VQA v2 accuracy) and `examples/video_qa.py` (exact match over frames)."""
    parser = evaluation_argument_parser(description, video=video, num_frames=num_frames)
    parser.add_argument(
        "--answer-list",
        help="JSON list (or dict keyed by answer) of candidates to rank; without it answers are generated",
    )
    parser.add_argument("--k", type=int, default=128, help="candidates re-scored per question with --answer-list")
    parser.add_argument("--num-beams", type=int, default=5)
    parser.add_argument("--min-length", type=int, default=1, help="generated tokens before [SEP] is allowed")
    parser.add_argument("--max-length", type=int, default=10, help="most generated tokens")
    parser.add_argument(
        "--metric", choices=("vqa", "exact"), default=metric, help="official VQA accuracy, or exact match"
    )
    args = parser.parse_args(argv)
    records = load_records(args.data, args.split, parse_column_mapping(args.column), args.limit)
    return run_question_answering(
        EvaluationRunner.from_args(MPLUGForQuestionAnswering, args),
        records,
        args.output_dir,
        answer_list=load_answer_list(args.answer_list) if args.answer_list else None,
        metric=args.metric,
        k=args.k,
        num_beams=args.num_beams,
        min_length=args.min_length,
        max_length=args.max_length,
    )


def captioning_main(
    argv: Sequence[str] | None,
    description: str,
    video: bool = False,
    num_frames: int = 8,
    prompt: str = "",
    num_beams: int = 5,
    min_length: int = 8,
    max_length: int = 25,
) -> dict | None:
    """`examples/evaluate_caption.py` (COCO) and `examples/video_captioning.py` (VATEX: prompt without its last word,
    unless `--keep-full-prompt`)."""
    parser = evaluation_argument_parser(description, video=video, num_frames=num_frames)
    parser.add_argument("--prompt", default=prompt, help="text every caption starts from")
    if video:
        parser.add_argument("--keep-full-prompt", action="store_true", help="start from the whole prompt")
    parser.add_argument("--num-beams", type=int, default=num_beams)
    parser.add_argument("--min-length", type=int, default=min_length, help="generated tokens before [SEP] is allowed")
    parser.add_argument("--max-length", type=int, default=max_length, help="most generated tokens")
    parser.add_argument("--backend", choices=("auto", "pycocoevalcap", "python"), default="auto")
    args = parser.parse_args(argv)
    records = load_records(args.data, args.split, parse_column_mapping(args.column), args.limit)
    return run_captioning(
        EvaluationRunner.from_args(MPLUGForCaptioning, args),
        records,
        args.output_dir,
        backend=args.backend,
        prompt=args.prompt,
        drop_last_prompt_token=video and not args.keep_full_prompt,
        num_beams=args.num_beams,
        min_length=args.min_length,
        max_length=args.max_length,
    )


def retrieval_main(
    argv: Sequence[str] | None,
    description: str,
    video: bool = False,
    num_frames: int = 12,
    k: int = 256,
    text_max_length: int = 30,
) -> dict:
    """`examples/evaluate_retrieval.py` (ITM re-ranking) and `examples/video_retrieval.py` (ITM + ITC)."""
    parser = evaluation_argument_parser(description, video=video, num_frames=num_frames)
    parser.add_argument("--k", type=int, default=k, help="candidates re-ranked by ITM per query")
    parser.add_argument("--text-max-length", type=int, default=text_max_length, help="caption tokens")
    args = parser.parse_args(argv)
    records = load_records(args.data, args.split, parse_column_mapping(args.column), args.limit)
    return run_retrieval(
        EvaluationRunner.from_args(MPLUGForRetrieval, args),
        records,
        args.output_dir,
        k=args.k,
        text_max_length=args.text_max_length,
        add_itc_to_itm=video,
    )
