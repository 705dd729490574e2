"""
Judge text-to-image generations with an mPLUG VQA model (DPG-Bench / TIFA style), batched and resumable.

Input: JSONL, one generated image per line: `{"id": …, "image": path, "questions": [...], "choices": [[...], ...]}`.
`choices` is optional; questions with options are answered by multiple choice (`choose`), the others get P(yes)
(`score_yes_no`). Each image is encoded once for all of its questions.

Output: JSONL, one line per question, in input order: `{"id", "question_index", "question", "p_yes"}` or
`{"id", "question_index", "question", "choice", "choice_index", "scores"}`. Run the same command again after an
interruption: finished questions are kept, a half-written last line is dropped, and the run continues where it
stopped, so the file ends with no duplicate or lost rows.

    python examples/judge_t2i.py --model converted/mplug-large-vqa --data prompts.jsonl --output judged.jsonl
"""

import argparse
import json
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoProcessor

from mplug_hf import MPLUGForQuestionAnswering
from mplug_hf.image_processing_mplug import load_image


def read_items(path: str) -> list[dict]:
    items = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            item = json.loads(line)
            if "image" not in item or not item.get("questions"):
                raise ValueError(f"{path}:{line_number}: each line needs 'image' and a non-empty 'questions' list")
            choices = item.get("choices")
            if choices is not None and len(choices) != len(item["questions"]):
                raise ValueError(f"{path}:{line_number}: 'choices' needs one list (or null) per question")
            item.setdefault("id", line_number - 1)
            items.append(item)
    return items


def finished_rows(output: Path) -> set[tuple[str, int]]:
    """Keys of the rows already written; rewrites the file without a trailing line cut off by an interruption."""
    if not output.exists():
        return set()
    complete, done = [], set()
    for line in output.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if not line.endswith("\n"):
            break
        complete.append(line)
        done.add((json.dumps(row["id"]), row["question_index"]))
    output.write_text("".join(complete), encoding="utf-8")
    return done


def pending_questions(items: list[dict], done: set[tuple[str, int]]) -> list[dict]:
    pending = []
    for item in items:
        choices = item.get("choices") or [None] * len(item["questions"])
        for index, (question, options) in enumerate(zip(item["questions"], choices)):
            if (json.dumps(item["id"]), index) not in done:
                pending.append(
                    {
                        "id": item["id"],
                        "image": item["image"],
                        "index": index,
                        "question": question,
                        "options": options,
                    }
                )
    return pending


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
            p_yes = self.model.score_yes_no(
                **self._inputs(yes_no, image_root), yes_token_id=self.yes_id, no_token_id=self.no_id
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
            best, scores = self.model.choose(
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
            {"id": q["id"], "question_index": q["index"], "question": q["question"], **rows[id(q)]} for q in questions
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
    parser.add_argument("--max-batches", type=int, help="stop after this many batches (the rest on the next run)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")

    items = read_items(args.data)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    pending = pending_questions(items, finished_rows(output))
    model = MPLUGForQuestionAnswering.from_pretrained(args.model).to(args.device).eval()
    judge = Judge(model, AutoProcessor.from_pretrained(args.model), length_normalize=args.length_normalize)
    batches = [pending[start : start + args.batch_size] for start in range(0, len(pending), args.batch_size)]
    with output.open("a", encoding="utf-8") as handle:
        for number, batch in enumerate(tqdm(batches, desc="judging", unit="batch")):
            if args.max_batches is not None and number >= args.max_batches:
                break
            handle.write("".join(json.dumps(row) + "\n" for row in judge(batch, args.image_root)))
            handle.flush()
            os.fsync(handle.fileno())
    return output


if __name__ == "__main__":
    main()
