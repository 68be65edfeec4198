"""Speech-token generation: Repetition Aware Sampling and the one decode loop (single row or batched).

**Sampling** (RAS, from VALL-E 2, as CosyVoice2/3 use it). Each decoding step draws one id from a row
of log-probabilities over the speech vocabulary:

1. Nucleus draw: the probabilities sorted in descending order are kept while the running sum of the
   ones *before* an entry is below ``top_p`` and fewer than ``top_k`` are kept (so the entry that
   crosses ``top_p`` is included). One index is drawn in proportion to the kept, un-renormalised
   probabilities.
2. Repetition check: if the drawn id occurs at least ``win_size * tau_r`` times among the last
   ``win_size`` decoded ids (with the defaults 10 * 0.1 = 1: any repeat within 10), it is excluded
   (its score set to -inf, as upstream CosyVoice does since 2026-02, commit f2ddcbe; older releases
   re-drew without excluding it) and an id is drawn from the full softmax of the remaining scores.
   That full draw may return a special id (eos, fill), which can end decoding.

Draws run on the CPU with an explicit :class:`torch.Generator`: a seed gives the same ids whatever
device computed the scores, and the same ids as upstream run on the CPU after ``torch.manual_seed``
(both consume the generator in the same way: one ``multinomial`` over the kept set, then one over the
full row when the repetition check fires).

**Decoding** (:func:`decode_one`, :func:`decode_batch`, both on :func:`decode_steps`). The prefix is
``[sos, prompt text + text, task_id, prompt speech]`` (:meth:`cosyml.models.llm.Qwen2LM.prompt_embeddings`;
the sos / task_id rows and stop ids come from the LLM's :class:`~cosyml.models.llm.TokenLayout`: v2
``llm_embedding`` rows 0/1 and stops 6561..6563; v3 ``speech_embedding`` rows 6561/6563 and stops
6561..6760). Decoding stops at a stop id (not yielded) or after ``int(Lt * max_token_text_ratio)``
tokens (``max_tokens`` caps it further).

Min-length mask (upstream's, kept for identical ids): before ``int(Lt * min_token_text_ratio)`` tokens
the id ``speech_token_size`` is masked. For v2 that is eos; for v3 it is the *sos* id 6561 (upstream
masks ``speech_token_size`` in both), so v3's real eos 6562 and the other stop ids 6563..6760 can still
end decoding early. ``Lt`` counts the tts text tokens only (a v3 system prompt put in front of the tts
text by the engine counts; a prompt transcript does not).

One row runs unpadded (no attention mask, positions from the KV cache: the exact computation the parity
fixtures check). Several rows are left-padded to the longest prefix; the attention mask hides the
padding and position ids count only real positions, so every row sees what a one-row decode sees. Each
step samples every live row with its own RAS parameters and its own generator, so a row's tokens do not
depend on which other rows share the batch. Only floating-point reduction order differs from the one-row
decode (padding changes matmul shapes), which can, rarely, flip a draw. Why batch: decoding is
memory-bound (every step reads all LLM weights for one token per row), so on a GPU a batch of B rows
costs about as much per step as one row.

The LLM is only used through its attributes (``layout``, ``device``, ``prompt_embeddings``,
``llm.model.model``, ``llm_decoder``, ``speech_embedding``), so this module does not import
:mod:`cosyml.models.llm` (which imports it for :class:`SamplingParams`).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from cosyml.models.llm import Qwen2LM


@dataclass(frozen=True)
class SamplingParams:
    """RAS parameters (the ``sampling: !name:...ras_sampling`` node of the model yaml)."""

    top_p: float = 0.8
    top_k: int = 25
    win_size: int = 10
    tau_r: float = 0.1

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> SamplingParams:
        """Build from the yaml node's keyword arguments; missing keys take upstream's defaults."""
        default = cls()
        return cls(
            top_p=float(kwargs.get("top_p", default.top_p)),
            top_k=int(kwargs.get("top_k", default.top_k)),
            win_size=int(kwargs.get("win_size", default.win_size)),
            tau_r=float(kwargs.get("tau_r", default.tau_r)),
        )


def nucleus_sample(scores: torch.Tensor, top_p: float, top_k: int, generator: torch.Generator | None) -> int:
    """Draw one id from the top-p/top-k nucleus of ``scores`` (V,) log-probabilities (or logits)."""
    probs = scores.softmax(dim=0)
    k = min(top_k, probs.numel())
    kept_probs, kept_ids = probs.topk(k)
    # Entry i is kept while the sum of entries 0..i-1 is below top_p.
    before = torch.zeros_like(kept_probs)
    before[1:] = kept_probs[:-1].cumsum(dim=0)
    n = max(1, int((before < top_p).sum().item()))
    # Keep leading entries only: `before` is non-decreasing, so the kept set is a prefix.
    choice = kept_probs[:n].multinomial(1, replacement=True, generator=generator)
    return int(kept_ids[choice].item())


def full_sample(scores: torch.Tensor, generator: torch.Generator | None) -> int:
    """Draw one id from the full softmax of ``scores`` (V,)."""
    return int(scores.softmax(dim=0).multinomial(1, replacement=True, generator=generator).item())


def ras_sample(
    scores: torch.Tensor,
    decoded: Sequence[int],
    params: SamplingParams,
    generator: torch.Generator | None = None,
) -> int:
    """One RAS draw from ``scores`` (V,) float log-probabilities of the next speech token.

    ``decoded`` holds the ids decoded so far (only the last ``params.win_size`` are looked at).
    ``scores`` is modified in place when the repetition check fires (the repeated id becomes -inf).
    """
    token = nucleus_sample(scores, params.top_p, params.top_k, generator)
    window = decoded[-params.win_size :] if params.win_size > 0 else ()
    repeats = sum(1 for t in window if t == token)
    if repeats >= params.win_size * params.tau_r:
        scores[token] = -float("inf")
        token = full_sample(scores, generator)
    return token


def decode_length_limits(
    text_tokens: int, min_token_text_ratio: float, max_token_text_ratio: float, max_tokens: int | None = None
) -> tuple[int, int]:
    """(min, max) speech tokens to decode for ``text_tokens`` text tokens; ``max_tokens`` caps the max.

    Same float32 arithmetic as upstream (an int32 length times a Python float), so the limits agree.
    """
    n_text = torch.tensor(text_tokens, dtype=torch.int32)
    min_len, max_len = int(n_text * min_token_text_ratio), int(n_text * max_token_text_ratio)
    return min_len, max_len if max_tokens is None else min(max_len, max_tokens)


@dataclass
class DecodeRow:
    """One utterance to decode: its text and prompts (1-D long tensors), sampling and length limits.

    ``generator`` is a CPU generator for the draws (None: the global RNG).
    """

    text: torch.Tensor  # (Lt,)
    prompt_text: torch.Tensor | None
    prompt_speech: torch.Tensor | None
    sampling: SamplingParams
    min_token_text_ratio: float
    max_token_text_ratio: float
    max_tokens: int | None
    generator: torch.Generator | None


def decoder_prefix(
    llm: Qwen2LM, text: torch.Tensor, prompt_text: torch.Tensor | None, prompt_speech: torch.Tensor | None
) -> torch.Tensor:
    """(L, D) decoder input ``[sos, prompt_text + text, task_id, prompt_speech]`` (1-D long id tensors)."""
    return llm.prompt_embeddings(text, prompt_text, prompt_speech)[0]


@torch.inference_mode()
def decode_steps(
    llm: Qwen2LM, rows: Sequence[DecodeRow], scores_out: Sequence[list[torch.Tensor]] | None = None
) -> Iterator[tuple[int, int]]:
    """The decode loop: yield ``(row index, speech token)`` as each token is accepted (stop ids not yielded).

    ``scores_out[i]`` (one list per row) collects row i's (R,) float32 log-probabilities of each step as
    the sampler saw them (after the min-length mask, before the repetition check).
    """
    b = len(rows)
    if b == 0:
        return
    device = llm.device
    prefixes = [decoder_prefix(llm, r.text, r.prompt_text, r.prompt_speech) for r in rows]  # (L_i, D)
    mask: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    next_position: torch.Tensor | None = None
    if b == 1:
        embeds = prefixes[0].unsqueeze(0)  # (1, L, D), unpadded
    else:
        width, dim = max(p.shape[0] for p in prefixes), prefixes[0].shape[1]
        embeds = prefixes[0].new_zeros(b, width, dim)
        mask = torch.zeros(b, width, dtype=torch.long, device=device)
        for i, prefix in enumerate(prefixes):
            embeds[i, width - prefix.shape[0] :] = prefix
            mask[i, width - prefix.shape[0] :] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        next_position = positions[:, -1:] + 1  # (B, 1)
    backbone = llm.llm.model.model
    out = backbone(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True)
    cache: Any = out.past_key_values
    hidden = out.last_hidden_state[:, -1]  # (B, D)

    limits = [
        decode_length_limits(r.text.numel(), r.min_token_text_ratio, r.max_token_text_ratio, r.max_tokens) for r in rows
    ]
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
            if scores_out is not None:
                scores_out[i].append(row_scores.clone())
            token = ras_sample(row_scores, tokens[i], row.sampling, row.generator)
            if token in stop:
                live[i] = False
                continue
            tokens[i].append(token)
            feed[i] = token
            yield i, token
            if len(tokens[i]) >= max_len:
                live[i] = False
        step += 1
        if not any(live):
            break
        step_input = llm.speech_embedding.weight[torch.tensor(feed, device=device)].unsqueeze(1)  # (B, 1, D)
        if mask is not None and next_position is not None:
            mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
            out = backbone(
                inputs_embeds=step_input,
                attention_mask=mask,
                position_ids=next_position,
                past_key_values=cache,
                use_cache=True,
            )
            next_position = next_position + 1
        else:
            out = backbone(inputs_embeds=step_input, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        hidden = out.last_hidden_state[:, -1]


def decode_one(
    llm: Qwen2LM, row: DecodeRow, scores_out: list[torch.Tensor] | None = None
) -> Generator[int, None, None]:
    """Yield the speech tokens of one row as they are decoded (stop id not yielded), unpadded."""
    for _, token in decode_steps(llm, [row], None if scores_out is None else [scores_out]):
        yield token


def decode_batch(llm: Qwen2LM, rows: Sequence[DecodeRow]) -> list[list[int]]:
    """Speech tokens of every row (stop id not included), decoded together."""
    tokens: list[list[int]] = [[] for _ in rows]
    for i, token in decode_steps(llm, rows):
        tokens[i].append(token)
    return tokens
