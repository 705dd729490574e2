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
"""The original mPLUG decoding: the OpenNMT-style beam search of its `TextGenerator`, with a KV cache."""

from dataclasses import dataclass

import torch
from transformers.cache_utils import EncoderDecoderCache
from transformers.utils import ModelOutput

from .fused_attention import cross_attention_shortcuts
from .validation import check_head


@dataclass
class MPLUGBeamSearchOutput(ModelOutput):
    r"""
    Result of [`original_beam_search`].

    Args:
        sequences (`torch.LongTensor` of shape `(batch_size, num_return_sequences, max_len)`): token ids including the
            leading `[CLS]` (or prompt), padded with `pad_token_id`.
        scores (`torch.FloatTensor` of shape `(batch_size, num_return_sequences)`): cumulative log-probability /
            ((5 + generated) / 6) ** 0.6, as the original stores it.
        lengths (`torch.LongTensor` of shape `(batch_size, num_return_sequences)`): lengths of `sequences`.
        first_token_logits (`torch.FloatTensor` of shape `(batch_size, vocab_size)`): the logits of the first
            generated token (the same for every beam: they all start from the prompt), e.g. for P(yes).
    """

    sequences: torch.LongTensor | None = None
    scores: torch.FloatTensor | None = None
    lengths: torch.LongTensor | None = None
    first_token_logits: torch.FloatTensor | None = None


def reorder_shared_memory_cache(cache: EncoderDecoderCache, beam_idx: torch.LongTensor) -> EncoderDecoderCache:
    """Reorder the self-attention cache for beams; cross-attention K/V shared per item (a smaller batch) stay, since
    beams only move within their item."""
    cache.self_attention_cache.reorder_cache(beam_idx)
    cross_cache = cache.cross_attention_cache
    if cross_cache.get_seq_length() > 0 and cross_cache.layers[0].keys.shape[0] == beam_idx.shape[0]:
        cross_cache.reorder_cache(beam_idx)
    return cache


def items_per_memory_row(memory_mask: torch.Tensor | None) -> int:
    """How many items share each memory row: 1 for a padding mask, `items_per_row` for a per-item mask."""
    return memory_mask.shape[1] if memory_mask is not None and memory_mask.ndim == 3 else 1


def decoder_memory_mask(
    memory_mask: torch.Tensor | None, query_rows_per_item: int, dtype: torch.dtype
) -> torch.Tensor | None:
    """
    The decoder's cross-attention mask. A `(memory_batch, memory_length)` padding mask is passed as it is. A per-item
    mask `(memory_batch, items_per_row, memory_length)` becomes the additive `(memory_batch, 1, rows, memory_length)`
    mask of the query rows the decoder groups per memory row (item-major, `query_rows_per_item` rows per item).
    """
    if memory_mask is None or memory_mask.ndim == 2:
        return memory_mask
    rows = memory_mask.repeat_interleave(query_rows_per_item, dim=1).unsqueeze(1)
    additive = torch.zeros(rows.shape, dtype=dtype, device=rows.device)
    return additive.masked_fill(rows == 0, torch.finfo(dtype).min)


@torch.no_grad()
def original_beam_search(
    decoder,
    memory: torch.Tensor,
    memory_mask: torch.Tensor | None,
    prompt_ids: torch.LongTensor | None = None,
    num_beams: int = 5,
    min_length: int = 1,
    max_length: int = 10,
    num_return_sequences: int = 1,
) -> MPLUGBeamSearchOutput:
    """
    The beam search of the original `TextGenerator`, with a KV cache instead of re-running the prefix and the memory
    shared by the beams instead of tiled: per step log(softmax) of the last logits; EOS forbidden (-1e20) before
    `min_length`; length penalty ((5 + step + 1) / 6) ** 0.6; candidates ranked by cumulative / penalty over
    beams × vocabulary. A beam that emits EOS is recorded with its normalised score and keeps extending; an item ends
    when its best beam emits EOS or at `max_length`, and then every current beam is recorded. Hypotheses are sorted.

    The original's first step runs `num_beams` copies of the prompt of which only the first can be chosen (the others
    start at -inf); here it runs once per item and the cache is then tiled per beam. Where the attention
    implementation has shortcuts (`mplug_fused`) and every item has its own memory row, the memory's key/value
    projections are folded into the queries when that costs less over the whole generation than projecting the memory
    once (short answers over a long memory).

    Args:
        decoder: the head's [`MPLUGTextDecoder`].
        memory: `(memory_batch, memory_length, hidden)` decoder memory.
        memory_mask: `(memory_batch, memory_length)` padding mask (or None), one item per memory row; or
            `(memory_batch, items_per_row, memory_length)`: `items_per_row` consecutive items share each memory row,
            item j attending to the keys row j of its mask allows (e.g. the questions about one image when the fusion
            leaves the image tokens unchanged: the image part is then projected once for all of them).
        prompt_ids: `(batch, prompt_length)` start of every hypothesis (default `[CLS]`).
        num_beams, min_length, max_length: as the original (`max_length` counts generated tokens).
        num_return_sequences: hypotheses returned per item (≤ num_beams · items recorded).
    """
    config = decoder.config
    device = memory.device
    if num_return_sequences < 1 or num_beams < 1 or max_length < 1:
        raise ValueError("num_beams, max_length and num_return_sequences must be >= 1")
    items_per_row = items_per_memory_row(memory_mask)
    batch_size = memory.shape[0] * items_per_row
    eos_token_id, pad_token_id = config.eos_token_id, config.pad_token_id
    if prompt_ids is None:
        prompt_ids = torch.full((batch_size, 1), config.decoder_start_token_id, dtype=torch.long, device=device)
    shortcuts = cross_attention_shortcuts(config.text_config)
    cache = None
    if shortcuts is not None and items_per_row == 1:  # folding keeps one mask row per memory row
        query_tokens = prompt_ids.shape[1] + num_beams * (max_length - 1)
        cache = shortcuts.generation_cache(config.text_config, memory, query_tokens)
    # The first step runs one row per item (its beams are identical); `rows_per_item` is num_beams afterwards.
    alive, cumulative, rows_per_item = prompt_ids, torch.zeros(batch_size, device=device), 1
    hypotheses: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch_size)]
    done = [False] * batch_size
    step_input, first_token_logits = alive, None
    for step in range(max_length):
        outputs = decoder(
            step_input,
            encoder_hidden_states=memory,
            encoder_attention_mask=decoder_memory_mask(memory_mask, rows_per_item * step_input.shape[1], memory.dtype),
            cache=cache,
            use_cache=True,
            return_dict=True,
        )
        cache = outputs.cache
        logits = outputs.logits[:, -1].float()
        if step == 0:
            first_token_logits = logits
        log_probs = torch.log(torch.softmax(logits, dim=-1))
        vocab_size = log_probs.shape[-1]
        if step < min_length:
            log_probs[:, eos_token_id] = -1e20
        log_probs = log_probs + cumulative.unsqueeze(1)
        length_penalty = ((5.0 + step + 1) / 6.0) ** 0.6
        candidate_scores = (log_probs / length_penalty).view(batch_size, rows_per_item * vocab_size)
        topk_scores, topk_ids = candidate_scores.topk(num_beams, dim=-1)
        cumulative = (topk_scores * length_penalty).view(-1)
        row_offsets = (torch.arange(batch_size, device=device) * rows_per_item).unsqueeze(1)
        origins = (topk_ids // vocab_size + row_offsets).view(-1)
        tokens = topk_ids.fmod(vocab_size)
        alive = torch.cat([alive.index_select(0, origins), tokens.view(-1, 1)], dim=1)
        reorder_shared_memory_cache(cache, origins)
        rows_per_item = num_beams
        finished = tokens.eq(eos_token_id)
        if step + 1 == max_length:
            finished.fill_(True)
        if bool(finished.any()):
            finished_rows, scores = finished.tolist(), topk_scores.tolist()
            for item, row in enumerate(finished_rows):
                if done[item] or not any(row):
                    continue
                # the item ends when its best beam finishes: every current beam is then recorded
                for beam in range(num_beams) if row[0] else [b for b, is_finished in enumerate(row) if is_finished]:
                    hypotheses[item].append((scores[item][beam], alive[item * num_beams + beam].tolist()))
                done[item] = row[0]
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
        sequences=sequences.to(device),
        scores=scores.to(device),
        lengths=lengths.to(device),
        first_token_logits=first_token_logits,
    )


def encode_image_questions(model, input_ids, pixel_values, attention_mask=None, image_indices=None):
    """The questions' [`MPLUGModelOutput`] from the head's multimodal encoder (each image encoded once when
    `image_indices[q]` names the image of question q)."""
    return model.mplug(
        input_ids=input_ids,
        pixel_values=pixel_values,
        attention_mask=attention_mask,
        image_indices=image_indices,
        return_dict=True,
    )


@torch.no_grad()
def generate_caption_original(
    model,
    pixel_values: torch.Tensor,
    prompt_ids: torch.LongTensor | None = None,
    num_beams: int = 5,
    min_length: int = 8,
    max_length: int = 25,
    num_return_sequences: int = 1,
) -> MPLUGBeamSearchOutput:
    """
    The original caption decoding of an [`MPLUGForCaptioning`] (beam 5, min 8, max 25 for COCO): the decoder attends
    to the image tokens only. `prompt_ids` `(1 or batch, prompt_length)` starts every caption (e.g. "a picture of").
    """
    check_head(model, "generate_caption_original", "MPLUGForCaptioning")
    memory = model.vision_model(pixel_values, return_dict=True).last_hidden_state
    if prompt_ids is not None and prompt_ids.shape[0] == 1 and memory.shape[0] > 1:
        prompt_ids = prompt_ids.expand(memory.shape[0], -1)
    return original_beam_search(
        model.text_decoder, memory, None, prompt_ids, num_beams, min_length, max_length, num_return_sequences
    )


@torch.no_grad()
def generate_answer_original(
    model,
    input_ids: torch.LongTensor,
    pixel_values: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    num_beams: int = 5,
    min_length: int = 1,
    max_length: int = 10,
    num_return_sequences: int = 1,
    image_indices: torch.LongTensor | None = None,
) -> MPLUGBeamSearchOutput:
    """
    The original VQA decoding of an [`MPLUGForQuestionAnswering`] (beam 5, min 1, max 10) over the fused memory of
    each question; `image_indices[q]` is the image of question q when questions share images (each encoded once).
    """
    check_head(model, "generate_answer_original", "MPLUGForQuestionAnswering")
    encoded = encode_image_questions(model, input_ids, pixel_values, attention_mask, image_indices)
    return original_beam_search(
        model.text_decoder,
        encoded.last_hidden_state,
        encoded.encoder_attention_mask,
        None,
        num_beams,
        min_length,
        max_length,
        num_return_sequences,
    )
