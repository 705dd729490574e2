"""
Evaluate a mPLUG retrieval model on image-text retrieval (COCO / Flickr30K protocol): image→text and text→image
Recall@1/5/10.

Every image is scored against every caption: ITC similarity selects the top `--k` candidates of each query (k_test,
256 in the original configs), which are re-scored by the ITM head; the others get -100.

Data: the original mPLUG JSON (`[{"image", "caption": [captions]}]`, e.g. flickr30k_test.json), JSONL with one
(image, caption) pair per line, or a `datasets` dataset.

    python examples/evaluate_retrieval.py --model converted/mplug-large-retrieval --data flickr30k_test.json \
        --media-root flickr30k/images --k 256

Writes `retrieval_scores.npz` (score matrices), `retrieval_ranks.json` (rankings) and `metrics.json`.
"""

from mplug_hf import MPLUGForRetrieval
from mplug_hf.evaluation.runner import (
    EvaluationRunner,
    evaluation_argument_parser,
    load_records,
    parse_column_mapping,
    run_retrieval,
)


def main(argv: list[str] | None = None) -> dict:
    parser = evaluation_argument_parser("Evaluate mPLUG image-text retrieval.")
    parser.add_argument("--k", type=int, default=256, help="candidates re-ranked by ITM per query")
    parser.add_argument("--text-max-length", type=int, default=30, help="caption tokens (30 in the original)")
    args = parser.parse_args(argv)
    records = load_records(args.data, args.split, parse_column_mapping(args.column), args.limit)
    runner = EvaluationRunner.from_args(MPLUGForRetrieval, args)
    return run_retrieval(runner, records, args.output_dir, k=args.k, text_max_length=args.text_max_length)


if __name__ == "__main__":
    main()
