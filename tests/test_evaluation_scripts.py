"""The evaluation scripts in examples/ run end to end on a tiny saved model and a tiny dataset written here: their result
files have the standard formats, hold what the heads predict, and the reported metrics are the metric functions
applied to the written predictions."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mplug_hf import (
    MPLUGForCaptioning,
    MPLUGForGrounding,
    MPLUGForQuestionAnswering,
    MPLUGForRetrieval,
    MPLUGImageProcessor,
    MPLUGProcessor,
)
from mplug_hf.evaluation import compute_caption_metrics, evaluate_vqa, grounding_accuracy, retrieval_metrics
from mplug_hf.original_generation import generate_answer_original, generate_caption_original
from mplug_hf.scoring import rank_answers, retrieve
from tests.conftest import tiny_config


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
HEADS = {
    "vqa": MPLUGForQuestionAnswering,
    "caption": MPLUGForCaptioning,
    "retrieval": MPLUGForRetrieval,
    "grounding": MPLUGForGrounding,
}
COLORS = [(200, 30, 30), (20, 160, 40), (30, 40, 220), (230, 220, 20)]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def script_config():
    """The tiny test config with the real bert-base-uncased vocabulary, which the shipped tokenizer produces."""
    text_config = dict(
        vocab_size=30522, hidden_size=32, intermediate_size=64, num_attention_heads=4, max_position_embeddings=64,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return tiny_config(text_config=text_config, box_prefix_token_id=344, box_bin_start_token_id=345, num_box_bins=337)


def save_tiny_heads(root: Path) -> dict[str, Path]:
    """One saved random model folder (weights + processor) per head, under `root`."""
    processor = MPLUGProcessor(MPLUGImageProcessor(image_size=32))
    folders = {}
    for task, head in HEADS.items():
        torch.manual_seed(0)
        folders[task] = root / task
        head(script_config()).save_pretrained(folders[task])
        processor.save_pretrained(folders[task])
    return folders


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    return save_tiny_heads(tmp_path_factory.mktemp("models"))


def load_head(model_dirs, task):
    return HEADS[task].from_pretrained(model_dirs[task]).eval(), MPLUGProcessor.from_pretrained(model_dirs[task])


def write_image(path: Path, color, size=(40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    array[...] = color
    array[: size[1] // 2, : size[0] // 3] = 255 - np.array(color, dtype=np.uint8)  # some structure per image
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def image_files(tmp_path) -> list[str]:
    """Four PNG images under tmp_path/images, of different sizes; names relative to tmp_path."""
    names = ["images/COCO_val2014_000000000042.png", "images/b.png", "images/c.png", "images/d.png"]
    sizes = [(40, 30), (24, 48), (32, 32), (50, 20)]
    for name, color, size in zip(names, COLORS, sizes):
        write_image(tmp_path / name, color, size)
    return names


def write_json(path: Path, content) -> Path:
    path.write_text(json.dumps(content))
    return path


def read_json(path: Path):
    return json.loads(path.read_text())


def test_evaluate_vqa_generates_answers_in_the_result_format(tmp_path, image_files, model_dirs, capsys):
    records = [
        {"question_id": 7, "image": image_files[0], "question": "what color is it?", "answer": ["red"] * 10,
         "answer_type": "other"},
        {"question_id": "q8", "image": image_files[1], "question": "is it green?", "answer": ["yes"] * 6 + ["no"] * 4,
         "answer_type": "yes/no"},
        {"question_id": 9, "image": image_files[2], "question": "how many?", "answer": ["2", "two", "3"],
         "answer_type": "number"},
    ]  # fmt: skip
    data = write_json(tmp_path / "vqa.json", records)
    output = tmp_path / "out"
    argv = ["--model", str(model_dirs["vqa"]), "--data", str(data), "--output-dir", str(output), "--batch-size", "2"]
    metrics = load_script("evaluate_vqa").main(argv + ["--max-length", "4"])

    predictions = read_json(output / "vqa_result.json")
    assert [sorted(p) for p in predictions] == [["answer", "question_id"]] * 3
    assert [p["question_id"] for p in predictions] == [7, "q8", 9]
    model, processor = load_head(model_dirs, "vqa")
    inputs = processor(
        images=[Image.open(tmp_path / r["image"]) for r in records], text=[r["question"] for r in records]
    )
    expected = generate_answer_original(model, **inputs, num_beams=5, min_length=1, max_length=4)
    assert [p["answer"] for p in predictions] == processor.batch_decode(
        expected.sequences[:, 0], skip_special_tokens=True
    )

    annotations = [{"question_id": r["question_id"], "answers": r["answer"], "answer_type": r["answer_type"]}
                   for r in records]  # fmt: skip
    official = evaluate_vqa(predictions, annotations)
    assert metrics["accuracy"] == official["overall"]
    assert {name: metrics[f"accuracy_{name}"] for name in official["per_answer_type"]} == official["per_answer_type"]
    assert read_json(output / "metrics.json") == metrics
    assert "accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("script, task", [("evaluate_vqa", "vqa"), ("evaluate_caption", "caption")])
def test_evaluation_scripts_run_in_bfloat16_with_the_bf16_model(tmp_path, image_files, model_dirs, script, task):
    """`--dtype bfloat16` loads the head in bfloat16 (issue 21) and the results are that model's: the answers or
    captions of the head loaded the same way."""
    if task == "vqa":
        records = [{"question_id": i, "image": name, "question": q, "answer": ["red"]}
                   for i, (name, q) in enumerate(zip(image_files[:3], ["what color?", "is it red?", "how many?"]))]  # fmt: skip
    else:
        records = [{"image": name, "caption": ["a red square"]} for name in image_files[:3]]
    data = write_json(tmp_path / f"{task}.json", records)
    loaded_dtypes = []
    original_from_pretrained = HEADS[task].from_pretrained.__func__

    def recording_from_pretrained(cls, *args, **kwargs):
        model = original_from_pretrained(cls, *args, **kwargs)
        loaded_dtypes.append(model.dtype)
        return model

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HEADS[task], "from_pretrained", classmethod(recording_from_pretrained))
        load_script(script).main(
            ["--model", str(model_dirs[task]), "--data", str(data), "--output-dir", str(tmp_path / "out"),
             "--max-length", "4", "--dtype", "bfloat16"] + (["--min-length", "1", "--backend", "python"] if task == "caption" else [])
        )  # fmt: skip
    assert loaded_dtypes == [torch.bfloat16]
    model = HEADS[task].from_pretrained(model_dirs[task], dtype=torch.bfloat16).eval()
    processor = MPLUGProcessor.from_pretrained(model_dirs[task])
    images = [Image.open(tmp_path / r["image"]) for r in records]
    if task == "vqa":
        inputs = processor(images=images, text=[r["question"] for r in records])
        expected = generate_answer_original(model, **inputs, num_beams=5, min_length=1, max_length=4)
        written = [p["answer"] for p in read_json(tmp_path / "out" / "vqa_result.json")]
    else:
        inputs = processor(images=images)
        expected = generate_caption_original(model, inputs["pixel_values"].bfloat16(), min_length=1, max_length=4)
        written = [p["caption"] for p in read_json(tmp_path / "out" / "caption_result.json")]
    assert written == processor.batch_decode(expected.sequences[:, 0], skip_special_tokens=True)


def test_evaluate_vqa_ranks_an_answer_list_from_jsonl_with_mapped_columns(tmp_path, image_files, model_dirs):
    answer_list = ["red", "green", "blue", "two", "a small dog"]
    write_json(tmp_path / "answers.json", {answer: index for index, answer in enumerate(answer_list)})
    rows = [{"img": name, "q": q, "answer": a} for name, q, a in
            zip(image_files[:3], ["what color?", "what is it?", "how many?"], ["red", "blue", "two"])]  # fmt: skip
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    output = tmp_path / "out"
    metrics = load_script("evaluate_vqa").main(
        ["--model", str(model_dirs["vqa"]), "--data", str(tmp_path / "qa.jsonl"), "--output-dir", str(output),
         "--column", "image=img", "--column", "question=q", "--answer-list", str(tmp_path / "answers.json"),
         "--k", "3", "--metric", "exact"]
    )  # fmt: skip

    predictions = read_json(output / "vqa_result.json")
    assert [p["question_id"] for p in predictions] == [0, 1, 2]
    model, processor = load_head(model_dirs, "vqa")
    inputs = processor(images=[Image.open(tmp_path / r["img"]) for r in rows], text=[r["q"] for r in rows])
    candidates = processor.encode_targets(answer_list)
    top_ids, _ = rank_answers(
        model,
        candidate_ids=candidates["input_ids"],
        candidate_attention_mask=candidates["attention_mask"],
        k=3,
        **inputs,
    )
    assert [p["answer"] for p in predictions] == [answer_list[i] for i in top_ids[:, 0].tolist()]
    correct = [p["answer"] == r["answer"] for p, r in zip(predictions, rows)]
    assert metrics == {"accuracy": 100.0 * sum(correct) / 3}


def test_evaluate_caption_writes_coco_results_and_scores_them(tmp_path, image_files, model_dirs, capsys):
    records = [
        {"image": image_files[0], "caption": ["a red square on a wall", "a red box"]},
        {"image": image_files[1], "caption": ["a green field", "green grass in the sun"]},
        {"image": image_files[2], "caption": ["a blue sky"]},
    ]
    data = write_json(tmp_path / "captions.json", records)
    output = tmp_path / "out"
    metrics = load_script("evaluate_caption").main(
        ["--model", str(model_dirs["caption"]), "--data", str(data), "--output-dir", str(output),
         "--min-length", "2", "--max-length", "5", "--num-beams", "3", "--backend", "python"]
    )  # fmt: skip

    results = read_json(output / "caption_result.json")
    assert [sorted(r) for r in results] == [["caption", "image_id"]] * 3
    assert [r["image_id"] for r in results] == [42, image_files[1], image_files[2]]  # COCO names give their id
    model, processor = load_head(model_dirs, "caption")
    pixel_values = processor(images=[Image.open(tmp_path / name) for name in image_files[:3]])["pixel_values"]
    expected = generate_caption_original(model, pixel_values, num_beams=3, min_length=2, max_length=5)
    assert [r["caption"] for r in results] == processor.batch_decode(
        expected.sequences[:, 0], skip_special_tokens=True
    )

    predictions = {r["image_id"]: r["caption"] for r in results}
    references = {r["image_id"]: record["caption"] for r, record in zip(results, records)}
    assert metrics == compute_caption_metrics(predictions, references, backend="python")
    assert set(metrics) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}
    assert "CIDEr" in capsys.readouterr().out


def test_evaluate_retrieval_reranks_like_the_head_from_a_datasets_folder(tmp_path, image_files, model_dirs):
    datasets = pytest.importorskip("datasets")
    pairs = [(0, "a red square"), (1, "green grass"), (0, "a red box on a wall"), (2, "the blue sky"),
             (3, "a yellow sun"), (1, "a green field")]  # fmt: skip
    rows = [{"image": str(tmp_path / image_files[i]), "caption": caption} for i, caption in pairs]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "pairs"))
    output = tmp_path / "out"
    metrics = load_script("evaluate_retrieval").main(
        ["--model", str(model_dirs["retrieval"]), "--data", str(tmp_path / "pairs"), "--output-dir", str(output),
         "--k", "2", "--batch-size", "3"]
    )  # fmt: skip

    ranks = read_json(output / "retrieval_ranks.json")
    assert ranks["txt2img"] == [0, 0, 1, 1, 2, 3]  # texts grouped by image, in order of first appearance
    assert ranks["img2txt"] == [[0, 1], [2, 3], [4], [5]]
    texts = ranks["texts"]
    assert texts == [
        "a red square",
        "a red box on a wall",
        "green grass",
        "a green field",
        "the blue sky",
        "a yellow sun",
    ]
    scores = np.load(output / "retrieval_scores.npz")
    assert scores["scores_i2t"].shape == (4, 6) and scores["scores_t2i"].shape == (6, 4)
    assert (scores["scores_i2t"] == -100).sum(axis=1).tolist() == [4] * 4  # top-2 re-ranked per image

    model, processor = load_head(model_dirs, "retrieval")
    pixel_values = processor(images=[Image.open(tmp_path / name) for name in image_files])["pixel_values"]
    encoded = processor.encode_text(texts, max_length=30, padding="max_length")
    i2t, t2i = retrieve(model, pixel_values, encoded["input_ids"], encoded["attention_mask"], k=2)
    np.testing.assert_allclose(scores["scores_i2t"], i2t.numpy(), atol=1e-5)
    np.testing.assert_allclose(scores["scores_t2i"], t2i.numpy(), atol=1e-5)
    assert ranks["i2t_top"] == np.argsort(-scores["scores_i2t"], axis=1, kind="stable")[:, :10].tolist()
    assert metrics == retrieval_metrics(scores["scores_i2t"], ranks["txt2img"], ranks["img2txt"], scores["scores_t2i"])


def test_evaluate_grounding_writes_pixel_boxes_and_their_accuracy(tmp_path, image_files, model_dirs):
    records = [
        {"id": 11, "image": image_files[0], "text": "the red part", "bbox": [0, 0, 13, 15]},
        {"id": 12, "image": image_files[1], "text": "left side", "bbox": [2, 4, 10, 30]},
        {"id": 13, "image": image_files[3], "text": "the whole picture", "bbox": [0, 0, 50, 20]},
    ]
    data = write_json(tmp_path / "refs.json", records)
    output = tmp_path / "out"
    metrics = load_script("evaluate_grounding").main(
        ["--model", str(model_dirs["grounding"]), "--data", str(data), "--output-dir", str(output)]
    )

    results = read_json(output / "grounding_result.json")
    assert [sorted(r) for r in results] == [["box", "id", "text"]] * 3 and [r["id"] for r in results] == [11, 12, 13]
    model, processor = load_head(model_dirs, "grounding")
    images = [Image.open(tmp_path / r["image"]) for r in records]
    pixels = processor.image_processor(images, mode="grounding")
    # the processor's query convention (`[CLS] query`), as the grounding collator trains
    queries = processor.encode_text([r["text"] for r in records], max_length=20)
    expected = processor.post_process_grounding(
        model(queries["input_ids"], pixels["pixel_values"], queries["attention_mask"]).pred_boxes,
        pixels["image_sizes"],
    )
    np.testing.assert_allclose([r["box"] for r in results], expected.numpy(), atol=0.006)
    for result, image in zip(results, images):
        x1, y1, x2, y2 = result["box"]
        assert 0 <= x1 <= x2 <= image.width and 0 <= y1 <= y2 <= image.height

    targets = [[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in records)]
    assert metrics == grounding_accuracy(np.array([r["box"] for r in results]), np.array(targets))


def test_scripts_reject_records_without_the_needed_fields(tmp_path, image_files, model_dirs):
    data = write_json(tmp_path / "bad.json", [{"image": image_files[0], "query": "what?"}])
    with pytest.raises(ValueError, match=r"no 'question' field .*--column question=NAME"):
        load_script("evaluate_vqa").main(["--model", str(model_dirs["vqa"]), "--data", str(data)])
    with pytest.raises(ValueError, match="FIELD=NAME"):
        load_script("evaluate_vqa").main(["--model", str(model_dirs["vqa"]), "--data", str(data), "--column", "q"])
    with pytest.raises(ValueError, match="no column 'text'"):
        load_script("evaluate_grounding").main(
            ["--model", str(model_dirs["grounding"]), "--data", str(data), "--column", "text=text"]
        )
