"""Cheap checks that catch broken synthesis before anyone listens: silence, clipping, wrong length.

Flags (strings on each scored row):

- ``silent``: no sample above the silence floor (digital silence or near it);
- ``mostly_silence``: the share of 20 ms frames below the floor exceeds ``max_silence_ratio``;
- ``clipped``: the share of samples at or above ``clip_threshold`` exceeds ``max_clipped_ratio``;
- ``not_finite``: NaN or Inf samples;
- ``too_short`` / ``too_long``: duration / expected duration outside [min_ratio, max_ratio].

The expected duration is the reference recording's when there is one (the SFT set), else an estimate from
the text: Han/kana/Hangul characters at :data:`CHARS_PER_S`, other words at :data:`WORDS_PER_S`, plus
:data:`PAD_S` of leading and trailing silence. The rates are typical read speech (about 4.5 syllables/s
in Chinese, 160 words/min in English); the ratio is a sanity check, not a quality score.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

CHARS_PER_S = 4.5
WORDS_PER_S = 2.7
PAD_S = 0.3
FRAME_S = 0.02

_CJK_CHAR = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


@dataclass(frozen=True)
class CheckLimits:
    """Thresholds of :func:`check_audio` (defaults match ``EvaluateConfig``)."""

    silence_dbfs: float = -60.0
    max_silence_ratio: float = 0.8
    clip_threshold: float = 0.999
    max_clipped_ratio: float = 0.01
    min_duration_ratio: float = 0.5
    max_duration_ratio: float = 2.0


@dataclass(frozen=True)
class AudioCheck:
    """Measurements of one waveform and the flags they raise."""

    duration_s: float
    peak: float  # max |sample|
    silence_ratio: float  # share of 20 ms frames whose RMS is below the silence floor
    clipped_ratio: float  # share of samples with |x| >= clip_threshold
    flags: tuple[str, ...]


def expected_duration_s(text: str) -> float:
    """Seconds a normal reading of ``text`` takes (see module docstring)."""
    cjk = len(_CJK_CHAR.findall(text))
    words = len(_WORD.findall(_CJK_CHAR.sub(" ", text)))
    return PAD_S + cjk / CHARS_PER_S + words / WORDS_PER_S


def duration_flags(ratio: float, limits: CheckLimits) -> tuple[str, ...]:
    if not math.isfinite(ratio):
        return ()
    if ratio < limits.min_duration_ratio:
        return ("too_short",)
    if ratio > limits.max_duration_ratio:
        return ("too_long",)
    return ()


def check_audio(samples: np.ndarray, sample_rate: int, limits: CheckLimits | None = None) -> AudioCheck:
    """Measure a mono float waveform (num_samples,) in [-1, 1] at ``sample_rate`` Hz (native rate: resampling
    smears clipped peaks). Duration flags need the expected length: see :func:`duration_flags`."""
    limits = limits or CheckLimits()
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    duration = x.size / sample_rate if sample_rate > 0 else 0.0
    if x.size == 0:
        return AudioCheck(0.0, 0.0, 1.0, 0.0, ("silent",))
    if not np.all(np.isfinite(x)):
        return AudioCheck(duration, math.nan, math.nan, math.nan, ("not_finite",))
    peak = float(np.max(np.abs(x)))
    floor = 10.0 ** (limits.silence_dbfs / 20.0)
    frame = max(1, round(FRAME_S * sample_rate))
    usable = x[: x.size - x.size % frame] if x.size >= frame else np.pad(x, (0, frame - x.size))
    rms = np.sqrt(np.mean(usable.reshape(-1, frame) ** 2, axis=1))  # (frames,)
    silence_ratio = float(np.mean(rms < floor))
    clipped_ratio = float(np.mean(np.abs(x) >= limits.clip_threshold))
    flags: list[str] = []
    if peak < floor:
        flags.append("silent")
    elif silence_ratio > limits.max_silence_ratio:
        flags.append("mostly_silence")
    if clipped_ratio > limits.max_clipped_ratio:
        flags.append("clipped")
    return AudioCheck(duration, peak, silence_ratio, clipped_ratio, tuple(flags))
