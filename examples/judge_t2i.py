"""
Judge text-to-image generations with an mPLUG VQA model (DPG-Bench / TIFA style), batched and resumable.

Input: JSONL, one generated image per line: `{"id": …, "image": path, "questions": [...], "choices": [[...], ...]}`.
`choices` is optional; questions with options are answered by multiple choice (`choose`), the others get P(yes)
(`score_yes_no`). Each image is encoded once for all of its questions.

Output: JSONL, one line per question, in input order: `{"id", "question_index", "question", "input_hash", "p_yes"}`
or `{"id", "question_index", "question", "input_hash", "choice", "choice_index", "scores"}`. The file is rewritten
atomically after every batch (a killed run leaves the previous complete file). Run the same command again after an
interruption: finished questions are kept and the run continues where it stopped, so the file ends with no duplicate
or lost rows. `input_hash` fingerprints the question, its options and its image path: a row whose input line was
edited since it was judged is judged again (the run says how many). An existing `--output` that is not this
script's JSONL is refused and left untouched; duplicate input ids and malformed lines are refused (naming the file and
line) before the model is loaded.

    python examples/judge_t2i.py --model converted/mplug-large-vqa --data prompts.jsonl --output judged.jsonl
"""

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoProcessor

from mplug_hf import MPLUGForQuestionAnswering
from mplug_hf.image_processing_mplug import load_image
from mplug_hf.io_utils import atomic_write_text
from mplug_hf.scoring import choose, score_yes_no


ROW_KEYS = {"id", "question_index", "question", "input_hash"}


def read_items(path: str, image_root: str | None = None) -> list[dict]:
    """The input items; any malformed line, duplicate id or missing image raises a ValueError naming `path:line`."""
    items, seen = [], {}
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                item = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(item, dict):
                raise ValueError(f"{where}: each line must be a JSON object, got {type(item).__name__}")
            questions = item.get("questions")
            if "image" not in item or not isinstance(questions, list) or not questions:
                raise ValueError(f"{where}: each line needs 'image' and a non-empty 'questions' list")
            if not isinstance(item["image"], str):
                raise ValueError(f"{where}: 'image' must be a path string, got {item['image']!r}")
            if not all(isinstance(question, str) and question.strip() for question in questions):
                raise ValueError(f"{where}: every question must be a non-empty string")
            choices = item.get("choices")
            if choices is not None:
                if not isinstance(choices, list) or len(choices) != len(questions):
                    raise ValueError(f"{where}: 'choices' needs one list (or null) per question")
                for options in choices:
                    if options is not None and (
                        not isinstance(options, list)
                        or not options
                        or not all(isinstance(option, str) and option for option in options)
                    ):
                        raise ValueError(
                            f"{where}: each entry of 'choices' must be null or a non-empty list of strings"
                        )
            item.setdefault("id", line_number - 1)
            try:
                key = json.dumps(item["id"])
            except TypeError:
                raise ValueError(f"{where}: 'id' must be a JSON value, got {item['id']!r}") from None
            if key in seen:
                raise ValueError(
                    f"{where}: duplicate id {item['id']!r} (first on line {seen[key]}); ids must be unique, they key the"
                    " output rows"
                )
            seen[key] = line_number
            image = os.path.join(image_root, item["image"]) if image_root else item["image"]
            if not os.path.isfile(image):
                raise ValueError(f"{where}: image {image!r} is not a file")
            items.append(item)
    if not items:
        raise ValueError(f"{path}: no input lines")
    return items


def input_hash(image: str, question: str, options: list[str] | None) -> str:
    """Fingerprint of what a row answers, so that a resumed run notices an edited input line."""
    text = json.dumps({"image": image, "question": question, "options": options}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def row_key(row: dict) -> tuple[str, int]:
    return json.dumps(row["id"]), row["question_index"]


def finished_rows(output: Path) -> dict[tuple[str, int], dict]:
    """
    The rows already written, by key. Refuses (ValueError, the file untouched) a file that is not this script's output;
    only an unterminated last line (a run killed by an older, appending version) is dropped.
    """
    if not output.exists():
        return {}
    if not output.is_file():
        raise ValueError(f"--output {output} exists and is not a file")
    try:
        text = output.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(
            f"--output {output} exists and is not this script's JSONL (not UTF-8 text); left untouched"
        ) from None
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]
    done = {}
    for line_number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if (
            not isinstance(row, dict)
            or not ROW_KEYS <= row.keys()
            or not ("p_yes" in row or "choice" in row)
            or not isinstance(row["question_index"], int)
        ):
            raise ValueError(
                f"--output {output} exists and is not this script's JSONL (line {line_number} is not a judged row with"
                f" {sorted(ROW_KEYS)}); it is left untouched: choose another --output, or delete the file to judge"
                " from scratch"
            )
        done[row_key(row)] = row
    return done


def all_questions(items: list[dict]) -> list[dict]:
    questions = []
    for item in items:
        choices = item.get("choices") or [None] * len(item["questions"])
        for index, (question, options) in enumerate(zip(item["questions"], choices)):
            questions.append(
                {
                    "id": item["id"],
                    "image": item["image"],
                    "index": index,
                    "question": question,
                    "options": options,
                    "input_hash": input_hash(item["image"], question, options),
                }
            )
    return questions


def pending_questions(questions: list[dict], done: dict[tuple[str, int], dict]) -> tuple[list[dict], int]:
    """The questions without a current row, and how many of them have a stale row (their input line was edited)."""
    pending, changed = [], 0
    for question in questions:
        row = done.get((json.dumps(question["id"]), question["index"]))
        if row is None:
            pending.append(question)
        elif row["input_hash"] != question["input_hash"]:
            pending.append(question)
            changed += 1
    return pending, changed


def write_rows(output: Path, questions: list[dict], rows: dict[tuple[str, int], dict]) -> None:
    """All current rows, in input order, written atomically."""
    lines = []
    for question in questions:
        row = rows.get((json.dumps(question["id"]), question["index"]))
        if row is not None and row["input_hash"] == question["input_hash"]:
            lines.append(json.dumps(row) + "\n")
    atomic_write_text(output, "".join(lines))


class Judge:
    def __init__(self, model: MPLUGForQuestionAnswering, processor, max_length: int = 40, length_normalize=False):
        self.model, self.processor = model, processor
        self.max_length, self.length_normalize = max_length, length_normalize
        tokenizer = processor.tokenizer
        self.yes_id, self.no_id = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")

    def _inputs(self, questions: list[dict], image_root: str | None) -> dict:
        positions = {path: index for index, path in enumerate(dict.fromkeys(q["image"] for q in questions))}
        paths = list(positions)
        images = [load_image(os.path.join(image_root, path) if image_root else path) for path in paths]
        pixel_values = self.processor(images=images)["pixel_values"]
        encoded = self.processor(text=[question["question"] for question in questions], max_length=self.max_length)
        device = self.model.device
        return {
            "pixel_values": pixel_values.to(device, self.model.dtype),
            "input_ids": encoded["input_ids"].to(device),
            "attention_mask": encoded["attention_mask"].to(device),
            "image_indices": torch.tensor([positions[question["image"]] for question in questions], device=device),
        }

    def __call__(self, questions: list[dict], image_root: str | None = None) -> list[dict]:
        """Rows for a batch of questions (yes/no and multiple choice ones are batched separately)."""
        rows = {}
        yes_no = [question for question in questions if question["options"] is None]
        if yes_no:
            p_yes = score_yes_no(
                self.model, **self._inputs(yes_no, image_root), yes_token_id=self.yes_id, no_token_id=self.no_id
            )
            for question, value in zip(yes_no, p_yes.tolist()):
                rows[id(question)] = {"p_yes": value}
        multiple_choice = [question for question in questions if question["options"] is not None]
        if multiple_choice:
            num_options = max(len(question["options"]) for question in multiple_choice)
            flat = [option for question in multiple_choice for option in question["options"]]
            targets = self.processor.encode_targets(flat, max_length=self.max_length)
            choice_ids = torch.zeros(
                len(multiple_choice), num_options, targets["input_ids"].shape[1], dtype=torch.long
            )
            choice_mask = torch.zeros_like(choice_ids)
            offset = 0
            for row, question in enumerate(multiple_choice):
                count = len(question["options"])
                choice_ids[row, :count] = targets["input_ids"][offset : offset + count]
                choice_mask[row, :count] = targets["attention_mask"][offset : offset + count]
                offset += count
            device = self.model.device
            best, scores = choose(
                self.model,
                **self._inputs(multiple_choice, image_root),
                choice_ids=choice_ids.to(device),
                choice_attention_mask=choice_mask.to(device),
                length_normalize=self.length_normalize,
            )
            for question, choice, row_scores in zip(multiple_choice, best.tolist(), scores.tolist()):
                rows[id(question)] = {
                    "choice": question["options"][choice],
                    "choice_index": choice,
                    "scores": row_scores[: len(question["options"])],
                }
        return [
            {
                "id": q["id"],
                "question_index": q["index"],
                "question": q["question"],
                "input_hash": q["input_hash"],
                **rows[id(q)],
            }
            for q in questions
        ]


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="folder (or Hub id) of an MPLUGForQuestionAnswering model")
    parser.add_argument("--data", required=True, help="input JSONL")
    parser.add_argument("--output", required=True, help="output JSONL (resumed when it exists)")
    parser.add_argument("--image-root", help="folder the image paths are relative to")
    parser.add_argument("--batch-size", type=int, default=32, help="questions per batch")
    parser.add_argument("--length-normalize", action="store_true", help="mean instead of summed option log-prob")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default="float32",
        help="weights dtype (bfloat16: the CPU's AMX / the GPU's fast path; scores are computed in float32)",
    )
    parser.add_argument("--max-batches", type=int, help="stop after this many batches (the rest on the next run)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")

    # everything that can be wrong with the input or the output file is refused here, before the model is loaded
    items = read_items(args.data, args.image_root)
    output = Path(args.output)
    done = finished_rows(output)
    questions = all_questions(items)
    pending, changed = pending_questions(questions, done)
    if changed:
        print(
            f"{changed} question(s) changed in {args.data} since they were judged: judging them again", file=sys.stderr
        )
    model = MPLUGForQuestionAnswering.from_pretrained(args.model, dtype=getattr(torch, args.dtype))
    model = model.to(args.device).eval()
    judge = Judge(model, AutoProcessor.from_pretrained(args.model), length_normalize=args.length_normalize)
    batches = [pending[start : start + args.batch_size] for start in range(0, len(pending), args.batch_size)]
    rows = dict(done)
    write_rows(output, questions, rows)  # drops rows of questions no longer in the input or edited
    for number, batch in enumerate(tqdm(batches, desc="judging", unit="batch")):
        if args.max_batches is not None and number >= args.max_batches:
            break
        for row in judge(batch, args.image_root):
            rows[row_key(row)] = row
        write_rows(output, questions, rows)
    return output


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"judge_t2i.py: error: {error}")
