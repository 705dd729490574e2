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
from safetensors import SafetensorError
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    BaseModelOutputWithPooling,
    CausalLMOutputWithCrossAttentions,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, auto_docstring, can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_mplug import MPLUGConfig, MPLUGTextConfig, MPLUGVisionConfig
from .fused_attention import cross_attention_shortcuts
from .loss_mplug import grounding_loss, weighted_answer_loss
from .momentum_distillation import (
    MPLUGMomentumEncoders,
    hard_negative_itm_loss,
    image_text_contrastive_loss,
    init_momentum_buffers,
)
from .original_generation import MPLUGBeamSearchOutput, original_beam_search, reorder_shared_memory_cache
from .scoring import choose as choose_by_likelihood
from .scoring import rank_answers as rank_candidate_answers
from .scoring import rerank_with_itm
from .scoring import score_yes_no as yes_probability
from .validation import (
    check_forward_kwargs,
    load_with_finite_weights,
    validate_pixel_values,
    validate_target_labels,
    validate_text_inputs,
)


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
    """softmax(q·kᵀ·scaling + mask)·v. `query`: (batch, heads, q_len, head_dim); returns (batch, q_len, heads,
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
        is_causal: bool = False,
        is_cross_attention: bool = False,
        layer_idx: int | None = None,
    ):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        # The sdpa integration reads this attribute: a missing one would make encoder attention causal.
        self.is_causal = is_causal
        self.is_cross_attention = is_cross_attention
        self.layer_idx = layer_idx
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def split_heads(self, states: torch.Tensor) -> torch.Tensor:
        """`(batch, length, hidden)` → `(batch, heads, length, head_dim)`."""
        return states.view(*states.shape[:-1], -1, self.head_dim).transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        key_value_states: torch.Tensor | None = None,
        cache: Cache | None = None,
        cross_attention_override: Callable | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        Args:
            hidden_states: `(batch, q_len, hidden)` queries (and keys/values for self-attention).
            attention_mask: mask prepared by `transformers.masking_utils` for the active implementation, or None.
            key_value_states: `(batch, kv_len, hidden)` states attended to by cross-attention.
            cache: generation cache; an [`EncoderDecoderCache`] in the decoder.
            cross_attention_override: the fused path's replacement of this cross-attention call (see
                `mplug_hf.fused_attention`).
        Returns:
            `(batch, q_len, hidden)` output projection and the attention probabilities (eager only).
        """
        if cross_attention_override is not None:
            return cross_attention_override(self, hidden_states, key_value_states, attention_mask, **kwargs)
        if self.is_cross_attention and cache is not None and cache.is_updated.get(self.layer_idx):
            cached = cache.cross_attention_cache.layers[self.layer_idx]
            key, value = cached.keys, cached.values
        elif self.is_cross_attention:
            key = self.split_heads(self.k_proj(key_value_states))
            value = self.split_heads(self.v_proj(key_value_states))
            if cache is not None:
                key, value = cache.cross_attention_cache.update(key, value, self.layer_idx)
                cache.is_updated[self.layer_idx] = True
        else:
            key = self.split_heads(self.k_proj(hidden_states))
            value = self.split_heads(self.v_proj(hidden_states))
            if cache is not None:
                self_cache = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
                key, value = self_cache.update(key, value, self.layer_idx)
        return self.attend(hidden_states, key, value, attention_mask, **kwargs)

    def attend(
        self, hidden_states: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Project the queries and attend to `(kv_batch, heads, kv_len, head_dim)` keys and values."""
        batch_size, query_length = hidden_states.shape[:2]
        query = self.split_heads(self.q_proj(hidden_states))
        # Beams / candidate answers share their item's memory: a query batch `group` times larger than the memory
        # batch attends as `group` times longer queries of the memory rows (no tiled memory, no copied K/V).
        group = batch_size // key.shape[0]
        query = query.view(key.shape[0], group, *query.shape[1:]).transpose(1, 2)
        query = query.reshape(key.shape[0], self.num_heads, group * query_length, self.head_dim)
        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        # (memory_batch, group * q_len, heads, head_dim) rows are item-major, so this is the (batch, q_len, …) layout.
        attn_output = attn_output.reshape(batch_size, query_length, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


class MPLUGMLP(nn.Module):
    """Feed-forward block shared by the ViT (QuickGELU) and the BERT parts (GELU)."""

    def __init__(self, config: MPLUGTextConfig | MPLUGVisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


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
                f"a sequence of {past_length + seq_length} tokens exceeds max_position_embeddings "
                f"({self.position_ids.shape[1]}): truncate the text in the processor, or generate fewer tokens"
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
    residual and LayerNorm. Text-encoder layers have no cross-attention; decoder layers are causal and cross-attend to
    the memory; fusion layers are [`MPLUGFusionLayer`].
    """

    def __init__(
        self,
        config: MPLUGTextConfig,
        is_causal: bool = False,
        has_cross_attention: bool = False,
        layer_idx: int | None = None,
    ):
        super().__init__()
        self.self_attn = MPLUGAttention(config, is_causal=is_causal, layer_idx=layer_idx)
        self.self_attn_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        if has_cross_attention:
            self.cross_attn = MPLUGAttention(config, is_cross_attention=True, layer_idx=layer_idx)
            self.cross_attn_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        else:
            self.cross_attn = None
        self.mlp = MPLUGMLP(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        cross_attention_override: Callable | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        attn_output, _ = self.self_attn(hidden_states, attention_mask, cache=cache, **kwargs)
        hidden_states = self.self_attn_layer_norm(hidden_states + self.dropout(attn_output))
        if self.cross_attn is not None:
            attn_output, _ = self.cross_attn(
                hidden_states,
                encoder_attention_mask,
                key_value_states=encoder_hidden_states,
                cache=cache,
                cross_attention_override=cross_attention_override,
                **kwargs,
            )
            hidden_states = self.cross_attn_layer_norm(hidden_states + self.dropout(attn_output))
        return self.final_layer_norm(hidden_states + self.dropout(self.mlp(hidden_states)))


@auto_docstring
class MPLUGPreTrainedModel(PreTrainedModel):
    config: MPLUGConfig
    base_model_prefix = "mplug"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["MPLUGVisionLayer", "MPLUGTextLayer", "MPLUGFusionLayer", "MPLUGTextEmbeddings"]
    _skip_keys_device_placement = ["cache"]
    # The heads normalise their losses themselves (per question, per token): Trainer must divide by the gradient
    # accumulation steps and not rescale by `num_items_in_batch`, which it does for any forward taking **kwargs.
    accepts_loss_kwargs = False
    # Whether this class encodes then decodes (generate() and the encoder_*/decoder_* outputs follow it)
    is_encoder_decoder_model = False

    def post_init(self):
        # One MPLUGConfig serves every class, so each model states its kind on it as T5EncoderModel does on T5Config;
        # the outermost model's post_init runs last, so a head's kind wins over its sub-models'.
        self.config.is_encoder_decoder = self.is_encoder_decoder_model
        super().post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        try:
            return load_with_finite_weights(
                super().from_pretrained, pretrained_model_name_or_path, *model_args, **kwargs
            )
        except SafetensorError as error:
            raise ValueError(
                f"cannot read the weights in {pretrained_model_name_or_path}: {error}; the safetensors file is "
                "truncated or corrupt (download or save it again)"
            ) from error

    def _check_and_adjust_attn_implementation(
        self, attn_implementation: str | None, is_init_check: bool = False, allow_all_kernels: bool = False
    ) -> str:
        resolved = super()._check_and_adjust_attn_implementation(attn_implementation, is_init_check, allow_all_kernels)
        # The modules read the sub-configs, but a directly built model resolves the top config only: hand it down
        # unless a sub-config was given its own.
        for sub_config in (getattr(self.config, key) for key in self.config.sub_configs):
            if sub_config._attn_implementation_internal is None:
                sub_config._attn_implementation_internal = resolved
        return resolved

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, MPLUGVisionEmbeddings):
            init.normal_(module.class_embedding, std=std)
            init.normal_(module.position_embedding, std=std)
        elif isinstance(module, MPLUGTextEmbeddings):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
        elif isinstance(module, MPLUGContrastiveHead):
            init.constant_(module.temp, self.config.contrastive_temperature)
        elif isinstance(module, MPLUGMomentumEncoders):
            init_momentum_buffers(module, init)

    def _resize_token_embeddings(self, new_num_tokens, pad_to_multiple_of=None, mean_resizing=True):
        """Resize the input embeddings (and their tied head) as transformers does, then every other word embedding of
        the model — the decoder's (tied to its LM head), the momentum text encoder's — to the same size."""
        input_embeddings = self.get_input_embeddings()
        resized = super()._resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        for module in self.modules():
            if isinstance(module, MPLUGTextEmbeddings) and module.word_embeddings is not input_embeddings:
                if module.word_embeddings is not resized:
                    module.word_embeddings = self._get_resized_embeddings(
                        module.word_embeddings, resized.weight.shape[0], mean_resizing=mean_resizing
                    )
        for module in self.modules():
            if isinstance(module, MPLUGLMHead) and module.decoder is not self.get_output_embeddings():
                module.decoder = self._get_resized_lm_head(
                    module.decoder, resized.weight.shape[0], mean_resizing=mean_resizing
                )
        return resized


@auto_docstring(
    custom_intro="""
    BERT stack (embeddings + layers, no pooler). As the text encoder it is bidirectional without cross-attention;
    as the decoder backbone it is causal, cross-attends to `encoder_hidden_states` and supports a KV cache.
    """
)
class MPLUGTextModel(MPLUGPreTrainedModel):
    input_modalities = ("text",)
    _can_record_outputs = {
        "hidden_states": MPLUGTextLayer,
        "attentions": OutputRecorder(MPLUGAttention, index=1, layer_name="self_attn"),
        "cross_attentions": OutputRecorder(MPLUGAttention, index=1, layer_name="cross_attn"),
    }

    def __init__(self, config: MPLUGConfig, num_layers: int, is_decoder: bool = False):
        r"""
        num_layers (`int`):
            Depth of the stack (`config.text_encoder_layers` or `config.decoder_layers`).
        is_decoder (`bool`, *optional*, defaults to `False`):
            Causal self-attention plus cross-attention to a memory (the decoder backbone).
        """
        # built on the whole MPLUGConfig so that its output_* flags and attention implementation reach this stack
        super().__init__(config)
        self.is_decoder = is_decoder
        self.embeddings = MPLUGTextEmbeddings(config.text_config)
        self.layers = nn.ModuleList(
            [
                MPLUGTextLayer(config.text_config, is_causal=is_decoder, has_cross_attention=is_decoder, layer_idx=i)
                for i in range(num_layers)
            ]
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding):
        self.embeddings.word_embeddings = value

    @capture_outputs
    @auto_docstring
    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        r"""
        encoder_hidden_states (`torch.FloatTensor` of shape `(memory_batch, memory_length, hidden_size)`, *optional*):
            The memory (decoder only). `batch_size` may be a multiple of `memory_batch`: rows `i * group … (i + 1) *
            group - 1` (beams, candidate answers) then share memory row `i`, which is never tiled.
        encoder_attention_mask (`torch.LongTensor` of shape `(memory_batch, memory_length)`, *optional*):
            1/0 mask of the memory.
        cache (`EncoderDecoderCache`, *optional*):
            The decoder's cache.
        """
        text_config = self.config.text_config
        past_length = cache.get_seq_length() if cache is not None else 0
        hidden_states = self.embeddings(input_ids, past_length=past_length, attention_mask=attention_mask)
        cross_mask, cross_override = None, None
        if self.is_decoder:
            self_mask = create_causal_mask(
                config=text_config, inputs_embeds=hidden_states, attention_mask=attention_mask, cache=cache
            )
            memory_batch = encoder_hidden_states.shape[0]
            cross_mask = create_bidirectional_mask(
                config=text_config,
                # the shape cross-attention sees: each memory row's group of queries (see MPLUGAttention.attend)
                inputs_embeds=hidden_states.view(memory_batch, -1, hidden_states.shape[-1]),
                attention_mask=encoder_attention_mask,
                encoder_hidden_states=encoder_hidden_states,
            )
            shortcuts = cross_attention_shortcuts(text_config)
            if shortcuts is not None:
                cross_override = shortcuts.decoder_cross_attention(
                    text_config, self.training, hidden_states, encoder_hidden_states, cache
                )
        else:
            self_mask = create_bidirectional_mask(
                config=text_config, inputs_embeds=hidden_states, attention_mask=attention_mask
            )
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                self_mask,
                encoder_hidden_states,
                encoder_attention_mask=cross_mask,
                cache=cache,
                cross_attention_override=cross_override,
                **kwargs,
            )
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=hidden_states, cache=cache)


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

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embedding

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


@auto_docstring(
    custom_intro="""
    The BERT decoder of mPLUG with its LM head: causal self-attention with a KV cache, cross-attention to the memory,
    vocabulary logits tied to its word embeddings, and the shifted language-modelling loss.
    """
)
class MPLUGTextDecoder(MPLUGPreTrainedModel):
    _tied_weights_keys = {"lm_head.decoder.weight": "model.embeddings.word_embeddings.weight"}

    def __init__(self, config: MPLUGConfig):
        super().__init__(config)
        self.model = MPLUGTextModel(config, config.decoder_layers, is_decoder=True)
        self.lm_head = MPLUGLMHead(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear):
        self.lm_head.decoder = new_embeddings

    @can_return_tuple
    @auto_docstring
    def forward(
        self,
        input_ids: torch.LongTensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithCrossAttentions:
        r"""
        encoder_hidden_states (`torch.FloatTensor` of shape `(memory_batch, memory_length, hidden_size)`):
            The memory. The decoder batch may be a multiple of `memory_batch`: consecutive groups of rows (beams,
            candidate answers) then share one memory row, which is never tiled.
        encoder_attention_mask (`torch.LongTensor` of shape `(memory_batch, memory_length)`, *optional*):
            1/0 mask of the memory.
        labels (`torch.LongTensor` of shape `(batch_size, length)`, *optional*):
            `[CLS] text [SEP]` targets, -100 where no loss is wanted; the loss is the mean next-token cross-entropy.
        """
        check_forward_kwargs(kwargs, self)
        validate_text_inputs(input_ids, attention_mask if cache is None else None, self.config.text_config)
        if encoder_hidden_states is None:
            raise ValueError("the decoder needs encoder_hidden_states (the memory it cross-attends to)")
        if input_ids.shape[0] % encoder_hidden_states.shape[0]:
            raise ValueError(
                f"batch size mismatch: {input_ids.shape[0]} decoder rows cannot share {encoder_hidden_states.shape[0]} "
                "memory rows (the decoder batch must be a multiple of the memory batch)"
            )
        if (use_cache or cache is not None) and not isinstance(cache, EncoderDecoderCache):
            # generate() may hand over a plain DynamicCache: cross-attention needs its own cache beside it.
            cache = EncoderDecoderCache(cache or DynamicCache(), DynamicCache())
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            cache=cache,
            **kwargs,
            return_dict=True,
        )
        logits = self.lm_head(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, vocab_size=self.config.text_config.vocab_size)
        return CausalLMOutputWithCrossAttentions(
            loss=loss,
            logits=logits,
            cache=cache if use_cache else None,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            cross_attentions=outputs.cross_attentions,
        )

    def decode_memory(
        self,
        encoder_outputs: ModelOutput,
        decoder_input_ids: torch.LongTensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor | None = None,
        **decoder_kwargs,
    ) -> "MPLUGSeq2SeqLMOutput":
        """Decode over `memory` (the encoder's, possibly regrouped by the head) and gather the encoder-decoder output:
        the decoder's logits, loss, cache and recorded states beside the encoder's."""
        decoded = self(
            decoder_input_ids,
            encoder_hidden_states=memory,
            encoder_attention_mask=memory_mask,
            **decoder_kwargs,
            return_dict=True,
        )
        return MPLUGSeq2SeqLMOutput(
            loss=decoded.loss,
            logits=decoded.logits,
            cache=decoded.cache,
            decoder_hidden_states=decoded.hidden_states,
            decoder_attentions=decoded.attentions,
            cross_attentions=decoded.cross_attentions,
            encoder_last_hidden_state=memory,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )


@auto_docstring(
    custom_intro="""
    Output of the decoder heads ([`MPLUGForCaptioning`], [`MPLUGForQuestionAnswering`]).
    """
)
@dataclass
class MPLUGSeq2SeqLMOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, returned with `labels`):
        The task loss (see the head).
    logits (`torch.FloatTensor` of shape `(batch_size, target_length, vocab_size)`):
        Decoder logits.
    cache (`EncoderDecoderCache`, returned with `use_cache=True`):
        Decoder self- and cross-attention cache.
    decoder_hidden_states (`tuple(torch.FloatTensor)`, returned with `output_hidden_states=True`):
        The decoder's embeddings and layer outputs.
    decoder_attentions (`tuple(torch.FloatTensor)`, returned with `output_attentions=True`):
        The decoder's self-attention probabilities.
    cross_attentions (`tuple(torch.FloatTensor)`, returned with `output_attentions=True`):
        The decoder's cross-attention probabilities over the memory.
    encoder_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, memory_length, hidden_size)`):
        The memory the decoder attended to (its mask is the encoder output's `encoder_attention_mask`).
    encoder_hidden_states (`tuple(torch.FloatTensor)`, returned with `output_hidden_states=True`):
        The encoder's hidden states (see [`MPLUGModelOutput`], or the vision model's for captioning).
    encoder_attentions (`tuple(torch.FloatTensor)`, returned with `output_attentions=True`):
        The encoder's self-attention probabilities.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    encoder_attentions: tuple[torch.FloatTensor, ...] | None = None


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
    cross-entropy over the label tokens. Inference: `generate()` (KV cache, greedy/beam/sampling) or
    `generate_original()` for the original beam search. A prompt ("a picture of") is passed as `input_ids`.
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
    ) -> MPLUGSeq2SeqLMOutput:
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
        """The original caption decoding (beam 5, min 8, max 25 for COCO): see `mplug_hf.original_generation`."""
        memory = self.vision_model(pixel_values, return_dict=True).last_hidden_state
        if prompt_ids is not None and prompt_ids.shape[0] == 1 and memory.shape[0] > 1:
            prompt_ids = prompt_ids.expand(memory.shape[0], -1)
        return original_beam_search(
            self.text_decoder, memory, None, prompt_ids, num_beams, min_length, max_length, num_return_sequences
        )


@auto_docstring(
    custom_intro="""
    Visual question answering: the decoder attends to the fused memory [V_out; T_out] with mask [1…1; question mask].
    Training with several weighted answers per question (the original's `k`/`weights`): `labels` hold all answers
    `(num_answers, length)` as `[CLS] answer [SEP]` (-100 padding), `answer_counts[b]` says how many belong to
    question b (in order) and `answer_weights` weighs each; loss = Σ weight · (summed token CE of the answer) /
    batch_size. Inference: `generate()`, `generate_original()` (the original beam search), `rank_answers()`,
    `score_yes_no()` and `choose()` (see `mplug_hf.scoring`).
    """
)
class MPLUGForQuestionAnswering(MPLUGPreTrainedModel, MPLUGGenerationMixin):
    is_encoder_decoder_model = True

    def __init__(self, config: MPLUGConfig):
        super().__init__(config)
        self.mplug = MPLUGModel(config)
        self.text_decoder = MPLUGTextDecoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.mplug.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding):
        self.mplug.set_input_embeddings(value)

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
    ) -> MPLUGSeq2SeqLMOutput:
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

    def encode(self, input_ids, pixel_values, attention_mask=None, image_indices=None) -> MPLUGModelOutput:
        """The questions' memory, each image encoded once (`image_indices[q]` = the image of question q)."""
        return self.mplug(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            image_indices=image_indices,
            return_dict=True,
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
        image_indices: torch.LongTensor | None = None,
    ) -> MPLUGBeamSearchOutput:
        """The original VQA decoding (beam 5, min 1, max 10): see `mplug_hf.original_generation`."""
        encoded = self.encode(input_ids, pixel_values, attention_mask, image_indices)
        return original_beam_search(
            self.text_decoder,
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
        """Closed-vocabulary answering as the original `rank_answer`: see [`mplug_hf.scoring.rank_answers`]."""
        if encoder_outputs is None:
            encoder_outputs = self.encode(input_ids, pixel_values, attention_mask)
        return rank_candidate_answers(self, encoder_outputs, candidate_ids, candidate_attention_mask, k)

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
        """`(num_questions,)` P(yes), each image encoded once: see [`mplug_hf.scoring.score_yes_no`]."""
        encoded = self.encode(input_ids, pixel_values, attention_mask, image_indices)
        return yes_probability(self, encoded, yes_token_id, no_token_id, full_sequence)

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
        """Multiple choice by answer likelihood, each image encoded once: see [`mplug_hf.scoring.choose`]."""
        encoded = self.encode(input_ids, pixel_values, attention_mask, image_indices)
        return choose_by_likelihood(self, encoded, choice_ids, choice_attention_mask, length_normalize)


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
    temperature) and ITM (fusion, then the ITM head on the fused text CLS). `retrieve()` ranks an image set against a
    text set the original way. `forward` returns `logits_per_image` for any numbers of images and texts (zero-shot
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

    def get_input_embeddings(self) -> nn.Embedding:
        return self.mplug.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding):
        self.mplug.set_input_embeddings(value)

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
        top `k` per query, re-scored by ITM (see [`mplug_hf.scoring.rerank_with_itm`]).

        Returns:
            `(scores_i2t (num_images, num_texts), scores_t2i (num_texts, num_images))`.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask {tuple(attention_mask.shape)} must match input_ids {tuple(input_ids.shape)}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        images = [self.get_image_features(chunk, return_dict=True) for chunk in pixel_values.split(batch_size)]
        texts = [
            self.get_text_features(ids, mask, return_dict=True)
            for ids, mask in zip(input_ids.split(batch_size), attention_mask.split(batch_size))
        ]
        image_states = torch.cat([output.last_hidden_state for output in images])
        text_states = torch.cat([output.last_hidden_state for output in texts])
        similarities = torch.cat([o.pooler_output for o in images]) @ torch.cat([o.pooler_output for o in texts]).t()
        return rerank_with_itm(self, similarities, image_states, text_states, attention_mask, k, batch_size, add_itc)


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

    def get_input_embeddings(self) -> nn.Embedding:
        return self.mplug.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding):
        self.mplug.set_input_embeddings(value)

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

    @torch.no_grad()
    def predict_boxes(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_outputs: MPLUGModelOutput | None = None,
    ) -> torch.Tensor:
        """
        Greedy decoding of the 4 coordinate tokens (with a KV cache).

        Returns:
            `(batch, 4)` normalised (cx, cy, w, h) on the padded square; `processor.post_process_grounding(boxes,
            image_sizes)` gives pixel (x1, y1, x2, y2) boxes of the input images.
        """
        if encoder_outputs is None:
            encoder_outputs = self.mplug(
                input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, return_dict=True
            )
        _, tokens = self.decode_boxes_greedily(
            encoder_outputs.last_hidden_state, encoder_outputs.encoder_attention_mask
        )
        return self.tokens_to_boxes(tokens)

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

    def get_input_embeddings(self) -> nn.Embedding:
        return self.mplug.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding):
        self.mplug.set_input_embeddings(value)

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
