"""The ``prepare`` stage: raw clips in any layout -> normalised clips, kaldi files, manifest, rejects.

Per input file: transcript checks (placeholder, empty), decode, clipping check on the original
samples, mono + resample to ``sample_rate``; recordings longer than ``long_recording_s`` that have no
transcript are sliced at pauses; then per clip: silence analysis, trim (never below
``min(length, min_keep_s)``), loudness checks, duration limits, peak normalisation, duplicate check
on the normalised 16-bit samples. Clips without text are transcribed with Whisper at the end, in
batches. Every input file ends in a split manifest or in ``rejects.jsonl`` (one reason each);
the folder layout is described in :mod:`cosyml.data.records`.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cosyml.audio import read_audio, resample, to_mono, write_wav
from cosyml.config import PrepareConfig
from cosyml.data import clean
from cosyml.data.kaldi import write_split
from cosyml.data.layouts import Scan, SourceClip, scan_inputs
from cosyml.data.records import REJECT_REASONS, ManifestEntry, Reject, write_jsonl
from cosyml.data.slicing import slice_at_pauses
from cosyml.data.split import assign_splits
from cosyml.data.transcribe import WHISPER_RATE, Transcript, WhisperTranscriber, read_review, write_review
from cosyml.errors import InputError

# Any utt-id prefix upstream accepts: Unicode letters (CJK too), digits and "-"; "_" ends the speaker part.
SPEAKER_RE = re.compile(r"(?:[^\W_]|-)+")
SPLITS = ("train", "dev")
_MANAGED = ("wavs", "train", "dev")  # folders inside the output that prepare owns and rewrites
_WHISPER_CACHE = "whisper_cache.jsonl"


@dataclass(frozen=True)
class PrepareResult:
    """What a prepare run produced. Paths are absolute."""

    output: Path
    entries: list[ManifestEntry]
    rejects: list[Reject]
    counts: dict[str, int]  # split -> utterances
    hours: dict[str, float]  # split -> hours of audio
    reject_counts: dict[str, int]  # reason -> count (every reason listed, zeros included)
    transcribed: int  # clips sent to Whisper (cached ones included)
    ignored_files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def summary_path(self) -> Path:
        return self.output / "summary.json"

    @property
    def rejects_path(self) -> Path:
        return self.output / "rejects.jsonl"

    @property
    def review_path(self) -> Path:
        return self.output / "transcripts_review.tsv"


@dataclass
class _Pending:
    """A clip that passed the audio checks; text may still be missing."""

    utt: str
    source: str
    samples: np.ndarray  # (n,) float32 at cfg.sample_rate, normalised
    audio_hash: str
    text: str | None
    text_source: str | None
    start_s: float | None = None
    end_s: float | None = None


def check_speaker(speaker: str) -> None:
    if not SPEAKER_RE.fullmatch(speaker or ""):
        raise InputError(
            f"speaker {speaker!r}: use only letters (any script), digits and '-' (upstream reads the speaker as the "
            "part of the utt id before the first '_'); pass e.g. --speaker my-voice"
        )


def check_paths(inputs: list[Path], output: Path) -> None:
    """One-line errors for missing/empty inputs and an output that would write into an input."""
    if not inputs:
        raise InputError("no input folder given; pass --input RAW")
    out = output.resolve()
    for raw in inputs:
        if not raw.exists():
            raise InputError(f"{raw}: input folder does not exist; pass --input with your clips' folder")
        if not raw.is_dir():
            raise InputError(f"{raw}: not a folder; pass --input with the folder that holds your clips")
        try:
            next(raw.iterdir(), None)
        except PermissionError:
            raise InputError(f"{raw}: cannot read the input folder (permission denied)") from None
        src = raw.resolve()
        if out == src or src in out.parents:
            raise InputError(f"{output}: output folder is inside the input {raw}; choose an output outside it")
        if any(src == out / m or (out / m) in src.parents for m in _MANAGED):
            raise InputError(f"{raw}: input is inside the output's {'/'.join(_MANAGED)} folders, which "
                             "prepare rewrites; move it or choose another output")


def stable_ids(clips: list[SourceClip], speaker: str) -> list[str]:
    """``<speaker>_<id>``, id from the path inside the input ([A-Za-z0-9_-]); collisions get a hash."""
    import hashlib

    seen: set[str] = set()
    out = []
    for clip in clips:
        base = re.sub(r"[^A-Za-z0-9_-]+", "-", clip.rel.replace("/", "-")).strip("-_")[:80] or "clip"
        utt = f"{speaker}_{base}"
        if utt in seen or base != clip.rel.replace("/", "-"):
            # Renamed characters (CJK names, spaces) or a collision: a short hash keeps ids unique.
            utt = f"{utt}-{hashlib.sha1(clip.source.encode()).hexdigest()[:8]}"
        while utt in seen:
            utt += "x"
        seen.add(utt)
        out.append(utt)
    return out


class _Run:
    """State of one prepare run (kept out of the public API)."""

    def __init__(self, cfg: PrepareConfig, output: Path, review: dict[str, str]) -> None:
        self.cfg = cfg
        self.output = output
        self.review = review
        self.rejects: list[Reject] = []
        self.pending: list[_Pending] = []
        self.hashes: dict[str, str] = {}  # audio hash -> utt that has it

    def reject(self, source: str, reason: str, detail: str, utt: str | None = None,
               span: tuple[float, float] | None = None) -> None:
        assert reason in REJECT_REASONS, reason
        self.rejects.append(Reject(source, reason, detail, utt, *(span or (None, None))))

    # -- text ------------------------------------------------------------------------------
    def text_for(self, utt: str, clip_text: str | None, clip_source: str | None) -> tuple[str | None, str | None]:
        if utt in self.review:
            return self.review[utt], "review"
        return clip_text, clip_source

    def text_problem(self, text: str) -> tuple[str, str] | None:
        cleaned = clean.clean_text(text)
        if not cleaned:
            return "empty_text", "transcript is empty; write the spoken text or delete the clip"
        placeholder = clean.find_placeholder(cleaned, self.cfg.placeholder_pattern)
        if placeholder:
            return "placeholder_text", (f"transcript contains the placeholder {placeholder}; replace it "
                                        "with the spoken words (or feed a corrected text with --review)")
        return None

    # -- one input file --------------------------------------------------------------------
    def add(self, clip: SourceClip, utt: str) -> None:
        cfg = self.cfg
        if clip.audio is None or (clip.audio.name != "<pipe>" and not clip.audio.exists()):
            self.reject(clip.source, "no_audio", "transcript has no audio file next to it (same name, "
                        "audio extension); add the audio or delete the transcript", utt)
            return
        if clip.text_error:
            self.reject(clip.source, "undecodable", clip.text_error, utt)
            return
        text, text_source = self.text_for(utt, clip.text, clip.text_source)
        if text is not None and (problem := self.text_problem(text)):
            self.reject(clip.source, *problem, utt=utt)
            return
        try:
            audio = read_audio(clip.audio)
        except InputError as exc:
            self.reject(clip.source, "undecodable", str(exc), utt)
            return
        if audio.num_samples == 0:
            self.reject(clip.source, "undecodable", f"{clip.audio}: no audio samples in the file", utt)
            return
        ratio = clean.clipped_ratio(audio.samples, cfg.clip_threshold)
        if ratio > cfg.max_clipped_ratio:
            self.reject(clip.source, "clipped", f"{ratio:.1%} of samples at full scale (limit "
                        f"{cfg.max_clipped_ratio:.1%}): the recording is distorted; use a cleaner take", utt)
            return
        samples = resample(to_mono(audio.samples), audio.sample_rate, cfg.sample_rate)
        duration = samples.shape[0] / cfg.sample_rate
        if duration > cfg.long_recording_s and text is None:
            ranges = slice_at_pauses(samples, cfg.sample_rate, cfg.slice_min_s, cfg.slice_max_s,
                                     cfg.trim_top_db, cfg.silence_floor_dbfs, cfg.slice_min_silence_s)
            for k, (a, b) in enumerate(ranges):
                part_utt = f"{utt}-p{k:03d}"
                part_text, part_source = self.text_for(part_utt, None, None)
                span = (round(a / cfg.sample_rate, 3), round(b / cfg.sample_rate, 3))
                if part_text is not None and (problem := self.text_problem(part_text)):
                    self.reject(clip.source, *problem, utt=part_utt, span=span)
                    continue
                self.add_samples(clip.source, part_utt, samples[a:b], part_text, part_source, span)
            return
        if duration > cfg.max_duration_s:
            hint = ("it has one transcript for the whole file, so it cannot be sliced; split it or remove "
                    "the transcript to slice and transcribe it") if duration > cfg.long_recording_s else \
                   f"split it into utterances of at most {cfg.max_duration_s:g} s"
            self.reject(clip.source, "too_long", f"{duration:.1f} s > max_duration_s={cfg.max_duration_s:g}; "
                        + hint, utt)
            return
        self.add_samples(clip.source, utt, samples, text, text_source, None)

    def add_samples(self, source: str, utt: str, samples: np.ndarray, text: str | None,
                    text_source: str | None, span: tuple[float, float] | None) -> None:
        cfg, sr = self.cfg, self.cfg.sample_rate
        trim = clean.trim_silence(samples, sr, cfg.trim_top_db, cfg.silence_floor_dbfs, cfg.trim_pad_s,
                                  cfg.min_keep_s)
        if trim.speech_ratio < 1.0 - cfg.max_silence_ratio:
            self.reject(source, "mostly_silence", f"speech in {trim.speech_ratio:.0%} of the clip (needs "
                        f"{1.0 - cfg.max_silence_ratio:.0%}); is it the right file?", utt, span)
            return
        if trim.speech_rms_dbfs < cfg.min_rms_dbfs:
            self.reject(source, "too_quiet", f"speech level {trim.speech_rms_dbfs:.1f} dBFS < min_rms_dbfs="
                        f"{cfg.min_rms_dbfs:g}; record louder or lower prepare.min_rms_dbfs", utt, span)
            return
        kept = samples[trim.start : trim.end]
        duration = kept.shape[0] / sr
        if duration < cfg.min_duration_s:
            self.reject(source, "too_short", f"{duration:.2f} s of audio after trimming silence < "
                        f"min_duration_s={cfg.min_duration_s:g}", utt, span)
            return
        if duration > cfg.max_duration_s:
            self.reject(source, "too_long", f"{duration:.1f} s > max_duration_s={cfg.max_duration_s:g}; "
                        "split it into shorter utterances", utt, span)
            return
        pcm = clean.to_pcm16(clean.normalise_peak(kept, cfg.target_peak))
        digest = clean.audio_hash(pcm)
        if digest in self.hashes:
            self.reject(source, "duplicate_audio", f"same audio as {self.hashes[digest]}; kept that one",
                        utt, span)
            return
        self.hashes[digest] = utt
        start_s, end_s = span if span else (None, None)
        self.pending.append(_Pending(utt, source, pcm.astype(np.float32) / 32767.0, digest, text,
                                     text_source, start_s, end_s))


def _load_cache(path: Path) -> dict[str, dict]:
    cache: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                cache[row["key"]] = row
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a damaged cache line only costs a re-transcription
    return cache


def _transcribe(run: _Run, whisper_path: str, progress: bool) -> tuple[dict[str, Transcript], int]:
    """Whisper for every pending clip without text; results cached by audio hash + model."""
    todo = [p for p in run.pending if p.text is None]
    if not todo:
        return {}, 0
    cfg = run.cfg
    language = None if cfg.language in ("", "auto") else cfg.language
    transcriber = WhisperTranscriber(whisper_path, language, cfg.whisper_device, cfg.whisper_batch_size,
                                     cfg.whisper_max_tokens)
    cache_path = run.output / _WHISPER_CACHE
    cache = _load_cache(cache_path)
    key = lambda p: f"{p.audio_hash}:{transcriber.model_id}:{language}:{cfg.whisper_max_tokens}"  # noqa: E731
    missing = [p for p in todo if key(p) not in cache]
    bar = tqdm(total=len(missing), desc="transcribe", unit="clip", disable=not progress or not missing)
    for i in range(0, len(missing), transcriber.batch_size):
        chunk = missing[i : i + transcriber.batch_size]
        audio = [resample(p.samples, cfg.sample_rate, WHISPER_RATE) for p in chunk]
        for p, t in zip(chunk, transcriber.transcribe(audio), strict=True):
            cache[key(p)] = {"key": key(p), "text": t.text, "language": t.language, "confidence": t.confidence,
                             "avg_logprob": t.avg_logprob, "no_speech_prob": t.no_speech_prob}
        bar.update(len(chunk))
    bar.close()
    with cache_path.open("w", encoding="utf-8") as f:
        for row in cache.values():
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    out = {}
    for p in todo:
        row = cache[key(p)]
        out[p.utt] = Transcript(row["text"], row["language"], row["confidence"], row["avg_logprob"],
                                row["no_speech_prob"])
    return out, len(todo)


def prepare(
    inputs: list[Path],
    output: Path,
    cfg: PrepareConfig,
    review_file: Path | None = None,
    progress: bool = True,
    warn: Callable[[str], None] | None = None,
) -> PrepareResult:
    """Run the whole stage. ``cfg.whisper_model`` (a local .pt) enables transcription of clips without
    text when ``cfg.transcribe``; ``review_file`` feeds corrected transcripts back (they win)."""
    check_speaker(cfg.speaker)
    inputs = [Path(p) for p in inputs]
    output = Path(output)
    check_paths(inputs, output)
    review = read_review(review_file) if review_file is not None else {}
    scan: Scan = scan_inputs(inputs)
    if not scan.clips:
        raise InputError(f"{', '.join(map(str, inputs))}: no audio or transcript files found (looked for "
                         f"{', '.join(_audio_exts())} and .lab/.normalized.txt/wav.scp); check --input")
    output.mkdir(parents=True, exist_ok=True)
    for name in _MANAGED:
        if (output / name).exists():
            shutil.rmtree(output / name)
    messages: list[str] = []

    run = _Run(cfg, output.resolve(), review)
    utts = stable_ids(scan.clips, cfg.speaker)
    for clip, utt in tqdm(list(zip(scan.clips, utts, strict=True)), desc="prepare", unit="file",
                          disable=not progress):
        run.add(clip, utt)

    transcripts: dict[str, Transcript] = {}
    transcribed = 0
    needs_text = [p for p in run.pending if p.text is None]
    if needs_text and (not cfg.transcribe or not cfg.whisper_model):
        why = ("transcription is off (--no-transcribe)" if not cfg.transcribe
               else "no Whisper model given; pass --whisper PATH/TO/model.pt to transcribe them")
        messages.append(f"{len(needs_text)} clip(s) have no transcript and were rejected as no_text: {why}")
        for p in needs_text:
            run.reject(p.source, "no_text", f"no transcript; {why}", p.utt, _span(p))
        run.pending = [p for p in run.pending if p.text is not None]
    elif needs_text:
        transcripts, transcribed = _transcribe(run, cfg.whisper_model, progress)

    entries: list[ManifestEntry] = []
    review_rows: list[tuple[str, float, str, str]] = []
    accepted: list[_Pending] = []
    for p in run.pending:
        conf: float | None = None
        language = cfg.language if cfg.language not in ("", "auto") else None
        text, text_source = p.text, p.text_source
        if text is None:
            t = transcripts[p.utt]
            text, text_source, conf = t.text, "whisper", t.confidence
            language = language or t.language
            review_rows.append((p.utt, t.confidence, clean.clean_text(t.text), p.source))
            if not clean.clean_text(text):
                run.reject(p.source, "empty_text", "Whisper heard no words; write the text in the review file "
                           "and pass it with --review", p.utt, _span(p))
                continue
            if t.confidence < cfg.min_confidence:
                run.reject(p.source, "low_confidence", f"Whisper confidence {t.confidence:.2f} < min_confidence="
                           f"{cfg.min_confidence:g}; check the text in transcripts_review.tsv and pass it "
                           "with --review", p.utt, _span(p))
                continue
        text = clean.clean_text(text)
        accepted.append(p)
        entries.append(ManifestEntry(
            utt=p.utt, spk=cfg.speaker, wav=f"wavs/{p.utt}.wav", text=text,
            duration_s=round(p.samples.shape[0] / cfg.sample_rate, 3), split="train", source=p.source,
            text_source=text_source or "lab", language=language or clean.guess_language(text),
            confidence=None if conf is None else round(conf, 4), source_start_s=p.start_s, source_end_s=p.end_s,
        ))

    splits = assign_splits([e.utt for e in entries], cfg.seed, cfg.dev_ratio, cfg.min_dev)
    entries = [_with_split(e, splits[e.utt]) for e in entries]
    for p in accepted:
        write_wav(output / "wavs" / f"{p.utt}.wav", p.samples, cfg.sample_rate)
    for split in SPLITS:
        write_split(output / split, [e for e in entries if e.split == split], cfg.instruct)

    rejects = sorted(run.rejects, key=lambda r: (r.source, r.utt or ""))
    write_jsonl(output / "rejects.jsonl", rejects)
    review_path = output / "transcripts_review.tsv"
    if review_rows:
        write_review(review_path, review_rows)
    elif review_path.exists():
        review_path.unlink()

    reason_counts = Counter(r.reason for r in rejects)
    result = PrepareResult(
        output=output.resolve(),
        entries=sorted(entries, key=lambda e: e.utt),
        rejects=rejects,
        counts={s: sum(1 for e in entries if e.split == s) for s in SPLITS},
        hours={s: round(sum(e.duration_s for e in entries if e.split == s) / 3600.0, 6) for s in SPLITS},
        reject_counts={r: reason_counts.get(r, 0) for r in REJECT_REASONS},
        transcribed=transcribed,
        ignored_files=scan.ignored,
        warnings=messages,
    )
    _write_summary(result, inputs, scan)
    for message in messages:
        (warn or (lambda m: warnings.warn(m, stacklevel=2)))(message)
    return result


def _audio_exts() -> list[str]:
    from cosyml.audio import AUDIO_EXTENSIONS

    return list(AUDIO_EXTENSIONS)


def _span(p: _Pending) -> tuple[float, float] | None:
    return (p.start_s, p.end_s) if p.start_s is not None and p.end_s is not None else None


def _with_split(e: ManifestEntry, split: str) -> ManifestEntry:
    from dataclasses import replace

    return replace(e, split=split)


def _write_summary(result: PrepareResult, inputs: list[Path], scan: Scan) -> None:
    sources = Counter(e.text_source for e in result.entries)
    summary = {
        "inputs": [str(p) for p in inputs],
        "layouts": scan.layouts,
        "input_files": len(scan.clips),
        "counts": result.counts,
        "hours": result.hours,
        "accepted": len(result.entries),
        "rejected": len(result.rejects),
        "rejects": result.reject_counts,
        "text_sources": dict(sorted(sources.items())),
        "transcribed": result.transcribed,
        "ignored_files": result.ignored_files,
        "warnings": result.warnings,
    }
    result.summary_path.write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
