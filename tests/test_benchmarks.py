"""benchmarks/: every benchmark runs end to end on a tiny model (so the scripts cannot rot), with the bfloat16 variants
of its fast path, and the original-style baselines they time against decode and rank exactly as the model's own
methods."""

import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.common import PRECISIONS, BenchmarkSettings, describe_machine, format_report, precision_sides
from benchmarks.original_style import tiled_rank_answers, uncached_tiled_beam_search
from benchmarks.run_benchmarks import BENCHMARKS, parse_args, run, settings_from_args
from mplug_hf import MPLUGForCaptioning, MPLUGForQuestionAnswering, MPLUGImageProcessor, MPLUGModel, MPLUGProcessor
from mplug_hf.original_generation import original_beam_search
from mplug_hf.scoring import rank_answers
from tests.conftest import tiny_config


pytestmark = pytest.mark.usefixtures("one_thread")


def bench_config():
    """Tiny, with BERT's vocabulary so that the judging benchmark's "yes"/"no" ids exist."""
    return tiny_config(text_config=dict(vocab_size=30522, hidden_size=32, intermediate_size=64, num_attention_heads=4))


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads, and on a busy machine waiting for a descheduled OpenMP thread costs
    milliseconds per op."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_benchmark_runs_on_a_tiny_model():
    settings = BenchmarkSettings(
        batch_size=2, repeats=1, num_beams=3, caption_tokens=4, answer_tokens=3, rank_batch_size=2,
        num_candidates=8, train_batch_size=2, judge_images=2, questions_per_image=2,
    )  # fmt: skip
    results = run(bench_config(), settings, list(BENCHMARKS), log=io.StringIO())
    assert len(results) == len(BENCHMARKS) + 1  # the BLIP comparison reports VQA and captioning
    for result in results:
        assert result.rows[0].speedup == 1.0  # the reference comes first
        for row in result.rows:
            assert len(row.measurement.seconds) == 1 and row.measurement.median > 0
            assert row.measurement.peak_bytes > 0
    generation_notes = [note for result in results[:2] for note in result.notes]
    assert sum("sequences equal: 2/2" in note for note in generation_notes) == 2
    # the fast path of every generation, ranking, judging and vision benchmark, again in each bfloat16 precision
    compared = {result.title.split(",")[0]: result for result in results if result.rows[-1].float32_speedup}
    assert set(compared) == {
        "captioning", "VQA generation", "rank_answers", "judging score_yes_no", "vision encoder", "DPG-Bench scoring",
    }  # fmt: skip
    for result in compared.values():
        variants = [row for row in result.rows if row.float32_speedup is not None]
        # each fast path (DPG-Bench has two: the string rule and p_yes) is followed by its precisions
        fast_paths = len(variants) // len(PRECISIONS)
        assert [row.method.split(" · ")[1] for row in variants] == list(PRECISIONS.values()) * fast_paths
        assert fast_paths == (2 if result.title.startswith("DPG-Bench") else 1)
        for row in variants:
            float32_row = next(other for other in result.rows if other.method == row.method.split(" · ")[0])
            assert row.float32_speedup == pytest.approx(float32_row.measurement.median / row.measurement.median)
            assert sum(note.startswith(row.method + ": ") for note in result.notes) == 1  # its agreement
    report = format_report(describe_machine(settings), "tiny", results)
    assert report.count("\n| ") == 1 + sum(len(result.rows) for result in results)
    assert "| speed-up | vs float32 |" in report and "CPU bfloat16 instructions: " in report


def test_command_line_settings():
    settings = settings_from_args(parse_args(["--quick", "--batch-size", "4", "--only", "fusion", "rank"]))
    assert (settings.repeats, settings.batch_size, settings.train_batch_size) == (1, 4, 4)
    assert settings.precisions == tuple(PRECISIONS)
    assert settings_from_args(parse_args(["--precisions"])).precisions == ()
    assert settings_from_args(parse_args(["--precisions", "bf16-autocast"])).precisions == ("bf16-autocast",)
    with pytest.raises(SystemExit):
        parse_args(["--only", "nothing"])
    with pytest.raises(SystemExit):
        parse_args(["--dtype", "bfloat16", "--precisions", "bf16-weights"])


def test_precision_sides_run_the_same_call_on_bf16_weights_and_under_autocast():
    model = torch.nn.Linear(4, 4)
    inputs = torch.randn(2, 4)

    def run(model):
        return next(model.parameters()).dtype, torch.is_autocast_enabled("cpu"), model(inputs.to(model.weight.dtype))

    sides = precision_sides("linear", model, run, BenchmarkSettings())
    assert list(sides) == ["linear", "linear · bfloat16 weights", "linear · bfloat16 autocast, float32 weights"]
    outputs = {name: side.run() for name, side in sides.items()}
    assert [output[:2] for output in outputs.values()] == [
        (torch.float32, False), (torch.bfloat16, False), (torch.float32, True),
    ]  # fmt: skip
    assert [output[2].dtype for output in outputs.values()] == [torch.float32, torch.bfloat16, torch.bfloat16]
    assert sides["linear"].float32_side is None
    assert {side.float32_side for name, side in sides.items() if name != "linear"} == {"linear"}
    assert next(model.parameters()).dtype == torch.float32  # the bf16 side works on a copy
    # other dtypes (a GPU run in bfloat16) and no precisions: the side alone
    assert list(precision_sides("linear", model, run, BenchmarkSettings(dtype=torch.bfloat16))) == ["linear"]
    assert list(precision_sides("linear", model, run, BenchmarkSettings(precisions=()))) == ["linear"]
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        precision_sides("linear", model, run, BenchmarkSettings(precisions=("fp8",)))


def biased_towards_eos(cls):
    """A tiny model with larger random weights (outputs that depend on the input) and a raised [SEP] logit, so that
    beams and items finish at different steps."""
    torch.manual_seed(0)
    config = tiny_config(initializer_range=0.2)
    config.text_config.initializer_range = config.vision_config.initializer_range = 0.2
    config._attn_implementation = "eager"
    model = cls(config).eval()
    with torch.no_grad():
        model.text_decoder.lm_head.decoder.bias[config.eos_token_id] += 3.0
    return model


@pytest.mark.parametrize("cls", [MPLUGForCaptioning, MPLUGForQuestionAnswering])
def test_uncached_tiled_beam_search_equals_the_ported_original_beam_search(inputs, cls):
    model = biased_towards_eos(cls)
    with torch.no_grad():
        if cls is MPLUGForCaptioning:
            memory, memory_mask = model.vision_model(inputs["pixel_values"]).last_hidden_state, None
        else:
            encoded = model.mplug(**inputs)
            memory, memory_mask = encoded.last_hidden_state, encoded.encoder_attention_mask
    settings = dict(num_beams=3, min_length=1, max_length=8, num_return_sequences=2)
    expected = original_beam_search(model.text_decoder, memory, memory_mask, **settings).sequences
    sequences = uncached_tiled_beam_search(model, memory, memory_mask, **settings)
    assert sequences.tolist() == expected.tolist()
    # the items finished at different steps, so the baseline's removal of finished items ran
    longest = (sequences != model.config.pad_token_id).sum(dim=-1).max(dim=1).values
    assert longest.min() < longest.max()


def test_tiled_rank_answers_equals_rank_answers(inputs):
    model = biased_towards_eos(MPLUGForQuestionAnswering)
    candidates = torch.tensor([[101, 5, 102, 0], [101, 6, 7, 102], [101, 8, 102, 0], [101, 9, 10, 102]])
    candidate_mask = (candidates != 0).long()
    topk_ids, topk_probs = rank_answers(
        model, inputs["input_ids"], inputs["pixel_values"], candidates, candidate_mask, inputs["attention_mask"], k=3
    )
    with torch.no_grad():
        encoded = model.mplug(**inputs)
    tiled_ids, tiled_probs = tiled_rank_answers(
        model, encoded.last_hidden_state, encoded.encoder_attention_mask, candidates, candidate_mask, k=3
    )
    assert tiled_ids.tolist() == topk_ids.tolist()
    torch.testing.assert_close(tiled_probs, topk_probs, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_vision_benchmark_compiles_each_precision_beside_eager():
    """`--compile`: the sdpa side and each bf16 variant again under torch.compile, on their own model copies, with
    features close to float32 eager."""
    from benchmarks.vision import vision_encoder

    settings = settings_from_args(parse_args(["--compile", "--batch-size", "2", "--quick"]))
    assert settings.compile
    [result] = vision_encoder(bench_config(), settings)
    compiled = [row.method for row in result.rows if row.method.endswith("torch.compile")]
    assert compiled == [
        "sdpa · torch.compile", "sdpa · bfloat16 weights · torch.compile",
        "sdpa · bfloat16 autocast, float32 weights · torch.compile",
    ]  # fmt: skip
    differences = {
        note.split(": max")[0]: float(re.search(r"features\| ([0-9.e+-]+)", note).group(1))
        for note in result.notes
        if "torch.compile: max" in note
    }
    assert differences["sdpa · torch.compile"] < 1e-4 and max(differences.values()) < 0.5


def test_vision_benchmark_counts_the_encoder_flops_and_reports_mfu():
    from benchmarks.vision import vision_encoder

    config = bench_config()
    settings = BenchmarkSettings(batch_size=2, repeats=1, peak_tflops=0.5)
    [result] = vision_encoder(config, settings)
    assert [row.method for row in result.rows] == [
        "eager", "sdpa", "sdpa · bfloat16 weights", "sdpa · bfloat16 autocast, float32 weights",
    ]  # fmt: skip
    vision = config.vision_config
    tokens, width = config.num_image_tokens, vision.hidden_size
    per_layer = 2 * tokens * (4 * width**2 + 2 * width * vision.intermediate_size) + 4 * tokens**2 * width
    patches = 2 * (tokens - 1) * vision.num_channels * vision.patch_size**2 * width
    # the width projection (large: 1024 → 768) exists only when the ViT and text widths differ
    projection = 2 * tokens * width * config.text_config.hidden_size if width != config.text_config.hidden_size else 0
    expected = settings.batch_size * (vision.num_hidden_layers * per_layer + patches + projection)
    assert f"{expected / settings.batch_size / 1e9:.1f} GFLOP per image" in result.notes[0]
    # the counted work is exactly the analytic one, whichever kernel runs (FlopCounterMode misses sdpa on CPU)
    from benchmarks.vision import attention_flops, encoder_flops

    model = MPLUGModel(config).eval()
    pixel_values = torch.randn(settings.batch_size, 3, vision.image_size, vision.image_size)

    def encode(kernel):
        for sub_config in (model.config, model.config.vision_config):
            sub_config._attn_implementation = kernel
        with torch.no_grad():
            return model.get_image_features(pixel_values)

    assert encoder_flops(encode, config, settings.batch_size) == expected
    assert (
        attention_flops(config, settings.batch_size)
        == settings.batch_size * vision.num_hidden_layers * 4 * tokens**2 * width
    )
    # MFU of each kernel = counted work / its own median time / peak, to the printed precision
    for row in result.rows:
        achieved = expected / row.measurement.median / 1e12
        printed = float(re.search(rf"{re.escape(row.method)} ([\d.]+)%", result.notes[1]).group(1))
        assert abs(printed - 100 * achieved / 0.5) <= 0.05 + 1e-9


def test_peak_tflops_of_known_gpus(monkeypatch):
    from benchmarks import vision

    settings = BenchmarkSettings(device=torch.device("cuda"), dtype=torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA H100 PCIe")
    assert vision.peak_tflops(settings) == 756.0
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA H200")
    assert vision.peak_tflops(settings) == 989.4
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Some new GPU")
    assert vision.peak_tflops(settings) is None
    assert vision.peak_tflops(BenchmarkSettings(peak_tflops=2.0)) == 2.0
    assert vision.peak_tflops(BenchmarkSettings()) is None


def test_bf16_agreement_script_compares_every_precision_with_float32(tmp_path):
    """benchmarks/bf16_agreement.py end to end on an untrained demo-sized VQA model, fixtures trained one step."""
    from benchmarks import bf16_agreement

    demo = bf16_agreement.load_demo()
    tokenizer = demo.easy_vqa_tokenizer(str(tmp_path))
    torch.manual_seed(0)
    MPLUGForQuestionAnswering(demo.small_config(len(tokenizer))).save_pretrained(tmp_path)
    MPLUGProcessor(MPLUGImageProcessor(image_size=64), tokenizer=tokenizer).save_pretrained(tmp_path)
    arguments = ["--model", str(tmp_path), "--test-subset", "6", "--fixture-steps", "1", "--fixture-images", "4"]
    report = bf16_agreement.main([*arguments, "--batch-size", "4"])
    rows = [line for line in report.splitlines() if line.startswith("| ") and not line.startswith("| decoding")]
    rows = [row for row in rows if not row.startswith("| precision")]
    assert len(rows) == 2 * 3 + 3 + 3  # VQA: two decodings × three precisions; retrieval; grounding
    float32_rows = [row for row in rows if "| float32 |" in row]
    assert len(float32_rows) == 4 and all("(100.00%)" in row for row in float32_rows)
    for precision in PRECISIONS.values():
        assert sum(f"| {precision} |" in row for row in rows) == 4


def test_bf16_agreement_boxes_and_rankings():
    from benchmarks.bf16_agreement import box_iou, ranking_agreement

    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0]])
    other = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0]])
    assert box_iou(boxes, other).tolist() == pytest.approx([1 / 7, 1.0])
    scores = np.array([[0.1, 0.9, 0.5, 0.4, 0.3, 0.2], [0.9, 0.1, 0.5, 0.4, 0.3, 0.2]], dtype=np.float32)
    swapped = scores.copy()
    swapped[1, [0, 1]] = swapped[1, [1, 0]]  # the second row's first and last place change hands
    assert ranking_agreement(swapped, scores) == ("1/2 (50.00%)", "1/2 (50.00%)")


def test_bf16_agreement_shape_box_is_the_shape_in_an_easy_vqa_image(tmp_path):
    from benchmarks.bf16_agreement import shape_box

    image = Image.new("RGB", (64, 64), (248, 234, 230))
    image.paste((30, 40, 220), (10, 20, 30, 50))
    image.save(tmp_path / "shape.png")
    assert shape_box(str(tmp_path / "shape.png")) == [10.0, 20.0, 30.0, 50.0]
