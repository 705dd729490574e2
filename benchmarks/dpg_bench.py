"""Benchmark 9: DPG-Bench-style scoring. Grids of `dpg_crops` generated images per item, `dpg_questions` yes/no
questions per item, answered as ModelScope's VQA pipeline answers them (beam 5, min 1, max 10, decoded string):
one pipeline-style call per (crop, question) as the official DPG-Bench and TIFA scripts make them (preprocess one
crop and one question, encode, beam search, decode; sdpa attention) against `mplug_hf.t2i_benchmarks.VQAJudge` as
`load_vqa_judge` loads it, on `mplug_fused` attention (every crop encoded once for all its questions, all crops of all
items in one batch, the beams sharing their question's memory; see `VQAJudge`), the latter also in bfloat16, and
`--score p_yes` (P(yes) > P(no) from the first answer token, no beam search) with its agreement with the string rule.
`dpg_stride_layer` sets the fusion schedule: by default S=6, that of mPLUG-large, the benchmarks' judge, whose fusion
keeps the image tokens (so the questions about a crop share its decoder memory), at the model size asked for; S=3 is
mPLUG-base's, where every question has its own memory."""

import numpy as np
import torch
from PIL import Image

from mplug_hf import MPLUGConfig, MPLUGForQuestionAnswering, MPLUGImageProcessor, MPLUGProcessor
from mplug_hf.fused_attention import FUSED_ATTENTION
from mplug_hf.original_generation import generate_answer_original
from mplug_hf.t2i_benchmarks import VQAJudge, crop_boxes

from .common import (
    BenchmarkResult,
    BenchmarkSettings,
    Side,
    build_model,
    make_result,
    measure,
    precision_notes,
    precision_sides,
)


PER_QUESTION = "one pipeline call per question (official scripts)"
BATCHED = "VQAJudge: crops encoded once, all questions batched"
FIRST_TOKEN = "VQAJudge, --score p_yes: first answer token, no beam search"

QUESTIONS = [
    "is there a cat?", "is the cat black?", "is there a dog?", "is the dog brown?", "is the dog next to the cat?",
    "is there a ball?", "is the ball red?", "is the cat on a sofa?", "is there a window?", "is it daytime?",
    "is the sofa green?", "is there a lamp?", "is the lamp on the table?", "is this a photograph?",
    "is the style realistic?", "are there two animals?", "is the floor wooden?", "is the dog sleeping?",
]  # fmt: skip


def grid_images(count: int, crops: int, side: int, seed: int) -> list[Image.Image]:
    """Random RGB grids of `crops` generated images of `side` pixels (2×2 for 3-4 crops)."""
    rng = np.random.default_rng(seed)
    width, height = (2 * side if crops > 1 else side), (2 * side if crops > 2 else side)
    return [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(count)]


def dpg_scoring(config: MPLUGConfig, settings: BenchmarkSettings) -> list[BenchmarkResult]:
    if settings.dpg_stride_layer is not None:
        config = MPLUGConfig(**{**config.to_dict(), "stride_layer": settings.dpg_stride_layer})
    model = build_model(MPLUGForQuestionAnswering, config, settings)
    judge_model = build_model(MPLUGForQuestionAnswering, config, settings, FUSED_ATTENTION)  # the same weights
    size = config.vision_config.image_size
    processor = MPLUGProcessor(MPLUGImageProcessor(image_size=size))
    decoding = dict(num_beams=settings.num_beams, min_length=1, max_length=settings.answer_tokens)
    judge = VQAJudge(model, processor, **decoding)
    num_items, num_crops, per_item = settings.dpg_items, settings.dpg_crops, settings.dpg_questions
    questions = [QUESTIONS[q % len(QUESTIONS)] for q in range(per_item)]
    boxes = crop_boxes(size, num_crops)
    crops = [grid.crop(box).convert("RGB") for grid in grid_images(num_items, num_crops, size, settings.seed)
             for box in boxes]  # fmt: skip

    def batched(model, count: int = len(crops), rule: str = "string") -> list[str]:
        pairs = [(c, q) for c in range(count) for q in questions]
        answers = VQAJudge(model, processor, **decoding).answer(
            crops[:count], [q for _, q in pairs], [c for c, _ in pairs], rule=rule
        )
        return [answer["answer"] for answer in answers]

    def one_per_call(count: int = len(crops), limit: int | None = None) -> list[str]:
        answers = []
        for crop in crops[:count]:
            for question in questions[:limit]:
                input_ids, attention_mask = judge.encode_questions([question])
                pixel_values = judge.pixel_values([crop])
                output = generate_answer_original(
                    model, input_ids, pixel_values, attention_mask, judge.num_beams, judge.min_length, judge.max_length
                )
                answers.append(
                    processor.tokenizer.decode(
                        output.sequences[0, 0, : int(output.lengths[0, 0])].tolist(),
                        skip_special_tokens=True,
                        clean_up_tokenization_spaces=True,
                    )
                )
        return answers

    sides = {
        PER_QUESTION: Side(run=one_per_call, warmup=lambda: one_per_call(1, 1)),
        **precision_sides(BATCHED, judge_model, batched, settings, lambda model: batched(model, 1)),
        **precision_sides(
            FIRST_TOKEN,
            judge_model,
            lambda model: batched(model, rule="p_yes"),
            settings,
            lambda model: batched(model, 1, rule="p_yes"),
        ),
    }
    with torch.no_grad():
        measurements = measure(sides, settings)
    reference, ours = measurements[PER_QUESTION].output, measurements[BATCHED].output
    first_token = measurements[FIRST_TOKEN].output

    def equal_answers(answers: list[str], other_answers: list[str]) -> str:
        return f"{sum(a == b for a, b in zip(answers, other_answers))}/{len(answers)}"

    notes = [
        f"{len(crops) * per_item} questions; answer strings equal: {equal_answers(ours, reference)}",
        # random weights rarely answer "yes": a check that both rules run on the same questions, not of their accuracy
        "p_yes decisions equal to the string rule's (answer == 'yes'): "
        f"{equal_answers(first_token, ['yes' if answer == 'yes' else 'no' for answer in reference])}",
        *precision_notes(
            measurements, lambda answers, float32: f"answers equal to float32's: {equal_answers(answers, float32)}"
        ),
    ]
    title = (
        f"DPG-Bench scoring, {num_items} items × {num_crops} crops × {per_item} questions, "
        f"fusion stride S={config.stride_layer}"
    )
    return [make_result(title, measurements, PER_QUESTION, len(crops), notes=notes)]
