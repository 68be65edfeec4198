"""Promotion on the registry: read the versions' scores, apply :func:`cosyml.registry.policy.decide`, move
the ``champion`` alias (the old champion keeps ``previous`` for :func:`rollback`), list the versions."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from cosyml.config import RegistryConfig, as_flat_dict
from cosyml.errors import CosymlError, InputError
from cosyml.registry.candidates import CandidateSet, Scores
from cosyml.registry.names import model_name
from cosyml.registry.policy import Decision, ScoredVersion, decide, fmt_ci
from cosyml.tracking import (
    alias_version,
    logged_model_metrics,
    registered_aliases,
    registry_client,
    stage_run,
    version_model_id,
)


def model_metrics(mlc: Any, version: Any) -> dict[str, float]:
    """The latest value of each metric of the version's logged model ({} when there is none)."""
    model_id = version_model_id(version)
    return logged_model_metrics(mlc, model_id) if model_id else {}


def version_score(mlc: Any, version: Any) -> ScoredVersion:
    """A version's scores: its model metrics, or the score tags of a version registered by an older cosyml."""
    tags = version.tags or {}
    return ScoredVersion(
        version=str(version.version),
        candidate=tags.get("cosyml.candidate", f"v{version.version}"),
        scores=Scores.from_tags(model_metrics(mlc, version), prefix="") or Scores.from_tags(tags),
        is_base=tags.get("cosyml.is_base") == "true",
    )


@dataclass(frozen=True)
class PromotionResult:
    model_name: str
    decision: Decision
    moved: bool
    dry_run: bool
    policy: dict[str, Any] = field(default_factory=dict)


def promote(candidates: CandidateSet, config: RegistryConfig, dry_run: bool = False) -> PromotionResult:
    """Apply the policy to the versions registered from ``candidates`` and move the aliases.

    The champion alias moves only on a ``promote`` decision; the old champion keeps ``previous``. Each
    alias move is one atomic registry call, ``previous`` is set first, so an interruption leaves the
    old champion serving. The decision is logged as a ``promote`` stage run (also on a dry run).
    """
    mlc = registry_client()
    name = model_name(config, candidates.speaker)
    try:
        versions = mlc.search_model_versions(f"name='{name}'")
    except Exception as exc:  # pragma: no cover - network trouble
        raise CosymlError(
            f"model registry: cannot list versions of '{name}' ({exc}); check MLFLOW_TRACKING_URI"
        ) from None
    pool = [version_score(mlc, v) for v in versions if (v.tags or {}).get("cosyml.eval_sha") == candidates.sha256]
    if not pool:
        raise InputError(
            f"{candidates.path}: its candidates are not registered in '{name}'; run `cosyml register` first (or promote --register)"
        )
    champ_version = alias_version(mlc, name, config.alias)
    champion = version_score(mlc, champ_version) if champ_version is not None else None
    decision = decide(pool, champion, config)
    policy = as_flat_dict(config, "registry.")
    moved = False
    if decision.action == "promote" and not dry_run:
        assert decision.target is not None
        if champion is not None and champion.version != decision.target:
            mlc.set_registered_model_alias(name, config.previous_alias, champion.version)
        if champion is None or champion.version != decision.target:
            mlc.set_registered_model_alias(name, config.alias, decision.target)
            moved = True
    with stage_run(
        "promote", candidates.speaker, {**policy, "candidates": str(candidates.path), "dry_run": dry_run}
    ) as run:
        run.set_tags(
            {
                "cosyml.decision": decision.action if not dry_run else f"{decision.action} (dry run)",
                "cosyml.reason": decision.reason[:4900],
                "cosyml.model_name": name,
                "cosyml.champion_before": decision.champion or "none",
                "cosyml.champion_after": decision.target if moved else (decision.champion or "none"),
                "cosyml.moved": str(moved).lower(),
            }
        )
        run.log_dict({"model_name": name, "dry_run": dry_run, "moved": moved, **decision.as_dict()}, "promotion.json")
    return PromotionResult(name, decision, moved, dry_run, policy)


def rollback(speaker: str, config: RegistryConfig) -> tuple[str, str]:
    """Swap ``champion`` and ``previous``; returns (new champion, new previous)."""
    mlc = registry_client()
    name = model_name(config, speaker)
    champion = alias_version(mlc, name, config.alias)
    previous = alias_version(mlc, name, config.previous_alias)
    if previous is None:
        raise InputError(f"model '{name}' has no '{config.previous_alias}' alias; nothing to roll back to")
    mlc.set_registered_model_alias(name, config.alias, previous.version)
    if champion is not None:
        mlc.set_registered_model_alias(name, config.previous_alias, champion.version)
    return str(previous.version), str(champion.version) if champion is not None else "none"


def describe_versions(speaker: str, config: RegistryConfig) -> Iterator[str]:
    """One line per version: number, aliases, candidate, scores (for `cosyml promote --list`)."""
    mlc = registry_client()
    name = model_name(config, speaker)
    by_alias = registered_aliases(mlc, name)
    if by_alias is None:
        raise InputError(f"no registered model '{name}'; run `cosyml register` (or check MLFLOW_TRACKING_URI)")
    aliases_of: dict[str, list[str]] = {}
    for alias, number in sorted(by_alias.items()):
        aliases_of.setdefault(str(number), []).append(alias)
    for version in sorted(mlc.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version)):
        item = version_score(mlc, version)
        aliases = ",".join(aliases_of.get(str(version.version), []))
        s = item.scores
        score = f"CER {s.cer:.4f} {fmt_ci(s.cer_ci)} SS {s.ss:.4f} {fmt_ci(s.ss_ci)} n={s.n}" if s else "no scores"
        yield f"v{item.version:<4} {aliases or '-':<20} {item.candidate:<24} {score}"
