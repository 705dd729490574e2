"""Benchmark 7: the visual encoder (CLIP ViT + projection to the text width) under each attention kernel, sdpa also
in bfloat16, with its achieved FLOP/s and model FLOPs utilisation (MFU) against the device's peak."""

import contextlib
import copy
import functools

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

from mplug_hf import MPLUGConfig, MPLUGModel

from .common import (
    BenchmarkResult,
    BenchmarkSettings,
    Side,
    build_model,
    lower_precisions,
    make_result,
    measure,
    precision_notes,
    precision_side_name,
    precision_sides,
    precision_variant,
    random_images,
    set_attention_implementation,
)


# Dense peak TFLOP/s from the vendors' data sheets (tensor cores for bf16, no sparsity; plain fp32 for float32).
PEAK_TFLOPS = {
    ("H100 PCIe", torch.bfloat16): 756.0,
    ("H100", torch.bfloat16): 989.4,
    ("H200", torch.bfloat16): 989.4,
    ("A100", torch.bfloat16): 312.0,
    ("H100 PCIe", torch.float32): 51.2,
    ("H100", torch.float32): 66.9,
    ("H200", torch.float32): 66.9,
    ("A100", torch.float32): 19.5,
}


def peak_tflops(settings: BenchmarkSettings) -> float | None:
    """`settings.peak_tflops` when given, else the data-sheet peak of a known GPU (the most specific name first)."""
    if settings.peak_tflops:
        return settings.peak_tflops
    if settings.device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(settings.device)
    for (model, dtype), tflops in sorted(PEAK_TFLOPS.items(), key=lambda item: -len(item[0][0])):
        if model in name and dtype == settings.dtype:
            return tflops
    return None


def attention_kernels(settings: BenchmarkSettings) -> list[str]:
    """eager and sdpa everywhere; the flash kernels where installed (CUDA, half precision)."""
    kernels = ["eager", "sdpa"]
    if settings.device.type == "cuda" and settings.dtype != torch.float32:
        kernels += [name for name, available in (("flash_attention_2", is_flash_attn_2_available()),
                                                 ("flash_attention_3", is_flash_attn_3_available())) if available]  # fmt: skip
    return kernels


def attention_flops(config: MPLUGConfig, batch_size: int) -> int:
    """The ViT's attention matmuls, counted analytically: per layer and image, Q·Kᵀ and P·V are 2·T²·W each (T
    tokens, W the width over all heads). The same for every kernel; FlopCounterMode counts eager's bmm but not the
    sdpa/flash kernels (on CPU it sees no FLOPs in sdpa at all), so counting them would depend on the kernel."""
    tokens, width = config.num_image_tokens, config.vision_config.hidden_size
    return batch_size * config.vision_config.num_hidden_layers * 4 * tokens**2 * width


def _is_attention_op(op) -> bool:
    return "scaled_dot_product" in str(op) or "flash_attention" in str(op) or "efficient_attention" in str(op)


def encoder_flops(encode, config: MPLUGConfig, batch_size: int) -> int:
    """FLOPs of one encoder call: convolution, projections and MLPs counted by `FlopCounterMode` on an sdpa call
    (any attention kernel it happens to count left out), plus [`attention_flops`]."""
    with FlopCounterMode(display=False) as counter:
        encode("sdpa")
    counted = sum(flops for op, flops in counter.get_flop_counts()["Global"].items() if not _is_attention_op(op))
    return counted + attention_flops(config, batch_size)


def compiled_sides(model, pixel_values: torch.Tensor, settings: BenchmarkSettings) -> dict[str, Side]:
    """The sdpa side and its precision variants again under `torch.compile`, each on its own copy of the model (the
    benchmark switches the shared model's kernel, which would recompile), compiled by its warm-up call and compared
    with float32 sdpa in eager mode."""
    compiled = {}
    for precision in (None, *lower_precisions(settings)):
        variant, context, name = copy.deepcopy(model), contextlib.nullcontext, "sdpa"
        if precision is not None:
            variant, context = precision_variant(variant, precision, settings)
            name = precision_side_name(name, precision)
        set_attention_implementation(variant.config, "sdpa")
        encode = torch.compile(variant.get_image_features)

        @torch.no_grad()
        def run(encode=encode, context=context):
            with context():
                return encode(pixel_values).last_hidden_state

        compiled[f"{name} · torch.compile"] = Side(run=run, float32_side="sdpa")
    return compiled


def vision_encoder(config: MPLUGConfig, settings: BenchmarkSettings) -> list[BenchmarkResult]:
    """The same images encoded by one model whose kernel is switched before each call; the work (FLOPs) is the same
    for every kernel: the matmuls and convolution counted by torch's `FlopCounterMode`, attention analytically
    ([`encoder_flops`])."""
    model = build_model(MPLUGModel, config, settings)
    pixel_values = random_images(settings.batch_size, config, settings)
    kernels = attention_kernels(settings)

    @torch.no_grad()
    def encode(model, kernel: str) -> torch.Tensor:
        for sub_config in (model.config, model.config.vision_config):
            sub_config._attn_implementation = kernel
        return model.get_image_features(pixel_values).last_hidden_state

    flops = encoder_flops(lambda kernel: encode(model, kernel), config, settings.batch_size)
    sides = {}
    for kernel in kernels:
        run = functools.partial(encode, kernel=kernel)
        # bfloat16 variants of the default kernel only: eager's would double the run and tell nothing new
        sides |= (
            precision_sides(kernel, model, run, settings)
            if kernel == "sdpa"
            else {kernel: Side(lambda run=run: run(model))}
        )
    if settings.compile:
        sides |= compiled_sides(model, pixel_values, settings)
    measurements = measure(sides, settings)
    peak = peak_tflops(settings)
    achieved = {name: flops / measurement.median / 1e12 for name, measurement in measurements.items()}

    def agreement(features, float32_features) -> str:
        difference = (features.float() - float32_features).abs().max()
        return f"max |features - float32 features| {difference:.1e} (of features up to {float32_features.abs().max():.1f})"

    notes = [
        f"{flops / settings.batch_size / 1e9:.1f} GFLOP per image ({config.vision_config.num_hidden_layers} layers, "
        f"{config.num_image_tokens} tokens); achieved TFLOP/s: "
        + ", ".join(f"{name} {value:.3g}" for name, value in achieved.items()),
        "MFU: "
        + (
            ", ".join(f"{name} {value / peak:.1%}" for name, value in achieved.items()) + f" of {peak:g} TFLOP/s peak"
            if peak
            else "n/a (unknown peak: pass --peak-tflops)"
        ),
        "max |features - eager features|: "
        + ", ".join(
            f"{kernel} {(measurements[kernel].output.float() - measurements['eager'].output.float()).abs().max():.1e}"
            for kernel in kernels[1:]
        ),
        *precision_notes(measurements, agreement),
    ]
    title = f"vision encoder, batch {settings.batch_size}"
    return [make_result(title, measurements, "eager", settings.batch_size, notes=notes)]
