"""The candidates schema: ``candidates.json`` (written by ``cosyml evaluate``) read into typed values.

Pure: no MLflow, no torch. Every problem with the file is one line naming the file and the key. Each entry
is the one :class:`~cosyml.evaluation.candidates.Candidate` type (the weight pair ``cosyml evaluate``
scored) with its scores beside it (:class:`EvaluatedCandidate`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cosyml.errors import InputError
from cosyml.evaluation.candidates import BASE, Candidate

SCORE_KEYS = ("cer", "cer_ci", "ss", "ss_ci", "n", "missing", "over_50")


@dataclass(frozen=True)
class Scores:
    """Evaluation numbers of one candidate (or one subset): CER as a fraction, SS as a cosine."""

    cer: float
    cer_ci: tuple[float, float]
    ss: float
    ss_ci: tuple[float, float]
    n: int  # scored utterances
    missing: int  # utterances without usable output
    over_50: float  # share of utterances with CER > 50 %

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Scores | None:
        """Scores from ``candidates.json``; None when nothing was scored (``null`` summary or numbers)."""
        if data is None or (
            isinstance(data, Mapping) and any(k in data and data[k] is None for k in ("cer", "cer_ci", "ss", "ss_ci"))
        ):
            return None
        if not isinstance(data, Mapping):
            raise InputError(f"{where}: expected an object with {', '.join(SCORE_KEYS)}")
        missing = [k for k in SCORE_KEYS if k not in data]
        if missing:
            raise InputError(f"{where}: missing {', '.join(missing)}; rerun `cosyml evaluate`")

        def number(key: str) -> float:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise InputError(f"{where}.{key}: expected a finite number, got {value!r}")
            return float(value)

        def interval(key: str) -> tuple[float, float]:
            value = data[key]
            ok = isinstance(value, list | tuple) and len(value) == 2
            ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
            if not ok or value[0] > value[1]:
                raise InputError(f"{where}.{key}: expected [low, high], got {value!r}")
            return (float(value[0]), float(value[1]))

        def within(key: str, value: float, low: float, high: float, what: str) -> None:
            if not low <= value <= high:
                raise InputError(f"{where}.{key}: {value!r} is not {what}; rerun `cosyml evaluate`")

        scores = cls(
            cer=number("cer"),
            cer_ci=interval("cer_ci"),
            ss=number("ss"),
            ss_ci=interval("ss_ci"),
            n=int(number("n")),
            missing=int(number("missing")),
            over_50=number("over_50"),
        )
        # CER/WER is an error rate (>= 0; insertions can take it above 1), SS a cosine
        within("cer", scores.cer, 0.0, math.inf, "an error rate (>= 0)")
        within("cer_ci", scores.cer_ci[0], 0.0, math.inf, "an interval of error rates (>= 0)")
        within("ss", scores.ss, -1.0, 1.0, "a cosine similarity (-1 to 1)")
        for bound in scores.ss_ci:
            within("ss_ci", bound, -1.0, 1.0, "an interval of cosine similarities (-1 to 1)")
        within("n", data["n"], 0, math.inf, "a count (a whole number >= 0)")
        within("missing", data["missing"], 0, scores.n, f"a count between 0 and n ({scores.n})")
        within("over_50", scores.over_50, 0.0, 1.0, "a share (0 to 1)")
        for key in ("n", "missing"):
            if float(data[key]) != int(data[key]):
                raise InputError(f"{where}.{key}: {data[key]!r} is not a whole number; rerun `cosyml evaluate`")
        return scores

    def tags(self, prefix: str) -> dict[str, str]:
        return {
            f"{prefix}cer": repr(self.cer),
            f"{prefix}cer_ci_lo": repr(self.cer_ci[0]),
            f"{prefix}cer_ci_hi": repr(self.cer_ci[1]),
            f"{prefix}ss": repr(self.ss),
            f"{prefix}ss_ci_lo": repr(self.ss_ci[0]),
            f"{prefix}ss_ci_hi": repr(self.ss_ci[1]),
            f"{prefix}n": str(self.n),
            f"{prefix}missing": str(self.missing),
            f"{prefix}over_50": repr(self.over_50),
        }

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """The numbers as MLflow metrics (the model metrics of a version): same keys as :meth:`tags`."""
        return {key: float(value) for key, value in self.tags(prefix).items()}

    @classmethod
    def from_tags(cls, tags: Mapping[str, str | float], prefix: str = "score.") -> Scores | None:
        """Scores stored by :meth:`tags` (or :meth:`metrics`), or None when a key is missing or unreadable."""
        try:
            return cls(
                cer=float(tags[f"{prefix}cer"]),
                cer_ci=(float(tags[f"{prefix}cer_ci_lo"]), float(tags[f"{prefix}cer_ci_hi"])),
                ss=float(tags[f"{prefix}ss"]),
                ss_ci=(float(tags[f"{prefix}ss_ci_lo"]), float(tags[f"{prefix}ss_ci_hi"])),
                n=int(tags[f"{prefix}n"]),
                missing=int(tags[f"{prefix}missing"]),
                over_50=float(tags[f"{prefix}over_50"]),
            )
        except (KeyError, ValueError):
            return None


@dataclass(frozen=True)
class EvaluatedCandidate:
    """One entry of ``candidates.json``: the candidate (``llm``/``flow``: ``"base"`` or a weight file) and
    what its evaluation measured."""

    candidate: Candidate
    summary: Scores | None  # None: evaluation scored nothing (such a candidate is not registered)
    subsets: dict[str, Scores]
    runs: dict[str, str] = field(default_factory=dict)  # optional {"llm": run_id, "flow": run_id}

    @property
    def name(self) -> str:
        return self.candidate.name

    @property
    def base(self) -> bool:
        """The base model's own weights for both parts."""
        return self.candidate.is_base


@dataclass(frozen=True)
class CandidateSet:
    """The content of ``candidates.json``; relative weight paths are resolved against the working directory."""

    path: Path
    sha256: str
    speaker: str
    model_dir: str
    candidates: list[EvaluatedCandidate]


def read_candidates(path: str | Path) -> CandidateSet:
    """Read and check ``candidates.json``; any problem is one line naming the file and key."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: candidates file not found; run `cosyml evaluate` first (it writes candidates.json)")
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc}); rerun `cosyml evaluate`") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected an object with speaker, model_dir and candidates")
    for key in ("speaker", "model_dir"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise InputError(f"{path}: '{key}' must be a non-empty string")
    items = data.get("candidates")
    if not isinstance(items, list) or not items:
        raise InputError(f"{path}: 'candidates' must be a non-empty list")
    candidates: list[EvaluatedCandidate] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = f"{path}: candidates[{i}]"
        if not isinstance(item, dict):
            raise InputError(f"{where}: expected an object")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise InputError(f"{where}.name: must be a non-empty string")
        if name in seen:
            raise InputError(f"{where}.name: '{name}' appears twice; candidate names must be unique")
        seen.add(name)
        for part in ("llm", "flow"):
            if not isinstance(item.get(part), str) or not item[part]:
                raise InputError(f"{where}.{part}: must be 'base' or a weight file path")
        is_base = item["llm"] == BASE and item["flow"] == BASE
        if "base" in item and bool(item["base"]) != is_base:
            raise InputError(
                f"{where}.base: {item['base']!r} but llm={item['llm']!r}, flow={item['flow']!r} "
                f"(base is true exactly when both are 'base'); rerun `cosyml evaluate`"
            )
        subsets = item.get("subsets") or {}
        if not isinstance(subsets, dict):
            raise InputError(f"{where}.subsets: expected an object of subset scores")
        runs = item.get("runs") or {}
        candidates.append(
            EvaluatedCandidate(
                candidate=Candidate(name=name, llm=item["llm"], flow=item["flow"]),
                summary=Scores.from_dict(item.get("summary"), f"{where}.summary"),
                subsets={
                    str(k): scores
                    for k, v in subsets.items()
                    if (scores := Scores.from_dict(v, f"{where}.subsets.{k}")) is not None
                },
                runs={str(k): str(v) for k, v in runs.items()} if isinstance(runs, dict) else {},
            )
        )
    return CandidateSet(path, hashlib.sha256(raw).hexdigest(), data["speaker"], data["model_dir"], candidates)
