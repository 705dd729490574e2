"""
The main job: fine-tune a small mPLUG, built from scratch (random initialisation), on easy-VQA with `Trainer` on the
CPU, report its test accuracy next to the majority-answer baseline, show a few answered test images (a PNG grid in
the output folder), save the model and processor, and answer again through `pipeline("visual-question-answering")`.

easy-VQA (PyPI `easy-vqa`, MIT) holds 4,000 training and 1,000 test 64×64 images of one coloured shape, about 48k
generated questions and 13 possible answers. The model reads the 64×64 image in 8×8 patches; its decoder generates
the answer. The accuracy is measured with `rank_answers` over the 13 answers (the original's `rank_answer`: the
closed answer list of the dataset); the pipeline check uses free `generate()`.

    python examples/demo.py          # 1 epoch (1,206 steps of 32), the whole test set: ~83% in ~9 min
    python examples/demo.py --max-steps 300 --subset 9600 --test-subset 1000   # two minutes: ~77%

No image augmentation: colour and position changes (RandAugment, crops) would change the answers of this dataset.
"""

import argparse
import os
import time
from collections import Counter

import datasets
import torch
from easy_vqa import get_answers, get_test_image_paths, get_test_questions, get_train_image_paths, get_train_questions
from PIL import Image, ImageDraw
from transformers import Trainer, TrainingArguments, pipeline

from mplug_hf import MPLUGConfig, MPLUGForQuestionAnswering, MPLUGImageProcessor, MPLUGProcessor
from mplug_hf.data_collators import MPLUGVQADataCollator
from mplug_hf.evaluation.runner import EvaluationRunner, answer_questions


# rank_answers re-scores the answers whose first token is most probable: 4 of the 13 keep the evaluation quick.
RESCORED_ANSWERS = 4


def small_config() -> MPLUGConfig:
    """
    mPLUG's layout (ViT, text encoder, a co-attention and a connected fusion layer, decoder) at CPU-demo size. Trained
    from scratch, a wider initialisation than BERT's 0.02 makes the attention logits informative from the first steps:
    with 0.1 the model reaches in 200 steps the accuracy that takes 1,000 steps with 0.02.
    """
    return MPLUGConfig(
        vision_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
                           image_size=64, patch_size=8),
        text_config=dict(hidden_size=128, intermediate_size=512, num_attention_heads=4, max_position_embeddings=32,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
        text_encoder_layers=2, fusion_layers=2, stride_layer=1, decoder_layers=2, initializer_range=0.1,
    )  # fmt: skip


def easy_vqa_split(split: str, limit: int | None) -> datasets.Dataset:
    questions, answers, image_ids = get_train_questions() if split == "train" else get_test_questions()
    paths = get_train_image_paths() if split == "train" else get_test_image_paths()
    rows = {"image": [paths[i] for i in image_ids], "question": questions, "answer": answers}
    dataset = datasets.Dataset.from_dict(rows)
    if limit is not None and limit < len(dataset):
        # A seeded shuffle first: the files list the questions of one image together.
        dataset = dataset.shuffle(seed=0).select(range(limit))
    return dataset


def save_examples_grid(examples, predictions, path: str, scale: int = 3):
    """Each test image enlarged, with its question, the model's answer and the true one."""
    cell_width, text_height = 64 * scale + 140, 48
    grid = Image.new("RGB", (cell_width * 4, (64 * scale + text_height) * ((len(examples) + 3) // 4)), "white")
    draw = ImageDraw.Draw(grid)
    for index, (example, prediction) in enumerate(zip(examples, predictions)):
        left, top = (index % 4) * cell_width, (index // 4) * (64 * scale + text_height)
        image = Image.open(example["image"]).convert("RGB").resize((64 * scale, 64 * scale), Image.Resampling.NEAREST)
        grid.paste(image, (left + 70, top))
        correct = prediction == example["answer"]
        mark = "right" if correct else f"wrong, truth: {example['answer']}"
        draw.text((left + 4, top + 64 * scale + 4), example["question"], fill="black")
        draw.text(
            (left + 4, top + 64 * scale + 22), f"-> {prediction} ({mark})", fill="darkgreen" if correct else "red"
        )
    grid.save(path)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="outputs/demo")
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (default: 1 epoch)")
    parser.add_argument("--subset", type=int, default=None, help="train on this many questions")
    parser.add_argument("--test-subset", type=int, default=None, help="evaluate on this many test questions")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (1 is robust on a shared CPU; 2 is faster on an idle one)"
    )
    args = parser.parse_args(argv)
    # For matrices this small, intra-op threads that wait for each other on a busy CPU cost far more than they save:
    # one thread ran a step in 0.75 s where two took 10 s beside another process.
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    train_dataset = easy_vqa_split("train", args.subset)
    test_dataset = easy_vqa_split("test", args.test_subset)
    answer_list = get_answers()
    config = small_config()
    processor = MPLUGProcessor(MPLUGImageProcessor(image_size=config.vision_config.image_size))
    collator = MPLUGVQADataCollator(processor)
    torch.manual_seed(args.seed)
    model = MPLUGForQuestionAnswering(config)
    print(
        f"easy-VQA: {len(train_dataset)} training / {len(test_dataset)} test questions, {len(answer_list)} answers; "
        f"mPLUG with {model.num_parameters() / 1e6:.1f}M parameters (random init)"
    )

    training_args = TrainingArguments(
        output_dir=args.output_dir,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        weight_decay=0.01,
        warmup_steps=0.05,
        lr_scheduler_type="linear",
        num_train_epochs=1,
        max_steps=args.max_steps,
        max_grad_norm=1.0,
        logging_steps=50,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=args.seed,
        remove_unused_columns=False,
        disable_tqdm=False,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=train_dataset, data_collator=collator)
    trainer.train()
    train_seconds = time.perf_counter() - start

    runner = EvaluationRunner(model.eval(), processor, batch_size=256)
    answers = answer_questions(runner, test_dataset.to_list(), answer_list, k=RESCORED_ANSWERS)
    predictions = [answer["answer"] for answer in answers]
    gold = test_dataset["answer"]
    accuracy = sum(p == g for p, g in zip(predictions, gold)) / len(gold)
    majority_answer = Counter(train_dataset["answer"]).most_common(1)[0][0]
    baseline = sum(g == majority_answer for g in gold) / len(gold)
    print(f"\ntest accuracy (rank_answers over the {len(answer_list)} answers):  {accuracy:.1%}")
    print(f"majority-answer baseline (always {majority_answer!r}):            {baseline:.1%}")
    print(f"training took {train_seconds / 60:.1f} min; total {(time.perf_counter() - start) / 60:.1f} min")

    # Eight questions about different images (the split lists the questions of one image together).
    shown_indices = range(0, len(test_dataset), max(1, len(test_dataset) // 8))[:8]
    shown = [test_dataset[i] for i in shown_indices]
    shown_predictions = [predictions[i] for i in shown_indices]
    print("\nexamples:")
    for example, prediction in zip(shown, shown_predictions):
        print(
            f"  {os.path.basename(example['image'])}: {example['question']!r} -> {prediction!r} (truth {example['answer']!r})"
        )
    grid_path = os.path.join(args.output_dir, "examples.png")
    os.makedirs(args.output_dir, exist_ok=True)
    save_examples_grid(shown, shown_predictions, grid_path)
    print(f"grid of these examples: {grid_path}")

    model.save_pretrained(args.output_dir)
    processor.save_pretrained(args.output_dir)
    vqa = pipeline("visual-question-answering", model=args.output_dir, device="cpu")
    print(f"\nsaved to {args.output_dir}; reloaded through pipeline('visual-question-answering'):")
    agree = 0
    for example, prediction in zip(shown, shown_predictions):
        generated = vqa(image=example["image"], question=example["question"])[0]["answer"]
        ranked = vqa(
            image=example["image"],
            question=example["question"],
            candidate_answers=answer_list,
            num_rescored_candidates=RESCORED_ANSWERS,
        )[0]
        agree += ranked["answer"] == prediction
        print(
            f"  {example['question']!r}: generate() -> {generated!r}; ranked -> {ranked['answer']!r} ({ranked['score']:.2f})"
        )
    print(f"the reloaded model ranks like the trained one on {agree}/{len(shown)} examples")
    if agree != len(shown):
        raise SystemExit("the reloaded model disagrees with the trained one")
    return {"accuracy": accuracy, "baseline": baseline, "train_seconds": train_seconds}


if __name__ == "__main__":
    main()
