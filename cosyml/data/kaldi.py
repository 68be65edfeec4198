"""Kaldi-style list files (``wav.scp``, ``text``, ``utt2spk``, ``spk2utt``, ``instruct``).

Format (what upstream's readers expect): one ``key value`` line per utterance; readers split on
whitespace, take the first field as the key and re-join the rest with single spaces. Keys and paths
therefore must not contain whitespace; our utt ids are ``[A-Za-z0-9_-]`` and our paths are
``wavs/<utt>.wav`` relative to the data folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cosyml.data.records import ManifestEntry, write_jsonl
from cosyml.errors import InputError
from cosyml.fileio import atomic_write_text


def read_kaldi_map(path: Path, keep_spacing: bool = False) -> dict[str, str]:
    """``key rest-of-line`` -> {key: rest}; blank lines skipped; later duplicates win.

    By default the rest is re-joined with single spaces, as upstream's readers do; ``keep_spacing``
    splits on the first whitespace only and keeps the value's inner spacing (CV3-Eval's convention).
    """
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text; re-save it as UTF-8") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    out: dict[str, str] = {}
    for line in lines:
        if keep_spacing:
            fields = line.strip().split(maxsplit=1)
            if fields:
                out[fields[0]] = fields[1].strip() if len(fields) > 1 else ""
            continue
        fields = line.split()
        if fields:
            out[fields[0]] = " ".join(fields[1:])
    return out


@dataclass(frozen=True)
class KaldiLine:
    """One non-blank line of a kaldi list file read from a user's corpus.

    ``value`` is the rest of the line re-joined with single spaces; ``raw_value`` is the same field as
    the file's bytes decoded with the file-system encoding (``os.fsdecode``), so a path written in a
    legacy encoding still names the file on disk. ``error`` says why the line cannot be used (then
    ``key`` may be a placeholder ``line<N>``).
    """

    key: str
    value: str
    raw_value: str
    line: int  # 1-based
    error: str | None = None


def _decode_line(data: bytes) -> str | None:
    for encoding in ("utf-8", "gb18030"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return None


def read_kaldi_lines(path: Path) -> list[KaldiLine]:
    """Every non-blank line of a corpus's kaldi file, decoded line by line (UTF-8, then GB18030).

    A line that is neither encoding, or has a key and no value, comes back with ``error`` set instead
    of stopping the whole file: the caller sets that one entry aside. Duplicate keys are all returned
    (the caller decides; see :func:`cosyml.data.layouts`).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    out: list[KaldiLine] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue
        text = _decode_line(raw)
        if text is None:
            out.append(
                KaldiLine(
                    f"line{number}",
                    "",
                    "",
                    number,
                    f"{path.name} line {number} is neither UTF-8 nor GB18030; re-save the file as UTF-8",
                )
            )
            continue
        fields = text.split()
        raw_fields = raw.split(None, 1)
        raw_value = os.fsdecode(raw_fields[1].strip()) if len(raw_fields) > 1 else ""
        if len(fields) < 2:
            out.append(
                KaldiLine(
                    fields[0],
                    "",
                    "",
                    number,
                    f"{path.name} line {number}: key '{fields[0]}' has no value; add it or delete the line",
                )
            )
            continue
        out.append(KaldiLine(fields[0], " ".join(fields[1:]), raw_value, number))
    return out


def write_split(folder: Path, entries: Sequence[ManifestEntry], instruct: str = "") -> None:
    """Write the kaldi files and ``manifest.jsonl`` of one split, sorted by utt id.

    ``wav.scp`` paths are relative to the data folder (``folder.parent``): run upstream tools from
    there, or join them with the data folder.
    """
    folder.mkdir(parents=True, exist_ok=True)
    entries = sorted(entries, key=lambda e: e.utt)
    for e in entries:
        if any(c.isspace() for c in e.utt + e.wav + e.spk):
            raise ValueError(f"whitespace in kaldi key or path: {e.utt!r} {e.wav!r}")
    _write_lines(folder / "wav.scp", [f"{e.utt} {e.wav}" for e in entries])
    _write_lines(folder / "text", [f"{e.utt} {e.text}" for e in entries])
    _write_lines(folder / "utt2spk", [f"{e.utt} {e.spk}" for e in entries])
    by_spk: dict[str, list[str]] = {}
    for e in entries:
        by_spk.setdefault(e.spk, []).append(e.utt)
    _write_lines(folder / "spk2utt", [f"{spk} {' '.join(utts)}" for spk, utts in sorted(by_spk.items())])
    if instruct:
        _write_lines(folder / "instruct", [f"{e.utt} {instruct}" for e in entries])
    elif (folder / "instruct").exists():
        (folder / "instruct").unlink()
    write_jsonl(folder / "manifest.jsonl", entries)


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def resolve_wav_path(path: str | Path, split_dir: Path) -> Path:
    """Where a ``wav.scp`` entry lives: absolute paths as they are; relative ones against the data
    folder above the split (what ``prepare`` writes), then the split folder, then the working
    directory (upstream's convention)."""
    candidate = Path(path)
    if candidate.is_absolute():
        return candidate
    for base in (split_dir.parent, split_dir):
        if (base / candidate).is_file():
            return base / candidate
    return candidate
