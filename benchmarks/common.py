"""Shared pieces of the benchmarks: settings, random-weight models and inputs, interleaved timing with peak memory,
and the markdown report."""

import contextlib
import copy
import ctypes
import gc
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers

from mplug_hf import MPLUGConfig


# mPLUG-large's skip-connection stride: with its 6 fusion layers none is connected, so the image tokens stay the same
JUDGE_STRIDE_LAYER = 6


@dataclass
class BenchmarkSettings:
    """What every benchmark reads. `repeats` timed runs per side at most; a side also stops once its runs have taken
    `side_budget_s` seconds (after at least one), so that a slow baseline does not dominate the suite's runtime."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    batch_size: int = 8
    repeats: int = 3
    side_budget_s: float = 30.0
    num_beams: int = 5
    caption_tokens: int = 25
    answer_tokens: int = 10
    rank_batch_size: int = 4
    num_candidates: int = 128
    train_batch_size: int = 8
    judge_images: int = 8
    questions_per_image: int = 8
    dpg_items: int = 4
    dpg_crops: int = 4
    dpg_questions: int = 15
    # the DPG benchmark's fusion schedule: mPLUG-large's (no connected layer), the judge's (None: the config's)
    dpg_stride_layer: int | None = JUDGE_STRIDE_LAYER
    peak_tflops: float | None = None
    seed: int = 0
    # lower-precision variants of each fast path, timed beside it (see PRECISIONS); float32 runs only
    precisions: tuple[str, ...] = ("bf16-weights", "bf16-autocast")
    compile: bool = False  # the vision encoder also under torch.compile


# What `--precisions` can add beside each fast path: the row label, and how the float32 model is turned into it.
PRECISIONS = {
    "bf16-weights": "bfloat16 weights",
    "bf16-autocast": "bfloat16 autocast, float32 weights",
}


# ----------------------------------------------------------------------------------------------------------------------
# Models and inputs
# ----------------------------------------------------------------------------------------------------------------------


def set_attention_implementation(config: MPLUGConfig, name: str) -> None:
    """Switch the attention kernel of a built model: the modules read the sub-configs at every forward."""
    for sub_config in (config, config.text_config, config.vision_config):
        sub_config._attn_implementation = name


def build_model(model_class, config: MPLUGConfig, settings: BenchmarkSettings, attn_implementation: str = "sdpa"):
    """A model with random weights (seeded), in eval mode, on the benchmark's device and dtype."""
    config = copy.deepcopy(config)
    set_attention_implementation(config, attn_implementation)
    torch.manual_seed(settings.seed)
    return model_class(config).to(device=settings.device, dtype=settings.dtype).eval()


def random_images(count: int, config: MPLUGConfig, settings: BenchmarkSettings) -> torch.Tensor:
    size = config.vision_config.image_size
    generator = torch.Generator().manual_seed(settings.seed)
    pixel_values = torch.randn(count, config.vision_config.num_channels, size, size, generator=generator)
    return pixel_values.to(device=settings.device, dtype=settings.dtype)


def random_texts(
    count: int,
    min_pieces: int,
    max_pieces: int,
    config: MPLUGConfig,
    settings: BenchmarkSettings,
    with_sep: bool = False,
    seed_offset: int = 0,
) -> tuple[torch.LongTensor, torch.LongTensor]:
    """`[CLS] pieces ([SEP])` rows of random word pieces (ids past BERT's special and unused tokens), right-padded
    with 0; returns `(input_ids, attention_mask)`. Questions and answers of random models need shapes, not words."""
    generator = torch.Generator().manual_seed(settings.seed + 1 + seed_offset)
    lengths = torch.randint(min_pieces, max_pieces + 1, (count,), generator=generator)
    width = int(lengths.max()) + 1 + int(with_sep)
    input_ids = torch.zeros(count, width, dtype=torch.long)
    for row, length in enumerate(lengths.tolist()):
        pieces = torch.randint(1000, config.text_config.vocab_size, (length,), generator=generator)
        tokens = [config.decoder_start_token_id, *pieces.tolist()] + ([config.eos_token_id] if with_sep else [])
        input_ids[row, : len(tokens)] = torch.tensor(tokens)
    attention_mask = (input_ids != 0).long()
    return input_ids.to(settings.device), attention_mask.to(settings.device)


def autocast(settings: BenchmarkSettings, dtype: torch.dtype | None = None):
    """Mixed precision in `dtype` (default: the settings' dtype; none for float32), the weights staying float32."""
    dtype = dtype or settings.dtype
    return torch.autocast(settings.device.type, dtype=dtype, enabled=dtype != torch.float32)


def count_parameters(model: torch.nn.Module) -> float:
    """Millions of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters()) / 1e6


# ----------------------------------------------------------------------------------------------------------------------
# Timing and memory
# ----------------------------------------------------------------------------------------------------------------------


def _proc_status_bytes(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_rss_high_water_mark() -> bool:
    """Linux resets the process's peak RSS (VmHWM) to the current RSS when "5" is written to clear_refs."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _release_free_memory(device: torch.device) -> None:
    """Return freed memory so that the next call's peak is not hidden by (or charged for) another call's leftovers."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory of a block: CUDA allocated bytes on GPU, the process RSS on CPU. `peak` is the absolute peak,
    `increase` the peak above the memory in use when the block started (None where the RSS peak cannot be reset)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0
        self.increase = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.resettable = _reset_rss_high_water_mark()
            self.start = _proc_status_bytes("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self.resettable and self.start is not None:
            self.peak = _proc_status_bytes("VmHWM")
        else:
            # ru_maxrss is the lifetime peak: KiB on Linux, bytes on macOS.
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
            return
        self.increase = self.peak - self.start


@dataclass
class Side:
    """One way of doing a benchmark's work. `run` is timed; `warmup` (default: `run`) is called once beforehand, and
    may be a smaller call where the full one takes minutes. A lower-precision variant names the float32 side it
    repeats (`float32_side`), which its speed is also compared with."""

    run: Callable[[], Any]
    warmup: Callable[[], Any] | None = None
    float32_side: str | None = None


@dataclass
class Measurement:
    seconds: list[float] = field(default_factory=list)
    peak_bytes: int = 0
    increase_bytes: int | None = None
    output: Any = None
    float32_side: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def measure(sides: dict[str, Side], settings: BenchmarkSettings) -> dict[str, Measurement]:
    """Warm every side up, then time them in interleaved rounds (A, B, C, A, B, C, …) so that load changes on the
    machine hit all sides alike. Each side keeps its largest peak memory and its last output."""
    for side in sides.values():
        (side.warmup or side.run)()
    measurements = {name: Measurement(float32_side=side.float32_side) for name, side in sides.items()}
    pending = list(sides)
    while pending:
        for name in list(pending):
            measurement = measurements[name]
            measurement.output = None
            _release_free_memory(settings.device)
            with PeakMemory(settings.device) as memory:
                _synchronize(settings.device)
                start = time.perf_counter()
                output = sides[name].run()
                _synchronize(settings.device)
                measurement.seconds.append(time.perf_counter() - start)
            measurement.output = output
            measurement.peak_bytes = max(measurement.peak_bytes, memory.peak)
            if memory.increase is not None:
                measurement.increase_bytes = max(measurement.increase_bytes or 0, memory.increase)
            if len(measurement.seconds) >= settings.repeats or sum(measurement.seconds) >= settings.side_budget_s:
                pending.remove(name)
    return measurements


def precision_variant(model: torch.nn.Module, precision: str, settings: BenchmarkSettings):
    """`(model, context)` that run float32 `model`'s work in `precision`: a bfloat16 copy (as
    `from_pretrained(..., dtype=torch.bfloat16)` loads it), or `model` itself under bfloat16 autocast."""
    if precision == "bf16-weights":
        return copy.deepcopy(model).to(torch.bfloat16), contextlib.nullcontext
    if precision == "bf16-autocast":
        return model, lambda: autocast(settings, torch.bfloat16)
    raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")


def lower_precisions(settings: BenchmarkSettings) -> tuple[str, ...]:
    """The `settings.precisions` timed beside each fast path: none where the benchmark does not run in float32."""
    return settings.precisions if settings.dtype == torch.float32 else ()


def precision_side_name(name: str, precision: str) -> str:
    """The row label of side `name` in `precision`."""
    return f"{name} · {PRECISIONS[precision]}"


def precision_sides(
    name: str,
    model: torch.nn.Module,
    run: Callable[[torch.nn.Module], Any],
    settings: BenchmarkSettings,
    warmup: Callable[[torch.nn.Module], Any] | None = None,
) -> dict[str, Side]:
    """The side `name` (`run(model)`, `warmup(model)`) and its variants in `settings.precisions`, the same calls on
    [`precision_variant`]s of `model`. Only the side itself where the benchmark does not run in float32 (e.g.
    `--dtype bfloat16` on a GPU)."""
    sides = {name: Side(run=lambda: run(model), warmup=warmup and (lambda: warmup(model)))}
    for precision in lower_precisions(settings):
        variant, context = precision_variant(model, precision, settings)

        def in_precision(work, variant=variant, context=context):
            with context():
                return work(variant)

        sides[precision_side_name(name, precision)] = Side(
            run=lambda in_precision=in_precision: in_precision(run),
            warmup=warmup and (lambda in_precision=in_precision: in_precision(warmup)),
            float32_side=name,
        )
    return sides


def precision_notes(measurements: dict[str, Measurement], compare: Callable[[Any, Any], str]) -> list[str]:
    """One note per lower-precision side: `compare(its output, its float32 side's output)`."""
    return [
        f"{name}: {compare(measurement.output, measurements[measurement.float32_side].output)}"
        for name, measurement in measurements.items()
        if measurement.float32_side is not None
    ]


# ----------------------------------------------------------------------------------------------------------------------
# Results and report
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    method: str
    measurement: Measurement
    images: int
    tokens: int | None
    speedup: float
    float32_speedup: float | None = None  # lower-precision rows: their float32 side's median time / theirs


@dataclass
class BenchmarkResult:
    """A benchmark's rows (the reference first, speed-up 1.00×) and notes (sanity checks, sizes)."""

    title: str
    rows: list[Row]
    notes: list[str] = field(default_factory=list)


def make_result(
    title: str,
    measurements: dict[str, Measurement],
    reference: str,
    images: int,
    tokens: int | None = None,
    notes: list[str] | None = None,
) -> BenchmarkResult:
    """Rows in `measurements` order with speed-up = reference median time / the side's median time (and, for a
    lower-precision side, its float32 side's median time / its own). `images` and `tokens` are the work of one run
    (tokens: generated tokens of the returned sequences)."""
    reference_time = measurements[reference].median
    rows = [
        Row(
            name,
            measurement,
            images,
            tokens,
            reference_time / measurement.median,
            measurements[measurement.float32_side].median / measurement.median if measurement.float32_side else None,
        )
        for name, measurement in measurements.items()
    ]
    return BenchmarkResult(title, rows, list(notes or []))


def describe_machine(settings: BenchmarkSettings) -> list[str]:
    cpu_model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu_model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = _proc_meminfo_total()
    lines = [
        f"CPU: {cpu_model}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}"
        + (f", {memory / 2**30:.0f} GiB RAM" if memory else ""),
    ]
    if settings.device.type == "cuda":
        lines.append(f"GPU: {torch.cuda.get_device_name(settings.device)}")
    else:
        instructions = cpu_bfloat16_instructions()
        lines.append(
            "CPU bfloat16 instructions: "
            + (", ".join(instructions) or "none (torch computes bfloat16 matmuls without hardware support)")
        )
    if hasattr(os, "getloadavg"):
        lines.append("load average at start (1/5/15 min): " + " / ".join(f"{x:.2f}" for x in os.getloadavg()))
    lines.append(
        f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}"
    )
    memory_kind = "CUDA max_memory_allocated" if settings.device.type == "cuda" else "process RSS (VmHWM)"
    lines.append(
        f"device {settings.device}, dtype {str(settings.dtype).removeprefix('torch.')}; memory: {memory_kind}"
    )
    return lines


def cpu_bfloat16_instructions() -> list[str]:
    """The bfloat16 matrix instructions the CPU reports in /proc/cpuinfo (Intel AMX-BF16, AVX512-BF16): where there
    are none (AVX2-only CPUs), bfloat16 matmuls run far slower than float32 ones, which decides the bfloat16 rows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next(line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return [flag for flag in ("amx_bf16", "avx512_bf16") if flag in flags]


def _proc_meminfo_total() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemTotal"))
    except (OSError, StopIteration):
        return None


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.0f}"


def format_report(machine: list[str], settings_line: str, results: list[BenchmarkResult]) -> str:
    lines = ["## mplug_hf benchmarks", ""]
    lines += [f"- {line}" for line in machine] + [f"- {settings_line}", ""]
    lines.append(
        "| benchmark | method | median s (runs) | images/s | tokens/s | peak mem MiB | peak increase MiB | speed-up "
        "| vs float32 |"
    )
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for result in results:
        for row in result.rows:
            median = row.measurement.median
            tokens = f"{row.tokens / median:,.1f}" if row.tokens else ""
            versus_float32 = f"{row.float32_speedup:.2f}×" if row.float32_speedup is not None else ""
            lines.append(
                f"| {result.title} | {row.method} | {median:.3f} ({len(row.measurement.seconds)}) | "
                f"{row.images / median:,.2f} | {tokens} | {_mib(row.measurement.peak_bytes)} | "
                f"{_mib(row.measurement.increase_bytes)} | {row.speedup:.2f}× | {versus_float32} |"
            )
    notes = [(result.title, note) for result in results for note in result.notes]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {title}: {note}" for title, note in notes]
    return "\n".join(lines)
