"""
Evaluate a mPLUG question-answering model on a VQA dataset: answers, the official result file and the accuracy.

Data: the original mPLUG JSON (`[{"question_id", "image", "question", "answer": [human answers]}]`), JSONL, or a
`datasets` dataset (`--column` maps other column names); an `answer_type` field adds the per-type accuracies. Records
without answers (test-dev) give only the result file, for the evaluation server.

    python examples/evaluate_vqa.py --model converted/mplug-base-vqa --data vqa_val.json --media-root coco/images
    python examples/evaluate_vqa.py ... --answer-list answer_list.json --k 128   # rank a closed answer list instead

Writes `vqa_result.json` (`[{"question_id", "answer"}]`) and `metrics.json` to `--output-dir`.
"""

from mplug_hf import MPLUGForQuestionAnswering
from mplug_hf.evaluation.runner import (
    EvaluationRunner,
    evaluation_argument_parser,
    load_answer_list,
    load_records,
    parse_column_mapping,
    run_question_answering,
)


def main(argv: list[str] | None = None) -> dict | None:
    parser = evaluation_argument_parser("Evaluate mPLUG visual question answering.")
    parser.add_argument("--answer-list", help="JSON list (or dict keyed by answer) of candidates to rank")
    parser.add_argument("--k", type=int, default=128, help="candidates re-scored per question with --answer-list")
    parser.add_argument("--num-beams", type=int, default=5)
    parser.add_argument("--min-length", type=int, default=1, help="generated tokens before [SEP] is allowed")
    parser.add_argument("--max-length", type=int, default=10, help="most generated tokens")
    parser.add_argument(
        "--metric", choices=("vqa", "exact"), default="vqa", help="official VQA accuracy, or exact match (GQA)"
    )
    args = parser.parse_args(argv)
    records = load_records(args.data, args.split, parse_column_mapping(args.column), args.limit)
    runner = EvaluationRunner.from_args(MPLUGForQuestionAnswering, args)
    return run_question_answering(
        runner,
        records,
        args.output_dir,
        answer_list=load_answer_list(args.answer_list) if args.answer_list else None,
        metric=args.metric,
        k=args.k,
        num_beams=args.num_beams,
        min_length=args.min_length,
        max_length=args.max_length,
    )


if __name__ == "__main__":
    main()
