"""Text clean-up and audio guards: silence detection and trimming, clipping, loudness, hashing.

Audio arguments are float32 mono arrays (num_samples,) in [-1, 1] at ``sample_rate`` Hz. Energy is
measured on 20 ms frames with a 10 ms hop; a frame is speech when its RMS level is above both
``peak frame level - top_db`` and an absolute floor ``floor_dbfs``.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

import numpy as np

FRAME_S = 0.02
HOP_S = 0.01
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
LATIN = re.compile(r"[A-Za-z]")


#: Longest transcript accepted, in characters: a 30 s clip holds a few hundred at most.
MAX_TEXT_CHARS = 1000
#: ``<|...|>`` tokens are control tokens of the CosyVoice tokenizers (``<|endofprompt|>``, ``<|im_start|>``):
#: in a transcript they would reach the LLM as instructions, not as words.
SPECIAL_TOKEN = re.compile(r"<\|[^|<>\s]{1,40}\|>")
#: Escape sequences written out as text (``\n``, ``\x1b``, ``\u001b``) and ANSI colour codes.
ESCAPE_TEXT = re.compile(r"\\(?:[nrtab0e]|x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4})|\x1b\[[0-9;]*[A-Za-z]")
#: Median spectral flatness of the speech frames above which a clip is noise, not speech. Speech
#: (voiced, harmonic) measures below 0.05; white noise about 0.56 (measured on the toy corpus).
NOISE_FLATNESS = 0.35
#: |mean| above this is a DC offset (a faulty recording chain); it is removed before any analysis.
DC_OFFSET = 1e-3


def clean_text(raw: str) -> str:
    """NFC-normalise, strip and collapse whitespace (newlines included) to single spaces; punctuation
    is kept. Invisible format characters (zero-width spaces, BOMs) are dropped."""
    text = unicodedata.normalize("NFC", raw)
    text = "".join(c for c in text if unicodedata.category(c) != "Cf" or c in "\u200c\u200d")
    return " ".join(text.split())


def text_problem(text: str) -> tuple[str, str] | None:
    """(reason, detail) when a cleaned transcript cannot be training text, else None.

    Checked: control characters and escape sequences, ``<|...|>`` control tokens, length, and that
    it holds at least one letter or digit (a transcript of only punctuation or emoji says nothing).
    """
    if len(text) > MAX_TEXT_CHARS:
        return "text_too_long", (
            f"transcript has {len(text)} characters (at most {MAX_TEXT_CHARS}); is it the transcript of this clip?"
        )
    control = next((c for c in text if unicodedata.category(c) == "Cc"), None)
    if control is not None:
        return "bad_characters", (
            f"transcript holds the control character U+{ord(control):04X}; write only the spoken words"
        )
    if match := ESCAPE_TEXT.search(text):
        return "bad_characters", (
            f"transcript holds the escape sequence {match.group(0)!r}; write only the spoken words"
        )
    if match := SPECIAL_TOKEN.search(text):
        return "special_token", (
            f"transcript holds the control token {match.group(0)}, which the model would "
            "read as an instruction; remove it"
        )
    if not any(unicodedata.category(c)[0] in "LN" for c in text):
        return "no_words", "transcript has no letters or digits (only punctuation or symbols); write the spoken words"
    return None


def find_placeholder(text: str, pattern: str) -> str | None:
    """The first template placeholder in ``text`` (e.g. ``{NICKNAME}``), or None."""
    match = re.search(pattern, text) if pattern else None
    return match.group(0) if match else None


def guess_language(text: str) -> str:
    """ "zh" when the text has Han characters, "en" when it has Latin letters, else "unknown"."""
    if CJK.search(text):
        return "zh"
    if LATIN.search(text):
        return "en"
    return "unknown"


def frame_levels_db(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """RMS level per frame in dBFS: (num_frames,), num_frames = max(1, 1 + (n - frame) // hop)."""
    frame = max(1, int(FRAME_S * sample_rate))
    hop = max(1, int(HOP_S * sample_rate))
    x = samples.astype(np.float64, copy=False)
    if x.shape[0] < frame:
        x = np.pad(x, (0, frame - x.shape[0]))
    num = 1 + (x.shape[0] - frame) // hop
    power = np.cumsum(np.concatenate([[0.0], x * x]))
    starts = np.arange(num) * hop
    mean = (power[starts + frame] - power[starts]) / frame
    return 10.0 * np.log10(np.maximum(mean, 1e-20))


def speech_frames(levels_db: np.ndarray, top_db: float, floor_dbfs: float) -> np.ndarray:
    """Boolean (num_frames,): frames louder than max(peak - top_db, floor_dbfs)."""
    threshold = max(float(levels_db.max()) - top_db, floor_dbfs)
    return levels_db > threshold


@dataclass(frozen=True)
class TrimResult:
    """Sample range [start, end) kept from the input, and what the analysis saw."""

    start: int
    end: int
    speech_ratio: float  # share of frames that are speech
    speech_rms_dbfs: float  # RMS level over speech frames (-inf when there are none)


def trim_silence(
    samples: np.ndarray,
    sample_rate: int,
    top_db: float,
    floor_dbfs: float,
    pad_s: float,
    min_keep_s: float,
) -> TrimResult:
    """Cut leading and trailing silence, keeping ``pad_s`` around the speech.

    The rule that protects short clips: the result is never shorter than
    ``min(original length, min_keep_s)``; when trimming would go below that, the kept window is
    widened around the speech (into the silence) until it is that long.
    """
    n = samples.shape[0]
    levels = frame_levels_db(samples, sample_rate)
    speech = speech_frames(levels, top_db, floor_dbfs)
    if not speech.any():
        return TrimResult(0, n, 0.0, float("-inf"))
    hop = int(HOP_S * sample_rate)
    frame = int(FRAME_S * sample_rate)
    idx = np.flatnonzero(speech)
    pad = int(pad_s * sample_rate)
    start = max(0, int(idx[0]) * hop - pad)
    end = min(n, int(idx[-1]) * hop + frame + pad)
    keep = min(n, round(min_keep_s * sample_rate))
    if end - start < keep:
        grow = keep - (end - start)
        start = max(0, start - grow // 2)
        end = min(n, start + keep)
        start = max(0, end - keep)
    speech_power = np.mean(10.0 ** (levels[speech] / 10.0))
    return TrimResult(start, end, float(speech.mean()), float(10.0 * np.log10(speech_power)))


def spectral_flatness(samples: np.ndarray, sample_rate: int, frame_s: float = 0.032) -> float:
    """Median spectral flatness (geometric / arithmetic mean of the power spectrum, in [0, 1]) over the
    frames within 30 dB of the loudest one: near 0 for harmonic sound (speech), near 0.56 for white noise."""
    n = max(16, int(frame_s * sample_rate))
    x = samples.astype(np.float64, copy=False)
    if x.shape[0] < n:
        return 0.0
    frames = np.lib.stride_tricks.sliding_window_view(x, n)[:: n // 2] * np.hanning(n)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2 + 1e-12
    level = 10.0 * np.log10(power.mean(axis=1))
    loud = level > level.max() - 30.0
    flatness = np.exp(np.log(power).mean(axis=1)) / power.mean(axis=1)
    return float(np.median(flatness[loud]))


def remove_dc(samples: np.ndarray) -> np.ndarray:
    """Subtract the mean when it is a DC offset (|mean| > DC_OFFSET); other clips are returned as they are,
    so clean recordings keep their exact samples."""
    mean = float(np.mean(samples, dtype=np.float64)) if samples.size else 0.0
    return (samples - mean).astype(np.float32) if abs(mean) > DC_OFFSET else samples


def clipped_ratio(samples: np.ndarray, threshold: float) -> float:
    """Share of samples (all channels) with ``|x| >= threshold``."""
    if samples.size == 0:
        return 0.0
    return float(np.count_nonzero(np.abs(samples) >= threshold)) / samples.size


def normalise_peak(samples: np.ndarray, target_peak: float) -> np.ndarray:
    """Scale so the absolute peak equals ``target_peak`` (digital silence is returned unchanged)."""
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    if peak <= 0.0:
        return samples
    return (samples * (target_peak / peak)).astype(np.float32)


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> int16, the exact values a 16-bit wav of these samples holds."""
    return np.round(np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)


def audio_hash(pcm16: np.ndarray) -> str:
    """sha1 of the 16-bit samples: equal for clips whose decoded, normalised audio is identical."""
    return hashlib.sha1(np.ascontiguousarray(pcm16).tobytes()).hexdigest()
