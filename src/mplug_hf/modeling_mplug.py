"""PyTorch mPLUG: CLIP ViT + BERT text encoder + cross-modal skip-connected fusion + BERT decoder."""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import (
    AttentionMaskInterface,
    create_bidirectional_mask,
    create_causal_mask,
    sdpa_mask,
)
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPastAndCrossAttentions
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface
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


# `attn_implementation="mplug_fused"`: sdpa kernels everywhere, and the fusion encoder's co-attention layers either fold
# their image key/value projections into the text queries or project the image keys/values of a whole run of layers in
# one matmul, once per image, whichever costs fewer multiply-adds (see MPLUGFusionEncoder).
FUSED_ATTENTION = "mplug_fused"
AttentionInterface.register(FUSED_ATTENTION, sdpa_attention_forward)
AttentionMaskInterface.register(FUSED_ATTENTION, sdpa_mask)


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
        cache: Cache | None = None,
        key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
        fold_projections: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        Args:
            hidden_states: `(batch, q_len, hidden)` queries (and keys/values for self-attention).
            attention_mask: mask prepared by `transformers.masking_utils` for the active implementation, or None.
            key_value_states: `(batch, kv_len, hidden)` states attended to by cross-attention.
            cache: generation cache; an [`EncoderDecoderCache`] in the decoder.
            key_value: cross-attention keys and values already projected, `(batch, heads, kv_len, head_dim)` each.
            fold_projections: cross-attend with the key/value projections folded into the queries (see
                `_attend_with_folded_projections`); only without attention dropout.
        Returns:
            `(batch, q_len, hidden)` output projection and the attention probabilities (eager only).
        """
        if fold_projections:
            return self._attend_with_folded_projections(hidden_states, key_value_states, attention_mask, **kwargs)
        query = self._split_heads(self.q_proj(hidden_states))
        batch_size, query_length = hidden_states.shape[:2]
        if key_value is not None:
            key, value = key_value
        elif self.is_cross_attention:
            if cache is not None and cache.is_updated.get(self.layer_idx):
                cached = cache.cross_attention_cache.layers[self.layer_idx]
                key, value = cached.keys, cached.values
            else:
                key = self._split_heads(self.k_proj(key_value_states))
                value = self._split_heads(self.v_proj(key_value_states))
                if cache is not None:
                    key, value = cache.cross_attention_cache.update(key, value, self.layer_idx)
                    cache.is_updated[self.layer_idx] = True
        else:
            key = self._split_heads(self.k_proj(hidden_states))
            value = self._split_heads(self.v_proj(hidden_states))
            if cache is not None:
                self_cache = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
                key, value = self_cache.update(key, value, self.layer_idx)

        # Beams / candidate answers share their item's memory: a query batch `group` times larger than the memory
        # batch attends as `group` times longer queries of the memory rows (no tiled memory, no copied K/V).
        group = batch_size // key.shape[0]
        if group > 1:
            query = query.view(key.shape[0], group, *query.shape[1:]).transpose(1, 2)
            query = query.reshape(key.shape[0], self.num_heads, group * query_length, self.head_dim)

        attn_output, attn_weights = self._attention_interface()(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        # (memory_batch, group * q_len, heads, head_dim) rows are item-major, so this is the (batch, q_len, …) layout.
        attn_output = attn_output.reshape(batch_size, query_length, -1).contiguous()
        return self.o_proj(attn_output), attn_weights

    def _attention_interface(self) -> Callable:
        return ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)

    def _attend_with_folded_projections(
        self, hidden_states: torch.Tensor, memory: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs
    ) -> tuple[torch.Tensor, None]:
        """
        Cross-attention to the *unprojected* memory, for few queries over many memory tokens. Per head h,
        softmax(q_h·(W_k,h m + b_k,h)) = softmax((W_k,hᵀ q_h)·m), the key bias adding one constant to each query's
        logits, and Σ p·(W_v,h m + b_v,h) = W_v,h (Σ p·m) + b_v,h, the probabilities summing to one (so no
        attention dropout). All heads' folded queries then attend together as one head of width `hidden`:
        O(q_len·heads·kv_len·hidden) multiply-adds instead of the O(kv_len·hidden²) of projecting the memory.

        Args:
            hidden_states: `(batch, q_len, hidden)` queries.
            memory: `(batch, kv_len, hidden)` states attended to.
            attention_mask: the cross-attention mask prepared for the active implementation (key padding), or None.
        """
        batch_size, query_length, hidden_size = hidden_states.shape
        query = self._split_heads(self.q_proj(hidden_states))
        key_weight = self.k_proj.weight.view(self.num_heads, self.head_dim, hidden_size)
        value_weight = self.v_proj.weight.view(self.num_heads, self.head_dim, hidden_size)
        # (batch, 1, heads * q_len, hidden): every head's queries mapped into the memory's space
        folded_query = torch.einsum("bhqd,hdk->bhqk", query, key_weight).reshape(batch_size, 1, -1, hidden_size)
        memory = memory.unsqueeze(1)
        if attention_mask is not None:
            attention_mask = attention_mask[:, :, :1]  # it masks memory padding only: one row serves every query
        context, _ = self._attention_interface()(
            self, folded_query, memory, memory, attention_mask, dropout=0.0, scaling=self.scaling, **kwargs
        )
        context = context.view(batch_size, self.num_heads, query_length, hidden_size)
        attn_output = torch.einsum("bhqk,hdk->bqhd", context, value_weight) + self.v_proj.bias.view(
            self.num_heads, self.head_dim
        )
        return self.o_proj(attn_output.reshape(batch_size, query_length, hidden_size)), None


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

    def forward(
        self, input_ids: torch.LongTensor, past_length: int = 0, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Args:
            input_ids: `(batch, length)`. past_length: tokens already in the cache.
            attention_mask: `(batch, past_length + length)`; positions count only attended tokens, so left and right
                padding give a text the same embeddings (with right padding these are the original's 0..L-1).
        """
        seq_length = input_ids.shape[1]
        if past_length + seq_length > self.position_ids.shape[1]:
            raise ValueError(
                f"text of {past_length + seq_length} tokens exceeds max_position_embeddings "
                f"({self.position_ids.shape[1]}); truncate it in the processor"
            )
        position_ids = self.position_ids[:, past_length : past_length + seq_length]
        if attention_mask is not None and attention_mask.shape[-1] == past_length + seq_length:
            # padding keeps the original's position (index), so outputs at padded slots match the original too
            attended = attention_mask[:, past_length:].bool()
            counted = attention_mask.long().cumsum(dim=-1)[:, past_length:] - 1
            position_ids = torch.where(attended, counted, position_ids)
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
        cache: Cache | None = None,
        cross_key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
        fold_cross_projections: bool = False,
        **kwargs,
    ) -> torch.Tensor:
        attn_output, _ = self.self_attn(hidden_states, attention_mask, cache=cache, **kwargs)
        hidden_states = self.self_attn_layer_norm(hidden_states + self.dropout(attn_output))
        if self.cross_attn is not None:
            attn_output, _ = self.cross_attn(
                hidden_states,
                encoder_attention_mask,
                key_value_states=encoder_hidden_states,
                cache=cache,
                key_value=cross_key_value,
                fold_projections=fold_cross_projections,
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
        cache: Cache | None = None,
        use_cache: bool = False,
        **kwargs,
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        """
        Args:
            input_ids: `(batch, length)` token ids.
            attention_mask: `(batch, past_length + length)` 1/0 padding mask.
            encoder_hidden_states: `(memory_batch, memory_length, hidden)` memory (decoder only). `batch` may be a
                multiple of `memory_batch`: rows `i * group … (i + 1) * group - 1` (beams, candidate answers) then
                share memory row `i`, which is never tiled.
            encoder_attention_mask: `(memory_batch, memory_length)` 1/0 mask of the memory.
        Returns:
            `last_hidden_state` `(batch, length, hidden)` and, with `use_cache`, the cache.
        """
        if input_ids.ndim != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be (batch, length) with length >= 1, got shape {tuple(input_ids.shape)}")
        if self.is_decoder and encoder_hidden_states is None:
            raise ValueError("the decoder needs encoder_hidden_states (the memory it cross-attends to)")
        if self.is_decoder and input_ids.shape[0] % encoder_hidden_states.shape[0]:
            raise ValueError(
                f"batch size mismatch: {input_ids.shape[0]} decoder rows cannot share {encoder_hidden_states.shape[0]} "
                "memory rows (the decoder batch must be a multiple of the memory batch)"
            )
        if use_cache and cache is None:
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        past_length = cache.get_seq_length() if cache is not None else 0
        hidden_states = self.embeddings(input_ids, past_length=past_length, attention_mask=attention_mask)

        if self.is_decoder:
            self_mask = create_causal_mask(
                config=self.config,
                inputs_embeds=hidden_states,
                attention_mask=attention_mask,
                cache=cache,
            )
            memory_batch = encoder_hidden_states.shape[0]
            cross_mask = create_bidirectional_mask(
                config=self.config,
                # the shape cross-attention sees: each memory row's group of queries (see MPLUGAttention)
                inputs_embeds=hidden_states.view(memory_batch, -1, hidden_states.shape[-1]),
                attention_mask=encoder_attention_mask,
                encoder_hidden_states=encoder_hidden_states,
            )
            # The fused path folds the memory K/V projections into the few answer/caption queries when that is
            # cheaper, i.e. when training or scoring short targets over a long memory; not with a cache (generation
            # projects the memory once and keeps it) nor when rows share a memory (its projection is amortised).
            fold_cross = (
                self.config._attn_implementation == FUSED_ATTENTION
                and cache is None
                and hidden_states.shape[0] == memory_batch
                and cross_attention_folding_is_cheaper(
                    self.config,
                    self.training,
                    memory_batch,
                    hidden_states.shape[1],
                    memory_batch,
                    encoder_hidden_states.shape[1],
                )
            )
        else:
            self_mask = create_bidirectional_mask(
                config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask
            )
            cross_mask, fold_cross = None, False

        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                self_mask,
                encoder_hidden_states,
                encoder_attention_mask=cross_mask,
                cache=cache,
                fold_cross_projections=fold_cross,
                **kwargs,
            )
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden_states, cache=cache if use_cache else None
        )


def cross_attention_folding_is_cheaper(
    config: MPLUGTextConfig, training: bool, num_queries: int, query_length: int, num_memories: int, memory_length: int
) -> bool:
    """
    Whether folding the cross-attention key/value projections into the queries (see
    `MPLUGAttention._attend_with_folded_projections`) costs fewer multiply-adds than projecting the memory. Per layer,
    for B query rows of L tokens over I distinct memories of N tokens, H heads and width D: folding costs
    B·L·H·N·D·2 (logits and weighted sums per head) + B·L·D²·2 (folding queries and outputs); projecting costs
    I·N·D²·2 (keys and values) + B·L·N·D·2 (attention). Fold when B·L·((H−1)·N + D) < I·N·D. Never with attention
    dropout in training: dropped probabilities no longer sum to one, which folding the value bias relies on.
    """
    if training and config.attention_probs_dropout_prob > 0:
        return False
    hidden_size, num_heads = config.hidden_size, config.num_attention_heads
    folded_cost = num_queries * query_length * ((num_heads - 1) * memory_length + hidden_size)
    return folded_cost < num_memories * memory_length * hidden_size


class MPLUGFusionEncoder(nn.Module):
    """
    The cross-modal skip-connected fusion. Layer j is a connected layer when `config.is_connected_fusion_layer(j)`:
    X = layer([V; T]) with full self-attention, then V ← V + X_V and T ← X_T. Otherwise it is an asymmetric
    co-attention layer: T attends to itself and to V, and V is left untouched.

    Because V is frozen between connected layers, the image keys/values of a run of co-attention layers depend on
    the image only. With `attn_implementation="mplug_fused"` each run takes the cheaper of two exact shortcuts:
    fold the key/value projections into the few text queries (see `MPLUGAttention._attend_with_folded_projections`),
    or project the image keys/values of the whole run in one matmul, before the first connected layer once per
    *image* even when several texts share it (`image_indices`).
    """

    def __init__(self, config: MPLUGConfig):
        super().__init__()
        self.config = config.text_config
        self.connected = [config.is_connected_fusion_layer(j) for j in range(config.fusion_layers)]
        self.layers = nn.ModuleList(
            [MPLUGTextLayer(config.text_config, has_cross_attention=not connected) for connected in self.connected]
        )
        # the co-attention layers grouped into runs between connected layers, keyed by their first layer
        self.co_attention_runs: dict[int, list[int]] = {}
        run_start = None
        for index, connected in enumerate(self.connected):
            if connected:
                run_start = None
                continue
            if run_start is None:
                run_start = index
                self.co_attention_runs[run_start] = []
            self.co_attention_runs[run_start].append(index)

    def _project_image_keys_values(
        self, run: list[int], image_states: torch.Tensor, image_indices: torch.LongTensor | None
    ) -> dict[int, tuple]:
        """The cross-attention (key, value) of every layer in `run` from one matmul over the image tokens, each image
        projected once and then gathered per text by `image_indices`."""
        attentions = [self.layers[index].cross_attn for index in run]
        weight = torch.cat([proj.weight for attn in attentions for proj in (attn.k_proj, attn.v_proj)])
        bias = torch.cat([proj.bias for attn in attentions for proj in (attn.k_proj, attn.v_proj)])
        projected = F.linear(image_states, weight, bias)
        if image_indices is not None:
            projected = projected.index_select(0, image_indices)
        projected = projected.split(self.config.hidden_size, dim=-1)
        return {
            index: (attn._split_heads(projected[2 * i]), attn._split_heads(projected[2 * i + 1]))
            for i, (index, attn) in enumerate(zip(run, attentions))
        }

    def forward(
        self,
        text_states: torch.Tensor,
        text_attention_mask: torch.Tensor,
        image_states: torch.Tensor,
        image_attention_mask: torch.Tensor,
        image_indices: torch.LongTensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            text_states: `(batch, text_length, hidden)` text encoder output.
            text_attention_mask: `(batch, text_length)` 1/0.
            image_states: `(batch, num_image_tokens, hidden)` image tokens, or `(num_images, …)` with `image_indices`.
            image_attention_mask: `(batch, num_image_tokens)` 1/0 (all ones), or `(num_images, …)`.
            image_indices: `(batch,)` the image row each text is fused with (default: row i for text i).
        Returns:
            `(image_states, text_states)` after fusion, both with `batch` rows.
        """
        fused = self.config._attn_implementation == FUSED_ATTENTION
        distinct_images = image_states
        if image_indices is not None:
            image_states = image_states.index_select(0, image_indices)
            image_attention_mask = image_attention_mask.index_select(0, image_indices)

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
        num_texts, text_length = text_states.shape[:2]
        num_image_tokens = image_states.shape[1]
        precomputed, folded = {}, set()
        for index, (layer, connected) in enumerate(zip(self.layers, self.connected)):
            if connected:
                joint = layer(torch.cat([image_states, text_states], dim=1), joint_mask, **kwargs)
                image_states = image_states + joint[:, :num_image_tokens]
                text_states = joint[:, num_image_tokens:]
                continue
            if fused and index in self.co_attention_runs:
                # before the first connected layer the texts still share their images' tokens
                source, indices = (distinct_images, image_indices) if index == 0 else (image_states, None)
                run = self.co_attention_runs[index]
                if cross_attention_folding_is_cheaper(
                    self.config, self.training, num_texts, text_length, source.shape[0], num_image_tokens
                ):
                    folded.update(run)
                else:
                    precomputed.update(self._project_image_keys_values(run, source, indices))
            text_states = layer(
                text_states,
                text_mask,
                image_states,
                encoder_attention_mask=cross_mask,
                cross_key_value=precomputed.pop(index, None),
                fold_cross_projections=index in folded,
                **kwargs,
            )
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
        cache: Cache | None = None,
        use_cache: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, Cache | None]:
        """Returns logits `(batch, length, vocab_size)` and the cache (None unless `use_cache`)."""
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )
        return self.lm_head(outputs.last_hidden_state), outputs.cache


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
    _skip_keys_device_placement = ["cache"]
    # The heads normalise their losses themselves (per question, per token): Trainer must divide by the gradient
    # accumulation steps and not rescale by `num_items_in_batch`, which it does for any forward taking **kwargs.
    accepts_loss_kwargs = False

    def __init__(self, config: MPLUGConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        # A directly constructed model resolves the implementation on the top config only; the modules read the
        # sub-configs, so hand it down unless a sub-config was given its own.
        for sub_config in (config.text_config, config.vision_config):
            if sub_config._attn_implementation is None:
                sub_config._attn_implementation_internal = config._attn_implementation

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        except SafetensorError as error:
            raise ValueError(
                f"cannot read the weights in {pretrained_model_name_or_path}: {error}; the safetensors file is "
                "truncated or corrupt (download or save it again)"
            ) from error

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
        raise ValueError(
            f"pixel_values must be a float tensor, got {getattr(pixel_values, 'dtype', type(pixel_values))}"
        )
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
        raise ValueError(
            f"interpolated pixel_values must be square multiples of {config.patch_size}, got {height}x{width}"
        )


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
        image_indices: torch.LongTensor | None = None,
        **kwargs,
    ) -> MPLUGModelOutput:
        """
        Run the fusion encoder on already-encoded image tokens and text states (e.g. for ITM over many pairs).

        Args:
            image_embeds: `(batch, num_image_tokens, hidden)`, or `(num_images, …)` with `image_indices`.
            text_embeds: `(batch, length, hidden)`; attention_mask: `(batch, length)`.
            image_indices: `(batch,)` the image of each text, so that an image asked several questions is stored
                (and, with the fused path, projected) once.
        """
        if attention_mask is None:
            attention_mask = torch.ones(text_embeds.shape[:2], dtype=torch.long, device=text_embeds.device)
        image_attention_mask = torch.ones(
            image_embeds.shape[:2], dtype=attention_mask.dtype, device=image_embeds.device
        )
        image_states, text_states = self.fusion_encoder(
            text_embeds, attention_mask, image_embeds, image_attention_mask, image_indices=image_indices
        )
        if image_indices is not None:
            image_embeds = image_embeds.index_select(0, image_indices)
        image_attention_mask = torch.ones(
            image_states.shape[:2], dtype=attention_mask.dtype, device=image_states.device
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


# ----------------------------------------------------------------------------------------------------------------------
# Outputs of the task heads
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class MPLUGSeq2SeqOutput(ModelOutput):
    r"""
    Output of the decoder heads ([`MPLUGForCaptioning`], [`MPLUGForQuestionAnswering`]).

    Args:
        loss (`torch.FloatTensor` of shape `()`, returned with `labels`): the task loss (see the head).
        logits (`torch.FloatTensor` of shape `(batch_size, target_length, vocab_size)`): decoder logits.
        cache ([`EncoderDecoderCache`]): decoder self- and cross-attention cache.
        encoder_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, memory_length, hidden_size)`): the
            memory the decoder attended to.
        encoder_attention_mask (`torch.LongTensor` of shape `(batch_size, memory_length)`): its mask.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    encoder_attention_mask: torch.LongTensor | None = None


@dataclass
class MPLUGRetrievalOutput(ModelOutput):
    r"""
    Output of [`MPLUGForRetrieval`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, with `return_loss`): ITC + ITM loss.
        logits_per_image (`torch.FloatTensor` of shape `(num_images, num_texts)`): ITC similarities / temperature.
        logits_per_text (`torch.FloatTensor` of shape `(num_texts, num_images)`): the transpose.
        itm_logits (`torch.FloatTensor` of shape `(batch_size, 2)`): image-text matching logits of the aligned pairs
            (only when images and texts pair up one to one); index 1 is "match".
        image_embeds (`torch.FloatTensor` of shape `(num_images, embed_dim)`): normalised ITC image features.
        text_embeds (`torch.FloatTensor` of shape `(num_texts, embed_dim)`): normalised ITC text features.
        loss_itc, loss_itm (`torch.FloatTensor` of shape `()`): the two loss terms.
    """

    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    loss_itc: torch.FloatTensor | None = None
    loss_itm: torch.FloatTensor | None = None


@dataclass
class MPLUGGroundingOutput(ModelOutput):
    r"""
    Output of [`MPLUGForGrounding`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, with `labels`): CE weighted by L1 and (1 − GIoU), see the head.
        logits (`torch.FloatTensor` of shape `(batch_size, 4, num_box_bins)`): teacher-forced logits of the 4
            coordinate bins.
        pred_boxes (`torch.FloatTensor` of shape `(batch_size, 4)`): normalised (cx, cy, w, h) on the padded square
            (argmax of `logits`).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    pred_boxes: torch.FloatTensor | None = None


@dataclass
class MPLUGPreTrainingOutput(ModelOutput):
    r"""
    Output of [`MPLUGForPreTraining`]: `loss` = sum of the computed terms; each term `(())` separately.
    """

    loss: torch.FloatTensor | None = None
    loss_itc: torch.FloatTensor | None = None
    loss_itm: torch.FloatTensor | None = None
    loss_mlm: torch.FloatTensor | None = None
    loss_prefix_lm: torch.FloatTensor | None = None


@dataclass
class MPLUGBeamSearchOutput(ModelOutput):
    r"""
    Result of [`~MPLUGDecoderHeadMixin.generate_original`], the original mPLUG beam search.

    Args:
        sequences (`torch.LongTensor` of shape `(batch_size, num_return_sequences, max_len)`): token ids including the
            leading `[CLS]` (or prompt), padded with `pad_token_id`.
        scores (`torch.FloatTensor` of shape `(batch_size, num_return_sequences)`): cumulative log-probability /
            ((5 + generated) / 6) ** 0.6, as the original stores it.
        lengths (`torch.LongTensor` of shape `(batch_size, num_return_sequences)`): lengths of `sequences`.
    """

    sequences: torch.LongTensor | None = None
    scores: torch.FloatTensor | None = None
    lengths: torch.LongTensor | None = None


# ----------------------------------------------------------------------------------------------------------------------
# Task heads
# ----------------------------------------------------------------------------------------------------------------------


def shifted_token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token CE of position t predicting label t+1: `(batch, length - 1)`, 0 where the label is -100."""
    shifted_logits = logits[:, :-1].float()
    shifted_labels = labels[:, 1:]
    return F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.shape[-1]),
        shifted_labels.reshape(-1),
        ignore_index=-100,
        reduction="none",
    ).view(shifted_labels.shape)


def decoder_inputs_from_labels(labels: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    return labels.masked_fill(labels == -100, pad_token_id)


def resolve_decoder_input_ids(
    decoder_input_ids: torch.LongTensor | None, labels: torch.LongTensor | None, pad_token_id: int
) -> torch.LongTensor:
    """The decoder input: given explicitly, or teacher forcing on `labels` (-100 → pad)."""
    if decoder_input_ids is not None:
        return decoder_input_ids
    if labels is None:
        raise ValueError("pass labels (training) or decoder_input_ids, or call generate()")
    return decoder_inputs_from_labels(labels, pad_token_id)


class MPLUGDecoderHeadMixin:
    """Shared by the heads with a BERT decoder: embeddings accessors, the cache-aware decoder call and the original
    beam search."""

    _tied_weights_keys = {
        "text_decoder.lm_head.decoder.weight": "text_decoder.model.embeddings.word_embeddings.weight"
    }

    def get_output_embeddings(self) -> nn.Linear:
        return self.text_decoder.lm_head.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear):
        self.text_decoder.lm_head.decoder = new_embeddings

    def get_decoder(self) -> MPLUGTextDecoder:
        return self.text_decoder

    def _run_decoder(
        self,
        decoder_input_ids: torch.LongTensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor | None,
        decoder_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, Cache | None]:
        if use_cache and not isinstance(cache, EncoderDecoderCache):
            # generate() may hand over a plain DynamicCache: cross-attention needs its own cache beside it.
            cache = EncoderDecoderCache(cache or DynamicCache(), DynamicCache())
        return self.text_decoder(
            decoder_input_ids,
            memory,
            attention_mask=decoder_attention_mask,
            encoder_attention_mask=memory_mask,
            cache=cache,
            use_cache=use_cache,
        )

    def _expand_inputs_for_generation(self, expand_size: int = 1, is_encoder_decoder: bool = False, **model_kwargs):
        """Expand the decoder inputs for beams / returned sequences, but not the encoder states: the decoder shares
        each item's memory across its `expand_size` rows (see [`MPLUGTextModel`])."""
        encoder_outputs = model_kwargs.pop("encoder_outputs", None)
        input_ids, model_kwargs = super()._expand_inputs_for_generation(expand_size, False, **model_kwargs)
        model_kwargs["encoder_outputs"] = encoder_outputs
        return input_ids, model_kwargs

    @staticmethod
    def _reorder_cache(cache: EncoderDecoderCache, beam_idx: torch.LongTensor) -> EncoderDecoderCache:
        """Beam search reorders the self-attention cache; cross-attention K/V shared per item (smaller batch) stay,
        since beams only move within their item."""
        cache.self_attention_cache.reorder_cache(beam_idx)
        cross_cache = cache.cross_attention_cache
        if cross_cache.get_seq_length() > 0 and cross_cache.layers[0].keys.shape[0] == beam_idx.shape[0]:
            cross_cache.reorder_cache(beam_idx)
        return cache

    @torch.no_grad()
    def original_beam_search(
        self,
        memory: torch.Tensor,
        memory_mask: torch.Tensor | None,
        prompt_ids: torch.LongTensor | None = None,
        num_beams: int = 5,
        min_length: int = 1,
        max_length: int = 10,
        num_return_sequences: int = 1,
    ) -> MPLUGBeamSearchOutput:
        """
        The beam search of the original `TextGenerator` (OpenNMT style), with a KV cache instead of re-running the
        prefix and the memory shared by the beams instead of tiled: per step log(softmax) of the last logits; EOS forbidden (-1e20) before `min_length`; length penalty
        ((5 + step + 1) / 6) ** 0.6; candidates ranked by cumulative / penalty over beams × vocabulary. A beam that
        emits EOS is recorded with its normalised score and keeps extending; an item ends when its best beam emits EOS
        or at `max_length`, and then every current beam is recorded. Hypotheses are sorted by score.

        Args:
            memory: `(batch, memory_length, hidden)` decoder memory. memory_mask: `(batch, memory_length)` or None.
            prompt_ids: `(batch, prompt_length)` start of every hypothesis (default `[CLS]`).
            num_beams, min_length, max_length: as the original (`max_length` counts generated tokens).
            num_return_sequences: hypotheses returned per item (≤ num_beams · items recorded).
        """
        batch_size, device = memory.shape[0], memory.device
        if num_return_sequences < 1 or num_beams < 1 or max_length < 1:
            raise ValueError("num_beams, max_length and num_return_sequences must be >= 1")
        eos_token_id, pad_token_id = self.config.eos_token_id, self.config.pad_token_id
        if prompt_ids is None:
            prompt_ids = torch.full(
                (batch_size, 1), self.config.decoder_start_token_id, dtype=torch.long, device=device
            )
        alive = prompt_ids.repeat_interleave(num_beams, dim=0)
        cumulative = torch.full((batch_size, num_beams), float("-inf"), device=device)
        cumulative[:, 0] = 0.0
        cumulative = cumulative.view(-1)
        beam_offsets = (torch.arange(batch_size, device=device) * num_beams).unsqueeze(1)
        hypotheses: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch_size)]
        done = [False] * batch_size
        cache, step_input = None, alive
        for step in range(max_length):
            logits, cache = self._run_decoder(step_input, memory, memory_mask, cache=cache, use_cache=True)
            log_probs = torch.log(torch.softmax(logits[:, -1].float(), dim=-1))
            vocab_size = log_probs.shape[-1]
            if step < min_length:
                log_probs[:, eos_token_id] = -1e20
            log_probs = log_probs + cumulative.unsqueeze(1)
            length_penalty = ((5.0 + step + 1) / 6.0) ** 0.6
            candidate_scores = (log_probs / length_penalty).view(batch_size, num_beams * vocab_size)
            topk_scores, topk_ids = candidate_scores.topk(num_beams, dim=-1)
            cumulative = (topk_scores * length_penalty).view(-1)
            origins = (topk_ids // vocab_size + beam_offsets).view(-1)
            tokens = topk_ids.fmod(vocab_size)
            alive = torch.cat([alive.index_select(0, origins), tokens.view(-1, 1)], dim=1)
            self._reorder_cache(cache, origins)
            finished = tokens.eq(eos_token_id)
            if step + 1 == max_length:
                finished.fill_(True)
            for item in range(batch_size):
                if done[item]:
                    continue
                if finished[item, 0]:
                    finished[item].fill_(True)
                for beam in finished[item].nonzero().view(-1).tolist():
                    hypotheses[item].append((topk_scores[item, beam].item(), alive[item * num_beams + beam].tolist()))
                done[item] = bool(finished[item, 0])
            if all(done):
                break
            step_input = tokens.view(-1, 1)

        best = [sorted(h, key=lambda pair: pair[0], reverse=True)[:num_return_sequences] for h in hypotheses]
        max_len = max(len(seq) for item in best for _, seq in item)
        sequences = torch.full((batch_size, num_return_sequences, max_len), pad_token_id, dtype=torch.long)
        scores = torch.full((batch_size, num_return_sequences), float("-inf"))
        lengths = torch.zeros((batch_size, num_return_sequences), dtype=torch.long)
        for item, ranked in enumerate(best):
            for rank, (score, seq) in enumerate(ranked):
                sequences[item, rank, : len(seq)] = torch.tensor(seq)
                scores[item, rank] = score
                lengths[item, rank] = len(seq)
        return MPLUGBeamSearchOutput(
            sequences=sequences.to(device), scores=scores.to(device), lengths=lengths.to(device)
        )


class MPLUGForCaptioning(MPLUGDecoderHeadMixin, MPLUGPreTrainedModel, GenerationMixin):
    """
    Image captioning: the decoder attends to the image tokens only (the original caption model never uses its text
    encoder or fusion). Training: `labels` = `[CLS] caption [SEP]` with -100 on padding (and on a prompt), mean
    cross-entropy over the label tokens. Inference: `generate()` (KV cache, greedy/beam/sampling) or
    `generate_original()` for the original beam search. A prompt ("a picture of") is passed as `input_ids`.
    """

    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config: MPLUGConfig):
        super().__init__(config)
        self.vision_model = MPLUGVisionModel(config)
        self.text_decoder = MPLUGTextDecoder(config.text_config, config.decoder_layers)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_decoder.model.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding):
        self.text_decoder.model.embeddings.word_embeddings = value

    def get_encoder(self, modality: str | None = None):
        return self.vision_model

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        encoder_outputs: BaseModelOutput | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs,
    ) -> MPLUGSeq2SeqOutput:
        """
        Args:
            pixel_values: `(batch, 3, S, S)` images (or `(batch, frames, 3, S, S)` videos).
            decoder_input_ids: `(batch · n, length)` caption ids starting with `[CLS]`, n ≥ 1 captions per image in
                image order (the image tokens are shared, not tiled); defaults to `labels`.
            labels: `(batch · n, length)` `[CLS] caption [SEP]`, -100 where no loss is wanted.
        """
        if encoder_outputs is None:
            encoder_outputs = self.vision_model(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        memory = encoder_outputs.last_hidden_state
        decoder_input_ids = resolve_decoder_input_ids(decoder_input_ids, labels, self.config.pad_token_id)
        logits, cache = self._run_decoder(
            decoder_input_ids, memory, None, decoder_attention_mask, cache, bool(use_cache)
        )
        loss = None
        if labels is not None:
            token_loss = shifted_token_cross_entropy(logits, labels)
            loss = token_loss.sum() / (labels[:, 1:] != -100).sum().clamp(min=1)
        return MPLUGSeq2SeqOutput(loss=loss, logits=logits, cache=cache, encoder_last_hidden_state=memory)

    @torch.no_grad()
    def generate_original(
        self,
        pixel_values: torch.Tensor,
        prompt_ids: torch.LongTensor | None = None,
        num_beams: int = 5,
        min_length: int = 8,
        max_length: int = 25,
        num_return_sequences: int = 1,
    ) -> MPLUGBeamSearchOutput:
        """The original caption decoding (beam 5, min 8, max 25 for COCO) — see [`original_beam_search`]."""
        memory = self.vision_model(pixel_values).last_hidden_state
        if prompt_ids is not None and prompt_ids.shape[0] == 1 and memory.shape[0] > 1:
            prompt_ids = prompt_ids.expand(memory.shape[0], -1)
        return self.original_beam_search(
            memory, None, prompt_ids, num_beams, min_length, max_length, num_return_sequences
        )


class MPLUGForQuestionAnswering(MPLUGDecoderHeadMixin, MPLUGPreTrainedModel, GenerationMixin):
    """
    Visual question answering: the decoder attends to the fused memory [V_out; T_out] with mask [1…1; question mask].

    Training with several weighted answers per question (the original's `k`/`weights`): `labels` hold all answers
    `(num_answers, length)` as `[CLS] answer [SEP]` (-100 padding), `answer_counts[b]` says how many belong to
    question b (in order) and `answer_weights` weighs each; loss = Σ weight · (summed token CE of the answer) /
    batch_size. Without `answer_counts` the answers divide evenly over the questions in order (one each unless more are
    given; generation uses this to share the memory across beams), weight 1 by default.

    Inference: `generate()` for free answers, `generate_original()` for the original beam search, `rank_answers()`
    to pick from a closed answer list.
    """

    main_input_name = "input_ids"

    def __init__(self, config: MPLUGConfig):
        super().__init__(config)
        self.mplug = MPLUGModel(config)
        self.text_decoder = MPLUGTextDecoder(config.text_config, config.decoder_layers)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.mplug.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding):
        self.mplug.set_input_embeddings(value)

    def get_encoder(self, modality: str | None = None):
        return self.mplug

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
        encoder_outputs: MPLUGModelOutput | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        interpolate_pos_encoding: bool = False,
        image_indices: torch.LongTensor | None = None,
        **kwargs,
    ) -> MPLUGSeq2SeqOutput:
        """
        Args:
            input_ids: `(batch, q_len)` questions; attention_mask: `(batch, q_len)`; pixel_values: `(batch, 3, S, S)`.
            decoder_input_ids: `(num_answers, a_len)` answer prefix; defaults to `labels`.
            labels: `(num_answers, a_len)` `[CLS] answer [SEP]` with -100 padding.
            answer_counts: `(batch,)` answers per question (sum = num_answers). answer_weights: `(num_answers,)`.
            image_indices: `(batch,)` the image of each question when several questions share an image: then
                `pixel_values` holds `(num_images, 3, S, S)`, each image encoded once.
        """
        if encoder_outputs is None and image_indices is not None:
            encoder_outputs = self._encode_questions(
                input_ids, attention_mask, pixel_values, image_indices, interpolate_pos_encoding
            )
        elif encoder_outputs is None:
            encoder_outputs = self.mplug(
                input_ids=input_ids,
                pixel_values=pixel_values,
                attention_mask=attention_mask,
                interpolate_pos_encoding=interpolate_pos_encoding,
            )
        memory, memory_mask = encoder_outputs.last_hidden_state, encoder_outputs.encoder_attention_mask
        decoder_input_ids = resolve_decoder_input_ids(decoder_input_ids, labels, self.config.pad_token_id)
        if answer_counts is not None:
            answer_counts = torch.as_tensor(answer_counts, device=memory.device)
            if answer_counts.shape != (memory.shape[0],) or int(answer_counts.sum()) != decoder_input_ids.shape[0]:
                raise ValueError(
                    f"answer_counts {answer_counts.tolist()} must have one entry per question ({memory.shape[0]}) and "
                    f"sum to the number of answers ({decoder_input_ids.shape[0]})"
                )
            if bool((answer_counts != answer_counts[0]).any()):
                # uneven answer counts cannot share memory rows as equal groups: tile each question's memory
                memory = memory.repeat_interleave(answer_counts, dim=0)
                memory_mask = memory_mask.repeat_interleave(answer_counts, dim=0)
        logits, cache = self._run_decoder(
            decoder_input_ids, memory, memory_mask, decoder_attention_mask, cache, bool(use_cache)
        )
        loss = None
        if labels is not None:
            per_answer = shifted_token_cross_entropy(logits, labels).sum(dim=1)
            if answer_weights is None:
                answer_weights = torch.ones_like(per_answer)
            elif answer_weights.shape != per_answer.shape:
                raise ValueError(
                    f"answer_weights must have shape {tuple(per_answer.shape)}, got {tuple(answer_weights.shape)}"
                )
            num_questions = encoder_outputs.last_hidden_state.shape[0]
            loss = (answer_weights.to(per_answer.dtype) * per_answer).sum() / num_questions
        return MPLUGSeq2SeqOutput(
            loss=loss,
            logits=logits,
            cache=cache,
            encoder_last_hidden_state=memory,
            encoder_attention_mask=memory_mask,
        )

    @torch.no_grad()
    def generate_original(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        num_beams: int = 5,
        min_length: int = 1,
        max_length: int = 10,
        num_return_sequences: int = 1,
    ) -> MPLUGBeamSearchOutput:
        """The original VQA decoding (beam 5, min 1, max 10) — see [`original_beam_search`]."""
        encoded = self.mplug(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
        return self.original_beam_search(
            encoded.last_hidden_state,
            encoded.encoder_attention_mask,
            None,
            num_beams,
            min_length,
            max_length,
            num_return_sequences,
        )

    @torch.no_grad()
    def rank_answers(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor,
        candidate_ids: torch.LongTensor,
        candidate_attention_mask: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        k: int = 128,
        encoder_outputs: MPLUGModelOutput | None = None,
    ) -> tuple[torch.LongTensor, torch.Tensor]:
        """
        Closed-vocabulary answering as the original `rank_answer`: the probability of each candidate's first token
        after `[CLS]` selects the top `k` candidates; each is then scored by a teacher-forced pass,
        log p = log p(first token) − Σ token CE (the original counts the first token in both terms); the result is
        the softmax over the `k` scores, sorted.

        Args:
            input_ids, attention_mask, pixel_values: the questions and images, `(batch, …)`.
            candidate_ids: `(num_candidates, c_len)` candidates as `[CLS] answer [SEP]` (padding 0).
            candidate_attention_mask: `(num_candidates, c_len)`.
            k: candidates re-scored per question (1 ≤ k ≤ num_candidates).
        Returns:
            `(topk_ids, topk_probs)`, each `(batch, k)`: indices into the candidate list, best first.
        """
        num_candidates = candidate_ids.shape[0] if candidate_ids is not None else 0
        if num_candidates == 0:
            raise ValueError("the candidate answer list is empty")
        if not 1 <= k <= num_candidates:
            raise ValueError(f"k={k} must be between 1 and the number of candidates ({num_candidates})")
        if candidate_ids.shape[1] < 2:
            raise ValueError("candidates must be encoded as [CLS] answer [SEP] (at least 2 tokens)")
        if encoder_outputs is None:
            encoder_outputs = self.mplug(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
        memory, memory_mask = encoder_outputs.last_hidden_state, encoder_outputs.encoder_attention_mask
        batch_size = memory.shape[0]
        start = candidate_ids[:1, :1].expand(batch_size, 1)
        first_logits, _ = self._run_decoder(start, memory, memory_mask)
        first_probs = first_logits[:, 0].float().softmax(dim=-1).index_select(1, candidate_ids[:, 1])
        topk_probs, topk_ids = first_probs.topk(k, dim=1)

        chosen_ids = candidate_ids.index_select(0, topk_ids.view(-1))
        chosen_mask = candidate_attention_mask.index_select(0, topk_ids.view(-1))
        answer_log_likelihood, _ = self._answer_log_likelihoods(memory, memory_mask, chosen_ids, chosen_mask)
        scores = topk_probs.log() + answer_log_likelihood
        probs = scores.softmax(dim=1)
        order = probs.argsort(dim=1, descending=True)
        return topk_ids.gather(1, order), probs.gather(1, order)

    def _answer_log_likelihoods(
        self, memory: torch.Tensor, memory_mask: torch.Tensor, answer_ids: torch.LongTensor, answer_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Teacher-forced log-likelihood of `[CLS] answer [SEP]` rows, `group` consecutive rows per memory row, in one
        decoder pass that shares each memory row across its group. Returns the summed log-probabilities of the tokens
        after `[CLS]` and their counts, both `(memory_batch, group)`.
        """
        labels = answer_ids.masked_fill(answer_mask == 0, -100)
        logits, _ = self._run_decoder(answer_ids, memory, memory_mask, decoder_attention_mask=answer_mask)
        token_nll = shifted_token_cross_entropy(logits, labels)
        batch_size = memory.shape[0]
        return -token_nll.sum(dim=1).view(batch_size, -1), (labels[:, 1:] != -100).sum(dim=1).view(batch_size, -1)

    def _encode_questions(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None,
        pixel_values: torch.Tensor,
        image_indices: torch.LongTensor | None,
        interpolate_pos_encoding: bool = False,
    ) -> MPLUGModelOutput:
        """Encode each image once and fuse it with every question asking about it (`image_indices[q]` = its image)."""
        if image_indices is None:
            if pixel_values.shape[0] != input_ids.shape[0]:
                raise ValueError(
                    f"batch size mismatch: {pixel_values.shape[0]} images but {input_ids.shape[0]} questions; "
                    "pass image_indices to ask several questions about one image"
                )
        else:
            image_indices = torch.as_tensor(image_indices, device=input_ids.device)
            if image_indices.shape != (input_ids.shape[0],):
                raise ValueError(f"image_indices must have one entry per question ({input_ids.shape[0]})")
            if image_indices.numel() and not 0 <= int(image_indices.min()) <= int(image_indices.max()) < len(
                pixel_values
            ):
                raise ValueError(f"image_indices must lie in [0, {len(pixel_values) - 1}] (one per image)")
        validate_pixel_values(pixel_values, self.config.vision_config, interpolate_pos_encoding)
        image_embeds = self.mplug.get_image_features(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        text_embeds = self.mplug.get_text_features(input_ids, attention_mask)
        return self.mplug.fuse(image_embeds, text_embeds, attention_mask, image_indices=image_indices)

    @torch.no_grad()
    def score_yes_no(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor,
        yes_token_id: int,
        no_token_id: int,
        attention_mask: torch.Tensor | None = None,
        image_indices: torch.LongTensor | None = None,
        full_sequence: bool = False,
    ) -> torch.Tensor:
        """
        P(yes) of yes/no questions, the text-to-image judge's score (DPG-Bench, TIFA yes/no items), batched.

        With `full_sequence=False` the decoder's first answer token decides: softmax of its logits restricted to
        {yes, no}. With `full_sequence=True` the likelihoods of the whole answers `[CLS] yes [SEP]` and
        `[CLS] no [SEP]` are compared instead (the [SEP] term also counts, as when the original ranks answers).

        Args:
            input_ids, attention_mask: `(num_questions, q_len)` questions.
            pixel_values: `(num_images, 3, S, S)`; each image is encoded once.
            yes_token_id, no_token_id: the word pieces of "yes" and "no" (`processor.tokenizer.convert_tokens_to_ids`).
            image_indices: `(num_questions,)` the image each question is about (default: question i ↔ image i).
        Returns:
            `(num_questions,)` probabilities of "yes".
        """
        encoded = self._encode_questions(input_ids, attention_mask, pixel_values, image_indices)
        memory, memory_mask = encoded.last_hidden_state, encoded.encoder_attention_mask
        cls_id, sep_id = self.config.decoder_start_token_id, self.config.eos_token_id
        if not full_sequence:
            start = torch.full((memory.shape[0], 1), cls_id, dtype=torch.long, device=memory.device)
            first_logits, _ = self._run_decoder(start, memory, memory_mask)
            return first_logits[:, 0, [yes_token_id, no_token_id]].float().softmax(dim=-1)[:, 0]
        answers = torch.tensor([[cls_id, yes_token_id, sep_id], [cls_id, no_token_id, sep_id]], device=memory.device)
        answers = answers.repeat(memory.shape[0], 1)
        log_likelihood, _ = self._answer_log_likelihoods(memory, memory_mask, answers, torch.ones_like(answers))
        return log_likelihood.softmax(dim=-1)[:, 0]

    @torch.no_grad()
    def choose(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor,
        choice_ids: torch.LongTensor,
        choice_attention_mask: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_indices: torch.LongTensor | None = None,
        length_normalize: bool = False,
    ) -> tuple[torch.LongTensor, torch.Tensor]:
        """
        Multiple choice by answer likelihood: every option of every question is scored by the decoder in one pass
        over the question's shared memory (replacing TIFA's free answer → sentence-embedding matching).

        The score of an option is log p(`[CLS] option [SEP]`) summed over its tokens, or with `length_normalize`
        the mean per token (which stops short options from winning only by being short). Padding options (all-zero
        mask rows, for questions with fewer options) are never chosen.

        Args:
            input_ids, attention_mask: `(num_questions, q_len)` questions.
            pixel_values: `(num_images, 3, S, S)`, each encoded once; image_indices as in [`score_yes_no`].
            choice_ids, choice_attention_mask: `(num_questions, num_choices, c_len)` options as `[CLS] option [SEP]`.
        Returns:
            `(choice, scores)`: `(num_questions,)` index of the best option and `(num_questions, num_choices)` scores
            (-inf for padding options).
        """
        if choice_ids.ndim != 3 or choice_ids.shape[:2] != (input_ids.shape[0], choice_ids.shape[1]):
            raise ValueError(
                f"choice_ids must be (num_questions={input_ids.shape[0]}, num_choices, length), got "
                f"{tuple(choice_ids.shape)}"
            )
        present = choice_attention_mask.sum(dim=-1) > 0
        if not bool(present.any(dim=1).all()):
            raise ValueError("every question needs at least one non-empty option")
        encoded = self._encode_questions(input_ids, attention_mask, pixel_values, image_indices)
        log_likelihood, lengths = self._answer_log_likelihoods(
            encoded.last_hidden_state,
            encoded.encoder_attention_mask,
            choice_ids.flatten(0, 1),
            choice_attention_mask.flatten(0, 1),
        )
        scores = log_likelihood / lengths.clamp(min=1) if length_normalize else log_likelihood
        scores = scores.masked_fill(~present, float("-inf"))
        return scores.argmax(dim=1), scores


def contrastive_loss(logits_per_image: torch.Tensor, image_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric ITC loss; with `image_ids`, every text of the same image is a positive (soft targets)."""
    if image_ids is None:
        targets = torch.eye(logits_per_image.shape[0], device=logits_per_image.device)
    else:
        targets = (image_ids.view(-1, 1) == image_ids.view(1, -1)).float()
    targets = targets / targets.sum(dim=1, keepdim=True)
    loss_i2t = -(F.log_softmax(logits_per_image, dim=1) * targets).sum(dim=1).mean()
    loss_t2i = -(F.log_softmax(logits_per_image.t(), dim=1) * targets).sum(dim=1).mean()
    return (loss_i2t + loss_t2i) / 2


def frame_count(pixel_values: torch.Tensor) -> int:
    """Frames per item: T for a video batch `(batch, T, 3, H, W)`, 1 for images."""
    return pixel_values.shape[1] if pixel_values.ndim == 5 else 1


class MPLUGMomentumEncoders(nn.Module):
    """
    The momentum (EMA) copies of the unimodal encoders and ITC projections and the queues of their features, with
    which the original trains ITC (ALBEF style, `config.momentum_queue_size > 0`). Never updated by gradients: the
    owning head moves them towards its online weights before each training step ([`update`]). They are copied from
    the online weights at the first training step unless a checkpoint provided them (`initialized`).
    """

    def __init__(self, config: MPLUGConfig):
        super().__init__()
        hidden, size = config.text_config.hidden_size, config.momentum_queue_size
        self.momentum = config.momentum
        self.vision_model = MPLUGVisionModel(config)
        self.text_encoder = MPLUGTextModel(config.text_config, config.text_encoder_layers)
        self.vision_proj = nn.Linear(hidden, config.embed_dim)
        self.text_proj = nn.Linear(hidden, config.embed_dim)
        self.register_buffer("image_queue", F.normalize(torch.randn(config.embed_dim, size), dim=0))
        self.register_buffer("text_queue", F.normalize(torch.randn(config.embed_dim, size), dim=0))
        self.register_buffer("idx_queue", torch.full((1, size), -100, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.requires_grad_(False)

    def train(self, mode: bool = True):
        # from_pretrained re-creates parameters as trainable (and ends with eval()); the momentum copies never are
        self.requires_grad_(False)
        return super().train(mode)

    def _pairs(self, owner: "MPLUGContrastiveMixin") -> list[tuple[nn.Module, nn.Module]]:
        return [
            (owner.mplug.vision_model, self.vision_model),
            (owner.mplug.text_encoder, self.text_encoder),
            (owner.vision_proj, self.vision_proj),
            (owner.text_proj, self.text_proj),
        ]

    @torch.no_grad()
    def update(self, owner: "MPLUGContrastiveMixin"):
        """θ_m ← m·θ_m + (1 − m)·θ (a copy the first time)."""
        pairs = self._pairs(owner)
        online = [p for online_module, _ in pairs for p in online_module.parameters()]
        momentum = [p for _, momentum_module in pairs for p in momentum_module.parameters()]
        if not bool(self.initialized):
            torch._foreach_copy_(momentum, online)
            self.initialized.fill_(True)
        else:
            torch._foreach_lerp_(momentum, online, 1.0 - self.momentum)

    @torch.no_grad()
    def features(self, pixel_values, input_ids, attention_mask, project_image) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised momentum ITC features of images and texts, `(batch, embed_dim)` each."""
        image_embeds = self.vision_model(pixel_values).last_hidden_state
        image_feat = project_image(image_embeds, self.vision_proj, frame_count(pixel_values))
        text_states = self.text_encoder(input_ids, attention_mask=attention_mask).last_hidden_state
        return image_feat, F.normalize(self.text_proj(text_states[:, 0]), dim=-1)

    @torch.no_grad()
    def enqueue(self, image_feat: torch.Tensor, text_feat: torch.Tensor, image_ids: torch.Tensor):
        """Write the batch's momentum features (gathered from every process) over the oldest queue entries."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            gathered = []
            for tensor in (image_feat, text_feat, image_ids):
                parts = [torch.empty_like(tensor) for _ in range(world)]
                torch.distributed.all_gather(parts, tensor.contiguous())
                gathered.append(torch.cat(parts))
            image_feat, text_feat, image_ids = gathered
        size = self.image_queue.shape[1]
        slots = (self.queue_ptr + torch.arange(image_feat.shape[0], device=image_feat.device)) % size
        self.image_queue[:, slots] = image_feat.t().to(self.image_queue.dtype)
        self.text_queue[:, slots] = text_feat.t().to(self.text_queue.dtype)
        self.idx_queue[:, slots] = image_ids.view(1, -1)
        self.queue_ptr.copy_((self.queue_ptr + image_feat.shape[0]) % size)


class MPLUGContrastiveMixin:
    """ITC projections, ITM head and their losses, shared by [`MPLUGForRetrieval`] and [`MPLUGForPreTraining`]."""

    def _init_contrastive_heads(self, config: MPLUGConfig):
        hidden = config.text_config.hidden_size
        self.vision_proj = nn.Linear(hidden, config.embed_dim)
        self.text_proj = nn.Linear(hidden, config.embed_dim)
        self.itm_head = nn.Linear(hidden, 2)
        self.temp = nn.Parameter(torch.tensor(float(config.contrastive_temperature)))
        self.momentum_encoders = MPLUGMomentumEncoders(config) if config.momentum_queue_size > 0 else None

    def project_image(
        self, image_embeds: torch.Tensor, projection: nn.Linear | None = None, num_frames: int | None = None
    ) -> torch.Tensor:
        """
        `(batch, tokens, hidden)` (or `(batch, frames·tokens, hidden)`) → normalised `(batch, embed_dim)`. A video
        uses the mean of its frames' projected CLS features, as the original video retrieval does. `num_frames`
        (given by the callers that see `pixel_values`) is otherwise inferred from the model's tokens per image.
        """
        projection = projection if projection is not None else self.vision_proj
        if num_frames is None:
            tokens_per_frame = self.config.num_image_tokens
            divisible = image_embeds.shape[1] % tokens_per_frame == 0
            num_frames = image_embeds.shape[1] // tokens_per_frame if divisible else 1
        frames = image_embeds.view(image_embeds.shape[0], num_frames, -1, image_embeds.shape[-1])
        return F.normalize(projection(frames[:, :, 0]).mean(dim=1), dim=-1)

    def itc_loss(
        self,
        image_feat: torch.Tensor,
        text_feat: torch.Tensor,
        pixel_values: torch.Tensor,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor,
        image_ids: torch.LongTensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        ITC loss and the in-batch `logits_per_image` (for hard-negative mining). In training with momentum encoders
        (`config.momentum_queue_size > 0`) it is the original's: similarities against the momentum features of the
        batch and of the queue, targets = α · softmax(momentum similarities) + (1 − α) · ground truth (texts of the
        same `image_ids` are positives, in the queue too), then the batch is enqueued. Otherwise symmetric in-batch
        InfoNCE.
        """
        logits_per_image = image_feat @ text_feat.t() / self.temp
        if self.momentum_encoders is None or not self.training:
            return contrastive_loss(logits_per_image, image_ids), logits_per_image
        momentum = self.momentum_encoders
        with torch.no_grad():
            momentum.update(self)
            image_feat_m, text_feat_m = momentum.features(pixel_values, input_ids, attention_mask, self.project_image)
            image_feat_all = torch.cat([image_feat_m.t(), momentum.image_queue.clone()], dim=1)
            text_feat_all = torch.cat([text_feat_m.t(), momentum.text_queue.clone()], dim=1)
            if image_ids is None:  # each pair is its own image; queued features are negatives
                positives = torch.eye(image_feat.shape[0], text_feat_all.shape[1], device=image_feat.device)
            else:
                ids_all = torch.cat([image_ids.view(1, -1), momentum.idx_queue.clone()], dim=1)
                positives = (image_ids.view(-1, 1) == ids_all).float()
            ground_truth = positives / positives.sum(dim=1, keepdim=True)
            alpha = self.config.distillation_alpha
            targets_i2t = (
                alpha * (image_feat_m @ text_feat_all / self.temp).softmax(dim=1) + (1 - alpha) * ground_truth
            )
            targets_t2i = (
                alpha * (text_feat_m @ image_feat_all / self.temp).softmax(dim=1) + (1 - alpha) * ground_truth
            )
        loss_i2t = -(F.log_softmax(image_feat @ text_feat_all / self.temp, dim=1) * targets_i2t).sum(dim=1).mean()
        loss_t2i = -(F.log_softmax(text_feat @ image_feat_all / self.temp, dim=1) * targets_t2i).sum(dim=1).mean()
        if image_ids is None:
            image_ids = torch.full((image_feat.shape[0],), -100, dtype=torch.long, device=image_feat.device)
        momentum.enqueue(image_feat_m, text_feat_m, image_ids)
        return (loss_i2t + loss_t2i) / 2, logits_per_image

    def project_text(self, text_embeds: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(text_embeds[:, 0]), dim=-1)

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
        """Normalised ITC image features `(batch, embed_dim)`."""
        return self.project_image(
            self.mplug.get_image_features(pixel_values, **kwargs), num_frames=frame_count(pixel_values)
        )

    def get_text_features(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None, **kwargs):
        """Normalised ITC text features `(batch, embed_dim)` from the text encoder (before fusion)."""
        return self.project_text(self.mplug.get_text_features(input_ids, attention_mask))

    def itm_logits(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, attention_mask: torch.Tensor | None):
        """ITM logits `(batch, 2)` of aligned (image tokens, text states) pairs; index 1 = match."""
        fused = self.mplug.fuse(image_embeds, text_embeds, attention_mask)
        return self.itm_head(fused.text_hidden_state[:, 0])

    def itm_loss_with_hard_negatives(
        self,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        logits_per_image: torch.Tensor,
        image_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ITM over positives + one hard negative text per image and one hard negative image per text, sampled in
        proportion to the softmax of ITC similarities with positives excluded (as the original)."""
        batch_size = image_embeds.shape[0]
        with torch.no_grad():
            if image_ids is None:
                positive = torch.eye(batch_size, dtype=torch.bool, device=image_embeds.device)
            else:
                positive = image_ids.view(-1, 1) == image_ids.view(1, -1)
            weights_i2t = logits_per_image.float().softmax(dim=1).masked_fill(positive, 0) + 1e-12
            weights_t2i = logits_per_image.t().float().softmax(dim=1).masked_fill(positive, 0) + 1e-12
            negative_texts = torch.multinomial(weights_i2t, 1).view(-1)
            negative_images = torch.multinomial(weights_t2i, 1).view(-1)
        all_images = torch.cat([image_embeds, image_embeds[negative_images], image_embeds], dim=0)
        all_texts = torch.cat([text_embeds, text_embeds, text_embeds[negative_texts]], dim=0)
        all_masks = torch.cat([attention_mask, attention_mask, attention_mask[negative_texts]], dim=0)
        logits = self.itm_logits(all_images, all_texts, all_masks)
        targets = torch.cat(
            [torch.ones(batch_size, dtype=torch.long), torch.zeros(2 * batch_size, dtype=torch.long)]
        ).to(logits.device)
        return F.cross_entropy(logits.float(), targets)


class MPLUGForRetrieval(MPLUGContrastiveMixin, MPLUGPreTrainedModel):
    """
    Image-text retrieval: ITC (normalised projections of the image CLS and of the text-encoder CLS, divided by `temp`)
    and ITM (fusion, then `itm_head` on the fused text CLS). [`retrieve`] ranks an image set against a text set the
    original way: ITC top-k, re-scored by the ITM match logit, -100 elsewhere. `forward` returns `logits_per_image`
    for any numbers of images and texts (zero-shot classification), and ITM logits when they pair up.
    """

    def __init__(self, config: MPLUGConfig):
        super().__init__(config)
        self.mplug = MPLUGModel(config)
        self._init_contrastive_heads(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.mplug.get_input_embeddings()

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            init.constant_(self.temp, self.config.contrastive_temperature)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_ids: torch.LongTensor | None = None,
        return_loss: bool = False,
        compute_itm: bool | None = None,
        **kwargs,
    ) -> MPLUGRetrievalOutput:
        """
        Args:
            input_ids, attention_mask: `(num_texts, length)`. pixel_values: `(num_images, 3, S, S)`.
            image_ids: `(batch,)` image identity of each pair, so that texts of the same image are not negatives.
            return_loss: compute ITC + ITM (hard negatives) over the aligned batch.
            compute_itm: ITM logits of the aligned pairs (default: when the batch sizes match).
        """
        validate_pixel_values(pixel_values, self.config.vision_config, False)
        validate_text_inputs(input_ids, attention_mask, input_ids.shape[0] if input_ids is not None else 0)
        image_embeds = self.mplug.get_image_features(pixel_values)
        text_embeds = self.mplug.text_encoder(input_ids, attention_mask=attention_mask).last_hidden_state
        image_feat = self.project_image(image_embeds, num_frames=frame_count(pixel_values))
        text_feat = self.project_text(text_embeds)
        logits_per_image = image_feat @ text_feat.t() / self.temp
        aligned = image_embeds.shape[0] == text_embeds.shape[0]
        if image_ids is not None:
            image_ids = torch.as_tensor(image_ids, device=image_feat.device)
        if return_loss and not aligned:
            raise ValueError(
                f"the loss needs aligned pairs: {image_embeds.shape[0]} images but {text_embeds.shape[0]} texts"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        itm_logits = loss = loss_itc = loss_itm = None
        if compute_itm if compute_itm is not None else aligned and not return_loss:
            if not aligned:
                raise ValueError("compute_itm needs as many images as texts")
            itm_logits = self.itm_logits(image_embeds, text_embeds, attention_mask)
        if return_loss:
            loss_itc, logits_per_image = self.itc_loss(
                image_feat, text_feat, pixel_values, input_ids, attention_mask, image_ids
            )
            loss_itm = self.itm_loss_with_hard_negatives(
                image_embeds, text_embeds, attention_mask, logits_per_image.detach(), image_ids
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
        )

    @torch.no_grad()
    def retrieve(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        k: int = 256,
        batch_size: int = 64,
        add_itc: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Score every image against every text as the original evaluation: ITC similarity (no temperature) selects the
        top `k` texts per image (and images per text); those pairs get the raw ITM match logit, the rest -100. With
        `add_itc` the selected pairs score ITM + ITC similarity, the original's video retrieval score.

        Returns:
            `(scores_i2t (num_images, num_texts), scores_t2i (num_texts, num_images))`.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        image_embeds = torch.cat(
            [self.mplug.get_image_features(chunk) for chunk in pixel_values.split(batch_size)], dim=0
        )
        text_embeds = torch.cat(
            [
                self.mplug.text_encoder(ids, attention_mask=mask).last_hidden_state
                for ids, mask in zip(input_ids.split(batch_size), attention_mask.split(batch_size))
            ],
            dim=0,
        )
        sims = (
            self.project_image(image_embeds, num_frames=frame_count(pixel_values)) @ self.project_text(text_embeds).t()
        )
        return (
            self._rerank(sims, image_embeds, text_embeds, attention_mask, k, batch_size, True, add_itc),
            self._rerank(sims.t(), image_embeds, text_embeds, attention_mask, k, batch_size, False, add_itc),
        )

    def _rerank(self, sims, image_embeds, text_embeds, attention_mask, k, batch_size, images_are_queries, add_itc):
        k = min(k, sims.shape[1])
        scores = torch.full_like(sims, -100.0)
        for query in range(sims.shape[0]):
            top = sims[query].topk(k).indices
            logits = []
            for chunk in top.split(batch_size):
                if images_are_queries:
                    pair_images = image_embeds[query : query + 1].expand(len(chunk), -1, -1)
                    pair_texts, pair_mask = text_embeds[chunk], attention_mask[chunk]
                else:
                    pair_images = image_embeds[chunk]
                    pair_texts = text_embeds[query : query + 1].expand(len(chunk), -1, -1)
                    pair_mask = attention_mask[query : query + 1].expand(len(chunk), -1)
                logits.append(self.itm_logits(pair_images, pair_texts, pair_mask)[:, 1])
            scores[query, top] = torch.cat(logits).to(scores.dtype) + (sims[query, top] if add_itc else 0)
        return scores


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    center, size = boxes[..., :2], boxes[..., 2:]
    return torch.cat([center - size / 2, center + size / 2], dim=-1)


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Element-wise GIoU of aligned xyxy boxes `(n, 4)` → `(n,)`."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    inter_size = (torch.min(boxes1[:, 2:], boxes2[:, 2:]) - torch.max(boxes1[:, :2], boxes2[:, :2])).clamp(min=0)
    inter = inter_size[:, 0] * inter_size[:, 1]
    union = area1 + area2 - inter
    iou = inter / union
    hull_size = (torch.max(boxes1[:, 2:], boxes2[:, 2:]) - torch.min(boxes1[:, :2], boxes2[:, :2])).clamp(min=0)
    hull = hull_size[:, 0] * hull_size[:, 1]
    return iou - (hull - union) / hull


class MPLUGForGrounding(MPLUGDecoderHeadMixin, MPLUGPreTrainedModel):
    """
    Visual grounding (referring expressions) as the original: a box is 4 vocabulary tokens after the prefix token
    `[unused339]`: bin b of each normalised coordinate (cx, cy, w, h) on the padded square image is token
    `box_bin_start_token_id + b`, b = floor(clamp(v, 0, 1) · (num_box_bins − 1)). The decoder attends to [V_out; T_out];
    logits outside the bins are masked. Loss: per-token CE weighted by the L1 error (clamped at 5) and by 1 − GIoU of
    the argmax box — per sample; the original's broadcasting to (batch, batch, 4) is not reproduced.
    """

    def __init__(self, config: MPLUGConfig):
        super().__init__(config)
        self.mplug = MPLUGModel(config)
        self.text_decoder = MPLUGTextDecoder(config.text_config, config.decoder_layers)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.mplug.get_input_embeddings()

    @property
    def _bin_ids(self) -> slice:
        start = self.config.box_bin_start_token_id
        return slice(start, start + self.config.num_box_bins)

    def boxes_to_tokens(self, boxes: torch.Tensor) -> torch.LongTensor:
        """Normalised (cx, cy, w, h) `(batch, 4)` → token ids `(batch, 4)`."""
        bins = (boxes.clamp(0, 1) * (self.config.num_box_bins - 1)).floor().long()
        return bins + self.config.box_bin_start_token_id

    def tokens_to_boxes(self, tokens: torch.LongTensor) -> torch.Tensor:
        """Token ids `(batch, 4)` → normalised (cx, cy, w, h)."""
        return (tokens - self.config.box_bin_start_token_id).float() / (self.config.num_box_bins - 1)

    def _bin_logits(self, decoder_input_ids, memory, memory_mask, cache=None) -> tuple[torch.Tensor, Cache | None]:
        logits, cache = self._run_decoder(
            decoder_input_ids, memory, memory_mask, cache=cache, use_cache=cache is not None
        )
        return logits[..., self._bin_ids], cache

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        encoder_outputs: MPLUGModelOutput | None = None,
        **kwargs,
    ) -> MPLUGGroundingOutput:
        """
        Args:
            input_ids, attention_mask: `(batch, length)` queries (`[CLS] query [SEP]`, max 20 tokens in the original).
            pixel_values: `(batch, 3, S, S)` from the processor's grounding mode.
            labels: `(batch, 4)` target boxes, normalised (cx, cy, w, h) on the padded square.
        """
        if encoder_outputs is None:
            encoder_outputs = self.mplug(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
        memory, memory_mask = encoder_outputs.last_hidden_state, encoder_outputs.encoder_attention_mask
        if labels is None:
            return MPLUGGroundingOutput(pred_boxes=self.predict_boxes(encoder_outputs=encoder_outputs))
        if labels.shape != (memory.shape[0], 4):
            raise ValueError(f"labels must be boxes of shape ({memory.shape[0]}, 4), got {tuple(labels.shape)}")
        target_tokens = self.boxes_to_tokens(labels)
        prefix = torch.full_like(target_tokens[:, :1], self.config.box_prefix_token_id)
        bin_logits, _ = self._bin_logits(torch.cat([prefix, target_tokens], dim=1), memory, memory_mask)
        bin_logits = bin_logits[:, :4]
        target_bins = target_tokens - self.config.box_bin_start_token_id
        token_ce = F.cross_entropy(
            bin_logits.float().reshape(-1, bin_logits.shape[-1]), target_bins.reshape(-1), reduction="none"
        )
        pred_boxes = bin_logits.argmax(dim=-1).float() / (self.config.num_box_bins - 1)
        with torch.no_grad():
            weight_l1 = (pred_boxes - labels).abs().clamp(0, 5)
            weight_giou = 1 - generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(labels))
        loss = (token_ce.view(-1, 4) * weight_l1 * weight_giou.unsqueeze(1)).mean()
        return MPLUGGroundingOutput(loss=loss, logits=bin_logits, pred_boxes=pred_boxes)

    @torch.no_grad()
    def predict_boxes(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        encoder_outputs: MPLUGModelOutput | None = None,
    ) -> torch.Tensor:
        """
        Greedy decoding of the 4 coordinate tokens (with a KV cache).

        Returns:
            `(batch, 4)`: normalised (cx, cy, w, h) on the padded square, or — with `image_sizes` `(batch, 2)` from
            the processor's grounding mode — pixel (x1, y1, x2, y2) boxes of the input images.
        """
        if encoder_outputs is None:
            encoder_outputs = self.mplug(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
        memory, memory_mask = encoder_outputs.last_hidden_state, encoder_outputs.encoder_attention_mask
        step_input = torch.full((memory.shape[0], 1), self.config.box_prefix_token_id, device=memory.device)
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        tokens = []
        for _ in range(4):
            bin_logits, cache = self._bin_logits(step_input, memory, memory_mask, cache)
            step_input = bin_logits[:, -1].argmax(dim=-1, keepdim=True) + self.config.box_bin_start_token_id
            tokens.append(step_input)
        boxes = self.tokens_to_boxes(torch.cat(tokens, dim=1))
        if image_sizes is None:
            return boxes
        from .image_processing_mplug import MPLUGImageProcessor

        processor = MPLUGImageProcessor(image_size=self.config.vision_config.image_size)
        return torch.stack(
            [
                processor.grounding_box_inverse(box, tuple(size.tolist()))[0]
                for box, size in zip(boxes.cpu(), image_sizes)
            ]
        ).to(boxes.device)


class MPLUGForPreTraining(MPLUGContrastiveMixin, MPLUGDecoderHeadMixin, MPLUGPreTrainedModel):
    """
    The pretraining objectives of mPLUG over one batch of aligned image-text pairs: ITC, ITM with hard negatives, MLM
    on the fused text (masked `mlm_input_ids` → `mlm_labels`), and PrefixLM through the decoder (the text prefix is
    encoded and fused, `labels` hold the continuation). Each loss is returned separately and `loss` is their sum.
    With `config.momentum_queue_size > 0` ITC trains against momentum encoders and feature queues as the original
    (see [`MPLUGContrastiveMixin.itc_loss`]); otherwise against in-batch negatives.
    """

    _tied_weights_keys = {
        **MPLUGDecoderHeadMixin._tied_weights_keys,
        "mlm_head.decoder.weight": "mplug.text_encoder.embeddings.word_embeddings.weight",
    }

    def __init__(self, config: MPLUGConfig):
        super().__init__(config)
        self.mplug = MPLUGModel(config)
        self._init_contrastive_heads(config)
        self.mlm_head = MPLUGLMHead(config.text_config)
        self.text_decoder = MPLUGTextDecoder(config.text_config, config.decoder_layers)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.mplug.get_input_embeddings()

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            init.constant_(self.temp, self.config.contrastive_temperature)

    def forward(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mlm_input_ids: torch.LongTensor | None = None,
        mlm_labels: torch.LongTensor | None = None,
        prefix_input_ids: torch.LongTensor | None = None,
        prefix_attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs,
    ) -> MPLUGPreTrainingOutput:
        """
        Args:
            input_ids, attention_mask: `(batch, length)` texts paired with `pixel_values` `(batch, 3, S, S)`.
            mlm_input_ids, mlm_labels: `(batch, length)` masked texts and their labels (-100 where not masked).
            prefix_input_ids, prefix_attention_mask, labels: PrefixLM prefix `(batch, p_len)` and continuation
                `[CLS] suffix [SEP]` `(batch, s_len)` (-100 padding).
        """
        validate_pixel_values(pixel_values, self.config.vision_config, False)
        validate_text_inputs(input_ids, attention_mask, pixel_values.shape[0])
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        image_embeds = self.mplug.get_image_features(pixel_values)
        text_embeds = self.mplug.text_encoder(input_ids, attention_mask=attention_mask).last_hidden_state
        loss_itc, logits_per_image = self.itc_loss(
            self.project_image(image_embeds, num_frames=frame_count(pixel_values)),
            self.project_text(text_embeds),
            pixel_values,
            input_ids,
            attention_mask,
        )
        loss_itm = self.itm_loss_with_hard_negatives(
            image_embeds, text_embeds, attention_mask, logits_per_image.detach()
        )
        losses = {"loss_itc": loss_itc, "loss_itm": loss_itm}
        if mlm_input_ids is not None:
            if mlm_labels is None:
                raise ValueError("mlm_input_ids needs mlm_labels")
            masked_text = self.mplug.text_encoder(mlm_input_ids, attention_mask=attention_mask).last_hidden_state
            fused = self.mplug.fuse(image_embeds, masked_text, attention_mask)
            mlm_logits = self.mlm_head(fused.text_hidden_state)
            losses["loss_mlm"] = F.cross_entropy(
                mlm_logits.float().view(-1, mlm_logits.shape[-1]), mlm_labels.view(-1), ignore_index=-100
            )
        if labels is not None:
            if prefix_input_ids is None:
                raise ValueError("PrefixLM labels need prefix_input_ids")
            if prefix_attention_mask is None:
                prefix_attention_mask = torch.ones_like(prefix_input_ids)
            prefix_text = self.mplug.text_encoder(
                prefix_input_ids, attention_mask=prefix_attention_mask
            ).last_hidden_state
            fused = self.mplug.fuse(image_embeds, prefix_text, prefix_attention_mask)
            logits, _ = self._run_decoder(
                decoder_inputs_from_labels(labels, self.config.pad_token_id),
                fused.last_hidden_state,
                fused.encoder_attention_mask,
            )
            token_loss = shifted_token_cross_entropy(logits, labels)
            losses["loss_prefix_lm"] = token_loss.sum() / (labels[:, 1:] != -100).sum().clamp(min=1)
        return MPLUGPreTrainingOutput(loss=sum(losses.values()), **losses)


__all__ = [
    "MPLUGForCaptioning",
    "MPLUGForGrounding",
    "MPLUGForPreTraining",
    "MPLUGForQuestionAnswering",
    "MPLUGForRetrieval",
    "MPLUGModel",
    "MPLUGPreTrainedModel",
    "MPLUGVisionModel",
]
