"""
Evaluate a mPLUG captioning model: captions in the COCO result format and BLEU-1..4, METEOR, ROUGE-L, CIDEr (SPICE).

Data: the original mPLUG JSON (`[{"image", "caption": [reference captions]}]`, e.g. coco_karpathy_test.json), JSONL
with one (image, caption) pair per line, or a `datasets` dataset. The metrics come from pycocoevalcap when it and
Java are installed (the official numbers), otherwise from the package's pure-Python BLEU, ROUGE-L and CIDEr-D.

    python examples/evaluate_caption.py --model converted/mplug-base-caption --data coco_karpathy_test.json \
        --media-root coco/images

Writes `caption_result.json` (`[{"image_id", "caption"}]`; COCO file names give their numeric image id) and
`metrics.json` to `--output-dir`.
"""

from mplug_hf import MPLUGForCaptioning
from mplug_hf.evaluation.runner import (
    EvaluationRunner,
    evaluation_argument_parser,
    load_records,
    parse_column_mapping,
    run_captioning,
)


def main(argv: list[str] | None = None) -> dict | None:
    parser = evaluation_argument_parser("Evaluate mPLUG image captioning.")
    parser.add_argument("--prompt", default="", help="text every caption starts from (none for COCO)")
    parser.add_argument("--num-beams", type=int, default=5)
    parser.add_argument("--min-length", type=int, default=8, help="generated tokens before [SEP] is allowed")
    parser.add_argument("--max-length", type=int, default=25, help="most generated tokens")
    parser.add_argument("--backend", choices=("auto", "pycocoevalcap", "python"), default="auto")
    args = parser.parse_args(argv)
    records = load_records(args.data, args.split, parse_column_mapping(args.column), args.limit)
    runner = EvaluationRunner.from_args(MPLUGForCaptioning, args)
    return run_captioning(
        runner,
        records,
        args.output_dir,
        backend=args.backend,
        prompt=args.prompt,
        num_beams=args.num_beams,
        min_length=args.min_length,
        max_length=args.max_length,
    )


if __name__ == "__main__":
    main()
