# Copyright 2026 The mplug_hf Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""PyTorch mPLUG: CLIP ViT + BERT text encoder + cross-modal skip-connected fusion + BERT decoder."""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPooling,
    Seq2SeqLMOutput,
)
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, auto_docstring, can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_mplug import MPLUGConfig, MPLUGTextConfig, MPLUGVisionConfig
from .fused_attention import cross_attention_shortcuts
from .loss_mplug import grounding_loss, weighted_answer_loss
from .modeling_mplug_text import (
    MPLUGMLP,
    MPLUGAttention,
    MPLUGLMHead,
    MPLUGTextDecoder,
    MPLUGTextLayer,
    MPLUGTextModel,
    MPLUGTextPreTrainedModel,
)
from .momentum_distillation import (
    MPLUGMomentumEncoders,
    hard_negative_itm_loss,
    image_text_contrastive_loss,
    init_momentum_buffers,
)
from .original_generation import reorder_shared_memory_cache
from .validation import (
    check_forward_kwargs,
    validate_pixel_values,
    validate_target_labels,
    validate_text_inputs,
)


def resize_position_embedding(position_embedding: torch.Tensor, num_patches: int) -> torch.Tensor:
    """
    Resize a ViT positional embedding `(1 + g², width)` (CLS row first, grid row-major) to `(1 + num_patches, width)`
    by bilinear interpolation of the grid (align_corners=False), as the original `resize_pos_embed` does.
    """
    cls_row, grid = position_embedding[:1], position_embedding[1:]
    old_side, new_side = math.isqrt(grid.shape[0]), math.isqrt(num_patches)
    if old_side**2 != grid.shape[0] or new_side**2 != num_patches:
        raise ValueError(
            f"cannot resize a positional embedding of {grid.shape[0]} patches to {num_patches}: both must be squares"
        )
    if old_side == new_side:
        return position_embedding
    grid = grid.reshape(1, old_side, old_side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(new_side, new_side), mode="bilinear", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_side * new_side, -1).to(position_embedding.dtype)
    return torch.cat([cls_row, grid], dim=0)


class MPLUGVisionEmbeddings(nn.Module):
    def __init__(self, config: MPLUGVisionConfig):
        super().__init__()
        self.config = config
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, config.patch_size, stride=config.patch_size, bias=False
        )
        self.class_embedding = nn.Parameter(torch.zeros(config.hidden_size))
        self.position_embedding = nn.Parameter(torch.zeros(config.num_patches + 1, config.hidden_size))

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """`pixel_values` (batch, channels, H, W) → (batch, 1 + num_patches, width)."""
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        patches = patches.flatten(2).transpose(1, 2)
        class_token = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        embeddings = torch.cat([class_token, patches], dim=1)
        position_embedding = self.position_embedding
        # CODEPATH: every checkpoint at its training resolution skips this; other resolutions (the original's
        # fine-tuning at 336/384/576 px, video at any size) interpolate the grid.
        if interpolate_pos_encoding and patches.shape[1] != position_embedding.shape[0] - 1:
            position_embedding = resize_position_embedding(position_embedding, patches.shape[1])
        return embeddings + position_embedding.to(embeddings.dtype)


class MPLUGVisionLayer(GradientCheckpointingLayer):
    """Pre-LayerNorm CLIP block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: MPLUGVisionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = MPLUGAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MPLUGMLP(config)

    def forward(self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> torch.Tensor:
        attn_output, _ = self.self_attn(self.layer_norm1(hidden_states), **kwargs)
        hidden_states = hidden_states + attn_output
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


class MPLUGVisionProjection(nn.Module):
    """Projects ViT tokens to the text width (mPLUG-large: 1024 → 768)."""

    def __init__(self, config: MPLUGConfig):
        super().__init__()
        text_config = config.text_config
        self.dense = nn.Linear(config.vision_config.hidden_size, text_config.hidden_size)
        self.layer_norm = nn.LayerNorm(text_config.hidden_size, eps=text_config.layer_norm_eps)
        self.dropout = nn.Dropout(text_config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.layer_norm(self.dense(hidden_states)))


@auto_docstring
class MPLUGPreTrainedModel(MPLUGTextPreTrainedModel):
    input_modalities = ("image", "text")
    _no_split_modules = ["MPLUGVisionLayer", "MPLUGTextLayer", "MPLUGFusionLayer", "MPLUGTextEmbeddings"]

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, MPLUGVisionEmbeddings):
            init.normal_(module.class_embedding, std=std)
            init.normal_(module.position_embedding, std=std)
        elif isinstance(module, MPLUGContrastiveHead):
            init.constant_(module.temp, self.config.contrastive_temperature)
        elif isinstance(module, MPLUGMomentumEncoders):
            init_momentum_buffers(module, init)


class MPLUGFusionLayer(MPLUGTextLayer):
    """
    One layer of the cross-modal skip-connected fusion. A *connected* layer runs full self-attention over [V; T],
    then V ← V + X_V and T ← X_T (the skip connection). An *asymmetric co-attention* layer lets T attend to itself
    and to V, and leaves V untouched (its cross-attention is the only place vision enters the text).
    """

    def __init__(self, config: MPLUGTextConfig, is_connected: bool):
        super().__init__(config, has_cross_attention=not is_connected)
        self.is_connected = is_connected

    def forward(
        self,
        image_states: torch.Tensor,
        text_states: torch.Tensor,
        masks: dict[str, torch.Tensor | None],
        cross_attention_override: Callable | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.is_connected:
            joint = super().forward(torch.cat([image_states, text_states], dim=1), masks["joint"], **kwargs)
            num_image_tokens = image_states.shape[1]
            return image_states + joint[:, :num_image_tokens], joint[:, num_image_tokens:]
        text_states = super().forward(
            text_states,
            masks["text"],
            image_states,
            encoder_attention_mask=masks["cross"],
            cross_attention_override=cross_attention_override,
            **kwargs,
        )
        return image_states, text_states


@auto_docstring(
    custom_intro="""
    Output of [`MPLUGModel`]: every stage of the multimodal encoder.
    """
)
@dataclass
class MPLUGModelOutput(ModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_image_tokens + text_length, hidden_size)`):
        The decoder memory `[fused image states; fused text states]`.
    encoder_attention_mask (`torch.LongTensor` of shape `(batch_size, num_image_tokens + text_length)`):
        Mask of the memory: ones for image tokens, the text attention mask for text tokens.
    image_states (`torch.FloatTensor` of shape `(batch_size, num_image_tokens, hidden_size)`):
        Visual encoder output (after the width projection of mPLUG-large) for each text, before fusion.
    text_states (`torch.FloatTensor` of shape `(batch_size, text_length, hidden_size)`):
        Text encoder output, before fusion.
    fused_image_states (`torch.FloatTensor` of shape `(batch_size, num_image_tokens, hidden_size)`):
        Image states after fusion (V_out).
    fused_text_states (`torch.FloatTensor` of shape `(batch_size, text_length, hidden_size)`):
        Text states after fusion (T_out).
    hidden_states (`tuple(torch.FloatTensor)`, returned with `output_hidden_states=True`):
        Text states: the text embeddings, the output of every text-encoder layer, then the text part of every fusion
        layer's output, each `(batch_size, text_length, hidden_size)`.
    attentions (`tuple(torch.FloatTensor)`, returned with `output_attentions=True`):
        Self-attention probabilities of the text-encoder and fusion layers (a connected layer's span [V; T]).
    cross_attentions (`tuple(torch.FloatTensor)`, returned with `output_attentions=True`):
        Text → image probabilities of the co-attention fusion layers.
    image_outputs (`BaseModelOutputWithPooling`):
        The output of the [`MPLUGVisionModel`] (with its own hidden states and attentions when asked).
    """

    last_hidden_state: torch.FloatTensor | None = None
    encoder_attention_mask: torch.LongTensor | None = None
    image_states: torch.FloatTensor | None = None
    text_states: torch.FloatTensor | None = None
    fused_image_states: torch.FloatTensor | None = None
    fused_text_states: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    image_outputs: BaseModelOutputWithPooling | None = None


@auto_docstring(
    custom_intro="""
    The fusion schedule: layer j is connected when `config.is_connected_fusion_layer(j)` (`j != 0 and
    j % stride_layer == 0`), a co-attention layer otherwise. Because V is frozen between connected layers, the
    fused attention path may prepare the image keys/values of each run of co-attention layers at once (see
    `mplug_hf.fused_attention`), before the first connected layer once per *image* (`image_indices`).
    """
)
class MPLUGFusionEncoder(MPLUGPreTrainedModel):
    _can_record_outputs = {
        # the text part of each layer's (image_states, text_states)
        "hidden_states": OutputRecorder(MPLUGFusionLayer, index=1, capture_initial_hidden_state=False),
        "attentions": OutputRecorder(MPLUGAttention, index=1, layer_name="self_attn"),
        "cross_attentions": OutputRecorder(MPLUGAttention, index=1, layer_name="cross_attn"),
    }

    def __init__(self, config: MPLUGConfig):
        super().__init__(config)
        self.layers = nn.ModuleList(
            [
                MPLUGFusionLayer(config.text_config, config.is_connected_fusion_layer(j))
                for j in range(config.fusion_layers)
            ]
        )
        self.post_init()

    @capture_outputs(tie_last_hidden_states=False)
    @auto_docstring
    def forward(
        self,
        image_states: torch.Tensor,
        text_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_indices: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> "MPLUGModelOutput":
        r"""
        image_states (`torch.FloatTensor` of shape `(num_images, num_image_tokens, hidden_size)`):
            Image tokens; one per text unless `image_indices`.
        text_states (`torch.FloatTensor` of shape `(batch_size, text_length, hidden_size)`):
            Text encoder output.
        image_indices (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            The image of each text.
        """
        num_texts, num_images = text_states.shape[0], image_states.shape[0]
        if image_indices is not None:
            image_indices = torch.as_tensor(image_indices, device=image_states.device)
            if image_indices.shape != (num_texts,) or image_indices.is_floating_point():
                raise ValueError(f"image_indices must be integers, one per text ({num_texts}), got {image_indices}")
            if not bool(((image_indices >= 0) & (image_indices < num_images)).all()):
                raise ValueError(f"image_indices must lie in [0, {num_images - 1}] (one per image)")
        elif num_images != num_texts:
            raise ValueError(
                f"batch size mismatch: {num_images} images but {num_texts} texts; pass image_indices to ask several "
                "questions about one image"
            )
        if attention_mask is None:
            attention_mask = text_states.new_ones(text_states.shape[:2], dtype=torch.long)
        text_config = self.config.text_config
        distinct_images = image_states
        if image_indices is not None:
            image_states = image_states.index_select(0, image_indices)
        unfused_image_states = image_states
        image_mask = attention_mask.new_ones(image_states.shape[:2])
        masks = {
            "text": create_bidirectional_mask(
                config=text_config, inputs_embeds=text_states, attention_mask=attention_mask
            ),
            "cross": create_bidirectional_mask(
                config=text_config,
                inputs_embeds=text_states,
                attention_mask=image_mask,
                encoder_hidden_states=image_states,
            ),
            "joint": create_bidirectional_mask(
                config=text_config,
                inputs_embeds=torch.cat([image_states, text_states], dim=1),
                attention_mask=torch.cat([image_mask, attention_mask], dim=1),
            ),
        }
        unfused_text_states = text_states
        shortcuts = cross_attention_shortcuts(text_config)
        overrides = []
        for index, layer in enumerate(self.layers):
            if shortcuts is not None and not layer.is_connected and not overrides:
                run = [layer.cross_attn]
                for following in self.layers[index + 1 :]:
                    if following.is_connected:
                        break
                    run.append(following.cross_attn)
                # before the first connected layer the texts still share their images' tokens
                source, indices = (distinct_images, image_indices) if index == 0 else (image_states, None)
                overrides = shortcuts.co_attention_run(run, text_config, self.training, text_states, source, indices)
            override = overrides.pop(0) if overrides and not layer.is_connected else None
            image_states, text_states = layer(image_states, text_states, masks, override, **kwargs)
        return MPLUGModelOutput(
            last_hidden_state=torch.cat([image_states, text_states], dim=1),
            encoder_attention_mask=torch.cat([image_mask, attention_mask], dim=1),
            image_states=unfused_image_states,
            text_states=unfused_text_states,
            fused_image_states=image_states,
            fused_text_states=text_states,
        )


@auto_docstring(
    custom_intro="""
    The visual side of mPLUG: CLIP ViT with `ln_post` on every token, then the width projection when the ViT is wider
    than the text parts. A video `(batch, frames, C, H, W)` is encoded frame by frame and the frames' tokens are
    concatenated: `(batch, frames · num_image_tokens, hidden)`.
    """
)
class MPLUGVisionModel(MPLUGPreTrainedModel):
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _input_embed_layer = "patch_embedding"
    _can_record_outputs = {"hidden_states": MPLUGVisionLayer, "attentions": MPLUGAttention}

    def __init__(self, config: MPLUGConfig):
        super().__init__(config)
        vision_config = config.vision_config
        self.embeddings = MPLUGVisionEmbeddings(vision_config)
        self.pre_layernorm = nn.LayerNorm(vision_config.hidden_size, eps=vision_config.layer_norm_eps)
        self.layers = nn.ModuleList([MPLUGVisionLayer(vision_config) for _ in range(vision_config.num_hidden_layers)])
        # CLIP's ln_post, applied to every token: mPLUG feeds all tokens onward and never uses CLIP's `proj`.
        self.post_layernorm = nn.LayerNorm(vision_config.hidden_size, eps=vision_config.layer_norm_eps)
        self.projection = (
            # CODEPATH: mPLUG-large (ViT-L/14, 1024 wide) projects to the 768-wide text parts; base has no projection.
            MPLUGVisionProjection(config) if vision_config.hidden_size != config.text_config.hidden_size else None
        )
        self.post_init()

    @capture_outputs(tie_last_hidden_states=False)
    @auto_docstring
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        r"""
        Returns `last_hidden_state` `(batch, num_image_tokens, text hidden_size)` and `pooler_output`, its CLS token.
        """
        check_forward_kwargs(kwargs, self)
        validate_pixel_values(pixel_values, self.config.vision_config, interpolate_pos_encoding)
        batch_size = pixel_values.shape[0]
        frames = pixel_values.flatten(0, 1) if pixel_values.ndim == 5 else pixel_values
        hidden_states = self.pre_layernorm(self.embeddings(frames, interpolate_pos_encoding))
        for layer in self.layers:
            hidden_states = layer(hidden_states, **kwargs)
        image_states = self.post_layernorm(hidden_states)
        if self.projection is not None:
            image_states = self.projection(image_states)
        image_states = image_states.reshape(batch_size, -1, image_states.shape[-1])
        return BaseModelOutputWithPooling(last_hidden_state=image_states, pooler_output=image_states[:, 0])


@auto_docstring(
    custom_intro="""
    The mPLUG multimodal encoder: visual encoder, text encoder and the skip-connected fusion. Its output
    `last_hidden_state` is the memory `[V_out; T_out]` that the decoder attends to for VQA and grounding.
    """
)
class MPLUGModel(MPLUGPreTrainedModel):
    def __init__(self, config: MPLUGConfig):
        super().__init__(config)
        self.vision_model = MPLUGVisionModel(config)
        self.text_encoder = MPLUGTextModel(config, config.text_encoder_layers)
        self.fusion_encoder = MPLUGFusionEncoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_encoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding):
        self.text_encoder.set_input_embeddings(value)

    @can_return_tuple
    @auto_docstring
    def get_image_features(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False, **kwargs: Unpack[TransformersKwargs]
    ) -> BaseModelOutputWithPooling:
        r"""
        Returns `last_hidden_state` `(batch, num_image_tokens, hidden)`, the image tokens before fusion, and
        `pooler_output` `(batch, hidden)`, their CLS token.
        """
        return self.vision_model(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs, return_dict=True
        )

    @can_return_tuple
    @auto_docstring
    def get_text_features(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        r"""
        Returns `last_hidden_state` `(batch, length, hidden)`, the text encoder states before fusion, and
        `pooler_output` `(batch, hidden)`, their CLS state.
        """
        check_forward_kwargs(kwargs, self)
        validate_text_inputs(input_ids, attention_mask, self.config.text_config)
        outputs = self.text_encoder(input_ids, attention_mask=attention_mask, **kwargs, return_dict=True)
        return BaseModelOutputWithPooling(
            last_hidden_state=outputs.last_hidden_state,
            pooler_output=outputs.last_hidden_state[:, 0],
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    @can_return_tuple
    @auto_docstring
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_indices: torch.LongTensor | None = None,
        image_states: torch.Tensor | None = None,
        text_states: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MPLUGModelOutput:
        r"""
        input_ids (`torch.LongTensor` of shape `(batch_size, length)`):
            Question/text ids (the original convention: `[CLS] text`, no `[SEP]`).
        pixel_values (`torch.FloatTensor` of shape `(num_images, 3, image_size, image_size)`):
            Images, or `(num_images, frames, 3, H, W)` videos; `num_images = batch_size` unless `image_indices`.
        image_indices (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            The image of each text when several texts share an image: each image is encoded (and, on the fused path,
            projected) once.
        image_states (`torch.FloatTensor` of shape `(num_images, num_image_tokens, hidden_size)`, *optional*):
            Already encoded image tokens, instead of `pixel_values` (e.g. ITM over many pairs).
        text_states (`torch.FloatTensor` of shape `(batch_size, length, hidden_size)`, *optional*):
            Already encoded text states, instead of `input_ids`.
        """
        check_forward_kwargs(kwargs, self)
        if (pixel_values is None) == (image_states is None):
            raise ValueError("pass exactly one of pixel_values (images) and image_states (encoded image tokens)")
        if (input_ids is None) == (text_states is None):
            raise ValueError("pass exactly one of input_ids (texts) and text_states (encoded texts)")
        # each sub-model records its own states; the text encoder's and the fusion's are joined below
        image_outputs = text_outputs = None
        if image_states is None:
            image_outputs = self.get_image_features(pixel_values, interpolate_pos_encoding, **kwargs, return_dict=True)
            image_states = image_outputs.last_hidden_state
        if text_states is None:
            text_outputs = self.get_text_features(input_ids, attention_mask, **kwargs, return_dict=True)
            text_states = text_outputs.last_hidden_state
        outputs = self.fusion_encoder(
            image_states, text_states, attention_mask, image_indices, **kwargs, return_dict=True
        )
        if text_outputs is not None:
            for name in ("hidden_states", "attentions"):
                if getattr(outputs, name) is not None:
                    setattr(outputs, name, getattr(text_outputs, name) + getattr(outputs, name))
        outputs.image_outputs = image_outputs
        return outputs


def decoder_inputs_from_labels(
    decoder_input_ids: torch.LongTensor | None, labels: torch.LongTensor | None, pad_token_id: int
) -> torch.LongTensor:
    """The decoder input: given explicitly, or teacher forcing on `labels` (-100 → pad)."""
    if decoder_input_ids is not None:
        return decoder_input_ids
    if labels is None:
        raise ValueError("pass labels (training) or decoder_input_ids, or call generate()")
    return labels.masked_fill(labels == -100, pad_token_id)


class MPLUGGenerationMixin(GenerationMixin):
    """transformers' generate() for the heads whose decoder shares each item's memory across beams."""

    def _expand_inputs_for_generation(self, expand_size: int = 1, is_encoder_decoder: bool = False, **model_kwargs):
        """Expand the decoder inputs for beams / returned sequences, but not the encoder states: the decoder shares
        each item's memory across its `expand_size` rows (see [`MPLUGTextModel`])."""
        encoder_outputs = model_kwargs.pop("encoder_outputs", None)
        input_ids, model_kwargs = super()._expand_inputs_for_generation(expand_size, False, **model_kwargs)
        model_kwargs["encoder_outputs"] = encoder_outputs
        return input_ids, model_kwargs

    def generate(self, inputs=None, generation_config=None, *args, **kwargs):
        # BLIP's habit `generate(input_ids, pixel_values)`: a tensor in the generation_config slot is the other input
        if torch.is_tensor(generation_config):
            other_input = "pixel_values" if self.main_input_name == "input_ids" else "input_ids"
            if other_input in kwargs:
                raise TypeError(f"generate() got {other_input} both positionally and as a keyword")
            kwargs[other_input], generation_config = generation_config, None
        for name in ("num_beams", "num_return_sequences", "max_new_tokens", "max_length"):
            value = kwargs.get(name)
            # transformers divides by or loops over these: a bad value fails deep inside generate()
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        return super().generate(inputs, generation_config, *args, **kwargs)

    @staticmethod
    def _reorder_cache(cache: EncoderDecoderCache, beam_idx: torch.LongTensor) -> EncoderDecoderCache:
        return reorder_shared_memory_cache(cache, beam_idx)


@auto_docstring(
    custom_intro="""
    Image captioning: the decoder attends to the image tokens only (the original caption model never uses its text
    encoder or fusion). Training: `labels` = `[CLS] caption [SEP]` with -100 on padding (and on a prompt), mean
    cross-entropy over the label tokens. Inference: `generate()` (KV cache, greedy/beam/sampling), or the original
    beam search `mplug_hf.original_generation.generate_caption_original`. A prompt ("a picture of") is passed as
    `input_ids`.
    """
)
class MPLUGForCaptioning(MPLUGPreTrainedModel, MPLUGGenerationMixin):
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    is_encoder_decoder_model = True

    def __init__(self, config: MPLUGConfig):
        super().__init__(config)
        self.vision_model = MPLUGVisionModel(config)
        self.text_decoder = MPLUGTextDecoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_decoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding):
        self.text_decoder.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Linear:
        return self.text_decoder.get_output_embeddings()

    def set_output_embeddings(self, new_embeddings: nn.Linear):
        self.text_decoder.set_output_embeddings(new_embeddings)

    def get_encoder(self, modality: str | None = None) -> MPLUGVisionModel:
        return self.vision_model

    def get_decoder(self) -> MPLUGTextDecoder:
        return self.text_decoder

    def _prepare_text_encoder_decoder_kwargs_for_generation(
        self, inputs_tensor, model_kwargs, model_input_name, generation_config
    ):
        # the visual encoder takes the images only: a prompt's attention_mask belongs to the decoder side
        model_kwargs["encoder_outputs"] = self.vision_model(
            inputs_tensor,
            interpolate_pos_encoding=model_kwargs.get("interpolate_pos_encoding", False),
            output_attentions=generation_config.output_attentions,
            output_hidden_states=generation_config.output_hidden_states,
            return_dict=True,
        )
        return model_kwargs

    @deprecate_kwarg("past_key_values", new_name="cache", version="6.0.0")
    @can_return_tuple
    @auto_docstring
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqLMOutput:
        r"""
        decoder_input_ids (`torch.LongTensor` of shape `(batch_size · n, length)`):
            Caption ids starting with `[CLS]` (or a prompt), n ≥ 1 captions per image in image order (the image tokens
            are shared, not tiled); defaults to `labels`.
        labels (`torch.LongTensor` of shape `(batch_size · n, length)`):
            `[CLS] caption [SEP]`, -100 where no loss is wanted.
        attention_mask (`torch.LongTensor`, *optional*):
            The processor's mask of a prompt. The image memory needs no mask; a padded decoder batch passes
            `decoder_attention_mask`.
        cache (`EncoderDecoderCache`, *optional*):
            Decoder cache to continue from (formerly `past_key_values`).
        """
        check_forward_kwargs(kwargs, self)
        if encoder_outputs is None:
            encoder_outputs = self.vision_model(
                pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs, return_dict=True
            )
        labels = validate_target_labels(labels, self.config)
        decoder_input_ids = decoder_inputs_from_labels(decoder_input_ids, labels, self.config.pad_token_id)
        return self.text_decoder.decode_memory(
            encoder_outputs,
            decoder_input_ids,
            encoder_outputs.last_hidden_state,
            attention_mask=decoder_attention_mask,
            cache=cache,
            use_cache=use_cache,
            labels=labels,
            **kwargs,
        )


@auto_docstring(
    custom_intro="""
    Visual question answering: the decoder attends to the fused memory [V_out; T_out] with mask [1…1; question mask].
    Training with several weighted answers per question (the original's `k`/`weights`): `labels` hold all answers
    `(num_answers, length)` as `[CLS] answer [SEP]` (-100 padding), `answer_counts[b]` says how many belong to
    question b (in order) and `answer_weights` weighs each; loss = Σ weight · (summed token CE of the answer) /
    batch_size. Inference: `generate()`, the original beam search (`mplug_hf.original_generation.
    generate_answer_original`), and `rank_answers`, `score_yes_no` and `choose` in `mplug_hf.scoring`.
    """
)
class MPLUGForQuestionAnswering(MPLUGPreTrainedModel, MPLUGGenerationMixin):
    is_encoder_decoder_model = True

    def __init__(self, config: MPLUGConfig):
        super().__init__(config)
        self.mplug = MPLUGModel(config)
        self.text_decoder = MPLUGTextDecoder(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.text_decoder.get_output_embeddings()

    def set_output_embeddings(self, new_embeddings: nn.Linear):
        self.text_decoder.set_output_embeddings(new_embeddings)

    def get_encoder(self, modality: str | None = None) -> MPLUGModel:
        return self.mplug

    def get_decoder(self) -> MPLUGTextDecoder:
        return self.text_decoder

    @deprecate_kwarg("past_key_values", new_name="cache", version="6.0.0")
    @can_return_tuple
    @auto_docstring
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        answer_counts: torch.LongTensor | None = None,
        answer_weights: torch.Tensor | None = None,
        image_indices: torch.LongTensor | None = None,
        encoder_outputs: MPLUGModelOutput | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqLMOutput:
        r"""
        decoder_input_ids (`torch.LongTensor` of shape `(num_answers, answer_length)`):
            `[CLS] answer` ids; defaults to `labels`.
        labels (`torch.LongTensor` of shape `(num_answers, answer_length)`):
            `[CLS] answer [SEP]` with -100 padding (`processor.encode_targets`).
        answer_counts (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Answers per question (sum = num_answers). Without it the answers divide evenly over the questions in order
            (generation uses this to share the memory across beams).
        answer_weights (`torch.FloatTensor` of shape `(num_answers,)`, *optional*):
            Weight of each answer in the loss (default 1).
        image_indices (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            The image of each question when several questions share an image (`pixel_values` then holds each image
            once).
        cache (`EncoderDecoderCache`, *optional*):
            Decoder cache to continue from (formerly `past_key_values`).
        """
        check_forward_kwargs(kwargs, self)
        if encoder_outputs is None:
            encoder_outputs = self.mplug(
                input_ids=input_ids,
                pixel_values=pixel_values,
                attention_mask=attention_mask,
                image_indices=image_indices,
                interpolate_pos_encoding=interpolate_pos_encoding,
                **kwargs,
                return_dict=True,
            )
        memory, memory_mask = encoder_outputs.last_hidden_state, encoder_outputs.encoder_attention_mask
        num_questions = memory.shape[0]
        labels = validate_target_labels(labels, self.config)
        decoder_input_ids = decoder_inputs_from_labels(decoder_input_ids, labels, self.config.pad_token_id)
        if answer_counts is not None:
            answer_counts = torch.as_tensor(answer_counts, device=memory.device)
            if answer_counts.shape != (num_questions,) or int(answer_counts.sum()) != decoder_input_ids.shape[0]:
                raise ValueError(
                    f"answer_counts must have one entry per question ({num_questions}) and sum to the number of "
                    f"answers ({decoder_input_ids.shape[0]}), got shape {tuple(answer_counts.shape)} and sum "
                    f"{int(answer_counts.sum())}"
                )
            if bool((answer_counts != answer_counts[0]).any()):
                # uneven answer counts cannot share memory rows as equal groups: tile each question's memory
                memory = memory.repeat_interleave(answer_counts, dim=0)
                memory_mask = memory_mask.repeat_interleave(answer_counts, dim=0)
        outputs = self.text_decoder.decode_memory(
            encoder_outputs,
            decoder_input_ids,
            memory,
            memory_mask,
            attention_mask=decoder_attention_mask,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )
        if labels is not None:
            outputs.loss = weighted_answer_loss(outputs.logits, labels, answer_weights, num_questions)
        return outputs


class MPLUGContrastiveHead(nn.Module):
    """
    The ITC projections (normalised image CLS and text-encoder CLS features), the temperature and the ITM head
    (match logits of the fused text CLS). A video's image feature is the mean of its frames' projected CLS features,
    as the original video retrieval computes it.
    """

    def __init__(self, config: MPLUGConfig):
        super().__init__()
        hidden_size = config.text_config.hidden_size
        self.vision_proj = nn.Linear(hidden_size, config.embed_dim)
        self.text_proj = nn.Linear(hidden_size, config.embed_dim)
        self.itm_head = nn.Linear(hidden_size, 2)
        self.temp = nn.Parameter(torch.empty(()))
        self.tokens_per_frame = config.num_image_tokens

    def image_features(
        self, image_states: torch.Tensor, num_frames: int | None = None, projection: nn.Linear | None = None
    ) -> torch.Tensor:
        """`(batch, frames · tokens, hidden)` → normalised `(batch, embed_dim)`; `num_frames` is inferred from the
        tokens per image when not given."""
        projection = projection if projection is not None else self.vision_proj
        if num_frames is None:
            num_tokens = image_states.shape[1]
            num_frames = num_tokens // self.tokens_per_frame if num_tokens % self.tokens_per_frame == 0 else 1
        frames = image_states.view(image_states.shape[0], num_frames, -1, image_states.shape[-1])
        return F.normalize(projection(frames[:, :, 0]).mean(dim=1), dim=-1)

    def text_features(self, text_states: torch.Tensor) -> torch.Tensor:
        """`(batch, length, hidden)` text-encoder states → normalised `(batch, embed_dim)`."""
        return F.normalize(self.text_proj(text_states[:, 0]), dim=-1)


def frame_count(pixel_values: torch.Tensor) -> int:
    """Frames per item: T for a video batch `(batch, T, 3, H, W)`, 1 for images."""
    return pixel_values.shape[1] if pixel_values.ndim == 5 else 1


def build_momentum_encoders(config: MPLUGConfig) -> MPLUGMomentumEncoders | None:
    # CODEPATH: only a config with momentum_queue_size > 0 (the original's ITC training) has momentum encoders.
    if config.momentum_queue_size <= 0:
        return None
    return MPLUGMomentumEncoders(config, MPLUGVisionModel(config), MPLUGTextModel(config, config.text_encoder_layers))


@auto_docstring(
    custom_intro="""
    Output of [`MPLUGForRetrieval`].
    """
)
@dataclass
class MPLUGRetrievalOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, with `return_loss`):
        ITC + ITM loss.
    logits_per_image (`torch.FloatTensor` of shape `(num_images, num_texts)`):
        ITC similarities / temperature.
    logits_per_text (`torch.FloatTensor` of shape `(num_texts, num_images)`):
        The transpose.
    itm_logits (`torch.FloatTensor` of shape `(batch_size, 2)`):
        Image-text matching logits of the aligned pairs (only when images and texts pair up); index 1 is "match".
    image_embeds (`torch.FloatTensor` of shape `(num_images, embed_dim)`):
        Normalised ITC image features.
    text_embeds (`torch.FloatTensor` of shape `(num_texts, embed_dim)`):
        Normalised ITC text features.
    loss_itc (`torch.FloatTensor` of shape `()`, with `return_loss`):
        The image-text contrastive term.
    loss_itm (`torch.FloatTensor` of shape `()`, with `return_loss`):
        The image-text matching term (hard negatives).
    image_outputs (`BaseModelOutputWithPooling`):
        The visual encoder's output.
    text_outputs (`BaseModelOutputWithPooling`):
        The text encoder's output.
    """

    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    loss_itc: torch.FloatTensor | None = None
    loss_itm: torch.FloatTensor | None = None
    image_outputs: BaseModelOutputWithPooling | None = None
    text_outputs: BaseModelOutputWithPooling | None = None


@auto_docstring(
    custom_intro="""
    Image-text retrieval: ITC (normalised projections of the image CLS and of the text-encoder CLS, divided by the
    temperature) and ITM (fusion, then the ITM head on the fused text CLS). `mplug_hf.scoring.retrieve` ranks an image
    set against a text set the original way. `forward` returns `logits_per_image` for any numbers of images and texts (zero-shot
    classification), and ITM logits when they pair up.
    """
)
class MPLUGForRetrieval(MPLUGPreTrainedModel):
    def __init__(self, config: MPLUGConfig):
        super().__init__(config)
        self.mplug = MPLUGModel(config)
        self.contrastive = MPLUGContrastiveHead(config)
        self.momentum_encoders = build_momentum_encoders(config)
        self.post_init()

    @can_return_tuple
    @auto_docstring
    def get_image_features(self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]):
        r"""
        Returns the visual encoder's output with `pooler_output` `(batch, embed_dim)`, the normalised ITC features.
        """
        outputs = self.mplug.get_image_features(pixel_values, **kwargs, return_dict=True)
        outputs.pooler_output = self.contrastive.image_features(outputs.last_hidden_state, frame_count(pixel_values))
        return outputs

    @can_return_tuple
    @auto_docstring
    def get_text_features(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ):
        r"""
        Returns the text encoder's output with `pooler_output` `(batch, embed_dim)`, the normalised ITC features.
        """
        outputs = self.mplug.get_text_features(input_ids, attention_mask, **kwargs, return_dict=True)
        outputs.pooler_output = self.contrastive.text_features(outputs.last_hidden_state)
        return outputs

    @can_return_tuple
    @auto_docstring
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_ids: torch.LongTensor | None = None,
        return_loss: bool = False,
        compute_itm: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MPLUGRetrievalOutput:
        r"""
        image_ids (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Image identity of each pair, so that texts of the same image are not negatives.
        return_loss (`bool`, *optional*):
            Compute ITC + ITM (hard negatives) over the aligned batch.
        compute_itm (`bool`, *optional*):
            ITM logits of the aligned pairs (default: when the batch sizes match and no loss is asked).
        """
        check_forward_kwargs(kwargs, self)
        vision_outputs = self.get_image_features(pixel_values, **kwargs, return_dict=True)
        text_outputs = self.get_text_features(input_ids, attention_mask, **kwargs, return_dict=True)
        image_states, text_states = vision_outputs.last_hidden_state, text_outputs.last_hidden_state
        image_feat, text_feat = vision_outputs.pooler_output, text_outputs.pooler_output
        logits_per_image = image_feat @ text_feat.t() / self.contrastive.temp
        aligned = image_states.shape[0] == text_states.shape[0]
        if image_ids is not None:
            image_ids = torch.as_tensor(image_ids, device=image_feat.device)
        if return_loss and not aligned:
            raise ValueError(
                f"the loss needs aligned pairs: {image_states.shape[0]} images but {text_states.shape[0]} texts"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        itm_logits = loss = loss_itc = loss_itm = None
        if compute_itm if compute_itm is not None else aligned and not return_loss:
            if not aligned:
                raise ValueError("compute_itm needs as many images as texts")
            fused = self.mplug(
                image_states=image_states, text_states=text_states, attention_mask=attention_mask, return_dict=True
            )
            itm_logits = self.contrastive.itm_head(fused.fused_text_states[:, 0])
        if return_loss:
            loss_itc, logits_per_image = image_text_contrastive_loss(
                self, image_feat, text_feat, pixel_values, input_ids, attention_mask, image_ids
            )
            loss_itm = hard_negative_itm_loss(
                self, image_states, text_states, attention_mask, logits_per_image.detach(), image_ids
            )
            loss = loss_itc + loss_itm
        return MPLUGRetrievalOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_image.t(),
            itm_logits=itm_logits,
            image_embeds=image_feat,
            text_embeds=text_feat,
            loss_itc=loss_itc,
            loss_itm=loss_itm,
            image_outputs=vision_outputs,
            text_outputs=text_outputs,
        )


@auto_docstring(
    custom_intro="""
    Output of [`MPLUGForGrounding`].
    """
)
@dataclass
class MPLUGGroundingOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, with `labels`):
        CE weighted by L1 and (1 − GIoU), see the head.
    logits (`torch.FloatTensor` of shape `(batch_size, 4, num_box_bins)`):
        Logits of the 4 coordinate bins: teacher-forced with labels, of the greedy steps without.
    pred_boxes (`torch.FloatTensor` of shape `(batch_size, 4)`):
        Normalised (cx, cy, w, h) on the padded square: the argmax of `logits` with labels, greedy decoding without.
        `processor.post_process_grounding` turns them into pixel boxes.
    hidden_states (`tuple(torch.FloatTensor)`, returned with `output_hidden_states=True`):
        The multimodal encoder's text states (see [`MPLUGModelOutput`]).
    attentions (`tuple(torch.FloatTensor)`, returned with `output_attentions=True`):
        The multimodal encoder's self-attention probabilities.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    pred_boxes: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@auto_docstring(
    custom_intro="""
    Visual grounding (referring expressions) as the original: a box is 4 vocabulary tokens after the prefix token
    `[unused339]`: bin b of each normalised coordinate (cx, cy, w, h) on the padded square image is token
    `box_bin_start_token_id + b`, b = floor(clamp(v, 0, 1) · (num_box_bins − 1)). The decoder attends to [V_out; T_out];
    logits outside the bins are masked.
    """
)
class MPLUGForGrounding(MPLUGPreTrainedModel):
    def __init__(self, config: MPLUGConfig):
        super().__init__(config)
        self.mplug = MPLUGModel(config)
        self.text_decoder = MPLUGTextDecoder(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.text_decoder.get_output_embeddings()

    def set_output_embeddings(self, new_embeddings: nn.Linear):
        self.text_decoder.set_output_embeddings(new_embeddings)

    def boxes_to_tokens(self, boxes: torch.Tensor) -> torch.LongTensor:
        """Normalised (cx, cy, w, h) `(batch, 4)` → token ids `(batch, 4)`."""
        bins = (boxes.clamp(0, 1) * (self.config.num_box_bins - 1)).floor().long()
        return bins + self.config.box_bin_start_token_id

    def tokens_to_boxes(self, tokens: torch.LongTensor) -> torch.Tensor:
        """Token ids `(batch, 4)` → normalised (cx, cy, w, h)."""
        return (tokens - self.config.box_bin_start_token_id).float() / (self.config.num_box_bins - 1)

    def _bin_logits(self, decoder_input_ids, memory, memory_mask, cache=None) -> tuple[torch.Tensor, Cache | None]:
        outputs = self.text_decoder(
            decoder_input_ids,
            encoder_hidden_states=memory,
            encoder_attention_mask=memory_mask,
            cache=cache,
            use_cache=cache is not None,
            return_dict=True,
        )
        start = self.config.box_bin_start_token_id
        return outputs.logits[..., start : start + self.config.num_box_bins], outputs.cache

    @can_return_tuple
    @auto_docstring
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        encoder_outputs: MPLUGModelOutput | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MPLUGGroundingOutput:
        r"""
        labels (`torch.FloatTensor` of shape `(batch_size, 4)`, *optional*):
            Target boxes, normalised (cx, cy, w, h) on the padded square.
        """
        check_forward_kwargs(kwargs, self)
        if encoder_outputs is None:
            encoder_outputs = self.mplug(
                input_ids=input_ids,
                pixel_values=pixel_values,
                attention_mask=attention_mask,
                **kwargs,
                return_dict=True,
            )
        memory, memory_mask = encoder_outputs.last_hidden_state, encoder_outputs.encoder_attention_mask
        encoder_states = {"hidden_states": encoder_outputs.hidden_states, "attentions": encoder_outputs.attentions}
        if labels is None:
            bin_logits, tokens = self.decode_boxes_greedily(memory, memory_mask)
            return MPLUGGroundingOutput(logits=bin_logits, pred_boxes=self.tokens_to_boxes(tokens), **encoder_states)
        if labels.shape != (memory.shape[0], 4) or not bool(torch.isfinite(labels).all()):
            problem = f"shape {tuple(labels.shape)}" if labels.shape != (memory.shape[0], 4) else "NaN or inf values"
            raise ValueError(f"labels must be finite boxes of shape ({memory.shape[0]}, 4), got {problem}")
        target_tokens = self.boxes_to_tokens(labels)
        prefix = torch.full_like(target_tokens[:, :1], self.config.box_prefix_token_id)
        bin_logits, _ = self._bin_logits(torch.cat([prefix, target_tokens], dim=1), memory, memory_mask)
        bin_logits = bin_logits[:, :4]
        target_bins = target_tokens - self.config.box_bin_start_token_id
        loss, pred_boxes = grounding_loss(bin_logits, target_bins, labels, self.config.num_box_bins)
        return MPLUGGroundingOutput(loss=loss, logits=bin_logits, pred_boxes=pred_boxes, **encoder_states)

    def decode_boxes_greedily(self, memory, memory_mask) -> tuple[torch.Tensor, torch.LongTensor]:
        """The 4 greedy coordinate steps (KV cache): `(batch, 4, num_box_bins)` bin logits and `(batch, 4)` tokens."""
        step_input = torch.full((memory.shape[0], 1), self.config.box_prefix_token_id, device=memory.device)
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        step_logits, tokens = [], []
        for _ in range(4):
            bin_logits, cache = self._bin_logits(step_input, memory, memory_mask, cache)
            step_input = bin_logits[:, -1].argmax(dim=-1, keepdim=True) + self.config.box_bin_start_token_id
            step_logits.append(bin_logits[:, -1])
            tokens.append(step_input)
        return torch.stack(step_logits, dim=1), torch.cat(tokens, dim=1)


@auto_docstring(
    custom_intro="""
    Output of [`MPLUGForPreTraining`]: `loss` = sum of the computed terms; each term separately.
    """
)
@dataclass
class MPLUGPreTrainingOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`):
        Sum of the computed terms.
    loss_itc (`torch.FloatTensor` of shape `()`):
        Image-text contrastive loss.
    loss_itm (`torch.FloatTensor` of shape `()`):
        Image-text matching loss (hard negatives).
    loss_mlm (`torch.FloatTensor` of shape `()`, with `mlm_input_ids`):
        Masked language modelling loss on the fused text.
    loss_prefix_lm (`torch.FloatTensor` of shape `()`, with `labels`):
        Prefix language modelling loss of the decoder.
    logits_per_image (`torch.FloatTensor` of shape `(batch_size, batch_size)`):
        In-batch ITC similarities / temperature.
    logits_per_text (`torch.FloatTensor` of shape `(batch_size, batch_size)`):
        The transpose.
    """

    loss: torch.FloatTensor | None = None
    loss_itc: torch.FloatTensor | None = None
    loss_itm: torch.FloatTensor | None = None
    loss_mlm: torch.FloatTensor | None = None
    loss_prefix_lm: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None


@auto_docstring(
    custom_intro="""
    The pretraining objectives of mPLUG over one batch of aligned image-text pairs: ITC, ITM with hard negatives, MLM
    on the fused text (masked `mlm_input_ids` → `mlm_labels`), and PrefixLM through the decoder (the text prefix is
    encoded and fused, `labels` hold the continuation). Each loss is returned separately and `loss` is their sum.
    """
)
class MPLUGForPreTraining(MPLUGPreTrainedModel):
    _tied_weights_keys = {"mlm_head.decoder.weight": "mplug.text_encoder.embeddings.word_embeddings.weight"}

    def __init__(self, config: MPLUGConfig):
        super().__init__(config)
        self.mplug = MPLUGModel(config)
        self.contrastive = MPLUGContrastiveHead(config)
        self.momentum_encoders = build_momentum_encoders(config)
        self.mlm_head = MPLUGLMHead(config.text_config)
        self.text_decoder = MPLUGTextDecoder(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.mlm_head.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear):
        self.mlm_head.decoder = new_embeddings

    @can_return_tuple
    @auto_docstring
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        mlm_input_ids: torch.LongTensor | None = None,
        mlm_labels: torch.LongTensor | None = None,
        prefix_input_ids: torch.LongTensor | None = None,
        prefix_attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MPLUGPreTrainingOutput:
        r"""
        mlm_input_ids (`torch.LongTensor` of shape `(batch_size, length)`, *optional*):
            Masked texts for MLM.
        mlm_labels (`torch.LongTensor` of shape `(batch_size, length)`, *optional*):
            MLM labels, -100 where not masked.
        prefix_input_ids (`torch.LongTensor` of shape `(batch_size, prefix_length)`, *optional*):
            PrefixLM prefixes.
        prefix_attention_mask (`torch.LongTensor` of shape `(batch_size, prefix_length)`, *optional*):
            Their mask.
        labels (`torch.LongTensor` of shape `(batch_size, suffix_length)`, *optional*):
            PrefixLM continuations `[CLS] suffix [SEP]` (-100 padding).
        """
        check_forward_kwargs(kwargs, self)
        validate_pixel_values(pixel_values, self.config.vision_config, False)
        validate_text_inputs(input_ids, attention_mask, self.config.text_config)
        if pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError(f"batch size mismatch: {pixel_values.shape[0]} images but {input_ids.shape[0]} texts")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        image_states = self.mplug.get_image_features(pixel_values, return_dict=True).last_hidden_state
        text_states = self.mplug.get_text_features(input_ids, attention_mask, return_dict=True).last_hidden_state
        loss_itc, logits_per_image = image_text_contrastive_loss(
            self,
            self.contrastive.image_features(image_states, frame_count(pixel_values)),
            self.contrastive.text_features(text_states),
            pixel_values,
            input_ids,
            attention_mask,
            None,
        )
        loss_itm = hard_negative_itm_loss(self, image_states, text_states, attention_mask, logits_per_image.detach())
        losses = {"loss_itc": loss_itc, "loss_itm": loss_itm}
        if mlm_input_ids is not None:
            if mlm_labels is None:
                raise ValueError("mlm_input_ids needs mlm_labels")
            fused = self.mplug(
                image_states=image_states, input_ids=mlm_input_ids, attention_mask=attention_mask, return_dict=True
            )
            mlm_logits = self.mlm_head(fused.fused_text_states)
            losses["loss_mlm"] = F.cross_entropy(
                mlm_logits.float().view(-1, mlm_logits.shape[-1]), mlm_labels.view(-1), ignore_index=-100
            )
        if labels is not None:
            if prefix_input_ids is None:
                raise ValueError("PrefixLM labels need prefix_input_ids")
            fused = self.mplug(
                image_states=image_states,
                input_ids=prefix_input_ids,
                attention_mask=prefix_attention_mask,
                return_dict=True,
            )
            losses["loss_prefix_lm"] = self.text_decoder(
                decoder_inputs_from_labels(None, labels, self.config.pad_token_id),
                encoder_hidden_states=fused.last_hidden_state,
                encoder_attention_mask=fused.encoder_attention_mask,
                labels=labels,
                return_dict=True,
            ).loss
        return MPLUGPreTrainingOutput(
            loss=sum(losses.values()),
            **losses,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_image.t(),
        )


__all__ = [
    "MPLUGForCaptioning",
    "MPLUGForGrounding",
    "MPLUGForPreTraining",
    "MPLUGForQuestionAnswering",
    "MPLUGForRetrieval",
    "MPLUGModel",
    "MPLUGPreTrainedModel",
    "MPLUGTextDecoder",
    "MPLUGVisionModel",
]
