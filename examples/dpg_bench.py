"""
DPG-Bench with mplug_hf: the official `compute_dpg_bench.py`'s inputs, rules and outputs, with every crop encoded
once for all of its questions and many crops answered per batch.

    python examples/dpg_bench.py --model out/mplug-large-vqa --image-root-path images/ --resolution 512 \
        --pic-num 4 --csv dpg_bench.csv --res-path results/dpg.txt
    accelerate launch --num_processes 8 examples/dpg_bench.py ...        # the same, sharded over 8 processes

The judge is ModelScope's `damo/mplug_visual-question-answering_coco_large_en`, converted with
`mplug-convert damo/mplug_visual-question-answering_coco_large_en/ out/mplug-large-vqa --task vqa`. An answer is the
pipeline's decoded beam-search string (beam 5, min 1, max 10; question lower-cased, `[CLS] q [SEP]`, 25 tokens) and
scores 1 if it is exactly "yes"; `--score p_yes` uses P(yes) > P(no) from the first answer token instead (no beam
search; the default mode reports how often the two rules agree).

Outputs: `--res-path` (one line per image: path, crop scores, mean; then L1/L2 category scores and the DPG-Bench
score, as the official), `<res>_detail.txt` (one line per image, crop, question, answer), `<res>.json` (everything,
failed images listed) and `<res>_detail.jsonl` (answers with P(yes)). `--official` reproduces the official numbers
quirks included (first CSV row skipped, failed images dropped from the mean, category scores of the last crop before
the dependency rule); the default fixes them (see README). Killed runs resume where they stopped (`<res>.parts/`).
"""

import argparse

from mplug_hf.t2i_benchmarks import add_run_arguments, dpg_bench, positive_int, run_benchmark_script


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="converted MPLUGForQuestionAnswering folder")
    parser.add_argument("--image-root-path", required=True, help="folder of <item_id>.<ext> grid images")
    parser.add_argument("--resolution", type=positive_int, help="side of one generated image in the grid")
    parser.add_argument("--csv", default="./dpg_bench/dpg_bench.csv")
    parser.add_argument("--res-path", help="results file (default: <image-root-path>/dpg-bench_results.txt)")
    parser.add_argument("--pic-num", type=int, default=1, choices=[1, 2, 3, 4], help="crops used per grid")
    parser.add_argument("--vqa-model", default="mplug", choices=["mplug"], help="accepted for compatibility")
    parser.add_argument("--official", action="store_true", help="reproduce the official script's numbers exactly")
    parser.add_argument("--score", choices=["string", "p_yes"], default="string")
    parser.add_argument("--batch-images", type=positive_int, default=1, help="grids per batch (raise it on big GPUs)")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    if args.official and args.resolution is None:
        parser.error("--official needs --resolution (the official script cannot crop without it)")
    return args


def main(argv=None):
    args = parse_args(argv)
    return run_benchmark_script(args, dpg_bench)


if __name__ == "__main__":
    main()
