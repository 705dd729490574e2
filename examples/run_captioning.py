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
import torch
from transformers import HfArgumentParser, Trainer, TrainingArguments

from mplug_hf import MPLUGForCaptioning
from mplug_hf.augmentation import MPLUGTrainAugmentation
from mplug_hf.data_collators import MPLUGCaptioningDataCollator
from mplug_hf.evaluation import compute_caption_metrics
from mplug_hf.training import (
    DataArguments,
    ModelArguments,
    iterate_batches,
    load_model_and_processor,
    load_split,
    save_json,
    train_and_save,
)


@dataclass
class CaptioningArguments:
    karpathy_split: bool = field(default=False, metadata={"help": "Select Karpathy splits by each entry's 'split'."})
    prompt: str = field(default="", metadata={"help": "Text every caption starts with (e.g. 'a picture of ')."})
    max_length: int = field(default=25, metadata={"help": "Caption tokens (the original: 25)."})
    num_beams: int = field(default=5)
    min_length: int = field(default=8)


def caption_examples(dataset: datasets.Dataset, training: bool, karpathy_split: bool) -> datasets.Dataset:
    """One `{"image", "caption"}` per caption (training) or one `{"image", "image_id", "references"}` per image."""
    splits = ("train", "restval") if training else ("test",)
    rows = []
    for index, entry in enumerate(dataset):
        if karpathy_split and entry.get("split") not in splits:
            continue
        if entry.get("sentences") is not None:
            image = os.path.join(entry.get("filepath") or "", entry["filename"])
            captions = [sentence["raw"].lower() for sentence in entry["sentences"]]
        else:
            image = entry["image"]
            captions = [entry["caption"]] if isinstance(entry["caption"], str) else list(entry["caption"])
        image_id = entry.get("cocoid", entry.get("image_id", index))
        if training:
            rows += [{"image": image, "caption": caption} for caption in captions]
        else:
            rows.append({"image": image, "image_id": image_id, "references": captions})
    if not rows:
        raise ValueError("no captioning examples found (check --karpathy_split and the file's format)")
    return datasets.Dataset.from_list(rows)


@torch.no_grad()
def generate_captions(model, collator, dataset, caption_args, batch_size: int, device) -> list[str]:
    model.eval().to(device)
    captions = []
    for examples in iterate_batches(dataset, batch_size):
        inputs = collator([{"image": example["image"]} for example in examples]).to(device)
        output = model.generate_original(
            inputs["pixel_values"],
            prompt_ids=inputs.get("input_ids"),
            num_beams=caption_args.num_beams,
            min_length=caption_args.min_length,
            max_length=caption_args.max_length,
        )
        texts = collator.processor.batch_decode(output.sequences[:, 0])
        captions += [text[len(caption_args.prompt.strip()) :].strip() for text in texts]
    return captions


def main():
    parser = HfArgumentParser((ModelArguments, DataArguments, CaptioningArguments, TrainingArguments))
    model_args, data_args, caption_args, training_args = parser.parse_args_into_dataclasses()
    training_args.remove_unused_columns = False
    model, processor = load_model_and_processor(MPLUGForCaptioning, model_args)
    collator_kwargs = dict(
        image_root=data_args.image_root, prompt=caption_args.prompt, max_length=caption_args.max_length
    )
    augmentation = MPLUGTrainAugmentation(processor.image_processor.image_size) if data_args.augment else None
    trainer = Trainer(
        model=model,
        args=training_args,
        data_collator=MPLUGCaptioningDataCollator(processor, augmentation=augmentation, **collator_kwargs),
        processing_class=processor,
    )
    if training_args.do_train:
        train_dataset = load_split(data_args, "train")
        if train_dataset is None:
            raise ValueError("--do_train needs --train_file or --dataset_name")
        trainer.train_dataset = caption_examples(
            train_dataset, training=True, karpathy_split=caption_args.karpathy_split
        )
        model = train_and_save(trainer, processor, training_args)
    if training_args.do_eval and trainer.is_world_process_zero():
        eval_dataset = load_split(data_args, "validation")
        if eval_dataset is None:
            raise ValueError("--do_eval needs --validation_file or --dataset_name")
        eval_dataset = caption_examples(eval_dataset, training=False, karpathy_split=caption_args.karpathy_split)
        captions = generate_captions(
            model,
            MPLUGCaptioningDataCollator(processor, **collator_kwargs),
            eval_dataset,
            caption_args,
            training_args.per_device_eval_batch_size,
            training_args.device,
        )
        image_ids = eval_dataset["image_id"]
        save_json(
            [{"image_id": image_id, "caption": caption} for image_id, caption in zip(image_ids, captions)],
            training_args.output_dir,
            "eval_predictions.json",
        )
        metrics = compute_caption_metrics(
            dict(zip(image_ids, captions)), dict(zip(image_ids, eval_dataset["references"]))
        )
        metrics = {f"eval_{name}": value for name, value in metrics.items()}
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)


if __name__ == "__main__":
    main()
