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
    """

    sequences: torch.LongTensor | None = None
    scores: torch.FloatTensor | None = None
    lengths: torch.LongTensor | None = None


def reorder_shared_memory_cache(cache: EncoderDecoderCache, beam_idx: torch.LongTensor) -> EncoderDecoderCache:
    """Reorder the self-attention cache for beams; cross-attention K/V shared per item (a smaller batch) stay, since
    beams only move within their item."""
    cache.self_attention_cache.reorder_cache(beam_idx)
    cross_cache = cache.cross_attention_cache
    if cross_cache.get_seq_length() > 0 and cross_cache.layers[0].keys.shape[0] == beam_idx.shape[0]:
        cross_cache.reorder_cache(beam_idx)
    return cache


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

    Args:
        decoder: the head's [`MPLUGTextDecoder`].
        memory: `(batch, memory_length, hidden)` decoder memory. memory_mask: `(batch, memory_length)` or None.
        prompt_ids: `(batch, prompt_length)` start of every hypothesis (default `[CLS]`).
        num_beams, min_length, max_length: as the original (`max_length` counts generated tokens).
        num_return_sequences: hypotheses returned per item (≤ num_beams · items recorded).
    """
    config = decoder.config
    batch_size, device = memory.shape[0], memory.device
    if num_return_sequences < 1 or num_beams < 1 or max_length < 1:
        raise ValueError("num_beams, max_length and num_return_sequences must be >= 1")
    eos_token_id, pad_token_id = config.eos_token_id, config.pad_token_id
    if prompt_ids is None:
        prompt_ids = torch.full((batch_size, 1), config.decoder_start_token_id, dtype=torch.long, device=device)
    alive = prompt_ids.repeat_interleave(num_beams, dim=0)
    cumulative = torch.full((batch_size, num_beams), float("-inf"), device=device)
    cumulative[:, 0] = 0.0
    cumulative = cumulative.view(-1)
    beam_offsets = (torch.arange(batch_size, device=device) * num_beams).unsqueeze(1)
    hypotheses: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch_size)]
    done = [False] * batch_size
    cache, step_input = None, alive
    for step in range(max_length):
        outputs = decoder(
            step_input,
            encoder_hidden_states=memory,
            encoder_attention_mask=memory_mask,
            cache=cache,
            use_cache=True,
            return_dict=True,
        )
        cache = outputs.cache
        log_probs = torch.log(torch.softmax(outputs.logits[:, -1].float(), dim=-1))
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
        reorder_shared_memory_cache(cache, origins)
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
    return MPLUGBeamSearchOutput(sequences=sequences.to(device), scores=scores.to(device), lengths=lengths.to(device))
