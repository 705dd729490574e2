"""
Zero-shot video question answering with a mPLUG VQA model (MSRVTT-QA / MSVD-QA protocol, as in the paper): the
frames' tokens are concatenated into one visual sequence and each question is answered by ranking an answer list.

Data: JSON/JSONL records `{"video", "question", "answer"}` where `video` is a video file (needs PyAV or decord), a
folder of frame images or a list of frame paths; MSRVTT-QA's `video_id` names work with
`--column video=video_id --video-suffix .mp4`. Accuracy is exact match with the record's answer, as the original.

    python examples/video_qa.py --model converted/mplug-base-vqa --data msrvtt_qa_test.jsonl \
        --media-root msrvtt/videos --answer-list train_ans2label.json --num-frames 16

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
    parser = evaluation_argument_parser("Zero-shot mPLUG video question answering.", video=True, num_frames=16)
    parser.add_argument(
        "--answer-list",
        help="JSON list (or dict keyed by answer) of candidates to rank; without it answers are generated",
    )
    parser.add_argument("--k", type=int, default=128, help="candidates re-scored per question")
    parser.add_argument("--num-beams", type=int, default=5)
    parser.add_argument("--min-length", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=10)
    parser.add_argument("--metric", choices=("vqa", "exact"), default="exact")
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
