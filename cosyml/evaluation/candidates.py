"""Candidates: which LLM and flow weights to synthesise with, from the command line or a params grid.

A candidate is a pair of weight sources, one for the LLM and one for the flow. A source is written as

- ``base``: the model directory's own ``llm.pt`` / ``flow.pt``;
- ``sft-avg``: the averaged SFT weights, ``<exp_dir>/<part>/<part>.pt`` (what ``cosyml average`` writes);
- ``epoch-K`` (or ``epoch_K``): the training checkpoint ``<exp_dir>/<part>/checkpoints/epoch_K.pt``;
- ``last``: the newest ``epoch_*.pt`` in ``<exp_dir>/<part>/checkpoints``;
- ``best-probe``: the epoch checkpoint of ``<exp_dir>/<part>/checkpoints`` with the highest probe composite
  (the per-epoch CER/SS of ``train.probe_every_epochs``, ranked with the registry's weights). In the params
  grid a part without probe scores drops its ``best-probe`` candidates with one line; named on the
  command line it is reported as missing like any absent file;
- anything else: a weight file, a checkpoint, or a model directory (its ``<part>.pt``).

On the command line a candidate is ``llm=SOURCE,flow=SOURCE[,name=NAME]`` (a part left out is ``base``);
in ``params.yaml`` either the same strings under ``evaluate.candidates`` or the grid
``evaluate.llm_sources`` x ``evaluate.flow_sources``. Every candidate gets a filesystem-safe ``slug`` that
names its folder under the evaluation directory and its MLflow metrics (``cer/<slug>``).

:class:`Candidate` is the one candidate type: the registry reads ``candidates.json`` back into it (with
its scores beside it, :class:`cosyml.registry.candidates.EvaluatedCandidate`). Importing this module loads
no torch (the registry's pure policy imports it); ``best-probe`` reads checkpoints on first use.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cosyml.errors import ConfigError, ModelDirError
from cosyml.models.keys import Part

if TYPE_CHECKING:
    from cosyml.train.average import ProbeRank

BASE = "base"
BEST_PROBE = "best-probe"
NO_PROBE_SCORES = "best-probe_<no probe scores>.pt"  # file name a best-probe source resolves to without scores
PARTS: tuple[Part, ...] = ("llm", "flow")
_EPOCH = re.compile(r"^epoch[-_](\d+)$")
_SLUG_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")
MAX_SLUG = 60


@dataclass(frozen=True)
class Candidate:
    """One (LLM, flow) weight pair. ``llm``/``flow`` are ``"base"`` or a path as the user gave it
    (aliases already resolved); ``*_label`` keeps the alias for display (``sft-avg``; empty when read
    back from ``candidates.json``, which records the resolved sources only)."""

    name: str
    llm: str
    flow: str
    llm_label: str = ""
    flow_label: str = ""

    @property
    def is_base(self) -> bool:
        return self.llm == BASE and self.flow == BASE

    @property
    def slug(self) -> str:
        return slugify(self.name)

    def source(self, part: str) -> str:
        return self.llm if part == "llm" else self.flow


def slugify(name: str) -> str:
    """A folder- and metric-safe version of ``name`` (``llm=base,flow=sft-avg`` -> ``llm-base_flow-sft-avg``).

    Long names are cut and get a short hash so two candidates never share a folder."""
    slug = _SLUG_UNSAFE.sub("_", name.replace("=", "-")).strip("_.") or "candidate"
    if len(slug) > MAX_SLUG:
        digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:8]
        slug = f"{slug[: MAX_SLUG - 9].rstrip('_.')}_{digest}"
    return slug


def resolve_alias(source: str, part: str, exp_dir: str | Path = "exp", rank: ProbeRank | None = None) -> str:
    """The weight source an alias stands for (see the module docstring); other values unchanged.

    ``rank``: ``(cer, ss) -> composite`` for ``best-probe`` (default: the registry's default weights)."""
    source = source.strip()
    exp = Path(exp_dir)
    if source in ("", BASE):
        return BASE
    if source == BEST_PROBE:
        from cosyml.train.average import best_probe_checkpoint  # torch: only when an alias needs checkpoints

        folder = exp / part / "checkpoints"
        best = best_probe_checkpoint(folder, rank) if folder.is_dir() else None
        return best.path if best is not None else str(folder / NO_PROBE_SCORES)
    if source == "sft-avg":
        return str(exp / part / f"{part}.pt")
    match = _EPOCH.match(source)
    if match:
        return str(exp / part / "checkpoints" / f"epoch_{int(match.group(1))}.pt")
    if source == "last":
        found = sorted(
            (exp / part / "checkpoints").glob("epoch_*.pt"),
            key=lambda p: int(p.stem.split("_")[1]) if p.stem.split("_")[1].isdigit() else -1,
        )
        if not found:
            return str(exp / part / "checkpoints" / "epoch_<none>.pt")  # reported as missing per candidate
        return str(found[-1])
    return source


def parse_candidate(spec: str, exp_dir: str | Path = "exp", rank: ProbeRank | None = None) -> Candidate:
    """``"llm=SOURCE,flow=SOURCE[,name=NAME]"`` -> :class:`Candidate` (one-line :class:`ConfigError` if malformed)."""
    fields: dict[str, str] = {}
    for piece in spec.split(","):
        piece = piece.strip()
        if not piece:
            continue
        key, sep, value = piece.partition("=")
        key = key.strip()
        if not sep or key not in (*PARTS, "name") or not value.strip():
            raise ConfigError(
                f"candidate {spec!r}: expected llm=SOURCE,flow=SOURCE[,name=NAME] "
                "(SOURCE: base, sft-avg, epoch-K, last, best-probe or a weight file)"
            )
        if key in fields:
            raise ConfigError(f"candidate {spec!r}: '{key}' given twice")
        fields[key] = value.strip()
    labels = {part: fields.get(part, BASE) for part in PARTS}
    name = fields.get("name") or f"llm={labels['llm']},flow={labels['flow']}"
    return Candidate(
        name=name,
        llm=resolve_alias(labels["llm"], "llm", exp_dir, rank),
        flow=resolve_alias(labels["flow"], "flow", exp_dir, rank),
        llm_label=labels["llm"],
        flow_label=labels["flow"],
    )


def split_specs(specs: Sequence[str]) -> list[str]:
    """Candidate strings, each possibly holding several separated by ``;`` (for ``mlflow run -P``)."""
    return [s.strip() for spec in specs for s in spec.split(";") if s.strip()]


def grid(
    llm_sources: Sequence[str],
    flow_sources: Sequence[str],
    exp_dir: str | Path = "exp",
    rank: ProbeRank | None = None,
    log: Callable[[str], None] | None = None,
) -> list[Candidate]:
    """Every LLM source with every flow source, LLM-major (``base`` x ``base`` first when listed first).

    A ``best-probe`` source of a part whose checkpoints carry no probe scores is left out, said once per
    part through ``log``."""
    sources = {"llm": list(llm_sources or [BASE]), "flow": list(flow_sources or [BASE])}
    for part in PARTS:
        if BEST_PROBE in sources[part] and resolve_alias(BEST_PROBE, part, exp_dir, rank).endswith(NO_PROBE_SCORES):
            sources[part] = [s for s in sources[part] if s.strip() != BEST_PROBE] or [BASE]
            if log is not None:
                log(
                    f"{Path(exp_dir) / part / 'checkpoints'}: no probe scores; the {part} best-probe candidates are "
                    "skipped (train with train.probe_every_epochs=1 to have them)"
                )
    return [
        parse_candidate(f"llm={llm},flow={flow}", exp_dir, rank)
        for llm, flow in itertools.product(sources["llm"], sources["flow"])
    ]


def select_candidates(
    cli_specs: Sequence[str],
    param_specs: Sequence[str],
    llm_sources: Sequence[str],
    flow_sources: Sequence[str],
    exp_dir: str | Path = "exp",
    rank: ProbeRank | None = None,
    log: Callable[[str], None] | None = None,
) -> list[Candidate]:
    """Command-line candidates if any, else ``evaluate.candidates``, else the grid (``rank`` and ``log``: see
    :func:`grid`). Duplicates (same weights) and duplicate names stop with one line."""
    specs = split_specs(cli_specs) or split_specs(param_specs)
    if specs:
        candidates = [parse_candidate(s, exp_dir, rank) for s in specs]
    else:
        candidates = grid(llm_sources, flow_sources, exp_dir, rank, log)
    seen_weights: dict[tuple[str, str], str] = {}
    seen_slugs: dict[str, str] = {}
    unique: list[Candidate] = []
    for c in candidates:
        key = (c.llm, c.flow)
        if key in seen_weights:
            continue  # the same weights twice (e.g. 'last' == 'epoch-2'): score once
        if c.slug in seen_slugs:
            raise ConfigError(
                f"candidates {seen_slugs[c.slug]!r} and {c.name!r} map to the same folder; give one a name="
            )
        seen_weights[key] = c.name
        seen_slugs[c.slug] = c.name
        unique.append(c)
    return unique


def weight_file(source: str, part: str, model_dir: str | Path) -> Path:
    """The file a weight source reads: the model directory's ``<part>.pt`` for ``base``, a directory's
    ``<part>.pt``, or the file itself. Raises :class:`ModelDirError` (one line) when it does not exist."""
    path = Path(model_dir) / f"{part}.pt" if source == BASE else Path(source)
    if path.is_dir():
        path = path / f"{part}.pt"
    if not path.is_file():
        hint = "the model directory lacks it" if source == BASE else "train/average first, or fix the candidate"
        raise ModelDirError(f"{path}: {part} weights not found; {hint}")
    return path
