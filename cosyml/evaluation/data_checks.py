"""What the data checks set aside, read back for the evaluation report: prepare's rejects by reason and
extract's speaker outliers, with the clips to listen to.

Inputs (both optional; a missing file means that check has nothing to say):

- ``<prepared>/rejects.jsonl``: one JSON object per rejected input, ``{"source", "reason", "detail",
  "utt", ...}`` (:class:`cosyml.data.records.Reject`); every reason is counted, whatever it is;
- ``speaker_check.json`` (``cosyml extract``): ``{"outliers": [{"utt", "similarity", "wav", ...}]}``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cosyml.data.records import read_rejects
from cosyml.features.speaker_check import REASON as SPEAKER_OUTLIER

#: Reasons whose clips the report offers to listen to (a person decides: fix, keep or drop).
LISTEN_REASONS = ("transcript_mismatch", SPEAKER_OUTLIER)


@dataclass(frozen=True)
class FlaggedClip:
    """One clip a check set aside. ``wav`` is None when the audio is not on disk any more."""

    reason: str
    utt: str
    detail: str
    wav: Path | None


@dataclass
class DataChecks:
    """Counts per reason (rejects and speaker outliers) and the clips of :data:`LISTEN_REASONS`."""

    counts: dict[str, int] = field(default_factory=dict)
    clips: list[FlaggedClip] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # the check files read

    def summary(self) -> dict[str, Any]:
        """For ``summary.json``: counts per reason, the files read, the listed clips."""
        return {
            "counts": dict(self.counts),
            "files": list(self.files),
            "clips": [{**asdict(c), "wav": str(c.wav) if c.wav else None} for c in self.clips],
        }


def _existing(path: str | None, base: Path) -> Path | None:
    if not path:
        return None
    p = Path(path)
    for candidate in (p, base / p):
        if candidate.is_file():
            return candidate
    return None


def read_data_checks(prepared: str | Path | None, speaker_report: str | Path | None) -> DataChecks | None:
    """Read the check files that exist; None when neither does."""
    checks = DataChecks()
    rejects = Path(prepared) / "rejects.jsonl" if prepared else None
    if rejects is not None and rejects.is_file():
        checks.files.append(str(rejects))
        counts: Counter[str] = Counter()
        for reject in read_rejects(rejects):  # a line another version wrote differently is skipped there
            counts[reject.reason] += 1
            if reject.reason in LISTEN_REASONS:
                wav = _existing(reject.source, Path.cwd())
                utt = reject.utt or Path(reject.source).stem
                checks.clips.append(FlaggedClip(reject.reason, utt, reject.detail, wav))
        checks.counts.update(sorted(counts.items()))
    report = Path(speaker_report) if speaker_report else None
    if report is not None and report.is_file():
        checks.files.append(str(report))
        try:
            outliers = json.loads(report.read_text(encoding="utf-8")).get("outliers", [])
        except (json.JSONDecodeError, AttributeError):
            outliers = []
        checks.counts[SPEAKER_OUTLIER] = len(outliers)
        for o in outliers:
            detail = f"cosine {o.get('similarity')} to the speaker's centroid ({o.get('split', '')})"
            checks.clips.append(
                FlaggedClip(SPEAKER_OUTLIER, str(o.get("utt")), detail, _existing(o.get("wav"), Path.cwd()))
            )
    return checks if checks.files else None
