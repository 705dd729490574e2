"""
What the fine-tuning scripts in `examples/` share: argument dataclasses, reading datasets in the original formats,
loading the model and processor, LoRA / frozen-vision setup, a learning rate per module, and the train → save loop
with checkpoint resumption.

The scripts are plain `Trainer` programs, so the same command runs on one CPU, under `torchrun --nproc_per_node N`
or `accelerate launch` (DDP), and with `--deepspeed ds_config.json` or `--fsdp "full_shard auto_wrap"`
(`_no_split_modules` names the layers to wrap). Mixed precision (`--bf16`, `--fp16`), `--gradient_checkpointing`
and `--resume_from_checkpoint` are `TrainingArguments` options passed through unchanged; on a machine without an
accelerator `--use_cpu` is the default, so `--bf16` trains with bfloat16 autocast on the CPU.
"""

import dataclasses
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
from transformers import (
    AutoProcessor,
    HfArgumentParser,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.utils import is_torch_xla_available

from .io_utils import atomic_write_json
from .modeling_mplug import MPLUGVisionModel


# Every attention of mPLUG (ViT, text encoder, fusion, decoder self- and cross-attention) is an `MPLUGAttention` with
# these projections; `o_proj` and the MLPs' `fc1`/`fc2` can be added.
LORA_TARGET_MODULES = "q_proj,v_proj"


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "Converted or saved mPLUG checkpoint (folder or Hub id)."})
    attn_implementation: str | None = field(default=None, metadata={"help": "eager, sdpa, flash_attention_2, ..."})
    freeze_vision: bool = field(default=False, metadata={"help": "Do not train the visual encoder (ViT)."})
    lora: bool = field(default=False, metadata={"help": "Train PEFT LoRA adapters instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: str = field(
        default=LORA_TARGET_MODULES,
        metadata={"help": "Comma-separated module names wrapped by LoRA: q_proj, k_proj, v_proj, o_proj, fc1, fc2."},
    )
    vision_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of the visual encoder (the original's lr2 with --do_two_optim); default: "
            "--learning_rate."
        },
    )


@dataclass
class DataArguments:
    train_file: str | None = field(default=None, metadata={"help": "Training data: JSON (a list) or JSONL."})
    validation_file: str | None = field(default=None, metadata={"help": "Evaluation data: JSON or JSONL."})
    dataset_name: str | None = field(default=None, metadata={"help": "A `datasets` name instead of files."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Its configuration."})
    train_split: str = field(default="train", metadata={"help": "Split of `dataset_name` to train on."})
    validation_split: str = field(default="validation", metadata={"help": "Split of `dataset_name` to evaluate."})
    image_root: str | None = field(default=None, metadata={"help": "Folder that relative image paths start from."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N evaluation examples."})
    augment: bool = field(default=True, metadata={"help": "The original's training image augmentation."})


def read_examples(path: str) -> list[dict]:
    """A JSON file holding a list of examples (or `{"images": [...]}` as Karpathy's `dataset_coco.json`), or JSONL.
    A malformed file raises a ValueError naming the file and line."""
    if not os.path.isfile(path):
        raise ValueError(f"data file not found: {path}")
    with open(path, encoding="utf-8") as handle:
        if path.endswith((".jsonl", ".jsonlines")):
            examples = []
            for line_number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    example = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{line_number}: not valid JSON ({error.msg})") from None
                if not isinstance(example, dict):
                    raise ValueError(f"{path}:{line_number}: each line must be a JSON object")
                examples.append(example)
            return examples
        try:
            data = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        data = data["images"]
    if not isinstance(data, list) or not all(isinstance(example, dict) for example in data):
        raise ValueError(f"{path} must hold a list of JSON objects (or JSON lines)")
    return data


def load_split(data_args: DataArguments, split: str) -> datasets.Dataset | None:
    """The `"train"` or `"validation"` examples named by `data_args` (files win over `dataset_name`), or None."""
    path = data_args.train_file if split == "train" else data_args.validation_file
    limit = data_args.max_train_samples if split == "train" else data_args.max_eval_samples
    if path is not None:
        dataset = datasets.Dataset.from_list(read_examples(path))
    elif data_args.dataset_name is not None:
        name = data_args.train_split if split == "train" else data_args.validation_split
        dataset = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name, split=name)
    else:
        return None
    return dataset.select(range(min(limit, len(dataset)))) if limit is not None else dataset


def load_model_and_processor(model_class: type[PreTrainedModel], model_args: ModelArguments):
    """The head and its processor from `model_name_or_path`, frozen / LoRA-wrapped as asked."""
    kwargs = {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
    model = model_class.from_pretrained(model_args.model_name_or_path, **kwargs)
    processor = AutoProcessor.from_pretrained(model_args.model_name_or_path)
    return prepare_model(model, model_args), processor


def freeze_vision_encoder(model: PreTrainedModel) -> int:
    """Stop the gradients of every visual encoder in `model`; returns the number of frozen parameters."""
    frozen = 0
    for module in model.modules():
        if isinstance(module, MPLUGVisionModel):
            for parameter in module.parameters():
                parameter.requires_grad_(False)
                frozen += parameter.numel()
    if frozen == 0:
        raise ValueError(f"{type(model).__name__} has no visual encoder to freeze")
    return frozen


def add_lora(model: PreTrainedModel, model_args: ModelArguments):
    """Wrap `model` with PEFT LoRA adapters on `lora_target_modules`; only the adapters stay trainable. With
    `freeze_vision` the visual encoder gets no adapters."""
    from peft import LoraConfig, get_peft_model

    targets = [name.strip() for name in model_args.lora_target_modules.split(",") if name.strip()]
    if not targets:
        raise ValueError("lora_target_modules is empty")
    config = LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=targets,
        exclude_modules=r".*vision_model\..*" if model_args.freeze_vision else None,
    )
    return get_peft_model(model, config)


def prepare_model(model: PreTrainedModel, model_args: ModelArguments):
    if model_args.freeze_vision:
        freeze_vision_encoder(model)
    if model_args.lora:
        model = add_lora(model, model_args)
    return model


def lies_under(parameter_name: str, module_path: str) -> bool:
    """Whether `parameter_name` belongs to the module at `module_path`, matched on whole dotted components (so
    `"mplug.text_encoder"` also finds the parameters of a PEFT-wrapped model)."""
    return f".{module_path.strip('.')}." in f".{parameter_name}."


def module_learning_rate_scale(parameter_name: str, learning_rate_scales: dict[str, float]) -> float:
    """The factor of the base learning rate for `parameter_name`: that of the first module path in
    `learning_rate_scales` it lies under, 1 for the others."""
    return next((scale for path, scale in learning_rate_scales.items() if lies_under(parameter_name, path)), 1.0)


class MPLUGTrainer(Trainer):
    """
    `Trainer` with a learning rate per module, as the original trains with two (`--do_two_optim`: lr1, and lr2 for
    the visual encoder). `learning_rate_scales` maps module paths (`"mplug.vision_model"`, `"mplug.text_encoder"`)
    to a factor of `args.learning_rate`; Trainer's optimizer class, weight-decay groups and scheduler are kept (the
    scheduler scales every group's rate alike).
    """

    def __init__(self, *args, learning_rate_scales: dict[str, float] | None = None, **kwargs):
        self.learning_rate_scales = dict(learning_rate_scales or {})
        if any(scale < 0 for scale in self.learning_rate_scales.values()):
            raise ValueError(f"learning-rate scales must be >= 0, got {self.learning_rate_scales}")
        super().__init__(*args, **kwargs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        check_finite_loss(loss, self.state.global_step)
        return loss

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is not None or not self.learning_rate_scales:
            return super().create_optimizer(model)
        optimizer = super().create_optimizer(model)
        names = {id(parameter): name for name, parameter in (model or self.model).named_parameters()}
        unmatched = [
            path for path in self.learning_rate_scales if not any(lies_under(n, path) for n in names.values())
        ]
        if unmatched:
            raise ValueError(f"learning_rate_scales name modules the model does not have: {unmatched}")
        groups = []
        for group in optimizer.param_groups:
            by_scale: dict[float, list] = {}
            for parameter in group["params"]:
                scale = module_learning_rate_scale(names[id(parameter)], self.learning_rate_scales)
                by_scale.setdefault(scale, []).append(parameter)
            groups += [{**group, "params": params, "lr": group["lr"] * scale} for scale, params in by_scale.items()]
        # regroup the fresh optimizer (no state yet) in place, keeping its class and settings
        optimizer.param_groups.clear()
        for group in groups:
            optimizer.add_param_group(group)
        return optimizer


class NonFiniteLossError(FloatingPointError):
    """Training stopped: the loss became NaN or infinite (nothing further is trained or saved)."""


def check_finite_loss(loss: torch.Tensor, step: int) -> None:
    """Raise [`NonFiniteLossError`] when `loss` is NaN/inf: continuing would turn every weight NaN and save them."""
    if not bool(torch.isfinite(loss.detach()).all()):
        raise NonFiniteLossError(
            f"the training loss is {loss.detach().float().mean().item()} at step {step + 1}: stopping before the"
            " weights are updated with it and saved. Check the data (non-finite answer weights, labels), lower the"
            " learning rate, or train in float32/bf16 instead of fp16."
        )


class NonFiniteLossCallback(TrainerCallback):
    """For a plain `Trainer`: stop with [`NonFiniteLossError`] when a logged training loss is NaN/inf (at logging
    steps only; [`MPLUGTrainer`] checks every step)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            check_finite_loss(torch.tensor(float(logs["loss"])), state.global_step - 1)


CHECKPOINT_COMPLETE = "checkpoint_complete"
RUN_FILE = "mplug_run.json"
# TrainingArguments that do not change what is trained: a run differing only in these is the same run.
_RUN_NEUTRAL_ARGUMENTS = {
    "output_dir", "logging_dir", "resume_from_checkpoint", "report_to", "disable_tqdm", "run_name", "do_eval",
    "do_predict", "per_device_eval_batch_size", "eval_strategy", "eval_steps", "logging_steps", "logging_strategy",
    "logging_first_step", "save_total_limit", "push_to_hub", "hub_model_id", "hub_token", "hub_strategy",
    "dataloader_num_workers", "local_rank", "overwrite_output_dir",
}  # fmt: skip


@dataclass
class OutputArguments:
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start afresh in an --output_dir that holds another run (its checkpoint-* folders are removed). "
            "Without it such a folder is refused; a folder of the same run (same arguments) is resumed."
        },
    )


def run_arguments(*argument_sets) -> dict:
    """The arguments that define a run (dataclasses or dicts; TrainingArguments without the run-neutral ones)."""
    arguments = {}
    for values in argument_sets:
        if isinstance(values, TrainingArguments):
            content = {k: v for k, v in values.to_dict().items() if k not in _RUN_NEUTRAL_ARGUMENTS}
        elif dataclasses.is_dataclass(values):
            content = dataclasses.asdict(values)
        else:
            content = dict(values)
        arguments[type(values).__name__] = content
    return json.loads(json.dumps(arguments, sort_keys=True, default=str))


def run_fingerprint(arguments: dict) -> str:
    return hashlib.sha256(json.dumps(arguments, sort_keys=True).encode("utf-8")).hexdigest()


class CheckpointCompletionCallback(TrainerCallback):
    """Marks a checkpoint folder complete once Trainer has written all of it: Trainer writes checkpoints in place,
    so a run killed while saving leaves a partial folder that must never be resumed from."""

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir, f"checkpoint-{state.global_step}")
        if state.is_world_process_zero and folder.is_dir():
            (folder / CHECKPOINT_COMPLETE).touch()


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest `checkpoint-N` in `output_dir` whose save finished (see [`CheckpointCompletionCallback`])."""
    if not os.path.isdir(output_dir):
        return None
    steps = [int(m.group(1)) for name in os.listdir(output_dir) if (m := re.fullmatch(r"checkpoint-(\d+)", name))]
    for step in sorted(steps, reverse=True):
        folder = os.path.join(output_dir, f"checkpoint-{step}")
        if os.path.isfile(os.path.join(folder, CHECKPOINT_COMPLETE)):
            return folder
    return None


def stored_run(output_dir: str | os.PathLike) -> dict | None:
    """The run record (`mplug_run.json`: fingerprint and arguments) of `output_dir`, or None."""
    path = Path(output_dir, RUN_FILE)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and "fingerprint" in record else None


def _differences(stored: dict, current: dict, prefix: str = "") -> list[str]:
    names = []
    for key in sorted(set(stored) | set(current)):
        a, b = stored.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            names += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            names.append(f"{prefix}{key}")
    return names


def resolve_checkpoint(
    training_args: TrainingArguments, arguments: dict | None = None, overwrite_output_dir: bool = False
) -> str | None:
    """
    The checkpoint to resume from, resuming only when asked or when `output_dir` verifiably holds the same run:

    * `--resume_from_checkpoint PATH`: that checkpoint (it must exist); `True`: the latest complete one in
      `output_dir` (there must be one).
    * `--resume_from_checkpoint False`: never resume.
    * not given: the latest complete checkpoint when `output_dir`'s run record (`mplug_run.json`) has the same
      `arguments` (fingerprint), else start afresh.

    Unless resuming, a non-empty `output_dir` of another run (another fingerprint, or no record) raises a ValueError
    naming what differs, before any training; `overwrite_output_dir` starts afresh there (removing its checkpoints).
    """
    checkpoint, start_afresh = _resume_decision(training_args, arguments, overwrite_output_dir)
    if start_afresh:
        # a fresh start must not mix with (or later resume from) the checkpoints of the run it replaces
        for entry in os.scandir(training_args.output_dir):
            if entry.is_dir() and re.fullmatch(r"checkpoint-\d+", entry.name):
                shutil.rmtree(entry.path, ignore_errors=True)  # every process may remove it (DDP)
    return checkpoint


def _resume_decision(
    training_args: TrainingArguments, arguments: dict | None, overwrite_output_dir: bool
) -> tuple[str | None, bool]:
    """(checkpoint to resume or None, whether to remove the folder's checkpoints first); raises for another run."""
    resume = training_args.resume_from_checkpoint
    output_dir = training_args.output_dir
    if resume in (True, "True", "true"):
        checkpoint = last_complete_checkpoint(output_dir)
        if checkpoint is None:
            raise ValueError(f"--resume_from_checkpoint True: {output_dir} holds no complete checkpoint-N to resume")
        return checkpoint, False
    if resume not in (None, "", False, "False", "false"):
        if not os.path.isdir(resume):
            raise ValueError(f"--resume_from_checkpoint {resume}: no such checkpoint folder")
        return resume, False
    record = stored_run(output_dir)
    same_run = arguments is not None and record is not None and record["fingerprint"] == run_fingerprint(arguments)
    explicitly_fresh = resume in (False, "False", "false")
    if same_run and not explicitly_fresh and not overwrite_output_dir:
        return last_complete_checkpoint(output_dir), False
    occupied = os.path.isdir(output_dir) and any(os.scandir(output_dir))
    if occupied and not same_run:
        if not overwrite_output_dir:
            if record is None:
                what = "files of another run (no mplug_run.json record)"
            else:
                changed = _differences(record.get("arguments", {}), arguments or {})
                what = "another run (different " + ", ".join(changed[:8]) + ("…" if len(changed) > 8 else "") + ")"
            raise ValueError(
                f"--output_dir {output_dir} is not empty: it holds {what}. Pass --resume_from_checkpoint True (or a"
                " checkpoint folder) to resume it, --overwrite_output_dir True to start afresh there, or another"
                " --output_dir."
            )
    return None, occupied and (overwrite_output_dir or explicitly_fresh)


def record_run(output_dir: str | os.PathLike, arguments: dict) -> None:
    """Write `mplug_run.json` (the run's fingerprint and arguments) atomically."""
    atomic_write_json(
        Path(output_dir, RUN_FILE), {"fingerprint": run_fingerprint(arguments), "arguments": arguments}, indent=1
    )


def train_and_save(
    trainer: Trainer,
    processor,
    training_args: TrainingArguments,
    arguments: dict | None = None,
    overwrite_output_dir: bool = False,
) -> PreTrainedModel:
    """Train (resuming only as [`resolve_checkpoint`] decides), save the model — LoRA merged into the weights — and
    the processor to `output_dir`, log the train metrics; returns the trained (merged) model. `arguments` (see
    [`run_arguments`]) identify the run: they are recorded in `output_dir/mplug_run.json`."""
    trainer.add_callback(CheckpointCompletionCallback())
    checkpoint = resolve_checkpoint(training_args, arguments, overwrite_output_dir)
    if arguments is not None and trainer.is_world_process_zero():
        record_run(training_args.output_dir, arguments)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):
        tied = model.get_base_model().config.tie_word_embeddings
        model = model.merge_and_unload()
        # PEFT marks the embeddings untied after merging; the adapters never touch them, so they still are tied,
        # and a config saying otherwise would reload the LM head as missing.
        model.config.tie_word_embeddings = tied
    if trainer.is_world_process_zero():
        model.save_pretrained(training_args.output_dir)
        processor.save_pretrained(training_args.output_dir)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    return model


def evaluation_records(data_args: DataArguments) -> list[dict]:
    """The evaluation examples as plain dicts, the records of [`mplug_hf.evaluation.runner`]."""
    dataset = load_split(data_args, "validation")
    if dataset is None:
        raise ValueError("--do_eval needs --validation_file or --dataset_name")
    return dataset.to_list()


def evaluation_runner(model: PreTrainedModel, processor, data_args: DataArguments, training_args: TrainingArguments):
    """The evaluation runner of the trained model (on the training device, eval mode)."""
    from .evaluation.runner import EvaluationRunner

    return EvaluationRunner(
        model.to(training_args.device).eval(),
        processor,
        media_root=data_args.image_root,
        batch_size=training_args.per_device_eval_batch_size,
    )


def log_evaluation(trainer: Trainer, metrics: dict | None) -> None:
    """Log and save (`eval_results.json`) the evaluation metrics, when the data had references."""
    if metrics:
        metrics = {f"eval_{name}": value for name, value in metrics.items()}
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)


def fine_tune(
    model_class: type[PreTrainedModel],
    task_arguments: type,
    make_collator: Callable,
    evaluate: Callable,
    prepare_train_dataset: Callable | None = None,
) -> None:
    """
    The program every fine-tuning script runs: parse `ModelArguments`, `DataArguments`, the script's
    `task_arguments` dataclass and `TrainingArguments`; load the model and processor; train and save with `Trainer`
    (`--do_train`); evaluate on the main process (`--do_eval`) and log the metrics.

    Args:
        make_collator: `(processor, data_args, task_args) -> collator`.
        evaluate: `(runner, records, task_args, output_dir) -> metrics or None`, records being the validation split.
        prepare_train_dataset: `(dataset, task_args) -> dataset`, e.g. to flatten the original annotation format.
    """
    parser = HfArgumentParser((ModelArguments, DataArguments, task_arguments, TrainingArguments, OutputArguments))
    if not torch.accelerator.is_available() and not is_torch_xla_available():
        # TrainingArguments refuses --bf16 without --use_cpu even where the CPU is the only device: there, train on it
        # (--bf16 is then CPU bfloat16 autocast) as every other option already does
        parser.set_defaults(use_cpu=True)
    model_args, data_args, task_args, training_args, output_args = parser.parse_args_into_dataclasses()
    arguments = run_arguments(model_args, data_args, task_args, training_args)
    if training_args.do_train:  # a non-empty output_dir of another run is refused before the model loads
        _resume_decision(training_args, arguments, output_args.overwrite_output_dir)
    training_args.remove_unused_columns = False  # the collators read the raw columns
    model, processor = load_model_and_processor(model_class, model_args)
    train_dataset = load_split(data_args, "train") if training_args.do_train else None
    if train_dataset is not None and prepare_train_dataset is not None:
        train_dataset = prepare_train_dataset(train_dataset, task_args)
    scales = {}
    if model_args.vision_learning_rate is not None:
        if training_args.learning_rate <= 0:
            raise ValueError("--vision_learning_rate needs a positive --learning_rate to scale against")
        scales["mplug.vision_model"] = model_args.vision_learning_rate / training_args.learning_rate
    trainer = MPLUGTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        data_collator=make_collator(processor, data_args, task_args),
        processing_class=processor,
        learning_rate_scales=scales,
    )
    if training_args.do_train:
        model = train_and_save(trainer, processor, training_args, arguments, output_args.overwrite_output_dir)
    if training_args.do_eval and trainer.is_world_process_zero():
        runner = evaluation_runner(model, processor, data_args, training_args)
        log_evaluation(trainer, evaluate(runner, evaluation_records(data_args), task_args, training_args.output_dir))


__all__ = [
    "LORA_TARGET_MODULES",
    "DataArguments",
    "MPLUGTrainer",
    "ModelArguments",
    "NonFiniteLossCallback",
    "NonFiniteLossError",
    "OutputArguments",
    "check_finite_loss",
    "record_run",
    "run_arguments",
    "run_fingerprint",
    "stored_run",
    "add_lora",
    "evaluation_records",
    "fine_tune",
    "evaluation_runner",
    "freeze_vision_encoder",
    "load_model_and_processor",
    "lies_under",
    "load_split",
    "prepare_model",
    "read_examples",
    "log_evaluation",
    "module_learning_rate_scale",
    "resolve_checkpoint",
    "train_and_save",
]
