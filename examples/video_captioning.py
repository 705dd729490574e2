"""
Video captioning with a mPLUG captioning model (VATEX / MSRVTT protocol): the frames' tokens are concatenated into
one visual sequence and the decoder starts from the prompt "a picture of".

As the original VATEX model, generation starts from the prompt without its last word (`[CLS] a picture`): that model
trained with the prompt's last word as a target (`--keep-full-prompt` starts from the whole prompt). The prompt is
removed from the written captions.

Data: JSON/JSONL records `{"video", "caption"}` (`caption` a string or a list of references; `video` a video file,
a folder of frame images or a list of frame paths).

    python examples/video_captioning.py --model converted/mplug-large-caption --data vatex_test.json \
        --media-root vatex/videos --video-suffix .mp4

Writes `caption_result.json` (`[{"image_id", "caption"}]`, the id being the video's `video_id` or path) and
`metrics.json` to `--output-dir`.
"""

from mplug_hf.evaluation.runner import captioning_main


def main(argv: list[str] | None = None) -> dict | None:
    return captioning_main(
        argv, "mPLUG video captioning.", video=True, num_frames=8, prompt="a picture of", num_beams=10, min_length=15
    )


if __name__ == "__main__":
    main()
