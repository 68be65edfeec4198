"""Test sets in the CV3-Eval layout: read any folder in that layout, and write our own.

A *subset* is a folder holding Kaldi-style files (``key value`` per line, split on the FIRST whitespace,
the value kept as written):

- ``text``: utt -> target sentence to synthesise (CV3's copy lacks it for some subsets: reported, not fatal);
- ``prompt_text``: utt -> transcript of the prompt audio;
- ``prompt_wav.scp``: utt -> prompt audio. Relative paths are tried against the set root, the subset folder
  and every folder above it (CV3 writes them relative to its repository root, with a literal ``//``);
  ``waveform/<file name>`` in the subset folder is the last resort;
- ``waveform/``: the prompt audio;
- ours, optional: ``instruct`` (utt -> instruction, e.g. ``用四川话说这句话<|endofprompt|>``),
  ``language`` (one code for the subset, or utt -> code lines), ``reference_wav.scp`` (utt -> a recording
  of the same text, for the speaker-SFT set), ``utt2spk``.

The target language comes from ``language`` if present, else from the folder names, innermost first: the
last ``_``-separated part of a name that is a Whisper language code (``zh``, ``hard_en`` -> en,
``to_zh`` -> zh; ``emotion_zeroshot/zh/happy`` -> zh).

Problems with single items (a missing prompt wav, an id in ``text`` but not in ``prompt_wav.scp`` or the
reverse, an unknown language code) are collected as :class:`ItemProblem` and the rest stays usable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cosyml.data.kaldi import read_kaldi_map
from cosyml.errors import InputError
from cosyml.evaluation.metrics import normalize
from cosyml.fileio import write_if_changed

KNOWN_FILES = ("text", "prompt_text", "prompt_wav.scp", "instruct", "language", "reference_wav.scp", "utt2spk")
#: Reason codes of :class:`ItemProblem`.
PROBLEM_REASONS = (
    "no_text_file",  # the subset has no `text` file: nothing to score the content against
    "no_text_entry",  # the utt is in prompt_wav.scp but not in `text`
    "no_prompt_entry",  # the utt is in `text` but not in prompt_wav.scp
    "missing_prompt_wav",  # prompt_wav.scp names a file that does not exist
    "missing_reference_wav",  # reference_wav.scp names a file that does not exist
    "unknown_language",  # no language code, or one Whisper does not know
    "empty_text",  # the target text is empty (after removing punctuation)
)


def whisper_languages() -> frozenset[str]:
    """Language codes Whisper can be forced to (``zh``, ``en``, ``yue``, ...)."""
    from whisper.tokenizer import LANGUAGES

    return frozenset(LANGUAGES)


@dataclass(frozen=True)
class TestItem:
    """One utterance to synthesise and score. Paths are resolved and exist."""

    utt: str
    text: str
    language: str
    prompt_text: str | None = None
    prompt_wav: Path | None = None
    reference_wav: Path | None = None
    instruct: str | None = None
    speaker: str | None = None


@dataclass(frozen=True)
class ItemProblem:
    """An utterance that cannot be scored: ``reason`` is one of :data:`PROBLEM_REASONS`."""

    subset: str
    utt: str
    reason: str
    detail: str


@dataclass
class TestSubset:
    """A subset folder as read: usable ``items`` (in file order) and the ``problems`` of the others."""

    name: str  # path relative to the set root, "/"-separated ("zero_shot/zh")
    folder: Path
    language: str | None
    items: list[TestItem] = field(default_factory=list)
    problems: list[ItemProblem] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.items) + len(self.problems)


def read_kaldi(path: Path) -> dict[str, str]:
    """``key value`` lines split on the first whitespace, inner spacing kept (CV3-Eval's convention)."""
    return read_kaldi_map(path, keep_spacing=True)


def write_kaldi(path: Path, entries: Iterable[tuple[str, str]]) -> None:
    """Write ``key value`` lines (UTF-8). Keys must not contain whitespace."""
    lines = []
    for key, value in entries:
        if not key or any(c.isspace() for c in key):
            raise ValueError(f"{path}: key {key!r} is empty or contains whitespace")
        lines.append(f"{key} {value}\n")
    write_if_changed(path, "".join(lines).encode("utf-8"))  # equal content keeps the file (and its mtime)


def language_from_path(folder: Path, root: Path | None = None) -> str | None:
    """The innermost folder name (up to ``root``) whose last ``_`` part is a Whisper language code."""
    known = whisper_languages()
    stop = root.resolve() if root is not None else None
    start = folder.resolve()
    for part in [start, *start.parents]:
        code = part.name.rsplit("_", 1)[-1].lower()
        if code in known:
            return code
        if stop is not None and part == stop and part != start:
            break
    return None


def resolve_audio_path(value: str, folder: Path, root: Path) -> Path | None:
    """Find the file a ``*.scp`` value names (see module docstring for the search order); None if absent."""
    path = Path(value)  # pathlib folds CV3's literal "//" into "/"
    if path.is_absolute():
        return path if path.is_file() else None
    bases = [root, folder, *folder.resolve().parents]
    for base in bases:
        candidate = base / path
        if candidate.is_file():
            return candidate
    fallback = folder / "waveform" / path.name
    return fallback if fallback.is_file() else None


def find_subsets(root: str | Path) -> list[Path]:
    """Every folder under ``root`` (``root`` included) holding ``text`` or ``prompt_wav.scp``, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: test-set folder not found; pass a folder in the CV3-Eval layout (e.g. eval/)")
    found = {p.parent for name in ("text", "prompt_wav.scp") for p in root.rglob(name) if p.is_file()}
    return sorted(found)


def _subset_languages(folder: Path, root: Path, utts: Sequence[str], override: str | None) -> dict[str, str | None]:
    if override:
        return dict.fromkeys(utts, override)
    path = folder / "language"
    if path.is_file():
        mapping = read_kaldi(path)
        if len(mapping) == 1 and not next(iter(mapping.values())):  # a single code: the whole subset
            return dict.fromkeys(utts, next(iter(mapping)))
        default = language_from_path(folder, root)
        return {u: mapping.get(u) or default for u in utts}
    return dict.fromkeys(utts, language_from_path(folder, root))


def read_subset(folder: str | Path, root: str | Path | None = None, language: str | None = None) -> TestSubset:
    """Read one subset folder. ``root`` is the test-set root (names and relative paths start there).

    ``language`` forces one code for every item. Raises :class:`InputError` only when the folder has
    neither ``text`` nor ``prompt_wav.scp``; every per-item problem is returned in ``problems``.
    """
    folder = Path(folder)
    root = Path(root) if root is not None else folder
    try:
        name = folder.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        name = folder.name
    name = name if name != "." else folder.resolve().name
    has_text = (folder / "text").is_file()
    has_prompts = (folder / "prompt_wav.scp").is_file()
    if not has_text and not has_prompts:
        raise InputError(f"{folder}: neither `text` nor `prompt_wav.scp` found; not a CV3-Eval style subset")
    texts = read_kaldi(folder / "text") if has_text else {}
    prompts = read_kaldi(folder / "prompt_wav.scp") if has_prompts else {}
    optional = {
        f: read_kaldi(folder / f) if (folder / f).is_file() else {}
        for f in ("prompt_text", "instruct", "reference_wav.scp", "utt2spk")
    }
    utts = list(texts) + [u for u in prompts if u not in texts]
    languages = _subset_languages(folder, root, utts, language)
    known = whisper_languages()
    subset = TestSubset(name=name, folder=folder, language=None)
    codes = {c for c in languages.values() if c}
    subset.language = codes.pop() if len(codes) == 1 else ("mixed" if codes else None)

    def problem(utt: str, reason: str, detail: str) -> None:
        subset.problems.append(ItemProblem(name, utt, reason, detail))

    for utt in utts:
        if not has_text:
            problem(utt, "no_text_file", f"{folder / 'text'} is missing; add the target sentences (utt text)")
            continue
        if utt not in texts:
            problem(utt, "no_text_entry", f"{utt} is in prompt_wav.scp but not in {folder / 'text'}")
            continue
        code = languages[utt]
        if code is None or code not in known:
            detail = (
                f"language code {code!r} is not one Whisper knows (zh, en, ja, ...)"
                if code
                else f"cannot tell the language of {folder}: name the folder <name>_<code> or add a `language` file"
            )
            problem(utt, "unknown_language", detail)
            continue
        if not normalize(texts[utt], code):
            problem(utt, "empty_text", f"{utt}: the text in {folder / 'text'} is empty once punctuation is removed")
            continue
        prompt_wav = None
        if has_prompts:
            if utt not in prompts:
                problem(utt, "no_prompt_entry", f"{utt} is in `text` but not in {folder / 'prompt_wav.scp'}")
                continue
            prompt_wav = resolve_audio_path(prompts[utt], folder, root)
            if prompt_wav is None:
                problem(utt, "missing_prompt_wav", f"{prompts[utt]} (from {folder / 'prompt_wav.scp'}) not found")
                continue
        reference_wav = None
        if utt in optional["reference_wav.scp"]:
            reference_wav = resolve_audio_path(optional["reference_wav.scp"][utt], folder, root)
            if reference_wav is None:
                problem(utt, "missing_reference_wav", f"{optional['reference_wav.scp'][utt]} not found")
                continue
        subset.items.append(
            TestItem(
                utt=utt,
                text=texts[utt],
                language=code,
                prompt_text=optional["prompt_text"].get(utt),
                prompt_wav=prompt_wav,
                reference_wav=reference_wav,
                instruct=optional["instruct"].get(utt),
                speaker=optional["utt2spk"].get(utt),
            )
        )
    return subset


def read_test_set(root: str | Path, subsets: Sequence[str] = ()) -> list[TestSubset]:
    """Read every subset under ``root`` (or only those named, as paths relative to ``root``)."""
    root = Path(root)
    folders = find_subsets(root)
    if subsets:
        by_name = {_name(f, root): f for f in folders}
        unknown = [s for s in subsets if s.strip("/") not in by_name]
        if unknown:
            raise InputError(f"{root}: no subset {unknown[0]!r}; found: {', '.join(sorted(by_name)) or 'none'}")
        folders = [by_name[s.strip("/")] for s in subsets]
    return [read_subset(f, root) for f in folders]


def _name(folder: Path, root: Path) -> str:
    rel = folder.resolve().relative_to(root.resolve()).as_posix()
    return rel if rel != "." else folder.resolve().name


@dataclass(frozen=True)
class SubsetLine:
    """One utterance to write with :func:`write_subset`. ``prompt_wav`` is written as given."""

    utt: str
    text: str
    prompt_text: str | None = None
    prompt_wav: str | None = None
    instruct: str | None = None
    reference_wav: str | None = None
    language: str | None = None
    speaker: str | None = None


def write_subset(folder: str | Path, lines: Sequence[SubsetLine], language: str | None = None) -> Path:
    """Write a subset folder: ``text`` always; the other files when any line has that field, and any
    other file of :data:`KNOWN_FILES` left by an earlier write is removed. Files whose content does not
    change are left untouched.

    ``language`` writes a one-code ``language`` file; per-line languages write utt -> code lines.
    """
    folder = Path(folder)
    written = {"text"}
    write_kaldi(folder / "text", [(x.utt, x.text) for x in lines])
    columns = {
        "prompt_text": "prompt_text",
        "prompt_wav.scp": "prompt_wav",
        "instruct": "instruct",
        "reference_wav.scp": "reference_wav",
        "utt2spk": "speaker",
    }
    for file_name, attr in columns.items():
        if any(getattr(x, attr) for x in lines):
            write_kaldi(folder / file_name, [(x.utt, getattr(x, attr) or "") for x in lines])
            written.add(file_name)
    if language:
        write_if_changed(folder / "language", f"{language}\n".encode())
        written.add("language")
    elif any(x.language for x in lines):
        write_kaldi(folder / "language", [(x.utt, x.language) for x in lines if x.language])
        written.add("language")
    for stale in set(KNOWN_FILES) - written:
        (folder / stale).unlink(missing_ok=True)
    return folder


_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")


def guess_language(text: str) -> str:
    """``zh`` when the text has Han characters, ``ja`` for kana, ``ko`` for Hangul, else ``en``."""
    if re.search(r"[\u3040-\u30ff]", text):
        return "ja"
    if re.search(r"[\uac00-\ud7af]", text):
        return "ko"
    return "zh" if _CJK.search(text) else "en"


def write_sft_subset(
    data_dir: str | Path, out_dir: str | Path, split: str = "dev", language: str = "auto", copy_audio: bool = False
) -> TestSubset:
    """Build the in-domain speaker-SFT subset from a prepared data folder's ``<split>/{wav.scp,text}``.

    Writes ``text``, ``reference_wav.scp`` (the recordings of the same sentences: the duration reference
    and, averaged, the speaker embedding SS is measured against), ``language`` per utt (from
    ``manifest.jsonl`` when present, else ``language``, else guessed from the script) and ``utt2spk``.
    No ``prompt_wav.scp``: SFT synthesis uses the speaker id, not a prompt. Wav paths are absolute
    unless ``copy_audio`` copies them into ``out_dir/waveform/``. Returns the subset as read back.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    split_dir = data_dir / split
    for required in ("wav.scp", "text"):
        if not (split_dir / required).is_file():
            raise InputError(f"{split_dir / required}: not found; run `cosyml prepare` first or pass the data folder")
    wavs = read_kaldi(split_dir / "wav.scp")
    texts = read_kaldi(split_dir / "text")
    speakers = read_kaldi(split_dir / "utt2spk") if (split_dir / "utt2spk").is_file() else {}
    manifest_langs = _manifest_languages(split_dir / "manifest.jsonl")
    lines = []
    for utt, text in texts.items():
        if utt not in wavs:
            continue  # read_subset reports nothing for it: a dev utt without audio is prepare's problem
        wav = resolve_audio_path(wavs[utt], split_dir, data_dir)
        if wav is None:
            wav_value = str((data_dir / wavs[utt]).resolve())  # left dangling: reported as missing_reference_wav
        elif copy_audio:
            target = out_dir / "waveform" / f"{utt}{wav.suffix}"
            write_if_changed(target, wav.read_bytes())
            wav_value = f"waveform/{target.name}"
        else:
            wav_value = str(wav.resolve())
        code = manifest_langs.get(utt) or (language if language != "auto" else guess_language(text))
        lines.append(SubsetLine(utt=utt, text=text, reference_wav=wav_value, language=code, speaker=speakers.get(utt)))
    if not lines:
        raise InputError(f"{split_dir}: no utterance has both a wav.scp and a text line; nothing to evaluate")
    write_subset(out_dir, lines)
    return read_subset(out_dir, out_dir.parent)


def _manifest_languages(path: Path) -> Mapping[str, str]:
    if not path.is_file():
        return {}
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        lang = row.get("language") if isinstance(row, dict) else None
        if lang and lang != "unknown" and "utt" in row:
            out[row["utt"]] = lang
    return out
