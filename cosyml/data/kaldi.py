"""Kaldi-style list files (``wav.scp``, ``text``, ``utt2spk``, ``spk2utt``, ``instruct``).

Format (what upstream's readers expect): one ``key value`` line per utterance; readers split on
whitespace, take the first field as the key and re-join the rest with single spaces. Keys and paths
therefore must not contain whitespace; our utt ids are ``[A-Za-z0-9_-]`` and our paths are
``wavs/<utt>.wav`` relative to the data folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cosyml.data.records import ManifestEntry, write_jsonl
from cosyml.errors import InputError


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
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


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
