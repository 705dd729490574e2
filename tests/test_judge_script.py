"""examples/judge_t2i.py: rows equal the model's batched judging API, and an interrupted run resumed later writes
the same file as an uninterrupted one (no duplicate or lost rows)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from mplug_hf import MPLUGForQuestionAnswering, MPLUGImageProcessor, MPLUGProcessor
from tests.conftest import tiny_config


def load_script():
    path = Path(__file__).resolve().parents[1] / "examples" / "judge_t2i.py"
    spec = importlib.util.spec_from_file_location("judge_t2i", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def workspace(tmp_path):
    torch.manual_seed(0)
    config = tiny_config(
        text_config=dict(vocab_size=30522, hidden_size=32, intermediate_size=64, num_attention_heads=4)
    )
    MPLUGForQuestionAnswering(config).save_pretrained(tmp_path / "model")
    MPLUGProcessor(MPLUGImageProcessor(image_size=32)).save_pretrained(tmp_path / "model")
    lines = []
    for index, color in enumerate(["red", "green", "blue"]):
        Image.new("RGB", (40, 30), color).save(tmp_path / f"{color}.png")
        questions = [f"is the image {color}?", "is there a dog?"]
        choices = [None, ["yes", "no", "maybe so"]] if index != 1 else None
        lines.append({"id": f"img-{index}", "image": f"{color}.png", "questions": questions, "choices": choices})
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return tmp_path


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(script, workspace, output, *extra):
    args = ["--model", str(workspace / "model"), "--data", str(workspace / "data.jsonl")]
    return script.main([*args, "--output", str(output), "--image-root", str(workspace), "--batch-size", "2", *extra])


def assert_rows_equal(rows, expected):
    assert [(r["id"], r["question_index"]) for r in rows] == [(r["id"], r["question_index"]) for r in expected]
    for row, reference in zip(rows, expected):
        assert row.keys() == reference.keys()
        for key in ("p_yes", "scores"):
            if key in row:
                torch.testing.assert_close(torch.tensor(row[key]), torch.tensor(reference[key]), atol=1e-5, rtol=0)
        assert row.get("choice") == reference.get("choice")


def test_judge_rows_match_the_model_api(workspace):
    script = load_script()
    rows = read_rows(run(script, workspace, workspace / "full.jsonl"))
    assert len(rows) == 6 and {"p_yes"} <= rows[0].keys() and rows[1]["choice"] in ("yes", "no", "maybe so")
    model = MPLUGForQuestionAnswering.from_pretrained(workspace / "model").eval()
    processor = MPLUGProcessor.from_pretrained(workspace / "model")
    inputs = processor(images=Image.open(workspace / "red.png").convert("RGB"), text="is the image red?")
    yes, no = processor.tokenizer.convert_tokens_to_ids(["yes", "no"])
    expected = model.score_yes_no(**inputs, yes_token_id=yes, no_token_id=no)
    assert abs(rows[0]["p_yes"] - expected.item()) < 1e-5


def test_interrupted_run_resumes_without_duplicates_or_losses(workspace):
    script = load_script()
    expected = read_rows(run(script, workspace, workspace / "full.jsonl"))
    partial = workspace / "partial.jsonl"
    run(script, workspace, partial, "--max-batches", "1")
    assert len(read_rows(partial)) == 2
    with partial.open("a") as handle:  # killed while writing the next row
        handle.write('{"id": "img-1", "question_ind')
    run(script, workspace, partial)
    assert_rows_equal(read_rows(partial), expected)
    run(script, workspace, partial)  # a finished file is left as it is
    assert_rows_equal(read_rows(partial), expected)


def test_bad_input_lines_are_named(workspace):
    (workspace / "bad.jsonl").write_text(json.dumps({"image": "red.png", "questions": []}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_script().main(
            ["--model", str(workspace / "model"), "--data", str(workspace / "bad.jsonl"), "--output", "x.jsonl"]
        )
