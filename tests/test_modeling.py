import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import AutoConfig, AutoModel

from mplug_hf import MPLUGConfig, MPLUGModel
from tests.conftest import tiny_config


def make_model(config, impl="eager"):
    torch.manual_seed(0)
    config._attn_implementation = impl
    return MPLUGModel(config).eval()


def test_shapes_and_dtypes(config, inputs):
    model = make_model(config)
    out = model(**inputs)
    assert out.image_states.shape == (2, 17, 32)
    assert out.text_states.shape == (2, 5, 32)
    assert out.fused_image_states.shape == (2, 17, 32) and out.fused_text_states.shape == (2, 5, 32)
    assert out.last_hidden_state.shape == (2, 22, 32)
    assert out.encoder_attention_mask.tolist()[1] == [1] * 17 + [1, 1, 1, 0, 0]
    assert out.last_hidden_state.dtype == torch.float32


def test_presets_match_the_paper():
    base, large = MPLUGConfig.base(), MPLUGConfig.large()
    assert (base.vision_config.hidden_size, base.vision_config.patch_size, base.vision_config.image_size) == (
        768,
        16,
        384,
    )
    assert (
        large.vision_config.hidden_size,
        large.vision_config.patch_size,
        large.vision_config.num_hidden_layers,
    ) == (1024, 14, 24)
    assert (base.stride_layer, large.stride_layer) == (3, 6)
    assert [base.is_connected_fusion_layer(j) for j in range(6)] == [False, False, False, True, False, False]
    assert not any(large.is_connected_fusion_layer(j) for j in range(6))
    assert large.num_image_tokens == 577 and base.num_image_tokens == 577


def test_save_load_round_trip_is_bit_identical(tmp_path, config, inputs):
    model = make_model(config)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "mplug"
    reloaded = AutoModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert type(reloaded) is MPLUGModel
    with torch.no_grad():
        assert torch.equal(model(**inputs).last_hidden_state, reloaded(**inputs).last_hidden_state)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_padding_does_not_change_results(config, inputs, impl):
    model = make_model(config, impl)
    with torch.no_grad():
        batched = model(**inputs)
        single = model(
            input_ids=inputs["input_ids"][1:, :3],
            attention_mask=inputs["attention_mask"][1:, :3],
            pixel_values=inputs["pixel_values"][1:],
        )
    torch.testing.assert_close(batched.fused_text_states[1, :3], single.fused_text_states[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(batched.fused_image_states[1], single.fused_image_states[0], atol=1e-5, rtol=0)


def test_attention_mask_is_respected(config, inputs):
    model = make_model(config)
    changed = inputs["input_ids"].clone()
    changed[1, 3:] = 55  # tokens under the padding mask
    with torch.no_grad():
        a = model(**inputs).fused_text_states[1, :3]
        b = model(**{**inputs, "input_ids": changed}).fused_text_states[1, :3]
        unmasked = model(**{**inputs, "input_ids": changed, "attention_mask": torch.ones_like(changed)})
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert not torch.allclose(a, unmasked.fused_text_states[1, :3], atol=1e-3)


def test_eager_and_sdpa_agree(config, inputs):
    eager, sdpa = make_model(tiny_config(), "eager"), make_model(tiny_config(), "sdpa")
    sdpa.load_state_dict(eager.state_dict())
    with torch.no_grad():
        a, b = eager(**inputs), sdpa(**inputs)
    for name in ("image_states", "text_states", "fused_image_states", "fused_text_states"):
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0)


def test_gradient_checkpointing_gives_same_gradients(config, inputs):
    model = make_model(config).train()
    reference = make_model(tiny_config()).train()
    reference.load_state_dict(model.state_dict())
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    for m in (model, reference):
        m(**inputs).last_hidden_state.pow(2).sum().backward()
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)


def _fusion_layer_lengths(model, inputs):
    """Run the model and report the sequence length each fusion layer processed."""
    lengths = []
    handles = [
        layer.register_forward_hook(
            lambda module, args, output: lengths.append(
                args[0].shape[1] + args[1].shape[1] if module.is_connected else args[1].shape[1]
            )
        )
        for layer in model.fusion_encoder.layers
    ]
    with torch.no_grad():
        out = model(**inputs)
    for handle in handles:
        handle.remove()
    return lengths, out


def test_fusion_schedule_stride_two(inputs):
    config = tiny_config(fusion_layers=4, stride_layer=2)
    model = make_model(config)
    assert [layer.is_connected for layer in model.fusion_encoder.layers] == [False, False, True, False]
    assert [layer.cross_attn is None for layer in model.fusion_encoder.layers] == [False, False, True, False]
    lengths, out = _fusion_layer_lengths(model, inputs)
    assert lengths == [5, 5, 22, 5]  # only the connected layer runs over [V; T]
    assert not torch.equal(out.fused_image_states, out.image_states)


@pytest.mark.parametrize("stride", [4, 6])
def test_fusion_without_connected_layer_leaves_vision_untouched(inputs, stride):
    model = make_model(tiny_config(fusion_layers=4, stride_layer=stride))
    assert not any(layer.is_connected for layer in model.fusion_encoder.layers)
    with torch.no_grad():
        out = model(**inputs)
    assert torch.equal(out.fused_image_states, out.image_states)


def test_vision_projection_when_widths_differ(inputs):
    config = tiny_config(vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                                            num_attention_heads=2, image_size=32, patch_size=8))  # fmt: skip
    model = make_model(config)
    assert model.vision_model.projection is not None
    with torch.no_grad():
        assert model(**inputs).image_states.shape == (2, 17, 32)


def test_video_frames_are_concatenated(config, inputs):
    model = make_model(config)
    frames = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        video = model.get_image_features(frames).last_hidden_state
        per_frame = model.get_image_features(frames[:, 1]).last_hidden_state
    assert video.shape == (2, 3 * 17, 32)
    torch.testing.assert_close(video[:, 17:34], per_frame, atol=1e-6, rtol=0)


def test_bad_inputs_raise_clear_errors(config, inputs):
    model = make_model(config)
    with pytest.raises(ValueError, match="batch size mismatch"):
        model(input_ids=inputs["input_ids"][:1], pixel_values=inputs["pixel_values"])
    with pytest.raises(ValueError, match="expects 32x32"):
        model(input_ids=inputs["input_ids"], pixel_values=torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match="shape"):
        model(input_ids=inputs["input_ids"], pixel_values=torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="length >= 1"):
        model(input_ids=torch.zeros(2, 0, dtype=torch.long), pixel_values=inputs["pixel_values"])
    with pytest.raises(ValueError, match="input_ids"):
        model(input_ids=None, pixel_values=inputs["pixel_values"])
    with pytest.raises(ValueError, match="float tensor"):
        model(input_ids=inputs["input_ids"], pixel_values=torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(StrictDataclassClassValidationError, match="stride_layer must be >= 1"):
        tiny_config(stride_layer=0)


def test_interpolated_position_encoding(config, inputs):
    model = make_model(config)
    with torch.no_grad():
        out = model.get_image_features(torch.randn(1, 3, 48, 48), interpolate_pos_encoding=True).last_hidden_state
    assert out.shape == (1, 37, 32)


def test_corrupt_or_foreign_checkpoints_give_clear_errors(tmp_path, config):
    import json

    from mplug_hf import MPLUGForQuestionAnswering

    MPLUGForQuestionAnswering(config).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        MPLUGForQuestionAnswering.from_pretrained(tmp_path)
    weights.write_bytes(data)
    settings = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**settings, "model_type": "bert"}))
    with pytest.raises(ValueError, match="'bert' model, not an 'mplug' one"):
        MPLUGForQuestionAnswering.from_pretrained(tmp_path)
    shrunk = {**settings, "text_config": {**settings["text_config"], "intermediate_size": 48}}
    (tmp_path / "config.json").write_text(json.dumps(shrunk))
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        MPLUGForQuestionAnswering.from_pretrained(tmp_path)


def test_checkpoints_with_nonfinite_weights_are_refused_naming_the_tensors(tmp_path, config):
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForVisualQuestionAnswering

    from mplug_hf import MPLUGForQuestionAnswering

    MPLUGForQuestionAnswering(config).save_pretrained(tmp_path)
    weights_file = tmp_path / "model.safetensors"
    weights = load_file(weights_file)
    # a fusion matrix and a decoder bias (whatever their names)
    matrix = next(name for name, value in weights.items() if "fusion" in name and value.ndim == 2)
    bias = next(name for name, value in weights.items() if "decoder" in name and name.endswith("bias"))
    poisoned = [matrix, bias]
    weights[poisoned[0]][0, 0] = float("nan")
    weights[poisoned[1]][-1] = float("-inf")
    save_file(weights, weights_file, metadata={"format": "pt"})
    for load in (MPLUGForQuestionAnswering.from_pretrained, AutoModelForVisualQuestionAnswering.from_pretrained):
        with pytest.raises(
            ValueError, match=r"2 tensor\(s\) loaded from .* hold NaN or inf values: .*allow_nonfinite"
        ):
            load(tmp_path)
    with pytest.raises(ValueError) as raised:
        MPLUGForQuestionAnswering.from_pretrained(tmp_path)
    assert all(name in str(raised.value) for name in poisoned)
    with pytest.warns(UserWarning, match="hold NaN or inf values"):
        model, info = MPLUGForQuestionAnswering.from_pretrained(
            tmp_path, allow_nonfinite=True, output_loading_info=True
        )
    assert isinstance(model, MPLUGForQuestionAnswering) and not info["missing_keys"]
    assert not hasattr(model.config, "allow_nonfinite")  # the opt-out is not stored in the config
    # finite in float32 but out of float16's range: inf once loaded in float16
    weights = load_file(weights_file)
    weights[poisoned[0]] = torch.full_like(weights[poisoned[0]], 1e6)
    weights[poisoned[1]] = torch.zeros_like(weights[poisoned[1]])
    save_file(weights, weights_file, metadata={"format": "pt"})
    assert MPLUGForQuestionAnswering.from_pretrained(tmp_path) is not None
    with pytest.raises(ValueError, match=rf"1 tensor\(s\) .*: {poisoned[0]}\b.*range of the dtype"):
        MPLUGForQuestionAnswering.from_pretrained(tmp_path, dtype=torch.float16)
