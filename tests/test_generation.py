"""The fast paths: memory shared by beams / candidates instead of tiled, and HF beam search over it."""

from unittest.mock import patch

import pytest
import torch
from transformers import GenerationMixin

from mplug_hf import MPLUGForCaptioning, MPLUGForQuestionAnswering, fused_attention
from mplug_hf.fused_attention import attend_with_folded_projections, folding_is_cheaper
from mplug_hf.modeling_mplug_text import MPLUGAttention
from tests.conftest import tiny_config


def decode(model, ids, memory, memory_mask, attention_mask=None):
    return model.text_decoder(
        ids, encoder_hidden_states=memory, encoder_attention_mask=memory_mask, attention_mask=attention_mask
    ).logits


def build(cls, attn_implementation="eager"):
    torch.manual_seed(0)
    config = tiny_config()
    config._attn_implementation = attn_implementation
    return cls(config).eval()


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_shared_memory_equals_tiled_memory(inputs, attn_implementation):
    model = build(MPLUGForQuestionAnswering, attn_implementation)
    with torch.no_grad():
        encoded = model.mplug(**inputs)
        memory, memory_mask = encoded.last_hidden_state, encoded.encoder_attention_mask
        answers = torch.tensor([[101, 5, 6, 102], [101, 7, 102, 0], [101, 8, 9, 10]] * 2)
        answer_mask = (answers != 0).long()
        shared = decode(model, answers, memory, memory_mask, answer_mask)
        tiled = decode(
            model, answers, memory.repeat_interleave(3, 0), memory_mask.repeat_interleave(3, 0), answer_mask
        )
    torch.testing.assert_close(shared, tiled, atol=1e-5, rtol=1e-5)


def test_decoder_batch_must_be_a_multiple_of_memory_batch(inputs):
    model = build(MPLUGForQuestionAnswering)
    encoded = model.mplug(**inputs)
    with pytest.raises(ValueError, match="multiple of the memory batch"):
        decode(model, torch.tensor([[101]] * 3), encoded.last_hidden_state, encoded.encoder_attention_mask)


@pytest.mark.parametrize("cls", [MPLUGForCaptioning, MPLUGForQuestionAnswering])
def test_beam_search_shares_memory_and_matches_tiled_decoding(inputs, cls):
    """HF beam search over untiled encoder states gives the sequences and scores of the stock (tiling) expansion,
    while projecting the cross-attention K/V once per item instead of once per beam."""
    model = build(cls)
    model_inputs = inputs if cls is MPLUGForQuestionAnswering else {"pixel_values": inputs["pixel_values"]}
    settings = dict(
        num_beams=3, num_return_sequences=2, max_new_tokens=6, return_dict_in_generate=True, output_scores=True
    )
    projected_rows = []
    hook = model.text_decoder.model.layers[0].cross_attn.k_proj.register_forward_hook(
        lambda module, args, out: projected_rows.append(args[0].shape[0])
    )
    with torch.no_grad():
        shared = model.generate(**model_inputs, **settings)
        assert projected_rows == [2]
        with patch.object(cls, "_expand_inputs_for_generation", GenerationMixin._expand_inputs_for_generation):
            tiled = model.generate(**model_inputs, **settings)
    hook.remove()
    assert projected_rows[-1] == 6
    assert shared.sequences.tolist() == tiled.sequences.tolist()
    torch.testing.assert_close(shared.sequences_scores, tiled.sequences_scores, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "mplug_fused"])
def test_attention_implementations_equal_eager(tmp_path, inputs, attn_implementation):
    """Every implementation, the fused fusion path included, gives eager's memory and answers."""
    build(MPLUGForQuestionAnswering).save_pretrained(tmp_path)
    eager = MPLUGForQuestionAnswering.from_pretrained(tmp_path, attn_implementation="eager").eval()
    other = MPLUGForQuestionAnswering.from_pretrained(tmp_path, attn_implementation=attn_implementation).eval()
    assert other.mplug.fusion_encoder.config._attn_implementation == attn_implementation
    with torch.no_grad():
        torch.testing.assert_close(
            other.mplug(**inputs).last_hidden_state, eager.mplug(**inputs).last_hidden_state, atol=1e-5, rtol=1e-5
        )
        assert other.generate(**inputs, num_beams=2).tolist() == eager.generate(**inputs, num_beams=2).tolist()


@torch.no_grad()
def fused_and_eager_encodings(model, pixel_values, input_ids, mask, image_indices):
    """The fused path's encoding of texts that share images (`image_indices`), then eager attention's over the images
    tiled per text (the model is left on eager)."""
    images = model.mplug.get_image_features(pixel_values).last_hidden_state
    texts = model.mplug.get_text_features(input_ids, mask).last_hidden_state
    shared = model.mplug(image_states=images, text_states=texts, attention_mask=mask, image_indices=image_indices)
    model.set_attn_implementation("eager")
    tiled = model.mplug(image_states=images.index_select(0, image_indices), text_states=texts, attention_mask=mask)
    return shared, tiled


@pytest.mark.parametrize("stride_layer", [2, 5])
def test_fused_path_projects_each_image_once_for_many_questions(inputs, stride_layer):
    """Eight questions about two images: projecting each image's K/V once is cheaper than folding the projections
    into 8 questions' queries, so the first co-attention run projects 2 images; after a connected layer each
    question has its own image tokens and folding wins. The result equals eager attention over tiled images."""
    torch.manual_seed(0)
    config = tiny_config(stride_layer=stride_layer)
    config._attn_implementation = "mplug_fused"
    model = MPLUGForQuestionAnswering(config).eval()
    encoder = model.mplug.fusion_encoder
    image_indices = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0])
    input_ids = torch.tensor([[101, 7, 8], [101, 9, 0], [101, 10, 11], [101, 12, 13]] * 2)
    mask = (input_ids != 0).long()
    projected_rows, folded_layers = [], []
    original_projection = fused_attention.project_run_keys_values

    def counting_projection(attentions, states, indices):
        projected_rows.append(states.shape[0])
        return original_projection(attentions, states, indices)

    for index, layer in enumerate(encoder.layers):
        if layer.cross_attn is not None:
            layer.cross_attn.register_forward_hook(
                lambda module, args, kwargs, output, index=index: (
                    folded_layers.append(index)
                    if kwargs["cross_attention_override"] is attend_with_folded_projections
                    else None
                ),
                with_kwargs=True,
            )
    with patch.object(fused_attention, "project_run_keys_values", counting_projection):
        shared, tiled = fused_and_eager_encodings(model, inputs["pixel_values"], input_ids, mask, image_indices)
    assert projected_rows == [2]
    assert folded_layers == ([3] if stride_layer == 2 else [])
    torch.testing.assert_close(shared.last_hidden_state, tiled.last_hidden_state, atol=1e-5, rtol=1e-5)
    assert shared.encoder_attention_mask.tolist() == tiled.encoder_attention_mask.tolist()


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa", "mplug_fused"])
def test_folded_cross_attention_equals_projected_cross_attention(attn_implementation):
    """Folding the key/value projections into the queries is exact, padded memory tokens included."""
    from transformers.masking_utils import create_bidirectional_mask

    torch.manual_seed(0)
    config = tiny_config().text_config
    config._attn_implementation = attn_implementation
    attention = MPLUGAttention(config, is_cross_attention=True).eval()
    for proj in (attention.k_proj, attention.v_proj):
        torch.nn.init.normal_(proj.bias)  # non-zero biases: the fold drops the key bias and moves the value bias
    queries, memory = torch.randn(3, 4, 32), torch.randn(3, 9, 32)
    memory_padding = torch.ones(3, 9, dtype=torch.long)
    memory_padding[1, 6:] = 0
    mask = create_bidirectional_mask(
        config=config, inputs_embeds=queries, attention_mask=memory_padding, encoder_hidden_states=memory
    )
    outputs, gradients = {}, {}
    for fold in (False, True):
        attention.zero_grad()
        override = attend_with_folded_projections if fold else None
        outputs[fold], _ = attention(queries, mask, key_value_states=memory, cross_attention_override=override)
        outputs[fold].square().sum().backward()
        gradients[fold] = {
            name: torch.zeros_like(parameter) if parameter.grad is None else parameter.grad.clone()
            for name, parameter in attention.named_parameters()
        }
    with torch.no_grad():
        truncated, _ = attention(queries[1:2], None, key_value_states=memory[1:2, :6])
    torch.testing.assert_close(outputs[True], outputs[False], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outputs[True][1:2], truncated, atol=1e-5, rtol=1e-5)
    # trainable through the fold: the same gradients (the key bias gets none either way, softmax ignores it)
    for name in gradients[False]:
        torch.testing.assert_close(gradients[True][name], gradients[False][name], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mask_kind", ["none", "causal", "boolean", "additive"])
def test_matmul_attention_follows_sdpa_conventions(mask_kind):
    """The CPU bfloat16 kernel of `mplug_fused` equals sdpa for every mask sdpa receives (in float32, where
    both are exact), gradients included."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    module = torch.nn.Module()
    module.is_causal = mask_kind == "causal"
    query, key, value = (torch.randn(2, 3, 5, 8, requires_grad=True) for _ in range(3))
    mask = {
        "none": None,
        "causal": None,
        "boolean": torch.rand(2, 1, 5, 5) > 0.4,
        "additive": torch.randn(2, 1, 5, 5),
    }[mask_kind]
    if mask_kind == "boolean":
        mask[..., 0] = True  # no fully masked row: sdpa gives NaN there
    results = []
    for attend in (sdpa_attention_forward, fused_attention.matmul_attention_forward):
        output, weights = attend(module, query, key, value, mask, scaling=0.3)
        assert weights is None
        gradients = torch.autograd.grad(output.square().sum(), (query, key, value))
        results.append((output, *gradients))
    for ours, reference in zip(results[1], results[0]):
        torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "dtype, expected",
    [
        (torch.bfloat16, "matmul_attention_forward"),
        (torch.float16, "sdpa_attention_forward"),  # no float16 arithmetic on most CPUs: matmuls 5-9x slower
        (torch.float32, "sdpa_attention_forward"),
    ],
)
def test_fused_kernel_uses_matmuls_for_bfloat16_on_the_cpu(dtype, expected):
    """On the CPU, torch's flash kernel is slower than bf16 matmuls: `mplug_fused` takes them there and sdpa otherwise,
    with the same outputs as eager attention in that dtype."""
    calls = []
    for name in ("matmul_attention_forward", "sdpa_attention_forward"):
        original = getattr(fused_attention, name)
        calls.append(patch.object(fused_attention, name, side_effect=original, autospec=True))
    with calls[0] as matmul_kernel, calls[1] as sdpa_kernel:
        torch.manual_seed(0)
        module = torch.nn.Module().eval()
        module.is_causal = False
        query, key, value = (torch.randn(2, 3, 5, 8, dtype=dtype) for _ in range(3))
        output, _ = fused_attention.fused_attention_forward(module, query, key, value, None, scaling=0.3)
    used = {"matmul_attention_forward": matmul_kernel.call_count, "sdpa_attention_forward": sdpa_kernel.call_count}
    assert used[expected] == 1 and sum(used.values()) == 1
    reference = torch.softmax((query.float() @ key.float().transpose(2, 3)) * 0.3, -1) @ value.float()
    torch.testing.assert_close(output.float(), reference.transpose(1, 2), atol=3e-2, rtol=3e-2)


def test_fused_path_folds_only_when_cheaper_and_never_with_attention_dropout():
    config = tiny_config().text_config  # width 32, 4 heads
    # B·L·((H−1)·N + D) against I·N·D, with N = 17 image tokens
    assert folding_is_cheaper(config, False, 2, 6, 2, 17)
    assert not folding_is_cheaper(config, False, 2, 7, 2, 17)
    assert not folding_is_cheaper(config, False, 8, 3, 2, 17)
    dropout_config = tiny_config(text_config=dict(hidden_size=32, num_attention_heads=4)).text_config
    assert dropout_config.attention_probs_dropout_prob > 0
    assert folding_is_cheaper(dropout_config, True, 1, 1, 1, 17) is False
    assert folding_is_cheaper(dropout_config, False, 1, 1, 1, 17)


def test_fused_decoder_folds_the_memory_projections_for_short_answers_with_equal_loss_and_gradients(inputs):
    """Training on short answers over a long memory: the fused decoder folds its cross-attention K/V projections,
    with eager's loss and gradients; generation (cache) and candidates sharing a memory still project."""
    torch.manual_seed(0)
    config = tiny_config()
    model = MPLUGForQuestionAnswering(config).train()
    labels = torch.tensor([[101, 7, 102], [101, 9, 102]])
    folded_calls = []
    for layer in model.text_decoder.model.layers:
        layer.cross_attn.register_forward_hook(
            lambda module, args, kwargs, output: folded_calls.append(
                kwargs["cross_attention_override"] is attend_with_folded_projections
            ),
            with_kwargs=True,
        )
    losses, gradients = {}, {}
    for implementation in ("eager", "mplug_fused"):
        model.set_attn_implementation(implementation)
        model.zero_grad()
        losses[implementation] = model(**inputs, labels=labels).loss
        losses[implementation].backward()
        # the cross-attention key bias gets no gradient through the fold (softmax ignores it: zero either way)
        gradients[implementation] = {
            n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in model.named_parameters()
        }
    assert folded_calls == [False] * config.decoder_layers + [True] * config.decoder_layers
    torch.testing.assert_close(losses["mplug_fused"], losses["eager"], atol=1e-5, rtol=1e-5)
    for name, gradient in gradients["eager"].items():
        torch.testing.assert_close(gradients["mplug_fused"][name], gradient, atol=1e-4, rtol=1e-4, msg=name)
    folded_calls.clear()
    with torch.no_grad():
        model.eval().generate(**inputs, max_new_tokens=2)
        memory = model.mplug(**inputs).last_hidden_state
        model.text_decoder(labels.repeat_interleave(2, dim=0), memory)  # two candidate answers share each memory row
    assert folded_calls and not any(folded_calls)


@pytest.mark.slow
def test_flex_attention_equals_eager(tmp_path, inputs):
    """flex_attention (compiled; minutes on CPU) through the same masks, shared memory included."""
    build(MPLUGForQuestionAnswering).save_pretrained(tmp_path)
    eager = MPLUGForQuestionAnswering.from_pretrained(tmp_path, attn_implementation="eager").eval()
    flex = MPLUGForQuestionAnswering.from_pretrained(tmp_path, attn_implementation="flex_attention").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            flex.mplug(**inputs).last_hidden_state, eager.mplug(**inputs).last_hidden_state, atol=1e-5, rtol=1e-5
        )
        settings = dict(num_beams=2, max_new_tokens=4)
        assert flex.generate(**inputs, **settings).tolist() == eager.generate(**inputs, **settings).tolist()


def one_head_vqa_model(attn_implementation: str, stride_layer: int = 2) -> MPLUGForQuestionAnswering:
    """One text head and 65 image tokens: folding the decoder memory into short answers pays off."""
    torch.manual_seed(0)
    config = tiny_config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=8),
        text_config=dict(vocab_size=1000, hidden_size=32, intermediate_size=64, num_attention_heads=1,
                         max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
        stride_layer=stride_layer, initializer_range=0.2,
    )  # fmt: skip
    config.text_config.initializer_range = config.vision_config.initializer_range = 0.2
    config._attn_implementation = attn_implementation
    return MPLUGForQuestionAnswering(config).eval()


def raise_eos_until_items_finish_apart(model, memory, memory_mask, settings) -> None:
    """Raise the [SEP] logit in steps until the items' best hypotheses have different lengths (whatever the random
    initialisation), so that items finish at different steps."""
    from mplug_hf.original_generation import original_beam_search

    for _ in range(40):
        lengths = original_beam_search(model.text_decoder, memory, memory_mask, **settings).lengths[:, 0]
        if lengths.min() < lengths.max():
            return
        with torch.no_grad():
            model.text_decoder.lm_head.decoder.bias[model.config.eos_token_id] += 0.25
    raise AssertionError("no [SEP] bias makes the items finish at different steps")


def vqa_memory(model, image_indices):
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(3, 3, 64, 64, generator=generator)
    input_ids = torch.tensor([[101, 7, 8, 9, 10], [101, 11, 12, 0, 0], [101, 13, 0, 0, 0]] * 2)
    with torch.no_grad():
        return model.mplug(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=(input_ids != 0).long(),
            image_indices=torch.tensor(image_indices),
        )


def test_original_beam_search_folds_short_answers_and_finds_the_original_hypotheses():
    """The fused path folds the memory projections into a short generation (4 tokens × 3 beams over 70 memory tokens)
    and projects once for a long one; both find the hypotheses of the original loop (no cache, tiled memory) on eager
    attention. The first step runs one row per item."""
    from benchmarks.original_style import uncached_tiled_beam_search
    from mplug_hf.fused_attention import FoldedMemoryCache
    from mplug_hf.original_generation import original_beam_search

    model = one_head_vqa_model("mplug_fused")
    encoded = vqa_memory(model, [0, 1, 2, 2, 1, 0])
    memory, memory_mask = encoded.last_hidden_state, encoded.encoder_attention_mask
    short = dict(num_beams=3, min_length=1, max_length=4, num_return_sequences=2)
    raise_eos_until_items_finish_apart(model, memory, memory_mask, short)
    decoder_batches, caches = [], []
    model.text_decoder.register_forward_hook(lambda module, args, output: decoder_batches.append(args[0].shape[0]))
    original_cache = fused_attention.FusedCrossAttentionShortcuts.generation_cache
    for settings, folds in (
        (short, True),
        (dict(num_beams=5, min_length=2, max_length=16, num_return_sequences=3), False),
    ):
        decoder_batches.clear()
        with patch.object(
            fused_attention.FusedCrossAttentionShortcuts,
            "generation_cache",
            lambda self, *args: caches.append(original_cache(self, *args)) or caches[-1],
        ):
            fused = original_beam_search(model.text_decoder, memory, memory_mask, **settings)
        assert isinstance(caches[-1], FoldedMemoryCache) is folds
        assert decoder_batches[:2] == [6, 6 * settings["num_beams"]]
        model.set_attn_implementation("eager")
        eager = original_beam_search(model.text_decoder, memory, memory_mask, **settings)
        reference = uncached_tiled_beam_search(model, memory, memory_mask, **settings)
        model.set_attn_implementation("mplug_fused")
        assert fused.sequences.tolist() == eager.sequences.tolist() == reference.tolist()
        torch.testing.assert_close(fused.scores, eager.scores, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fused.first_token_logits, eager.first_token_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa", "mplug_fused"])
def test_beam_search_over_memory_rows_shared_by_several_items_equals_own_memories(attn_implementation):
    """With a fusion that keeps the image tokens, the questions about one image share one memory row [V; T_1; T_2]
    with per-question masks (`image_shared_memories`): the same hypotheses and first-token logits as each question
    with its own memory [V; T_j]."""
    from mplug_hf.original_generation import original_beam_search
    from mplug_hf.scoring import first_token_logits, image_shared_memories

    model = one_head_vqa_model(attn_implementation, stride_layer=4)  # 4 fusion layers, none connected
    image_indices = [0, 1, 2, 2, 1, 0]
    encoded = vqa_memory(model, image_indices)
    settings = dict(num_beams=3, min_length=1, max_length=6, num_return_sequences=2)
    own = original_beam_search(
        model.text_decoder, encoded.last_hidden_state, encoded.encoder_attention_mask, **settings
    )
    ((positions, memory, memory_mask),) = image_shared_memories(encoded, image_indices)
    assert positions.tolist() == [0, 5, 1, 4, 2, 3] and memory_mask.shape == (3, 2, memory.shape[1])
    shared = original_beam_search(model.text_decoder, memory, memory_mask, **settings)
    assert shared.sequences.tolist() == own.sequences[positions].tolist()
    torch.testing.assert_close(shared.scores, own.scores[positions], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        logits = first_token_logits(model.text_decoder, memory, memory_mask)
    torch.testing.assert_close(logits, own.first_token_logits[positions], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared.first_token_logits, logits, atol=1e-5, rtol=1e-5)


def test_fused_path_attends_texts_grouped_by_image_without_gathering_image_keys(inputs):
    """Texts that come image by image, equally many per image, attend to each image's projected keys/values as one
    group (no copy per text); padded questions included, the output equals eager attention over tiled images."""
    torch.manual_seed(0)
    config = tiny_config()
    config._attn_implementation = "mplug_fused"
    model = MPLUGForQuestionAnswering(config).eval()
    image_indices = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    assert fused_attention.texts_grouped_by_image(image_indices, 2)
    assert not fused_attention.texts_grouped_by_image(torch.tensor([0, 1, 0, 1]), 2)
    assert not fused_attention.texts_grouped_by_image(torch.tensor([0, 0, 1]), 2)
    input_ids = torch.tensor([[101, 7, 8], [101, 9, 0], [101, 10, 11], [101, 12, 13]] * 2)
    mask = (input_ids != 0).long()
    key_batches = []
    original_projection = fused_attention.project_run_keys_values

    def recording_projection(attentions, states, indices):
        overrides = original_projection(attentions, states, indices)
        key_batches.extend(override.keywords["key"].shape[0] for override in overrides)
        return overrides

    with patch.object(fused_attention, "project_run_keys_values", recording_projection):
        shared, tiled = fused_and_eager_encodings(model, inputs["pixel_values"], input_ids, mask, image_indices)
    assert key_batches == [2, 2]  # the first co-attention run: one key/value row per image, not per question
    torch.testing.assert_close(shared.last_hidden_state, tiled.last_hidden_state, atol=1e-5, rtol=1e-5)
