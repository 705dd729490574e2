"""Benchmark 6: text-to-image judging, `score_yes_no` over several questions per image in one call (`image_indices`:
each image encoded once, its key/value projections shared by its questions) against one question per call; the
batched call also in bfloat16."""

import torch

from mplug_hf import MPLUGConfig, MPLUGForQuestionAnswering
from mplug_hf.processing_mplug import default_tokenizer
from mplug_hf.scoring import score_yes_no

from .common import (
    BenchmarkResult,
    BenchmarkSettings,
    Side,
    build_model,
    make_result,
    measure,
    precision_notes,
    precision_sides,
    random_images,
    random_texts,
)


PER_QUESTION = "one question per call"
BATCHED = "all questions in one call, image_indices"


def judging(config: MPLUGConfig, settings: BenchmarkSettings) -> list[BenchmarkResult]:
    """Both sides use the `mplug_fused` kernels, the judging default; per question calls trim their padding."""
    model = build_model(MPLUGForQuestionAnswering, config, settings, attn_implementation="mplug_fused")
    num_images, per_image = settings.judge_images, settings.questions_per_image
    pixel_values = random_images(num_images, config, settings)
    input_ids, attention_mask = random_texts(num_images * per_image, 5, 12, config, settings)
    image_indices = torch.arange(num_images, device=settings.device).repeat_interleave(per_image)
    yes_id, no_id = default_tokenizer().convert_tokens_to_ids(["yes", "no"])

    def batched(model, images: int = num_images) -> torch.Tensor:
        questions = images * per_image
        return score_yes_no(
            model,
            input_ids[:questions],
            pixel_values[:images],
            yes_id,
            no_id,
            attention_mask[:questions],
            image_indices=image_indices[:questions],
        )

    def one_per_call(questions: int = num_images * per_image) -> torch.Tensor:
        scores = []
        for question in range(questions):
            length = int(attention_mask[question].sum())
            image = int(image_indices[question])
            scores.append(
                score_yes_no(
                    model,
                    input_ids[question : question + 1, :length],
                    pixel_values[image : image + 1],
                    yes_id,
                    no_id,
                    attention_mask[question : question + 1, :length],
                )
            )
        return torch.cat(scores)

    sides = {
        PER_QUESTION: Side(run=one_per_call, warmup=lambda: one_per_call(2)),
        **precision_sides(BATCHED, model, batched, settings, lambda model: batched(model, 1)),
    }
    measurements = measure(sides, settings)
    difference = (measurements[PER_QUESTION].output - measurements[BATCHED].output).abs().max().item()

    def agreement(p_yes, float32_p_yes) -> str:
        same_side = int(((p_yes > 0.5) == (float32_p_yes > 0.5)).sum())
        return (
            f"max |Δ P(yes)| to float32 {(p_yes - float32_p_yes).abs().max():.1e}, same side of 0.5 "
            f"{same_side}/{len(p_yes)}"
        )

    notes = [
        f"{num_images * per_image} questions; max |Δ P(yes)| between the two: {difference:.1e}",
        *precision_notes(measurements, agreement),
    ]
    title = f"judging score_yes_no, {num_images} images × {per_image} questions"
    return [make_result(title, measurements, PER_QUESTION, num_images, notes=notes)]
