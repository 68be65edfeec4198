"""The flow mel spectrogram: the target the flow learns and the prompt mel it is conditioned on.

One function serves training features and the inference prompt, so the two can never drift apart.
The numbers follow the ``feat_extractor`` node of the model-directory yaml (v2: n_fft 1920, 80 mels,
24 kHz, hop 480, window 1920, fmin 0, fmax 8000; v3 may leave ``fmax`` null, meaning sr/2):

1. reflect-pad (n_fft - hop) / 2 samples on both sides, then an STFT without centring, so a clip of
   N samples gives floor(N / hop) frames (50 frames/s at 24 kHz);
2. magnitude sqrt(re² + im² + 1e-9) (the epsilon keeps the gradient finite at zero);
3. a Slaney-style mel filterbank (area-normalised triangles on the Slaney mel scale, as librosa builds
   by default), which we construct here so we do not depend on librosa;
4. natural log of the mel energies clamped at 1e-5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cosyml.errors import InputError, ModelDirError


@dataclass(frozen=True)
class MelConfig:
    """Flow mel parameters. Sizes are in samples, frequencies in Hz; ``fmax=None`` means sr/2."""

    n_fft: int = 1920
    num_mels: int = 80
    sampling_rate: int = 24000
    hop_size: int = 480
    win_size: int = 1920
    fmin: float = 0.0
    fmax: float | None = 8000.0
    center: bool = False

    @classmethod
    def from_yaml_node(cls, node: Any) -> MelConfig:
        """Read a ``feat_extractor`` node (a :class:`~cosyml.models.yaml_io.Tagged` or a plain mapping)."""
        args = node.kwargs() if hasattr(node, "kwargs") else dict(node or {})
        try:
            fmax = args.get("fmax", cls.fmax)
            return cls(
                n_fft=int(args.get("n_fft", cls.n_fft)),
                num_mels=int(args.get("num_mels", cls.num_mels)),
                sampling_rate=int(args.get("sampling_rate", cls.sampling_rate)),
                hop_size=int(args.get("hop_size", cls.hop_size)),
                win_size=int(args.get("win_size", cls.win_size)),
                fmin=float(args.get("fmin", cls.fmin)),
                fmax=None if fmax is None else float(fmax),
                center=bool(args.get("center", cls.center)),
            )
        except (TypeError, ValueError) as exc:
            raise ModelDirError(f"model yaml 'feat_extractor': bad value ({exc}); restore the official yaml") from None

    @classmethod
    def from_model_config(cls, config: dict[str, Any]) -> MelConfig:
        """The mel config of a parsed model yaml (``read_model_yaml``), from its ``feat_extractor`` key."""
        node = config.get("feat_extractor")
        if node is None:
            raise ModelDirError("model yaml: missing 'feat_extractor'; restore the official yaml")
        return cls.from_yaml_node(node)

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for ``num_samples`` samples (floor(N / hop) for the official settings)."""
        if self.center:
            return (num_samples + 2 * self._pad) // self.hop_size + 1
        return (num_samples + 2 * self._pad - self.n_fft) // self.hop_size + 1

    @property
    def _pad(self) -> int:
        return (self.n_fft - self.hop_size) // 2


# ------------------------------------------------------------------------------------------ filterbank


def _hz_to_slaney_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney mel scale: linear (3 mels per 200 Hz) below 1 kHz, logarithmic (27 mels per ln 6.4) above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear_step = 200.0 / 3
    knee_hz, knee_mel = 1000.0, 1000.0 / linear_step
    log_step = math.log(6.4) / 27.0
    mel = hz / linear_step
    above = hz >= knee_hz
    return np.where(above, knee_mel + np.log(np.maximum(hz, knee_hz) / knee_hz) / log_step, mel)


def _slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear_step = 200.0 / 3
    knee_hz, knee_mel = 1000.0, 1000.0 / linear_step
    log_step = math.log(6.4) / 27.0
    hz = linear_step * mel
    return np.where(mel >= knee_mel, knee_hz * np.exp(log_step * (mel - knee_mel)), hz)


def slaney_mel_filterbank(
    sampling_rate: int, n_fft: int, num_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """Triangular mel filters, area-normalised (Slaney), float32 of shape (num_mels, n_fft // 2 + 1).

    Band edges are ``num_mels + 2`` points equally spaced on the Slaney mel scale between fmin and
    fmax (sr/2 when None); filter i rises from edge i to edge i+1 and falls to edge i+2, and is scaled
    by 2 / (edge[i+2] - edge[i]) Hz so every filter has the same area.
    """
    fmax = sampling_rate / 2.0 if fmax is None else float(fmax)
    bin_hz = np.arange(1 + n_fft // 2) * (1.0 / (n_fft * (1.0 / sampling_rate)))
    mel_edges = np.linspace(_hz_to_slaney_mel(fmin), _hz_to_slaney_mel(fmax), num_mels + 2)
    edges_hz = _slaney_mel_to_hz(mel_edges)
    widths = np.diff(edges_hz)
    distance = edges_hz[:, None] - bin_hz[None, :]  # (num_mels + 2, bins), edge minus bin frequency
    filters = np.zeros((num_mels, bin_hz.size), dtype=np.float32)
    for i in range(num_mels):
        rising = -distance[i] / widths[i]
        falling = distance[i + 2] / widths[i + 1]
        filters[i] = np.maximum(0.0, np.minimum(rising, falling))
    area_norm = 2.0 / (edges_hz[2 : num_mels + 2] - edges_hz[:num_mels])
    filters *= area_norm[:, None]
    return filters


_BASIS_CACHE: dict[tuple[MelConfig, str], tuple[torch.Tensor, torch.Tensor]] = {}


def _basis_and_window(config: MelConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    key = (config, str(device))
    if key not in _BASIS_CACHE:
        basis = slaney_mel_filterbank(config.sampling_rate, config.n_fft, config.num_mels, config.fmin, config.fmax)
        _BASIS_CACHE[key] = (
            torch.from_numpy(basis).to(device),
            torch.hann_window(config.win_size, device=device),
        )
    return _BASIS_CACHE[key]


# ------------------------------------------------------------------------------------------ spectrogram


def mel_spectrogram(waveform: torch.Tensor, config: MelConfig | None = None) -> torch.Tensor:
    """Log-mel features of ``waveform``.

    Args:
        waveform: float samples in [-1, 1] at ``config.sampling_rate``, shape (B, N) or (N,).
        config: the model directory's ``feat_extractor`` settings (default: CosyVoice2's).

    Returns:
        float32 (B, num_mels, T) with T = floor(N / hop) for the official settings (a (N,) input gives B=1).
    """
    config = config or MelConfig()
    wave = waveform.float()
    if wave.dim() == 1:
        wave = wave.unsqueeze(0)
    if wave.dim() != 2:
        raise InputError(f"mel_spectrogram: expected a (batch, samples) waveform, got shape {tuple(waveform.shape)}")
    pad = config._pad
    if wave.shape[1] <= pad or config.num_frames(wave.shape[1]) < 1:
        raise InputError(
            f"mel_spectrogram: clip of {wave.shape[1]} samples is too short for one mel frame "
            f"(needs at least {max(pad + 1, config.n_fft - 2 * pad)} samples at {config.sampling_rate} Hz)"
        )
    basis, window = _basis_and_window(config, wave.device)
    padded = torch.nn.functional.pad(wave.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    spec = torch.stft(
        padded,
        config.n_fft,
        hop_length=config.hop_size,
        win_length=config.win_size,
        window=window,
        center=config.center,
        pad_mode="reflect",
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    power = torch.view_as_real(spec).pow(2).sum(-1)
    magnitude = torch.sqrt(power + 1e-9)
    return torch.log(torch.clamp(torch.matmul(basis, magnitude), min=1e-5))
