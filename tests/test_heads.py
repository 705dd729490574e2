import pytest
import torch

from mplug_hf import (
    MPLUGForCaptioning,
    MPLUGForGrounding,
    MPLUGForPreTraining,
    MPLUGForQuestionAnswering,
    MPLUGForRetrieval,
    MPLUGImageProcessor,
)
from mplug_hf.original_generation import generate_answer_original, generate_caption_original
from mplug_hf.scoring import rank_answers, retrieve
from tests.conftest import tiny_config


def build(cls, **overrides):
    torch.manual_seed(0)
    config = tiny_config(**overrides)
    config._attn_implementation = "eager"
    return cls(config).eval()


def grads_reach(model, prefixes):
    for prefix in prefixes:
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(prefix)]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), prefix
        assert any(g.abs().sum() > 0 for g in grads), prefix


def test_vqa_weighted_answers_loss_backpropagates(inputs):
    model = build(MPLUGForQuestionAnswering).train()
    labels = torch.tensor([[101, 20, 102, -100], [101, 21, 22, 102], [101, 23, 102, -100]])
    counts, weights = torch.tensor([2, 1]), torch.tensor([0.7, 0.3, 1.0])
    out = model(**inputs, labels=labels, answer_counts=counts, answer_weights=weights)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    grads_reach(model, ["mplug.vision_model", "mplug.text_encoder", "mplug.fusion_encoder", "text_decoder"])
    # the loss is Σ weight · summed CE / questions: recompute it answer by answer
    with torch.no_grad():
        model.eval()
        expected = 0.0
        memory_rows = [0, 0, 1]
        for row, (question, weight) in enumerate(zip(memory_rows, weights)):
            single = model(
                input_ids=inputs["input_ids"][question : question + 1],
                attention_mask=inputs["attention_mask"][question : question + 1],
                pixel_values=inputs["pixel_values"][question : question + 1],
                labels=labels[row : row + 1],
            )
            expected += weight * single.loss
        full = model(**inputs, labels=labels, answer_counts=counts, answer_weights=weights)
    torch.testing.assert_close(full.loss, expected / 2, atol=1e-5, rtol=1e-5)


def test_captioning_loss_backpropagates(inputs):
    model = build(MPLUGForCaptioning).train()
    labels = torch.tensor([[101, 30, 31, 102], [101, 32, 102, -100]])
    out = model(pixel_values=inputs["pixel_values"], labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads_reach(model, ["vision_model", "text_decoder"])


def test_retrieval_and_pretraining_losses_backpropagate(inputs):
    model = build(MPLUGForRetrieval).train()
    out = model(**inputs, return_loss=True)
    assert torch.isfinite(out.loss) and out.loss_itc > 0 and out.loss_itm > 0
    out.loss.backward()
    grads_reach(
        model,
        ["mplug", "contrastive.vision_proj", "contrastive.text_proj", "contrastive.itm_head", "contrastive.temp"],
    )

    model = build(MPLUGForPreTraining).train()
    mlm_ids = inputs["input_ids"].clone()
    mlm_ids[:, 1] = 103
    mlm_labels = torch.full_like(mlm_ids, -100)
    mlm_labels[:, 1] = inputs["input_ids"][:, 1]
    out = model(
        **inputs,
        mlm_input_ids=mlm_ids,
        mlm_labels=mlm_labels,
        prefix_input_ids=inputs["input_ids"][:, :2],
        labels=torch.tensor([[101, 40, 102], [101, 41, 102]]),
    )
    assert all(torch.isfinite(out[k]) for k in ("loss_itc", "loss_itm", "loss_mlm", "loss_prefix_lm"))
    torch.testing.assert_close(out.loss, out.loss_itc + out.loss_itm + out.loss_mlm + out.loss_prefix_lm)
    out.loss.backward()
    grads_reach(model, ["mplug", "mlm_head", "text_decoder", "contrastive.itm_head"])


def test_grounding_loss_backpropagates(inputs):
    model = build(MPLUGForGrounding).train()
    boxes = torch.tensor([[0.5, 0.5, 0.3, 0.4], [0.2, 0.6, 0.1, 0.1]])
    out = model(**inputs, labels=boxes)
    assert torch.isfinite(out.loss) and out.logits.shape == (2, 4, 65)
    out.loss.backward()
    grads_reach(model, ["mplug.fusion_encoder", "text_decoder"])


def greedy_without_cache(model, memory_fn, steps):
    """Reference decoding: re-run the whole prefix every step, no cache."""
    sequences = torch.full((memory_fn().shape[0], 1), 101)
    for _ in range(steps):
        logits = memory_fn(sequences)
        sequences = torch.cat([sequences, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return sequences


def test_vqa_cached_generate_equals_uncached_greedy(inputs):
    model = build(MPLUGForQuestionAnswering)
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False, num_beams=1)
        sequences = torch.full((2, 1), 101)
        for _ in range(6):
            logits = model(**inputs, decoder_input_ids=sequences).logits
            sequences = torch.cat([sequences, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert generated.tolist() == sequences.tolist()


def test_caption_batched_generation_equals_one_by_one(inputs):
    model = build(MPLUGForCaptioning)
    with torch.no_grad():
        batched = model.generate(pixel_values=inputs["pixel_values"], max_new_tokens=5, num_beams=3, min_new_tokens=5)
        single = [
            model.generate(
                pixel_values=inputs["pixel_values"][i : i + 1], max_new_tokens=5, num_beams=3, min_new_tokens=5
            )
            for i in range(2)
        ]
        prompt = torch.tensor([[101, 50, 51]])
        prompted = model.generate(pixel_values=inputs["pixel_values"][:1], input_ids=prompt, max_new_tokens=3)
    assert [row.tolist() for row in batched] == [s[0].tolist() for s in single]
    assert prompted[0, :3].tolist() == [101, 50, 51]


def test_original_beam_search_returns_sorted_hypotheses(inputs):
    model = build(MPLUGForCaptioning)
    out = generate_caption_original(
        model, inputs["pixel_values"], num_beams=3, min_length=2, max_length=5, num_return_sequences=3
    )
    assert out.sequences.shape[:2] == (2, 3)
    assert (out.scores[:, :-1] >= out.scores[:, 1:]).all()
    assert (out.sequences[:, :, 0] == 101).all()
    assert (out.lengths >= 3).all()  # min_length=2 generated tokens + [CLS]


def test_vqa_original_beam_search_batch_independent(inputs):
    model = build(MPLUGForQuestionAnswering)
    batched = generate_answer_original(model, **inputs, num_beams=3, max_length=4, num_return_sequences=2)
    single = generate_answer_original(model,
        input_ids=inputs["input_ids"][1:, :3], attention_mask=inputs["attention_mask"][1:, :3],
        pixel_values=inputs["pixel_values"][1:], num_beams=3, max_length=4, num_return_sequences=2,
    )  # fmt: skip
    length = single.lengths[0, 0]
    assert batched.sequences[1, 0, :length].tolist() == single.sequences[0, 0, :length].tolist()
    torch.testing.assert_close(batched.scores[1], single.scores[0], atol=1e-4, rtol=0)


def test_rank_answers_matches_brute_force(inputs):
    model = build(MPLUGForQuestionAnswering)
    candidates = torch.tensor([[101, 60, 102, 0], [101, 61, 62, 102], [101, 63, 102, 0], [101, 64, 102, 0]])
    mask = (candidates != 0).long()
    ids, probs = rank_answers(
        model, inputs["input_ids"], inputs["pixel_values"], candidates, mask, inputs["attention_mask"], k=4
    )
    with torch.no_grad():
        for b in range(2):
            scores = []
            for c in range(4):
                row = {k: v[b : b + 1] for k, v in inputs.items()}
                labels = candidates[c : c + 1].masked_fill(mask[c : c + 1] == 0, -100)
                out = model(**row, decoder_input_ids=candidates[c : c + 1], decoder_attention_mask=mask[c : c + 1])
                first = out.logits[0, 0].softmax(-1)[candidates[c, 1]].log()
                nll = torch.nn.functional.cross_entropy(
                    out.logits[0, :-1], labels[0, 1:], ignore_index=-100, reduction="sum"
                )
                scores.append(first - nll)
            expected = torch.stack(scores).softmax(0)
            order = expected.argsort(descending=True)
            assert ids[b].tolist() == order.tolist()
            torch.testing.assert_close(probs[b], expected[order], atol=1e-5, rtol=1e-5)


def test_rank_answers_bad_input(inputs):
    model = build(MPLUGForQuestionAnswering)
    candidates = torch.tensor([[101, 60, 102]])
    with pytest.raises(ValueError, match="empty"):
        rank_answers(model, inputs["input_ids"], inputs["pixel_values"], candidates[:0], candidates[:0], k=1)
    with pytest.raises(ValueError, match="k=2"):
        rank_answers(model, inputs["input_ids"], inputs["pixel_values"], candidates, torch.ones_like(candidates), k=2)


def test_retrieve_equals_full_itm_matrix_when_k_covers_everything(inputs):
    model = build(MPLUGForRetrieval)
    texts = torch.tensor([[101, 5, 6, 0], [101, 7, 0, 0], [101, 8, 9, 10]])
    mask = (texts != 0).long()
    i2t, t2i = retrieve(model, inputs["pixel_values"], texts, mask, k=10)
    with torch.no_grad():
        full = torch.zeros(2, 3)
        for i in range(2):
            for j in range(3):
                out = model(
                    input_ids=texts[j : j + 1],
                    attention_mask=mask[j : j + 1],
                    pixel_values=inputs["pixel_values"][i : i + 1],
                )
                full[i, j] = out.itm_logits[0, 1]
    torch.testing.assert_close(i2t, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(t2i, full.t(), atol=1e-5, rtol=0)
    i2t_top1, _ = retrieve(model, inputs["pixel_values"], texts, mask, k=1)
    assert ((i2t_top1 == -100).sum(dim=1) == 2).all()
    # video retrieval's score: ITM + ITC similarity
    with torch.no_grad():
        sims = (
            model.get_image_features(inputs["pixel_values"]).pooler_output
            @ model.get_text_features(texts, mask).pooler_output.t()
        )
    i2t_sum, t2i_sum = retrieve(model, inputs["pixel_values"], texts, mask, k=10, add_itc=True)
    torch.testing.assert_close(i2t_sum, full + sims, atol=1e-5, rtol=0)
    torch.testing.assert_close(t2i_sum, (full + sims).t(), atol=1e-5, rtol=0)


def test_zero_shot_logits_for_unequal_batches(inputs):
    model = build(MPLUGForRetrieval)
    texts = torch.tensor([[101, 5, 6], [101, 7, 8], [101, 9, 10]])
    out = model(input_ids=texts, pixel_values=inputs["pixel_values"])
    assert out.logits_per_image.shape == (2, 3) and out.itm_logits is None
    with pytest.raises(ValueError, match="aligned pairs"):
        model(input_ids=texts, pixel_values=inputs["pixel_values"], return_loss=True)


def test_grounding_box_token_round_trip():
    model = build(MPLUGForGrounding)
    boxes = torch.rand(50, 4)
    recovered = model.tokens_to_boxes(model.boxes_to_tokens(boxes))
    assert ((recovered - boxes).abs() <= 1 / 64 + 1e-6).all()
    tokens = model.boxes_to_tokens(torch.tensor([[0.0, 1.0, 0.5, 0.25]]))
    assert tokens.tolist() == [[501, 501 + 64, 501 + 32, 501 + 16]]


def test_grounding_greedy_boxes_and_bad_labels(inputs):
    model = build(MPLUGForGrounding)
    boxes = model(**inputs).pred_boxes
    assert boxes.shape == (2, 4) and ((boxes >= 0) & (boxes <= 1)).all()
    pixel = MPLUGImageProcessor(size={"height": 32, "width": 32}).post_process_grounding(
        boxes, torch.tensor([[60, 80], [100, 50]])
    )
    assert (pixel[:, 2] <= torch.tensor([80.0, 50.0])).all() and (pixel[:, 3] <= torch.tensor([60.0, 100.0])).all()
    with pytest.raises(ValueError, match="labels must be finite boxes"):
        model(**inputs, labels=torch.rand(3, 4))
    with pytest.raises(ValueError, match=r"labels must be finite boxes of shape \(2, 4\), got NaN or inf values"):
        model(**inputs, labels=torch.full((2, 4), float("nan")))


def test_vqa_mismatched_answers_raise(inputs):
    model = build(MPLUGForQuestionAnswering)
    with pytest.raises(ValueError, match="batch size mismatch"):
        model(**inputs, labels=torch.tensor([[101, 5, 102]] * 3))
    with pytest.raises(ValueError, match="answer_counts"):
        model(**inputs, labels=torch.tensor([[101, 5, 102]] * 3), answer_counts=torch.tensor([1, 1]))


def test_tied_decoder_embeddings_and_save_load(tmp_path, inputs):
    model = build(MPLUGForCaptioning)
    assert model.text_decoder.lm_head.decoder.weight is model.text_decoder.model.embeddings.word_embeddings.weight
    model.save_pretrained(tmp_path)
    reloaded = MPLUGForCaptioning.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert (
        reloaded.text_decoder.lm_head.decoder.weight is reloaded.text_decoder.model.embeddings.word_embeddings.weight
    )
    labels = torch.tensor([[101, 30, 102], [101, 31, 102]])
    with torch.no_grad():
        assert torch.equal(model(pixel_values=inputs["pixel_values"], labels=labels).logits,
                           reloaded(pixel_values=inputs["pixel_values"], labels=labels).logits)  # fmt: skip
