"""Speaker check: which clips do not sound like the rest of their speaker's clips (``speaker_outlier``).

Per speaker, every clip's CAM++ embedding (L2-normalised) is compared by cosine similarity with a robust
centroid: first the element-wise median of the normalised embeddings, then, once, the mean of the clips
that passed against it. A clip is an outlier when its similarity to that second centroid is below
``min_similarity``, or (when ``max_z`` > 0) more than ``max_z`` robust standard deviations below the
speaker's median similarity (robust sd = 1.4826 x MAD, at least :data:`MIN_SPREAD`). A speaker with fewer
than ``min_clips`` clips gets no verdicts: a centroid of a handful of clips says nothing.

Pure numpy; the ``extract`` stage feeds it the embeddings it wrote and writes the report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

REASON = "speaker_outlier"
#: Floor of the robust sd (cosine units): a very uniform speaker (synthetic data, one session) would
#: otherwise turn tiny differences into large z-scores.
MIN_SPREAD = 0.02


@dataclass(frozen=True)
class SpeakerCheckConfig:
    """Thresholds of the check (see the module docstring)."""

    min_similarity: float = 0.5  # cosine to the centroid below this: outlier
    max_z: float = 0.0  # robust z below -max_z: outlier; 0 = off
    min_clips: int = 5  # speakers with fewer clips get no verdicts
    drop: bool = False  # leave outliers out of the shards (extract writes the list; shards reads it)


@dataclass(frozen=True)
class ClipScore:
    """One clip's similarity to its speaker's centroid. ``z`` and ``outlier`` are None without verdicts."""

    utt: str
    speaker: str
    similarity: float
    z: float | None
    outlier: bool | None


@dataclass
class SpeakerSummary:
    """One speaker: how many clips, whether verdicts were given, how many outliers."""

    speaker: str
    clips: int
    checked: bool
    outliers: int = 0
    median_similarity: float | None = None


@dataclass
class SpeakerCheckResult:
    """Scores of every clip, per-speaker summaries, and the config that produced them."""

    config: SpeakerCheckConfig
    clips: list[ClipScore] = field(default_factory=list)
    speakers: list[SpeakerSummary] = field(default_factory=list)

    @property
    def outliers(self) -> list[ClipScore]:
        return [c for c in self.clips if c.outlier]

    @property
    def unchecked(self) -> list[SpeakerSummary]:
        return [s for s in self.speakers if not s.checked]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _verdicts(sims: np.ndarray, cfg: SpeakerCheckConfig) -> tuple[np.ndarray, np.ndarray]:
    """(N,) similarities -> (N,) robust z-scores and (N,) outlier flags."""
    median = float(np.median(sims))
    spread = max(1.4826 * float(np.median(np.abs(sims - median))), MIN_SPREAD)
    z = (sims - median) / spread
    flags = sims < cfg.min_similarity
    if cfg.max_z > 0:
        flags |= z < -cfg.max_z
    return z, flags


def check_speakers(
    utt2embedding: Mapping[str, Sequence[float]],
    utt2spk: Mapping[str, str],
    config: SpeakerCheckConfig | None = None,
) -> SpeakerCheckResult:
    """Score every utterance of ``utt2embedding`` (192 raw floats each) against its speaker's centroid.

    Clips come out in the order of ``utt2embedding``; speakers in order of first appearance.
    """
    cfg = config or SpeakerCheckConfig()
    by_speaker: dict[str, list[str]] = {}
    for utt in utt2embedding:
        by_speaker.setdefault(utt2spk[utt], []).append(utt)
    scores: dict[str, ClipScore] = {}
    speakers: list[SpeakerSummary] = []
    for spk, utts in by_speaker.items():
        vecs = _unit(np.asarray([utt2embedding[u] for u in utts], dtype=np.float64))  # (N, 192)
        first = vecs @ _unit(np.median(vecs, axis=0))
        _, first_flags = _verdicts(first, cfg)
        keep = ~first_flags
        centroid = _unit(vecs[keep].mean(axis=0) if keep.any() else np.median(vecs, axis=0))
        sims = vecs @ centroid  # (N,)
        checked = len(utts) >= cfg.min_clips
        z, flags = _verdicts(sims, cfg)
        for i, utt in enumerate(utts):
            scores[utt] = ClipScore(
                utt,
                spk,
                round(float(sims[i]), 4),
                round(float(z[i]), 2) if checked else None,
                bool(flags[i]) if checked else None,
            )
        speakers.append(
            SpeakerSummary(
                spk,
                len(utts),
                checked,
                int(flags.sum()) if checked else 0,
                round(float(np.median(sims)), 4),
            )
        )
    return SpeakerCheckResult(cfg, [scores[u] for u in utt2embedding], speakers)
