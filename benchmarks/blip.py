"""Benchmark 4: our base model against transformers' BLIP of equal size (ViT-B/16 at the same image size, 12-layer
BERT-base text parts), both with random weights, on the same inputs and with the same beam settings."""

import torch
from transformers import BlipConfig, BlipForConditionalGeneration, BlipForQuestionAnswering

from mplug_hf import MPLUGConfig, MPLUGForCaptioning, MPLUGForQuestionAnswering

from .common import (
    BenchmarkResult,
    BenchmarkSettings,
    Side,
    build_model,
    count_parameters,
    make_result,
    measure,
    random_images,
    random_texts,
    set_attention_implementation,
)


BLIP = "transformers BLIP (eager attention, its only kernel)"
OURS = "mplug_hf (sdpa)"
OURS_EAGER = "mplug_hf (eager)"


def blip_config_like(config: MPLUGConfig) -> BlipConfig:
    """BLIP with our widths and image size; its text encoder and decoder get our decoder's depth (12 for base). The
    vocabulary is BERT's plus BLIP's [DEC] and [ENC] tokens."""
    vision, text = config.vision_config, config.text_config
    return BlipConfig(
        vision_config=dict(
            hidden_size=vision.hidden_size,
            intermediate_size=vision.intermediate_size,
            num_hidden_layers=vision.num_hidden_layers,
            num_attention_heads=vision.num_attention_heads,
            image_size=vision.image_size,
            patch_size=vision.patch_size,
        ),
        text_config=dict(
            vocab_size=text.vocab_size + 2,
            hidden_size=text.hidden_size,
            intermediate_size=text.intermediate_size,
            num_hidden_layers=config.decoder_layers,
            num_attention_heads=text.num_attention_heads,
            max_position_embeddings=text.max_position_embeddings,
        ),
    )


def _compare(title, ours, blip, model_inputs, tokens, settings, extra_notes=()) -> BenchmarkResult:
    """BLIP, ours with sdpa and ours with eager attention generate `tokens` tokens (min = max) from `model_inputs`."""

    def generate(model, implementation=None, length=tokens):
        if implementation is not None:
            set_attention_implementation(model.config, implementation)
        return model.generate(
            **model_inputs, num_beams=settings.num_beams, min_new_tokens=length, max_new_tokens=length
        )

    sides = {
        BLIP: Side(run=lambda: generate(blip), warmup=lambda: generate(blip, length=2)),
        OURS: Side(run=lambda: generate(ours, "sdpa"), warmup=lambda: generate(ours, "sdpa", 2)),
        OURS_EAGER: Side(run=lambda: generate(ours, "eager"), warmup=lambda: generate(ours, "eager", 2)),
    }
    measurements = measure(sides, settings)
    batch_size = next(iter(model_inputs.values())).shape[0]
    notes = [f"parameters: ours {count_parameters(ours):.0f} M, BLIP {count_parameters(blip):.0f} M", *extra_notes]
    return make_result(title, measurements, BLIP, batch_size, batch_size * tokens, notes)


def blip_comparison(config: MPLUGConfig, settings: BenchmarkSettings) -> list[BenchmarkResult]:
    blip_config = blip_config_like(config)
    pixel_values = random_images(settings.batch_size, config, settings)
    input_ids, attention_mask = random_texts(settings.batch_size, 5, 12, config, settings)
    results = []

    ours = build_model(MPLUGForQuestionAnswering, config, settings)
    torch.manual_seed(settings.seed)
    blip = BlipForQuestionAnswering(blip_config).to(device=settings.device, dtype=settings.dtype).eval()
    inputs = {"input_ids": input_ids, "pixel_values": pixel_values, "attention_mask": attention_mask}
    title = f"vs BLIP: VQA generate, beam {settings.num_beams}, {settings.answer_tokens} tokens"
    design = (
        "BLIP's decoder attends to the question states only (its text encoder cross-attends to the image), ours to "
        "[image; question] tokens"
    )
    results.append(_compare(title, ours, blip, inputs, settings.answer_tokens, settings, [design]))
    del ours, blip

    ours = build_model(MPLUGForCaptioning, config, settings)
    torch.manual_seed(settings.seed)
    blip = BlipForConditionalGeneration(blip_config).to(device=settings.device, dtype=settings.dtype).eval()
    title = f"vs BLIP: captioning generate, beam {settings.num_beams}, {settings.caption_tokens} tokens"
    results.append(_compare(title, ours, blip, {"pixel_values": pixel_values}, settings.caption_tokens, settings))
    return results
