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

import torch
from transformers import HfArgumentParser, Trainer, TrainingArguments

from mplug_hf import MPLUGForGrounding
from mplug_hf.augmentation import MPLUGGroundingAugmentation
from mplug_hf.data_collators import MPLUGGroundingDataCollator
from mplug_hf.evaluation import grounding_accuracy
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
class GroundingArguments:
    image_column: str = field(default="image")
    text_column: str = field(default="text")
    box_column: str = field(default="bbox")
    box_format: str = field(default="xywh", metadata={"help": "'xywh' (RefCOCO/COCO) or 'xyxy' pixel boxes."})
    max_length: int = field(default=20, metadata={"help": "Query tokens (the original: 20)."})


@torch.no_grad()
def evaluate_grounding(model, collator, dataset, batch_size: int, device) -> tuple[dict, list]:
    model.eval().to(device)
    predicted, gold = [], []
    for examples in iterate_batches(dataset, batch_size):
        inputs = collator(examples).to(device)
        predicted.append(
            model.predict_boxes(
                inputs["input_ids"],
                inputs["pixel_values"],
                inputs["attention_mask"],
                image_sizes=inputs["image_sizes"],
            ).cpu()
        )
        gold.append(collator.boxes_xyxy(examples))
    predicted = torch.cat(predicted)
    return grounding_accuracy(predicted, torch.cat(gold)), predicted.tolist()


def main():
    parser = HfArgumentParser((ModelArguments, DataArguments, GroundingArguments, TrainingArguments))
    model_args, data_args, grounding_args, training_args = parser.parse_args_into_dataclasses()
    training_args.remove_unused_columns = False
    model, processor = load_model_and_processor(MPLUGForGrounding, model_args)
    collator_kwargs = dict(
        image_root=data_args.image_root,
        image_key=grounding_args.image_column,
        text_key=grounding_args.text_column,
        box_key=grounding_args.box_column,
        box_format=grounding_args.box_format,
        max_length=grounding_args.max_length,
    )
    augmentation = MPLUGGroundingAugmentation(processor.image_processor.image_size) if data_args.augment else None
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=load_split(data_args, "train") if training_args.do_train else None,
        data_collator=MPLUGGroundingDataCollator(processor, augmentation=augmentation, **collator_kwargs),
        processing_class=processor,
    )
    if training_args.do_train:
        if trainer.train_dataset is None:
            raise ValueError("--do_train needs --train_file or --dataset_name")
        model = train_and_save(trainer, processor, training_args)
    if training_args.do_eval and trainer.is_world_process_zero():
        eval_dataset = load_split(data_args, "validation")
        if eval_dataset is None:
            raise ValueError("--do_eval needs --validation_file or --dataset_name")
        metrics, boxes = evaluate_grounding(
            model,
            MPLUGGroundingDataCollator(processor, **collator_kwargs),
            eval_dataset,
            training_args.per_device_eval_batch_size,
            training_args.device,
        )
        save_json(boxes, training_args.output_dir, "eval_predicted_boxes_xyxy.json")
        metrics = {f"eval_{name}": value for name, value in metrics.items()}
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)


if __name__ == "__main__":
    main()
