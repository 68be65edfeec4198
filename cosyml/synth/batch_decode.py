"""Speech-token decoding for the engine: one utterance token by token (:func:`decode_one`), or several
padding-aware in one Qwen2 forward per step (:func:`decode_batch`).

Both build the prefix ``[sos, prompt text + text, task_id, prompt speech]`` with :func:`decoder_prefix`
(the sos / task_id rows and stop ids come from the LLM's :class:`~cosyml.models.llm.TokenLayout`: v2
``llm_embedding`` rows 0/1 and stops 6561..6563; v3 ``speech_embedding`` rows 6561/6563 and stops
6561..6760). :func:`decode_one` is :meth:`cosyml.models.llm.Qwen2LM.inference` on a :class:`DecodeRow`.

Min-length mask (upstream's, kept for identical ids): before ``int(Lt * min_token_text_ratio)`` tokens
the id ``speech_token_size`` is masked. For v2 that is eos; for v3 it is the *sos* id 6561 (upstream
masks ``speech_token_size`` in both), so v3's real eos 6562 and the other stop ids 6563..6760 can still
end decoding early. ``Lt`` counts the tts text tokens only (a v3 system prompt put in front of the tts
text by the engine counts; a prompt transcript does not).

Batched: each row's prefix is left-padded to the longest; the attention mask hides the padding and
position ids count only real positions, so every row sees what a one-row decode sees. Each step
samples every live row with its own RAS parameters and its own generator, exactly as
:meth:`cosyml.models.llm.Qwen2LM.inference` does (min-length eos mask, stop ids, max length), so a
row's tokens do not depend on which other rows share the batch. Only floating-point reduction order
differs from the one-row decode (padding changes matmul shapes), which can, rarely, flip a draw.

Why: decoding is memory-bound (every step reads all LLM weights for one token per row), so on a GPU a
batch of B rows costs about as much per step as one row.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from cosyml.models.llm import Qwen2LM, decode_length_limits
from cosyml.synth.sampling import SamplingParams, ras_sample


@dataclass
class DecodeRow:
    """One utterance to decode: its text and prompts (1-D long tensors), sampling and length limits."""

    text: torch.Tensor  # (Lt,)
    prompt_text: torch.Tensor | None
    prompt_speech: torch.Tensor | None
    sampling: SamplingParams
    min_token_text_ratio: float
    max_token_text_ratio: float
    max_tokens: int | None
    generator: torch.Generator


def _limits(row: DecodeRow) -> tuple[int, int]:
    return decode_length_limits(row.text.numel(), row.min_token_text_ratio, row.max_token_text_ratio, row.max_tokens)


def decoder_prefix(
    llm: Qwen2LM, text: torch.Tensor, prompt_text: torch.Tensor | None, prompt_speech: torch.Tensor | None
) -> torch.Tensor:
    """(L, D) decoder input ``[sos, prompt_text + text, task_id, prompt_speech]`` (1-D long id tensors)."""
    return llm.prompt_embeddings(text, prompt_text, prompt_speech)[0]


def decode_one(llm: Qwen2LM, row: DecodeRow) -> Iterator[int]:
    """Yield the speech tokens of one row as they are decoded (stop id not yielded): the LLM's own loop."""
    return llm.inference(
        row.text, row.prompt_text, row.prompt_speech, sampling=row.sampling,
        min_token_text_ratio=row.min_token_text_ratio, max_token_text_ratio=row.max_token_text_ratio,
        generator=row.generator, max_tokens=row.max_tokens,
    )


@torch.inference_mode()
def decode_batch(llm: Qwen2LM, rows: list[DecodeRow]) -> list[list[int]]:
    """Speech tokens of every row (stop id not included), decoded together."""
    if not rows:
        return []
    device = llm.device
    prefixes = [decoder_prefix(llm, r.text, r.prompt_text, r.prompt_speech) for r in rows]  # (L_i, D)
    b, width = len(rows), max(p.shape[0] for p in prefixes)
    dim = prefixes[0].shape[1]
    embeds = prefixes[0].new_zeros(b, width, dim)
    mask = torch.zeros(b, width, dtype=torch.long, device=device)
    for i, prefix in enumerate(prefixes):
        embeds[i, width - prefix.shape[0] :] = prefix
        mask[i, width - prefix.shape[0] :] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    backbone = llm.llm.model.model
    out = backbone(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True)
    cache: Any = out.past_key_values
    hidden = out.last_hidden_state[:, -1]  # (B, D)
    next_position = positions[:, -1:] + 1  # (B, 1)

    limits = [_limits(r) for r in rows]
    stop = set(llm.layout.stop_ids)
    tokens: list[list[int]] = [[] for _ in rows]
    live = [max_len > 0 for _, max_len in limits]
    step = 0
    while any(live):
        scores = llm.llm_decoder(hidden).float().log_softmax(dim=-1).cpu()  # (B, R)
        feed = [0] * b
        for i, row in enumerate(rows):
            if not live[i]:
                continue
            row_scores = scores[i].clone()
            min_len, max_len = limits[i]
            if step < min_len:
                row_scores[llm.layout.min_len_mask_id] = -float("inf")
            token = ras_sample(row_scores, tokens[i], row.sampling, row.generator)
            if token in stop:
                live[i] = False
                continue
            tokens[i].append(token)
            feed[i] = token
            if len(tokens[i]) >= max_len:
                live[i] = False
        step += 1
        if not any(live):
            break
        step_input = llm.speech_embedding.weight[torch.tensor(feed, device=device)].unsqueeze(1)  # (B, 1, D)
        mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
        out = backbone(
            inputs_embeds=step_input, attention_mask=mask, position_ids=next_position, past_key_values=cache, use_cache=True
        )
        cache = out.past_key_values
        hidden = out.last_hidden_state[:, -1]
        next_position = next_position + 1
    return tokens
