"""
Fine-tune mPLUG for image-text retrieval (ITC + ITM with hard negatives) with `Trainer`, then evaluate R@1/5/10.

    python examples/run_retrieval.py --model_name_or_path converted/mplug-large-retrieval \
        --train_file flickr30k_train.json --validation_file flickr30k_test.json --image_root flickr30k/ \
        --output_dir outputs/retrieval --do_train --do_eval --per_device_train_batch_size 16 \
        --learning_rate 1e-5 --num_train_epochs 6 [--lora] [--freeze_vision] [--bf16]

Data (the original `re_*` files, JSON list or JSONL): training `{"image": path, "caption": str, "image_id": any}`
(pairs of the same image are not each other's negatives); evaluation `{"image": path, "caption": [str, ...]}`.
Evaluation ranks as the original: ITC similarities pick the top `--k_test` candidates, which the ITM head re-scores.
The in-batch negatives make the loss depend on the batch: under DDP each process forms its own negatives.
"""

from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser, Trainer, TrainingArguments

from mplug_hf import MPLUGForRetrieval
from mplug_hf.augmentation import MPLUGTrainAugmentation
from mplug_hf.data_collators import MPLUGRetrievalDataCollator, normalize_caption
from mplug_hf.evaluation import retrieval_metrics
from mplug_hf.training import (
    DataArguments,
    ModelArguments,
    iterate_batches,
    load_model_and_processor,
    load_split,
    train_and_save,
)


@dataclass
class RetrievalArguments:
    image_column: str = field(default="image")
    caption_column: str = field(default="caption")
    image_id_column: str = field(default="image_id")
    max_length: int = field(default=30, metadata={"help": "Text tokens (the original: 30)."})
    k_test: int = field(default=256, metadata={"help": "ITC candidates re-scored by ITM per query."})


@torch.no_grad()
def evaluate_retrieval(model, processor, dataset, retrieval_args, image_root, batch_size: int, device) -> dict:
    model.eval().to(device)
    image_collator = MPLUGRetrievalDataCollator(
        processor, image_root=image_root, image_key=retrieval_args.image_column
    )
    texts, txt2img, img2txt = [], [], []
    for image_index, captions in enumerate(dataset[retrieval_args.caption_column]):
        captions = [captions] if isinstance(captions, str) else captions
        img2txt.append(list(range(len(texts), len(texts) + len(captions))))
        texts += [normalize_caption(caption) for caption in captions]
        txt2img += [image_index] * len(captions)
    pixel_values = torch.cat(
        [
            processor(images=image_collator.load_images(examples))["pixel_values"]
            for examples in iterate_batches(dataset, batch_size)
        ]
    )
    text_inputs = processor.encode_text(texts, max_length=retrieval_args.max_length)
    scores_i2t, scores_t2i = model.retrieve(
        pixel_values.to(device),
        text_inputs["input_ids"].to(device),
        text_inputs["attention_mask"].to(device),
        k=retrieval_args.k_test,
        batch_size=batch_size,
    )
    return retrieval_metrics(scores_i2t.cpu().numpy(), txt2img, img2txt, scores_t2i.cpu().numpy())


def main():
    parser = HfArgumentParser((ModelArguments, DataArguments, RetrievalArguments, TrainingArguments))
    model_args, data_args, retrieval_args, training_args = parser.parse_args_into_dataclasses()
    training_args.remove_unused_columns = False
    model, processor = load_model_and_processor(MPLUGForRetrieval, model_args)
    augmentation = MPLUGTrainAugmentation(processor.image_processor.image_size) if data_args.augment else None
    collator = MPLUGRetrievalDataCollator(
        processor,
        augmentation=augmentation,
        image_root=data_args.image_root,
        image_key=retrieval_args.image_column,
        text_key=retrieval_args.caption_column,
        image_id_key=retrieval_args.image_id_column,
        max_length=retrieval_args.max_length,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=load_split(data_args, "train") if training_args.do_train else None,
        data_collator=collator,
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
        metrics = evaluate_retrieval(
            model,
            processor,
            eval_dataset,
            retrieval_args,
            data_args.image_root,
            training_args.per_device_eval_batch_size,
            training_args.device,
        )
        metrics = {f"eval_{name}": value for name, value in metrics.items()}
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)


if __name__ == "__main__":
    main()
