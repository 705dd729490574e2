"""Video (#11): frames [B, T, C, H, W] through every head against the original's `video.*` goldens, uniform frame
sampling, and the video example scripts on frame folders."""

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from mplug_hf import (
    MPLUGForCaptioning,
    MPLUGForGrounding,
    MPLUGForQuestionAnswering,
    MPLUGForRetrieval,
    MPLUGImageProcessor,
    MPLUGProcessor,
)
from mplug_hf.evaluation import compute_caption_metrics, retrieval_metrics
from mplug_hf.evaluation.runner import prompt_token_ids
from mplug_hf.image_processing_mplug import sample_frame_indices, sample_frames
from mplug_hf.original_generation import generate_caption_original
from mplug_hf.scoring import rank_answers, retrieve
from tests.conftest import tiny_config
from tests.test_conversion import close, convert, same_sequences
from tests.test_evaluation_scripts import load_head, load_script, read_json, save_tiny_heads, write_json


VIDEO_QUESTIONS = ["what is happening in the video?", "Who is Dancing?"]
VIDEO_CAPTIONS = ["a man is dancing on a stage", "kids play football"]
ANSWER_LIST = ["red", "blue", "two", "yes", "no", "a small dog"]


# --- parity with the original (fixture goldens video.*) ----------------------------------------------------------


@pytest.fixture(scope="module")
def ref(reference_dir):
    """As in test_conversion: the fixture folder, its golden tensors and (unused here) metadata."""
    return reference_dir, load_file(reference_dir / "goldens" / "goldens.safetensors"), None


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return save_tiny_heads(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def video_processor():
    return MPLUGProcessor(MPLUGImageProcessor(image_size=32))


def test_video_qa_encodes_concatenated_frames_and_ranks_answers_as_the_original(ref, video_processor):
    _, g, _ = ref
    model, _ = convert(ref, "vqa")
    frames = g["inputs.video_frames"]
    questions = video_processor.encode_text(VIDEO_QUESTIONS)
    assert questions["input_ids"].tolist() == g["video.question_input_ids"].tolist()
    with torch.no_grad():
        encoded = model.mplug(pixel_values=frames, **questions)
    close(encoded.image_states, g["video.image_embeds"], 1e-5)
    close(encoded.fused_image_states, g["video.fusion_image_output"], 1e-5)
    close(encoded.fused_text_states, g["video.fusion_text_output"], 1e-5)
    candidates = video_processor.encode_targets(ANSWER_LIST)
    ids, probs = rank_answers(model,
        pixel_values=frames, candidate_ids=candidates["input_ids"],
        candidate_attention_mask=candidates["attention_mask"], k=3, **questions,
    )  # fmt: skip
    assert ids.tolist() == g["video.rank.topk_ids"].tolist()
    close(probs, g["video.rank.topk_probs"], 1e-4)


def test_video_retrieval_uses_frame_mean_features_as_the_original(ref, video_processor):
    _, g, _ = ref
    model, _ = convert(ref, "retrieval")
    texts = video_processor.encode_text(VIDEO_CAPTIONS, max_length=35, padding="max_length")
    assert texts["input_ids"].tolist() == g["video.retrieval.text_input_ids"].tolist()
    with torch.no_grad():
        video_embed = model.get_image_features(g["inputs.video_frames"]).pooler_output
        text_embed = model.get_text_features(**texts).pooler_output
    close(video_embed, g["video.retrieval.video_embed"], 1e-5)
    close(text_embed, g["video.retrieval.text_embed"], 1e-5)
    close(video_embed @ text_embed.t(), g["video.retrieval.sims"], 1e-5)


def test_video_caption_from_the_vatex_prompt_matches_the_original(ref, video_processor):
    _, g, _ = ref
    model, _ = convert(ref, "caption")
    frames = g["inputs.video_frames"]
    # The VATEX model starts from "[CLS] a picture": the original drops the prompt's last word.
    prompt = prompt_token_ids(video_processor, "a picture of", drop_last_token=True)
    assert prompt.tolist() == g["video.caption.beam.trace.step00.input_ids"][:1].tolist()
    beams = generate_caption_original(model, frames, prompt.expand(2, -1), num_beams=3, min_length=2, max_length=10)
    same_sequences(beams, g["video.caption.beam.sequences"], g["video.caption.beam.lengths"])
    close(beams.scores, g["video.caption.beam.scores"], 1e-4)

    targets = video_processor.encode_targets([f"a picture of {caption}" for caption in VIDEO_CAPTIONS])
    assert targets["input_ids"].tolist() == g["video.caption.train_input_ids"].tolist()
    prompt_length = int(g["video.caption.prompt_length"])
    assert prompt_length == len(prompt_token_ids(video_processor, "a picture of")[0]) - 1
    labels = targets["labels"].clone()
    labels[:, :prompt_length] = -100
    with torch.no_grad():
        out = model(
            pixel_values=frames,
            decoder_input_ids=targets["input_ids"],
            decoder_attention_mask=targets["attention_mask"],
            labels=labels,
        )
    close(out.loss, g["video.caption.train_loss"], 1e-4)


# --- a single frame is the image path ------------------------------------------------------------------------------


def test_one_frame_videos_equal_images_in_every_head(inputs):
    torch.manual_seed(0)
    config = tiny_config()
    images, ids, mask = inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"]
    videos = images[:, None]
    candidates = torch.tensor([[101, 20, 102], [101, 21, 102], [101, 22, 23]])
    with torch.no_grad():
        vqa = MPLUGForQuestionAnswering(config).eval()
        video_ids, video_probs = rank_answers(vqa, ids, videos, candidates, torch.ones_like(candidates), mask, k=2)
        image_ids, image_probs = rank_answers(vqa, ids, images, candidates, torch.ones_like(candidates), mask, k=2)
        assert video_ids.tolist() == image_ids.tolist()
        close(video_probs, image_probs, 1e-6)

        captioner = MPLUGForCaptioning(config).eval()
        labels = torch.tensor([[101, 30, 31, 102], [101, 32, 102, -100]])
        close(
            captioner(pixel_values=videos, labels=labels).loss,
            captioner(pixel_values=images, labels=labels).loss,
            1e-6,
        )

        retrieval = MPLUGForRetrieval(config).eval()
        video_out, image_out = (
            retrieval(input_ids=ids, pixel_values=p, attention_mask=mask) for p in (videos, images)
        )
        close(video_out.logits_per_image, image_out.logits_per_image, 1e-5)
        close(video_out.itm_logits, image_out.itm_logits, 1e-5)

        grounding = MPLUGForGrounding(config).eval()
        close(grounding(ids, videos, mask).pred_boxes, grounding(ids, images, mask).pred_boxes, 0)


# --- uniform frame sampling ---------------------------------------------------------------------------------------


def colored_frames(count: int, size=(16, 12)) -> list[Image.Image]:
    return [Image.new("RGB", size, (index * 20, 255 - index * 20, 7)) for index in range(count)]


def frame_index(frame: Image.Image) -> int:
    return round(np.asarray(frame, dtype=np.float64)[..., 0].mean() / 20)


def test_frame_indices_are_the_starts_of_equal_segments():
    assert sample_frame_indices(10, 4) == [0, 2, 5, 7]
    assert sample_frame_indices(12, 3) == [0, 4, 8]
    assert sample_frame_indices(2, 4) == [0, 0, 1, 1]  # short videos repeat frames
    with pytest.raises(ValueError, match="num_frames must be at least 1"):
        sample_frame_indices(5, 0)
    with pytest.raises(ValueError, match="no frames"):
        sample_frame_indices(0, 3)


def test_sample_frames_from_a_list_a_folder_or_paths(tmp_path):
    frames = colored_frames(10)
    assert [frame_index(f) for f in sample_frames(frames, 4)] == [0, 2, 5, 7]
    folder = tmp_path / "clip"
    folder.mkdir()
    for index in reversed(range(10)):  # written out of order: the folder is read sorted by name
        frames[index].save(folder / f"frame_{index:03d}.png")
    (folder / "notes.txt").write_text("not a frame")
    from_folder = sample_frames(folder, 4)
    assert [frame_index(f) for f in from_folder] == [0, 2, 5, 7] and from_folder[0].mode == "RGB"
    paths = [str(folder / f"frame_{index:03d}.png") for index in range(10)]
    assert [frame_index(f) for f in MPLUGImageProcessor(image_size=32).sample_frames(paths, 2)] == [0, 5]
    with pytest.raises(ValueError, match="list of frames is empty"):
        sample_frames([], 2)
    with pytest.raises(ValueError, match="not found"):
        sample_frames(tmp_path / "missing.mp4", 2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no"):
        sample_frames(tmp_path / "empty", 2)


def test_video_files_are_decoded_with_pyav(tmp_path):
    av = pytest.importorskip("av")
    path = str(tmp_path / "clip.mp4")
    with av.open(path, mode="w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for frame in colored_frames(7, size=(32, 32)):
            container.mux(stream.encode(av.VideoFrame.from_image(frame)))
        container.mux(stream.encode())
    sampled = sample_frames(path, 3)
    assert [frame_index(f) for f in sampled] == [0, 2, 4] and sampled[0].size == (32, 32)


def test_video_files_without_a_decoder_name_the_optional_dependencies(tmp_path, monkeypatch):
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"\x00" * 16)
    monkeypatch.setitem(sys.modules, "av", None)
    monkeypatch.setitem(sys.modules, "decord", None)
    with pytest.raises(ImportError, match=r"PyAV \(`pip install av`\) or decord"):
        sample_frames(path, 3)


# --- the video example scripts on frame folders -------------------------------------------------------------------


@pytest.fixture
def frame_folders(tmp_path) -> list[str]:
    """Three 'videos' as folders of 5 PNG frames, tmp_path/videos/video{n}.frames; names relative to tmp_path."""
    names = []
    for video in range(3):
        folder = tmp_path / "videos" / f"video{video}.frames"
        folder.mkdir(parents=True)
        for index, frame in enumerate(colored_frames(5, size=(24 + 8 * video, 20))):
            frame.rotate(40 * video).save(folder / f"{index:02d}.png")
        names.append(f"videos/video{video}.frames")
    return names


def sampled_videos(tmp_path, names, num_frames, processor) -> torch.Tensor:
    return processor(images=[sample_frames(tmp_path / name, num_frames) for name in names])["pixel_values"]


def test_video_qa_script_ranks_the_answer_list(tmp_path, frame_folders, model_dirs):
    records = [{"video": name, "question": q, "answer": a}
               for name, q, a in zip(frame_folders, ["what color?", "who is there?", "how many?"], ["red", "no", "two"])]  # fmt: skip
    data = write_json(tmp_path / "qa.json", records)
    write_json(tmp_path / "answers.json", ANSWER_LIST)
    output = tmp_path / "out"
    metrics = load_script("video_qa").main(
        ["--model", str(model_dirs["vqa"]), "--data", str(data), "--output-dir", str(output),
         "--answer-list", str(tmp_path / "answers.json"), "--num-frames", "3", "--k", "4"]
    )  # fmt: skip
    predictions = read_json(output / "vqa_result.json")
    model, processor = load_head(model_dirs, "vqa")
    candidates = processor.encode_targets(ANSWER_LIST)
    top_ids, _ = rank_answers(model,
        pixel_values=sampled_videos(tmp_path, frame_folders, 3, processor),
        candidate_ids=candidates["input_ids"], candidate_attention_mask=candidates["attention_mask"], k=4,
        **processor.encode_text([r["question"] for r in records]),
    )  # fmt: skip
    assert predictions == [{"question_id": i, "answer": ANSWER_LIST[t]} for i, t in enumerate(top_ids[:, 0].tolist())]
    correct = [p["answer"] == r["answer"] for p, r in zip(predictions, records)]
    assert metrics == {"accuracy": 100.0 * sum(correct) / 3}


def test_video_captioning_script_starts_from_the_prompt(tmp_path, frame_folders, model_dirs):
    records = [{"video": name, "caption": caption}
               for name, caption in zip(frame_folders, ["a man dancing", "kids play", "a red car"])]  # fmt: skip
    data = write_json(tmp_path / "captions.json", records)
    output = tmp_path / "out"
    metrics = load_script("video_captioning").main(
        ["--model", str(model_dirs["caption"]), "--data", str(data), "--output-dir", str(output), "--num-frames", "2",
         "--num-beams", "2", "--min-length", "2", "--max-length", "4", "--backend", "python"]
    )  # fmt: skip
    results = read_json(output / "caption_result.json")
    assert [r["image_id"] for r in results] == frame_folders
    model, processor = load_head(model_dirs, "caption")
    beams = generate_caption_original(model,
        sampled_videos(tmp_path, frame_folders, 2, processor), torch.tensor([[101, 1037, 3861]]).expand(3, -1),
        num_beams=2, min_length=2, max_length=4,
    )  # fmt: skip
    decoded = processor.batch_decode(beams.sequences[:, 0], skip_special_tokens=True)
    assert all(text.startswith("a picture ") for text in decoded)
    # the prompt is removed; the whole of it when the model generated the dropped "of" itself
    expected = [
        text.split(" ", 3)[3] if text.startswith("a picture of ") else text.split(" ", 2)[2] for text in decoded
    ]
    assert [r["caption"] for r in results] == expected
    predictions = {r["image_id"]: r["caption"] for r in results}
    assert metrics == compute_caption_metrics(predictions, {r["video"]: [r["caption"]] for r in records}, "python")


def test_video_retrieval_script_scores_itm_plus_itc(tmp_path, frame_folders, model_dirs):
    captions = ["a man dancing", "kids play football", "a red car"]
    # MSRVTT-style: clip names without their suffix, completed by --video-suffix
    rows = [{"clip_name": name.removesuffix(".frames"), "caption": c} for name, c in zip(frame_folders, captions)]
    (tmp_path / "msrvtt.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    output = tmp_path / "out"
    metrics = load_script("video_retrieval").main(
        ["--model", str(model_dirs["retrieval"]), "--data", str(tmp_path / "msrvtt.jsonl"), "--output-dir",
         str(output), "--column", "video=clip_name", "--video-suffix", ".frames", "--num-frames", "3", "--k", "2"]
    )  # fmt: skip
    scores = np.load(output / "retrieval_scores.npz")
    model, processor = load_head(model_dirs, "retrieval")
    videos = sampled_videos(tmp_path, frame_folders, 3, processor)
    texts = processor.encode_text(captions, max_length=35, padding="max_length")
    itm_i2t, itm_t2i = retrieve(model, videos, texts["input_ids"], texts["attention_mask"], k=2)
    with torch.no_grad():
        sims = model.get_image_features(videos).pooler_output @ model.get_text_features(**texts).pooler_output.t()
    # the original video evaluation: ITM + ITC on the top-k pairs, -100 elsewhere
    expected_i2t = torch.where(itm_i2t == -100, itm_i2t, itm_i2t + sims)
    expected_t2i = torch.where(itm_t2i == -100, itm_t2i, itm_t2i + sims.t())
    np.testing.assert_allclose(scores["scores_i2t"], expected_i2t.numpy(), atol=1e-5)
    np.testing.assert_allclose(scores["scores_t2i"], expected_t2i.numpy(), atol=1e-5)
    recalls = retrieval_metrics(scores["scores_i2t"], [0, 1, 2], [[0], [1], [2]], scores["scores_t2i"])
    assert metrics == {name.replace("img_", "vid_"): value for name, value in recalls.items()}


def test_video_features_use_the_frame_count_at_any_resolution():
    """Frames at another resolution than the model's (interpolated position embeddings) still average per frame."""
    import torch

    from mplug_hf import MPLUGForRetrieval
    from tests.conftest import tiny_config

    torch.manual_seed(0)
    model = MPLUGForRetrieval(tiny_config()).eval()
    frames = torch.randn(2, 3, 3, 48, 48)  # 37 tokens per frame instead of the model's 17
    with torch.no_grad():
        tokens = model.mplug.get_image_features(frames, interpolate_pos_encoding=True).last_hidden_state
        features = model.contrastive.image_features(tokens, num_frames=3)
        frame_cls = [
            model.mplug.get_image_features(frames[:, t], interpolate_pos_encoding=True).last_hidden_state[:, 0]
            for t in range(3)
        ]
        expected = torch.nn.functional.normalize(
            torch.stack([model.contrastive.vision_proj(c) for c in frame_cls]).mean(0), dim=-1
        )
    torch.testing.assert_close(features, expected, atol=1e-6, rtol=0)
