"""PyTorch mPLUG: CLIP ViT + BERT text encoder + cross-modal skip-connected fusion + BERT decoder."""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPastAndCrossAttentions
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .configuration_mplug import MPLUGConfig, MPLUGTextConfig, MPLUGVisionConfig


@dataclass
class MPLUGModelOutput(ModelOutput):
    r"""
    Output of [`MPLUGModel`]: every stage of the multimodal encoder.

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_image_tokens + text_length, hidden_size)`):
            The decoder memory `[fused image states; fused text states]`.
        encoder_attention_mask (`torch.LongTensor` of shape `(batch_size, num_image_tokens + text_length)`):
            Mask of the memory: ones for image tokens, the text attention mask for text tokens.
        image_embeds (`torch.FloatTensor` of shape `(batch_size, num_image_tokens, hidden_size)`):
            Visual encoder output (after the width projection of mPLUG-large), before fusion.
        text_embeds (`torch.FloatTensor` of shape `(batch_size, text_length, hidden_size)`):
            Text encoder output, before fusion.
        image_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_image_tokens, hidden_size)`):
            Image states after fusion (V_out).
        text_hidden_state (`torch.FloatTensor` of shape `(batch_size, text_length, hidden_size)`):
            Text states after fusion (T_out).
    """

    last_hidden_state: torch.FloatTensor | None = None
    encoder_attention_mask: torch.LongTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_hidden_state: torch.FloatTensor | None = None
    text_hidden_state: torch.FloatTensor | None = None


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
):
    """Plain softmax(q·kᵀ·scaling + mask)·v. `query`: (batch, heads, q_len, head_dim); returns (batch, q_len, heads,
    head_dim) and the attention probabilities."""
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class MPLUGAttention(nn.Module):
    """
    Multi-head attention used everywhere in mPLUG: ViT self-attention, BERT self-attention (bidirectional, or causal
    with a KV cache in the decoder), cross-attention (fusion text → vision, decoder → memory, with its K/V computed
    once per generation) and the connected fusion layer's attention over [vision; text]. The kernel is chosen by
    `config._attn_implementation` through transformers' attention interface.
    """

    def __init__(
        self,
        config: MPLUGTextConfig | MPLUGVisionConfig,
        dropout: float,
        is_causal: bool = False,
        is_cross_attention: bool = False,
        layer_idx: int | None = None,
    ):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = dropout
        # The sdpa integration reads this attribute: a missing one would make encoder attention causal.
        self.is_causal = is_causal
        self.is_cross_attention = is_cross_attention
        self.layer_idx = layer_idx
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def _split_heads(self, states: torch.Tensor) -> torch.Tensor:
        return states.view(*states.shape[:-1], -1, self.head_dim).transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        key_value_states: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        Args:
            hidden_states: `(batch, q_len, hidden)` queries (and keys/values for self-attention).
            attention_mask: mask prepared by `transformers.masking_utils` for the active implementation, or None.
            key_value_states: `(batch, kv_len, hidden)` states attended to by cross-attention.
            past_key_values: generation cache; an [`EncoderDecoderCache`] in the decoder.
        Returns:
            `(batch, q_len, hidden)` output projection and the attention probabilities (eager only).
        """
        query = self._split_heads(self.q_proj(hidden_states))
        if self.is_cross_attention:
            if past_key_values is not None and past_key_values.is_updated.get(self.layer_idx):
                cached = past_key_values.cross_attention_cache.layers[self.layer_idx]
                key, value = cached.keys, cached.values
            else:
                key = self._split_heads(self.k_proj(key_value_states))
                value = self._split_heads(self.v_proj(key_value_states))
                if past_key_values is not None:
                    key, value = past_key_values.cross_attention_cache.update(key, value, self.layer_idx)
                    past_key_values.is_updated[self.layer_idx] = True
        else:
            key = self._split_heads(self.k_proj(hidden_states))
            value = self._split_heads(self.v_proj(hidden_states))
            if past_key_values is not None:
                self_cache = (
                    past_key_values.self_attention_cache
                    if isinstance(past_key_values, EncoderDecoderCache)
                    else past_key_values
                )
                key, value = self_cache.update(key, value, self.layer_idx)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(*hidden_states.shape[:-1], -1).contiguous()
        return self.o_proj(attn_output), attn_weights


class MPLUGMLP(nn.Module):
    """Feed-forward block shared by the ViT (QuickGELU) and the BERT parts (GELU)."""

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.activation_fn = ACT2FN[hidden_act]
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


# ----------------------------------------------------------------------------------------------------------------------
# Visual encoder (CLIP ViT)
# ----------------------------------------------------------------------------------------------------------------------


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
        if interpolate_pos_encoding and patches.shape[1] != self.config.num_patches:
            position_embedding = resize_position_embedding(position_embedding, patches.shape[1])
        return embeddings + position_embedding.to(embeddings.dtype)


class MPLUGVisionLayer(GradientCheckpointingLayer):
    """Pre-LayerNorm CLIP block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: MPLUGVisionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = MPLUGAttention(config, dropout=config.attention_dropout)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MPLUGMLP(config.hidden_size, config.intermediate_size, config.hidden_act)

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        attn_output, _ = self.self_attn(self.layer_norm1(hidden_states), **kwargs)
        hidden_states = hidden_states + attn_output
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


class MPLUGVisionProjection(nn.Module):
    """Projects ViT tokens to the text width when they differ (mPLUG-large: 1024 → 768)."""

    def __init__(self, vision_width: int, config: MPLUGTextConfig):
        super().__init__()
        self.dense = nn.Linear(vision_width, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.layer_norm(self.dense(hidden_states)))


# ----------------------------------------------------------------------------------------------------------------------
# BERT parts: text encoder, fusion layers, decoder
# ----------------------------------------------------------------------------------------------------------------------


class MPLUGTextEmbeddings(nn.Module):
    """Word + absolute position (+ token type 0) embeddings, LayerNorm, dropout."""

    def __init__(self, config: MPLUGTextConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.position_ids = nn.Buffer(torch.arange(config.max_position_embeddings).expand((1, -1)), persistent=False)

    def forward(self, input_ids: torch.LongTensor, past_key_values_length: int = 0) -> torch.Tensor:
        seq_length = input_ids.shape[1]
        if past_key_values_length + seq_length > self.position_ids.shape[1]:
            raise ValueError(
                f"text of {past_key_values_length + seq_length} tokens exceeds max_position_embeddings "
                f"({self.position_ids.shape[1]}); truncate it in the processor"
            )
        position_ids = self.position_ids[:, past_key_values_length : past_key_values_length + seq_length]
        # mPLUG never passes token types: every token has type 0.
        embeddings = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(position_ids)
            + self.token_type_embeddings.weight[0]
        )
        return self.dropout(self.LayerNorm(embeddings))


class MPLUGTextLayer(GradientCheckpointingLayer):
    """
    Post-LayerNorm BERT layer: self-attention, optional cross-attention, feed-forward, each followed by dropout,
    residual and LayerNorm. Text-encoder layers have no cross-attention; fusion co-attention layers cross-attend to
    the image tokens; connected fusion layers run self-attention over [vision; text] without cross-attention; decoder
    layers are causal and cross-attend to the memory.
    """

    def __init__(
        self,
        config: MPLUGTextConfig,
        is_causal: bool = False,
        has_cross_attention: bool = False,
        layer_idx: int | None = None,
    ):
        super().__init__()
        dropout = config.attention_probs_dropout_prob
        self.self_attn = MPLUGAttention(config, dropout, is_causal=is_causal, layer_idx=layer_idx)
        self.self_attn_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        if has_cross_attention:
            self.cross_attn = MPLUGAttention(config, dropout, is_cross_attention=True, layer_idx=layer_idx)
            self.cross_attn_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        else:
            self.cross_attn = None
        self.mlp = MPLUGMLP(config.hidden_size, config.intermediate_size, config.hidden_act)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        attn_output, _ = self.self_attn(hidden_states, attention_mask, past_key_values=past_key_values, **kwargs)
        hidden_states = self.self_attn_layer_norm(hidden_states + self.dropout(attn_output))
        if self.cross_attn is not None:
            attn_output, _ = self.cross_attn(
                hidden_states,
                encoder_attention_mask,
                key_value_states=encoder_hidden_states,
                past_key_values=past_key_values,
                **kwargs,
            )
            hidden_states = self.cross_attn_layer_norm(hidden_states + self.dropout(attn_output))
        return self.final_layer_norm(hidden_states + self.dropout(self.mlp(hidden_states)))


class MPLUGTextModel(nn.Module):
    """
    BERT stack (embeddings + layers, no pooler). As the text encoder it is bidirectional without cross-attention;
    as the decoder backbone it is causal, cross-attends to `encoder_hidden_states` and supports a KV cache.
    """

    def __init__(self, config: MPLUGTextConfig, num_layers: int, is_decoder: bool = False):
        super().__init__()
        self.config = config
        self.is_decoder = is_decoder
        self.embeddings = MPLUGTextEmbeddings(config)
        self.layers = nn.ModuleList(
            [
                MPLUGTextLayer(config, is_causal=is_decoder, has_cross_attention=is_decoder, layer_idx=i)
                for i in range(num_layers)
            ]
        )

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool = False,
        **kwargs,
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        """
        Args:
            input_ids: `(batch, length)` token ids.
            attention_mask: `(batch, past_length + length)` 1/0 padding mask.
            encoder_hidden_states: `(batch, memory_length, hidden)` memory (decoder only).
            encoder_attention_mask: `(batch, memory_length)` 1/0 mask of the memory.
        Returns:
            `last_hidden_state` `(batch, length, hidden)` and, with `use_cache`, the cache.
        """
        if input_ids.ndim != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be (batch, length) with length >= 1, got shape {tuple(input_ids.shape)}")
        if self.is_decoder and encoder_hidden_states is None:
            raise ValueError("the decoder needs encoder_hidden_states (the memory it cross-attends to)")
        if use_cache and past_key_values is None:
            past_key_values = EncoderDecoderCache(DynamicCache(), DynamicCache())
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        hidden_states = self.embeddings(input_ids, past_key_values_length=past_length)

        if self.is_decoder:
            self_mask = create_causal_mask(
                config=self.config,
                inputs_embeds=hidden_states,
                attention_mask=attention_mask,
                past_key_values=past_key_values,
            )
            cross_mask = create_bidirectional_mask(
                config=self.config,
                inputs_embeds=hidden_states,
                attention_mask=encoder_attention_mask,
                encoder_hidden_states=encoder_hidden_states,
            )
        else:
            self_mask = create_bidirectional_mask(
                config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask
            )
            cross_mask = None

        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                self_mask,
                encoder_hidden_states,
                encoder_attention_mask=cross_mask,
                past_key_values=past_key_values,
                **kwargs,
            )
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden_states, past_key_values=past_key_values if use_cache else None
        )


class MPLUGFusionEncoder(nn.Module):
    """
    The cross-modal skip-connected fusion. Layer j is a connected layer when `config.is_connected_fusion_layer(j)`:
    X = layer([V; T]) with full self-attention, then V ← V + X_V and T ← X_T. Otherwise it is an asymmetric
    co-attention layer: T attends to itself and to V, and V is left untouched.
    """

    def __init__(self, config: MPLUGConfig):
        super().__init__()
        self.config = config.text_config
        self.connected = [config.is_connected_fusion_layer(j) for j in range(config.fusion_layers)]
        self.layers = nn.ModuleList(
            [MPLUGTextLayer(config.text_config, has_cross_attention=not connected) for connected in self.connected]
        )

    def forward(
        self,
        text_states: torch.Tensor,
        text_attention_mask: torch.Tensor,
        image_states: torch.Tensor,
        image_attention_mask: torch.Tensor,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            text_states: `(batch, text_length, hidden)` text encoder output.
            text_attention_mask: `(batch, text_length)` 1/0.
            image_states: `(batch, num_image_tokens, hidden)` image tokens.
            image_attention_mask: `(batch, num_image_tokens)` 1/0.
        Returns:
            `(image_states, text_states)` after fusion, shapes unchanged.
        """
        text_mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=text_states, attention_mask=text_attention_mask
        )
        cross_mask = create_bidirectional_mask(
            config=self.config,
            inputs_embeds=text_states,
            attention_mask=image_attention_mask,
            encoder_hidden_states=image_states,
        )
        joint_mask = None
        if any(self.connected):
            joint_mask = create_bidirectional_mask(
                config=self.config,
                inputs_embeds=torch.cat([image_states, text_states], dim=1),
                attention_mask=torch.cat([image_attention_mask, text_attention_mask], dim=1),
            )
        num_image_tokens = image_states.shape[1]
        for layer, connected in zip(self.layers, self.connected):
            if connected:
                joint = layer(torch.cat([image_states, text_states], dim=1), joint_mask, **kwargs)
                image_states = image_states + joint[:, :num_image_tokens]
                text_states = joint[:, num_image_tokens:]
            else:
                text_states = layer(text_states, text_mask, image_states, encoder_attention_mask=cross_mask, **kwargs)
        return image_states, text_states


class MPLUGLMHead(nn.Module):
    """BERT LM head: dense → activation → LayerNorm → vocabulary projection (weight tied to word embeddings)."""

    def __init__(self, config: MPLUGTextConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation_fn = ACT2FN[config.hidden_act]
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.layer_norm(self.activation_fn(self.dense(hidden_states))))


class MPLUGTextDecoder(nn.Module):
    """The BERT decoder: causal self-attention, cross-attention to a memory, LM head. Returns vocabulary logits."""

    def __init__(self, config: MPLUGTextConfig, num_layers: int):
        super().__init__()
        self.model = MPLUGTextModel(config, num_layers, is_decoder=True)
        self.lm_head = MPLUGLMHead(config)

    def forward(
        self,
        input_ids: torch.LongTensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, Cache | None]:
        """Returns logits `(batch, length, vocab_size)` and the cache (None unless `use_cache`)."""
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            past_key_values=past_key_values,
            use_cache=use_cache,
            **kwargs,
        )
        return self.lm_head(outputs.last_hidden_state), outputs.past_key_values


# ----------------------------------------------------------------------------------------------------------------------
# Pretrained model and the multimodal encoder
# ----------------------------------------------------------------------------------------------------------------------


class MPLUGPreTrainedModel(PreTrainedModel):
    config: MPLUGConfig
    config_class = MPLUGConfig
    base_model_prefix = "mplug"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["MPLUGVisionLayer", "MPLUGTextLayer", "MPLUGTextEmbeddings"]
    _skip_keys_device_placement = ["past_key_values"]

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, MPLUGVisionEmbeddings):
            init.normal_(module.class_embedding, std=std)
            init.normal_(module.position_embedding, std=std)
        elif isinstance(module, MPLUGTextEmbeddings):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))


def validate_pixel_values(pixel_values: torch.Tensor | None, config: MPLUGVisionConfig, interpolate: bool) -> None:
    """Raise a ValueError naming the problem when `pixel_values` cannot be an image (or video) batch."""
    if pixel_values is None:
        raise ValueError("pixel_values is required (batch, channels, height, width) or (batch, frames, C, H, W)")
    if not torch.is_tensor(pixel_values) or not pixel_values.is_floating_point():
        raise ValueError(f"pixel_values must be a float tensor, got {getattr(pixel_values, 'dtype', type(pixel_values))}")
    if pixel_values.ndim not in (4, 5) or pixel_values.shape[-3] != config.num_channels:
        raise ValueError(
            f"pixel_values must have shape (batch, {config.num_channels}, H, W) or (batch, frames, "
            f"{config.num_channels}, H, W), got {tuple(pixel_values.shape)}"
        )
    height, width = pixel_values.shape[-2:]
    if not interpolate and (height, width) != (config.image_size, config.image_size):
        raise ValueError(
            f"pixel_values are {height}x{width} but the model expects {config.image_size}x{config.image_size}; "
            "resize with the processor, or pass interpolate_pos_encoding=True"
        )
    if interpolate and (height % config.patch_size or width % config.patch_size or height != width):
        raise ValueError(f"interpolated pixel_values must be square multiples of {config.patch_size}, got {height}x{width}")


class MPLUGVisionModel(MPLUGPreTrainedModel):
    """
    The visual side of mPLUG: CLIP ViT with `ln_post` on every token, then the width projection when the ViT is wider
    than the text parts. A video `(batch, frames, C, H, W)` is encoded frame by frame and the frames' tokens are
    concatenated: `(batch, frames · num_image_tokens, hidden)`.
    """

    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config: MPLUGConfig):
        super().__init__(config)
        vision_config = config.vision_config
        self.embeddings = MPLUGVisionEmbeddings(vision_config)
        self.pre_layernorm = nn.LayerNorm(vision_config.hidden_size, eps=vision_config.layer_norm_eps)
        self.layers = nn.ModuleList([MPLUGVisionLayer(vision_config) for _ in range(vision_config.num_hidden_layers)])
        # CLIP's ln_post, applied to every token: mPLUG feeds all tokens onward and never uses CLIP's `proj`.
        self.post_layernorm = nn.LayerNorm(vision_config.hidden_size, eps=vision_config.layer_norm_eps)
        vision_width = vision_config.hidden_size
        self.projection = (
            MPLUGVisionProjection(vision_width, config.text_config)
            if vision_width != config.text_config.hidden_size
            else None
        )
        self.post_init()

    def forward(
        self, pixel_values: torch.Tensor | None = None, interpolate_pos_encoding: bool = False, **kwargs
    ) -> BaseModelOutput:
        """Returns `last_hidden_state` `(batch, num_image_tokens, text hidden_size)`."""
        validate_pixel_values(pixel_values, self.config.vision_config, interpolate_pos_encoding)
        batch_size = pixel_values.shape[0]
        frames = pixel_values.flatten(0, 1) if pixel_values.ndim == 5 else pixel_values
        hidden_states = self.pre_layernorm(self.embeddings(frames, interpolate_pos_encoding))
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        image_embeds = self.post_layernorm(hidden_states)
        if self.projection is not None:
            image_embeds = self.projection(image_embeds)
        image_embeds = image_embeds.reshape(batch_size, -1, image_embeds.shape[-1])
        return BaseModelOutput(last_hidden_state=image_embeds)


def validate_text_inputs(input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, batch_size: int) -> None:
    if input_ids is None:
        raise ValueError("input_ids (the tokenized text) is required")
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be (batch, length) with length >= 1, got shape {tuple(input_ids.shape)}")
    if input_ids.shape[0] != batch_size:
        raise ValueError(f"batch size mismatch: {batch_size} images but {input_ids.shape[0]} texts")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} does not match input_ids {tuple(input_ids.shape)}"
        )


class MPLUGModel(MPLUGPreTrainedModel):
    """
    The mPLUG multimodal encoder: visual encoder, text encoder and the skip-connected fusion. Its output
    `last_hidden_state` is the memory `[V_out; T_out]` that the decoder attends to for VQA and grounding.
    """

    def __init__(self, config: MPLUGConfig):
        super().__init__(config)
        self.vision_model = MPLUGVisionModel(config)
        self.text_encoder = MPLUGTextModel(config.text_config, config.text_encoder_layers)
        self.fusion_encoder = MPLUGFusionEncoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_encoder.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding):
        self.text_encoder.embeddings.word_embeddings = value

    def get_image_features(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False, **kwargs
    ) -> torch.Tensor:
        """`(batch, num_image_tokens, hidden)` image tokens before fusion."""
        return self.vision_model(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding).last_hidden_state

    def get_text_features(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> torch.Tensor:
        """`(batch, length, hidden)` text encoder states before fusion."""
        validate_text_inputs(input_ids, attention_mask, input_ids.shape[0] if input_ids is not None else 0)
        return self.text_encoder(input_ids, attention_mask=attention_mask).last_hidden_state

    def fuse(
        self,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> MPLUGModelOutput:
        """Run the fusion encoder on already-encoded image tokens and text states (e.g. for ITM over many pairs)."""
        if attention_mask is None:
            attention_mask = torch.ones(text_embeds.shape[:2], dtype=torch.long, device=text_embeds.device)
        image_attention_mask = torch.ones(image_embeds.shape[:2], dtype=attention_mask.dtype, device=image_embeds.device)
        image_states, text_states = self.fusion_encoder(
            text_embeds, attention_mask, image_embeds, image_attention_mask, **kwargs
        )
        return MPLUGModelOutput(
            last_hidden_state=torch.cat([image_states, text_states], dim=1),
            encoder_attention_mask=torch.cat([image_attention_mask, attention_mask], dim=1),
            image_embeds=image_embeds,
            text_embeds=text_embeds,
            image_hidden_state=image_states,
            text_hidden_state=text_states,
        )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs,
    ) -> MPLUGModelOutput:
        """
        Args:
            input_ids: `(batch, length)` question/text ids (the original convention: `[CLS] text`, no `[SEP]`).
            pixel_values: `(batch, 3, image_size, image_size)` images or `(batch, frames, 3, H, W)` videos.
            attention_mask: `(batch, length)` 1 for tokens, 0 for padding.
        """
        validate_pixel_values(pixel_values, self.config.vision_config, interpolate_pos_encoding)
        validate_text_inputs(input_ids, attention_mask, pixel_values.shape[0])
        image_embeds = self.get_image_features(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        text_embeds = self.text_encoder(input_ids, attention_mask=attention_mask).last_hidden_state
        return self.fuse(image_embeds, text_embeds, attention_mask)


__all__ = ["MPLUGModel", "MPLUGPreTrainedModel", "MPLUGVisionModel"]
