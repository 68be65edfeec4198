"""The promotion policy (README "Promotion policy"): the composite score of CER and SS, the guard rules
(missing outputs, CER regression against the base model, confidence-interval separation) and the choice of
the champion. Pure: no MLflow, no torch; :func:`decide` sees scores, never a registry.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from cosyml.config import RegistryConfig
from cosyml.errors import InputError
from cosyml.registry.candidates import Scores


@dataclass(frozen=True)
class ScoredVersion:
    version: str
    candidate: str
    scores: Scores | None  # None: the version carries no readable score tags
    is_base: bool = False


@dataclass(frozen=True)
class Verdict:
    version: str
    candidate: str
    composite: float | None
    eligible: bool
    reason: str


@dataclass(frozen=True)
class Decision:
    """What promotion does: ``promote`` moves the champion alias to ``target``; ``keep`` moves nothing."""

    action: Literal["promote", "keep"]
    target: str | None  # version that becomes champion
    champion: str | None  # current champion version (None: there is none)
    reason: str
    verdicts: list[Verdict]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def composite(scores: Scores, config: RegistryConfig) -> float:
    """Higher is better: ``ss_weight * SS - cer_weight * CER`` (:func:`composite_of` the means)."""
    return composite_of(scores.cer, scores.ss, config)


def composite_of(cer: float, ss: float, config: RegistryConfig) -> float:
    """The composite of a mean CER and a mean SS (the per-epoch probe ranks epochs by it)."""
    return config.ss_weight * ss - config.cer_weight * cer


def fmt_ci(ci: tuple[float, float]) -> str:
    return f"[{ci[0]:.4f}, {ci[1]:.4f}]"


def beats(challenger: Scores, champion: Scores, config: RegistryConfig) -> tuple[bool, str]:
    """Does ``challenger`` beat ``champion`` by the policy? (answer, reason)."""
    c_new, c_old = composite(challenger, config), composite(champion, config)
    if c_new <= c_old:
        return False, f"composite {c_new:.4f} is not above the champion's {c_old:.4f}"
    if not config.require_ci_separation:
        return True, f"composite {c_new:.4f} > champion {c_old:.4f}"
    cer_better = challenger.cer_ci[1] < champion.cer_ci[0]
    ss_better = challenger.ss_ci[0] > champion.ss_ci[1]
    cer_worse = challenger.cer_ci[0] > champion.cer_ci[1]
    ss_worse = challenger.ss_ci[1] < champion.ss_ci[0]
    cis = f"CER {fmt_ci(challenger.cer_ci)} vs {fmt_ci(champion.cer_ci)}, SS {fmt_ci(challenger.ss_ci)} vs {fmt_ci(champion.ss_ci)}"
    if cer_worse or ss_worse:
        return False, f"significantly worse on {'CER' if cer_worse else 'SS'} ({cis})"
    if not (cer_better or ss_better):
        return False, f"confidence intervals overlap the champion's ({cis})"
    better = " and ".join(m for m, ok in (("CER", cer_better), ("SS", ss_better)) if ok)
    return True, f"better beyond the CIs on {better} ({cis}); composite {c_new:.4f} > {c_old:.4f}"


def _eligibility(item: ScoredVersion, base: Scores, config: RegistryConfig) -> tuple[bool, str]:
    s = item.scores
    if s is None:
        return False, "no scores"
    if s.n <= 0:
        return False, "no scored utterances"
    if s.missing / s.n > config.max_missing_ratio:
        return False, f"{s.missing} of {s.n} outputs missing (> registry.max_missing_ratio {config.max_missing_ratio})"
    if s.cer - base.cer > config.max_cer_regression:
        return False, (
            f"CER {s.cer:.4f} regresses vs base {base.cer:.4f} by {s.cer - base.cer:.4f} "
            f"(> registry.max_cer_regression {config.max_cer_regression})"
        )
    return True, "eligible"


def decide(pool: list[ScoredVersion], champion: ScoredVersion | None, config: RegistryConfig) -> Decision:
    """The promotion policy (see README "Promotion policy"). ``pool`` must hold the base model's version."""
    bases = [v for v in pool if v.is_base and v.scores is not None]
    if not bases:
        raise InputError(
            "no evaluated base model among the candidates; evaluate the base model (llm=base, flow=base) too"
        )
    base = bases[0].scores
    assert base is not None
    verdicts = []
    for item in pool:
        ok, why = _eligibility(item, base, config)
        verdicts.append(
            Verdict(item.version, item.candidate, composite(item.scores, config) if item.scores else None, ok, why)
        )
    ranked = sorted(
        (v for v in verdicts if v.eligible),
        key=lambda v: (-(v.composite or 0.0), int(v.version) if v.version.isdigit() else 0),
    )
    current = champion.version if champion else None
    if not ranked:
        return Decision(
            "keep",
            None,
            current,
            "no eligible candidate: " + "; ".join(f"v{v.version} {v.candidate}: {v.reason}" for v in verdicts),
            verdicts,
        )
    best = ranked[0]
    if champion is None:
        return Decision(
            "promote",
            best.version,
            None,
            f"no champion yet; v{best.version} ({best.candidate}) is the best eligible candidate (composite {best.composite:.4f})",
            verdicts,
        )
    if best.version == champion.version:
        return Decision(
            "keep",
            None,
            current,
            f"the champion v{current} ({champion.candidate}) is still the best eligible candidate",
            verdicts,
        )
    if champion.scores is None:
        return Decision(
            "promote",
            best.version,
            current,
            f"the champion v{current} has no scores; v{best.version} ({best.candidate}) is the best eligible candidate",
            verdicts,
        )
    return _challenge(ranked, pool, champion, champion.scores, config, verdicts)


def _challenge(
    ranked: list[Verdict],
    pool: list[ScoredVersion],
    champion: ScoredVersion,
    champion_scores: Scores,
    config: RegistryConfig,
    verdicts: list[Verdict],
) -> Decision:
    """The first eligible candidate ranked above the champion that :func:`beats` it takes its place."""
    current = champion.version
    reasons = []
    for verdict in ranked:
        if verdict.version == current:
            break  # candidates ranked below the champion cannot beat it
        scores = next(p.scores for p in pool if p.version == verdict.version)
        assert scores is not None  # eligible candidates have scores
        ok, why = beats(scores, champion_scores, config)
        if ok:
            return Decision(
                "promote",
                verdict.version,
                current,
                f"v{verdict.version} ({verdict.candidate}) beats champion v{current}: {why}",
                verdicts,
            )
        reasons.append(f"v{verdict.version} ({verdict.candidate}): {why}")
    return Decision(
        "keep",
        None,
        current,
        f"no candidate beats champion v{current} ({champion.candidate}): "
        + "; ".join(reasons or ["none ranks above it"]),
        verdicts,
    )
