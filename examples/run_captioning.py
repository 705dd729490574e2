"""
Fine-tune mPLUG for image captioning with `Trainer`, then evaluate with the COCO caption metrics.

    python examples/run_captioning.py --model_name_or_path converted/mplug-base-caption \
        --train_file dataset_coco.json --validation_file dataset_coco.json --karpathy_split \
        --image_root coco/ --output_dir outputs/caption --do_train --do_eval \
        --per_device_train_batch_size 16 --learning_rate 1e-5 --num_train_epochs 5 [--lora] [--bf16]

Data: COCO Karpathy entries (`dataset_coco.json`, a list or `{"images": [...]}` of `{"filepath", "filename",
"sentences": [{"raw": ...}], "split"}`; with `--karpathy_split` training reads the "train" and "restval" entries and
evaluation the "test" ones), or `{"image": path, "caption": str or [str, ...]}` entries (JSON or JSONL), or a
`datasets` name with those columns. Training uses every caption of an image (lower-cased, as the original);
evaluation decodes with the original beam search (5 beams, 8–25 tokens) and scores the references with BLEU,
METEOR, ROUGE-L, CIDEr (and SPICE) — pycocoevalcap when installed, pure Python otherwise.
"""

import os
from dataclasses import dataclass, field

import datasets

from mplug_hf import MPLUGForCaptioning
from mplug_hf.augmentation import MPLUGTrainAugmentation
from mplug_hf.data_collators import MPLUGCaptioningDataCollator
from mplug_hf.evaluation.runner import run_captioning
from mplug_hf.training import fine_tune


@dataclass
class CaptioningArguments:
    karpathy_split: bool = field(default=False, metadata={"help": "Select Karpathy splits by each entry's 'split'."})
    prompt: str = field(default="", metadata={"help": "Text every caption starts with (e.g. 'a picture of ')."})
    max_length: int = field(default=25, metadata={"help": "Caption tokens (the original: 25)."})
    num_beams: int = field(default=5)
    min_length: int = field(default=8)


def caption_records(dataset: datasets.Dataset, splits: tuple[str, ...] | None) -> list[dict]:
    """One `{"image", "image_id", "caption"}` per caption, Karpathy entries flattened (only `splits` when given)."""
    records = []
    for index, entry in enumerate(dataset):
        if splits is not None and entry.get("split") not in splits:
            continue
        if entry.get("sentences") is not None:
            image = os.path.join(entry.get("filepath") or "", entry["filename"])
            captions = [sentence["raw"].lower() for sentence in entry["sentences"]]
        else:
            image = entry["image"]
            captions = [entry["caption"]] if isinstance(entry["caption"], str) else list(entry["caption"])
        image_id = entry.get("cocoid", entry.get("image_id", index))
        records += [{"image": image, "image_id": image_id, "caption": caption} for caption in captions]
    if not records:
        raise ValueError("no captioning examples found (check --karpathy_split and the file's format)")
    return records


def captioning_collator(processor, data_args, caption_args) -> MPLUGCaptioningDataCollator:
    augmentation = MPLUGTrainAugmentation(processor.image_processor.image_size) if data_args.augment else None
    return MPLUGCaptioningDataCollator(
        processor,
        augmentation=augmentation,
        image_root=data_args.image_root,
        prompt=caption_args.prompt,
        max_length=caption_args.max_length,
    )


def training_captions(dataset, caption_args) -> datasets.Dataset:
    splits = ("train", "restval") if caption_args.karpathy_split else None
    return datasets.Dataset.from_list(caption_records(dataset, splits))


def evaluate(runner, records, caption_args, output_dir):
    return run_captioning(
        runner,
        caption_records(records, ("test",) if caption_args.karpathy_split else None),
        output_dir,
        prompt=caption_args.prompt,
        num_beams=caption_args.num_beams,
        min_length=caption_args.min_length,
        max_length=caption_args.max_length,
    )


def main():
    fine_tune(MPLUGForCaptioning, CaptioningArguments, captioning_collator, evaluate, training_captions)


if __name__ == "__main__":
    main()
