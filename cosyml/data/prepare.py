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
import os
import re
import shutil
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cosyml.audio import Audio, audio_info, read_audio, resample, to_mono, write_wav
from cosyml.data import clean
from cosyml.data.config import PrepareConfig
from cosyml.data.kaldi import write_split
from cosyml.data.layouts import Scan, SourceClip, printable, scan_inputs
from cosyml.data.records import REJECT_REASONS, ManifestEntry, Reject, write_jsonl
from cosyml.data.slicing import slice_at_pauses
from cosyml.data.split import assign_splits
from cosyml.data.transcribe import (
    WHISPER_RATE,
    ReviewRow,
    Transcript,
    WhisperTranscriber,
    read_review,
    write_review,
)
from cosyml.errors import InputError
from cosyml.fileio import atomic_write_text, output_lock

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
    transcript_check: str = "off"  # "on", or "off: <why>" (see transcript_check_state)
    transcripts_checked: int = 0  # clips whose own transcript was compared with Whisper's
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
    """A clip that passed the audio checks (its wav is already written); text may still be missing."""

    utt: str
    source: str
    num_samples: int  # at cfg.sample_rate
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
    resolved = [raw.resolve() for raw in inputs]
    for i, src in enumerate(resolved):
        if src in resolved[:i]:
            raise InputError(f"{inputs[i]}: input folder given twice; pass each --input once")
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
            raise InputError(
                f"{raw}: input is inside the output's {'/'.join(_MANAGED)} folders, which "
                "prepare rewrites; move it or choose another output"
            )


_PLAIN_PART = re.compile(r"[A-Za-z0-9-]+(?:_[A-Za-z0-9-]+)*")


def stable_id(key: str) -> str:
    """The id part of an utt id for one input file, a function of that file alone.

    ``key`` is the path inside the input (without ``.wav``; other extensions stay). Paths whose parts
    are ``[A-Za-z0-9_-]`` (no ``__``, no ``_`` at an end) give their parts joined with ``-``; any other
    path (spaces, CJK, bytes that are not UTF-8, an extension) gives its characters mapped to
    ``[A-Za-z0-9_-]`` plus ``-`` and 8 hex digits of the path's sha1. Adding or removing other files
    therefore never changes an id.
    """
    import hashlib

    parts = key.split("/")
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", "-".join(parts)).strip("-_")[:80] or "clip"
    if all(_PLAIN_PART.fullmatch(p) for p in parts) and len(base) == len(key):
        return base
    return f"{base}-{hashlib.sha1(os.fsencode(key)).hexdigest()[:8]}"


def stable_ids(clips: list[SourceClip], speaker: str) -> list[str]:
    """``<speaker>_<stable_id(path)>`` per clip (see :func:`stable_id`).

    Two files can still map to one id (``a/b.wav`` and ``a-b.wav``, the same path in two inputs, a
    kaldi key and a file): then every clip of that id gets a hash of its whole source instead, so no
    file ever takes the id another file had (a review file can never correct the wrong clip).
    """
    import hashlib

    ids = [f"{speaker}_{stable_id(c.id_key)}" for c in clips]
    counts = Counter(ids)
    out = []
    for clip, utt in zip(clips, ids, strict=True):
        if counts[utt] > 1:
            utt = f"{utt}-s{hashlib.sha1(os.fsencode(clip.source)).hexdigest()[:8]}"
        out.append(utt)
    return out


#: Lowest sample rate a header may claim: below it the file is not speech audio (or the header lies,
#: and resampling "1 Hz" to 24 kHz would allocate 24000 samples per stored one).
MIN_SAMPLE_RATE = 4000
#: Longest recording decoded at all (3 h): longer ones are rejected from the header, before decoding.
MAX_RECORDING_S = 3 * 3600.0


class _Run:
    """State of one prepare run (kept out of the public API). Accepted clips are written to
    ``staging/wavs`` as they are accepted; only their ids, hashes and texts stay in memory."""

    def __init__(self, cfg: PrepareConfig, staging: Path, review: dict[str, str]) -> None:
        self.cfg = cfg
        self.staging = staging
        self.review = review
        self.rejects: list[Reject] = []
        self.pending: list[_Pending] = []
        self.hashes: dict[str, str] = {}  # audio hash -> utt that has it
        self._decoded: tuple[Path, Audio] | None = None  # the last recording (kaldi segments share one)

    def reject(
        self, source: str, reason: str, detail: str, utt: str | None = None, span: tuple[float, float] | None = None
    ) -> None:
        assert reason in REJECT_REASONS, reason
        self.rejects.append(Reject(source, reason, detail, utt, *(span or (None, None))))

    def wav_path(self, utt: str) -> Path:
        return self.staging / "wavs" / f"{utt}.wav"

    def drop(self, p: _Pending) -> None:
        """Undo the acceptance of a clip whose text failed later (Whisper)."""
        self.wav_path(p.utt).unlink(missing_ok=True)
        self.hashes.pop(p.audio_hash, None)

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
            return "placeholder_text", (
                f"transcript contains the placeholder {placeholder}; replace it "
                "with the spoken words (or feed a corrected text with --review)"
            )
        return clean.text_problem(cleaned)

    # -- one input file --------------------------------------------------------------------
    def decode(self, path: Path) -> Audio:
        """Decode ``path`` after checking its header (rate, length); the last recording is reused."""
        if self._decoded is not None and self._decoded[0] == path:
            return self._decoded[1]
        info = audio_info(path)
        if info is not None:
            frames, rate = info
            if rate < MIN_SAMPLE_RATE:
                raise InputError(
                    f"{path}: header says {rate} Hz (below {MIN_SAMPLE_RATE} Hz): a broken or lying "
                    "header; re-encode the file"
                )
            if frames / rate > MAX_RECORDING_S:
                raise _TooLong(
                    f"{frames / rate / 3600:.1f} h recording (at most {MAX_RECORDING_S / 3600:g} h "
                    "are decoded); cut it into parts"
                )
        audio = read_audio(path)
        if audio.sample_rate < MIN_SAMPLE_RATE:
            raise InputError(f"{path}: {audio.sample_rate} Hz audio (below {MIN_SAMPLE_RATE} Hz); re-encode the file")
        self._decoded = (path, audio)
        return audio

    def add(self, clip: SourceClip, utt: str) -> None:
        cfg = self.cfg
        if clip.problem is not None:
            self.reject(clip.source, *clip.problem, utt=utt)
            return
        if clip.audio is None or (clip.audio.name != "<pipe>" and not clip.audio.exists()):
            self.reject(
                clip.source,
                "no_audio",
                "transcript has no audio file next to it (same name, "
                "audio extension); add the audio or delete the transcript",
                utt,
            )
            return
        if clip.text_error:
            self.reject(clip.source, "undecodable", clip.text_error, utt)
            return
        text, text_source = self.text_for(utt, clip.text, clip.text_source)
        if text is not None and (problem := self.text_problem(text)):
            self.reject(clip.source, *problem, utt=utt)
            return
        try:
            audio = self.decode(clip.audio)
        except _TooLong as exc:
            self.reject(clip.source, "too_long", str(exc), utt)
            return
        except InputError as exc:
            self.reject(clip.source, "undecodable", printable(str(exc)), utt)
            return
        raw = audio.samples
        if clip.start_s is not None and clip.end_s is not None:
            a, b = round(clip.start_s * audio.sample_rate), round(clip.end_s * audio.sample_rate)
            if a >= audio.num_samples:
                self.reject(
                    clip.source,
                    "bad_kaldi_line",
                    f"segment starts at {clip.start_s:g} s, after the end of its {audio.duration_s:.1f} s recording",
                    utt,
                )
                return
            raw = raw[..., a:b]
        if not np.isfinite(raw).all():
            self.reject(
                clip.source,
                "undecodable",
                f"{printable(str(clip.audio))}: samples that are not numbers (NaN or infinity); re-export the file",
                utt,
            )
            return
        if raw.shape[-1] == 0:
            self.reject(clip.source, "undecodable", f"{printable(str(clip.audio))}: no audio samples in the file", utt)
            return
        ratio = clean.clipped_ratio(raw, cfg.clip_threshold)
        if ratio > cfg.max_clipped_ratio:
            self.reject(
                clip.source,
                "clipped",
                f"{ratio:.1%} of samples at full scale (limit "
                f"{cfg.max_clipped_ratio:.1%}): the recording is distorted; use a cleaner take",
                utt,
            )
            return
        samples = clean.remove_dc(resample(to_mono(raw), audio.sample_rate, cfg.sample_rate))
        duration = samples.shape[0] / cfg.sample_rate
        if duration > cfg.long_recording_s and text is None:
            ranges = slice_at_pauses(
                samples,
                cfg.sample_rate,
                cfg.slice_min_s,
                cfg.slice_max_s,
                cfg.trim_top_db,
                cfg.silence_floor_dbfs,
                cfg.slice_min_silence_s,
            )
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
            hint = (
                (
                    "it has one transcript for the whole file, so it cannot be sliced; split it or remove "
                    "the transcript to slice and transcribe it"
                )
                if duration > cfg.long_recording_s
                else f"split it into utterances of at most {cfg.max_duration_s:g} s"
            )
            self.reject(
                clip.source, "too_long", f"{duration:.1f} s > max_duration_s={cfg.max_duration_s:g}; " + hint, utt
            )
            return
        whole = (clip.start_s, clip.end_s) if clip.start_s is not None and clip.end_s is not None else None
        self.add_samples(clip.source, utt, samples, text, text_source, whole)

    def add_samples(
        self,
        source: str,
        utt: str,
        samples: np.ndarray,
        text: str | None,
        text_source: str | None,
        span: tuple[float, float] | None,
    ) -> None:
        cfg, sr = self.cfg, self.cfg.sample_rate
        trim = clean.trim_silence(samples, sr, cfg.trim_top_db, cfg.silence_floor_dbfs, cfg.trim_pad_s, cfg.min_keep_s)
        if trim.speech_ratio < 1.0 - cfg.max_silence_ratio:
            self.reject(
                source,
                "mostly_silence",
                f"speech in {trim.speech_ratio:.0%} of the clip (needs "
                f"{1.0 - cfg.max_silence_ratio:.0%}); is it the right file?",
                utt,
                span,
            )
            return
        if trim.speech_rms_dbfs < cfg.min_rms_dbfs:
            self.reject(
                source,
                "too_quiet",
                f"speech level {trim.speech_rms_dbfs:.1f} dBFS < min_rms_dbfs="
                f"{cfg.min_rms_dbfs:g}; record louder or lower prepare.min_rms_dbfs",
                utt,
                span,
            )
            return
        kept = samples[trim.start : trim.end]
        duration = kept.shape[0] / sr
        if duration < cfg.min_duration_s:
            self.reject(
                source,
                "too_short",
                f"{duration:.2f} s of audio after trimming silence < min_duration_s={cfg.min_duration_s:g}",
                utt,
                span,
            )
            return
        if duration > cfg.max_duration_s:
            self.reject(
                source,
                "too_long",
                f"{duration:.1f} s > max_duration_s={cfg.max_duration_s:g}; split it into shorter utterances",
                utt,
                span,
            )
            return
        flatness = clean.spectral_flatness(kept, sr)
        if flatness > clean.NOISE_FLATNESS:
            self.reject(
                source,
                "noise",
                f"sounds like noise, not speech (spectral flatness {flatness:.2f} > "
                f"{clean.NOISE_FLATNESS}); is it the right file?",
                utt,
                span,
            )
            return
        pcm = clean.to_pcm16(clean.normalise_peak(kept, cfg.target_peak))
        digest = clean.audio_hash(pcm)
        if digest in self.hashes:
            self.reject(source, "duplicate_audio", f"same audio as {self.hashes[digest]}; kept that one", utt, span)
            return
        self.hashes[digest] = utt
        write_wav(self.wav_path(utt), pcm.astype(np.float32) / 32767.0, sr)
        start_s, end_s = span if span else (None, None)
        self.pending.append(_Pending(utt, source, int(pcm.shape[0]), digest, text, text_source, start_s, end_s))


#: When Whisper disagrees with more than this share of the checked transcripts, nothing is set aside.
MAX_MISMATCH_SHARE = 0.5


def transcript_check_state(cfg: PrepareConfig) -> str:
    """``"on"`` when prepare compares given transcripts with Whisper, else ``"off: <why>"`` (one line)."""
    if cfg.check_transcripts == "off":
        return "off: prepare.check_transcripts=off"
    if not cfg.whisper_model:
        if cfg.check_transcripts == "on":
            raise InputError(
                "prepare.check_transcripts=on needs a Whisper checkpoint; set prepare.whisper_model (or pass "
                "--whisper PATH) or set prepare.check_transcripts=auto"
            )
        return "off: no Whisper checkpoint (set prepare.whisper_model or pass --whisper to check transcripts)"
    if cfg.check_transcripts == "auto" and not cfg.transcribe:
        return "off: Whisper is off (--no-transcribe); set prepare.check_transcripts=on to check transcripts anyway"
    return "on"


@dataclass(frozen=True)
class TranscriptVerdict:
    """A clip's transcript against what Whisper heard, after the evaluation's text normalisation."""

    hypothesis: str  # Whisper's text (simplified characters for zh)
    language: str  # the language the texts were scored in
    metric: str  # "CER" (zh, ja, ko, yue) or "WER"
    error: float  # edits / reference tokens; can exceed 1


def _transcript_verdict(p: _Pending, t: Transcript, cfg: PrepareConfig) -> TranscriptVerdict:
    from cosyml.evaluation.asr import to_simplified
    from cosyml.evaluation.metrics import count_errors, metric_name

    reference = clean.clean_text(p.text or "")
    language = cfg.language if cfg.language not in ("", "auto") else clean.guess_language(reference)
    hypothesis = clean.clean_text(t.text)
    if language == "zh":
        hypothesis = to_simplified(hypothesis)  # as the evaluation scores Chinese
    error = count_errors(reference, hypothesis, language).error
    return TranscriptVerdict(hypothesis, language, metric_name(language).upper(), error)


class _TooLong(Exception):
    """A recording too long to decode (from its header)."""


def _load_cache(path: Path) -> dict[str, dict]:
    cache: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_bytes().decode("utf-8", "replace").splitlines():
            try:
                row = json.loads(line)
                cache[row["key"]] = row
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a damaged (or torn last) line only costs a re-transcription
    return cache


def _read_pcm(path: Path) -> np.ndarray:
    """The samples a written clip holds, scaled as they were before writing (int16 / 32767)."""
    import soundfile as sf

    data, _ = sf.read(str(path), dtype="int16")
    return data.astype(np.float32) / 32767.0


def _transcribe(
    run: _Run, todo: list[_Pending], whisper_path: str, cache_path: Path, progress: bool
) -> dict[str, Transcript]:
    """Whisper for the ``todo`` clips (those without text, and those whose transcript is checked), in one
    pass with one model load; results cached by audio hash + model + language + token cap.

    Each batch's results are appended to ``cache_path`` (and fsynced) as soon as they exist, so a
    killed run resumes where it stopped; the cache lives in the output folder, outside the staging
    folder a killed run leaves behind.
    """
    if not todo:
        return {}
    cfg = run.cfg
    language = None if cfg.language in ("", "auto") else cfg.language
    transcriber = WhisperTranscriber(
        whisper_path, language, cfg.whisper_device, cfg.whisper_batch_size, cfg.whisper_max_tokens
    )
    cache = _load_cache(cache_path)
    key = lambda p: f"{p.audio_hash}:{transcriber.model_id}:{language}:{cfg.whisper_max_tokens}"  # noqa: E731
    missing = [p for p in todo if key(p) not in cache]
    bar = tqdm(total=len(missing), desc="transcribe", unit="clip", disable=not progress or not missing)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    with cache_path.open("ab") as handle:
        if handle.tell() and not cache_path.read_bytes().endswith(b"\n"):
            handle.write(b"\n")  # a torn last line from a kill: start the next one on its own line
        for i in range(0, len(missing), transcriber.batch_size):
            chunk = missing[i : i + transcriber.batch_size]
            audio = [resample(_read_pcm(run.wav_path(p.utt)), cfg.sample_rate, WHISPER_RATE) for p in chunk]
            lines = []
            for p, t in zip(chunk, transcriber.transcribe(audio), strict=True):
                cache[key(p)] = {
                    "key": key(p),
                    "text": t.text,
                    "language": t.language,
                    "confidence": t.confidence,
                    "avg_logprob": t.avg_logprob,
                    "no_speech_prob": t.no_speech_prob,
                }
                lines.append(json.dumps(cache[key(p)], ensure_ascii=False) + "\n")
            handle.write("".join(lines).encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
            bar.update(len(chunk))
    bar.close()
    out = {}
    for p in todo:
        row = cache[key(p)]
        out[p.utt] = Transcript(
            row["text"], row["language"], row["confidence"], row["avg_logprob"], row["no_speech_prob"]
        )
    return out


def _staging_paths(output: Path) -> tuple[Path, Path]:
    """(new, old): the folder a run writes into, and where the previous output waits during the swap."""
    return output.parent / f".{output.name}.new", output.parent / f".{output.name}.old"


def _recover(output: Path) -> None:
    """Finish or undo a swap a kill interrupted, and drop a killed run's half-written folder."""
    new, old = _staging_paths(output)
    if old.exists():
        if output.exists():
            shutil.rmtree(old)  # the swap finished; only the clean-up was left
        else:
            os.rename(old, output)  # killed between the two renames: the previous output comes back
    if new.exists():
        shutil.rmtree(new)


def _swap_in(output: Path, staging: Path, produced: set[str]) -> None:
    """Replace ``output`` by ``staging`` with two renames. Files in the old output that prepare does not
    write (the Whisper cache, anything a user put there) are hard-linked (or copied) across first."""
    _, old = _staging_paths(output)
    if output.exists():
        for entry in sorted(output.iterdir()):
            if entry.name in produced or (staging / entry.name).exists():
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, staging / entry.name, symlinks=True, copy_function=_link_or_copy)
            else:
                _link_or_copy(entry, staging / entry.name)
        os.rename(output, old)
    os.rename(staging, output)
    if old.exists():
        shutil.rmtree(old)


def _link_or_copy(src: str | Path, dst: str | Path) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def prepare(
    inputs: list[Path],
    output: Path,
    cfg: PrepareConfig,
    review_file: Path | None = None,
    progress: bool = True,
    warn: Callable[[str], None] | None = None,
) -> PrepareResult:
    """Run the whole stage. ``cfg.whisper_model`` (a local .pt) enables transcription of clips without
    text when ``cfg.transcribe``; ``review_file`` feeds corrected transcripts back (they win).

    Holds the output folder's lock (:func:`cosyml.fileio.output_lock`) for the whole run. Everything
    is written into a staging folder beside ``output`` that replaces it only at the end: a killed or
    failed run leaves the previous output as it was, and a rerun starts again from the inputs (the
    Whisper cache, appended per batch, makes the rerun skip what was already transcribed).
    """
    check_speaker(cfg.speaker)
    transcript_check_state(cfg)  # "on" without a checkpoint stops here, before any work
    inputs = [Path(p) for p in inputs]
    output = Path(output)
    check_paths(inputs, output)
    review = read_review(review_file) if review_file is not None else {}
    scan: Scan = scan_inputs(inputs)
    if not scan.clips:
        raise InputError(
            f"{', '.join(map(str, inputs))}: no audio or transcript files found (looked for "
            f"{', '.join(_audio_exts())} and .lab/.normalized.txt/wav.scp); check --input"
        )
    with output_lock(output, "cosyml prepare"):
        _recover(output)
        staging, _ = _staging_paths(output)
        staging.mkdir(parents=True)
        result = _prepare_into(scan, inputs, output, staging, cfg, review, progress)
        _swap_in(output, staging, PRODUCED)
    for message in result.warnings:
        (warn or (lambda m: warnings.warn(m, stacklevel=2)))(message)
    return result


#: What a prepare run writes into its output folder (the rest of the folder is kept as it is).
PRODUCED = {"wavs", "train", "dev", "rejects.jsonl", "transcripts_review.tsv", "summary.json"}


def _prepare_into(
    scan: Scan,
    inputs: list[Path],
    output: Path,
    staging: Path,
    cfg: PrepareConfig,
    review: dict[str, str],
    progress: bool,
) -> PrepareResult:
    messages: list[str] = []
    run = _Run(cfg, staging, review)
    (staging / "wavs").mkdir()
    utts = stable_ids(scan.clips, cfg.speaker)
    for clip, utt in tqdm(list(zip(scan.clips, utts, strict=True)), desc="prepare", unit="file", disable=not progress):
        run.add(clip, utt)
    run._decoded = None

    needs_text = [p for p in run.pending if p.text is None]
    if needs_text and (not cfg.transcribe or not cfg.whisper_model):
        why = (
            "transcription is off (--no-transcribe)"
            if not cfg.transcribe
            else "no Whisper model given; pass --whisper PATH/TO/model.pt to transcribe them"
        )
        messages.append(f"{len(needs_text)} clip(s) have no transcript and were rejected as no_text: {why}")
        for p in needs_text:
            run.reject(p.source, "no_text", f"no transcript; {why}", p.utt, _span(p))
            run.drop(p)
        run.pending = [p for p in run.pending if p.text is not None]
        needs_text = []
    check = transcript_check_state(cfg)
    # Texts from the review file are the user's word: checking them again would undo a confirmation.
    to_check = [p for p in run.pending if p.text is not None and p.text_source != "review"] if check == "on" else []
    transcripts: dict[str, Transcript] = {}
    if needs_text or to_check:
        output.mkdir(parents=True, exist_ok=True)
        transcripts = _transcribe(run, needs_text + to_check, cfg.whisper_model, output / _WHISPER_CACHE, progress)
    transcribed = len(needs_text)

    review_rows: list[ReviewRow] = []
    verdicts = {p.utt: _transcript_verdict(p, transcripts[p.utt], cfg) for p in to_check}
    mismatched = [p for p in to_check if verdicts[p.utt].error > cfg.transcript_max_cer]
    if to_check and len(mismatched) > MAX_MISMATCH_SHARE * len(to_check):
        # Whisper disagreeing with most transcripts says more about Whisper (a toy or wrong checkpoint, a
        # wrong prepare.language) than about the data: never set aside most of a corpus on its word.
        messages.append(
            f"transcript check: Whisper disagrees with {len(mismatched)} of {len(to_check)} transcripts (more than "
            f"{MAX_MISMATCH_SHARE:.0%}), so nothing was set aside; check prepare.whisper_model and prepare.language"
        )
        mismatched = []
    for p in mismatched:
        verdict, t = verdicts[p.utt], transcripts[p.utt]
        run.reject(
            p.source,
            "transcript_mismatch",
            f"Whisper heard {verdict.hypothesis!r}: {verdict.metric} {verdict.error:.2f} > "
            f"prepare.transcript_max_cer={cfg.transcript_max_cer:g}; correct (or confirm) the text in "
            "transcripts_review.tsv, or empty it to drop the clip, and pass the file with --review",
            p.utt,
            _span(p),
        )
        review_rows.append(
            ReviewRow(
                p.utt, t.confidence, verdict.hypothesis, p.source, "transcript_mismatch", clean.clean_text(p.text or "")
            )
        )
        run.drop(p)
    dropped = {p.utt for p in mismatched}
    run.pending = [p for p in run.pending if p.utt not in dropped]

    entries: list[ManifestEntry] = []
    for p in run.pending:
        conf: float | None = None
        language = cfg.language if cfg.language not in ("", "auto") else None
        text, text_source = p.text, p.text_source
        if text is None:
            t = transcripts[p.utt]
            text, text_source, conf = t.text, "whisper", t.confidence
            language = language or t.language
            review_rows.append(ReviewRow(p.utt, t.confidence, clean.clean_text(t.text), p.source))
            if not clean.clean_text(text):
                run.reject(
                    p.source,
                    "empty_text",
                    "Whisper heard no words; write the text in the review file and pass it with --review",
                    p.utt,
                    _span(p),
                )
                run.drop(p)
                continue
            if t.confidence < cfg.min_confidence:
                run.reject(
                    p.source,
                    "low_confidence",
                    f"Whisper confidence {t.confidence:.2f} < min_confidence="
                    f"{cfg.min_confidence:g}; check the text in transcripts_review.tsv and pass it "
                    "with --review",
                    p.utt,
                    _span(p),
                )
                run.drop(p)
                continue
            if problem := clean.text_problem(clean.clean_text(text)):
                run.reject(
                    p.source,
                    problem[0],
                    f"Whisper's {problem[1]}; fix it in the review file and pass it with --review",
                    p.utt,
                    _span(p),
                )
                run.drop(p)
                continue
        text = clean.clean_text(text)
        entries.append(
            ManifestEntry(
                utt=p.utt,
                spk=cfg.speaker,
                wav=f"wavs/{p.utt}.wav",
                text=text,
                duration_s=round(p.num_samples / cfg.sample_rate, 3),
                split="train",
                source=p.source,
                text_source=text_source or "lab",
                language=language or clean.guess_language(text),
                confidence=None if conf is None else round(conf, 4),
                source_start_s=p.start_s,
                source_end_s=p.end_s,
            )
        )

    splits = assign_splits([e.utt for e in entries], cfg.seed, cfg.dev_ratio)
    entries = [_with_split(e, splits[e.utt]) for e in entries]
    dev_count = sum(1 for e in entries if e.split == "dev")
    if entries and dev_count == len(entries):
        raise InputError(
            f"all {dev_count} accepted clips fall in dev with prepare.dev_ratio={cfg.dev_ratio:g}; "
            "lower prepare.dev_ratio so some are left for training"
        )
    if entries and dev_count < cfg.min_dev:
        messages.append(
            f"only {dev_count} dev utterance(s) (prepare.min_dev={cfg.min_dev}): the split of each "
            "clip depends on its id alone, so raise prepare.dev_ratio (or change prepare.seed) to get "
            "more"
        )
    for split in SPLITS:
        write_split(staging / split, [e for e in entries if e.split == split], cfg.instruct)

    rejects = sorted(run.rejects, key=lambda r: (r.source, r.utt or ""))
    write_jsonl(staging / "rejects.jsonl", rejects)
    if review_rows:
        write_review(staging / "transcripts_review.tsv", review_rows)

    reason_counts = Counter(r.reason for r in rejects)
    result = PrepareResult(
        output=output.resolve(),
        entries=sorted(entries, key=lambda e: e.utt),
        rejects=rejects,
        counts={s: sum(1 for e in entries if e.split == s) for s in SPLITS},
        hours={s: round(sum(e.duration_s for e in entries if e.split == s) / 3600.0, 6) for s in SPLITS},
        reject_counts={r: reason_counts.get(r, 0) for r in REJECT_REASONS},
        transcribed=transcribed,
        transcript_check=check,
        transcripts_checked=len(to_check),
        ignored_files=scan.ignored,
        warnings=messages,
    )
    _write_summary(result, inputs, scan, staging / "summary.json")
    return result


def _audio_exts() -> list[str]:
    from cosyml.audio import AUDIO_EXTENSIONS

    return list(AUDIO_EXTENSIONS)


def _span(p: _Pending) -> tuple[float, float] | None:
    return (p.start_s, p.end_s) if p.start_s is not None and p.end_s is not None else None


def _with_split(e: ManifestEntry, split: str) -> ManifestEntry:
    from dataclasses import replace

    return replace(e, split=split)


def _write_summary(result: PrepareResult, inputs: list[Path], scan: Scan, path: Path) -> None:
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
        "transcript_check": result.transcript_check,
        "transcripts_checked": result.transcripts_checked,
        "transcript_mismatches": result.reject_counts.get("transcript_mismatch", 0),
        "ignored_files": result.ignored_files,
        "warnings": result.warnings,
    }
    atomic_write_text(path, json.dumps(summary, ensure_ascii=False, indent=2) + "\n")
