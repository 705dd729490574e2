"""
Hub packaging for mPLUG: a folder that loads with `trust_remote_code=True` where `mplug_hf` is not installed, its model
card, and the upload.

[`export_for_hub`] writes the weights (safetensors), config and generation config, the processor files, the model
card, and the package's configuration / modeling / processing / image-processing modules as remote code. The config's
`auto_map` names every Auto class the head serves, so that one checkpoint answers `AutoModelForVisualQuestionAnswering`
and `AutoModelForImageTextToText` alike (VQA) without the package.
"""

import json
import os
import shutil
import tempfile

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from transformers.dynamic_module_utils import get_relative_import_files

from .io_utils import atomic_write_json, atomic_write_text


PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# Entry points of the remote code; their relative imports (configuration, image processing) come along.
REMOTE_CODE_ENTRY_MODULES = ("modeling_mplug.py", "processing_mplug.py")

# Auto classes served by each head's checkpoint, and the class each one builds. The VQA head also answers
# image-text-to-text (transformers 5's route for generative VQA); grounding fits no task-specific Auto class.
HEAD_AUTO_CLASSES = {
    "MPLUGModel": {"AutoModel": "MPLUGModel"},
    "MPLUGForQuestionAnswering": {
        "AutoModel": "MPLUGModel",
        "AutoModelForVisualQuestionAnswering": "MPLUGForQuestionAnswering",
        "AutoModelForImageTextToText": "MPLUGForQuestionAnswering",
    },
    "MPLUGForCaptioning": {"AutoModelForImageTextToText": "MPLUGForCaptioning"},
    "MPLUGForRetrieval": {"AutoModel": "MPLUGModel", "AutoModelForZeroShotImageClassification": "MPLUGForRetrieval"},
    "MPLUGForGrounding": {"AutoModel": "MPLUGForGrounding"},
    "MPLUGForPreTraining": {"AutoModel": "MPLUGModel", "AutoModelForPreTraining": "MPLUGForPreTraining"},
}
HEAD_TASKS = {
    "MPLUGModel": "pretrain",
    "MPLUGForQuestionAnswering": "vqa",
    "MPLUGForCaptioning": "caption",
    "MPLUGForRetrieval": "retrieval",
    "MPLUGForGrounding": "grounding",
    "MPLUGForPreTraining": "pretrain",
}


def _head_name(model) -> str:
    """The mplug_hf class a model is (or derives from): the remote code can only build the package's own classes."""
    for cls in type(model).__mro__:
        if cls.__name__ in HEAD_AUTO_CLASSES:
            return cls.__name__
    raise ValueError(f"{type(model).__name__} is not an mplug_hf model; export_for_hub packages mPLUG models only")


def model_size(config) -> str | None:
    """`"base"` or `"large"` for the released shapes (CLIP ViT-B/16 or ViT-L/14), None for any other shape."""
    vision = config.vision_config
    shapes = {(768, 12, 16): "base", (1024, 24, 14): "large"}
    return shapes.get((vision.hidden_size, vision.num_hidden_layers, vision.patch_size))


def _update_json(path: str, update) -> None:
    with open(path, encoding="utf-8") as handle:
        content = json.load(handle)
    update(content)
    atomic_write_json(path, content, indent=2, sort_keys=True, ensure_ascii=True)


def remote_code_files() -> list[str]:
    """Paths of the package modules a remote-code folder needs: the entry modules and everything they import."""
    files = set()
    for name in REMOTE_CODE_ENTRY_MODULES:
        entry = os.path.join(PACKAGE_DIR, name)
        files.add(entry)
        files.update(get_relative_import_files(entry))
    return sorted(files)


def export_for_hub(
    model,
    processor,
    save_dir: str,
    model_card: ModelCard | str | None = None,
    repo_id=None,
    original_weights: bool = False,
    datasets: list[str] | None = None,
) -> str:
    """
    Write a Hub-ready folder for `model` and `processor`: `model.safetensors`, `config.json` (with `auto_map`),
    `generation_config.json` (generating heads), the processor files (with `auto_map` for `AutoProcessor` and
    `AutoImageProcessor`), the remote-code modules and `README.md`. The folder loads with `trust_remote_code=True`
    without `mplug_hf`, and with `mplug_hf` imported it loads as any local checkpoint.

    Args:
        model: an mplug_hf model (any head).
        processor ([`MPLUGProcessor`]): the model's processor.
        save_dir (`str`): the folder to write (created if needed).
        model_card (`ModelCard` or `str`, *optional*): the card; by default one is rendered for the head, size and
            resolution with [`render_model_card`].
        repo_id (`str`, *optional*): the Hub repository the card's snippets load (default: the folder's name).
        original_weights (`bool`, *optional*, defaults to `False`): `model` holds the authors' released weights,
            converted unchanged, so the card may name their training data and reported results. Nothing in a model
            tells whether it was trained since, so by default the card claims neither.
        datasets (`list[str]`, *optional*): Hub ids of the data `model` was trained on, for the card (otherwise it
            says the training data were not recorded).

    Returns:
        `save_dir`.
    """
    head = _head_name(model)
    os.makedirs(save_dir, exist_ok=True)
    model.save_pretrained(save_dir)
    processor.save_pretrained(save_dir)
    for path in remote_code_files():
        shutil.copy(path, save_dir)

    auto_map = {"AutoConfig": "configuration_mplug.MPLUGConfig"}
    auto_map.update({auto: f"modeling_mplug.{target}" for auto, target in HEAD_AUTO_CLASSES[head].items()})
    _update_json(os.path.join(save_dir, "config.json"), lambda config: config.update(auto_map=auto_map))

    def add_processor_auto_map(content):
        content["auto_map"] = {"AutoProcessor": "processing_mplug.MPLUGProcessor"}
        content["image_processor"]["auto_map"] = {"AutoImageProcessor": "image_processing_mplug.MPLUGImageProcessor"}

    _update_json(os.path.join(save_dir, "processor_config.json"), add_processor_auto_map)

    if model_card is None:
        repo_id = repo_id or os.path.basename(os.path.normpath(save_dir))
        model_card = render_model_card(
            HEAD_TASKS[head],
            model_size(model.config),
            repo_id,
            original_weights=original_weights,
            datasets=datasets,
            image_size=model.config.vision_config.image_size,
        )
    elif isinstance(model_card, str):
        model_card = ModelCard(model_card)
    atomic_write_text(os.path.join(save_dir, "README.md"), str(model_card))
    return save_dir


def push_to_hub(
    model,
    processor,
    repo_id: str,
    model_card: ModelCard | str | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload mPLUG model, processor and remote code",
    revision: str | None = None,
    create_pr: bool = False,
    original_weights: bool = False,
    datasets: list[str] | None = None,
):
    """
    Export `model` and `processor` with [`export_for_hub`] and upload the folder to `repo_id` (created if missing)
    in one commit. Returns the `CommitInfo` of the upload. `original_weights` and `datasets` are what the model
    card may say of the training (see [`export_for_hub`]).
    """
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as folder:
        export_for_hub(
            model,
            processor,
            folder,
            model_card=model_card,
            repo_id=repo_id,
            original_weights=original_weights,
            datasets=datasets,
        )
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message,
            revision=revision,
            create_pr=create_pr,
        )


# ----------------------------------------------------------------------------------------------------------------------
# Model cards
# ----------------------------------------------------------------------------------------------------------------------

PAPER_URL = "https://arxiv.org/abs/2205.12005"
PAPER_SOURCE = "mPLUG paper (Li et al., EMNLP 2022), as reported by the authors"
CITATION = """@article{li2022mplug,
  title={mPLUG: Effective and Efficient Vision-Language Learning by Cross-modal Skip-connections},
  author={Li, Chenliang and Xu, Haiyang and Tian, Junfeng and Wang, Wei and Yan, Ming and Bi, Bin and Ye, Jiabo and
    Chen, Hehong and Xu, Guohai and Cao, Zheng and others},
  journal={arXiv preprint arXiv:2205.12005},
  year={2022}
}"""
SIZES = {
    "base": "CLIP ViT-B/16 visual encoder, 6 text-encoder, 6 fusion (skip-connection every 3) and 12 decoder layers "
    "(~350M parameters)",
    "large": "CLIP ViT-L/14 visual encoder, 6 text-encoder, 6 fusion and 12 decoder layers (~600M parameters)",
}
# Resolution of the released checkpoints (the converter resizes the position embedding to it).
IMAGE_SIZES = {
    ("pretrain", "base"): 256,
    ("pretrain", "large"): 224,
    ("vqa", "base"): 384,
    ("vqa", "large"): 336,
    ("caption", "base"): 384,
    ("caption", "large"): 336,
    ("retrieval", "base"): 336,
    ("retrieval", "large"): 336,
    ("grounding", "base"): 336,
    ("grounding", "large"): 336,
}

VQA_USAGE = """import mplug_hf  # registers mPLUG with transformers and restores the visual-question-answering pipeline
from transformers import pipeline

vqa = pipeline("visual-question-answering", model="{repo_id}")
print(vqa("example.jpg", question="what is in the picture?", top_k=3))
# rank a closed answer list instead of generating
print(vqa("example.jpg", question="what color is it?", candidate_answers=["red", "blue", "white"]))"""
VQA_REMOTE = """from transformers import pipeline

vqa = pipeline("image-text-to-text", model="{repo_id}", trust_remote_code=True)
print(vqa("example.jpg", text="what is in the picture?", return_full_text=False))"""
CAPTION_USAGE = """import mplug_hf  # registers mPLUG with transformers
from transformers import pipeline

captioner = pipeline("image-text-to-text", model="{repo_id}")
print(captioner("example.jpg", text=""))  # the COCO caption model takes no prompt"""
CAPTION_REMOTE = """from transformers import pipeline

captioner = pipeline("image-text-to-text", model="{repo_id}", trust_remote_code=True)
print(captioner("example.jpg", text=""))"""
RETRIEVAL_USAGE = """import mplug_hf  # registers mPLUG with transformers
from transformers import pipeline

classifier = pipeline("zero-shot-image-classification", model="{repo_id}")
print(classifier("example.jpg", candidate_labels=["a dog", "a cat", "a car"]))

# image-text retrieval as the original evaluation: ITC top-k re-scored by the ITM head
from mplug_hf import MPLUGForRetrieval, MPLUGProcessor
from mplug_hf.scoring import retrieve

model = MPLUGForRetrieval.from_pretrained("{repo_id}")
processor = MPLUGProcessor.from_pretrained("{repo_id}")
images = processor(images=["example.jpg"])["pixel_values"]
texts = processor(text=["a dog running on the beach", "a red car parked on a street"])
scores_i2t, scores_t2i = retrieve(model, images, texts["input_ids"], texts["attention_mask"], k=2)
print(scores_i2t)"""
RETRIEVAL_REMOTE = """from transformers import pipeline

classifier = pipeline("zero-shot-image-classification", model="{repo_id}", trust_remote_code=True)
print(classifier("example.jpg", candidate_labels=["a dog", "a cat", "a car"]))"""
GROUNDING_USAGE = """from mplug_hf import MPLUGForGrounding, MPLUGProcessor, VisualGroundingPipeline

grounder = VisualGroundingPipeline(
    model=MPLUGForGrounding.from_pretrained("{repo_id}"),
    processor=MPLUGProcessor.from_pretrained("{repo_id}"),
)
print(grounder("example.jpg", query="the dog on the left"))  # a box in pixels of example.jpg"""
GROUNDING_REMOTE = """from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)
image = processor.image_processor("example.jpg", mode="grounding")
query = processor.tokenizer("the dog on the left", return_tensors="pt")
boxes = model(
    input_ids=query["input_ids"],
    attention_mask=query["attention_mask"],
    pixel_values=image["pixel_values"],
).pred_boxes
print(processor.post_process_grounding(boxes, image["image_sizes"]))  # (x1, y1, x2, y2) in pixels"""
PRETRAIN_USAGE = """from mplug_hf import MPLUGModel, MPLUGProcessor

model = MPLUGModel.from_pretrained("{repo_id}")
processor = MPLUGProcessor.from_pretrained("{repo_id}")
outputs = model(**processor(images="example.jpg", text="a dog running on the beach"))
print(outputs.last_hidden_state.shape)  # fused [image tokens; text tokens] states

# starting point for fine-tuning a task head (the decoder comes from this checkpoint too)
from mplug_hf import MPLUGForQuestionAnswering

vqa_model = MPLUGForQuestionAnswering.from_pretrained("{repo_id}")"""
PRETRAIN_REMOTE = """from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)
print(model(**processor(images="example.jpg", text="a dog running on the beach")).last_hidden_state.shape)"""

TASKS = {
    "pretrain": dict(
        title="pretrained",
        summary="The pretrained model (ITC, ITM, MLM and prefix-LM objectives on 14M image-text pairs), the starting "
        "point for fine-tuning.",
        head="MPLUGForPreTraining",
        pipeline_tag=None,
        tags=["image-text-retrieval", "feature-extraction"],
        datasets=["coco", "visual_genome", "sbu_captions", "conceptual_captions", "conceptual_12m"],
        usage=PRETRAIN_USAGE,
        remote=PRETRAIN_REMOTE,
        sources={"base": "`mplug_base.pth`", "large": "`mplug_large.pth` (or `mplug_large_v2.pth`)"},
    ),
    "vqa": dict(
        title="visual question answering",
        summary="Fine-tuned for visual question answering on VQA v2 (with Visual Genome QA); answers are generated by "
        "the decoder (beam search: 5 beams, at most 10 tokens).",
        head="MPLUGForQuestionAnswering",
        pipeline_tag="visual-question-answering",
        tags=["visual-question-answering"],
        datasets=["vqav2", "visual_genome"],
        usage=VQA_USAGE,
        remote=VQA_REMOTE,
        sources={
            "base": "a VQA checkpoint fine-tuned from `mplug_base.pth` with the authors' `scripts/vqa_mplug_base.sh`",
            "large": "ModelScope `damo/mplug_visual-question-answering_coco_large_en`",
        },
    ),
    "caption": dict(
        title="image captioning",
        summary="Fine-tuned for COCO captioning (Karpathy split); captions are generated by the decoder from the "
        "image alone (beam search: 5 beams, 8 to 25 tokens).",
        head="MPLUGForCaptioning",
        pipeline_tag="image-text-to-text",
        tags=["image-captioning", "image-to-text"],
        datasets=["coco"],
        usage=CAPTION_USAGE,
        remote=CAPTION_REMOTE,
        sources={
            "base": "ModelScope `damo/mplug_image-captioning_coco_base_en`",
            "large": "ModelScope `damo/mplug_image-captioning_coco_large_en`",
        },
    ),
    "retrieval": dict(
        title="image-text retrieval",
        summary="Fine-tuned for image-text retrieval: contrastive (ITC) embeddings rank candidates, the image-text "
        "matching (ITM) head re-scores the top ones.",
        head="MPLUGForRetrieval",
        pipeline_tag="zero-shot-image-classification",
        tags=["image-text-retrieval", "zero-shot-image-classification"],
        datasets=["coco", "flickr30k"],
        usage=RETRIEVAL_USAGE,
        remote=RETRIEVAL_REMOTE,
        sources={
            "base": "a retrieval checkpoint fine-tuned from `mplug_base.pth` with the authors' retrieval scripts",
            "large": "ModelScope `damo/mplug_image-text-retrieval_flickr30k_large_en` (Flickr30K), or a COCO one",
        },
    ),
    "grounding": dict(
        title="visual grounding",
        summary="Fine-tuned for referring expression comprehension (RefCOCO): the decoder writes the box of the "
        "described region as four coordinate tokens.",
        head="MPLUGForGrounding",
        pipeline_tag=None,
        tags=["visual-grounding", "referring-expression-comprehension"],
        datasets=["refcoco", "refcoco+", "refcocog"],
        usage=GROUNDING_USAGE,
        remote=GROUNDING_REMOTE,
        sources={
            "base": "a grounding checkpoint fine-tuned with the authors' `scripts/grounding_mplug_base.sh`",
            "large": "a grounding checkpoint fine-tuned with the authors' `configs/grounding_mplug_large.yaml`",
        },
    ),
}

# (task, size) → [(task type, task name, dataset id, dataset name, split, metric id, metric name, value)]: the results
# the authors report (paper and official repository). None is reported for base retrieval and grounding.
PAPER_RESULTS = {
    ("vqa", "base"): [
        ("visual-question-answering", "VQA", "vqav2", "VQA v2", "test-dev", "accuracy", "VQA accuracy", 79.79),
        ("visual-question-answering", "VQA", "vqav2", "VQA v2", "test-std", "accuracy", "VQA accuracy", 79.98),
    ],
    ("vqa", "large"): [
        ("visual-question-answering", "VQA", "vqav2", "VQA v2", "test-dev", "accuracy", "VQA accuracy", 81.27),
        ("visual-question-answering", "VQA", "vqav2", "VQA v2", "test-std", "accuracy", "VQA accuracy", 81.26),
    ],
    ("caption", "base"): [
        ("image-to-text", "Captioning", "coco", "COCO Captions (Karpathy)", "test", "cider",
         "CIDEr (cross-entropy)", 137.5),
        ("image-to-text", "Captioning", "coco", "COCO Captions (Karpathy)", "test", "cider",
         "CIDEr (CIDEr optimization)", 150.4),
    ],
    ("caption", "large"): [
        ("image-to-text", "Captioning", "coco", "COCO Captions (Karpathy)", "test", "cider",
         "CIDEr (cross-entropy)", 141.0),
        ("image-to-text", "Captioning", "coco", "COCO Captions (Karpathy)", "test", "cider",
         "CIDEr (CIDEr optimization)", 155.1),
    ],
    ("retrieval", "large"): [
        ("image-text-retrieval", "Retrieval", "coco", "MSCOCO 5k", "test", "recall", "TR@1", 82.8),
        ("image-text-retrieval", "Retrieval", "coco", "MSCOCO 5k", "test", "recall", "IR@1", 65.8),
        ("image-text-retrieval", "Retrieval", "flickr30k", "Flickr30K 1k", "test", "recall", "TR@1", 97.6),
        ("image-text-retrieval", "Retrieval", "flickr30k", "Flickr30K 1k", "test", "recall", "IR@1", 88.4),
    ],
    ("grounding", "large"): [
        ("visual-grounding", "Grounding", "refcoco", "RefCOCO", "val", "accuracy", "Acc@0.5", 92.40),
        ("visual-grounding", "Grounding", "refcoco", "RefCOCO", "testA", "accuracy", "Acc@0.5", 94.51),
        ("visual-grounding", "Grounding", "refcoco", "RefCOCO", "testB", "accuracy", "Acc@0.5", 88.42),
        ("visual-grounding", "Grounding", "refcoco+", "RefCOCO+", "val", "accuracy", "Acc@0.5", 86.02),
        ("visual-grounding", "Grounding", "refcoco+", "RefCOCO+", "testA", "accuracy", "Acc@0.5", 90.17),
        ("visual-grounding", "Grounding", "refcoco+", "RefCOCO+", "testB", "accuracy", "Acc@0.5", 78.17),
        ("visual-grounding", "Grounding", "refcocog", "RefCOCOg", "val-u", "accuracy", "Acc@0.5", 85.88),
        ("visual-grounding", "Grounding", "refcocog", "RefCOCOg", "test-u", "accuracy", "Acc@0.5", 86.42),
    ],
}  # fmt: skip


def _results_section(task: str, size: str | None) -> tuple[list[EvalResult], str]:
    rows = PAPER_RESULTS.get((task, size), [])
    if not rows:
        reason = "a model of another shape" if size is None else f"mPLUG-{size} on this task"
        return [], f"The authors report no result for {reason}; none is claimed here.\n"
    results = [
        EvalResult(
            task_type=task_type,
            task_name=task_name,
            dataset_type=dataset_id,
            dataset_name=dataset_name,
            dataset_split=split,
            metric_type=metric,
            metric_name=f"{metric_name} (reported in the paper)",
            metric_value=value,
            source_name=PAPER_SOURCE,
            source_url=PAPER_URL,
        )  # fmt: skip
        for task_type, task_name, dataset_id, dataset_name, split, metric, metric_name, value in rows
    ]
    table = ["| dataset | split | metric | reported |", "|---|---|---|---|"]
    table += [f"| {row[3]} | {row[4]} | {row[6]} | {row[7]} |" for row in rows]
    text = (
        "These are the authors' numbers for the original model ([paper](" + PAPER_URL + ") and official "
        "repository); they were not re-measured on this conversion, which reproduces the original outputs on the "
        "parity fixtures of the `mplug_hf` test suite.\n\n" + "\n".join(table) + "\n"
    )
    return results, text


def render_model_card(
    task: str,
    size: str | None,
    repo_id: str,
    original_weights: bool = True,
    datasets: list[str] | None = None,
    image_size: int | None = None,
) -> ModelCard:
    """
    The model card of an mPLUG model: Hub metadata (license, tags, pipeline tag, datasets, and for the authors'
    weights a model-index holding the results reported in the paper, labelled as such), usage with and without
    `mplug_hf`, and how the weights were made.

    Args:
        task (`str`): `"pretrain"`, `"vqa"`, `"caption"`, `"retrieval"` or `"grounding"`.
        size (`str`): `"base"`, `"large"`, or None for other shapes (no paper results then).
        repo_id (`str`): the repository the usage snippets load.
        original_weights (`bool`, *optional*, defaults to `True`): the authors' released weights, converted unchanged
            (a checkpoint family's card): the card names their training data and reported results and the conversion
            command. With `False` (a model trained or fine-tuned since, or of unknown origin) it claims neither: the
            training data are `datasets`, or stated as not recorded.
        datasets (`list[str]`, *optional*): Hub ids of the data the model was trained on (with
            `original_weights=False` only: the authors' weights were trained on the data their card names).
        image_size (`int`, *optional*): the model's input resolution (defaults to the released checkpoint's).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    if size not in (None, *SIZES):
        raise ValueError(f"unknown size {size!r}; choose 'base', 'large' or None")
    if original_weights and datasets is not None:
        raise ValueError(
            "datasets describe a model's own training: pass original_weights=False with them (the authors' weights "
            "were trained on the data their card names)"
        )
    if datasets is not None and (isinstance(datasets, str) or not all(isinstance(d, str) and d for d in datasets)):
        raise ValueError(f"datasets must be a list of dataset ids (strings), got {datasets!r}")
    info = TASKS[task]
    name = f"mPLUG-{size.capitalize()} ({info['title']})" if size else f"mPLUG ({info['title']})"
    architecture = SIZES[size] if size else "a custom-sized mPLUG"
    image_size = image_size or IMAGE_SIZES.get((task, size))
    resolution = f" at {image_size}×{image_size} pixels" if image_size else ""
    packaging = f"""This repository was packaged with `mplug_hf.push_to_hub(model, processor, "{repo_id}")` (weights, processor, generation settings and
the remote code)."""
    if original_weights:
        results, results_text = _results_section(task, size)
        summary, datasets = info["summary"], info["datasets"]
        provenance = "the authors' weights converted to" if size else "an mPLUG model of a custom size for"
        source = info["sources"][size] if size else "the authors' released files"
        image_size_flag = f" --image-size {image_size}" if image_size else ""
        origin = f"""## Results reported in the paper

{results_text}
## Conversion

Original checkpoints ({source}) are converted with the `mplug_hf` converter, which checks every tensor against the
original architecture:

```bash
mplug-convert <original checkpoint> converted/ --task {task} --config-bert <config_bert.json>{image_size_flag}
```

{packaging}"""
    else:
        results = []
        summary = f"An mPLUG {info['title']} model (`{info['head']}`) trained or fine-tuned with `mplug_hf`."
        provenance = "an mPLUG model for"
        trained_on = (
            "This model was trained on: " + ", ".join(f"`{dataset}`" for dataset in datasets) + "."
            if datasets
            else "Not recorded: whoever exported this model did not say which data trained it (`export_for_hub` / "
            "`push_to_hub` take `datasets=[...]`)."
        )
        origin = f"""## Training data

{trained_on}

## Results

No results are recorded for this model. The results in the mPLUG paper ([Li et al.]({PAPER_URL})) were measured on the
authors' released weights, not on this model.

{packaging}"""
    card_data = ModelCardData(
        model_name=name,
        license="apache-2.0",
        library_name="transformers",
        language="en",
        pipeline_tag=info["pipeline_tag"],
        tags=["mplug", "vision-language", "custom_code", *info["tags"]],
        datasets=list(datasets) if datasets else None,
        eval_results=results or None,
    )
    body = f"""
# {name}

{summary}

mPLUG ([Li et al., EMNLP 2022]({PAPER_URL})) is a vision-language model whose cross-modal skip-connections let the
text attend to the image cheaply: {architecture}{resolution}. This repository holds {provenance} `mplug_hf`, a
Hugging Face transformers implementation of mPLUG, as `{info["head"]}`.

## Usage

With `mplug_hf` installed:

```python
{info["usage"].format(repo_id=repo_id)}
```

Without it, the modeling code shipped in this repository loads the model (`trust_remote_code=True`):

```python
{info["remote"].format(repo_id=repo_id)}
```

{origin}

## License and citation

The original mPLUG code and weights (Alibaba DAMO Academy) are released under the Apache 2.0 license.

```bibtex
{CITATION}
```
"""
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}")


__all__ = ["export_for_hub", "model_size", "push_to_hub", "remote_code_files", "render_model_card"]
