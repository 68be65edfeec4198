"""Text clean-up and audio guards: silence detection and trimming, clipping, loudness, hashing.

Audio arguments are float32 mono arrays (num_samples,) in [-1, 1] at ``sample_rate`` Hz. Energy is
measured on 20 ms frames with a 10 ms hop; a frame is speech when its RMS level is above both
``peak frame level - top_db`` and an absolute floor ``floor_dbfs``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np

FRAME_S = 0.02
HOP_S = 0.01
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
LATIN = re.compile(r"[A-Za-z]")


def clean_text(raw: str) -> str:
    """Strip and collapse whitespace (newlines included) to single spaces; punctuation is kept."""
    return " ".join(raw.split())


def find_placeholder(text: str, pattern: str) -> str | None:
    """The first template placeholder in ``text`` (e.g. ``{NICKNAME}``), or None."""
    match = re.search(pattern, text) if pattern else None
    return match.group(0) if match else None


def guess_language(text: str) -> str:
    """"zh" when the text has Han characters, "en" when it has Latin letters, else "unknown"."""
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
