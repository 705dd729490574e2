"""Run the mplug_hf benchmarks and print one markdown table.

    python -m benchmarks.run_benchmarks                       # everything, base size at 384 px, CPU (GPU if present)
    python -m benchmarks.run_benchmarks --quick --image-size 224 --batch-size 2 --only captioning fusion
    python -m benchmarks.run_benchmarks --dtype bfloat16 --only vision captioning   # on a GPU: MFU, tokens/s
    python -m benchmarks.run_benchmarks --threads 1 --only vqa captioning vision --precisions   # float32 only

Every benchmark times its sides in interleaved rounds after a warm-up and reports the median; see benchmarks/README.md.
In float32 the fast path of each generation, ranking, judging and vision benchmark is also timed in bfloat16 (bf16
weights, bf16 autocast), its speed compared with float32 in the `vs float32` column.
"""

import argparse
import sys
import time

import torch

from mplug_hf import MPLUGConfig

from .blip import blip_comparison
from .common import JUDGE_STRIDE_LAYER, PRECISIONS, BenchmarkSettings, describe_machine, format_report
from .dpg_bench import dpg_scoring
from .fusion import fusion_encoder
from .generation import caption_generation, vqa_generation
from .judging import judging
from .ranking import answer_ranking
from .training import training_step
from .vision import vision_encoder


BENCHMARKS = {
    "captioning": caption_generation,
    "vqa": vqa_generation,
    "fusion": fusion_encoder,
    "rank": answer_ranking,
    "blip": blip_comparison,
    "training": training_step,
    "judging": judging,
    "vision": vision_encoder,
    "dpg": dpg_scoring,
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="benchmarks to run (default: all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument(
        "--model-size",
        choices=["base", "large"],
        default="base",
        help="mPLUG-large is the DPG-Bench/TIFA judge's size",
    )
    parser.add_argument(
        "--image-size", type=int, help="default: 384 (mPLUG-base's VQA size) or 336 (large's); 224 for quick runs"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per call (generation, fusion, BLIP)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side at most")
    parser.add_argument(
        "--side-budget", type=float, default=30.0, help="stop repeating a side after this many seconds of runs"
    )
    parser.add_argument("--quick", action="store_true", help="one timed run per side")
    parser.add_argument("--num-beams", type=int, default=5)
    parser.add_argument("--caption-tokens", type=int, default=25)
    parser.add_argument("--answer-tokens", type=int, default=10)
    parser.add_argument("--rank-batch-size", type=int, default=4, help="questions ranked per call")
    parser.add_argument("--num-candidates", type=int, default=128)
    parser.add_argument("--train-batch-size", type=int, help="default: --batch-size")
    parser.add_argument("--judge-images", type=int, default=8)
    parser.add_argument("--questions-per-image", type=int, default=8)
    parser.add_argument("--dpg-items", type=int, default=4, help="DPG-Bench benchmark: grid images")
    parser.add_argument("--dpg-crops", type=int, default=4, choices=[1, 2, 3, 4], help="crops per grid")
    parser.add_argument("--dpg-questions", type=int, default=15, help="questions per item")
    parser.add_argument(
        "--dpg-stride-layer",
        type=int,
        default=JUDGE_STRIDE_LAYER,
        help="DPG fusion stride S (default 6: mPLUG-large's, the judge's, whose fusion keeps the image tokens; 3: "
        "mPLUG-base's)",
    )
    parser.add_argument(
        "--peak-tflops", type=float, help="the device's peak TFLOP/s for MFU (default: data sheet of known GPUs)"
    )
    parser.add_argument(
        "--precisions",
        nargs="*",
        choices=list(PRECISIONS),
        help="lower-precision variants timed beside each float32 fast path (default: all; none: pass no value)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time the vision encoder under torch.compile (each precision; its compilation is the warm-up)",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.precisions and args.dtype != "float32":
        parser.error("--precisions adds variants of the float32 runs: use it with --dtype float32")
    return args


def settings_from_args(args: argparse.Namespace) -> BenchmarkSettings:
    return BenchmarkSettings(
        device=torch.device(args.device),
        dtype=getattr(torch, args.dtype),
        batch_size=args.batch_size,
        repeats=1 if args.quick else args.repeats,
        side_budget_s=args.side_budget,
        num_beams=args.num_beams,
        caption_tokens=args.caption_tokens,
        answer_tokens=args.answer_tokens,
        rank_batch_size=args.rank_batch_size,
        num_candidates=args.num_candidates,
        train_batch_size=args.train_batch_size or args.batch_size,
        judge_images=args.judge_images,
        questions_per_image=args.questions_per_image,
        dpg_items=args.dpg_items,
        dpg_crops=args.dpg_crops,
        dpg_questions=args.dpg_questions,
        dpg_stride_layer=args.dpg_stride_layer,
        peak_tflops=args.peak_tflops,
        seed=args.seed,
        precisions=tuple(PRECISIONS) if args.precisions is None else tuple(args.precisions),
        compile=args.compile,
    )


def run(config: MPLUGConfig, settings: BenchmarkSettings, names: list[str], log=sys.stderr) -> list:
    """Run the named benchmarks in order and return their results."""
    results = []
    for name in names:
        start = time.perf_counter()
        print(f"[benchmarks] {name} …", file=log, flush=True)
        results += BENCHMARKS[name](config, settings)
        print(f"[benchmarks] {name} done in {time.perf_counter() - start:.0f} s", file=log, flush=True)
    return results


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = settings_from_args(args)
    image_size = args.image_size or {"base": 384, "large": 336}[args.model_size]
    config = getattr(MPLUGConfig, args.model_size)(image_size=image_size)
    machine = describe_machine(settings)
    start = time.perf_counter()
    results = run(config, settings, args.only or list(BENCHMARKS))
    settings_line = (
        f"mPLUG-{args.model_size}, random weights, image {image_size}px, batch {settings.batch_size}, "
        f"up to {settings.repeats} timed run(s) per side (≤ {settings.side_budget_s:.0f} s each side) after a warm-up, "
        f"interleaved; suite time {time.perf_counter() - start:.0f} s"
    )
    print(format_report(machine, settings_line, results))


if __name__ == "__main__":
    main()
