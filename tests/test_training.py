"""Fine-tuning: the example scripts end to end on a tiny model, LoRA, frozen vision, checkpoint resumption,
distributed training and a short easy-VQA run that must really learn."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_collators import bert_vocab_config
from transformers import Trainer, TrainerCallback, TrainingArguments

from mplug_hf import MPLUGForQuestionAnswering, MPLUGImageProcessor, MPLUGProcessor, default_tokenizer
from mplug_hf.data_collators import MPLUGVQADataCollator
from mplug_hf.training import (
    CheckpointCompletionCallback,
    ModelArguments,
    MPLUGTrainer,
    NonFiniteLossError,
    add_lora,
    freeze_vision_encoder,
    last_complete_checkpoint,
    lies_under,
    prepare_model,
    read_examples,
    record_run,
    resolve_checkpoint,
    run_arguments,
)


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
COLORS = {"red": (220, 30, 30), "blue": (30, 40, 220), "green": (30, 180, 40)}


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name: str, arguments: list[str], monkeypatch):
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *arguments])
    load_script(name).main()


def common_arguments(model_dir, output_dir, data_dir, train_file, eval_file) -> list[str]:
    return [
        "--model_name_or_path", str(model_dir), "--output_dir", str(output_dir), "--image_root", str(data_dir),
        "--train_file", str(train_file), "--validation_file", str(eval_file), "--do_train", "--do_eval",
        "--max_steps", "2", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "4",
        "--learning_rate", "1e-3", "--report_to", "none", "--use_cpu", "--save_strategy", "no", "--seed", "0",
        "--disable_tqdm", "true",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Six 40×32 images of one coloured square each, named by colour."""
    folder = tmp_path_factory.mktemp("images")
    for index, (color, rgb) in enumerate(list(COLORS.items()) * 2):
        image = Image.new("RGB", (40, 32), (240, 240, 240))
        image.paste(rgb, (4 + 3 * index, 6, 20 + 3 * index, 22))
        image.save(folder / f"{color}{index}.png")
    return folder


def color_of(image_name: str) -> str:
    return image_name.split(".")[0].rstrip("0123456789")


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def save_tiny_model(model_class, folder: Path, **config_overrides) -> Path:
    config = bert_vocab_config()
    for key, value in config_overrides.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model_class(config).save_pretrained(folder)
    MPLUGProcessor(MPLUGImageProcessor(image_size=config.vision_config.image_size)).save_pretrained(folder)
    return folder


def image_names(data_dir: Path) -> list[str]:
    return sorted(path.name for path in data_dir.glob("*.png"))


def vqa_examples(data_dir: Path) -> list[dict]:
    return [
        {"image": name, "question": "what color is the square?", "answer": [color_of(name)] * 3,
         "question_id": index}
        for index, name in enumerate(image_names(data_dir))
    ]  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------------
# The four scripts end to end (tiny model, two steps, evaluation with the task metric)
# ----------------------------------------------------------------------------------------------------------------------


def test_run_vqa_trains_saves_and_evaluates(tmp_path, data_dir, monkeypatch):
    model_dir = save_tiny_model(MPLUGForQuestionAnswering, tmp_path / "model")
    data = write_json(tmp_path / "vqa.json", vqa_examples(data_dir))
    answers = write_json(tmp_path / "answers.json", list(COLORS))
    output = tmp_path / "out"
    arguments = common_arguments(model_dir, output, data_dir, data, data) + ["--answer_list", str(answers)]
    # --vision_learning_rate 0: the original's second learning rate, here one that leaves the ViT as it was
    extra = ["--gradient_checkpointing", "--k_test", "2", "--vision_learning_rate", "0"]
    run_script("run_vqa", arguments + extra, monkeypatch)
    metrics = json.loads((output / "eval_results.json").read_text())
    assert 0 <= metrics["eval_accuracy"] <= 100
    predictions = json.loads((output / "vqa_result.json").read_text())
    assert len(predictions) == 6 and all(p["answer"] in COLORS for p in predictions)
    reloaded, base = (
        MPLUGForQuestionAnswering.from_pretrained(output),
        MPLUGForQuestionAnswering.from_pretrained(model_dir),
    )
    assert not torch.equal(reloaded.text_decoder.lm_head.dense.weight, base.text_decoder.lm_head.dense.weight)
    for name, weight in base.mplug.vision_model.state_dict().items():
        assert torch.equal(reloaded.mplug.vision_model.state_dict()[name], weight), name


@pytest.mark.skipif(torch.accelerator.is_available(), reason="checks the CPU-only default")
def test_run_vqa_bf16_trains_with_cpu_autocast_as_the_readme_command(tmp_path, data_dir, monkeypatch):
    """The README's `run_vqa.py ... --bf16` (no --use_cpu) on a machine without an accelerator: TrainingArguments
    alone refuses it; the scripts default to the CPU, where --bf16 is bfloat16 autocast over float32 weights."""
    model_dir = save_tiny_model(MPLUGForQuestionAnswering, tmp_path / "model")
    data = write_json(tmp_path / "vqa.json", vqa_examples(data_dir))
    output = tmp_path / "out"
    arguments = [a for a in common_arguments(model_dir, output, data_dir, data, data) if a != "--use_cpu"]
    training_autocast = []
    forward = MPLUGForQuestionAnswering.forward

    def recording_forward(self, *args, **kwargs):
        if self.training:
            training_autocast.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(MPLUGForQuestionAnswering, "forward", recording_forward)
    run_script("run_vqa", [*arguments, "--bf16", "--max_answer_length", "3"], monkeypatch)
    assert training_autocast == [torch.bfloat16, torch.bfloat16]  # both steps
    recorded = json.loads((output / "mplug_run.json").read_text())["arguments"]["TrainingArguments"]
    assert recorded["bf16"] is True and recorded["use_cpu"] is True
    trained, base = (MPLUGForQuestionAnswering.from_pretrained(folder) for folder in (output, model_dir))
    assert trained.dtype == torch.float32  # autocast, not bf16 weights
    assert not torch.equal(trained.text_decoder.lm_head.dense.weight, base.text_decoder.lm_head.dense.weight)
    assert 0 <= json.loads((output / "eval_results.json").read_text())["eval_accuracy"] <= 100


def test_run_vqa_with_lora_saves_a_merged_model(tmp_path, data_dir, monkeypatch):
    model_dir = save_tiny_model(MPLUGForQuestionAnswering, tmp_path / "model")
    data = write_json(tmp_path / "vqa.json", vqa_examples(data_dir))
    output = tmp_path / "out"
    arguments = common_arguments(model_dir, output, data_dir, data, data)
    run_script("run_vqa", arguments + ["--lora", "--freeze_vision", "--max_answer_length", "3"], monkeypatch)
    assert not (output / "adapter_config.json").exists()
    merged = MPLUGForQuestionAnswering.from_pretrained(output)
    base = MPLUGForQuestionAnswering.from_pretrained(model_dir)
    changed = [
        name for name, weight in merged.state_dict().items() if not torch.equal(weight, base.state_dict()[name])
    ]
    assert changed and all(name.endswith(("q_proj.weight", "v_proj.weight")) for name in changed)
    assert not any("vision_model" in name for name in changed)  # --freeze_vision leaves the ViT's adapters out too
    assert "eval_accuracy" in json.loads((output / "eval_results.json").read_text())


def test_run_captioning_reads_karpathy_splits(tmp_path, data_dir, monkeypatch):
    from mplug_hf import MPLUGForCaptioning

    model_dir = save_tiny_model(MPLUGForCaptioning, tmp_path / "model")
    entries = [
        {"filepath": "", "filename": name, "cocoid": index, "split": "test" if index < 2 else "train",
         "sentences": [{"raw": f"A {color_of(name)} square."}, {"raw": "A square on grey."}]}
        for index, name in enumerate(image_names(data_dir))
    ]  # fmt: skip
    data = write_json(tmp_path / "dataset_coco.json", {"images": entries, "dataset": "coco"})
    output = tmp_path / "out"
    arguments = common_arguments(model_dir, output, data_dir, data, data)
    run_script(
        "run_captioning", arguments + ["--karpathy_split", "--max_length", "6", "--min_length", "2"], monkeypatch
    )
    metrics = json.loads((output / "eval_results.json").read_text())
    assert {"eval_Bleu_4", "eval_CIDEr", "eval_ROUGE_L"} <= set(metrics)
    assert len(json.loads((output / "caption_result.json").read_text())) == 2  # the "test" images


def test_run_retrieval_evaluates_recall(tmp_path, data_dir, monkeypatch):
    from mplug_hf import MPLUGForRetrieval

    model_dir = save_tiny_model(MPLUGForRetrieval, tmp_path / "model")
    names = image_names(data_dir)
    train = [{"image": name, "caption": f"a {color_of(name)} square", "image_id": name} for name in names]
    evaluation = [{"image": name, "caption": [f"a {name[:-4]} square", "a square"]} for name in names]
    output = tmp_path / "out"
    arguments = common_arguments(
        model_dir,
        output,
        data_dir,
        write_json(tmp_path / "train.json", train),
        write_json(tmp_path / "test.json", evaluation),
    )
    run_script("run_retrieval", arguments + ["--k_test", "3"], monkeypatch)
    metrics = json.loads((output / "eval_results.json").read_text())
    assert {"eval_txt_r1", "eval_img_r1", "eval_r_mean"} <= set(metrics)


def test_run_grounding_evaluates_box_accuracy(tmp_path, data_dir, monkeypatch):
    from mplug_hf import MPLUGForGrounding

    model_dir = save_tiny_model(
        MPLUGForGrounding, tmp_path / "model", box_prefix_token_id=344, box_bin_start_token_id=345, num_box_bins=33
    )
    names = image_names(data_dir)
    rows = [
        {"image": name, "text": f"the {color_of(name)} square on the left", "bbox": [4 + 3 * i, 6, 16, 16]}
        for i, name in enumerate(names)
    ]
    data = tmp_path / "refcoco.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in rows))
    output = tmp_path / "out"
    run_script("run_grounding", common_arguments(model_dir, output, data_dir, data, data), monkeypatch)
    metrics = json.loads((output / "eval_results.json").read_text())
    assert 0 <= metrics["eval_accuracy"] <= 100 and 0 <= metrics["eval_mean_iou"] <= 1
    assert len(json.loads((output / "grounding_result.json").read_text())) == 6


# ----------------------------------------------------------------------------------------------------------------------
# LoRA, frozen vision, resumption
# ----------------------------------------------------------------------------------------------------------------------


def fixed_vqa_batch(data_dir: Path, processor) -> list[dict]:
    return [{**example, "image": str(data_dir / example["image"])} for example in vqa_examples(data_dir)]


def training_arguments(output_dir, **overrides) -> TrainingArguments:
    values = dict(
        output_dir=str(output_dir), per_device_train_batch_size=2, learning_rate=2e-3, report_to=[], use_cpu=True,
        save_strategy="no", seed=0, remove_unused_columns=False, disable_tqdm=True, logging_steps=1,
    )  # fmt: skip
    values.update(overrides)
    return TrainingArguments(**values)


def synthetic_vqa_examples(answer_of_class: dict[int, int]) -> list[dict]:
    """Three image classes (a constant channel each) asked the same question; the answer token depends on the class."""
    examples = []
    for image_class, answer in answer_of_class.items():
        pixel_values = torch.zeros(3, 32, 32)
        pixel_values[image_class] = 1.0
        examples.append(
            {
                "pixel_values": pixel_values,
                "input_ids": torch.tensor([101, 7, 8]),
                "labels": torch.tensor([101, answer, 102]),
            }
        )
    return examples * 2


def test_lora_trains_only_the_adapters_and_lowers_the_loss(tmp_path, config):
    # A "pretrained" model first (full training: class c → token 10 + c), then LoRA learns another mapping.
    torch.manual_seed(0)
    base = MPLUGForQuestionAnswering(config)
    arguments = training_arguments(tmp_path, max_steps=50, per_device_train_batch_size=6, learning_rate=1e-2)
    Trainer(model=base, args=arguments, train_dataset=synthetic_vqa_examples({0: 10, 1: 11, 2: 12})).train()
    before = {name: weight.clone() for name, weight in base.state_dict().items()}
    model = prepare_model(base, ModelArguments(model_name_or_path="unused", lora=True, lora_dropout=0.0))
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    assert trainable and {name.split(".")[-3] for name in trainable} == {"lora_A", "lora_B"}
    assert any(".q_proj." in name for name in trainable) and any(".v_proj." in name for name in trainable)
    arguments = training_arguments(tmp_path, max_steps=30, per_device_train_batch_size=6, learning_rate=1e-2)
    trainer = Trainer(model=model, args=arguments, train_dataset=synthetic_vqa_examples({0: 11, 1: 12, 2: 10}))
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < 0.5 * losses[0]
    base_after = model.get_base_model().state_dict()
    for name, weight in before.items():
        key = name.replace("q_proj.", "q_proj.base_layer.").replace("v_proj.", "v_proj.base_layer.")
        assert torch.equal(base_after[key], weight), name


def test_lora_rejects_an_empty_target_list():
    with pytest.raises(ValueError, match="lora_target_modules"):
        add_lora(MPLUGForQuestionAnswering(bert_vocab_config()), ModelArguments("unused", lora_target_modules=" , "))


def test_freeze_vision_encoder_stops_only_the_vit():
    model = MPLUGForQuestionAnswering(bert_vocab_config())
    frozen = freeze_vision_encoder(model)
    assert frozen == sum(p.numel() for p in model.mplug.vision_model.parameters())
    assert all(p.requires_grad for name, p in model.named_parameters() if not name.startswith("mplug.vision_model"))


class StopAfter(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
            control.should_save = True


def test_mplug_trainer_gives_named_modules_their_own_learning_rate(tmp_path, data_dir):
    processor = MPLUGProcessor(MPLUGImageProcessor(image_size=32))
    torch.manual_seed(0)
    model = MPLUGForQuestionAnswering(bert_vocab_config())
    initial = {name: weight.clone() for name, weight in model.state_dict().items()}
    scales = {"mplug.vision_model": 0.0, "mplug.text_encoder": 0.5}
    trainer = MPLUGTrainer(
        model=model,
        args=training_arguments(tmp_path, max_steps=2, weight_decay=0.1, learning_rate=1e-3),
        train_dataset=fixed_vqa_batch(data_dir, processor),
        data_collator=MPLUGVQADataCollator(processor),
        learning_rate_scales=scales,
    )
    optimizer = trainer.create_optimizer()
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    decayed = set(trainer.get_decay_parameter_names(model))
    for name, parameter in model.named_parameters():
        group = group_of[id(parameter)]
        expected = 0.0 if name.startswith("mplug.vision_model.") else 5e-4 if "text_encoder" in name else 1e-3
        assert group["lr"] == pytest.approx(expected), name
        assert group["weight_decay"] == (0.1 if name in decayed else 0.0), name  # Trainer's weight-decay groups
    trainer.train()
    changed = {name for name, weight in model.state_dict().items() if not torch.equal(weight, initial[name])}
    assert not any(name.startswith("mplug.vision_model.") for name in changed)
    assert any(name.startswith("mplug.text_encoder.") for name in changed)
    assert any(name.startswith("text_decoder.") for name in changed)
    # PEFT prefixes the names; matching is on whole components
    assert lies_under("base_model.model.mplug.text_encoder.layers.0.mlp.fc1.weight", "mplug.text_encoder")
    assert not lies_under("mplug.text_encoder_old.weight", "mplug.text_encoder")
    with pytest.raises(ValueError, match="does not have"):
        MPLUGTrainer(
            model=model, args=training_arguments(tmp_path), learning_rate_scales={"vision": 0.1}
        ).create_optimizer()


def test_resume_from_checkpoint_reproduces_an_uninterrupted_run(tmp_path, data_dir):
    processor = MPLUGProcessor(MPLUGImageProcessor(image_size=32))
    examples = fixed_vqa_batch(data_dir, processor) * 2  # 12 examples, 6 steps of 2 (shuffled)
    collator = MPLUGVQADataCollator(processor)

    def train(output_dir, callbacks=(), resume=None):
        torch.manual_seed(0)
        model = MPLUGForQuestionAnswering(bert_vocab_config())
        arguments = training_arguments(output_dir, max_steps=6, save_strategy="steps", save_steps=3)
        trainer = Trainer(model=model, args=arguments, train_dataset=examples, data_collator=collator)
        for callback in callbacks:
            trainer.add_callback(callback)
        trainer.train(resume_from_checkpoint=resume)
        return trainer.model.state_dict()

    uninterrupted = train(tmp_path / "full")
    interrupted_dir = tmp_path / "interrupted"
    interrupted = train(interrupted_dir, callbacks=[StopAfter(3)])
    assert any(not torch.equal(interrupted[name], uninterrupted[name]) for name in uninterrupted)
    resumed = train(interrupted_dir, resume=str(interrupted_dir / "checkpoint-3"))
    for name, weight in uninterrupted.items():
        torch.testing.assert_close(resumed[name], weight, rtol=1e-5, atol=1e-6, msg=name)


def test_an_interrupted_save_leaves_the_previous_checkpoint_to_resume_from(tmp_path, data_dir):
    processor = MPLUGProcessor(MPLUGImageProcessor(image_size=32))
    examples = fixed_vqa_batch(data_dir, processor) * 2
    torch.manual_seed(0)
    arguments = training_arguments(tmp_path, max_steps=6, save_strategy="steps", save_steps=3)
    trainer = Trainer(
        model=MPLUGForQuestionAnswering(bert_vocab_config()),
        args=arguments,
        train_dataset=examples,
        data_collator=MPLUGVQADataCollator(processor),
        callbacks=[CheckpointCompletionCallback()],
    )
    trainer.train()
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-6")
    # a run killed while writing checkpoint-9: the folder exists, its weights are cut short, no completion marker
    partial = tmp_path / "checkpoint-9"
    partial.mkdir()
    weights = (tmp_path / "checkpoint-6" / "model.safetensors").read_bytes()
    (partial / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-6")
    arguments.resume_from_checkpoint = "True"
    assert resolve_checkpoint(arguments) == str(tmp_path / "checkpoint-6")
    reloaded = MPLUGForQuestionAnswering.from_pretrained(tmp_path / "checkpoint-6")
    for name, weight in trainer.model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], weight, msg=name)


def complete_checkpoint(output_dir: Path, step: int) -> Path:
    folder = output_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "checkpoint_complete").touch()
    return folder


def test_a_run_resumes_only_when_asked_or_when_it_is_verifiably_the_same_run(tmp_path):
    output = tmp_path / "out"
    first = run_arguments(ModelArguments(model_name_or_path="a"), training_arguments(output, learning_rate=1e-3))
    second = run_arguments(ModelArguments(model_name_or_path="a"), training_arguments(output, learning_rate=5e-4))
    assert resolve_checkpoint(training_arguments(output), first) is None  # no folder yet
    output.mkdir()
    record_run(output, first)
    checkpoint = complete_checkpoint(output, 3)
    # the same run (same arguments; the output folder and logging do not count) resumes by itself
    same = run_arguments(
        ModelArguments(model_name_or_path="a"), training_arguments(output, learning_rate=1e-3, logging_steps=7)
    )
    assert resolve_checkpoint(training_arguments(output), same) == str(checkpoint)
    # another run in the same folder is refused, naming what differs, and nothing is removed
    with pytest.raises(
        ValueError, match=r"is not empty: it holds another run \(different TrainingArguments.learning_rate"
    ):
        resolve_checkpoint(training_arguments(output), second)
    with pytest.raises(ValueError, match="--overwrite_output_dir"):
        resolve_checkpoint(training_arguments(output, resume_from_checkpoint="False"), second)
    assert checkpoint.is_dir()
    # asked: resume whatever it is
    asked = training_arguments(output, resume_from_checkpoint="True")
    assert resolve_checkpoint(asked, second) == str(checkpoint)
    with pytest.raises(ValueError, match="no such checkpoint folder"):
        resolve_checkpoint(training_arguments(output, resume_from_checkpoint=str(output / "checkpoint-9")), second)
    # --resume_from_checkpoint False is honoured: the same run starts afresh (its old checkpoints removed)
    assert resolve_checkpoint(training_arguments(output, resume_from_checkpoint="False"), first) is None
    assert not checkpoint.exists()
    with pytest.raises(ValueError, match="holds no complete checkpoint"):
        resolve_checkpoint(asked, first)
    # files without a run record (another tool's, or an older version's) are another run
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"")
    complete_checkpoint(other, 2)
    with pytest.raises(ValueError, match="no mplug_run.json record"):
        resolve_checkpoint(training_arguments(other), first)
    assert resolve_checkpoint(training_arguments(other), first, overwrite_output_dir=True) is None
    assert sorted(p.name for p in other.iterdir()) == ["model.safetensors"]


def test_a_second_script_run_in_the_same_output_dir_is_refused_unless_asked(tmp_path, data_dir, monkeypatch):
    model_dir = save_tiny_model(MPLUGForQuestionAnswering, tmp_path / "model")
    data = write_json(tmp_path / "vqa.json", vqa_examples(data_dir))
    output = tmp_path / "out"
    arguments = common_arguments(model_dir, output, data_dir, data, data)
    arguments = [a for a in arguments if a != "--do_eval"]
    run_script("run_vqa", arguments, monkeypatch)
    trained = load_file(output / "model.safetensors")
    assert json.loads((output / "mplug_run.json").read_text())["fingerprint"]
    changed = [*arguments, "--learning_rate", "5e-4"]
    with pytest.raises(ValueError, match="learning_rate"):
        run_script("run_vqa", changed, monkeypatch)
    assert load_file(output / "model.safetensors").keys() == trained.keys()
    for name, weight in load_file(output / "model.safetensors").items():
        assert torch.equal(weight, trained[name]), name  # the first run's weights are untouched
    run_script("run_vqa", [*changed, "--overwrite_output_dir", "True"], monkeypatch)
    assert any(not torch.equal(w, trained[n]) for n, w in load_file(output / "model.safetensors").items())
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["global_step"] == 2  # trained its own steps, not 0 after resuming the first run


def test_training_stops_with_a_clear_message_on_a_non_finite_loss(tmp_path, data_dir):
    processor = MPLUGProcessor(MPLUGImageProcessor(image_size=32))
    collator = MPLUGVQADataCollator(processor)

    def poisoned(examples):  # what a NaN weight did before the collator refused it
        batch = collator(examples)
        batch["answer_weights"] = torch.full_like(batch["answer_weights"], float("nan"))
        return batch

    torch.manual_seed(0)
    trainer = MPLUGTrainer(
        model=MPLUGForQuestionAnswering(bert_vocab_config()),
        args=training_arguments(tmp_path, max_steps=3),
        train_dataset=fixed_vqa_batch(data_dir, processor),
        data_collator=poisoned,
    )
    before = {name: weight.clone() for name, weight in trainer.model.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match="training loss is nan at step 1"):
        trainer.train()
    for name, weight in trainer.model.state_dict().items():
        assert torch.equal(weight, before[name]), name  # never stepped with it


def test_malformed_training_data_names_the_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"image": "a.png", "question": "q?"}\n\n{"image": "b.png", "question": \n')
    with pytest.raises(ValueError, match="train.jsonl:3: not valid JSON"):
        read_examples(str(path))
    path = tmp_path / "train.json"
    path.write_text('[\n  {"image": "a.png"},\n  {"image": }\n]')
    with pytest.raises(ValueError, match="train.json:3: not valid JSON"):
        read_examples(str(path))


# ----------------------------------------------------------------------------------------------------------------------
# Distributed: two gloo processes equal one process with the same global batch
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path, data_dir):
    model_dir = save_tiny_model(MPLUGForQuestionAnswering, tmp_path / "model")
    data = write_json(tmp_path / "vqa.json", vqa_examples(data_dir) * 2)  # 12 questions, 3 steps of 4
    arguments = [
        str(EXAMPLES / "run_vqa.py"), "--model_name_or_path", str(model_dir), "--train_file", str(data),
        "--image_root", str(data_dir), "--do_train", "--max_steps", "3", "--learning_rate", "1e-3",
        "--augment", "False", "--use_cpu", "--report_to", "none", "--save_strategy", "no",
        "--seed", "0", "--disable_tqdm", "true",
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    single, distributed = tmp_path / "single", tmp_path / "ddp"
    subprocess.run(
        [sys.executable, *arguments, "--per_device_train_batch_size", "4", "--output_dir", str(single)],
        check=True, env=environment,
    )  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *arguments,
         "--per_device_train_batch_size", "2", "--ddp_backend", "gloo", "--output_dir", str(distributed)],
        check=True, env=environment,
    )  # fmt: skip
    initial = load_file(model_dir / "model.safetensors")
    single_weights = load_file(single / "model.safetensors")
    distributed_weights = load_file(distributed / "model.safetensors")
    assert json.loads((distributed / "train_results.json").read_text())["epoch"] == 1.0
    assert any(not torch.equal(single_weights[name], initial[name]) for name in initial)
    for name, weight in single_weights.items():
        torch.testing.assert_close(distributed_weights[name], weight, rtol=1e-4, atol=1e-5, msg=name)


# ----------------------------------------------------------------------------------------------------------------------
# The main job's demo, shortened: easy-VQA from scratch must beat the majority answer by far
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_easy_vqa_short_run_learns_well_above_the_majority_baseline(tmp_path):
    results = load_script("demo").main(
        ["--output-dir", str(tmp_path), "--max-steps", "300", "--train-images", "1200", "--test-subset", "1000"]
    )
    assert results["accuracy"] > results["baseline"] + 0.25
    assert (tmp_path / "examples.png").is_file() and (tmp_path / "model.safetensors").is_file()


def test_easy_vqa_vocabulary_keeps_bert_special_ids_and_covers_the_test_split(tmp_path):
    """The demo's own vocabulary: mPLUG's special-token ids unchanged, no test question or answer hits [UNK]."""
    from easy_vqa import get_test_questions

    demo = load_script("demo")
    tokenizer = demo.easy_vqa_tokenizer(str(tmp_path))
    bert = default_tokenizer()
    for token in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"):
        assert tokenizer.convert_tokens_to_ids(token) == bert.convert_tokens_to_ids(token), token
    assert len(tokenizer) < 200
    questions, answers, _ = get_test_questions()
    ids = tokenizer(sorted(set(questions + answers)))["input_ids"]
    assert not any(tokenizer.unk_token_id in row for row in ids)
    processor = MPLUGProcessor(MPLUGImageProcessor(image_size=64), tokenizer=tokenizer)
    assert processor.tokenizer.decode(processor.encode_text("is there a teal circle?")["input_ids"][0]).startswith(
        "[CLS] is there a teal circle?"
    )


def test_heads_normalise_their_own_loss_for_trainer():
    """Trainer must divide by gradient-accumulation steps, not rescale by num_items_in_batch."""
    from mplug_hf import MPLUGForCaptioning, MPLUGForGrounding, MPLUGForRetrieval

    for head in (MPLUGForQuestionAnswering, MPLUGForCaptioning, MPLUGForRetrieval, MPLUGForGrounding):
        assert head.accepts_loss_kwargs is False


def test_demo_without_easy_vqa_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "easy_vqa", None)  # import easy_vqa → ModuleNotFoundError
    with pytest.raises(SystemExit, match=r'pip install -e "\.\[demo\]"[\s\S]*pip install easy-vqa'):
        load_script("demo")
