"""
Fine-tune mPLUG for visual grounding (referring expressions) with `Trainer`, then evaluate Acc@IoU≥0.5.

    python examples/run_grounding.py --model_name_or_path converted/mplug-large-grounding \
        --train_file refcoco_train.jsonl --validation_file refcoco_val.jsonl --image_root coco/train2014 \
        --output_dir outputs/grounding --do_train --do_eval --per_device_train_batch_size 24 \
        --learning_rate 2e-5 --num_train_epochs 120 [--lora] [--freeze_vision] [--bf16]

Data (JSON list or JSONL): `{"image": path, "text": referring expression, "bbox": box}`, with RefCOCO/COCO boxes
`[x, y, width, height]` in pixels (`--box_format xywh`, the default) or `[x1, y1, x2, y2]` (`--box_format xyxy`).
Training uses the original grounding augmentation (random resize/crop, colour jitter, a flip that swaps "left" and
"right" in the query, random placement on the padded square); evaluation the processor's grounding mode and greedy
box decoding, scored in pixels of the input image.
"""

from dataclasses import dataclass, field

from mplug_hf import MPLUGForGrounding
from mplug_hf.augmentation import MPLUGGroundingAugmentation
from mplug_hf.data_collators import MPLUGGroundingDataCollator
from mplug_hf.evaluation.runner import run_grounding
from mplug_hf.training import fine_tune


@dataclass
class GroundingArguments:
    box_format: str = field(default="xywh", metadata={"help": "'xywh' (RefCOCO/COCO) or 'xyxy' pixel boxes."})
    max_length: int = field(default=20, metadata={"help": "Query tokens (the original: 20)."})


def grounding_collator(processor, data_args, grounding_args) -> MPLUGGroundingDataCollator:
    augmentation = MPLUGGroundingAugmentation(processor.image_processor.image_size) if data_args.augment else None
    return MPLUGGroundingDataCollator(
        processor,
        augmentation=augmentation,
        image_root=data_args.image_root,
        box_format=grounding_args.box_format,
        max_length=grounding_args.max_length,
    )


def evaluate(runner, records, grounding_args, output_dir):
    return run_grounding(
        runner, records, output_dir, box_format=grounding_args.box_format, max_length=grounding_args.max_length
    )


def main():
    fine_tune(MPLUGForGrounding, GroundingArguments, grounding_collator, evaluate)


if __name__ == "__main__":
    main()
