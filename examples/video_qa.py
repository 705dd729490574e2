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

from mplug_hf.evaluation.runner import question_answering_main


def main(argv: list[str] | None = None) -> dict | None:
    return question_answering_main(
        argv, "Zero-shot mPLUG video question answering.", video=True, num_frames=16, metric="exact"
    )


if __name__ == "__main__":
    main()
