"""
Evaluate a mPLUG question-answering model on a VQA dataset: answers, the official result file and the accuracy.

Data: the original mPLUG JSON (`[{"question_id", "image", "question", "answer": [human answers]}]`), JSONL, or a
`datasets` dataset (`--column` maps other column names); an `answer_type` field adds the per-type accuracies. Records
without answers (test-dev) give only the result file, for the evaluation server.

    python examples/evaluate_vqa.py --model converted/mplug-base-vqa --data vqa_val.json --media-root coco/images
    python examples/evaluate_vqa.py ... --answer-list answer_list.json --k 128   # rank a closed answer list instead

Writes `vqa_result.json` (`[{"question_id", "answer"}]`) and `metrics.json` to `--output-dir`.
"""

from mplug_hf.evaluation.runner import question_answering_main


def main(argv: list[str] | None = None) -> dict | None:
    return question_answering_main(argv, "Evaluate mPLUG visual question answering.")


if __name__ == "__main__":
    main()
