"""
TIFA with mplug_hf: TIFA's `tifa_score_benchmark` inputs, rules and result dict, every image encoded once for all of
its questions and many images per batch.

    python examples/tifa.py --model out/mplug-large-vqa --question-answer-path tifa_v1.0_question_answers.json \
        --id2img-path images/id2img.json --output tifa_results.json --sbert sentence-transformers/all-mpnet-base-v2
    accelerate launch --num_processes 8 examples/tifa.py ...              # the same, sharded over 8 processes

With `--sbert FOLDER` (a sentence-transformers model, TIFA uses all-mpnet-base-v2) the rule is TIFA's: mPLUG's
free-form answer (ModelScope pipeline decoding: beam 5, min 1, max 10), kept if it is one of the choices, else the
choice with the closest sentence embedding. Without it every question is answered by mPLUG's own likelihood of each
choice (`mplug_hf.scoring.choose`): a different, faster rule (no beam search, no second model), whose scores
are not TIFA's published numbers.

Output: TIFA's result dict (`tifa_average`, `tifa_stdev`, `accuracy_by_type`, `question_details`, `caption_scores`)
plus `failed_images` (an unreadable image's questions score 0, listed, never dropped). Killed runs resume
(`<output>.parts/`).
"""

import argparse

from mplug_hf.t2i_benchmarks import add_run_arguments, positive_int, run_benchmark_script, tifa


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="converted MPLUGForQuestionAnswering folder")
    parser.add_argument("--question-answer-path", required=True, help="TIFA question-answer JSON")
    parser.add_argument("--id2img-path", required=True, help="JSON map caption id -> image path")
    parser.add_argument("--output", required=True, help="result JSON")
    parser.add_argument("--sbert", help="sentence-transformers model folder: TIFA's free-form + embedding rule")
    parser.add_argument("--batch-images", type=positive_int, default=4, help="images per batch (all their questions)")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    return args


def main(argv=None):
    args = parse_args(argv)
    return run_benchmark_script(args, tifa)


if __name__ == "__main__":
    main()
