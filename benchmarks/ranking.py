"""Benchmark 3: closed-vocabulary VQA, `rank_answers` (candidates share their question's memory in one decoder pass)
against the original's tiled scoring (the memory repeated once per candidate); `rank_answers` also in bfloat16."""

import torch

from mplug_hf import MPLUGConfig, MPLUGForQuestionAnswering
from mplug_hf.scoring import rank_answers

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
from .original_style import tiled_rank_answers


TILED = "original-style: memory repeated per candidate"
SHARED = "rank_answers: memory shared by the candidates"


def answer_ranking(config: MPLUGConfig, settings: BenchmarkSettings) -> list[BenchmarkResult]:
    """Both sides encode the questions and re-score all candidates (k = number of candidates)."""
    model = build_model(MPLUGForQuestionAnswering, config, settings)
    batch_size, num_candidates = settings.rank_batch_size, settings.num_candidates
    pixel_values = random_images(batch_size, config, settings)
    input_ids, attention_mask = random_texts(batch_size, 5, 12, config, settings)
    candidate_ids, candidate_mask = random_texts(num_candidates, 1, 3, config, settings, with_sep=True, seed_offset=1)

    def shared(model, count: int = num_candidates):
        return rank_answers(
            model, input_ids, pixel_values, candidate_ids[:count], candidate_mask[:count], attention_mask, k=count
        )

    @torch.no_grad()
    def tiled(count: int = num_candidates):
        encoded = model.mplug(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
        memory, memory_mask = encoded.last_hidden_state, encoded.encoder_attention_mask
        return tiled_rank_answers(model, memory, memory_mask, candidate_ids[:count], candidate_mask[:count], count)

    # warm-ups with a few candidates: a full tiled run takes minutes at base size
    warmup_count = min(8, num_candidates)
    sides = {
        TILED: Side(run=tiled, warmup=lambda: tiled(warmup_count)),
        **precision_sides(SHARED, model, shared, settings, lambda model: shared(model, warmup_count)),
    }
    measurements = measure(sides, settings)

    def candidate_probabilities(output) -> torch.Tensor:
        """Every candidate's probability in candidate order (the order of near ties may differ)."""
        ids, topk_probs = output
        return torch.zeros(batch_size, num_candidates, device=ids.device).scatter(1, ids, topk_probs.float())

    def agreement(output, float32_output) -> str:
        same_top = int((output[0][:, 0] == float32_output[0][:, 0]).sum())
        difference = (candidate_probabilities(output) - candidate_probabilities(float32_output)).abs().max()
        return f"top answer as float32's {same_top}/{batch_size}, max |Δ candidate probability| {difference:.1e}"

    tiled_probs, shared_probs = (candidate_probabilities(measurements[name].output) for name in (TILED, SHARED))
    notes = [
        f"{batch_size} questions × {num_candidates} candidates; max |Δ candidate probability| between the two: "
        f"{(tiled_probs - shared_probs).abs().max().item():.1e}",
        *precision_notes(measurements, agreement),
    ]
    title = f"rank_answers, {num_candidates} candidates"
    return [make_result(title, measurements, TILED, batch_size, notes=notes)]
