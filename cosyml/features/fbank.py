"""Kaldi-compatible log mel filterbank (the CAM++ speaker-embedding input), batched over utterances.

Numbers match ``torchaudio.compliance.kaldi.fbank`` with upstream CosyVoice's settings (80 bins, dither 0,
16 kHz, 25 ms window, 10 ms shift, povey window, pre-emphasis 0.97, DC removal, ``snip_edges``, power
spectrum, natural log, no energy column), followed by per-utterance cepstral mean normalisation (CMN).
We do not depend on torchaudio: this is our own implementation, checked against torchaudio output in
``tests/fixtures/parity/frontend``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch

SAMPLE_RATE = 16000
FRAME_LENGTH = 400  # 25 ms at 16 kHz
FRAME_SHIFT = 160  # 10 ms at 16 kHz
FFT_SIZE = 512  # frame length rounded up to a power of two
PREEMPHASIS = 0.97
LOW_FREQ_HZ = 20.0
_EPS = torch.finfo(torch.float32).eps


def num_frames(num_samples: int) -> int:
    """Frames Kaldi's ``snip_edges`` framing yields for ``num_samples`` (0 when shorter than one window)."""
    return 0 if num_samples < FRAME_LENGTH else 1 + (num_samples - FRAME_LENGTH) // FRAME_SHIFT


def _mel(freq: torch.Tensor) -> torch.Tensor:
    return 1127.0 * torch.log(1.0 + freq / 700.0)


def _mel_scalar(freq: float) -> float:
    """:func:`_mel` of one frequency in float64 (the band edges; Kaldi computes them in double)."""
    return 1127.0 * math.log(1.0 + freq / 700.0)


@functools.lru_cache(maxsize=4)
def mel_banks(num_bins: int = 80, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Kaldi triangular mel filters on the mel scale 1127 ln(1 + f/700): (FFT_SIZE//2 + 1, num_bins).

    Filters span 20 Hz to Nyquist; the Nyquist FFT bin gets weight 0 (as Kaldi). Computed in float32
    in the same order of operations as torchaudio so the filters agree bit for bit.
    """
    nyquist = 0.5 * sample_rate
    mel_low, mel_high = _mel_scalar(LOW_FREQ_HZ), _mel_scalar(nyquist)
    delta = (mel_high - mel_low) / (num_bins + 1)
    index = torch.arange(num_bins).unsqueeze(1)  # (bins, 1)
    left = mel_low + index * delta
    center = mel_low + (index + 1.0) * delta
    right = mel_low + (index + 2.0) * delta
    fft_mel = _mel((sample_rate / FFT_SIZE) * torch.arange(FFT_SIZE // 2)).unsqueeze(0)  # (1, 256)
    up = (fft_mel - left) / (center - left)
    down = (right - fft_mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)  # (bins, 256)
    banks = torch.nn.functional.pad(banks, (0, 1))  # Nyquist bin -> 0: (bins, 257)
    return banks.T.contiguous().to(torch.float32)


@functools.lru_cache(maxsize=1)
def _povey_window() -> torch.Tensor:
    return torch.hann_window(FRAME_LENGTH, periodic=False, dtype=torch.float32).pow(0.85)


def fbank_batch(
    waveforms: torch.Tensor, lengths: torch.Tensor, num_mel_bins: int = 80
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log mel filterbank of a zero-padded batch.

    Args:
        waveforms: (B, N) float32 at 16 kHz in [-1, 1] (not int16-scaled), padded on the right.
        lengths: (B,) valid sample counts.
    Returns:
        feats (B, T, num_mel_bins) float32 natural-log mel energies (frames past an utterance's end
        are zero) and frame counts (B,) int64, T = max frame count.
    """
    waveforms = waveforms.to(torch.float32)
    frame_counts = torch.tensor([num_frames(int(n)) for n in lengths], dtype=torch.int64)
    max_frames = int(frame_counts.max()) if len(frame_counts) else 0
    batch = waveforms.shape[0]
    if max_frames == 0:
        return torch.zeros(batch, 0, num_mel_bins), frame_counts
    frames = waveforms.unfold(1, FRAME_LENGTH, FRAME_SHIFT)[:, :max_frames]  # (B, T, 400)
    frames = frames - frames.mean(dim=2, keepdim=True)  # DC removal per frame
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=2)  # first sample replicated
    frames = (frames - PREEMPHASIS * previous) * _povey_window()
    spectrum = torch.fft.rfft(frames, n=FFT_SIZE).abs().pow(2.0)  # (B, T, 257)
    energies = torch.matmul(spectrum, mel_banks(num_mel_bins))  # (B, T, bins)
    feats = torch.clamp(energies, min=_EPS).log()
    valid = torch.arange(max_frames)[None, :] < frame_counts[:, None]  # (B, T)
    return feats * valid[..., None], frame_counts


def cmn(feats: torch.Tensor, frame_counts: torch.Tensor) -> torch.Tensor:
    """Subtract each utterance's mean over its valid frames: (B, T, F) -> (B, T, F); padding stays 0."""
    valid = (torch.arange(feats.shape[1])[None, :] < frame_counts[:, None]).to(feats.dtype)[..., None]
    mean = (feats * valid).sum(dim=1, keepdim=True) / frame_counts.clamp(min=1)[:, None, None].to(feats.dtype)
    return (feats - mean) * valid


def campplus_features(waveforms_16k: Sequence[np.ndarray], num_mel_bins: int = 80) -> list[np.ndarray]:
    """CAM++ input for each utterance: Kaldi fbank + CMN, a list of (T_i, num_mel_bins) float32 arrays.

    ``waveforms_16k`` are mono float32 arrays at 16 kHz. An utterance shorter than one 25 ms window
    gets a (0, num_mel_bins) array. Utterances are computed one by one: on a CPU that is faster than
    one padded batch (the frame tensors stay in cache) and gives the same numbers.
    """
    out = []
    for wav in waveforms_16k:
        samples = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))
        if len(samples) < FRAME_LENGTH:
            out.append(np.zeros((0, num_mel_bins), dtype=np.float32))
            continue
        feats, counts = fbank_batch(samples[None], torch.tensor([len(samples)]), num_mel_bins)
        out.append(cmn(feats, counts)[0].numpy())
    return out
