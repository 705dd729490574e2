"""transformers' model contract, held by every mPLUG class: recorded outputs, tuples, save/load, initialisation,
tied and resized embeddings, kernels, caches and keyword arguments."""

import warnings

import pytest
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from mplug_hf import (
    MPLUGForCaptioning,
    MPLUGForGrounding,
    MPLUGForPreTraining,
    MPLUGForQuestionAnswering,
    MPLUGForRetrieval,
    MPLUGModel,
    MPLUGVisionModel,
)
from tests.conftest import tiny_config


HEADS = [MPLUGModel, MPLUGForQuestionAnswering, MPLUGForCaptioning, MPLUGForRetrieval, MPLUGForGrounding]
DECODER_HEADS = [MPLUGForQuestionAnswering, MPLUGForCaptioning, MPLUGForGrounding, MPLUGForPreTraining]


def build(cls, attn_implementation="eager", **overrides):
    torch.manual_seed(0)
    config = tiny_config(**overrides)
    config._attn_implementation = attn_implementation
    return cls(config).eval()


def head_inputs(cls, inputs):
    if cls is MPLUGVisionModel:
        return {"pixel_values": inputs["pixel_values"]}
    if cls is MPLUGForCaptioning:
        return {"pixel_values": inputs["pixel_values"], "decoder_input_ids": inputs["input_ids"]}
    if cls is MPLUGForQuestionAnswering:
        return {**inputs, "decoder_input_ids": torch.tensor([[101, 5, 6], [101, 7, 8]])}
    if cls is MPLUGForGrounding:
        return {**inputs, "labels": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.4, 0.1]])}
    return dict(inputs)


def main_tensor(output):
    for name in ("logits", "logits_per_image", "loss", "last_hidden_state"):
        if getattr(output, name, None) is not None:
            return getattr(output, name)
    raise AssertionError(f"no main tensor in {type(output).__name__}")


def test_vision_model_records_every_layer(inputs):
    model = build(MPLUGVisionModel)
    out = model(inputs["pixel_values"], output_attentions=True, output_hidden_states=True)
    layers = model.config.vision_config.num_hidden_layers
    assert len(out.hidden_states) == layers + 1 and len(out.attentions) == layers
    assert out.hidden_states[0].shape == (2, 17, 32)
    assert out.attentions[0].shape == (2, 2, 17, 17)  # (batch, heads, tokens, tokens)
    assert isinstance(model.get_input_embeddings(), torch.nn.Conv2d)


def test_multimodal_encoder_records_text_and_fusion_states(inputs):
    model = build(MPLUGModel)
    out = model(**inputs, output_attentions=True, output_hidden_states=True)
    config = model.config
    # embeddings + text-encoder layers + the text part of every fusion layer
    assert len(out.hidden_states) == 1 + config.text_encoder_layers + config.fusion_layers
    assert all(state.shape == (2, 5, 32) for state in out.hidden_states)
    torch.testing.assert_close(out.hidden_states[-1], out.fused_text_states)
    torch.testing.assert_close(out.hidden_states[config.text_encoder_layers], out.text_states)
    # self-attention of every text-encoder and fusion layer; a connected layer spans [V; T] = 17 + 5 tokens
    assert len(out.attentions) == config.text_encoder_layers + config.fusion_layers
    connected = [j for j in range(config.fusion_layers) if config.is_connected_fusion_layer(j)]
    assert out.attentions[config.text_encoder_layers + connected[0]].shape == (2, 4, 22, 22)
    assert len(out.cross_attentions) == config.fusion_layers - len(connected)
    assert out.cross_attentions[0].shape == (2, 4, 5, 17)
    assert len(out.image_outputs.hidden_states) == config.vision_config.num_hidden_layers + 1
    assert model(**inputs).hidden_states is None


@pytest.mark.parametrize("cls", [MPLUGForQuestionAnswering, MPLUGForCaptioning])
def test_decoder_heads_record_decoder_and_encoder_states(inputs, cls):
    model = build(cls)
    out = model(**head_inputs(cls, inputs), output_attentions=True, output_hidden_states=True)
    layers = model.config.decoder_layers
    assert len(out.decoder_hidden_states) == layers + 1
    assert len(out.decoder_attentions) == layers and len(out.cross_attentions) == layers
    memory_length = out.encoder_last_hidden_state.shape[1]
    assert out.cross_attentions[0].shape[-1] == memory_length
    assert out.encoder_hidden_states is not None and out.encoder_attentions is not None


@pytest.mark.parametrize("cls", [MPLUGVisionModel, *HEADS, MPLUGForPreTraining])
def test_return_dict_false_gives_the_tuple_of_the_output(inputs, cls):
    model = build(cls)
    kwargs = head_inputs(cls, inputs)
    torch.manual_seed(1)
    as_dict = model(**kwargs)
    torch.manual_seed(1)
    as_tuple = model(**kwargs, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.to_tuple()[0])
    model.config.return_dict = False
    torch.manual_seed(1)
    assert isinstance(model(**kwargs), tuple)


@pytest.mark.parametrize("cls", [MPLUGVisionModel, *HEADS, MPLUGForPreTraining])
def test_unknown_keyword_arguments_raise(inputs, cls):
    model = build(cls)
    with pytest.raises(TypeError, match="unexpected keyword arguments: atention_mask"):
        model(**head_inputs(cls, inputs), atention_mask=inputs["attention_mask"])


def test_nonzero_token_type_ids_are_refused_and_zeros_accepted(inputs):
    model = build(MPLUGModel)
    model(**inputs, token_type_ids=torch.zeros_like(inputs["input_ids"]))
    with pytest.raises(ValueError, match="single token type"):
        model(**inputs, token_type_ids=torch.ones_like(inputs["input_ids"]))


@pytest.mark.parametrize("cls", [*HEADS, MPLUGForPreTraining])
def test_every_head_saves_and_reloads_identically(tmp_path, inputs, cls):
    model = build(cls)
    model.save_pretrained(tmp_path)
    reloaded = cls.from_pretrained(tmp_path, attn_implementation="eager").eval()
    kwargs = head_inputs(cls, inputs)
    torch.manual_seed(1)
    expected = main_tensor(model(**kwargs))
    torch.manual_seed(1)
    torch.testing.assert_close(main_tensor(reloaded(**kwargs)), expected)


@pytest.mark.parametrize("cls", [MPLUGForRetrieval, MPLUGForPreTraining])
def test_missing_momentum_buffers_are_initialised(tmp_path, cls):
    build(cls).save_pretrained(tmp_path)  # no momentum encoders in the checkpoint
    model = cls.from_pretrained(tmp_path, momentum_queue_size=8)
    momentum = model.momentum_encoders
    assert int(momentum.queue_ptr) == 0 and not bool(momentum.initialized)
    assert (momentum.idx_queue == -100).all()
    for queue in (momentum.image_queue, momentum.text_queue):
        torch.testing.assert_close(queue.norm(dim=0), torch.ones(8))


@pytest.mark.parametrize("cls", DECODER_HEADS)
def test_resizing_the_vocabulary_resizes_every_tied_embedding(tmp_path, inputs, cls):
    model = build(cls)
    new_size = model.config.text_config.vocab_size + 6
    model.resize_token_embeddings(new_size)
    decoder = model.text_decoder
    assert decoder.get_input_embeddings().weight.shape[0] == new_size
    assert decoder.lm_head.decoder.weight is decoder.model.embeddings.word_embeddings.weight
    assert model.get_input_embeddings().weight.shape[0] == new_size
    assert model.config.text_config.vocab_size == new_size
    new_token = new_size - 1
    with torch.no_grad():
        logits = decoder(torch.tensor([[101, new_token]]), torch.randn(1, 3, 32)).logits
    assert logits.shape[-1] == new_size
    model.save_pretrained(tmp_path)
    reloaded = cls.from_pretrained(tmp_path)
    assert reloaded.text_decoder.get_input_embeddings().weight.shape[0] == new_size


@pytest.mark.parametrize("attn_implementation", ["sdpa", "mplug_fused"])
def test_kernels_give_eager_hidden_states(inputs, attn_implementation):
    eager = build(MPLUGModel)
    other = build(MPLUGModel, attn_implementation)
    with torch.no_grad():
        expected = eager(**inputs, output_hidden_states=True)
        actual = other(**inputs, output_hidden_states=True)
    assert len(actual.hidden_states) == len(expected.hidden_states)
    mask = inputs["attention_mask"].bool()
    for got, want in zip(actual.hidden_states, expected.hidden_states):
        torch.testing.assert_close(got[mask], want[mask], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cls", [MPLUGForQuestionAnswering, MPLUGVisionModel])
def test_set_attn_implementation_reaches_every_sub_config_without_warnings(inputs, cls):
    """The sub-models share one MPLUGConfig, so no sub-model owns the text/vision sub-configs the layers read: switching
    the kernel sets them all, quietly, and an unknown kernel is refused."""
    from transformers.testing_utils import CaptureLogger
    from transformers.utils import logging

    model = build(cls)
    for implementation, expected in (
        ("sdpa", "sdpa"),
        ("mplug_fused", "mplug_fused"),
        ("eager", "eager"),
        (None, "sdpa"),
    ):
        with CaptureLogger(logging.get_logger("transformers.modeling_utils")) as captured:
            model.set_attn_implementation(implementation)  # None: the default kernel
        assert captured.out == ""
        configs = (model.config, model.config.text_config, model.config.vision_config)
        assert [config._attn_implementation for config in configs] == [expected] * 3
    with pytest.raises(ValueError, match="not supported"):
        model.set_attn_implementation("no-such-kernel")
    with pytest.raises(TypeError, match="attn_implementation must be a kernel name .* got int"):
        model.set_attn_implementation(2)


@pytest.mark.parametrize("cls", [MPLUGForQuestionAnswering, MPLUGForCaptioning])
def test_generation_with_and_without_cache_agree(inputs, cls):
    model = build(cls)
    kwargs = inputs if cls is MPLUGForQuestionAnswering else {"pixel_values": inputs["pixel_values"]}
    cached = model.generate(**kwargs, max_new_tokens=5, do_sample=False, use_cache=True)
    uncached = model.generate(**kwargs, max_new_tokens=5, do_sample=False, use_cache=False)
    assert cached.tolist() == uncached.tolist()


def test_cache_continues_a_prefix_and_past_key_values_is_deprecated(inputs):
    model = build(MPLUGForQuestionAnswering)
    answer = torch.tensor([[101, 5, 6, 7], [101, 8, 9, 10]])
    with torch.no_grad():
        full = model(**inputs, decoder_input_ids=answer).logits
        prefix = model(**inputs, decoder_input_ids=answer[:, :3], use_cache=True)
        step = model(
            encoder_outputs=model.mplug(**inputs), decoder_input_ids=answer[:, 3:], cache=prefix.cache, use_cache=True
        )
        torch.testing.assert_close(step.logits[:, 0], full[:, 3], atol=1e-5, rtol=1e-5)
        prefix = model(**inputs, decoder_input_ids=answer[:, :3], use_cache=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            old_name = model(**inputs, decoder_input_ids=answer[:, 3:], past_key_values=prefix.cache, use_cache=True)
    assert any("past_key_values" in str(warning.message) for warning in caught)
    torch.testing.assert_close(old_name.logits[:, 0], full[:, 3], atol=1e-5, rtol=1e-5)


def test_feature_getters_return_model_outputs(inputs):
    encoder = build(MPLUGModel)
    image = encoder.get_image_features(inputs["pixel_values"])
    text = encoder.get_text_features(inputs["input_ids"], inputs["attention_mask"])
    assert isinstance(image, BaseModelOutputWithPooling) and image.last_hidden_state.shape == (2, 17, 32)
    assert text.pooler_output.shape == (2, 32)
    retrieval = build(MPLUGForRetrieval)
    features = retrieval.get_image_features(inputs["pixel_values"])
    assert features.last_hidden_state.shape == (2, 17, 32) and features.pooler_output.shape == (2, 16)
    torch.testing.assert_close(features.pooler_output.norm(dim=-1), torch.ones(2))
    assert isinstance(retrieval.get_text_features(inputs["input_ids"], return_dict=False), tuple)


@pytest.mark.parametrize("cls", [MPLUGForQuestionAnswering, MPLUGForRetrieval])
def test_gradient_checkpointing_keeps_the_loss(inputs, cls):
    model = build(cls).train()
    kwargs = (
        {**inputs, "labels": torch.tensor([[101, 5, 102], [101, 6, 102]])}
        if cls is MPLUGForQuestionAnswering
        else {**inputs, "return_loss": True}
    )
    torch.manual_seed(2)
    plain = model(**kwargs).loss
    model.gradient_checkpointing_enable()
    torch.manual_seed(2)
    checkpointed = model(**kwargs).loss
    checkpointed.backward()
    torch.testing.assert_close(checkpointed, plain)


def test_positional_generate_as_in_blip(inputs):
    model = build(MPLUGForQuestionAnswering)
    keywords = model.generate(**inputs, max_new_tokens=3)
    positional = model.generate(
        inputs["input_ids"], inputs["pixel_values"], attention_mask=inputs["attention_mask"], max_new_tokens=3
    )
    assert positional.tolist() == keywords.tolist()


def test_labels_in_the_blip_habit_are_refused_or_fixed(inputs):
    model = build(MPLUGForQuestionAnswering)
    no_end = torch.tensor([[101, 5, 6, 0], [101, 7, 0, 0]])  # processor(text=answer).input_ids: no [SEP]
    with pytest.raises(ValueError, match="encode_targets"):
        model(**inputs, labels=no_end)
    padded = torch.tensor([[101, 5, 102, 0], [101, 7, 8, 102]])
    masked = padded.masked_fill(padded == 0, -100)
    torch.testing.assert_close(model(**inputs, labels=padded).loss, model(**inputs, labels=masked).loss)


def test_bad_tensors_are_named_at_the_boundary(inputs):
    model = build(MPLUGForQuestionAnswering)
    with pytest.raises(ValueError, match="NaN or infinite"):
        model(
            **{**inputs, "pixel_values": inputs["pixel_values"].clone().fill_(float("nan"))},
            decoder_input_ids=inputs["input_ids"],
        )
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(**{**inputs, "input_ids": inputs["input_ids"] + 5000}, decoder_input_ids=inputs["input_ids"])
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(**{**inputs, "attention_mask": inputs["attention_mask"][:, :3]}, decoder_input_ids=inputs["input_ids"])
    with pytest.raises(ValueError, match="batch size mismatch"):
        model(
            **{**inputs, "input_ids": inputs["input_ids"][:1], "attention_mask": None},
            decoder_input_ids=inputs["input_ids"][:1],
        )


def test_text_features_record_the_text_encoder(inputs):
    model = build(MPLUGModel)
    out = model.get_text_features(
        inputs["input_ids"], inputs["attention_mask"], output_hidden_states=True, output_attentions=True
    )
    assert len(out.hidden_states) == model.config.text_encoder_layers + 1
    assert len(out.attentions) == model.config.text_encoder_layers
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state)
