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

from mplug_hf import MPLUGForRetrieval
from mplug_hf.augmentation import MPLUGTrainAugmentation
from mplug_hf.data_collators import MPLUGRetrievalDataCollator, normalize_caption
from mplug_hf.evaluation.runner import run_retrieval
from mplug_hf.training import fine_tune


@dataclass
class RetrievalArguments:
    max_length: int = field(default=30, metadata={"help": "Text tokens (the original: 30)."})
    k_test: int = field(default=256, metadata={"help": "ITC candidates re-scored by ITM per query."})


def retrieval_collator(processor, data_args, retrieval_args) -> MPLUGRetrievalDataCollator:
    augmentation = MPLUGTrainAugmentation(processor.image_processor.image_size) if data_args.augment else None
    return MPLUGRetrievalDataCollator(
        processor, augmentation=augmentation, image_root=data_args.image_root, max_length=retrieval_args.max_length
    )


def evaluate(runner, records, retrieval_args, output_dir):
    records = [
        {**record, "caption": [normalize_caption(c) for c in record["caption"]]}
        if isinstance(record["caption"], list)
        else {**record, "caption": normalize_caption(record["caption"])}
        for record in records
    ]
    return run_retrieval(
        runner, records, output_dir, k=retrieval_args.k_test, text_max_length=retrieval_args.max_length
    )


def main():
    fine_tune(MPLUGForRetrieval, RetrievalArguments, retrieval_collator, evaluate)


if __name__ == "__main__":
    main()
