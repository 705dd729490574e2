"""Benchmark 1: beam-search captioning and VQA generation with a KV cache and memory shared by the beams, against the
same model decoding the original way (no cache, full prefix re-run every step, memory tiled per beam); `generate`
also in bfloat16 (weights, autocast) beside its float32 run."""

import torch

from mplug_hf import MPLUGConfig, MPLUGForCaptioning, MPLUGForQuestionAnswering
from mplug_hf.original_generation import generate_answer_original, generate_caption_original

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
from .original_style import uncached_tiled_beam_search


ORIGINAL_STYLE = "original-style: no cache, prefix re-run, memory tiled per beam"
CACHED_ORIGINAL = "ported original beam search: same algorithm, KV cache, shared memory"
HF_GENERATE = "generate (HF beam search), KV cache, shared memory"


def _decoding_benchmark(title, model, model_inputs, encode, length, settings) -> BenchmarkResult:
    """Three decoders producing exactly `length` tokens (min length = max length) from the same inputs, and HF
    `generate` again in each of `settings.precisions` (bfloat16); `encode` gives the baseline its
    `(memory, memory_mask)` (the others encode inside their call)."""
    beams = settings.num_beams

    @torch.no_grad()
    def original_style(tokens: int) -> torch.LongTensor:
        memory, memory_mask = encode()
        return uncached_tiled_beam_search(model, memory, memory_mask, beams, tokens, tokens)

    original_decoding = (
        generate_caption_original if isinstance(model, MPLUGForCaptioning) else generate_answer_original
    )

    def cached_original(tokens: int) -> torch.LongTensor:
        return original_decoding(
            model, **model_inputs, num_beams=beams, min_length=tokens, max_length=tokens
        ).sequences

    def hf_generate(model, tokens: int) -> torch.LongTensor:
        return model.generate(**model_inputs, num_beams=beams, min_new_tokens=tokens, max_new_tokens=tokens)

    sides = {
        name: Side(run=lambda decode=decode: decode(length), warmup=lambda decode=decode: decode(2))
        for name, decode in ((ORIGINAL_STYLE, original_style), (CACHED_ORIGINAL, cached_original))
    }
    sides |= precision_sides(
        HF_GENERATE, model, lambda model: hf_generate(model, length), settings, lambda model: hf_generate(model, 2)
    )
    measurements = measure(sides, settings)
    baseline = measurements[ORIGINAL_STYLE].output[:, 0]
    cached = measurements[CACHED_ORIGINAL].output[:, 0]
    hf = measurements[HF_GENERATE].output
    batch_size = baseline.shape[0]
    notes = [
        f"original-style and ported original beam search sequences equal: {equal_sequences(baseline, cached)} (same beam"
        " search, so all should be)",
        f"HF generate's best sequence equals the ported original beam search for {equal_sequences(hf, cached)} items (another"
        " beam search: length penalty and bookkeeping differ)",
        *precision_notes(
            measurements,
            lambda sequences, float32: f"sequences equal to float32's: {equal_sequences(sequences, float32)}",
        ),
    ]
    return make_result(title, measurements, ORIGINAL_STYLE, batch_size, batch_size * length, notes)


def equal_sequences(sequences: torch.LongTensor, other_sequences: torch.LongTensor) -> str:
    return f"{int((sequences == other_sequences).all(dim=1).sum())}/{len(sequences)}"


def caption_generation(config: MPLUGConfig, settings: BenchmarkSettings) -> list[BenchmarkResult]:
    model = build_model(MPLUGForCaptioning, config, settings)
    pixel_values = random_images(settings.batch_size, config, settings)

    def encode():
        return model.vision_model(pixel_values).last_hidden_state, None

    title = f"captioning, beam {settings.num_beams}, {settings.caption_tokens} tokens"
    return [
        _decoding_benchmark(title, model, {"pixel_values": pixel_values}, encode, settings.caption_tokens, settings)
    ]


def vqa_generation(config: MPLUGConfig, settings: BenchmarkSettings) -> list[BenchmarkResult]:
    model = build_model(MPLUGForQuestionAnswering, config, settings)
    pixel_values = random_images(settings.batch_size, config, settings)
    input_ids, attention_mask = random_texts(settings.batch_size, 5, 12, config, settings)
    model_inputs = {"input_ids": input_ids, "pixel_values": pixel_values, "attention_mask": attention_mask}

    def encode():
        encoded = model.mplug(**model_inputs)
        return encoded.last_hidden_state, encoded.encoder_attention_mask

    title = f"VQA generation, beam {settings.num_beams}, {settings.answer_tokens} tokens"
    return [_decoding_benchmark(title, model, model_inputs, encode, settings.answer_tokens, settings)]
