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

import contextlib
import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cosyml.audio import AUDIO_EXTENSIONS
from cosyml.data.kaldi import KaldiLine, read_kaldi_lines

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
    key: str = ""  # basis of the utt id when it differs from ``rel`` (non-.wav audio keeps its extension)
    start_s: float | None = None  # kaldi ``segments``: the clip is [start_s, end_s) of ``audio``
    end_s: float | None = None
    problem: tuple[str, str] | None = None  # (reject reason, detail) known from the scan already

    @property
    def id_key(self) -> str:
        return self.key or self.rel


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


#: A transcript file larger than this is not a transcript of one clip (at most a few hundred characters).
MAX_TRANSCRIPT_BYTES = 64 * 1024


def _looks_utf16(data: bytes, high: int) -> bool:
    """Whether every other byte (from ``high``) is the high byte of ASCII, CJK or CJK punctuation."""
    tops = data[high::2]
    if len(data) % 2 or not tops:
        return False
    usual = sum(1 for b in tops if b in (0x00, 0x30, 0xFF) or 0x4E <= b <= 0x9F)
    return usual >= 0.8 * len(tops)


def decode_transcript(data: bytes, name: str) -> tuple[str | None, str | None]:
    """Return (text, error) for a transcript's bytes.

    UTF-16 with a BOM, or without one when its byte pattern says so (Windows editors write it; read as
    UTF-8 it gives NUL bytes, read as GB18030 mojibake); then UTF-8 (BOM or not), then GB18030 (common
    in CN corpora).
    """
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16"), None
        except UnicodeDecodeError:
            return None, f"{name}: transcript has a UTF-16 mark but is not UTF-16; re-save it as UTF-8"
    utf8: str | None = None
    if b"\x00" not in data:
        with contextlib.suppress(UnicodeDecodeError):
            utf8 = data.decode("utf-8-sig")
    if utf8 is not None:
        return utf8, None
    # NUL bytes (ASCII as UTF-16) or not UTF-8 at all (CJK as UTF-16 usually is not): UTF-16 without a
    # BOM when every other byte looks like a UTF-16 high byte, else GB18030.
    for high, encoding in ((1, "utf-16-le"), (0, "utf-16-be")):
        if _looks_utf16(data, high):
            try:
                return data.decode(encoding), None
            except UnicodeDecodeError:
                continue
    if b"\x00" in data:
        return None, f"{name}: transcript holds NUL bytes (a binary file?); re-save it as UTF-8 text"
    try:
        return data.decode("gb18030"), None
    except UnicodeDecodeError:
        pass
    return None, f"{name}: transcript is neither UTF-8 nor GB18030; re-save it as UTF-8"


def read_transcript(path: Path) -> tuple[str | None, str | None]:
    """Return (text, error); see :func:`decode_transcript`. Files over 64 KiB are not read."""
    name = printable(path.name)
    try:
        size = path.stat().st_size
        if size > MAX_TRANSCRIPT_BYTES:
            return None, (
                f"{name}: transcript is {size} bytes (a clip's transcript is at most "
                f"{MAX_TRANSCRIPT_BYTES} bytes); is it the right file?"
            )
        data = path.read_bytes()
    except OSError as exc:
        return None, f"{name}: cannot read the transcript ({exc.strerror})"
    return decode_transcript(data, name)


def _transcript_fields(path: Path) -> dict[str, Any]:
    """SourceClip fields for a transcript file: text, or text_error, or (too large) a problem."""
    with contextlib.suppress(OSError):
        size = path.stat().st_size
        if size > MAX_TRANSCRIPT_BYTES:
            return {
                "problem": (
                    "text_too_long",
                    f"{printable(path.name)}: transcript file is {size} bytes (a clip's "
                    f"transcript is at most {MAX_TRANSCRIPT_BYTES}); is it the right file?",
                )
            }
    text, error = read_transcript(path)
    return {"text": text, "text_error": error}


def printable(name: str) -> str:
    """A file name as readable UTF-8 text: bytes that are not UTF-8 (a name from a Latin-1 or GBK zip
    extract, held by Python as surrogate escapes) are shown as ``\\xNN``."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")


def _display(root_label: str, rel: str) -> str:
    return printable(f"{root_label.rstrip('/')}/{rel}" if rel else root_label)


def scan_inputs(roots: list[Path], labels: list[str] | None = None) -> Scan:
    """Walk ``roots`` (sorted, deterministic) and pair audio with transcripts.

    ``labels`` are how the roots are shown in ``source`` fields (default: the paths as given).
    """
    scan = Scan()
    labels = labels or [str(r) for r in roots]
    for root, label in zip(roots, labels, strict=True):
        _scan_root(root, label, scan)
    return scan


def _walk_once(root: Path) -> list[tuple[Path, list[str]]]:
    """(folder, sorted file names) for every folder under ``root``, following symlinks but entering
    each real folder once (a symlink loop or a second link to the same folder is not walked again)."""
    walked: list[tuple[Path, list[str]]] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if os.path.realpath(os.path.join(dirpath, d)) not in seen)
        walked.append((Path(dirpath), sorted(filenames)))
    return walked


def _audio_key(rel_stem: str, name: str) -> str:
    """Id basis of an audio file: its path without ``.wav``; other extensions stay (``x.flac`` next to
    ``x.wav`` must not share an id with it)."""
    ext = os.path.splitext(name)[1]
    return rel_stem if ext.lower() == ".wav" else rel_stem + ext


def _scan_root(root: Path, label: str, scan: Scan) -> None:
    kaldi_claimed: set[Path] = set()
    walked = _walk_once(root)

    # Kaldi folders first, so audio they list is not counted again as a bare file.
    for folder, names in walked:
        if "wav.scp" in names:
            for clip in _kaldi_clips(root, label, folder):
                if clip.audio is not None and clip.problem is None:
                    with contextlib.suppress(OSError):
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
            clip = SourceClip(
                source=_display(label, (folder / name).relative_to(root).as_posix()),
                rel=rel,
                audio=path,
                key=_audio_key(rel, name),
            )
            for suffix, text_source in ((".lab", "lab"), (".normalized.txt", "normalized")):
                if stem + suffix in present:
                    used.add(stem + suffix)
                    clip = dataclasses.replace(
                        clip, text_source=text_source, **_transcript_fields(folder / (stem + suffix))
                    )
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
                scan.clips.append(
                    SourceClip(
                        source=_display(label, rel_file),
                        rel=(folder / _stem(name)).relative_to(root).as_posix(),
                        audio=None,
                        text_source="lab" if name.endswith(".lab") else "normalized",
                        **_transcript_fields(folder / name),
                    )
                )
            elif name.endswith(".original.txt"):
                continue  # LibriTTS keeps the unnormalised text next to the normalised one
            else:
                scan.ignored.append(_display(label, rel_file))


def _unique(lines: list[KaldiLine], file: str) -> tuple[dict[str, KaldiLine], dict[str, str]]:
    """{key: line} for keys listed once and usable; {key: why} for keys that are not.

    A key listed twice cannot be paired with the right audio or text (which line is meant?), so every
    line of a duplicated key is set aside rather than letting one win.
    """
    counts: dict[str, int] = {}
    for line in lines:
        counts[line.key] = counts.get(line.key, 0) + 1
    good: dict[str, KaldiLine] = {}
    bad: dict[str, str] = {}
    for line in lines:
        if counts[line.key] > 1:
            numbers = ", ".join(str(x.line) for x in lines if x.key == line.key)
            bad[line.key] = (
                f"{file}: key '{line.key}' is listed {counts[line.key]} times (lines {numbers}); keep one line per key"
            )
        elif line.error:
            bad[line.key] = line.error
        else:
            good[line.key] = line
    return good, bad


def _kaldi_path(folder: Path, line: KaldiLine) -> Path:
    """The file a wav.scp value names: relative to the kaldi folder (or the working directory, as
    upstream), its text as decoded or its raw bytes (a path written in a legacy encoding)."""
    for value in dict.fromkeys((line.value, line.raw_value)):
        path = Path(value)
        for candidate in [path] if path.is_absolute() else [folder / path, path]:
            if candidate.exists():
                return candidate
    path = Path(line.value)
    return path if path.is_absolute() else folder / path


def _parse_segments(lines: list[KaldiLine]) -> dict[str, tuple[str, float, float] | str]:
    """segments lines ``<utt> <recording> <start_s> <end_s>`` -> (recording, start, end) or why not."""
    out: dict[str, tuple[str, float, float] | str] = {}
    for line in lines:
        fields = line.value.split()
        try:
            rec, start, end = fields[0], float(fields[1]), float(fields[2])
            if len(fields) != 3 or not (0.0 <= start < end) or not math.isfinite(end):
                raise ValueError
            out[line.key] = (rec, start, end)
        except (ValueError, IndexError):
            out[line.key] = line.error or (
                f"segments line {line.line}: expected '<utt> <recording> <start_s> <end_s>' with 0 <= start < end"
            )
    return out


def _kaldi_clips(root: Path, label: str, folder: Path) -> list[SourceClip]:
    """Clips of one kaldi folder. With a ``segments`` file, wav.scp lists recordings and each segment
    is one clip cut from its recording; without, each wav.scp entry is one clip."""
    wav_scp, bad_wav = _unique(read_kaldi_lines(folder / "wav.scp"), "wav.scp")
    text_lines, bad_text = (
        _unique(read_kaldi_lines(folder / "text"), "text") if (folder / "text").is_file() else ({}, {})
    )
    texts = {k: v.value for k, v in text_lines.items()}
    rel_folder = folder.relative_to(root).as_posix()
    rel_folder = "" if rel_folder == "." else rel_folder + "/"
    clips: list[SourceClip] = []

    def clip_for(utt: str, source: str, rec: str, span: tuple[float, float] | None) -> SourceClip:
        rel = f"{rel_folder}{utt}"
        text, text_source = texts.get(utt), "kaldi" if utt in texts else None
        start, end = span or (None, None)
        if utt in bad_text:
            return SourceClip(source, rel, None, problem=("bad_kaldi_line", bad_text[utt]))
        if rec in bad_wav:
            return SourceClip(source, rel, None, problem=("bad_kaldi_line", bad_wav[rec]))
        line = wav_scp[rec]
        if line.value.endswith("|"):
            # A command pipeline; we never run commands from data files.
            return SourceClip(
                source,
                rel,
                folder / "<pipe>",
                text,
                text_source,
                text_error="wav.scp entry is a command pipe; list an audio file path instead",
            )
        return SourceClip(source, rel, _kaldi_path(folder, line), text, text_source, start_s=start, end_s=end)

    if (folder / "segments").is_file():
        segments = _parse_segments(read_kaldi_lines(folder / "segments"))
        for utt, seg in segments.items():
            source = _display(label, f"{rel_folder}segments:{utt}")
            if isinstance(seg, str):
                clips.append(SourceClip(source, f"{rel_folder}{utt}", None, problem=("bad_kaldi_line", seg)))
            elif seg[0] not in wav_scp and seg[0] not in bad_wav:
                clips.append(
                    SourceClip(
                        source,
                        f"{rel_folder}{utt}",
                        None,
                        problem=("bad_kaldi_line", f"segments: recording '{seg[0]}' of '{utt}' is not in wav.scp"),
                    )
                )
            else:
                clips.append(clip_for(utt, source, seg[0], (seg[1], seg[2])))
        listed = set(segments)
    else:
        for utt in [*wav_scp, *(k for k in bad_wav if k not in wav_scp)]:
            clips.append(clip_for(utt, _display(label, f"{rel_folder}wav.scp:{utt}"), utt, None))
        listed = set(wav_scp) | set(bad_wav)
    for utt in sorted((set(texts) | set(bad_text)) - listed):
        source = _display(label, f"{rel_folder}text:{utt}")
        if utt in bad_text:
            clips.append(SourceClip(source, f"{rel_folder}{utt}", None, problem=("bad_kaldi_line", bad_text[utt])))
        else:
            clips.append(SourceClip(source, f"{rel_folder}{utt}", None, texts[utt], "kaldi"))
    return clips
