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
candidates); `eval_predictions.json` is written and, when answers are given, the VQA accuracy.

Distributed: `torchrun --nproc_per_node 2 examples/run_vqa.py ...` or `accelerate launch examples/run_vqa.py ...`.
"""

import json
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser, Trainer, TrainingArguments

from mplug_hf import MPLUGForQuestionAnswering
from mplug_hf.augmentation import MPLUGTrainAugmentation
from mplug_hf.data_collators import MPLUGVQADataCollator
from mplug_hf.evaluation import evaluate_vqa
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
class VQAArguments:
    image_column: str = field(default="image")
    question_column: str = field(default="question")
    answer_column: str = field(default="answer")
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


@torch.no_grad()
def predict_answers(model, collator, dataset, vqa_args, batch_size: int, device) -> list[str]:
    model.eval().to(device)
    candidates = None
    if vqa_args.answer_list is not None:
        with open(vqa_args.answer_list, encoding="utf-8") as handle:
            answer_list = json.load(handle)
        candidates = collator.processor.encode_targets(answer_list).to(device)
    answers = []
    for examples in iterate_batches(dataset, batch_size):
        inputs = collator([{key: example[key] for key in (vqa_args.image_column, vqa_args.question_column)}
                           for example in examples]).to(device)  # fmt: skip
        if candidates is not None:
            top_ids, _ = model.rank_answers(
                inputs["input_ids"], inputs["pixel_values"], candidates["input_ids"], candidates["attention_mask"],
                attention_mask=inputs["attention_mask"], k=min(vqa_args.k_test, len(answer_list)),
            )  # fmt: skip
            answers += [answer_list[index] for index in top_ids[:, 0].tolist()]
        else:
            output = model.generate_original(
                **inputs, num_beams=vqa_args.num_beams, max_length=vqa_args.max_answer_length
            )
            answers += collator.processor.batch_decode(output.sequences[:, 0])
    return answers


def main():
    parser = HfArgumentParser((ModelArguments, DataArguments, VQAArguments, TrainingArguments))
    model_args, data_args, vqa_args, training_args = parser.parse_args_into_dataclasses()
    training_args.remove_unused_columns = False  # the collator reads the raw columns
    model, processor = load_model_and_processor(MPLUGForQuestionAnswering, model_args)
    train_dataset = load_split(data_args, "train")
    eval_dataset = load_split(data_args, "validation")
    if train_dataset is not None and "dataset" in train_dataset.column_names:
        train_dataset = train_dataset.map(original_weights)
    image_size = processor.image_processor.image_size
    collator_kwargs = dict(
        image_root=data_args.image_root,
        image_key=vqa_args.image_column,
        question_key=vqa_args.question_column,
        answer_key=vqa_args.answer_column,
        max_question_length=vqa_args.max_question_length,
    )
    train_collator = MPLUGVQADataCollator(
        processor, augmentation=MPLUGTrainAugmentation(image_size) if data_args.augment else None, **collator_kwargs
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        data_collator=train_collator,
        processing_class=processor,
    )
    if training_args.do_train:
        if train_dataset is None:
            raise ValueError("--do_train needs --train_file or --dataset_name")
        model = train_and_save(trainer, processor, training_args)
    if training_args.do_eval and trainer.is_world_process_zero():
        if eval_dataset is None:
            raise ValueError("--do_eval needs --validation_file or --dataset_name")
        eval_collator = MPLUGVQADataCollator(processor, **collator_kwargs)
        answers = predict_answers(
            model,
            eval_collator,
            eval_dataset,
            vqa_args,
            training_args.per_device_eval_batch_size,
            training_args.device,
        )
        question_ids = [example.get("question_id", index) for index, example in enumerate(eval_dataset)]
        predictions = [{"question_id": qid, "answer": answer} for qid, answer in zip(question_ids, answers)]
        save_json(predictions, training_args.output_dir, "eval_predictions.json")
        if vqa_args.answer_column in eval_dataset.column_names:
            annotations = [
                {"question_id": qid, "answers": [gold] if isinstance(gold, str) else list(gold)}
                for qid, gold in zip(question_ids, eval_dataset[vqa_args.answer_column])
            ]
            metrics = {"eval_vqa_accuracy": evaluate_vqa(predictions, annotations)["overall"]}
            trainer.log_metrics("eval", metrics)
            trainer.save_metrics("eval", metrics)


if __name__ == "__main__":
    main()
