"""Benchmark 2: the fusion encoder (text encoder output + image tokens → fused memory) under each attention kernel."""

import torch

from mplug_hf import MPLUGConfig, MPLUGModel

from .common import (
    BenchmarkResult,
    BenchmarkSettings,
    Side,
    build_model,
    make_result,
    measure,
    random_images,
    random_texts,
    set_attention_implementation,
)


IMPLEMENTATIONS = ("eager", "sdpa", "mplug_fused")


def fusion_encoder(config: MPLUGConfig, settings: BenchmarkSettings) -> list[BenchmarkResult]:
    """The same image tokens and text states fused by one model whose kernel is switched before each call."""
    model = build_model(MPLUGModel, config, settings)
    pixel_values = random_images(settings.batch_size, config, settings)
    input_ids, attention_mask = random_texts(settings.batch_size, 5, 12, config, settings)
    with torch.no_grad():
        image_states = model.get_image_features(pixel_values).last_hidden_state
        text_states = model.get_text_features(input_ids, attention_mask).last_hidden_state

    @torch.no_grad()
    def fuse(implementation: str) -> torch.Tensor:
        set_attention_implementation(model.config, implementation)
        return model(
            image_states=image_states, text_states=text_states, attention_mask=attention_mask
        ).last_hidden_state

    sides = {name: Side(run=lambda name=name: fuse(name)) for name in IMPLEMENTATIONS}
    measurements = measure(sides, settings)
    eager = measurements["eager"].output.float()
    notes = [
        "max |memory - eager memory|: "
        + ", ".join(
            f"{name} {(measurements[name].output.float() - eager).abs().max().item():.1e}"
            for name in IMPLEMENTATIONS[1:]
        ),
        f"{config.fusion_layers} fusion layers (connected every {config.stride_layer}), "
        f"{config.num_image_tokens} image tokens, questions of {input_ids.shape[1]} tokens",
    ]
    title = f"fusion encoder, batch {settings.batch_size}"
    return [make_result(title, measurements, "eager", settings.batch_size, notes=notes)]
