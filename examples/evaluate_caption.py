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

from mplug_hf.evaluation.runner import captioning_main


def main(argv: list[str] | None = None) -> dict | None:
    return captioning_main(argv, "Evaluate mPLUG image captioning.")


if __name__ == "__main__":
    main()
