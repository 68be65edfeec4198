"""Speech-token sampling: Repetition Aware Sampling (RAS, from VALL-E 2) as CosyVoice2/3 use it.

Each decoding step draws one id from a row of log-probabilities over the speech vocabulary:

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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


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
