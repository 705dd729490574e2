"""Do bfloat16 weights and bfloat16 autocast give the answers of float32 (issue 21)? Measured on trained models, each
precision made from the same float32 model as the benchmarks make it ([`benchmarks.common.precision_variant`]):

- VQA: the easy-VQA model that `examples/demo.py` trains, on its test split: the answers ranked over the 13 answers
  (the demo's accuracy) and the answers the original beam search generates, compared with float32's answers and
  scored against the truth.
- Retrieval and grounding: small fixtures trained here on easy-VQA's training images (the demo's model size and
  vocabulary, `--fixture-steps` Trainer steps; texts "a <colour> <shape>", boxes around the shape), evaluated on its
  test images: the image → text and text → image rankings (ITC top-k re-scored by ITM) and the predicted boxes.

    python examples/demo.py --output-dir outputs/demo        # the trained VQA model
    python -m benchmarks.bf16_agreement --model outputs/demo > agreement.md
    python -m benchmarks.bf16_agreement --model outputs/demo --test-subset 1000 --fixture-steps 100   # quicker

Prints markdown tables (progress to stderr).
"""

import argparse
import contextlib
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image
from transformers import TrainingArguments

from mplug_hf import MPLUGForGrounding, MPLUGForQuestionAnswering, MPLUGForRetrieval, MPLUGProcessor
from mplug_hf.data_collators import MPLUGGroundingDataCollator, MPLUGRetrievalDataCollator
from mplug_hf.evaluation.runner import EvaluationRunner, answer_questions, ground_phrases, retrieval_scores
from mplug_hf.training import MPLUGTrainer

from .common import PRECISIONS, BenchmarkSettings, precision_variant


ROOT = Path(__file__).resolve().parents[1]
FLOAT32 = "float32"
# box tokens among the [unused] entries at the front of the demo's vocabulary: 65 bins for 64-pixel images
BOX_TOKENS = dict(box_prefix_token_id=1, box_bin_start_token_id=2, num_box_bins=65)
COLOURS = ("black", "blue", "brown", "gray", "green", "red", "teal", "yellow")
SHAPES = ("circle", "rectangle", "triangle")
RETRIEVAL_TEXTS = [f"a {colour} {shape}" for colour in COLOURS for shape in SHAPES]


def load_demo():
    """examples/demo.py as a module: its easy-VQA test split, answer list and re-scoring depth."""
    spec = importlib.util.spec_from_file_location("demo", ROOT / "examples" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo


def in_each_precision(model: torch.nn.Module, work) -> dict[str, tuple[object, float]]:
    """`(work(model), seconds)` for float32 `model` and each of its precision variants, without gradients."""
    settings = BenchmarkSettings(device=model.device)
    results = {}
    for precision in (FLOAT32, *PRECISIONS):
        if precision == FLOAT32:
            name, variant, context = FLOAT32, model, contextlib.nullcontext
        else:
            name, (variant, context) = PRECISIONS[precision], precision_variant(model, precision, settings)
        print(f"[agreement] {name} …", file=sys.stderr, flush=True)
        start = time.perf_counter()
        with torch.no_grad(), context():
            output = work(variant)
        results[name] = (output, time.perf_counter() - start)
    return results


def share(matches: int, total: int) -> str:
    return f"{matches}/{total} ({100 * matches / total:.2f}%)"


def vqa_agreement(model, processor, records, answer_list, rescored_answers: int, batch_size: int) -> list[str]:
    """Rows of the VQA table: per decoding and precision, the answers equal to float32's and the accuracy."""
    gold = [record["answer"] for record in records]
    decodings = {
        f"rank_answers over {len(answer_list)} answers (k = {rescored_answers})": dict(
            answer_list=answer_list, k=rescored_answers
        ),
        "generate_answer_original, beam 5": {},
    }
    rows = []
    for decoding, options in decodings.items():

        def answer(variant, options=options):
            runner = EvaluationRunner(variant, processor, batch_size=batch_size)
            return [item["answer"] for item in answer_questions(runner, records, **options)]

        answers = in_each_precision(model, answer)
        float32_answers, _ = answers[FLOAT32]
        float32_accuracy = 100 * sum(a == g for a, g in zip(float32_answers, gold)) / len(gold)
        for name, (predicted, seconds) in answers.items():
            accuracy = 100 * sum(a == g for a, g in zip(predicted, gold)) / len(gold)
            same = share(sum(a == b for a, b in zip(predicted, float32_answers)), len(gold))
            rows.append(
                f"| {decoding} | {name} | {same} | {accuracy:.2f} | {accuracy - float32_accuracy:+.2f} | "
                f"{seconds:.1f} |"
            )
    return rows


def train_fixture(model_class, config, processor, collator, examples: list[dict], steps: int, seed: int):
    """A head trained from scratch as the demo trains its VQA model (Trainer on the CPU, AdamW, linear decay)."""
    torch.manual_seed(seed)
    model = model_class._from_config(config)
    with tempfile.TemporaryDirectory() as output_dir:
        arguments = TrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=16, learning_rate=5e-4, weight_decay=0.01,
            warmup_steps=0.05, max_steps=steps, max_grad_norm=1.0, save_strategy="no", report_to=[], use_cpu=True,
            seed=seed, remove_unused_columns=False, disable_tqdm=True, logging_steps=max(1, steps // 4),
        )  # fmt: skip
        print(f"[agreement] training {model_class.__name__} for {steps} steps …", file=sys.stderr, flush=True)
        collate = collator(processor)
        trainer = MPLUGTrainer(
            model=model,
            args=arguments,
            train_dataset=datasets.Dataset.from_list(examples),
            # without augmentation the grounding collator adds the image sizes, which the model does not take
            data_collator=lambda batch: {k: v for k, v in collate(batch).items() if k != "image_sizes"},
        )
        trainer.train()
    return model.eval()


def image_descriptions(records) -> dict[str, tuple[str, ...]]:
    """Each image's colour and shape where the answers of its questions name them."""
    described: dict[str, dict[str, str]] = {}
    for record in records:
        kind = "colour" if record["answer"] in COLOURS else "shape" if record["answer"] in SHAPES else None
        if kind:
            described.setdefault(record["image"], {})[kind] = record["answer"]
    return {
        image: tuple(words[kind] for kind in ("colour", "shape") if kind in words)
        for image, words in described.items()
    }


def shape_box(path: str) -> list[float]:
    """Pixel (x1, y1, x2, y2) of the one shape of an easy-VQA image: the pixels that differ from the background."""
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    ys, xs = np.nonzero(np.abs(pixels - pixels[0, 0]).sum(axis=-1) > 30)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def described_examples(records) -> list[dict]:
    """One example per image whose colour and shape are both known: `{image, caption "a <colour> <shape>", image_id,
    text "the <colour> <shape>", bbox}` (the retrieval and grounding collators' fields). `image_id` is the caption:
    images of one description are not each other's contrastive negatives."""
    examples = []
    for image, words in image_descriptions(records).items():
        if len(words) == 2:
            colour, shape = words
            caption = f"a {colour} {shape}"
            examples.append(
                {"image": image, "caption": caption, "image_id": caption, "text": f"the {colour} {shape}",
                 "bbox": shape_box(image)}
            )  # fmt: skip
    return examples


def ranking_agreement(scores, float32_scores, top: int = 5) -> tuple[str, str]:
    """(top-1 equal, top-`top` sets equal) of the rows of `scores` against float32's."""
    scores, float32_scores = torch.from_numpy(scores), torch.from_numpy(float32_scores)
    top = min(top, scores.shape[1])
    top1 = int((scores.argmax(dim=1) == float32_scores.argmax(dim=1)).sum())
    ours, theirs = (ranked.topk(top, dim=1).indices.sort(dim=1).values for ranked in (scores, float32_scores))
    return share(top1, len(scores)), share(int((ours == theirs).all(dim=1).sum()), len(scores))


def retrieval_agreement(model, processor, examples: list[dict], k: int, batch_size: int) -> list[str]:
    """Rows of the retrieval table: the rankings of every image and every text against float32's, and how often an
    image's own description ranks first (R@1)."""

    def retrieve(variant):
        runner = EvaluationRunner(variant, processor, batch_size=batch_size)
        return retrieval_scores(runner, [example["image"] for example in examples], RETRIEVAL_TEXTS, k=k)

    retrieved = in_each_precision(model, retrieve)
    float32_scores, _ = retrieved[FLOAT32]
    truth = np.array([RETRIEVAL_TEXTS.index(example["caption"]) for example in examples])
    rows = []
    for name, (scores, seconds) in retrieved.items():
        i2t = ranking_agreement(scores["scores_i2t"], float32_scores["scores_i2t"])
        t2i = ranking_agreement(scores["scores_t2i"], float32_scores["scores_t2i"])
        recall = 100 * (scores["scores_i2t"].argmax(axis=1) == truth).mean()
        rows.append(f"| {name} | {i2t[0]} | {i2t[1]} | {t2i[0]} | {t2i[1]} | {recall:.2f} | {seconds:.1f} |")
    return rows


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(dim=1)


def box_iou(boxes: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """IoU of matching (x1, y1, x2, y2) boxes."""
    top_left, bottom_right = torch.maximum(boxes[:, :2], other[:, :2]), torch.minimum(boxes[:, 2:], other[:, 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(dim=1)
    return intersection / (box_area(boxes) + box_area(other) - intersection).clamp(min=1e-9)


def grounding_agreement(model, processor, examples: list[dict], batch_size: int) -> list[str]:
    """Rows of the grounding table: the predicted pixel boxes against float32's (and the accuracy at IoU 0.5)."""

    def ground(variant):
        return ground_phrases(EvaluationRunner(variant, processor, batch_size=batch_size), examples)

    grounded = in_each_precision(model, ground)
    float32_boxes, _ = grounded[FLOAT32]
    truth = torch.tensor([example["bbox"] for example in examples])
    rows = []
    for name, (boxes, seconds) in grounded.items():
        equal = share(int((boxes == float32_boxes).all(dim=1).sum()), len(boxes))
        iou = box_iou(boxes.float(), float32_boxes.float())
        difference = (boxes.float() - float32_boxes.float()).abs().max()
        accuracy = 100 * (box_iou(boxes.float(), truth) >= 0.5).float().mean()
        rows.append(
            f"| {name} | {equal} | {iou.mean():.4f} | {iou.min():.4f} | {difference:.2f} | {accuracy:.2f} | "
            f"{seconds:.1f} |"
        )
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the folder examples/demo.py saved (its --output-dir)")
    parser.add_argument("--test-subset", type=int, help="easy-VQA test questions (default: all 9,673)")
    parser.add_argument(
        "--fixture-steps", type=int, default=500, help="training steps of the retrieval/grounding fixtures"
    )
    parser.add_argument("--fixture-images", type=int, help="test images for retrieval and grounding (default: all)")
    parser.add_argument("--k", type=int, default=8, help="retrieval: ITC candidates re-scored by ITM")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is robust on a shared CPU)")
    args = parser.parse_args(argv)
    if not (Path(args.model) / "config.json").is_file():
        parser.error(f"--model {args.model}: no saved model there (train one with python examples/demo.py)")
    for name in ("fixture_steps", "fixture_images", "k", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv=None) -> str:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    demo = load_demo()
    records = demo.easy_vqa_test_questions(args.test_subset).to_list()
    model = MPLUGForQuestionAnswering.from_pretrained(args.model).eval()
    processor = MPLUGProcessor.from_pretrained(args.model)
    vqa_rows = vqa_agreement(model, processor, records, demo.get_answers(), demo.RESCORED_ANSWERS, args.batch_size)

    # retrieval and grounding fixtures: the demo's model size and vocabulary (box tokens among its [unused] entries)
    config = demo.small_config(vocab_size=len(processor.tokenizer))
    for name, value in BOX_TOKENS.items():
        setattr(config, name, value)
    _, train_answers, train_image_ids = demo.get_train_questions()
    train_paths = demo.get_train_image_paths()
    train_examples = described_examples(
        {"image": train_paths[i], "answer": a} for a, i in zip(train_answers, train_image_ids)
    )
    test_examples = described_examples(demo.easy_vqa_test_questions(None).to_list())[: args.fixture_images]
    retrieval_model = train_fixture(
        MPLUGForRetrieval, config, processor, MPLUGRetrievalDataCollator, train_examples, args.fixture_steps, args.seed
    )
    retrieval_rows = retrieval_agreement(retrieval_model, processor, test_examples, args.k, args.batch_size)
    grounding_model = train_fixture(
        MPLUGForGrounding, config, processor, MPLUGGroundingDataCollator, train_examples, args.fixture_steps, args.seed
    )
    grounding_rows = grounding_agreement(grounding_model, processor, test_examples, args.batch_size)

    fixtures = (
        f"trained here from scratch ({args.fixture_steps} steps of 16 of the {len(train_examples)} described training "
        f"images), {len(test_examples)} test images"
    )
    report = "\n".join(
        [
            f"## bfloat16 against float32 (torch threads {torch.get_num_threads()})",
            "",
            f"VQA: the demo's easy-VQA model ({args.model}), {len(records)} test questions",
            "",
            "| decoding | precision | answers equal to float32's | accuracy % | Δ accuracy (points) | s |",
            "|---|---|---:|---:|---:|---:|",
            *vqa_rows,
            "",
            f"Retrieval: {fixtures} × {len(RETRIEVAL_TEXTS)} texts ('a <colour> <shape>'), ITC top {args.k} "
            "re-scored by ITM",
            "",
            "| precision | image→text top-1 equal | top-5 set equal | text→image top-1 equal | top-5 set equal "
            "| image→text R@1 % | s |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *retrieval_rows,
            "",
            f"Grounding: {fixtures}, one query each ('the <colour> <shape>')",
            "",
            "| precision | boxes equal to float32's | mean IoU with float32's | min IoU | max abs Δ px | Acc@0.5 % | s |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *grounding_rows,
        ]
    )
    print(report)
    return report


if __name__ == "__main__":
    main()
