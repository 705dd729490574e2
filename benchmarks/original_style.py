"""The original implementation's way of decoding and ranking answers, as baselines: the same model, the same
arithmetic, but no KV cache, the whole prefix re-run every step and the memory tiled per beam / per candidate.

`uncached_tiled_beam_search` is the OpenNMT-style loop of the original `TextGenerator` (`models/predictor.py`); it
finds the same hypotheses as `original_beam_search` (cached, shared memory), which the benchmarks check.
`tiled_rank_answers` is the original `rank_answer`."""

import torch
import torch.nn.functional as F


@torch.no_grad()
def uncached_tiled_beam_search(
    model,
    memory: torch.Tensor,
    memory_mask: torch.Tensor | None,
    num_beams: int = 5,
    min_length: int = 1,
    max_length: int = 10,
    num_return_sequences: int = 1,
) -> torch.LongTensor:
    """
    Beam search as the original decodes: the memory is tiled `num_beams` times and gathered along with the beams every
    step, every step runs `model.text_decoder` on the full prefix without a cache, and finished items leave the batch.

    Args:
        model: a head with `text_decoder` and `config` (captioning or VQA).
        memory: `(batch, memory_length, hidden)` decoder memory; memory_mask: `(batch, memory_length)` or None.
        num_beams, min_length, max_length, num_return_sequences: as `original_beam_search`.
    Returns:
        `(batch, num_return_sequences, length)` sequences starting with `[CLS]`, padded with `pad_token_id`, best
        first (the layout of `original_beam_search(...).sequences`).
    """
    config = model.config
    batch_size, device = memory.shape[0], memory.device
    memory = memory.repeat_interleave(num_beams, dim=0)
    if memory_mask is not None:
        memory_mask = memory_mask.repeat_interleave(num_beams, dim=0)
    alive = torch.full((batch_size * num_beams, 1), config.decoder_start_token_id, dtype=torch.long, device=device)
    cumulative = torch.tensor([0.0] + [float("-inf")] * (num_beams - 1), device=device).repeat(batch_size)
    beam_offsets = torch.arange(batch_size, device=device) * num_beams
    item_ids = torch.arange(batch_size, device=device)  # which original item each remaining row group is
    hypotheses: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch_size)]
    for step in range(max_length):
        logits = model.text_decoder(alive, memory, encoder_attention_mask=memory_mask).logits
        log_probs = torch.log(torch.softmax(logits[:, -1].float(), dim=-1))
        vocab_size = log_probs.shape[-1]
        if step < min_length:
            log_probs[:, config.eos_token_id] = -1e20
        log_probs = log_probs + cumulative.unsqueeze(1)
        length_penalty = ((5.0 + step + 1) / 6.0) ** 0.6
        remaining = item_ids.shape[0]
        topk_scores, topk_ids = (log_probs / length_penalty).view(remaining, num_beams * vocab_size).topk(num_beams)
        cumulative = topk_scores * length_penalty
        origins = topk_ids // vocab_size + beam_offsets[:remaining].unsqueeze(1)
        tokens = topk_ids.fmod(vocab_size)
        alive = torch.cat([alive.index_select(0, origins.view(-1)), tokens.view(-1, 1)], dim=1)
        finished = tokens.eq(config.eos_token_id)
        if step + 1 == max_length:
            finished.fill_(True)
        item_done = finished[:, 0].clone()
        if finished.any():
            for row, item in enumerate(item_ids.tolist()):
                if item_done[row]:
                    finished[row].fill_(True)
                for beam in finished[row].nonzero().view(-1).tolist():
                    hypotheses[item].append((topk_scores[row, beam].item(), alive[row * num_beams + beam].tolist()))
            keep = (~item_done).nonzero().view(-1)
            if keep.numel() == 0:
                break
            cumulative, origins, item_ids = cumulative[keep], origins[keep], item_ids[keep]
            alive = alive.view(remaining, num_beams, -1)[keep].view(keep.numel() * num_beams, -1)
        # The original gathers its tiled memory along with the beams at every step.
        cumulative = cumulative.view(-1)
        memory = memory.index_select(0, origins.view(-1))
        if memory_mask is not None:
            memory_mask = memory_mask.index_select(0, origins.view(-1))

    best = [sorted(found, key=lambda pair: pair[0], reverse=True)[:num_return_sequences] for found in hypotheses]
    width = max(len(sequence) for ranked in best for _, sequence in ranked)
    sequences = torch.full((batch_size, num_return_sequences, width), config.pad_token_id, dtype=torch.long)
    for item, ranked in enumerate(best):
        for rank, (_, sequence) in enumerate(ranked):
            sequences[item, rank, : len(sequence)] = torch.tensor(sequence)
    return sequences.to(device)


@torch.no_grad()
def tiled_rank_answers(
    model,
    memory: torch.Tensor,
    memory_mask: torch.Tensor,
    candidate_ids: torch.LongTensor,
    candidate_attention_mask: torch.Tensor,
    k: int,
) -> tuple[torch.LongTensor, torch.Tensor]:
    """
    The original `rank_answer`: first-token probabilities select the top `k` candidates per question, then each is
    scored teacher-forced with its question's memory repeated `k` times. Returns `(topk_ids, topk_probs)`, each
    `(batch, k)`, best first — the output of `mplug_hf.scoring.rank_answers`.
    """
    batch_size = memory.shape[0]
    start = candidate_ids[:1, :1].expand(batch_size, 1)
    first_logits = model.text_decoder(start, memory, encoder_attention_mask=memory_mask).logits
    first_probs = first_logits[:, 0].float().softmax(dim=-1).index_select(1, candidate_ids[:, 1])
    topk_probs, topk_ids = first_probs.topk(k, dim=1)

    input_ids = candidate_ids.index_select(0, topk_ids.view(-1))
    input_mask = candidate_attention_mask.index_select(0, topk_ids.view(-1))
    labels = input_ids.masked_fill(input_mask == 0, -100)
    logits = model.text_decoder(
        input_ids,
        memory.repeat_interleave(k, dim=0),
        attention_mask=input_mask,
        encoder_attention_mask=memory_mask.repeat_interleave(k, dim=0),
    ).logits
    token_loss = F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none"
    )
    scores = topk_probs.log() - token_loss.sum(dim=1).view(batch_size, k)
    probs = scores.softmax(dim=1)
    order = probs.argsort(dim=1, descending=True)
    return topk_ids.gather(1, order), probs.gather(1, order)
