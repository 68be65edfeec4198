"""Whisper transcription of clips that came without text, and the review file a user corrects.

Uses openai-whisper's own code on a local checkpoint (``whisper.load_model(<file>)``; a model name is
never passed, so nothing is downloaded). Clips go in as float32 16 kHz mono arrays, at most 30 s,
decoded greedily (temperature 0) in batches, on the windows ``whisper.transcribe`` builds
(:func:`cosyml.features.whisper_mel.whisper_windows`; the language, when not given, is detected on its
language window as ``transcribe`` does), so a clip's text is ``transcribe``'s. Confidence per clip is
``exp(avg_logprob) * (1 - no_speech_prob)`` in [0, 1]: the mean token probability, discounted by
Whisper's belief that there is no speech at all; it is 0 when the text is repetitive (gzip compression
ratio above 2.4, Whisper's own hallucination threshold).
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cosyml.errors import InputError

if TYPE_CHECKING:
    from cosyml.features.whisper_mel import WhisperWindows

WHISPER_RATE = 16000
#: The log-mel windows decoded (:func:`cosyml.features.whisper_mel.whisper_windows`); in the cache key.
WINDOWS = "transcribe-windows"


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str
    confidence: float  # in [0, 1]
    avg_logprob: float
    no_speech_prob: float


COMPRESSION_RATIO_LIMIT = 2.4
_SPECIAL = re.compile(r"<\|[^|>]*\|>")


def confidence(avg_logprob: float, no_speech_prob: float, compression_ratio: float = 0.0) -> float:
    if not math.isfinite(avg_logprob) or compression_ratio > COMPRESSION_RATIO_LIMIT:
        return 0.0
    no_speech = no_speech_prob if math.isfinite(no_speech_prob) else 0.0
    return float(min(1.0, max(0.0, math.exp(avg_logprob) * (1.0 - no_speech))))


class WhisperTranscriber:
    """A local Whisper checkpoint (loaded on first use); ``language`` None means detect per clip."""

    def __init__(
        self,
        checkpoint: str | Path,
        language: str | None = None,
        device: str = "auto",
        batch_size: int = 8,
        max_tokens: int = 0,
    ) -> None:
        path = Path(checkpoint)
        if not path.is_file():
            raise InputError(f"{path}: Whisper checkpoint not found; pass --whisper with a local .pt file")
        self.path = path
        self.requested_device = device
        self._model = None
        self.language = language
        self.batch_size = max(1, batch_size)
        self.max_tokens = max_tokens  # 0: Whisper's default (half the text context, 224)
        stat = path.stat()
        # cache key part: the model file and the windows it decodes (transcripts cached before prepare
        # decoded transcribe's windows came from 30 s of padded audio: never reuse them)
        self.model_id = f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}:{WINDOWS}"

    @property
    def model(self):  # whisper.model.Whisper (imported lazily)
        """The Whisper model, loaded on first use (a fully cached re-run never loads it)."""
        if self._model is None:
            import whisper

            from cosyml.devices import resolve_device

            device = resolve_device(self.requested_device)
            try:
                self._model = whisper.load_model(str(self.path), device=device)
            except Exception as exc:  # a bad file fails in torch.load or in load_state_dict
                raise InputError(
                    f"{self.path}: not a Whisper checkpoint ({type(exc).__name__}); pass an openai-whisper .pt file"
                ) from None
        return self._model

    def transcribe(self, clips: Sequence[np.ndarray]) -> list[Transcript]:
        """``clips``: float32 (num_samples,) at 16 kHz, each at most 30 s."""
        import torch
        import whisper

        from cosyml.features.whisper_mel import whisper_windows

        tokenizer = whisper.tokenizer.get_tokenizer(
            self.model.is_multilingual, num_languages=self.model.num_languages, task="transcribe"
        )
        options = whisper.DecodingOptions(
            task="transcribe",
            language=self.language,
            temperature=0.0,
            without_timestamps=True,
            # Whisper's default suppression (-1) plus <|notimestamps|>, which belongs in the prompt only.
            suppress_tokens=[-1, tokenizer.no_timestamps],
            fp16=self.model.device.type != "cpu",
            sample_len=self.max_tokens or None,
        )
        out: list[Transcript] = []
        for i in range(0, len(clips), self.batch_size):
            windows = [whisper_windows(c, self.model.dims.n_mels) for c in clips[i : i + self.batch_size]]
            languages = self._languages(windows, options.fp16)
            decode_mels = torch.stack([w.decode for w in windows]).to(self.model.device)  # (B, n_mels, 3000)
            results: dict[int, Any] = {}  # row -> whisper.DecodingResult
            for language in sorted(set(languages)):  # decode() takes one language per call
                rows = [k for k, code in enumerate(languages) if code == language]
                with torch.inference_mode():
                    decoded = whisper.decode(self.model, decode_mels[rows], replace(options, language=language))
                results.update(zip(rows, decoded, strict=True))
            for r in (results[k] for k in range(len(windows))):
                out.append(
                    Transcript(
                        text=_SPECIAL.sub("", r.text).strip(),
                        language=r.language or (self.language or "unknown"),
                        confidence=confidence(r.avg_logprob, r.no_speech_prob, r.compression_ratio),
                        avg_logprob=float(r.avg_logprob),
                        no_speech_prob=float(r.no_speech_prob),
                    )
                )
        return out

    def _languages(self, windows: Sequence[WhisperWindows], fp16: bool) -> list[str]:
        """The language of each clip: the forced one, else detected as ``transcribe`` detects it (on the
        language windows; an English-only model is "en")."""
        import torch

        if self.language is not None:
            return [self.language] * len(windows)
        if not self.model.is_multilingual:
            return ["en"] * len(windows)
        dtype = torch.float16 if fp16 else torch.float32
        mels = torch.stack([w.language for w in windows]).to(self.model.device, dtype)  # (B, n_mels, 3000)
        with torch.inference_mode():
            _, probs = self.model.detect_language(mels)
        return [max(p, key=p.get) for p in probs]


REVIEW_HEADER = ("utt", "confidence", "text", "source", "reason", "transcript")


@dataclass(frozen=True)
class ReviewRow:
    """One line of ``transcripts_review.tsv``: Whisper's text of a clip, for the user to correct."""

    utt: str
    confidence: float  # Whisper's, in [0, 1]
    text: str  # Whisper's text: what --review feeds back (edit it; empty it to drop the clip)
    source: str  # the input file
    reason: str = "transcribed"  # "transcribed" (the clip had no text) or "transcript_mismatch"
    transcript: str = ""  # the clip's own transcript (for transcript_mismatch)


def write_review(path: Path, rows: Sequence[ReviewRow]) -> None:
    """Tab-separated :data:`REVIEW_HEADER` columns with a header: mismatched transcripts first, then the
    least confident transcriptions."""
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        writer.writerow(REVIEW_HEADER)
        for r in sorted(rows, key=lambda r: (r.reason != "transcript_mismatch", r.confidence, r.utt)):
            writer.writerow((r.utt, f"{r.confidence:.3f}", r.text, r.source, r.reason, r.transcript))


def read_review(path: str | Path) -> dict[str, str]:
    """{utt: corrected text} from a review file (columns found by the header; ``utt`` and ``text``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: review file not found; pass the transcripts_review.tsv you edited")
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))
    except UnicodeDecodeError:
        raise InputError(f"{path}: review file is not UTF-8; save it as UTF-8 text") from None
    if not rows or "utt" not in rows[0] or "text" not in rows[0]:
        raise InputError(f"{path}: review file needs a header line with 'utt' and 'text' columns (tab-separated)")
    utt_col, text_col = rows[0].index("utt"), rows[0].index("text")
    out: dict[str, str] = {}
    for line_no, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(utt_col, text_col) and len(row) <= utt_col:
            raise InputError(f"{path}:{line_no}: expected tab-separated columns {', '.join(rows[0])}")
        out[row[utt_col].strip()] = row[text_col] if text_col < len(row) else ""
    return out
