"""
Fine-tune mPLUG for image-text retrieval (ITC + ITM with hard negatives) with `Trainer`, then evaluate R@1/5/10.

    python examples/run_retrieval.py --model_name_or_path converted/mplug-large-retrieval \
        --train_file flickr30k_train.json --validation_file flickr30k_test.json --image_root flickr30k/ \
        --output_dir outputs/retrieval --do_train --do_eval --per_device_train_batch_size 16 \
        --learning_rate 1e-5 --num_train_epochs 6 [--lora] [--freeze_vision] [--bf16]

Data (the original `re_*` files, JSON list or JSONL): training `{"image": path, "caption": str, "image_id": any}`
(pairs of the same image are not each other's negatives); evaluation `{"image": path, "caption": [str, ...]}`.
Evaluation ranks as the original (`mplug_hf.evaluation.runner`): ITC similarities pick the top `--k_test` candidates,
which the ITM head re-scores; texts are normalised as the original's `pre_caption`.
The in-batch negatives make the loss depend on the batch: under DDP each process forms its own negatives.
"""

from dataclasses import dataclass, field

from transformers import HfArgumentParser, Trainer, TrainingArguments

from mplug_hf import MPLUGForRetrieval
from mplug_hf.augmentation import MPLUGTrainAugmentation
from mplug_hf.data_collators import MPLUGRetrievalDataCollator, normalize_caption
from mplug_hf.evaluation.runner import run_retrieval
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
class RetrievalArguments:
    max_length: int = field(default=30, metadata={"help": "Text tokens (the original: 30)."})
    k_test: int = field(default=256, metadata={"help": "ITC candidates re-scored by ITM per query."})


def main():
    parser = HfArgumentParser((ModelArguments, DataArguments, RetrievalArguments, TrainingArguments))
    model_args, data_args, retrieval_args, training_args = parser.parse_args_into_dataclasses()
    training_args.remove_unused_columns = False
    model, processor = load_model_and_processor(MPLUGForRetrieval, model_args)
    augmentation = MPLUGTrainAugmentation(processor.image_processor.image_size) if data_args.augment else None
    collator = MPLUGRetrievalDataCollator(
        processor, augmentation=augmentation, image_root=data_args.image_root, max_length=retrieval_args.max_length
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
        records = [
            {**record, "caption": [normalize_caption(c) for c in record["caption"]]}
            if isinstance(record["caption"], list)
            else {**record, "caption": normalize_caption(record["caption"])}
            for record in evaluation_records(data_args)
        ]
        metrics = run_retrieval(
            evaluation_runner(model, processor, data_args, training_args),
            records,
            training_args.output_dir,
            k=retrieval_args.k_test,
            text_max_length=retrieval_args.max_length,
        )
        log_evaluation(trainer, metrics)


if __name__ == "__main__":
    main()
