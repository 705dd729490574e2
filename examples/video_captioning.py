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

from mplug_hf import MPLUGForCaptioning
from mplug_hf.evaluation.runner import (
    EvaluationRunner,
    evaluation_argument_parser,
    load_records,
    parse_column_mapping,
    run_captioning,
)


def main(argv: list[str] | None = None) -> dict | None:
    parser = evaluation_argument_parser("mPLUG video captioning.", video=True, num_frames=8)
    parser.add_argument("--prompt", default="a picture of")
    parser.add_argument("--keep-full-prompt", action="store_true", help="start from the whole prompt")
    parser.add_argument("--num-beams", type=int, default=10)
    parser.add_argument("--min-length", type=int, default=15, help="generated tokens before [SEP] is allowed")
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
        drop_last_prompt_token=not args.keep_full_prompt,
        num_beams=args.num_beams,
        min_length=args.min_length,
        max_length=args.max_length,
    )


if __name__ == "__main__":
    main()
