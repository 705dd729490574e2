"""examples/judge_t2i.py: rows equal the model's batched judging API; an interrupted run resumed later writes
the same file as an uninterrupted one (no duplicate or lost rows); foreign output files, duplicate ids and malformed
lines are refused (naming file and line) before the model loads; edited input rows are judged again on resume."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from mplug_hf import MPLUGForQuestionAnswering, MPLUGImageProcessor, MPLUGProcessor
from mplug_hf.scoring import score_yes_no
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
    expected = score_yes_no(model, **inputs, yes_token_id=yes, no_token_id=no)
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


def test_malformed_and_duplicate_input_lines_are_named_before_the_model_loads(workspace):
    good = json.dumps({"id": "a", "image": "red.png", "questions": ["is it red?"]})
    cases = {
        "broken.jsonl": (
            good + "\n" + '{"id": "b", "image": "red.png", "questions": ["x?"\n',
            "broken.jsonl:2: not valid JSON",
        ),
        "dup.jsonl": (good + "\n\n" + good + "\n", r"dup.jsonl:3: duplicate id 'a' \(first on line 1\)"),
        "list.jsonl": ("[1, 2]\n", "list.jsonl:1: each line must be a JSON object"),
        "noimage.jsonl": (json.dumps({"image": "missing.png", "questions": ["q?"]}) + "\n", "noimage.jsonl:1: image"),
        "choices.jsonl": (
            json.dumps({"image": "red.png", "questions": ["q?"], "choices": [[]]}) + "\n",
            "choices.jsonl:1: each entry of 'choices'",
        ),
    }
    for name, (text, message) in cases.items():
        (workspace / name).write_text(text)
        with pytest.raises(ValueError, match=message):
            load_script().main(
                [
                    "--model", str(workspace / "no-model-here"),  # never loaded: the input is checked first
                    "--data", str(workspace / name),
                    "--output", str(workspace / "out.jsonl"),
                    "--image-root", str(workspace),
                ]
            )  # fmt: skip
        assert not (workspace / "out.jsonl").exists()


@pytest.mark.parametrize(
    "content",
    ["# my notes\n\nimportant text\n", '{"id": 1, "note": "a JSONL file of something else"}\n', "", b"\xff\xfe\x00"],
)
def test_a_foreign_output_file_is_refused_and_left_untouched(workspace, content):
    script = load_script()
    output = workspace / "notes.md"
    if isinstance(content, bytes):
        output.write_bytes(content)
    else:
        output.write_text(content)
    before = output.read_bytes()
    if content == "":  # an empty file holds no data: it is used
        run(script, workspace, output)
        assert len(read_rows(output)) == 6
        return
    with pytest.raises(ValueError, match="not this script's JSONL.*left untouched"):
        run(script, workspace, output)
    assert output.read_bytes() == before


def test_edited_input_rows_are_judged_again_on_resume(workspace, capsys):
    script = load_script()
    output = workspace / "out.jsonl"
    run(script, workspace, output)
    first = read_rows(output)
    lines = [json.loads(line) for line in (workspace / "data.jsonl").read_text().splitlines()]
    lines[0]["questions"][0] = "is the image green?"
    lines[2]["image"] = "red.png"  # same questions, another image
    (workspace / "data.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    run(script, workspace, output)
    assert "3 question(s) changed" in capsys.readouterr().err
    rows = read_rows(output)
    fresh = read_rows(run(script, workspace, workspace / "fresh.jsonl"))
    assert_rows_equal(rows, fresh)
    assert rows[0]["question"] == "is the image green?" and rows[0]["input_hash"] != first[0]["input_hash"]
    assert rows[2:4] == first[2:4]  # unchanged rows are kept as they were


def test_an_exception_while_judging_keeps_every_finished_row(workspace, monkeypatch):
    script = load_script()
    output = workspace / "out.jsonl"
    calls = []
    original = script.Judge.__call__

    def failing(self, questions, image_root=None):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected")
        return original(self, questions, image_root)

    monkeypatch.setattr(script.Judge, "__call__", failing)
    with pytest.raises(RuntimeError, match="injected"):
        run(script, workspace, output)
    assert len(read_rows(output)) == 2 and output.read_text().endswith("\n")
    assert [name for name in workspace.iterdir() if name.name.endswith(".tmp")] == []
    monkeypatch.setattr(script.Judge, "__call__", original)
    expected = read_rows(run(script, workspace, workspace / "full.jsonl"))
    assert_rows_equal(read_rows(run(script, workspace, output)), expected)
