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
"""
`attn_implementation="mplug_fused"`: sdpa kernels everywhere (bf16 matmuls on the CPU,
[`fused_attention_forward`]), plus two exact shortcuts for cross-attention that only
pay off because of mPLUG's structure. The model reaches them through one hook, [`cross_attention_shortcuts`], which
returns `None` for every other implementation.

- **Folding**: per head h, softmax(q_h·(W_k,h m + b_k,h)) = softmax((W_k,hᵀ q_h)·m) (the key bias adds one constant to
  each query's logits) and Σ p·(W_v,h m + b_v,h) = W_v,h (Σ p·m) + b_v,h (the probabilities sum to one, so no attention
  dropout). All heads' folded queries then attend together as one head of width `hidden` over the *unprojected*
  memory: O(q_len·heads·kv_len·hidden) multiply-adds instead of the O(kv_len·hidden²) of projecting it.
- **Run projection**: between connected fusion layers the image tokens are frozen, so the keys/values of a whole run
  of co-attention layers come from one matmul, once per *image* even when several texts share it (`image_indices`).

Each run of co-attention layers takes the cheaper of the two, counted in multiply-adds ([`folding_is_cheaper`]); so
does the decoder's cross-attention, per call without a cache and for a whole generation with one (the original beam
search asks [`FusedCrossAttentionShortcuts.generation_cache`] before its first step: a VQA answer of 10 tokens × 5
beams over a 587-token memory folds, a 25-token caption over 577 image tokens projects once).
"""

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface


FUSED_ATTENTION = "mplug_fused"


def matmul_attention_forward(
    module, query, key, value, attention_mask, scaling, dropout=0.0, is_causal: bool | None = None, **kwargs
):
    """
    softmax(q·kᵀ·scaling + mask)·v as two matmuls around a softmax in the inputs' dtype (torch's CPU softmax
    accumulates half precision in float32), with sdpa's conventions: `attention_mask` is sdpa's (boolean, True =
    attend, or additive), and without one a causal module (or `is_causal=True`) with several queries attends causally,
    aligned top-left. Returns (batch, q_len, heads, head_dim) and None, as sdpa does.
    """
    logits = torch.matmul(query * scaling, key.transpose(2, 3))
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if attention_mask is None and is_causal and query.shape[2] > 1:
        attention_mask = torch.ones(logits.shape[-2:], dtype=torch.bool, device=logits.device).tril()
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        logits = logits.masked_fill(~attention_mask, torch.finfo(logits.dtype).min)
    elif attention_mask is not None:
        logits = logits + attention_mask
    probabilities = F.dropout(logits.softmax(dim=-1), p=dropout, training=module.training)
    return torch.matmul(probabilities, value).transpose(1, 2).contiguous(), None


def fused_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """
    The `mplug_fused` kernel: sdpa, except for bfloat16 on the CPU, where torch's flash kernel runs far below the CPU's
    bf16 matmuls (measured with `avx512_bf16`, one thread: a folded VQA cross-attention 29 ms in sdpa against 11 ms as
    [`matmul_attention_forward`], a decoding step 0.95 ms against 0.37 ms). Not float16: CPUs without float16
    arithmetic run its matmuls 5–9× slower than sdpa.
    """
    attend = sdpa_attention_forward
    if query.device.type == "cpu" and query.dtype == torch.bfloat16:
        attend = matmul_attention_forward
    return attend(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)


AttentionInterface.register(FUSED_ATTENTION, fused_attention_forward)
AttentionMaskInterface.register(FUSED_ATTENTION, sdpa_mask)

# An override replaces one cross-attention call: (attention module, queries, memory, mask, **kwargs) -> (output, None).
CrossAttentionOverride = Callable[..., tuple[torch.Tensor, None]]


def folding_is_cheaper(
    config, training: bool, num_queries: int, query_length: int, num_memories: int, memory_length: int
) -> bool:
    """
    Whether folding the key/value projections into the queries costs fewer multiply-adds than projecting the memory.
    Per layer, for B query rows of L tokens over I distinct memories of N tokens, H heads and width D: folding costs
    B·L·H·N·D·2 (logits and weighted sums per head) + B·L·D²·2 (folding queries and outputs); projecting costs
    I·N·D²·2 (keys and values) + B·L·N·D·2 (attention). Fold when B·L·((H−1)·N + D) < I·N·D. Never with attention
    dropout in training: dropped probabilities no longer sum to one, which folding the value bias relies on.
    """
    if training and config.attention_probs_dropout_prob > 0:
        return False
    hidden_size, num_heads = config.hidden_size, config.num_attention_heads
    folded_cost = num_queries * query_length * ((num_heads - 1) * memory_length + hidden_size)
    return folded_cost < num_memories * memory_length * hidden_size


def per_head_matmul(states: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`(batch, heads, length, d_in)` · `(heads, d_in, d_out)` → `(batch, heads, length, d_out)` as one matmul per head
    over all rows (a broadcasting matmul would copy the weight for every batch row)."""
    batch_size, num_heads, length, in_features = states.shape
    rows = states.transpose(0, 1).reshape(num_heads, batch_size * length, in_features)
    return torch.matmul(rows, weight).view(num_heads, batch_size, length, -1).transpose(0, 1)


def attend_with_folded_projections(attention, hidden_states, memory, attention_mask, **kwargs):
    """
    Cross-attention of `attention` (an `MPLUGAttention`) to the *unprojected* memory (see the module docstring).

    Args:
        hidden_states: `(batch, q_len, hidden)` queries; `batch` may be a multiple of the memory batch (beams sharing
            their item's memory row, as in `MPLUGAttention.attend`). memory: `(memory_batch, kv_len, hidden)`.
        attention_mask: the cross-attention mask prepared for sdpa (key padding only), or None.
    Returns:
        `(batch, q_len, hidden)` output projection and `None` (no per-head probabilities exist on this path).
    """
    output_shape = hidden_states.shape
    hidden_size = output_shape[-1]
    # the query rows sharing a memory row attend to it as one longer query
    hidden_states = hidden_states.reshape(memory.shape[0], -1, hidden_size)
    batch_size, query_length = hidden_states.shape[:2]
    num_heads, head_dim = attention.num_heads, attention.head_dim
    query = attention.split_heads(attention.q_proj(hidden_states))
    key_weight = attention.k_proj.weight.view(num_heads, head_dim, hidden_size)
    value_weight = attention.v_proj.weight.view(num_heads, head_dim, hidden_size)
    # (batch, 1, heads * q_len, hidden): every head's queries mapped into the memory's space
    folded_query = per_head_matmul(query, key_weight).reshape(batch_size, 1, -1, hidden_size)
    if attention_mask is not None:
        attention_mask = attention_mask[:, :, :1]  # it masks memory padding only: one row serves every query
    memory = memory.unsqueeze(1)
    context, _ = fused_attention_forward(
        attention, folded_query, memory, memory, attention_mask, dropout=0.0, scaling=attention.scaling, **kwargs
    )
    # (batch, heads, q_len, hidden) · W_v,hᵀ → (batch, heads, q_len, head_dim)
    context = context.reshape(batch_size, num_heads, query_length, hidden_size)
    attn_output = per_head_matmul(context, value_weight.transpose(1, 2)).transpose(1, 2)
    attn_output = attn_output + attention.v_proj.bias.view(num_heads, head_dim)
    return attention.o_proj(attn_output.reshape(output_shape)), None


def attend_to_projected(attention, hidden_states, memory, attention_mask, key, value, **kwargs):
    """Cross-attention with keys and values projected beforehand (`(kv_batch, heads, kv_len, head_dim)` each). When
    `kv_batch` is smaller than the query batch, consecutive equal groups of texts share each image's keys/values
    (`MPLUGAttention.attend`), and the per-text mask is regrouped the same way."""
    if attention_mask is not None and attention_mask.shape[0] != key.shape[0]:
        attention_mask = attention_mask.reshape(key.shape[0], 1, -1, attention_mask.shape[-1])
    return attention.attend(hidden_states, key, value, attention_mask, **kwargs)


def texts_grouped_by_image(image_indices: torch.LongTensor, num_images: int) -> bool:
    """Whether the texts come image by image, equally many per image (`[0, 0, 1, 1, …]`)."""
    num_texts = image_indices.shape[0]
    if num_texts % num_images:
        return False
    grouped = torch.arange(num_images, device=image_indices.device).repeat_interleave(num_texts // num_images)
    return torch.equal(image_indices, grouped)


def project_run_keys_values(
    attentions: list, image_states: torch.Tensor, image_indices: torch.LongTensor | None
) -> list[CrossAttentionOverride]:
    """Overrides for a run of cross-attention modules whose keys/values come from one matmul over the image tokens,
    each image projected once and then gathered per text by `image_indices` (not copied when the texts come image by
    image, equally many per image: each image's group of texts then attends to its keys/values directly)."""
    weight = torch.cat([proj.weight for attn in attentions for proj in (attn.k_proj, attn.v_proj)])
    bias = torch.cat([proj.bias for attn in attentions for proj in (attn.k_proj, attn.v_proj)])
    projected = F.linear(image_states, weight, bias)
    if image_indices is not None and not texts_grouped_by_image(image_indices, image_states.shape[0]):
        projected = projected.index_select(0, image_indices)
    projected = projected.split(attentions[0].q_proj.out_features, dim=-1)
    return [
        partial(
            attend_to_projected,
            key=attn.split_heads(projected[2 * i]),
            value=attn.split_heads(projected[2 * i + 1]),
        )
        for i, attn in enumerate(attentions)
    ]


class FoldedMemoryCache(EncoderDecoderCache):
    """A generation cache whose decoder cross-attention is folded at every step: the memory is never projected, so
    the cross-attention part of the cache stays empty."""


class FusedCrossAttentionShortcuts:
    """The fused path's decisions, asked by the fusion encoder per co-attention run and by the decoder per call."""

    def co_attention_run(
        self,
        attentions: list,
        config,
        training: bool,
        text_states: torch.Tensor,
        image_states: torch.Tensor,
        image_indices: torch.LongTensor | None,
    ) -> list[CrossAttentionOverride]:
        """
        One override per layer of a co-attention run. `image_states` holds the distinct images (`image_indices` maps
        each text to its image) before the first connected layer, one row per text after it.
        """
        num_texts, text_length = text_states.shape[:2]
        num_images, num_image_tokens = image_states.shape[:2]
        if folding_is_cheaper(config, training, num_texts, text_length, num_images, num_image_tokens):
            return [attend_with_folded_projections] * len(attentions)
        return project_run_keys_values(attentions, image_states, image_indices)

    def generation_cache(self, config, memory: torch.Tensor, query_tokens: int) -> EncoderDecoderCache | None:
        """
        The cache for a generation in which every memory row is attended by `query_tokens` query tokens over all steps
        (beams × steps): a [`FoldedMemoryCache`] when folding the memory projections into those queries costs less
        than projecting the memory once, else None (the decoder projects the memory at its first step and caches it).
        """
        num_memories, memory_length = memory.shape[:2]
        if folding_is_cheaper(config, False, num_memories, query_tokens, num_memories, memory_length):
            return FoldedMemoryCache(DynamicCache(), DynamicCache())
        return None

    def decoder_cross_attention(
        self, config, training: bool, query_states: torch.Tensor, memory: torch.Tensor, cache
    ) -> CrossAttentionOverride | None:
        """Fold the decoder's memory projections when training or scoring short targets over a long memory, or in a
        generation that chose to ([`generation_cache`]); not with another cache (generation projects the memory once
        and keeps it) nor when rows share a memory outside generation (its projection is then amortised)."""
        if isinstance(cache, FoldedMemoryCache):
            return attend_with_folded_projections
        if cache is not None or query_states.shape[0] != memory.shape[0]:
            return None
        if folding_is_cheaper(
            config, training, memory.shape[0], query_states.shape[1], memory.shape[0], memory.shape[1]
        ):
            return attend_with_folded_projections
        return None


_SHORTCUTS = {FUSED_ATTENTION: FusedCrossAttentionShortcuts()}


def cross_attention_shortcuts(config) -> FusedCrossAttentionShortcuts | None:
    """The hook: the shortcuts of the active attention implementation, or None (eager, sdpa, flash, flex)."""
    return _SHORTCUTS.get(config._attn_implementation)
