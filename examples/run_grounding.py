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

from transformers import HfArgumentParser, Trainer, TrainingArguments

from mplug_hf import MPLUGForGrounding
from mplug_hf.augmentation import MPLUGGroundingAugmentation
from mplug_hf.data_collators import MPLUGGroundingDataCollator
from mplug_hf.evaluation.runner import run_grounding
from mplug_hf.training import (
    DataArguments,
    ModelArguments,
    evaluation_records,
    evaluation_runner,
    load_model_and_processor,
    load_split,
    log_evaluation,
    train_and_save,
)


@dataclass
class GroundingArguments:
    box_format: str = field(default="xywh", metadata={"help": "'xywh' (RefCOCO/COCO) or 'xyxy' pixel boxes."})
    max_length: int = field(default=20, metadata={"help": "Query tokens (the original: 20)."})


def main():
    parser = HfArgumentParser((ModelArguments, DataArguments, GroundingArguments, TrainingArguments))
    model_args, data_args, grounding_args, training_args = parser.parse_args_into_dataclasses()
    training_args.remove_unused_columns = False
    model, processor = load_model_and_processor(MPLUGForGrounding, model_args)
    augmentation = MPLUGGroundingAugmentation(processor.image_processor.image_size) if data_args.augment else None
    collator = MPLUGGroundingDataCollator(
        processor,
        augmentation=augmentation,
        image_root=data_args.image_root,
        box_format=grounding_args.box_format,
        max_length=grounding_args.max_length,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=load_split(data_args, "train") if training_args.do_train else None,
        data_collator=collator,
        processing_class=processor,
    )
    if training_args.do_train:
        model = train_and_save(trainer, processor, training_args)
    if training_args.do_eval and trainer.is_world_process_zero():
        metrics = run_grounding(
            evaluation_runner(model, processor, data_args, training_args),
            evaluation_records(data_args),
            training_args.output_dir,
            box_format=grounding_args.box_format,
            max_length=grounding_args.max_length,
        )
        log_evaluation(trainer, metrics)


if __name__ == "__main__":
    main()
