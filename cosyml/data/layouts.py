"""Find clips and their transcripts in an input folder, whatever its layout.

Recognised, also mixed and nested at any depth:

- Genshin-style pairs: ``<name>.wav`` + ``<name>.lab`` (any audio extension, see AUDIO_EXTENSIONS);
- upstream/LibriTTS pairs: ``<name>.wav`` + ``<name>.normalized.txt`` (``.original.txt`` ignored);
- kaldi folders: ``wav.scp`` (+ ``text``); listed paths are absolute or relative to the kaldi folder;
- audio with no transcript at all.

Each audio file becomes one :class:`SourceClip`; a transcript whose audio is missing becomes a clip
with ``audio=None`` (rejected later as ``no_audio``), so every input file is accounted for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cosyml.audio import AUDIO_EXTENSIONS
from cosyml.data.kaldi import read_kaldi_map

#: Files that belong to a kaldi folder and are read (or deliberately not needed) with wav.scp.
KALDI_FILES = frozenset({"wav.scp", "text", "utt2spk", "spk2utt", "instruct", "segments", "spk2gender"})
TRANSCRIPT_SUFFIXES = (".normalized.txt", ".lab")


@dataclass(frozen=True)
class SourceClip:
    """One input audio file (or an orphan transcript) and its transcript, if any."""

    source: str  # the file as the user knows it: "<input as given>/<path inside it>"
    rel: str  # posix path inside its input folder, without the audio extension; basis of the utt id
    audio: Path | None  # None: a transcript with no audio
    text: str | None = None  # raw transcript text; None when there is none
    text_source: str | None = None  # "lab" | "normalized" | "kaldi"
    text_error: str | None = None  # the transcript file exists but cannot be decoded


@dataclass
class Scan:
    """Everything found under the input folders."""

    clips: list[SourceClip] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # files that are neither audio nor transcripts
    layouts: dict[str, int] = field(default_factory=dict)  # layout name -> clips found that way


def _is_audio(name: str) -> bool:
    return name.lower().endswith(AUDIO_EXTENSIONS)


def _stem(name: str) -> str:
    for suffix in TRANSCRIPT_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]


def read_transcript(path: Path) -> tuple[str | None, str | None]:
    """Return (text, error). UTF-8 (with or without BOM) first, then GB18030 (common in CN corpora)."""
    data = path.read_bytes()
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return data.decode(encoding), None
        except UnicodeDecodeError:
            continue
    return None, f"{path.name}: transcript is neither UTF-8 nor GB18030; re-save it as UTF-8"


def _display(root_label: str, rel: str) -> str:
    return f"{root_label.rstrip('/')}/{rel}" if rel else root_label


def scan_inputs(roots: list[Path], labels: list[str] | None = None) -> Scan:
    """Walk ``roots`` (sorted, deterministic) and pair audio with transcripts.

    ``labels`` are how the roots are shown in ``source`` fields (default: the paths as given).
    """
    scan = Scan()
    labels = labels or [str(r) for r in roots]
    for root, label in zip(roots, labels, strict=True):
        _scan_root(root, label, scan)
    return scan


def _scan_root(root: Path, label: str, scan: Scan) -> None:
    kaldi_claimed: set[Path] = set()
    walked: list[tuple[Path, list[str]]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        walked.append((Path(dirpath), sorted(filenames)))

    # Kaldi folders first, so audio they list is not counted again as a bare file.
    for folder, names in walked:
        if "wav.scp" in names:
            for clip in _kaldi_clips(root, label, folder):
                if clip.audio is not None:
                    kaldi_claimed.add(clip.audio.resolve())
                scan.clips.append(clip)
                scan.layouts["kaldi"] = scan.layouts.get("kaldi", 0) + 1

    for folder, names in walked:
        is_kaldi = "wav.scp" in names
        present = set(names)
        used: set[str] = set()
        for name in names:
            if not _is_audio(name):
                continue
            used.add(name)
            path = folder / name
            if path.resolve() in kaldi_claimed:
                continue
            stem = os.path.splitext(name)[0]
            rel = (folder / stem).relative_to(root).as_posix()
            clip = SourceClip(source=_display(label, (folder / name).relative_to(root).as_posix()),
                              rel=rel, audio=path)
            for suffix, text_source in ((".lab", "lab"), (".normalized.txt", "normalized")):
                if stem + suffix in present:
                    used.add(stem + suffix)
                    text, error = read_transcript(folder / (stem + suffix))
                    clip = SourceClip(clip.source, rel, path, text, text_source, error)
                    break
            if stem + ".original.txt" in present:
                used.add(stem + ".original.txt")
            layout = {"lab": "wav+lab", "normalized": "normalized.txt"}.get(clip.text_source or "", "audio only")
            scan.layouts[layout] = scan.layouts.get(layout, 0) + 1
            scan.clips.append(clip)
        audio_stems = {os.path.splitext(n)[0] for n in names if _is_audio(n)}
        for name in names:
            if name in used or (is_kaldi and name in KALDI_FILES):
                continue
            rel_file = (folder / name).relative_to(root).as_posix()
            if name.endswith(TRANSCRIPT_SUFFIXES) and _stem(name) not in audio_stems:
                text, error = read_transcript(folder / name)
                scan.clips.append(
                    SourceClip(source=_display(label, rel_file),
                               rel=(folder / _stem(name)).relative_to(root).as_posix(), audio=None,
                               text=text, text_source="lab" if name.endswith(".lab") else "normalized",
                               text_error=error)
                )
            elif name.endswith(".original.txt"):
                continue  # LibriTTS keeps the unnormalised text next to the normalised one
            else:
                scan.ignored.append(_display(label, rel_file))


def _kaldi_clips(root: Path, label: str, folder: Path) -> list[SourceClip]:
    wav_scp = read_kaldi_map(folder / "wav.scp")
    texts = read_kaldi_map(folder / "text") if (folder / "text").is_file() else {}
    rel_folder = folder.relative_to(root).as_posix()
    rel_folder = "" if rel_folder == "." else rel_folder + "/"
    clips = []
    for utt, value in wav_scp.items():
        source = _display(label, f"{rel_folder}wav.scp:{utt}")
        rel = f"{rel_folder}{utt}"
        if value.endswith("|"):
            # A command pipeline; we never run commands from data files.
            clips.append(SourceClip(source, rel, folder / "<pipe>", texts.get(utt), "kaldi" if utt in texts else None,
                                    text_error="wav.scp entry is a command pipe; list an audio file path instead"))
            continue
        path = Path(value)
        if not path.is_absolute():
            path = folder / path if (folder / path).exists() or not Path(value).exists() else Path(value)
        clips.append(SourceClip(source, rel, path, texts.get(utt), "kaldi" if utt in texts else None))
    for utt in sorted(set(texts) - set(wav_scp)):
        clips.append(SourceClip(_display(label, f"{rel_folder}text:{utt}"), f"{rel_folder}{utt}", None,
                                texts[utt], "kaldi"))
    return clips
