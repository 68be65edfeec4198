"""Helpers for the data-stage tests: synthetic speech-like audio and tiny corpora on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 16000


def syllables(seconds: float, rate: int = RATE, seed: int = 0, level: float = 0.3) -> np.ndarray:
    """Speech-like float32 (n,): 0.18 s harmonic bursts (random pitch 120-300 Hz) with 0.06 s gaps."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    out = np.zeros(n, np.float32)
    burst, gap = int(0.18 * rate), int(0.06 * rate)
    t = np.arange(burst) / rate
    envelope = np.sin(np.pi * t / t[-1]) ** 0.5
    pos = 0
    while pos + burst <= n:
        f0 = rng.uniform(120, 300)
        wave = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.28)) / k for k in range(1, 6))
        out[pos : pos + burst] = (wave * envelope).astype(np.float32)
        pos += burst + gap
    peak = float(np.abs(out).max()) or 1.0
    return out / peak * level


def silence(seconds: float, rate: int = RATE, seed: int = 1, level_db: float = -80.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * rate)) * 10 ** (level_db / 20)).astype(np.float32)


def utterance(
    speech_s: float, lead_s: float = 0.2, tail_s: float = 0.2, seed: int = 0, level: float = 0.3, rate: int = RATE
) -> np.ndarray:
    return np.concatenate(
        [silence(lead_s, rate, seed + 100), syllables(speech_s, rate, seed, level), silence(tail_s, rate, seed + 200)]
    )


def write(
    path: Path, samples: np.ndarray, rate: int = RATE, text: str | None = None, text_suffix: str = ".lab", **kwargs
) -> Path:
    """Write audio (format from the extension) and optionally a transcript next to it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, rate, **kwargs)
    if text is not None:
        stem = path.name[: -len(path.suffix)]
        (path.parent / f"{stem}{text_suffix}").write_text(text, encoding="utf-8")
    return path


def lab_corpus(folder: Path, count: int, start_seed: int = 0, prefix: str = "vo") -> list[Path]:
    """``count`` clean wav+lab clips of 1.0-1.6 s speech."""
    return [
        write(
            folder / f"{prefix}_{i:03d}.wav",
            utterance(1.0 + 0.1 * (i % 7), seed=start_seed + i),
            text=f"第{i}句测试文本。",
        )
        for i in range(count)
    ]
