"""What ``prepare`` writes about each clip: manifest entries, rejects and their reason codes.

Layout of a prepared data folder ``DATA`` (all paths inside the files are relative to ``DATA``)::

    DATA/wavs/<utt>.wav              normalised clips: 24 kHz (PrepareConfig.sample_rate) mono 16-bit PCM
    DATA/train/{wav.scp,text,utt2spk,spk2utt[,instruct],manifest.jsonl}
    DATA/dev/{...same...}
    DATA/rejects.jsonl               one line per rejected input file or slice
    DATA/transcripts_review.tsv      Whisper texts to check (utt, confidence, text, source, reason, transcript)
    DATA/summary.json                counts and hours per split, rejects per reason
    DATA/whisper_cache.jsonl         Whisper results keyed by audio hash (lets a re-run skip decoding)

Utterance ids are ``<speaker>_<stable id>``: upstream takes the speaker as the part before the first
``_``, so the speaker name itself has no ``_``; the stable id is derived from the file's path inside
its input folder (only ``[A-Za-z0-9_-]``) and carries no other meaning.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

#: Every reason a clip can be rejected for, in the order the checks run.
REJECT_REASONS: tuple[str, ...] = (
    "bad_kaldi_line",  # a kaldi line that cannot be used: duplicate key, no path, undecodable, bad segment
    "no_audio",  # a transcript (.lab/.normalized.txt/kaldi text line) whose audio file is missing
    "placeholder_text",  # transcript holds a template placeholder such as {NICKNAME}
    "empty_text",  # transcript empty (or Whisper / the review file gave an empty one)
    "text_too_long",  # transcript over 1000 characters (or a transcript file over 64 KiB: undecodable)
    "bad_characters",  # control characters or escape sequences (ANSI codes, a written-out \n) in the text
    "special_token",  # a <|...|> control token of the model's tokenizer in the text
    "no_words",  # transcript of only punctuation, emoji or symbols
    "undecodable",  # audio (or transcript encoding) cannot be decoded, or its header is impossible
    "clipped",  # too many samples at full scale
    "too_long",  # longer than max_duration_s (or a long recording that has one transcript)
    "mostly_silence",  # speech in less than (1 - max_silence_ratio) of the frames
    "too_quiet",  # speech RMS below min_rms_dbfs
    "too_short",  # shorter than min_duration_s after trimming
    "noise",  # noise, not speech (spectral flatness of the loud frames above 0.35)
    "duplicate_audio",  # same normalised samples as an earlier clip
    "no_text",  # no transcript and transcription is off or has no Whisper model
    "low_confidence",  # Whisper transcript confidence below min_confidence
    "transcript_mismatch",  # the clip's transcript differs from what Whisper hears (error above transcript_max_cer)
)

TEXT_SOURCES = ("lab", "normalized", "kaldi", "whisper", "review")


@dataclass(frozen=True)
class ManifestEntry:
    """One accepted utterance (one line of ``<split>/manifest.jsonl``)."""

    utt: str
    spk: str
    wav: str  # relative to the data folder: "wavs/<utt>.wav"
    text: str
    duration_s: float
    split: str  # "train" | "dev"
    source: str  # input file as found (input folder as given + path inside it)
    text_source: str  # one of TEXT_SOURCES
    language: str  # "zh", "en", ... ("unknown" when neither given nor detectable)
    confidence: float | None = None  # Whisper confidence in [0, 1] when text_source is "whisper"
    source_start_s: float | None = None  # slice start within a long recording
    source_end_s: float | None = None


@dataclass(frozen=True)
class Reject:
    """One rejected input file or slice (one line of ``rejects.jsonl``)."""

    source: str
    reason: str  # one of REJECT_REASONS
    detail: str  # human-readable, says what to do where possible
    utt: str | None = None
    source_start_s: float | None = None
    source_end_s: float | None = None


def write_jsonl(path: Path, rows: Iterable[object]) -> None:
    """Write dataclass rows as JSON lines (UTF-8, non-ASCII kept readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            data = dataclasses.asdict(row) if dataclasses.is_dataclass(row) else row  # type: ignore[arg-type]  # rows are dataclass instances or mappings, never dataclass classes (which is_dataclass also admits)
            f.write(json.dumps(data, ensure_ascii=False) + "\n")


def _read_jsonl(path: Path) -> Iterator[dict]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def read_manifest(path: str | Path) -> list[ManifestEntry]:
    """Read ``<split>/manifest.jsonl``."""
    return [ManifestEntry(**row) for row in _read_jsonl(Path(path))]


def read_rejects(path: str | Path) -> list[Reject]:
    """Read ``rejects.jsonl``. A line that is not a reject this version can read (torn by a kill, or written
    by another version with other fields) is skipped: the report is advice, never a reason to stop."""
    out = []
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(row, dict) or "reason" not in row:
                continue
            start, end = row.get("source_start_s"), row.get("source_end_s")
            out.append(
                Reject(
                    source=str(row.get("source", "")),
                    reason=str(row["reason"]),
                    detail=str(row.get("detail", "")),
                    utt=None if row.get("utt") is None else str(row["utt"]),
                    source_start_s=float(start) if isinstance(start, int | float) else None,
                    source_end_s=float(end) if isinstance(end, int | float) else None,
                )
            )
    return out
