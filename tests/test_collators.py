"""Collators and training augmentation: formats the heads expect, the original's rules, determinism with seeds."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from mplug_hf import (
    MPLUGConfig,
    MPLUGForCaptioning,
    MPLUGForGrounding,
    MPLUGForPreTraining,
    MPLUGForQuestionAnswering,
    MPLUGForRetrieval,
    MPLUGImageProcessor,
    MPLUGProcessor,
)
from mplug_hf.augmentation import (
    MPLUGGroundingAugmentation,
    MPLUGTrainAugmentation,
    RandomAugment,
    random_resized_crop_box,
    swap_left_right,
)
from mplug_hf.data_collators import (
    MPLUGCaptioningDataCollator,
    MPLUGGroundingDataCollator,
    MPLUGPreTrainingDataCollator,
    MPLUGRetrievalDataCollator,
    MPLUGVQADataCollator,
    normalize_caption,
    vqa_answer_weights,
)


IMAGE_SIZE = 32


def bert_vocab_config() -> MPLUGConfig:
    """A tiny mPLUG over the full bert-base-uncased vocabulary, so that the processor's ids are valid."""
    return MPLUGConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=IMAGE_SIZE, patch_size=8),
        text_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, max_position_embeddings=64,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
        text_encoder_layers=1, fusion_layers=2, stride_layer=1, decoder_layers=1, embed_dim=16,
    )  # fmt: skip


@pytest.fixture(scope="module")
def processor() -> MPLUGProcessor:
    return MPLUGProcessor(MPLUGImageProcessor(image_size=IMAGE_SIZE))


def random_image(seed: int = 0, size=(48, 40)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


# ----------------------------------------------------------------------------------------------------------------------
# RandomAugment
# ----------------------------------------------------------------------------------------------------------------------


def test_random_augment_is_reproducible_with_a_seed():
    augment, image = RandomAugment(), random_image()
    first = np.asarray(augment(image, np.random.default_rng(5)))
    assert np.array_equal(first, np.asarray(augment(image, np.random.default_rng(5))))
    outputs = {np.asarray(augment(image, np.random.default_rng(seed))).tobytes() for seed in range(12)}
    assert len(outputs) > 3


def test_random_augment_draws_two_ops_with_replacement_each_with_probability_half():
    augment = RandomAugment()
    rng = np.random.default_rng(0)
    applied = []
    original_apply = augment.apply
    augment.apply = lambda name, image, rng: applied.append(name) or original_apply(name, image, rng)
    for _ in range(400):
        augment(random_image(), rng)
    # 400 images × 2 draws × p 0.5 ≈ 400 applications over the 10 original operations.
    assert 330 < len(applied) < 470
    assert set(applied) == set(RandomAugment.OPERATIONS)


def test_random_augment_rejects_unknown_operations():
    with pytest.raises(ValueError, match="Solarise"):
        RandomAugment(operations=["Identity", "Solarise"])


def test_brightness_and_sharpness_use_the_original_factor():
    augment = RandomAugment(magnitude=7)  # factor 7 / 10 · 1.8 + 0.1 = 1.36
    flat = np.full((6, 6, 3), 100, dtype=np.uint8)
    assert (augment.apply("Brightness", flat, None) == 136).all()
    assert np.array_equal(augment.apply("Sharpness", flat, None), flat)  # nothing to sharpen
    spike = flat.copy()
    spike[3, 3] = 200
    sharpened = augment.apply("Sharpness", spike, None)
    # Smoothed centre: (8·100 + 5·200) / 13 = 138.46 → 138; blended 138 + 1.36 · (200 − 138) = 222.3.
    assert sharpened[3, 3, 0] == 222
    assert np.array_equal(sharpened[0], spike[0])  # borders stay


def test_autocontrast_and_equalize_match_pil():
    image = random_image(3)
    squeezed = Image.fromarray((np.asarray(image) // 2 + 40).astype(np.uint8))
    augment = RandomAugment()
    stretched = augment.apply("AutoContrast", np.asarray(squeezed), None)
    assert stretched.min() == 0 and stretched.max() == 255
    assert np.abs(stretched.astype(int) - np.asarray(ImageOps.autocontrast(squeezed)).astype(int)).max() <= 1
    assert np.array_equal(augment.apply("Equalize", np.asarray(image), None), np.asarray(ImageOps.equalize(image)))


@pytest.mark.parametrize("name, axis", [("TranslateX", 1), ("TranslateY", 0)])
def test_translation_moves_by_the_original_offset_and_fills_grey(name, axis):
    augment = RandomAugment(magnitude=7)  # 7 pixels
    pixels = np.asarray(random_image(1, size=(30, 30)))
    shifted = augment.apply(name, pixels, np.random.default_rng(0))
    # Which direction was drawn: compare both.
    forward = np.take(pixels, range(7, 30), axis=axis)
    backward = np.take(pixels, range(0, 23), axis=axis)
    kept_left = np.take(shifted, range(0, 23), axis=axis)
    kept_right = np.take(shifted, range(7, 30), axis=axis)
    assert np.array_equal(kept_left, forward) or np.array_equal(kept_right, backward)
    filled = (
        np.take(shifted, range(23, 30), axis=axis)
        if np.array_equal(kept_left, forward)
        else np.take(shifted, range(0, 7), axis=axis)
    )
    assert (filled == 128).all()


def test_shear_x_shifts_each_row_in_proportion_to_its_index():
    augment = RandomAugment(magnitude=10)  # shear factor 0.3
    pixels = np.asarray(random_image(2, size=(40, 30)))
    sheared = augment.apply("ShearX", pixels, np.random.default_rng(0))
    row, shift = 20, 6  # 0.3 · 20 pixels
    matches = [
        np.array_equal(sheared[row, 10:30], pixels[row, 10 - sign * shift : 30 - sign * shift]) for sign in (1, -1)
    ]
    assert any(matches)


def test_rotate_matches_pil_rotation_about_the_original_centre():
    augment = RandomAugment(magnitude=10)  # ±30 degrees about (W / 2, H / 2) in pixel-index coordinates
    image = random_image(4, size=(36, 28))
    rotated = augment.apply("Rotate", np.asarray(image), np.random.default_rng(0))
    candidates = [
        np.asarray(
            image.rotate(angle, resample=Image.Resampling.BILINEAR, center=(18.5, 14.5), fillcolor=(128, 128, 128))
        )
        for angle in (30, -30)
    ]
    differences = [np.abs(rotated.astype(int) - candidate.astype(int))[2:-2, 2:-2].max() for candidate in candidates]
    assert min(differences) <= 1


# ----------------------------------------------------------------------------------------------------------------------
# Crops, flips and the task transforms
# ----------------------------------------------------------------------------------------------------------------------


def test_random_resized_crop_box_respects_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, width, height = random_resized_crop_box(100, 80, (0.5, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= left and left + width <= 100 and 0 <= top and top + height <= 80
        assert 0.5 * 8000 * 0.97 <= width * height <= 8000
        assert 3 / 4 * 0.95 <= width / height <= 4 / 3 * 1.05


def test_train_augmentation_output_size_seed_and_flip():
    image = random_image(5, size=(24, 24))
    augmentation = MPLUGTrainAugmentation(24, scale=(1.0, 1.0), ratio=(1.0, 1.0), rand_augment=False)
    outputs = [np.asarray(augmentation(image, np.random.default_rng(seed))) for seed in range(20)]
    identical = [np.array_equal(out, np.asarray(image)) for out in outputs]
    mirrored = [np.array_equal(out, np.asarray(image)[:, ::-1]) for out in outputs]
    assert all(a or b for a, b in zip(identical, mirrored)) and any(identical) and any(mirrored)
    full = MPLUGTrainAugmentation(IMAGE_SIZE)
    first = full(random_image(), np.random.default_rng(9))
    assert first.size == (IMAGE_SIZE, IMAGE_SIZE)
    assert np.array_equal(np.asarray(first), np.asarray(full(random_image(), np.random.default_rng(9))))
    assert MPLUGTrainAugmentation.for_pretraining(IMAGE_SIZE).scale == (0.2, 1.0)


def test_swap_left_right_swaps_words_only():
    assert (
        swap_left_right("Left of the bright leftmost right-hand cup") == "Right of the bright rightmost left-hand cup"
    )


def test_grounding_flip_mirrors_image_box_and_swaps_left_right():
    image = Image.new("RGB", (32, 32), (255, 255, 255))
    image.paste((255, 0, 0), (2, 4, 10, 20))  # the referred box, xyxy
    augmentation = MPLUGGroundingAugmentation(
        32, scales=[32], crop_probability=0.0, color_jitter=0.0, random_translate=False
    )
    seen = set()
    for seed in range(12):
        pixels, box, text = augmentation(image, [2, 4, 10, 20], "the left red box", np.random.default_rng(seed))
        flipped = text == "the right red box"
        assert flipped or text == "the left red box"
        expected_cx = (32 - 6) / 32 if flipped else 6 / 32
        np.testing.assert_allclose(box, [expected_cx, 12 / 32, 8 / 32, 16 / 32], atol=1e-6)
        red = pixels[1] < -1  # green channel of pure red, CLIP-normalised
        columns = np.nonzero(red.any(axis=0))[0]
        assert (columns.min(), columns.max() + 1) == ((22, 30) if flipped else (2, 10))
        seen.add(flipped)
    assert seen == {True, False}


def test_grounding_augmentation_keeps_the_box_on_the_image_and_is_seeded():
    augmentation = MPLUGGroundingAugmentation(IMAGE_SIZE, crop_min_size=16, crop_max_size=40, crop_resize_sizes=[40])
    for seed in range(10):
        pixels, box, _ = augmentation(
            random_image(seed, (60, 45)), [10, 5, 40, 30], "a dog", np.random.default_rng(seed)
        )
        assert pixels.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
        assert (box[:2] - box[2:] / 2 >= -1e-6).all() and (box[:2] + box[2:] / 2 <= 1 + 1e-6).all()
        again, again_box, _ = augmentation(
            random_image(seed, (60, 45)), [10, 5, 40, 30], "a dog", np.random.default_rng(seed)
        )
        assert np.array_equal(pixels, again) and np.array_equal(box, again_box)


# ----------------------------------------------------------------------------------------------------------------------
# Collators
# ----------------------------------------------------------------------------------------------------------------------


def test_vqa_answer_weights_follow_annotator_frequency():
    answers, weights = vqa_answer_weights(["2", "2", "two", "2"])
    assert answers == ["2", "two"] and weights == pytest.approx([0.75, 0.25])


def test_vqa_collator_builds_weighted_multi_answer_targets(processor):
    collator = MPLUGVQADataCollator(processor)
    examples = [
        {"image": random_image(0), "question": "what is it?", "answer": ["cat", "cat", "dog", "cat"]},
        {"image": random_image(1), "question": "which color?", "answer": "red"},
        {"image": random_image(2), "question": "how many?", "answer": ["2"], "answer_weights": [0.5]},
    ]
    batch = collator(examples)
    assert batch["answer_counts"].tolist() == [2, 1, 1]
    assert batch["answer_weights"].tolist() == pytest.approx([0.75, 0.25, 1.0, 0.5])
    cat, sep = processor.tokenizer.convert_tokens_to_ids(["cat", "[SEP]"])
    assert batch["labels"][0].tolist() == [101, cat, sep]
    assert batch["input_ids"][:, 0].tolist() == [101, 101, 101]
    torch.manual_seed(0)
    model = MPLUGForQuestionAnswering(bert_vocab_config())
    loss = model(**batch).loss
    unweighted = model(**{**batch, "answer_weights": torch.ones(4)}).loss
    assert torch.isfinite(loss) and loss < unweighted  # the weights (all ≤ 1) enter the loss
    inference = collator([{key: value for key, value in example.items() if key != "answer"} for example in examples])
    assert set(inference) == {"pixel_values", "input_ids", "attention_mask"}


def test_vqa_collator_errors_name_the_problem(processor):
    with pytest.raises(ValueError, match="'question'"):
        MPLUGVQADataCollator(processor)([{"image": random_image(), "answer": "x"}])
    with pytest.raises(ValueError, match="some examples"):
        MPLUGVQADataCollator(processor)(
            [{"image": random_image(), "question": "q?", "answer": "x"}, {"image": random_image(), "question": "q?"}]
        )


def test_vqa_collator_groups_questions_by_image_and_trains_like_one_question_per_example(processor):
    """An image asked several questions is encoded once; the loss and its gradients equal the one-question batch."""
    images = [random_image(0), random_image(1)]
    grouped = [
        {"image": images[0], "question": ["what is it?", "is it red?"], "answer": [["cat", "cat", "dog"], "no"]},
        {"image": images[1], "question": ["how many?"], "answer": ["2"], "answer_weights": [[0.5]]},
    ]
    flat = [
        {"image": images[0], "question": "what is it?", "answer": ["cat", "cat", "dog"]},
        {"image": images[0], "question": "is it red?", "answer": "no"},
        {"image": images[1], "question": "how many?", "answer": ["2"], "answer_weights": [0.5]},
    ]
    collator = MPLUGVQADataCollator(processor)
    grouped_batch, flat_batch = collator(grouped), collator(flat)
    assert grouped_batch["pixel_values"].shape[0] == 2 and grouped_batch["image_indices"].tolist() == [0, 0, 1]
    for key in ("input_ids", "attention_mask", "labels", "answer_counts", "answer_weights"):
        assert torch.equal(grouped_batch[key], flat_batch[key]), key
    torch.manual_seed(0)
    model = MPLUGForQuestionAnswering(bert_vocab_config())
    losses, gradients = [], []
    for batch in (grouped_batch, flat_batch):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        losses.append(loss.detach())
        gradients.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gradients[0], gradients[1], rtol=1e-4, atol=1e-6)
    inference = collator([{"image": images[0], "question": ["a?", "b?"]}])
    assert set(inference) == {"pixel_values", "input_ids", "attention_mask", "image_indices"}


def test_vqa_collator_grouped_errors_name_the_problem(processor):
    collator = MPLUGVQADataCollator(processor)
    with pytest.raises(ValueError, match="for some examples but not all"):
        collator([{"image": random_image(), "question": ["a?"]}, {"image": random_image(), "question": "b?"}])
    with pytest.raises(ValueError, match="one entry per question"):
        collator([{"image": random_image(), "question": ["a?", "b?"], "answer": ["x"]}])
    with pytest.raises(ValueError, match="one entry per question"):
        collator([{"image": random_image(), "question": ["a?"], "answer": "x"}])
    with pytest.raises(ValueError, match="empty list of questions"):
        collator([{"image": random_image(), "question": [], "answer": []}])


def test_collator_augmentation_follows_the_torch_seed(processor, tmp_path):
    path = tmp_path / "image.png"
    random_image(7).save(path)
    collator = MPLUGVQADataCollator(
        processor, augmentation=MPLUGTrainAugmentation(IMAGE_SIZE), image_root=str(tmp_path)
    )
    examples = [{"image": "image.png", "question": "q?", "answer": "a"}] * 4
    torch.manual_seed(3)
    first = collator(examples)["pixel_values"]
    torch.manual_seed(3)
    assert torch.equal(first, collator(examples)["pixel_values"])
    assert not torch.equal(first[0], first[1])  # each example gets its own draw


def test_captioning_collator_masks_the_prompt(processor):
    collator = MPLUGCaptioningDataCollator(processor, prompt="a picture of ")
    batch = collator(
        [{"image": random_image(), "caption": "a dog runs"}, {"image": random_image(1), "caption": "cats"}]
    )
    prompt_ids = processor.tokenizer("a picture of", add_special_tokens=False)["input_ids"]
    assert batch["decoder_input_ids"][0, : 1 + len(prompt_ids)].tolist() == [101] + prompt_ids
    assert (batch["labels"][:, : 1 + len(prompt_ids)] == -100).all()
    assert (
        batch["labels"][1].tolist()[1 + len(prompt_ids) :] == processor.tokenizer("cats")["input_ids"][1:] + [-100] * 2
    )
    model = MPLUGForCaptioning(bert_vocab_config())
    assert torch.isfinite(model(**batch).loss)
    generation_inputs = collator([{"image": random_image()}])
    assert generation_inputs["input_ids"].tolist() == [[101] + prompt_ids]


def test_retrieval_collator_marks_captions_of_the_same_image(processor):
    collator = MPLUGRetrievalDataCollator(processor)
    examples = [
        {"image": random_image(0), "caption": "A dog, running!", "image_id": "x"},
        {"image": random_image(1), "caption": "a cat", "image_id": 7},
        {"image": random_image(0), "caption": "the dog runs", "image_id": "x"},
    ]
    batch = collator(examples)
    assert batch["image_ids"].tolist() == [0, 1, 0]
    assert processor.decode(batch["input_ids"][0], skip_special_tokens=True) == "a dog running"
    assert normalize_caption("A man/woman - riding.  Fast", max_words=3) == "a man woman"
    output = MPLUGForRetrieval(bert_vocab_config())(**batch)
    assert torch.isfinite(output.loss) and output.loss_itm is not None


def test_grounding_collator_boxes_and_queries(processor):
    collator = MPLUGGroundingDataCollator(processor, box_format="xywh")
    image = random_image(0, size=(64, 48))
    batch = collator([{"image": image, "text": "the left dog", "bbox": [8, 4, 16, 20]}])
    expected = processor.image_processor.grounding_box_transform([[8, 4, 24, 24]], (48, 64))
    torch.testing.assert_close(batch["labels"], expected)
    assert batch["image_sizes"].tolist() == [[48, 64]]
    # the processor's convention ([CLS] q), as the pipeline and the evaluation runner encode the queries
    assert batch["input_ids"][0].tolist() == processor.encode_text("the left dog")["input_ids"][0].tolist()
    config = bert_vocab_config()
    config.box_prefix_token_id, config.box_bin_start_token_id, config.num_box_bins = 344, 345, 33
    model = MPLUGForGrounding(config)
    assert torch.isfinite(model(**{k: v for k, v in batch.items() if k != "image_sizes"}).loss)
    augmented = MPLUGGroundingDataCollator(processor, augmentation=MPLUGGroundingAugmentation(IMAGE_SIZE))
    torch.manual_seed(0)
    train_batch = augmented([{"image": image, "text": "the left dog", "bbox": [8, 4, 24, 24]}] * 2)
    assert train_batch["pixel_values"].shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE) and train_batch["labels"].shape == (
        2,
        4,
    )


def test_pretraining_collator_masks_fifteen_percent_as_the_original(processor):
    collator = MPLUGPreTrainingDataCollator(processor, max_length=None)
    caption = "a man riding a brown horse along the sandy beach near the blue water on a sunny day"
    torch.manual_seed(0)
    batch = collator([{"image": random_image(i % 3), "caption": caption} for i in range(120)])
    input_ids, masked, labels = batch["input_ids"], batch["mlm_input_ids"], batch["mlm_labels"]
    selected = labels != -100
    assert not selected[:, 0].any()  # [CLS] is never selected
    assert torch.equal(labels[selected], input_ids[selected])
    assert torch.equal(masked[~selected], input_ids[~selected])
    rate = selected.float().mean().item() * input_ids.shape[1] / (input_ids.shape[1] - 1)
    assert 0.12 < rate < 0.18
    mask_share = (masked[selected] == processor.tokenizer.mask_token_id).float().mean().item()
    kept_share = (masked[selected] == input_ids[selected]).float().mean().item()
    assert 0.72 < mask_share < 0.88 and 0.05 < kept_share < 0.16
    # PrefixLM: prefix + continuation give back the text, split at a word boundary.
    for row in range(5):
        prefix = batch["prefix_input_ids"][row][batch["prefix_attention_mask"][row] == 1].tolist()
        continuation = [token for token in batch["labels"][row].tolist() if token != -100]
        assert prefix[0] == 101 and continuation[0] == 101 and continuation[-1] == 102
        assert processor.decode(prefix[1:] + continuation[1:-1], skip_special_tokens=True) == caption
    small = collator([{"image": random_image(i), "caption": caption} for i in range(3)])
    output = MPLUGForPreTraining(bert_vocab_config())(**small)
    assert all(
        torch.isfinite(loss) for loss in (output.loss_itc, output.loss_itm, output.loss_mlm, output.loss_prefix_lm)
    )


@pytest.mark.parametrize("weights", [[float("nan")], [float("inf")], [-0.5], ["heavy"], [None]])
def test_vqa_collator_refuses_non_finite_or_negative_answer_weights(processor, weights):
    example = {"image": random_image(0), "question": "how many?", "answer": ["2"], "answer_weights": weights}
    with pytest.raises(ValueError, match="example 0 of the batch: 'answer_weights'"):
        MPLUGVQADataCollator(processor)([example])


def test_vqa_collator_reads_numeric_answers_as_text(processor):
    collator = MPLUGVQADataCollator(processor)
    numeric = collator([{"image": random_image(0), "question": "how many?", "answer": [2, 2, 3.0]}])
    text = collator([{"image": random_image(0), "question": "how many?", "answer": ["2", "2", "3"]}])
    assert numeric["labels"].tolist() == text["labels"].tolist()
    assert numeric["answer_weights"].tolist() == pytest.approx(text["answer_weights"].tolist())
    for answer in [[float("nan")], [{"a": 1}], [True]]:
        with pytest.raises(ValueError, match="example 0 of the batch"):
            collator([{"image": random_image(0), "question": "how many?", "answer": answer}])


def test_grounding_collator_refuses_non_finite_boxes_and_queries_have_no_sep(processor):
    collator = MPLUGGroundingDataCollator(processor)
    good = {"image": random_image(0, size=(64, 48)), "text": "the dog", "bbox": [8, 4, 16, 20]}
    with pytest.raises(ValueError, match=r"examples \[1\] of the batch have a non-finite 'bbox'"):
        collator([good, {**good, "bbox": [8, float("nan"), 16, 20]}])
    with pytest.raises(ValueError, match="must be 4 numbers"):
        collator([{**good, "bbox": [8, "x", 16, 20]}])
    assert processor.tokenizer.sep_token_id not in collator([good])["input_ids"][0].tolist()
