"""Benchmark 5: one VQA training step (forward, backward, AdamW update) with and without gradient checkpointing
(`activation_checkpointing_enable`, the name transformers 5.24 gives `gradient_checkpointing_enable`)."""

import dataclasses

import torch

from mplug_hf import MPLUGConfig, MPLUGForQuestionAnswering

from .common import (
    BenchmarkResult,
    BenchmarkSettings,
    Side,
    autocast,
    build_model,
    make_result,
    measure,
    random_images,
    random_texts,
)


PLAIN = "no gradient checkpointing"
CHECKPOINTED = "gradient checkpointing"


def training_step(config: MPLUGConfig, settings: BenchmarkSettings) -> list[BenchmarkResult]:
    """Float32 weights (autocast to `dtype` when it is lower); checkpointing is switched on the same model before each
    step. The warm-up steps (one image) also create the optimizer state, so the peak increase of a timed step is its
    activations, gradients and update."""
    float_settings = dataclasses.replace(settings, dtype=torch.float32)
    model = build_model(MPLUGForQuestionAnswering, config, float_settings).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch_size = settings.train_batch_size
    pixel_values = random_images(batch_size, config, float_settings)
    input_ids, attention_mask = random_texts(batch_size, 5, 12, config, settings)
    answer_ids, answer_mask = random_texts(batch_size, 1, 3, config, settings, with_sep=True, seed_offset=1)
    labels = answer_ids.masked_fill(answer_mask == 0, -100)

    def step(checkpointing: bool, rows: int = batch_size) -> float:
        if checkpointing:
            model.activation_checkpointing_enable()
        else:
            model.activation_checkpointing_disable()
        with autocast(settings):
            loss = model(
                input_ids=input_ids[:rows],
                pixel_values=pixel_values[:rows],
                attention_mask=attention_mask[:rows],
                labels=labels[:rows],
            ).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    sides = {
        PLAIN: Side(run=lambda: step(False), warmup=lambda: step(False, 1)),
        CHECKPOINTED: Side(run=lambda: step(True), warmup=lambda: step(True, 1)),
    }
    measurements = measure(sides, settings)
    title = f"VQA training step, batch {batch_size}"
    notes = ["AdamW; images/s = batch / step time; the peak includes the weights and the optimizer state"]
    return [make_result(title, measurements, PLAIN, batch_size, notes=notes)]
