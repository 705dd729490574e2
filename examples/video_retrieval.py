"""
Zero-shot text-video retrieval with a mPLUG retrieval model (MSRVTT 1k-A protocol, as in the paper).

A video's ITC feature is the mean of its frames' projected CLS features; the top `--k` candidates of each query are
re-scored by ITM over the concatenated frame tokens, and the score is ITM + ITC as in the original video evaluation
(-100 outside the top k). Metrics: video→text (`txt_r*`) and text→video (`vid_r*`) Recall@1/5/10.

Data: JSON/JSONL records `{"video", "caption"}`; MSRVTT's `msrvtt_test.jsonl` works with
`--column video=clip_name --video-suffix .mp4`.

    python examples/video_retrieval.py --model converted/mplug-large-retrieval --data msrvtt_test.jsonl \
        --media-root msrvtt/videos --column video=clip_name --video-suffix .mp4 --num-frames 12

Writes `retrieval_scores.npz` (score matrices), `retrieval_ranks.json` (rankings) and `metrics.json`.
"""

from mplug_hf.evaluation.runner import retrieval_main


def main(argv: list[str] | None = None) -> dict:
    return retrieval_main(
        argv, "Zero-shot mPLUG text-video retrieval.", video=True, num_frames=12, k=128, text_max_length=35
    )


if __name__ == "__main__":
    main()
