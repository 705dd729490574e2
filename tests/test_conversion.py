"""Parity of converted checkpoints with the outputs of the ORIGINAL mPLUG code (../shared/reference/mplug-tiny-a)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from mplug_hf import MPLUGProcessor
from mplug_hf.convert_original import (
    CheckpointConversionError,
    convert_checkpoint,
    detect_tasks,
    load_original_checkpoint,
    main,
    strip_pretraining_infixes,
)
from mplug_hf.image_processing_mplug import MPLUGImageProcessor
from mplug_hf.original_generation import generate_answer_original, generate_caption_original
from mplug_hf.scoring import rank_answers, retrieve


@pytest.fixture(scope="module")
def ref(reference_dir):
    goldens = load_file(reference_dir / "goldens" / "goldens.safetensors")
    meta = json.loads((reference_dir / "goldens" / "goldens.json").read_text())
    return reference_dir, goldens, meta


def convert(ref, task):
    reference_dir, _, _ = ref
    name = "pretrain_format" if task == "pretrain" else task
    model, report = convert_checkpoint(
        str(reference_dir / "checkpoints" / f"mplug_{name}.pth"),
        task,
        str(reference_dir / "config" / "config_bert.json"),
        image_size=32,  # the fine-tuning resolution; the pretrain file stores its embedding at 24
    )
    return model, report


def close(actual, expected, atol):
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=0)


def same_sequences(result, sequences, lengths):
    for item in range(sequences.shape[0]):
        for rank in range(sequences.shape[1]):
            n = lengths[item, rank]
            assert result.sequences[item, rank, :n].tolist() == sequences[item, rank, :n].tolist()
            assert result.lengths[item, rank] == n


def test_tokenization_and_image_transform_match_original(ref):
    reference_dir, g, _ = ref
    processor = MPLUGProcessor(MPLUGImageProcessor(image_size=32))
    calls = json.loads((reference_dir / "goldens" / "goldens.json").read_text())["tokenization"]["batch_calls"]
    for name, call in calls.items():
        texts, kwargs = call["texts"], call["kwargs"]
        # empty texts are refused by the processor (a clear error); compare every other row
        rows = [i for i, t in enumerate(texts) if t.strip()]
        texts = [texts[i] for i in rows]
        max_length = kwargs.get("max_length") if kwargs.get("truncation") else None
        padding = kwargs.get("padding", "longest")
        if name in ("vqa_answers", "vqa_answer_list", "captions", "caption_long_truncated"):
            texts = [t[: -len("[SEP]")] for t in texts]
            encoded = processor.encode_targets(texts, max_length=max_length, padding=padding)
        else:
            encoded = processor.encode_text(texts, max_length=max_length, padding=padding)
        assert encoded["input_ids"].tolist() == g[f"tok.{name}.input_ids"][rows].tolist(), name
        assert encoded["attention_mask"].tolist() == g[f"tok.{name}.attention_mask"][rows].tolist(), name
    from PIL import Image

    images = [Image.open(reference_dir / "images" / f"synthetic_{i}.png") for i in range(2)]
    close(processor(images=images)["pixel_values"], g["inputs.png_pixel_values"], 1e-6)


def test_vqa_parity(ref):
    _, g, meta = ref
    model, report = convert(ref, "vqa")
    assert not any(target.startswith("text_decoder") for source, target in report.mapped.items() if "_m." in source)
    pv, qi, qm = g["inputs.pixel_values"], g["common.question_input_ids"], g["common.question_attention_mask"]
    with torch.no_grad():
        encoded = model.mplug(input_ids=qi, pixel_values=pv, attention_mask=qm)
        close(encoded.image_states, g["common.image_embeds"], 1e-5)
        close(encoded.text_states, g["common.text_embeds"], 1e-5)
        close(encoded.fused_image_states, g["common.fusion_image_output"], 1e-5)
        close(encoded.fused_text_states, g["common.fusion_text_output"], 1e-5)
        close(encoded.last_hidden_state, g["vqa.memory"], 1e-5)
        assert encoded.encoder_attention_mask.tolist() == g["vqa.memory_mask"].tolist()
        labels = g["vqa.answer_input_ids"].masked_fill(g["vqa.answer_attention_mask"] == 0, -100)
        out = model(input_ids=qi, pixel_values=pv, attention_mask=qm, labels=labels,
                    decoder_attention_mask=g["vqa.answer_attention_mask"], answer_counts=g["vqa.k"],
                    answer_weights=g["vqa.weights"])  # fmt: skip
        close(out.loss, g["vqa.train_loss"], 1e-4)
        valid = g["vqa.teacher_forced.labels"] != -100
        close(out.logits[:, :-1, :1024][valid], g["vqa.teacher_forced.logits_head"][valid], 1e-4)
        close(out.logits[:, :-1].logsumexp(-1)[valid], g["vqa.teacher_forced.logits_logsumexp"][valid], 1e-4)
    beams = generate_answer_original(
        model, qi, pv, qm, num_beams=5, min_length=1, max_length=10, num_return_sequences=5
    )
    same_sequences(beams, g["vqa.beam.sequences"], g["vqa.beam.lengths"])
    close(beams.scores, g["vqa.beam.scores"], 1e-4)
    ids, probs = rank_answers(
        model, qi, pv, g["vqa.rank.answer_list_input_ids"], g["vqa.rank.answer_list_attention_mask"], qm, k=3
    )
    assert ids.tolist() == g["vqa.rank.topk_ids"].tolist()
    close(probs, g["vqa.rank.topk_probs"], 1e-4)
    assert meta["vqa"]["generate"]  # decoded strings exist for the same search


def test_caption_parity(ref):
    _, g, _ = ref
    model, report = convert(ref, "caption")
    assert any("not used by this task" in reason for reason in report.dropped.values())
    pv = g["inputs.pixel_values"]
    labels = g["caption.input_ids"].masked_fill(g["caption.attention_mask"] == 0, -100)
    with torch.no_grad():
        out = model(pixel_values=pv, labels=labels, decoder_attention_mask=g["caption.attention_mask"])
    close(out.loss, g["caption.loss"], 1e-4)
    valid = g["caption.teacher_forced.labels"] != -100
    close(out.logits[:, :-1, :1024][valid], g["caption.teacher_forced.logits_head"][valid], 1e-4)
    beams = generate_caption_original(model, pv, num_beams=5, min_length=2, max_length=12, num_return_sequences=5)
    same_sequences(beams, g["caption.beam.sequences"], g["caption.beam.lengths"])
    close(beams.scores, g["caption.beam.scores"], 1e-4)
    png = generate_caption_original(model, g["inputs.png_pixel_values"], num_beams=5, min_length=2, max_length=12)
    for item in range(2):
        expected = [t for t in g["caption.png.best_sequence"][item].tolist() if t >= 0]
        assert png.sequences[item, 0, : len(expected)].tolist() == expected
    close(png.scores[:, 0], g["caption.png.best_score"], 1e-4)
    assert model.generation_config.num_beams == 5 and model.generation_config.max_new_tokens == 25


def test_retrieval_parity(ref):
    _, g, _ = ref
    model, _ = convert(ref, "retrieval")
    pv, ti, tm = g["inputs.pixel_values"], g["retrieval.text_input_ids"], g["retrieval.text_attention_mask"]
    with torch.no_grad():
        close(model.mplug.get_text_features(ti, tm).last_hidden_state, g["retrieval.text_feats"], 1e-5)
        close(model.get_image_features(pv).pooler_output, g["retrieval.image_feat"], 1e-5)
        close(model.get_text_features(ti, tm).pooler_output, g["retrieval.text_feat"], 1e-5)
        out = model(input_ids=ti, pixel_values=pv, attention_mask=tm, compute_itm=False)
        close(out.logits_per_image, g["retrieval.sims_over_temp"], 1e-4)
        close(model.contrastive.temp, g["retrieval.temp"], 0)
    i2t, t2i = retrieve(model, pv, ti, tm, k=4)
    close(i2t, g["retrieval.itm_logits"][..., 1], 1e-4)
    i2t, _ = retrieve(model, pv, ti, tm, k=2)  # the fixture's k_test: top-2 by ITC, ITM there, -100 elsewhere
    top = g["retrieval.sims"].topk(2, dim=1).indices
    expected = torch.full((3, 4), -100.0).scatter(1, top, g["retrieval.itm_logits"][..., 1].gather(1, top))
    close(i2t, expected, 1e-4)


def test_grounding_parity(ref):
    _, g, _ = ref
    model, _ = convert(ref, "grounding")
    pv, qi, qm = g["inputs.pixel_values"], g["tok.grounding.input_ids"], g["tok.grounding.attention_mask"]
    with torch.no_grad():
        encoded = model.mplug(input_ids=qi, pixel_values=pv, attention_mask=qm)
        close(encoded.text_states, g["grounding.text_embeds"], 1e-5)
        close(encoded.last_hidden_state, g["grounding.memory"], 1e-5)
        close(model(qi, pv, qm).pred_boxes, g["grounding.pred_box"], 1e-6)
        out = model(input_ids=qi, pixel_values=pv, attention_mask=qm, labels=g["grounding.targets"])
    close(out.logits, g["grounding.tf.logits_bins"], 1e-4)
    close(out.pred_boxes, g["grounding.tf.pred_box"], 1e-6)
    assert model.boxes_to_tokens(g["grounding.targets"]).tolist() == g["grounding.target_token_ids"].tolist()
    # the original broadcasts to (B, B, 4); we compute the intended per-sample product (documented difference)
    intended = (
        g["grounding.tf.per_token_ce"].view(3, 4)
        * g["grounding.tf.weight_bbox"]
        * g["grounding.tf.weight_giou"][:, None]
    ).mean()
    close(out.loss, intended, 1e-4)
    close(g["grounding.tf.weighted_loss_broadcast"].mean(), g["grounding.loss_seq"], 1e-5)


def test_pretrain_format_loads_with_resized_position_embedding(ref):
    _, g, meta = ref
    model, report = convert(ref, "pretrain")
    embeddings = model.mplug.vision_model.embeddings.position_embedding
    close(embeddings, g["pretrain.vqa.loaded_visual_positional_embedding"], 1e-6)
    with torch.no_grad():
        close(
            model.mplug.get_image_features(g["inputs.pixel_values"]).last_hidden_state,
            g["pretrain.vqa.image_embeds_after_load"],
            1e-5,
        )
    assert "mlm_head.dense.weight" in report.mapped.values()
    vqa, _ = convert_checkpoint(str(ref[0] / "checkpoints" / "mplug_pretrain_format.pth"), "vqa",
                                str(ref[0] / "config" / "config_bert.json"), image_size=32)  # fmt: skip
    close(
        vqa.mplug.vision_model.embeddings.position_embedding,
        g["pretrain.vqa.loaded_visual_positional_embedding"],
        1e-6,
    )


def test_unknown_missing_and_corrupt_checkpoints_are_errors(ref, tmp_path):
    reference_dir, _, _ = ref
    state = load_original_checkpoint(str(reference_dir / "checkpoints" / "mplug_caption.pth"))
    bert = str(reference_dir / "config" / "config_bert.json")
    extra = dict(state, **{"text_decoder.some_new_layer.weight": torch.zeros(2)})
    torch.save({"model": extra}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointConversionError, match="some_new_layer"):
        convert_checkpoint(str(tmp_path / "extra.pth"), "caption", bert)
    missing = {k: v for k, v in state.items() if "text_decoder.bert.encoder.layer.1.output.dense" not in k}
    torch.save({"model": missing}, tmp_path / "missing.pth")
    with pytest.raises(CheckpointConversionError, match=r"missing keys .*layers\.1\.mlp\.fc2"):
        convert_checkpoint(str(tmp_path / "missing.pth"), "caption", bert)
    data = (reference_dir / "checkpoints" / "mplug_caption.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointConversionError, match="weights_only=True"):
        convert_checkpoint(str(tmp_path / "truncated.pth"), "caption", bert)


def test_cli_writes_a_loadable_folder(ref, tmp_path):
    from transformers import AutoModelForVisualQuestionAnswering, AutoProcessor

    reference_dir, g, _ = ref
    main([str(reference_dir / "checkpoints" / "mplug_vqa.pth"), str(tmp_path), "--task", "vqa",
          "--config-bert", str(reference_dir / "config" / "config_bert.json")])  # fmt: skip
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "generation_config.json").is_file()
    model = AutoModelForVisualQuestionAnswering.from_pretrained(tmp_path).eval()
    processor = AutoProcessor.from_pretrained(tmp_path)
    assert processor.image_processor.image_size == 32
    with torch.no_grad():
        encoded = model.mplug(input_ids=g["common.question_input_ids"], pixel_values=g["inputs.pixel_values"],
                              attention_mask=g["common.question_attention_mask"])  # fmt: skip
    close(encoded.last_hidden_state, g["vqa.memory"], 1e-5)


def test_keep_momentum_converts_momentum_encoders_and_queues(ref):
    reference_dir, _, _ = ref
    bert = str(reference_dir / "config" / "config_bert.json")
    path = reference_dir / "checkpoints" / "mplug_pretrain_format.pth"
    source = strip_pretraining_infixes(load_original_checkpoint(str(path)))
    model, report = convert_checkpoint(str(path), "pretrain", bert, image_size=32, keep_momentum=True)
    momentum = model.momentum_encoders
    assert model.config.momentum_queue_size == source["image_queue"].shape[1]
    close(momentum.image_queue, source["image_queue"], 0)
    close(momentum.vision_proj.weight, source["vision_proj_m.weight"], 0)
    close(
        momentum.text_encoder.layers[0].mlp.fc1.weight,
        source["text_encoder_m.encoder.layer.0.intermediate.dense.weight"],
        0,
    )
    assert bool(momentum.initialized) and report.mapped["queue_ptr"] == "momentum_encoders.queue_ptr"
    assert "fusion_encoder_m" in next(k for k in report.dropped if k.startswith("fusion_encoder_m."))
    # every source key is accounted for (the MLM head is reported under its mlm_head.* name)
    assert set(report.mapped) | set(report.dropped) >= {k for k in source if not k.startswith("fusion_encoder.cls.")}
    # the retrieval file has queues but no momentum encoders: they start as copies at the first training step
    retrieval, _ = convert_checkpoint(str(reference_dir / "checkpoints" / "mplug_retrieval.pth"), "retrieval", bert,
                                      keep_momentum=True)  # fmt: skip
    assert not bool(retrieval.momentum_encoders.initialized)
    with pytest.raises(CheckpointConversionError, match="no momentum training"):
        convert_checkpoint(str(reference_dir / "checkpoints" / "mplug_vqa.pth"), "vqa", bert, keep_momentum=True)
    plain, _ = convert(ref, "pretrain")
    assert plain.momentum_encoders is None


def test_modelscope_folder_reads_config_yaml_and_vocab(ref, tmp_path):
    reference_dir, g, _ = ref
    state = load_original_checkpoint(str(reference_dir / "checkpoints" / "mplug_pretrain_format.pth"))
    folder = tmp_path / "modelscope"
    folder.mkdir()
    torch.save({f"model.{k}": v for k, v in state.items()}, folder / "pytorch_model.bin")
    (folder / "config.yaml").write_text("model:\n  image_res: 32\n  vision_width: 64\n")
    (folder / "config_bert.json").write_text((reference_dir / "config" / "config_bert.json").read_text())
    vocab = (reference_dir.parents[0] / "bert-base-uncased-vocab.txt").read_text().splitlines()
    vocab[1] = "[ours]"  # a folder vocabulary that differs from the shipped one is the one saved
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    main([str(folder), str(tmp_path / "out"), "--task", "vqa"])
    from transformers import AutoModelForVisualQuestionAnswering, AutoProcessor

    model = AutoModelForVisualQuestionAnswering.from_pretrained(tmp_path / "out")
    close(
        model.mplug.vision_model.embeddings.position_embedding,
        g["pretrain.vqa.loaded_visual_positional_embedding"],
        1e-6,
    )
    assert AutoProcessor.from_pretrained(tmp_path / "out").tokenizer.convert_ids_to_tokens(1) == "[ours]"


def test_verify_mode_compares_with_reference_tensors(ref, tmp_path, capsys):
    from safetensors.torch import save_file

    reference_dir, g, _ = ref
    bert = str(reference_dir / "config" / "config_bert.json")
    vqa_reference = {
        "pixel_values": g["inputs.pixel_values"],
        "input_ids": g["common.question_input_ids"],
        "attention_mask": g["common.question_attention_mask"],
        "image_embeds": g["common.image_embeds"],
        "text_embeds": g["common.text_embeds"],
        "fusion_image_output": g["common.fusion_image_output"],
        "fusion_text_output": g["common.fusion_text_output"],
    }
    save_file(vqa_reference, tmp_path / "vqa.safetensors")
    main([str(reference_dir / "checkpoints" / "mplug_vqa.pth"), str(tmp_path / "vqa"), "--task", "vqa",
          "--config-bert", bert, "--verify", str(tmp_path / "vqa.safetensors")])  # fmt: skip
    assert capsys.readouterr().out.count(" ok") == 4
    caption_reference = {
        "pixel_values": g["inputs.pixel_values"],
        "decoder_input_ids": g["caption.input_ids"],
        "decoder_attention_mask": g["caption.attention_mask"],
        "logits": g["caption.teacher_forced.logits_head"],  # first 1024 vocabulary columns of positions 0..11
    }
    save_file(caption_reference, tmp_path / "caption.safetensors")
    main([str(reference_dir / "checkpoints" / "mplug_caption.pth"), str(tmp_path / "caption"), "--task", "caption",
          "--config-bert", bert, "--verify", str(tmp_path / "caption.safetensors")])  # fmt: skip
    save_file({**vqa_reference, "text_embeds": g["common.text_embeds"] + 1e-3}, tmp_path / "bad.safetensors")
    with pytest.raises(SystemExit, match="text_embeds"):
        main([str(reference_dir / "checkpoints" / "mplug_vqa.pth"), str(tmp_path / "bad"), "--task", "vqa",
              "--config-bert", bert, "--verify", str(tmp_path / "bad.safetensors")])  # fmt: skip
    # a failed verification writes nothing: the folder never appears, and an existing one is left as it was
    assert not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit, match="nothing was written"):
        main([str(reference_dir / "checkpoints" / "mplug_vqa.pth"), str(tmp_path / "vqa"), "--task", "vqa",
              "--config-bert", bert, "--verify", str(tmp_path / "bad.safetensors"), "--overwrite"])  # fmt: skip
    assert load_file(tmp_path / "vqa" / "model.safetensors").keys()
    assert not [name for name in tmp_path.iterdir() if name.name.startswith(".")]


def test_cli_push_to_hub_uploads_the_remote_code_folder(ref, tmp_path, monkeypatch):
    """--push-to-hub goes through mplug_hf.push_to_hub (remote code + auto_map), with the Hub API stubbed."""
    import mplug_hf.hub

    uploads = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            return type("Repo", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, **kwargs):
            folder = __import__("pathlib").Path(folder_path)
            uploads.append((repo_id, sorted(p.name for p in folder.iterdir()), (folder / "README.md").read_text()))

    monkeypatch.setattr(mplug_hf.hub, "HfApi", FakeApi)
    reference_dir, _, _ = ref
    main([str(reference_dir / "checkpoints" / "mplug_caption.pth"), str(tmp_path), "--task", "caption",
          "--config-bert", str(reference_dir / "config" / "config_bert.json"), "--push-to-hub", "me/mplug-tiny"])  # fmt: skip
    ((repo, files, card),) = uploads
    assert repo == "me/mplug-tiny" and "modeling_mplug.py" in files and "README.md" in files
    # the card of weights just converted says so (and names the authors' training data)
    assert "## Conversion" in card and "mplug-convert" in card and "- coco" in card


def trimmed(sequences, lengths):
    return [row[:length].tolist() for row, length in zip(sequences, lengths)]


def test_converted_generation_defaults_generate_as_many_tokens_as_the_original(ref):
    """The original's VQA max 10/min 1 and caption max 25/min 8 count generated tokens only: the converted
    generation config says max/min_new_tokens, and generate() with its defaults equals generate_caption_original / generate_answer_original."""
    _, g, _ = ref
    qi, pv, qm = g["common.question_input_ids"], g["inputs.pixel_values"], g["common.question_attention_mask"]
    vqa, _ = convert(ref, "vqa")
    settings = vqa.generation_config
    assert (settings.max_new_tokens, settings.min_new_tokens, settings.num_beams) == (10, 1, 5)
    original = generate_answer_original(vqa, qi, pv, qm)
    generated = vqa.generate(input_ids=qi, pixel_values=pv, attention_mask=qm)
    expected = trimmed(original.sequences[:, 0], original.lengths[:, 0])
    assert [row[: len(target)] for row, target in zip(generated.tolist(), expected)] == expected
    # where the length limit binds, the count of generated tokens is the original's
    original = generate_answer_original(vqa, qi, pv, qm, min_length=3, max_length=3)
    generated = vqa.generate(input_ids=qi, pixel_values=pv, attention_mask=qm, max_new_tokens=3, min_new_tokens=3)
    assert generated.tolist() == original.sequences[:, 0].tolist() and generated.shape[1] == 1 + 3
    caption, _ = convert(ref, "caption")
    assert (caption.generation_config.max_new_tokens, caption.generation_config.min_new_tokens) == (25, 8)
    original = generate_caption_original(caption, pv)  # beam 5, min 8, max 25
    generated = caption.generate(pixel_values=pv)
    expected = trimmed(original.sequences[:, 0], original.lengths[:, 0])
    assert [row[: len(target)] for row, target in zip(generated.tolist(), expected)] == expected
    assert min(len(row) for row in expected) >= 1 + 8 + 1  # [CLS], 8 generated tokens at least, [SEP]


def test_the_key_set_tells_the_task(ref, tmp_path):
    reference_dir, _, _ = ref
    bert = str(reference_dir / "config" / "config_bert.json")
    checkpoint = lambda name: str(reference_dir / "checkpoints" / f"mplug_{name}.pth")  # noqa: E731
    detected = {
        name: detect_tasks(strip_pretraining_infixes(load_original_checkpoint(checkpoint(name))))
        for name in ("vqa", "caption", "retrieval", "grounding", "pretrain_format")
    }
    assert detected["vqa"] == ("vqa", ("vqa",)) and detected["grounding"] == ("grounding", ("grounding",))
    assert detected["retrieval"] == ("retrieval", ("retrieval",)) and detected["pretrain_format"][0] == "pretrain"
    assert set(detected["caption"][1]) == {"vqa", "caption"}
    for name, task, found in [("grounding", "vqa", "grounding"), ("vqa", "caption", "vqa"), ("retrieval", "vqa",
                              "retrieval"), ("vqa", "grounding", "vqa")]:  # fmt: skip
        with pytest.raises(CheckpointConversionError, match=f"is a {found} checkpoint .*not a {task} one"):
            convert_checkpoint(checkpoint(name), task, bert)
    model, _ = convert_checkpoint(checkpoint("grounding"), None, bert)  # no task: the detected one
    assert type(model).__name__ == "MPLUGForGrounding"
    with pytest.raises(CheckpointConversionError, match="vqa or caption"):
        convert_checkpoint(checkpoint("caption"), None, bert)
    with pytest.raises(SystemExit, match="is a grounding checkpoint"):
        main([checkpoint("grounding"), str(tmp_path / "out"), "--task", "vqa", "--config-bert", bert])
    assert not (tmp_path / "out").exists()


def test_nonfinite_tensors_are_named(ref, tmp_path):
    reference_dir, _, _ = ref
    bert = str(reference_dir / "config" / "config_bert.json")
    state = load_original_checkpoint(str(reference_dir / "checkpoints" / "mplug_caption.pth"))
    name = "text_decoder.bert.encoder.layer.0.output.dense.weight"
    assert name in state
    state[name] = state[name].clone()
    state[name][0, 0] = float("nan")
    torch.save({"model": state}, tmp_path / "nan.pth")
    with pytest.raises(CheckpointConversionError, match=rf"1 tensor\(s\) in .*nan.pth hold NaN or inf values: {name}"):
        convert_checkpoint(str(tmp_path / "nan.pth"), "caption", bert)
    with pytest.warns(UserWarning, match=name):
        convert_checkpoint(str(tmp_path / "nan.pth"), "caption", bert, allow_nonfinite=True)
    with pytest.raises(SystemExit, match="--allow-nonfinite"):
        main([str(tmp_path / "nan.pth"), str(tmp_path / "out"), "--task", "caption", "--config-bert", bert])
    assert not (tmp_path / "out").exists()
    # finite in float32, inf after a float16 cast
    state = load_original_checkpoint(str(reference_dir / "checkpoints" / "mplug_caption.pth"))
    state[name] = state[name] * 0 + 1e6
    torch.save({"model": state}, tmp_path / "large.pth")
    with pytest.raises(CheckpointConversionError, match="after the cast to torch.float16"):
        convert_checkpoint(str(tmp_path / "large.pth"), "caption", bert, dtype=torch.float16)


def test_cli_refuses_an_existing_folder_and_moves_a_folder_into_place_only_when_complete(ref, tmp_path, monkeypatch):
    import mplug_hf.convert_original as convert_original

    reference_dir, _, _ = ref
    args = [str(reference_dir / "checkpoints" / "mplug_caption.pth"), str(tmp_path / "out"), "--task", "caption",
            "--config-bert", str(reference_dir / "config" / "config_bert.json")]  # fmt: skip
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2 and (tmp_path / "out" / "notes.txt").read_text() == "mine"
    # a writer failing mid-way (here: after the weights, before the processor) leaves the old folder as it was
    original_save = convert_original.save_converted

    def failing_save(model, report, output_dir, vocab_file=None):
        model.save_pretrained(output_dir)
        raise RuntimeError("disk full")

    monkeypatch.setattr(convert_original, "save_converted", failing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        main([*args, "--overwrite"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left behind
    monkeypatch.setattr(convert_original, "save_converted", original_save)
    main([*args, "--overwrite"])
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert "notes.txt" not in names and {"model.safetensors", "conversion_report.json"} <= names
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_bad_settings_are_named_before_anything_is_written(ref, tmp_path):
    """Resolutions, BERT configs, task YAMLs and --verify references that cannot work fail with the converter's
    message (no RuntimeError from the position-embedding resize, no JSON/YAML/config tracebacks) and write nothing."""
    reference_dir, _, _ = ref
    checkpoint = str(reference_dir / "checkpoints" / "mplug_caption.pth")
    bert = str(reference_dir / "config" / "config_bert.json")
    for size in (0, 33, -16):
        with pytest.raises(CheckpointConversionError, match=rf"image_size {size} must be a positive multiple of .* 8"):
            convert_checkpoint(checkpoint, "caption", bert, image_size=size)
    (tmp_path / "notes.json").write_text("\n\nnot json")
    with pytest.raises(CheckpointConversionError, match=r"notes.json:3: not JSON"):
        convert_checkpoint(checkpoint, "caption", str(tmp_path / "notes.json"))
    with pytest.raises(CheckpointConversionError, match="cannot read the BERT config .*missing.json"):
        convert_checkpoint(checkpoint, "caption", str(tmp_path / "missing.json"))
    (tmp_path / "heads.json").write_text(json.dumps({**json.loads(open(bert).read()), "num_attention_heads": 5}))
    with pytest.raises(CheckpointConversionError, match="(?s)give no valid mPLUG config: .*num_attention_heads 5"):
        convert_checkpoint(checkpoint, "caption", str(tmp_path / "heads.json"))
    (tmp_path / "task.yaml").write_text("image_res: [1")
    with pytest.raises(CheckpointConversionError, match="cannot read the task YAML .*task.yaml"):
        convert_checkpoint(checkpoint, "caption", bert, task_config=str(tmp_path / "task.yaml"))
    out = tmp_path / "out"
    with pytest.raises(SystemExit):  # argparse: --verify-atol must be >= 0
        main([checkpoint, str(out), "--task", "caption", "--config-bert", bert, "--image-size", "16",
              "--verify", bert, "--verify-atol", "-1"])  # fmt: skip
    (tmp_path / "reference.safetensors").write_text("not safetensors")
    with pytest.raises(SystemExit, match="verification failed: .*reference.safetensors.*nothing was written"):
        main([checkpoint, str(out), "--task", "caption", "--config-bert", bert,
              "--verify", str(tmp_path / "reference.safetensors")])  # fmt: skip
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
