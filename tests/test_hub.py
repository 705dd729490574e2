"""Hub packaging: export_for_hub folders (remote code loaded in a process without mplug_hf), push_to_hub with a
stubbed Hub, and the model cards in model_cards/ (rendered and their snippets run against tiny exports)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoModelForVisualQuestionAnswering, pipeline

from mplug_hf import (
    MPLUGForCaptioning,
    MPLUGForGrounding,
    MPLUGForPreTraining,
    MPLUGForQuestionAnswering,
    MPLUGForRetrieval,
    MPLUGImageProcessor,
    MPLUGProcessor,
    export_for_hub,
    push_to_hub,
)
from mplug_hf.hub import SIZES, TASKS, render_model_card
from tests.conftest import tiny_config
from tests.test_pipelines import tiny_text_config


REPO_ROOT = Path(__file__).resolve().parents[1]
CARDS_DIR = REPO_ROOT / "model_cards"
HEADS = {
    "pretrain": MPLUGForPreTraining,
    "vqa": MPLUGForQuestionAnswering,
    "caption": MPLUGForCaptioning,
    "retrieval": MPLUGForRetrieval,
    "grounding": MPLUGForGrounding,
}
# The converter's decoding settings (convert_original.TASK_GENERATION), so that the tiny exports decode like real ones.
GENERATION = {"vqa": dict(num_beams=5, min_length=1, max_length=10), "caption": dict(num_beams=5, max_length=12)}
QUESTION = "what is in the picture?"
FAMILIES = [(task, size) for task in TASKS for size in SIZES]


def build(task: str):
    torch.manual_seed(0)
    model = HEADS[task](tiny_config(text_config=tiny_text_config())).eval()
    for name, value in GENERATION.get(task, {}).items():
        setattr(model.generation_config, name, value)
    return model


@pytest.fixture(scope="module")
def processor() -> MPLUGProcessor:
    return MPLUGProcessor(MPLUGImageProcessor(image_size=32))


@pytest.fixture(scope="module")
def image_path(tmp_path_factory) -> Path:
    """`example.jpg`, the file the model cards' snippets open."""
    path = tmp_path_factory.mktemp("workdir") / "example.jpg"
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (48, 40, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def exports(tmp_path_factory, processor) -> dict[str, tuple[object, str]]:
    """Each head, tiny and random, with its export_for_hub folder."""
    folders = {}
    for task in HEADS:
        model = build(task)
        folder = str(tmp_path_factory.mktemp(f"mplug-tiny-{task}"))
        export_for_hub(model, processor, folder)
        folders[task] = (model, folder)
    return folders


def test_export_writes_weights_configs_auto_maps_remote_code_and_card(exports):
    expected_auto_classes = {
        "pretrain": {"AutoModel": "MPLUGModel", "AutoModelForPreTraining": "MPLUGForPreTraining"},
        "vqa": {
            "AutoModel": "MPLUGModel",
            "AutoModelForVisualQuestionAnswering": "MPLUGForQuestionAnswering",
            "AutoModelForImageTextToText": "MPLUGForQuestionAnswering",
        },
        "caption": {"AutoModelForImageTextToText": "MPLUGForCaptioning"},
        "retrieval": {"AutoModel": "MPLUGModel", "AutoModelForZeroShotImageClassification": "MPLUGForRetrieval"},
        "grounding": {"AutoModel": "MPLUGForGrounding"},
    }
    for task, (model, folder) in exports.items():
        files = set(os.listdir(folder))
        remote_code = {
            "configuration_mplug.py",
            "modeling_mplug.py",
            "processing_mplug.py",
            "image_processing_mplug.py",
        }
        assert {"model.safetensors", "config.json", "processor_config.json", "README.md"} | remote_code <= files
        assert ("generation_config.json" in files) == model.can_generate()
        config = json.loads(Path(folder, "config.json").read_text())
        expected = {auto: f"modeling_mplug.{name}" for auto, name in expected_auto_classes[task].items()}
        assert config["auto_map"] == {"AutoConfig": "configuration_mplug.MPLUGConfig", **expected}
        processor_config = json.loads(Path(folder, "processor_config.json").read_text())
        assert processor_config["auto_map"] == {"AutoProcessor": "processing_mplug.MPLUGProcessor"}
        assert processor_config["image_processor"]["auto_map"] == {
            "AutoImageProcessor": "image_processing_mplug.MPLUGImageProcessor"
        }
        weights = load_file(os.path.join(folder, "model.safetensors"))
        state = model.state_dict()
        assert all(torch.equal(weights[name], state[name]) for name in weights)
        card = ModelCard.load(os.path.join(folder, "README.md"))
        assert card.data.license == "apache-2.0" and "mplug" in card.data.tags
        # the export's own card loads the export: the folder name is the repo id of its snippets
        assert f'"{os.path.basename(folder)}"' in card.text
    # the export leaves the model itself untouched
    model, _ = exports["vqa"]
    assert getattr(model.config, "auto_map", None) is None


def test_export_rejects_models_that_are_not_mplug(tmp_path, processor):
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(vocab_size=99, hidden_size=8, num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(ValueError, match="not an mplug_hf model"):
        export_for_hub(bert, processor, str(tmp_path))


REMOTE_SCRIPT = """
import importlib.abc, json, sys


class BlockMplugHf(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "mplug_hf" or name.startswith("mplug_hf."):
            raise ImportError(f"{name} is blocked in this process")


sys.meta_path.insert(0, BlockMplugHf())
try:
    import mplug_hf  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("mplug_hf is importable: the round trip would not test the remote code")

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModel, AutoModelForImageTextToText, AutoModelForVisualQuestionAnswering, AutoProcessor, pipeline,
)

job = json.loads(sys.argv[1])
folders, image = job["folders"], job["image"]
inputs = load_file(job["inputs"])
question_inputs = {k: inputs[k] for k in ("input_ids", "attention_mask", "pixel_values")}
outputs, texts = {}, {}
with torch.no_grad():
    vqa = AutoModelForVisualQuestionAnswering.from_pretrained(folders["vqa"], trust_remote_code=True)
    assert type(vqa).__module__.startswith("transformers_modules"), type(vqa).__module__
    outputs["vqa.logits"] = vqa(**question_inputs, decoder_input_ids=inputs["answer_prefix"]).logits
    outputs["vqa.generated"] = vqa.generate(**question_inputs)
    processor = AutoProcessor.from_pretrained(folders["vqa"], trust_remote_code=True)
    outputs["processor.input_ids"] = processor(images=image, text=job["question"])["input_ids"]
    if "caption" in folders:
        outputs["vqa.memory"] = AutoModel.from_pretrained(folders["vqa"], trust_remote_code=True)(
            **question_inputs
        ).last_hidden_state
        captioner = AutoModelForImageTextToText.from_pretrained(folders["caption"], trust_remote_code=True)
        outputs["caption.generated"] = captioner.generate(pixel_values=inputs["pixel_values"])
        retrieval = AutoModel.from_pretrained(folders["retrieval"], trust_remote_code=True)
        outputs["retrieval.memory"] = retrieval(**question_inputs).last_hidden_state
        grounding = AutoModel.from_pretrained(folders["grounding"], trust_remote_code=True)
        outputs["grounding.boxes"] = grounding(
            inputs["input_ids"], inputs["grounding_pixel_values"], inputs["attention_mask"]
        ).pred_boxes
answerer = pipeline("image-text-to-text", model=folders["vqa"], trust_remote_code=True, device="cpu")
texts["vqa.pipeline"] = answerer(image, text=job["question"], return_full_text=False)
if "retrieval" in folders:
    classifier = pipeline("zero-shot-image-classification", model=folders["retrieval"], trust_remote_code=True)
    texts["zero_shot.pipeline"] = classifier(image, candidate_labels=["a dog", "a cat"])
for name, code in job["snippets"].items():
    exec(compile(code, name, "exec"), {})
    texts.setdefault("snippets", []).append(name)
save_file({k: v.contiguous() for k, v in outputs.items()}, job["outputs"])
print(json.dumps(texts))
"""


def run_without_mplug_hf(folders, processor, image_path, tmp_path, snippets=None):
    """Run REMOTE_SCRIPT in a fresh `python -I` where importing mplug_hf fails; returns its tensors and texts."""
    image = Image.open(image_path)
    question = processor(images=image, text=QUESTION)
    tensors = {
        **question,
        "answer_prefix": torch.tensor([[101, 2054, 2003]]),
        "grounding_pixel_values": processor(images=image, text=QUESTION, mode="grounding")["pixel_values"],
    }
    inputs_path, outputs_path = tmp_path / "inputs.safetensors", tmp_path / "outputs.safetensors"
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(inputs_path))
    job = dict(
        folders=folders, inputs=str(inputs_path), outputs=str(outputs_path), image=str(image_path), question=QUESTION,
        snippets=snippets or {},
    )  # fmt: skip
    environment = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(
        [sys.executable, "-I", "-c", REMOTE_SCRIPT, json.dumps(job)],
        cwd=image_path.parent, env=environment, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    return tensors, load_file(str(outputs_path)), json.loads(completed.stdout.strip().splitlines()[-1])


def test_remote_code_round_trip_without_mplug_hf(exports, processor, image_path, tmp_path):
    """The VQA export loads with trust_remote_code=True where mplug_hf cannot be imported: the same outputs as the
    in-process model, and a working image-text-to-text pipeline."""
    vqa, folder = exports["vqa"]
    inputs, remote, texts = run_without_mplug_hf({"vqa": folder}, processor, image_path, tmp_path)
    question = {k: inputs[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    with torch.no_grad():
        assert torch.equal(remote["vqa.logits"], vqa(**question, decoder_input_ids=inputs["answer_prefix"]).logits)
        generated = vqa.generate(**question)
    assert torch.equal(remote["vqa.generated"], generated)
    assert torch.equal(remote["processor.input_ids"], question["input_ids"])
    assert texts["vqa.pipeline"][0]["generated_text"] == processor.decode(generated[0], skip_special_tokens=True)


@pytest.mark.slow
def test_every_head_and_the_cards_remote_snippets_without_mplug_hf(exports, processor, image_path, tmp_path):
    """All heads through their auto_map entries, the zero-shot pipeline, and each card's `trust_remote_code`
    snippet, in a process where mplug_hf cannot be imported."""
    snippets = {}
    for task, size in FAMILIES:
        card = ModelCard.load(CARDS_DIR / f"mplug-{size}-{task}" / "README.md")
        remote_snippet = re.findall(r"```python\n(.*?)```", card.text, flags=re.DOTALL)[1]
        snippets[f"{task} card"] = remote_snippet.replace(f"mplug-hf/mplug-{size}-{task}", exports[task][1])
    folders = {task: folder for task, (_, folder) in exports.items()}
    inputs, remote, texts = run_without_mplug_hf(folders, processor, image_path, tmp_path, snippets)
    assert sorted(texts["snippets"]) == sorted(snippets)
    question = {k: inputs[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    vqa, captioner = exports["vqa"][0], exports["caption"][0]
    retrieval, grounding = exports["retrieval"][0], exports["grounding"][0]
    with torch.no_grad():
        assert torch.equal(remote["vqa.memory"], vqa.mplug(**question).last_hidden_state)
        assert torch.equal(remote["caption.generated"], captioner.generate(pixel_values=question["pixel_values"]))
        assert torch.equal(remote["retrieval.memory"], retrieval.mplug(**question).last_hidden_state)
        boxes = grounding(
            question["input_ids"], inputs["grounding_pixel_values"], question["attention_mask"]
        ).pred_boxes
        assert torch.equal(remote["grounding.boxes"], boxes)
    classify = pipeline(
        "zero-shot-image-classification",
        model=retrieval,
        tokenizer=processor.tokenizer,
        image_processor=processor.image_processor,
        device="cpu",
    )
    expected = {
        item["label"]: item["score"] for item in classify(str(image_path), candidate_labels=["a dog", "a cat"])
    }
    got = {item["label"]: item["score"] for item in texts["zero_shot.pipeline"]}
    assert got == pytest.approx(expected, abs=1e-6)


def test_exported_folder_loads_as_a_local_checkpoint_with_mplug_hf(exports, image_path):
    model, folder = exports["vqa"]
    loaded = AutoModelForVisualQuestionAnswering.from_pretrained(folder)
    assert type(loaded) is MPLUGForQuestionAnswering
    answers = pipeline("visual-question-answering", model=folder, device="cpu")(str(image_path), QUESTION, top_k=2)
    assert 1 <= len(answers) <= 2 and all(0 < item["score"] <= 1 for item in answers)


def test_push_to_hub_uploads_the_export_in_one_commit(monkeypatch, tmp_path, processor):
    """push_to_hub against a stubbed HfApi: one repo creation, one folder upload holding the export."""
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        calls.append(("upload_folder", repo_id, kwargs))
        shutil.copytree(folder_path, tmp_path / "uploaded")
        return "commit-info"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    model = build("caption")
    assert push_to_hub(model, processor, "someone/mplug-tiny-caption", private=True) == "commit-info"
    assert [call[0] for call in calls] == ["create_repo", "upload_folder"]
    assert calls[0][1] == calls[1][1] == "someone/mplug-tiny-caption" and calls[0][2]["private"] is True
    uploaded = tmp_path / "uploaded"
    assert json.loads((uploaded / "config.json").read_text())["auto_map"]["AutoModelForImageTextToText"]
    assert '"someone/mplug-tiny-caption"' in (uploaded / "README.md").read_text()
    reloaded = MPLUGForCaptioning.from_pretrained(uploaded)
    assert all(torch.equal(value, model.state_dict()[name]) for name, value in reloaded.state_dict().items())
    assert MPLUGProcessor.from_pretrained(uploaded).image_processor.image_size == processor.image_processor.image_size


@pytest.mark.parametrize(("task", "size"), FAMILIES)
def test_committed_model_cards_are_rendered_from_the_template(task, size):
    path = CARDS_DIR / f"mplug-{size}-{task}" / "README.md"
    card = ModelCard.load(path)
    assert card.content == render_model_card(task, size, f"mplug-hf/mplug-{size}-{task}").content
    assert card.data.license == "apache-2.0" and {"mplug", "custom_code"} <= set(card.data.tags)
    assert card.data.pipeline_tag == TASKS[task]["pipeline_tag"]
    assert card.data.datasets == TASKS[task]["datasets"]
    assert f"mplug-convert <original checkpoint> converted/ --task {task}" in card.text
    for result in card.data.eval_results or []:
        assert result.metric_name.endswith("(reported in the paper)") and "as reported" in result.source_name
    reported = {"vqa": True, "caption": True, "retrieval": size == "large", "grounding": size == "large"}
    assert bool(card.data.eval_results) == reported.get(task, False)


def test_model_card_snippets_run_against_tiny_exports(exports, image_path, monkeypatch, capsys):
    """Every python snippet of every card, with the repo id replaced by a tiny export of the same head."""
    monkeypatch.chdir(image_path.parent)
    snippets_run = set()
    for task, size in FAMILIES:
        card = ModelCard.load(CARDS_DIR / f"mplug-{size}-{task}" / "README.md")
        snippets = re.findall(r"```python\n(.*?)```", card.text, flags=re.DOTALL)
        assert len(snippets) == 2 and "trust_remote_code=True" in snippets[1]
        # the first snippet uses mplug_hf; the remote-code one runs without it (test above)
        code = snippets[0].replace(f"mplug-hf/mplug-{size}-{task}", exports[task][1])
        if code not in snippets_run:  # base and large snippets differ by the repo id only
            exec(compile(code, f"{task}-{size} card", "exec"), {})
            snippets_run.add(code)
    assert len(snippets_run) == len(TASKS)
    assert "generated_text" in capsys.readouterr().out


def test_exported_cards_claim_no_training_data_or_results_they_cannot_know(exports, tmp_path, processor):
    """export_for_hub cannot tell from a model whether it was trained since its conversion: by default its card
    names no training data and no paper results; `datasets=` names the caller's, `original_weights=True` the
    authors' (their converted weights)."""
    authors_data = ("VQA v2", "Visual Genome", "vqav2", "visual_genome", "reported in the paper", "mplug-convert")
    for task, (_, folder) in exports.items():
        card = ModelCard.load(os.path.join(folder, "README.md"))
        assert card.data.datasets is None and card.data.eval_results is None
        assert "Not recorded" in card.text and "## Conversion" not in card.text
        assert not [claim for claim in authors_data if claim in card.text], task
    # a base-sized model is not the authors' base model either: no paper results unless the caller says so
    card = render_model_card("vqa", "base", "me/vqa", original_weights=False, image_size=224)
    assert card.data.eval_results is None and "224×224" in card.text and "79.79" not in card.text
    model = build("vqa")
    export_for_hub(model, processor, str(tmp_path / "easy"), datasets=["easy_vqa"])
    card = ModelCard.load(tmp_path / "easy" / "README.md")
    assert card.data.datasets == ["easy_vqa"] and "trained on: `easy_vqa`" in card.text
    export_for_hub(model, processor, str(tmp_path / "converted"), original_weights=True)
    card = ModelCard.load(tmp_path / "converted" / "README.md")
    assert card.data.datasets == TASKS["vqa"]["datasets"] and "## Conversion" in card.text
    with pytest.raises(ValueError, match="original_weights=False"):
        export_for_hub(model, processor, str(tmp_path / "both"), original_weights=True, datasets=["easy_vqa"])
    with pytest.raises(ValueError, match="list of dataset ids"):
        render_model_card("vqa", None, "me/vqa", original_weights=False, datasets="easy_vqa")


def test_render_model_card_rejects_unknown_families():
    with pytest.raises(ValueError, match="unknown task"):
        render_model_card("segmentation", "base", "a/b")
    with pytest.raises(ValueError, match="unknown size"):
        render_model_card("vqa", "huge", "a/b")
