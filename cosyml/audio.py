"""The one place that reads, writes and resamples audio.

Waveforms are float32 numpy arrays in [-1, 1]: shape (num_samples,) for mono, (channels, num_samples)
for multichannel. Sample rates are in Hz. Reading goes through soundfile (wav, flac, ogg, mp3 via the
bundled libsndfile); formats soundfile cannot read (m4a, aac, wma, ...) are decoded by the `ffmpeg`
command when it is installed.

Resampling is a windowed-sinc polyphase filter with a Hann window (filter width 6 zero crossings,
roll-off 0.99). These are the defaults of the resampler upstream CosyVoice uses for its features, so
features computed from our resampled audio match upstream's on the same file.
"""

from __future__ import annotations

import functools
import io
import math
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from cosyml.errors import InputError

#: File extensions we treat as audio when scanning a corpus.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".m4a", ".aac", ".wma")


@dataclass(frozen=True)
class Audio:
    """Decoded audio. ``samples`` is float32, (num_samples,) or (channels, num_samples)."""

    samples: np.ndarray
    sample_rate: int

    @property
    def num_samples(self) -> int:
        return int(self.samples.shape[-1])

    @property
    def duration_s(self) -> float:
        return self.num_samples / self.sample_rate

    @property
    def num_channels(self) -> int:
        return 1 if self.samples.ndim == 1 else int(self.samples.shape[0])


def read_audio(source: str | Path | bytes) -> Audio:
    """Decode a file (or the bytes of one, as a parquet shard holds them) without changing rate or channels.

    Raises :class:`InputError` (one line naming the file) when it cannot be decoded.
    """
    if isinstance(source, bytes):
        try:
            data, sr = sf.read(io.BytesIO(source), dtype="float32", always_2d=True)  # (n, channels)
        except _SOUNDFILE_ERRORS as exc:
            raise InputError(f"audio bytes: cannot decode ({_first_line(exc)})") from None
        return _audio(data, sr)
    path = Path(source)
    if not path.is_file():
        raise InputError(f"{path}: no such audio file")
    try:
        # Through a Python file object: libsndfile cannot open names that are not UTF-8 (Latin-1 or GBK
        # bytes from a Windows zip), which Python holds as surrogate escapes.
        with open(path, "rb") as handle:
            data, sr = sf.read(handle, dtype="float32", always_2d=True)  # (n, channels)
    except (*_SOUNDFILE_ERRORS, OSError) as exc:
        decoded = _read_with_ffmpeg(path)
        if decoded is None:
            raise InputError(f"{path}: cannot decode audio ({_first_line(exc)}); re-encode it as wav or flac") from exc
        return decoded
    return _audio(data, sr)


_SOUNDFILE_ERRORS = (sf.LibsndfileError, RuntimeError, ValueError, TypeError)


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _audio(data: np.ndarray, sample_rate: int) -> Audio:
    """soundfile's (n, channels) -> :class:`Audio` ((n,) mono, else (channels, n))."""
    samples = data.T
    if samples.shape[0] == 1:
        samples = samples[0]
    return Audio(np.ascontiguousarray(samples), int(sample_rate))


def audio_info(source: str | Path | bytes) -> tuple[int, int] | None:
    """(frames, sample rate in Hz) from the header of a file (or of its bytes) without decoding it; None when
    soundfile cannot read the header (the ffmpeg formats, or a broken file that :func:`read_audio` will
    report)."""
    try:
        if isinstance(source, bytes):
            info = sf.info(io.BytesIO(source))
        else:
            with open(source, "rb") as handle:
                info = sf.info(handle)
    except (*_SOUNDFILE_ERRORS, OSError):
        return None
    return int(info.frames), int(info.samplerate)


def _read_with_ffmpeg(path: Path) -> Audio | None:
    """Decode formats libsndfile does not know, through the ffmpeg CLI (mono, native rate)."""
    if shutil.which("ffmpeg") is None or path.suffix.lower() in (".wav", ".flac", ".ogg"):
        return None
    probe = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-f", "f32le", "-ac", "1", "-"],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0 or not probe.stdout:
        return None
    rate = _ffprobe_sample_rate(path)
    if rate is None:
        return None
    return Audio(np.frombuffer(probe.stdout, dtype=np.float32).copy(), rate)


def _ffprobe_sample_rate(path: Path) -> int | None:
    if shutil.which("ffprobe") is None:
        return None
    result = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "a:0",
            "-show_entries",
            "stream=sample_rate",
            "-of",
            "csv=p=0",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    text = result.stdout.strip()
    return int(text) if text.isdigit() else None


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average channels: (channels, n) or (n,) -> (n,) float32."""
    if samples.ndim == 1:
        return samples.astype(np.float32, copy=False)
    return samples.mean(axis=0).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _sinc_kernel(orig: int, new: int, width_zc: int = 6, rolloff: float = 0.99) -> tuple[torch.Tensor, int]:
    """Polyphase Hann-windowed sinc kernel for the reduced ratio ``orig -> new``.

    Returns (kernel of shape (new, 1, 2*width + orig), width) in float32.
    """
    base = min(orig, new) * rolloff
    width = math.ceil(width_zc * orig / base)
    taps = torch.arange(-width, width + orig, dtype=torch.float64) / orig  # (K,)
    phases = -torch.arange(0, new, dtype=torch.float64)[:, None] / new  # (new, 1)
    t = ((phases + taps[None, :]) * base).clamp(-width_zc, width_zc)  # in zero crossings
    window = torch.cos(t * math.pi / width_zc / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / torch.where(t == 0, torch.ones_like(t), t))
    kernel = (sinc * window * (base / orig)).to(torch.float32)
    return kernel[:, None, :], width


def resample(samples: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Resample the last axis from ``orig_sr`` to ``new_sr`` Hz.

    Output length is ceil(n * new_sr / orig_sr). Works on (n,) or (channels, n) float32 arrays.
    """
    if orig_sr == new_sr:
        return samples.astype(np.float32, copy=False)
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    g = math.gcd(int(orig_sr), int(new_sr))
    orig, new = int(orig_sr) // g, int(new_sr) // g
    kernel, width = _sinc_kernel(orig, new)
    x = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    length = x.shape[-1]
    padded = torch.nn.functional.pad(x, (width, width + orig))[:, None, :]  # (B, 1, L)
    out = torch.nn.functional.conv1d(padded, kernel, stride=orig)  # (B, new, frames)
    out = out.transpose(1, 2).reshape(x.shape[0], -1)
    target = math.ceil(new * length / orig)
    out = out[:, :target]
    return out.reshape(*shape[:-1], out.shape[-1]).numpy()


def load_mono(path: str | Path, sample_rate: int) -> np.ndarray:
    """Read ``path``, mix to mono and resample to ``sample_rate``: (n,) float32."""
    audio = read_audio(path)
    return resample(to_mono(audio.samples), audio.sample_rate, sample_rate)


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write mono float samples as 16-bit PCM wav (values are clipped to [-1, 1])."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(samples, -1.0, 1.0), sample_rate, subtype="PCM_16")


def peak_dbfs(samples: np.ndarray) -> float:
    """Peak level in dBFS (-inf for digital silence)."""
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    return 20.0 * math.log10(peak) if peak > 0 else float("-inf")


def rms_dbfs(samples: np.ndarray) -> float:
    """RMS level in dBFS (-inf for digital silence)."""
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0
    return 20.0 * math.log10(rms) if rms > 0 else float("-inf")
