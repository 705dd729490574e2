"""Self-critical sequence training (SCST) for captioning, as mPLUG's CIDEr optimisation stage."""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

from .evaluation.caption import CiderD
from .loss_mplug import answer_token_nll
from .modeling_mplug import MPLUGForCaptioning
from .original_generation import original_beam_search
from .processing_mplug import MPLUGProcessor


@dataclass
class SelfCriticalOutput(ModelOutput):
    r"""
    Args:
        loss (`torch.FloatTensor` of shape `()`): −mean(score · (reward − baseline)), differentiable.
        rewards (`torch.FloatTensor` of shape `(batch_size, num_beams)`): CIDEr-D of every beam's caption.
        scores (`torch.FloatTensor` of shape `(batch_size, num_beams)`): beam scores (cumulative log-probability /
            ((5 + generated) / 6) ** 0.6), with gradients.
        captions (`list[list[str]]`): the decoded beams, best first.
    """

    loss: torch.FloatTensor | None = None
    rewards: torch.FloatTensor | None = None
    scores: torch.FloatTensor | None = None
    captions: list | None = None


def self_critical_loss(
    model: MPLUGForCaptioning,
    processor: MPLUGProcessor,
    pixel_values: torch.Tensor,
    references: Sequence[Sequence[str]],
    cider: CiderD | None = None,
    num_beams: int = 5,
    min_length: int = 8,
    max_length: int = 25,
    prompt_ids: torch.LongTensor | None = None,
) -> SelfCriticalOutput:
    """
    One SCST step as the original: the original beam search proposes `num_beams` captions per image; each gets its
    CIDEr-D against the image's references; the baseline is the mean reward of the image's beams; the loss is
    −mean(score · (reward − baseline)) where score is the beam's length-penalised log-probability.

    The beams are searched without gradients and then re-scored by one teacher-forced decoder pass (the image tokens
    shared by the beams), which gives the beam search's scores with gradients at a fraction of the memory.

    Args:
        model: the captioning model (put it in train mode yourself if dropout is wanted).
        processor: decodes the beams to text.
        pixel_values: `(batch_size, 3, S, S)` images.
        references: `batch_size` lists of reference captions.
        cider: the reward; default CIDEr-D with document frequencies from these references (mPLUG's per-batch
            choice). Pass `CiderD(document_frequency_corpus=train_references)` for corpus statistics.
        num_beams, min_length, max_length: the search (mPLUG: 5, 8, 25; `max_length` counts generated tokens).
        prompt_ids: `(1 or batch_size, prompt_length)` prompt starting with `[CLS]` (e.g. "a picture of").
    """
    if len(references) != pixel_values.shape[0] or any(len(refs) == 0 for refs in references):
        raise ValueError(
            f"references must hold a non-empty list of captions for each of the {len(pixel_values)} images"
        )
    if num_beams < 2:
        raise ValueError("SCST needs num_beams >= 2: the baseline is the mean reward of an image's beams")
    cider = cider if cider is not None else CiderD()
    batch_size = pixel_values.shape[0]
    memory = model.vision_model(pixel_values).last_hidden_state
    if prompt_ids is not None and prompt_ids.shape[0] == 1:
        prompt_ids = prompt_ids.expand(batch_size, -1)
    prompt_length = prompt_ids.shape[1] if prompt_ids is not None else 1
    beams = original_beam_search(
        model.text_decoder,
        memory.detach(),
        None,
        prompt_ids,
        num_beams,
        min_length,
        max_length,
        num_return_sequences=num_beams,
    )
    if bool((beams.lengths == 0).any()):
        raise ValueError("the beam search returned fewer hypotheses than num_beams; lower num_beams")
    sequences = beams.sequences.flatten(0, 1)
    lengths = beams.lengths.flatten()
    positions = torch.arange(sequences.shape[1], device=sequences.device)
    mask = (positions < lengths.unsqueeze(1)).long()
    labels = sequences.masked_fill(mask == 0, -100)
    labels[:, 1:prompt_length] = -100  # the prompt is given, not generated
    logits = model.text_decoder(sequences, encoder_hidden_states=memory, attention_mask=mask).logits
    log_likelihood = -answer_token_nll(logits, labels).sum(dim=1)
    generated = (lengths - prompt_length).to(log_likelihood.dtype)
    scores = (log_likelihood / ((5.0 + generated) / 6.0) ** 0.6).view(batch_size, num_beams)

    texts = processor.batch_decode(
        sequences[:, prompt_length:].masked_fill(mask[:, prompt_length:] == 0, 0), skip_special_tokens=True
    )
    rewards = torch.tensor(
        cider(texts, [refs for refs in references for _ in range(num_beams)]),
        dtype=scores.dtype,
        device=scores.device,
    ).view(batch_size, num_beams)
    advantage = rewards - rewards.mean(dim=1, keepdim=True)
    loss = -(scores * advantage).mean()
    captions = [texts[item * num_beams : (item + 1) * num_beams] for item in range(batch_size)]
    return SelfCriticalOutput(loss=loss, rewards=rewards, scores=scores, captions=captions)


__all__ = ["SelfCriticalOutput", "self_critical_loss"]
