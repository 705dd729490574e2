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
Scoring with a trained mPLUG: closed-vocabulary answer ranking, yes/no probabilities, multiple choice and retrieval
re-ranking. The pipelines, the evaluation runner and the judges call these functions; each takes the head and its
inputs (or, to score one encoding several ways, `encoder_outputs`).
"""

import operator
from collections import defaultdict

import torch

from .loss_mplug import answer_token_nll
from .original_generation import decoder_memory_mask, encode_image_questions, items_per_memory_row
from .validation import check_head, validate_text_inputs


def answer_log_likelihoods(decoder, memory, memory_mask, answer_ids, answer_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Teacher-forced log-likelihood of `[CLS] answer [SEP]` rows, `group` consecutive rows per memory row, in one
    decoder pass that shares each memory row across its group.

    Returns:
        the summed log-probabilities of the tokens after `[CLS]` and their counts, both `(memory_batch, group)`.
    """
    labels = answer_ids.masked_fill(answer_mask == 0, -100)
    logits = decoder(
        answer_ids,
        encoder_hidden_states=memory,
        encoder_attention_mask=memory_mask,
        attention_mask=answer_mask,
        return_dict=True,
    ).logits
    token_nll = answer_token_nll(logits, labels)
    batch_size = memory.shape[0]
    return -token_nll.sum(dim=1).view(batch_size, -1), (labels[:, 1:] != -100).sum(dim=1).view(batch_size, -1)


def first_token_logits(decoder, memory, memory_mask) -> torch.Tensor:
    """`(batch, vocab_size)` logits of the first answer token after `[CLS]`. `memory_mask` is a padding mask, or a
    per-item mask of several items sharing each memory row (see [`image_shared_memories`])."""
    num_items = memory.shape[0] * items_per_memory_row(memory_mask)
    start = torch.full((num_items, 1), decoder.config.decoder_start_token_id, device=memory.device)
    cross_mask = decoder_memory_mask(memory_mask, 1, memory.dtype)
    return decoder(start, encoder_hidden_states=memory, encoder_attention_mask=cross_mask, return_dict=True).logits[
        :, 0
    ]


def fusion_keeps_image_tokens(config) -> bool:
    """Whether the fusion has no connected layer (mPLUG-large, S=6), so the decoder memory of every question about an
    image starts with the same image tokens."""
    return not any(config.is_connected_fusion_layer(layer) for layer in range(config.fusion_layers))


def image_shared_memories(
    encoder_outputs, image_indices: list[int]
) -> list[tuple[torch.LongTensor, torch.Tensor, torch.Tensor]]:
    """
    The decoder memories of questions grouped by image, for a fusion that keeps the image tokens
    ([`fusion_keeps_image_tokens`]): one memory row per image, `[V; T_1; …; T_n]` (its tokens once, then the fused
    text states of each of its n questions), where question j's mask row admits V and T_j only. Attention ignores
    the order of its keys and masked keys weigh exactly zero, so every question attends to what its own `[V; T_j]`
    holds, while the decoder projects V once per image instead of once per question. Images with the same number
    of questions form one group (one decoder batch).

    Args:
        encoder_outputs: the [`MPLUGModelOutput`] of the questions. image_indices: the image of each question.
    Returns:
        per group `(positions, memory, memory_mask)`: `(images · n,)` indices of its questions (image-major),
        `(images, N + n·L, hidden)` memory rows and `(images, n, N + n·L)` per-question masks.
    """
    image_tokens = encoder_outputs.fused_image_states
    text_states = encoder_outputs.fused_text_states
    num_image_tokens, (text_length, hidden_size) = image_tokens.shape[1], text_states.shape[1:]
    text_mask = encoder_outputs.encoder_attention_mask[:, num_image_tokens:]
    questions_of_image = defaultdict(list)
    for position, image in enumerate(image_indices):
        questions_of_image[image].append(position)
    images_by_count = defaultdict(list)
    for positions in questions_of_image.values():
        images_by_count[len(positions)].append(positions)
    groups = []
    for count, images in images_by_count.items():
        positions = torch.tensor([p for image_positions in images for p in image_positions], device=text_states.device)
        texts = text_states.index_select(0, positions).view(len(images), count * text_length, hidden_size)
        memory = torch.cat([image_tokens.index_select(0, positions[::count]), texts], dim=1)
        # block-diagonal text part: question j sees its own text tokens only
        own_text = torch.zeros(len(images), count, count, text_length, dtype=text_mask.dtype, device=text_mask.device)
        diagonal = torch.arange(count, device=text_mask.device)
        own_text[:, diagonal, diagonal] = text_mask.index_select(0, positions).view(len(images), count, text_length)
        image_part = text_mask.new_ones(len(images), count, num_image_tokens)
        groups.append((positions, memory, torch.cat([image_part, own_text.flatten(2)], dim=2)))
    return groups


@torch.no_grad()
def rank_answers(
    model,
    input_ids: torch.LongTensor | None,
    pixel_values: torch.Tensor | None,
    candidate_ids: torch.LongTensor,
    candidate_attention_mask: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    k: int = 128,
    encoder_outputs=None,
):
    """
    Closed-vocabulary answering as the original `rank_answer`: the probability of each candidate's first token after
    `[CLS]` selects the top `k` candidates; each is then scored by a teacher-forced pass,
    log p = log p(first token) − Σ token CE (the original counts the first token in both terms); the result is the
    softmax over the `k` scores, sorted.

    Args:
        model: an [`MPLUGForQuestionAnswering`]. input_ids, pixel_values, attention_mask: the questions and their
            images, or `encoder_outputs`: the head's encoder output for them.
        candidate_ids, candidate_attention_mask: `(num_candidates, c_len)` candidates as `[CLS] answer [SEP]`.
        k: candidates re-scored per question (1 ≤ k ≤ num_candidates).
    Returns:
        `(topk_ids, topk_probs)`, each `(batch, k)`: indices into the candidate list, best first.
    """
    check_head(model, "rank_answers", "MPLUGForQuestionAnswering")
    num_candidates = candidate_ids.shape[0] if candidate_ids is not None else 0
    if num_candidates == 0:
        raise ValueError("the candidate answer list is empty")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_candidates:
        raise ValueError(f"k={k!r} must be an integer between 1 and the number of candidates ({num_candidates})")
    if candidate_ids.ndim != 2 or candidate_ids.shape[1] < 2:
        raise ValueError("candidate_ids must be (num_candidates, length >= 2): [CLS] answer [SEP]")
    if candidate_attention_mask is None or candidate_attention_mask.shape != candidate_ids.shape:
        raise ValueError(
            f"candidate_attention_mask must have the shape of candidate_ids {tuple(candidate_ids.shape)}, got "
            f"{None if candidate_attention_mask is None else tuple(candidate_attention_mask.shape)}"
        )
    validate_text_inputs(candidate_ids, None, model.config.text_config, name="candidate_ids")
    # a candidate is [CLS] answer ...: a row attending fewer tokens has no answer to score
    empty = (candidate_attention_mask.sum(dim=1) < 2).nonzero().view(-1).tolist()
    if empty:
        raise ValueError(f"candidates {empty[:5]} attend fewer than 2 tokens ([CLS] answer): no answer to score")
    if encoder_outputs is None:
        encoder_outputs = encode_image_questions(model, input_ids, pixel_values, attention_mask)
    decoder = model.text_decoder
    memory, memory_mask = encoder_outputs.last_hidden_state, encoder_outputs.encoder_attention_mask
    first_probs = first_token_logits(decoder, memory, memory_mask).float().softmax(dim=-1)
    topk_probs, topk_ids = first_probs.index_select(1, candidate_ids[:, 1]).topk(k, dim=1)
    chosen_ids = candidate_ids.index_select(0, topk_ids.view(-1))
    chosen_mask = candidate_attention_mask.index_select(0, topk_ids.view(-1))
    answer_log_likelihood, _ = answer_log_likelihoods(decoder, memory, memory_mask, chosen_ids, chosen_mask)
    probs = (topk_probs.log() + answer_log_likelihood).softmax(dim=1)
    order = probs.argsort(dim=1, descending=True)
    return topk_ids.gather(1, order), probs.gather(1, order)


@torch.no_grad()
def score_yes_no(
    model,
    input_ids: torch.LongTensor | None,
    pixel_values: torch.Tensor | None,
    yes_token_id: int,
    no_token_id: int,
    attention_mask: torch.Tensor | None = None,
    image_indices: torch.LongTensor | None = None,
    full_sequence: bool = False,
    encoder_outputs=None,
):
    """
    P(yes) of yes/no questions (the text-to-image judges' score). With `full_sequence=False` the first answer token
    decides: softmax of its logits restricted to {yes, no}; with `full_sequence=True` the likelihoods of the whole
    answers `[CLS] yes [SEP]` and `[CLS] no [SEP]` (the [SEP] term counts too, as when the original ranks answers).
    Each image is encoded once for all its questions (`image_indices`).

    Returns:
        `(num_questions,)` probabilities of "yes".
    """
    check_head(model, "score_yes_no", "MPLUGForQuestionAnswering")
    vocab_size = model.config.text_config.vocab_size
    token_ids = {}
    for name, token_id in (("yes_token_id", yes_token_id), ("no_token_id", no_token_id)):
        try:  # ints, numpy integers and 0-d integer tensors
            token_ids[name] = None if isinstance(token_id, bool) else operator.index(token_id)
        except TypeError:
            token_ids[name] = None
        if token_ids[name] is None or not 0 <= token_ids[name] < vocab_size:
            raise ValueError(f"{name} must be a token id in [0, {vocab_size}), got {token_id!r}")
    yes_token_id, no_token_id = token_ids["yes_token_id"], token_ids["no_token_id"]
    if yes_token_id == no_token_id:
        raise ValueError(f"yes_token_id and no_token_id are the same id ({yes_token_id}): P(yes) would be 0.5")
    if encoder_outputs is None:
        encoder_outputs = encode_image_questions(model, input_ids, pixel_values, attention_mask, image_indices)
    decoder = model.text_decoder
    memory, memory_mask = encoder_outputs.last_hidden_state, encoder_outputs.encoder_attention_mask
    if not full_sequence:
        logits = first_token_logits(decoder, memory, memory_mask)
        return logits[:, [yes_token_id, no_token_id]].float().softmax(dim=-1)[:, 0]
    cls_id, sep_id = model.config.decoder_start_token_id, model.config.eos_token_id
    answers = torch.tensor([[cls_id, yes_token_id, sep_id], [cls_id, no_token_id, sep_id]], device=memory.device)
    answers = answers.repeat(memory.shape[0], 1)
    log_likelihood, _ = answer_log_likelihoods(decoder, memory, memory_mask, answers, torch.ones_like(answers))
    return log_likelihood.softmax(dim=-1)[:, 0]


@torch.no_grad()
def choose(
    model,
    input_ids: torch.LongTensor | None,
    pixel_values: torch.Tensor | None,
    choice_ids: torch.LongTensor,
    choice_attention_mask: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    image_indices: torch.LongTensor | None = None,
    length_normalize: bool = False,
    encoder_outputs=None,
):
    """
    Multiple choice by answer likelihood: every option of every question is scored in one decoder pass over the
    question's shared memory. The score is log p(`[CLS] option [SEP]`) summed over its tokens, or with
    `length_normalize` the mean per token. Padding options (all-zero mask rows) are never chosen. Each image is encoded
    once for all its questions (`image_indices`).

    Args:
        choice_ids, choice_attention_mask: `(num_questions, num_choices, c_len)` options as `[CLS] option [SEP]`.
    Returns:
        `(choice, scores)`: `(num_questions,)` best option and `(num_questions, num_choices)` scores (-inf: padding).
    """
    check_head(model, "choose", "MPLUGForQuestionAnswering")
    if encoder_outputs is None:
        encoder_outputs = encode_image_questions(model, input_ids, pixel_values, attention_mask, image_indices)
    num_questions = encoder_outputs.last_hidden_state.shape[0]
    if choice_ids.ndim != 3 or choice_ids.shape[0] != num_questions:
        raise ValueError(
            f"choice_ids must be (num_questions={num_questions}, num_choices, length), got {tuple(choice_ids.shape)}"
        )
    if choice_attention_mask is None or choice_attention_mask.shape != choice_ids.shape:
        raise ValueError(f"choice_attention_mask must have the shape of choice_ids {tuple(choice_ids.shape)}")
    validate_text_inputs(choice_ids.flatten(0, 1), None, model.config.text_config, name="choice_ids")
    present = choice_attention_mask.sum(dim=-1) > 0
    if not bool(present.any(dim=1).all()):
        raise ValueError("every question needs at least one non-empty option")
    log_likelihood, lengths = answer_log_likelihoods(
        model.text_decoder,
        encoder_outputs.last_hidden_state,
        encoder_outputs.encoder_attention_mask,
        choice_ids.flatten(0, 1),
        choice_attention_mask.flatten(0, 1),
    )
    scores = log_likelihood / lengths.clamp(min=1) if length_normalize else log_likelihood
    scores = scores.masked_fill(~present, float("-inf"))
    return scores.argmax(dim=1), scores


@torch.no_grad()
def rerank_with_itm(
    model, similarities, image_tokens, text_states, text_mask, k: int, batch_size: int, add_itc: bool = False
):
    """
    The original retrieval evaluation, both directions: ITC `similarities` `(num_images, num_texts)` select the top
    `k` texts per image (and images per text); those pairs get the raw ITM match logit (+ the similarity with
    `add_itc`, the original's video retrieval score), the rest -100.

    Args:
        model: an [`MPLUGForRetrieval`]. image_tokens: `(num_images, tokens, hidden)` visual encoder outputs.
        text_states, text_mask: `(num_texts, length, hidden)` text encoder outputs and their mask.
    Returns:
        `(scores_i2t (num_images, num_texts), scores_t2i (num_texts, num_images))`.
    """
    for name, value in (("k", k), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    def match_logits(images, texts, mask):
        fused = model.mplug(image_states=images, text_states=texts, attention_mask=mask, return_dict=True)
        return model.contrastive.itm_head(fused.fused_text_states[:, 0])[:, 1].float()

    def one_direction(sims, images_are_queries):
        top_k = min(k, sims.shape[1])
        scores = torch.full_like(sims, -100.0)
        for query in range(sims.shape[0]):
            top = sims[query].topk(top_k).indices
            logits = []
            for chunk in top.split(batch_size):
                if images_are_queries:
                    images = image_tokens[query : query + 1].expand(len(chunk), -1, -1)
                    texts, mask = text_states[chunk], text_mask[chunk]
                else:
                    images = image_tokens[chunk]
                    texts = text_states[query : query + 1].expand(len(chunk), -1, -1)
                    mask = text_mask[query : query + 1].expand(len(chunk), -1)
                logits.append(match_logits(images, texts, mask))
            scores[query, top] = torch.cat(logits).to(scores.dtype) + (sims[query, top] if add_itc else 0)
        return scores

    similarities = similarities.float()  # bf16 similarities tie often: select and score in float32
    return one_direction(similarities, True), one_direction(similarities.t(), False)


@torch.no_grad()
def retrieve(
    model,
    pixel_values: torch.Tensor,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None = None,
    k: int = 256,
    batch_size: int = 64,
    add_itc: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Score every image against every text with an [`MPLUGForRetrieval`] as the original evaluation: ITC similarity
    (no temperature) selects the top `k` per query, re-scored by ITM ([`rerank_with_itm`]); encoded `batch_size` at a
    time.

    Returns:
        `(scores_i2t (num_images, num_texts), scores_t2i (num_texts, num_images))`.
    """
    check_head(model, "retrieve", "MPLUGForRetrieval")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids {tuple(input_ids.shape)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    images = [model.get_image_features(chunk, return_dict=True) for chunk in pixel_values.split(batch_size)]
    texts = [
        model.get_text_features(ids, mask, return_dict=True)
        for ids, mask in zip(input_ids.split(batch_size), attention_mask.split(batch_size))
    ]
    image_states = torch.cat([output.last_hidden_state for output in images])
    text_states = torch.cat([output.last_hidden_state for output in texts])
    similarities = torch.cat([o.pooler_output for o in images]) @ torch.cat([o.pooler_output for o in texts]).t()
    return rerank_with_itm(model, similarities, image_states, text_states, attention_mask, k, batch_size, add_itc)
