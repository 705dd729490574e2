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
"""PyTorch mPLUG text stack: the one attention module and feed-forward block every part of mPLUG uses, the BERT
layers, the text encoder / decoder backbone and the BERT decoder with its LM head (as BLIP's `modeling_blip_text`)."""

from collections.abc import Callable

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPastAndCrossAttentions,
    CausalLMOutputWithCrossAttentions,
    Seq2SeqLMOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, auto_docstring, can_return_tuple
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_mplug import MPLUGConfig, MPLUGTextConfig, MPLUGVisionConfig
from .fused_attention import cross_attention_shortcuts
from .validation import check_forward_kwargs, load_with_finite_weights, validate_text_inputs


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
    The base of every mPLUG model (the multimodal ones extend it as [`MPLUGPreTrainedModel`]): loading, attention
    dispatch, the text modules' init and the resizing of every word embedding together.
    """
)
class MPLUGTextPreTrainedModel(PreTrainedModel):
    config: MPLUGConfig
    base_model_prefix = "mplug"
    main_input_name = "input_ids"
    input_modalities = ("text",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["MPLUGTextLayer", "MPLUGTextEmbeddings"]
    _skip_keys_device_placement = ["cache"]
    # The heads normalise their losses themselves (per question, per token): Trainer must divide by the gradient
    # accumulation steps and not rescale by `num_items_in_batch`, which it does for any forward taking **kwargs.
    accepts_loss_kwargs = False
    # the text encoder's embeddings: found under `embeddings`, or through the `mplug` base model of a head
    _input_embed_layer = "word_embeddings"
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

    def set_attn_implementation(self, attn_implementation: str | dict | None, allow_all_kernels: bool = False):
        # Every sub-model holds the one MPLUGConfig while its layers read the text/vision sub-configs, which therefore
        # belong to no sub-model: transformers would set those "in the dark" with a warning. Give them the checked
        # implementation first (a dict request names each sub-config itself and goes through as given).
        if attn_implementation is not None and not isinstance(attn_implementation, (str, dict)):
            raise TypeError(
                "attn_implementation must be a kernel name (e.g. 'sdpa', 'eager', 'mplug_fused') or a dict of them per "
                f"sub-config, got {type(attn_implementation).__name__}"
            )
        if not isinstance(attn_implementation, dict):  # a name, or None for the default
            attn_implementation = self._check_and_adjust_attn_implementation(
                attn_implementation, is_init_check=False, allow_all_kernels=allow_all_kernels
            )
            for key in self.config.sub_configs:
                getattr(self.config, key)._attn_implementation_internal = attn_implementation
        super().set_attn_implementation(attn_implementation, allow_all_kernels=allow_all_kernels)

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MPLUGTextEmbeddings):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))

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
class MPLUGTextModel(MPLUGTextPreTrainedModel):
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


@auto_docstring(
    custom_intro="""
    The BERT decoder of mPLUG with its LM head: causal self-attention with a KV cache, cross-attention to the memory,
    vocabulary logits tied to its word embeddings, and the shifted language-modelling loss.
    """
)
class MPLUGTextDecoder(MPLUGTextPreTrainedModel):
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
    ) -> Seq2SeqLMOutput:
        """Decode over `memory` (the encoder's, possibly regrouped by the head) and gather the encoder-decoder output:
        the decoder's logits, loss, cache and recorded states beside the encoder's."""
        decoded = self(
            decoder_input_ids,
            encoder_hidden_states=memory,
            encoder_attention_mask=memory_mask,
            **decoder_kwargs,
            return_dict=True,
        )
        return Seq2SeqLMOutput(
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
