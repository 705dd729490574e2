"""
Fine-tune mPLUG for visual question answering with `Trainer`, then evaluate with the VQA v2 accuracy.

    python examples/run_vqa.py --model_name_or_path converted/mplug-base-vqa \
        --train_file vqa_train.json --validation_file vqa_val.json --image_root images/ \
        --output_dir outputs/vqa --do_train --do_eval --per_device_train_batch_size 16 \
        --learning_rate 2e-5 --num_train_epochs 8 [--lora] [--freeze_vision] [--bf16] [--gradient_checkpointing]

Data (JSON list or JSONL, the original `vqa_*.json`): `{"image": path, "question": str, "answer": [str, ...]}`,
optionally `"question_id"` and `"answer_weights"`. Several answers become the distinct answers weighted by their
frequency; entries with `"dataset": "vg"` or `"gqa"` get weight 0.5 as in the original. `--dataset_name` reads a
`datasets` dataset with the same columns (images may be PIL images). Evaluation answers each question with the
original beam search, or ranks `--answer_list` (a JSON list, the original's `rank_answer` with `--k_test`
candidates), through `mplug_hf.evaluation.runner`: `vqa_result.json` is written and, when answers are given, the VQA
accuracy (`eval_results.json`).

Distributed: `torchrun --nproc_per_node 2 examples/run_vqa.py ...` or `accelerate launch examples/run_vqa.py ...`.
"""

from dataclasses import dataclass, field

from mplug_hf import MPLUGForQuestionAnswering
from mplug_hf.augmentation import MPLUGTrainAugmentation
from mplug_hf.data_collators import MPLUGVQADataCollator
from mplug_hf.evaluation.runner import load_answer_list, run_question_answering
from mplug_hf.training import fine_tune


@dataclass
class VQAArguments:
    max_question_length: int = field(default=25, metadata={"help": "Question tokens (the original: 25)."})
    answer_list: str | None = field(default=None, metadata={"help": "JSON list of candidate answers to rank."})
    k_test: int = field(default=128, metadata={"help": "Candidates re-scored per question when ranking."})
    num_beams: int = field(default=5, metadata={"help": "Beams of the original beam search."})
    max_answer_length: int = field(default=10, metadata={"help": "Generated answer tokens."})


def original_weights(example: dict) -> dict:
    """Visual Genome / GQA answers of the original training mix count half."""
    if example.get("dataset") in ("vg", "gqa") and example.get("answer_weights") is None:
        answers = example["answer"]
        example["answer_weights"] = [0.5] * (1 if isinstance(answers, str) else len(answers))
    return example


def vqa_collator(processor, data_args, vqa_args) -> MPLUGVQADataCollator:
    augmentation = MPLUGTrainAugmentation(processor.image_processor.image_size) if data_args.augment else None
    return MPLUGVQADataCollator(
        processor,
        augmentation=augmentation,
        image_root=data_args.image_root,
        max_question_length=vqa_args.max_question_length,
    )


def evaluate(runner, records, vqa_args, output_dir):
    return run_question_answering(
        runner,
        records,
        output_dir,
        answer_list=load_answer_list(vqa_args.answer_list) if vqa_args.answer_list else None,
        k=vqa_args.k_test,
        num_beams=vqa_args.num_beams,
        max_length=vqa_args.max_answer_length,
    )


def with_original_weights(dataset, vqa_args):
    return dataset.map(original_weights) if "dataset" in dataset.column_names else dataset


def main():
    fine_tune(MPLUGForQuestionAnswering, VQAArguments, vqa_collator, evaluate, with_original_weights)


if __name__ == "__main__":
    main()
