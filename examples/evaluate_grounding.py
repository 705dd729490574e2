"""
Evaluate a mPLUG grounding model on referring expressions (RefCOCO/+/g): boxes and Acc@0.5 (IoU ≥ 0.5), mean IoU.

Data: JSON/JSONL records `{"image", "text", "bbox"}` with the box in pixels of the image, `[x, y, width, height]` as in
the COCO/RefCOCO annotations (`--box-format xyxy` for corners), or a `datasets` dataset (`--column text=sentence`).

    python examples/evaluate_grounding.py --model converted/mplug-large-grounding --data refcoco_val.json \
        --media-root coco/train2014

Writes `grounding_result.json` (`[{"id", "text", "box": [x1, y1, x2, y2]}]`, pixels) and `metrics.json`.
"""

from mplug_hf import MPLUGForGrounding
from mplug_hf.evaluation.runner import (
    EvaluationRunner,
    evaluation_argument_parser,
    load_records,
    parse_column_mapping,
    run_grounding,
)


def main(argv: list[str] | None = None) -> dict | None:
    parser = evaluation_argument_parser("Evaluate mPLUG visual grounding.")
    parser.add_argument("--box-format", choices=("xywh", "xyxy"), default="xywh", help="format of the records' bbox")
    parser.add_argument("--max-length", type=int, default=20, help="query tokens (20 in the original)")
    args = parser.parse_args(argv)
    records = load_records(args.data, args.split, parse_column_mapping(args.column), args.limit)
    runner = EvaluationRunner.from_args(MPLUGForGrounding, args)
    return run_grounding(runner, records, args.output_dir, box_format=args.box_format, max_length=args.max_length)


if __name__ == "__main__":
    main()
