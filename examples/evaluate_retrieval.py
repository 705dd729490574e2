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

from mplug_hf.evaluation.runner import retrieval_main


def main(argv: list[str] | None = None) -> dict:
    return retrieval_main(argv, "Evaluate mPLUG image-text retrieval.")


if __name__ == "__main__":
    main()
