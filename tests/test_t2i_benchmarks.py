"""examples/dpg_bench.py and examples/tifa.py on synthetic benchmarks scored by a tiny model: the scores equal an
independent re-computation of the official rules from the detail files, a 2-process run equals a 1-process run bit
for bit, a killed and resumed run equals an uninterrupted one, and a broken image is reported."""

import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mplug_hf import MPLUGForQuestionAnswering, MPLUGImageProcessor, MPLUGProcessor
from mplug_hf.original_generation import generate_answer_original
from mplug_hf.scoring import score_yes_no
from mplug_hf.t2i_benchmarks import VQAJudge, apply_dependencies, apply_dependencies_official, read_dpg_csv
from tests.conftest import tiny_config


ROOT = Path(__file__).resolve().parents[1]
RESOLUTION = 16

# item_id, proposition_id, dependency, tuple, question. item_a comes first: the official script skips its first row
# (proposition 1), so its proposition 2 depends on an unknown proposition and the official run fails that image.
CSV_ROWS = [
    ("item_a", 1, "0", "entity - whole (cat)", "is there a cat?"),
    ("item_a", 2, "1", "attribute - color (cat, black)", "is the cat black?"),
    ("item_a", 3, "0", "global - (photo)", "is this a photo?"),
    ("item_b", 1, "0", "entity - whole (dog)", "is there a dog?"),
    ("item_b", 2, "0", "entity - whole (ball)", "is there a ball?"),
    ("item_b", 3, "1,2", "relation - spatial (dog, ball, next to)", "is the dog next to the ball?"),
    ("item_b", 4, "1", "attribute - color (dog, brown)", "is the dog brown?"),
    ("item_b", 5, "4", "attribute - texture (dog, fluffy)", "is the brown dog fluffy?"),
    ("item_c", 1, "0", "entity - whole (tree)", "is there a tree?"),
    ("item_c", 2, "1", "attribute - size (tree, tall)", "is the tree tall?"),
    ("item_c", 3, "0", "global - (sunset)", "is it sunset?"),
    ("item_c", 4, "1,3", "relation - spatial (tree, sunset, in front of)", "is the tree in front of the sunset?"),
    ("item_d", 1, "0", "entity - whole (car)", "is there a car?"),
    ("item_d", 2, "1", "attribute - color (car, red)", "is the car red?"),
    ("item_e", 1, "0", "entity - whole (boat)", "is there a boat?"),
    ("item_e", 2, "1", "other - count (boat, ==2)", "are there two boats?"),
    ("item_f", 1, "0", "entity - whole (bird)", "is there a bird?"),
]


def save_tiny_judge(folder: Path) -> None:
    """A tiny VQA model with BERT's vocabulary whose answers vary with image and question: "yes", "no" and [SEP] are
    raised above the other tokens, and larger random weights make their order depend on the input."""
    torch.manual_seed(0)
    config = tiny_config(
        text_config=dict(vocab_size=30522, hidden_size=32, intermediate_size=64, num_attention_heads=4),
        initializer_range=0.2,
    )
    config.text_config.initializer_range = config.vision_config.initializer_range = 0.2
    model = MPLUGForQuestionAnswering(config).eval()
    processor = MPLUGProcessor(MPLUGImageProcessor(image_size=32))
    yes, no = processor.tokenizer.convert_tokens_to_ids(["yes", "no"])
    with torch.no_grad():
        bias = model.text_decoder.lm_head.decoder.bias
        bias[yes] += 12.0
        bias[no] += 11.5
        bias[config.eos_token_id] += 13.5
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def grid_image(seed: int) -> Image.Image:
    """A 2x2 grid of RESOLUTION-pixel images, each quadrant different."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (2 * RESOLUTION, 2 * RESOLUTION, 3), dtype=np.uint8))


def build_workspace(root: Path) -> Path:
    save_tiny_judge(root / "model")
    frame = pd.DataFrame(
        [
            {"item_id": item, "text": f"prompt of {item}", "keywords": "k", "proposition_id": pid, "dependency": dep,
             "category_broad": tup.split(" - ")[0], "category_detailed": tup.split("(")[0].strip(), "tuple": tup,
             "question_natural_language": question}
            for item, pid, dep, tup, question in CSV_ROWS
        ]
    )  # fmt: skip
    frame.to_csv(root / "dpg.csv", index=False)
    images = root / "images"
    images.mkdir()
    for seed, item in enumerate(["item_a", "item_b", "item_c", "item_f"]):
        grid_image(seed).save(images / f"{item}.png")
    grid_image(9).convert("RGBA").save(images / "item_e.png")
    (images / "item_d.png").write_bytes(b"not a png at all")  # broken
    (images / "notes.txt").write_text("not an image of the benchmark")
    return root


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return build_workspace(tmp_path_factory.mktemp("t2i"))


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dpg_args(workspace, res_path, *extra):
    return [
        "--model", str(workspace / "model"), "--image-root-path", str(workspace / "images"),
        "--resolution", str(RESOLUTION), "--pic-num", "4", "--csv", str(workspace / "dpg.csv"),
        "--res-path", str(res_path), "--batch-images", "2", "--threads", "1", *extra,
    ]  # fmt: skip


def run_dpg(workspace, res_path, *extra):
    load_script("dpg_bench").main(dpg_args(workspace, res_path, *extra))
    return outputs(res_path)


def outputs(res_path):
    stem = str(res_path)[: -len(".txt")]
    return {
        "summary": json.loads(Path(f"{stem}.json").read_text()),
        "detail": [json.loads(line) for line in Path(f"{stem}_detail.jsonl").read_text().splitlines()],
        "detail_txt": Path(f"{stem}_detail.txt").read_text(),
        "results": Path(res_path).read_text(),
    }


# --------------------------------------------------------------------------------------------------------------------
# An independent re-computation of the official compute_dpg_bench.py rules, from the CSV (read with pandas, as the
# official script) and the answers in the detail file.
# --------------------------------------------------------------------------------------------------------------------


def official_questions(csv_path, skip_first=True):
    questions, previous = {}, None
    for index, line in pd.read_csv(csv_path).iterrows():
        if skip_first and index == 0:
            continue
        parents = [int(part.strip()) for part in str(line.dependency).split(",")]
        if line.item_id != previous:
            questions[line.item_id] = {}
        questions[line.item_id][int(line.proposition_id)] = (line.tuple, parents)
        previous = line.item_id
    return questions


def answers_by_image(detail):
    table = defaultdict(lambda: defaultdict(dict))
    for row in detail:
        table[row["file"]][row["crop"]][row["proposition_id"]] = row["answer"]
    return table


def expected_official(csv_path, detail, files):
    questions, answers = official_questions(csv_path), answers_by_image(detail)
    image_scores, categories, failed = [], defaultdict(list), []
    for name in files:
        key = name.split(".")[0]
        if key not in questions or name not in answers or len(answers[name]) != 4:
            failed.append(name)
            continue
        try:
            crop_scores = []
            for crop in range(4):
                raw = {qid: float(answers[name][crop][qid] == "yes") for qid in questions[key]}
                scores = dict(raw)
                for qid, (_, parents) in questions[key].items():
                    if any(scores[p] == 0 for p in parents if p != 0):  # KeyError: unknown parent, image fails
                        scores[qid] = 0
                crop_scores.append(sum(scores.values()) / len(scores))
        except KeyError:
            failed.append(name)
            continue
        image_scores.append(sum(crop_scores) / 4)
        for qid, (tup, _) in questions[key].items():
            categories[tup.split("(")[0].strip()].append(raw[qid])  # last crop, before the dependency rule
    return np.mean(image_scores) * 100, {c: np.mean(v) * 100 for c, v in categories.items()}, failed


def expected_fixed(csv_path, detail, files):
    questions, answers = official_questions(csv_path, skip_first=False), answers_by_image(detail)
    image_scores, categories = [], defaultdict(list)
    for name in files:
        key = name.split(".")[0]
        if key not in questions:
            continue
        crop_scores = []
        for crop in range(4):
            if name in answers:
                score = {qid: float(answers[name][crop][qid] == "yes") for qid in questions[key]}
                for _ in questions[key]:  # transitive closure, whatever the order
                    for qid, (_, parents) in questions[key].items():
                        if any(score[p] == 0 for p in parents if p != 0):
                            score[qid] = 0
            else:  # broken image: every question 0
                score = {qid: 0.0 for qid in questions[key]}
            crop_scores.append(sum(score.values()) / len(score))
            for qid, (tup, _) in questions[key].items():
                categories[tup.split("(")[0].strip()].append(score[qid])
        image_scores.append(sum(crop_scores) / 4)
    return np.mean(image_scores) * 100, {c: np.mean(v) * 100 for c, v in categories.items()}


def test_judge_equals_the_per_question_pipeline(workspace):
    """The batched answers equal one ModelScope-style call per (crop, question): its preprocessing and
    `generate_*_original` on one crop and one `[CLS] question [SEP]`."""
    model = MPLUGForQuestionAnswering.from_pretrained(workspace / "model").eval()
    processor = MPLUGProcessor.from_pretrained(workspace / "model")
    judge = VQAJudge(model, processor)
    crops = [grid_image(seed).crop((0, 0, RESOLUTION, RESOLUTION)) for seed in range(5)]
    crops.append(grid_image(2).crop((RESOLUTION, RESOLUTION, 2 * RESOLUTION, 2 * RESOLUTION)))
    questions = ["Is there a DOG?"] + [row[4] for row in CSV_ROWS[:10]]
    pairs = [(c, q) for c in range(len(crops)) for q in questions]
    batched = judge.answer(crops, [q for _, q in pairs], [c for c, _ in pairs])
    yes, no = processor.tokenizer.convert_tokens_to_ids(["yes", "no"])
    for (crop, question), result in zip(pairs, batched):
        encoded = processor.tokenizer(question.lower(), truncation=True, max_length=25, return_tensors="pt")
        pixel_values = processor(images=crops[crop])["pixel_values"]
        output = generate_answer_original(
            model,
            encoded["input_ids"],
            pixel_values,
            encoded["attention_mask"],
            num_beams=5,
            min_length=1,
            max_length=10,
        )
        expected = processor.tokenizer.decode(
            output.sequences[0, 0].tolist(), skip_special_tokens=True, clean_up_tokenization_spaces=True
        )
        assert result["answer"] == expected
        p_yes = score_yes_no(model, encoded["input_ids"], pixel_values, yes, no, encoded["attention_mask"])
        assert abs(result["p_yes"] - p_yes.item()) < 1e-5
    assert {r["answer"] for r in batched} & {"yes"} and len({r["answer"] for r in batched}) > 1


def test_dependency_rules():
    yes = {1: 0.0, 2: 1.0, 3: 1.0}
    child_first = {3: [2], 2: [1], 1: [0]}  # a child listed before its parent
    assert apply_dependencies_official(yes, child_first) == {1: 0.0, 2: 0, 3: 1.0}
    assert apply_dependencies(yes, child_first) == {1: 0.0, 2: 0, 3: 0}
    with pytest.raises(KeyError):
        apply_dependencies_official(yes, {2: [7]})


def test_csv_checks(tmp_path):
    path = tmp_path / "bad.csv"
    pd.DataFrame([{"item_id": "x", "proposition_id": 1, "dependency": "4", "tuple": "entity - whole (a)",
                   "question_natural_language": "q?"}]).to_csv(path, index=False)  # fmt: skip
    with pytest.raises(ValueError, match="unknown proposition"):
        read_dpg_csv(path)
    assert read_dpg_csv(path, official=True) == {}  # the official reading skips the only row


def test_dpg_official_mode_equals_the_official_rules(workspace, tmp_path):
    out = run_dpg(workspace, tmp_path / "official.txt", "--official")
    summary, detail = out["summary"], out["detail"]
    files = sorted(os.listdir(workspace / "images"))
    score, categories, failed = expected_official(workspace / "dpg.csv", detail, files)
    assert summary["dpg_bench_score"] == pytest.approx(score, abs=1e-12)
    assert summary["l2_category_scores"] == pytest.approx(categories, abs=1e-12)
    assert sorted(f["file"] for f in summary["failed"]) == sorted(failed) == ["item_a.png", "item_d.png", "notes.txt"]
    assert f"DPG-Bench score: {summary['dpg_bench_score']}" in out["results"]
    assert "Failed filename: item_d.png" in out["results"]
    # the official detail file: one line per crop and question; the image failing at its dependency rule keeps its
    # first crop's lines, as the official writes them before it fails
    lines = out["detail_txt"].splitlines()
    assert len(lines) == len(detail) == 4 * (5 + 4 + 2 + 1) + 2
    path_b = os.path.join(str(workspace / "images"), "item_b.png")
    assert f"{path_b}, (16, 0, 32, 16), is there a ball?, " in out["detail_txt"]
    assert sum(line.startswith(path_b + ",") for line in out["results"].splitlines()) == 1
    answers = {row["answer"] for row in detail}
    assert "yes" in answers and len(answers) > 1, "the tiny judge must give varied answers for a meaningful test"


def test_dpg_fixed_mode_and_broken_image(workspace, tmp_path):
    out = run_dpg(workspace, tmp_path / "fixed.txt")
    summary = out["summary"]
    files = sorted(os.listdir(workspace / "images"))
    score, categories = expected_fixed(workspace / "dpg.csv", out["detail"], files)
    assert summary["dpg_bench_score"] == pytest.approx(score, abs=1e-12)
    assert summary["l2_category_scores"] == pytest.approx(categories, abs=1e-12)
    assert summary["num_failed"] == 1 and summary["failed"][0]["file"] == "item_d.png"
    assert "cannot identify image file" in summary["failed"][0]["error"]
    broken = [image for image in summary["images"] if image["file"] == "item_d.png"]
    assert broken == [{"file": "item_d.png", "path": broken[0]["path"], "crop_scores": [0.0] * 4, "score": 0.0,
                       "failed": True}]  # fmt: skip
    assert len(summary["images"]) == 6  # the broken image stays in the mean
    assert summary["ignored_files"] == ["notes.txt"] and summary["missing_items"] == []
    assert 0.0 <= summary["p_yes_agreement"] <= 1.0
    assert "Failed filename: item_d.png" in out["results"] and "Fixed mode" in out["results"]


def test_dpg_p_yes_rule(workspace, tmp_path):
    out = run_dpg(workspace, tmp_path / "pyes.txt", "--score", "p_yes")
    string = run_dpg(workspace, tmp_path / "string.txt")
    for fast, slow in zip(out["detail"], string["detail"]):
        assert fast["answer"] == ("yes" if fast["p_yes"] > 0.5 else "no")
        assert fast["p_yes"] == pytest.approx(slow["p_yes"], abs=1e-6)
    agreement = np.mean([(s["p_yes"] > 0.5) == (s["answer"] == "yes") for s in string["detail"]])
    assert string["summary"]["p_yes_agreement"] == pytest.approx(agreement)


def test_dpg_in_bfloat16_loads_a_bf16_judge_on_the_fused_kernels(workspace, tmp_path, monkeypatch):
    """`--dtype bfloat16` (issue 21): the judge is loaded in bfloat16 on `mplug_fused` (on the CPU its half-precision
    attention is the matmul kernel), P(yes) stays close to float32's, and the scores follow the rules."""
    import mplug_hf.t2i_benchmarks as t2i

    judges = []
    original_load = t2i.load_vqa_judge

    def recording_load(*args, **kwargs):
        judges.append(original_load(*args, **kwargs))
        return judges[-1]

    monkeypatch.setattr(t2i, "load_vqa_judge", recording_load)
    bf16 = run_dpg(workspace, tmp_path / "bf16.txt", "--dtype", "bfloat16", "--score", "p_yes")
    float32 = run_dpg(workspace, tmp_path / "fp32.txt", "--score", "p_yes")
    assert [judge.model.dtype for judge in judges] == [torch.bfloat16, torch.float32]
    assert {judge.model.config._attn_implementation for judge in judges} == {"mplug_fused"}
    assert [row["question"] for row in bf16["detail"]] == [row["question"] for row in float32["detail"]]
    assert max(abs(a["p_yes"] - b["p_yes"]) for a, b in zip(bf16["detail"], float32["detail"])) < 0.05
    score, categories = expected_fixed(workspace / "dpg.csv", bf16["detail"], sorted(os.listdir(workspace / "images")))
    assert bf16["summary"]["dpg_bench_score"] == pytest.approx(score, abs=1e-12)


def without_output_paths(out):
    results = "\n".join(line for line in out["results"].splitlines() if not line.startswith("Save results to"))
    return {**out, "results": results}


def test_dpg_resume_equals_uninterrupted(workspace, tmp_path):
    full = run_dpg(workspace, tmp_path / "full.txt")
    partial = tmp_path / "partial.txt"
    load_script("dpg_bench").main(dpg_args(workspace, partial, "--max-batches", "1"))  # killed after one batch
    assert not partial.exists() and len(list(Path(f"{partial}.parts").glob("batch-*.json"))) == 1
    (Path(f"{partial}.parts") / ".batch-000001.json.123.tmp").write_text('[{"file": "item_')  # killed mid-write
    resumed = run_dpg(workspace, partial)
    assert without_output_paths(resumed) == without_output_paths(full)
    with pytest.raises(ValueError, match="other settings"):
        run_dpg(workspace, partial, "--score", "p_yes")


def launch_two_processes(script, args):
    """Two CPU processes under torch's distributed launcher, which Accelerator picks up (gloo); on GPUs `accelerate
    launch --num_processes N` starts the same engine (its `--cpu` flag alone starts one process)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(ROOT / "examples" / f"{script}.py"), *args]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[process 0]" in done.stderr and "[process 1]" in done.stderr  # both processes took a share
    return done


def test_dpg_two_processes_equal_one_bit_for_bit(workspace, tmp_path):
    single = run_dpg(workspace, tmp_path / "single.txt")
    launch_two_processes("dpg_bench", dpg_args(workspace, tmp_path / "sharded.txt"))
    assert without_output_paths(outputs(tmp_path / "sharded.txt")) == without_output_paths(single)


# --------------------------------------------------------------------------------------------------------------------
# TIFA
# --------------------------------------------------------------------------------------------------------------------


TIFA_QUESTIONS = [
    ("cap_1", "is there a cat?", ["yes", "no"], "yes", "animal/human"),
    ("cap_1", "what color is the cat?", ["black", "white", "red", "blue"], "black", "color"),
    ("cap_1", "is there a cat?", ["yes", "no"], "yes", "animal/human"),  # asked twice, as happens in TIFA v1.0
    ("cap_2", "how many dogs are there?", ["1", "2", "3", "4"], "2", "counting"),
    ("cap_2", "is it sunny?", ["yes", "no"], "no", "attribute"),
    ("cap_3", "is there a tree?", ["yes", "no"], "yes", "object"),
    ("cap_3", "what is the tree next to?", ["house", "car", "river"], "house", "spatial"),
    ("cap_4", "is there a boat?", ["yes", "no"], "yes", "object"),
]


def build_tifa_workspace(workspace: Path) -> Path:
    """TIFA question-answer JSON, id -> image map (one broken image) and a tiny random sentence-embedding model."""
    root = workspace / "tifa"
    (root / "images").mkdir(parents=True)
    pairs = [{"id": c, "caption": f"caption {c}", "question": q, "choices": ch, "answer": a, "element_type": t,
              "element": "x"} for c, q, ch, a, t in TIFA_QUESTIONS]  # fmt: skip
    (root / "qa.json").write_text(json.dumps(pairs))
    for seed, caption in enumerate(["cap_1", "cap_2", "cap_3"]):
        grid_image(20 + seed).save(root / "images" / f"{caption}.png")
    (root / "images" / "cap_4.png").write_bytes(b"\x89PNG broken")
    id2img = {caption: f"images/{caption}.png" for caption in ["cap_1", "cap_2", "cap_3", "cap_4"]}
    (root / "id2img.json").write_text(json.dumps(id2img))
    # a tiny random "sentence-transformers" model folder for TIFA's free-form + embedding rule
    from transformers import BertConfig, BertModel

    torch.manual_seed(1)
    BertModel(BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(root / "sbert")  # fmt: skip
    MPLUGProcessor().tokenizer.save_pretrained(root / "sbert")
    return root


@pytest.fixture(scope="module")
def tifa_workspace(workspace):
    return build_tifa_workspace(workspace)


def run_tifa(workspace, root, output, *extra):
    args = ["--model", str(workspace / "model"), "--question-answer-path", str(root / "qa.json"),
            "--id2img-path", str(root / "id2img.json"), "--output", str(output), "--batch-images", "2",
            "--threads", "1", *extra]  # fmt: skip
    load_script("tifa").main(args)
    return json.loads(Path(output).read_text()), args


def expected_tifa(result):
    """TIFA's aggregation re-computed from the question details and the input: the per-question score is whether
    the recorded choice equals the answer (a duplicate question's last answer counts for both of its entries)."""
    pairs = json.loads(Path(result["_qa"]).read_text())
    scores, types = defaultdict(list), defaultdict(list)
    for pair in pairs:
        detail = result["question_details"][pair["id"]][pair["question"]]
        score = int(detail["multiple_choice_vqa"] == pair["answer"]) if detail["multiple_choice_vqa"] else 0
        scores[pair["id"]].append(score)
        types[pair["element_type"]].append(score)
    per_caption = {c: statistics.mean(v) for c, v in scores.items()}
    return {
        "tifa_average": statistics.mean(per_caption.values()),
        "tifa_stdev": statistics.stdev(per_caption.values()),
        "accuracy_by_type": {t: statistics.mean(v) for t, v in types.items()},
        "caption_scores": per_caption,
    }


@pytest.mark.parametrize("rule", ["choose", "sbert"])
def test_tifa_equals_the_official_aggregation(workspace, tifa_workspace, tmp_path, rule):
    extra = ["--sbert", str(tifa_workspace / "sbert")] if rule == "sbert" else []
    result, _ = run_tifa(workspace, tifa_workspace, tmp_path / "tifa.json", *extra)
    expected = expected_tifa({**result, "_qa": tifa_workspace / "qa.json"})
    for key, value in expected.items():
        assert result[key] == pytest.approx(value) if not isinstance(value, dict) else result[key] == value
    assert result["num_failed_images"] == 1 and result["failed_images"]["cap_4"]["image"].endswith("cap_4.png")
    assert result["question_details"]["cap_4"]["is there a boat?"]["scores"] == 0
    details = [d for caption in result["question_details"].values() for d in caption.values()]
    for detail in details:
        if detail["multiple_choice_vqa"] is not None:
            assert detail["multiple_choice_vqa"] in detail["choices"]
        if rule == "sbert" and detail["free_form_vqa"] in detail["choices"]:
            assert detail["multiple_choice_vqa"] == detail["free_form_vqa"]


def test_tifa_resume_equals_uninterrupted(workspace, tifa_workspace, tmp_path):
    full, args = run_tifa(workspace, tifa_workspace, tmp_path / "full.json")
    partial = tmp_path / "partial.json"
    run_tifa_args = [a if a != str(tmp_path / "full.json") else str(partial) for a in args]
    load_script("tifa").main([*run_tifa_args, "--max-batches", "1"])
    assert not partial.exists()
    load_script("tifa").main(run_tifa_args)
    assert json.loads(partial.read_text()) == full


@pytest.mark.slow
def test_tifa_two_processes_equal_one_bit_for_bit(workspace, tifa_workspace, tmp_path):
    single, args = run_tifa(
        workspace, tifa_workspace, tmp_path / "single.json", "--sbert", str(tifa_workspace / "sbert")
    )
    sharded = tmp_path / "sharded.json"
    launch_two_processes("tifa", [a if a != str(tmp_path / "single.json") else str(sharded) for a in args])
    assert sharded.read_text() == (tmp_path / "single.json").read_text()


@pytest.mark.parametrize("stride_layer", [None, 6])  # the config's schedule (a connected layer), then none
def test_dpg_benchmark_row_runs_and_both_sides_answer_alike(stride_layer):
    from benchmarks.common import PRECISIONS, BenchmarkSettings
    from benchmarks.dpg_bench import dpg_scoring

    config = tiny_config(
        text_config=dict(vocab_size=30522, hidden_size=32, intermediate_size=64, num_attention_heads=4)
    )
    settings = BenchmarkSettings(
        repeats=1, num_beams=3, answer_tokens=4, dpg_items=2, dpg_crops=4, dpg_questions=3,
        dpg_stride_layer=stride_layer,
    )  # fmt: skip
    (result,) = dpg_scoring(config, settings)
    assert result.title.endswith(f"S={stride_layer or config.stride_layer}")
    # per question; batched (string rule) and batched p_yes, each with its bf16 rows
    assert [row.speedup for row in result.rows][0] == 1.0 and len(result.rows) == 1 + 2 * (1 + len(PRECISIONS))
    assert "answer strings equal: 24/24" in result.notes[0]
    assert re.fullmatch(r"p_yes decisions equal to the string rule's \(answer == 'yes'\): \d+/24", result.notes[1])
    assert all("answers equal to float32's: " in note for note in result.notes[2:])


if __name__ == "__main__":
    # python -m tests.test_t2i_benchmarks FOLDER: the synthetic benchmarks and tiny judge, to run the scripts by hand
    folder = Path(sys.argv[1])
    folder.mkdir(parents=True, exist_ok=False)
    build_tifa_workspace(build_workspace(folder))
    print(f"synthetic DPG-Bench and TIFA inputs and a tiny judge in {folder}")


@pytest.mark.parametrize(
    ("option", "value"),
    [("--resolution", "0"), ("--resolution", "-64"), ("--batch-images", "0"), ("--threads", "0"),
     ("--threads", "-2"), ("--max-batches", "0"), ("--resolution", "big")],
)  # fmt: skip
def test_counts_and_sizes_below_one_are_refused_by_the_parser(option, value, capsys):
    """`--resolution 0` cropped empty images (every grid then scored 0 as broken), `--threads 0` was ignored and
    `--threads -2` failed inside torch: the parser names the option instead."""
    required = ["--model", "m", "--image-root-path", "i"]
    with pytest.raises(SystemExit):
        load_script("dpg_bench").parse_args([*required, option, value])
    assert f"argument {option}: expected an integer >= 1" in capsys.readouterr().err
    if option != "--resolution":
        with pytest.raises(SystemExit):
            load_script("tifa").parse_args(["--model", "m", "--question-answer-path", "q", "--id2img-path", "i",
                                            "--output", "o", option, value])  # fmt: skip
        assert f"argument {option}: expected an integer >= 1" in capsys.readouterr().err
