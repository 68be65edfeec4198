"""Whisper 128-band log-mel spectrogram: the speech tokenizer's input.

We call openai-whisper's own ``log_mel_spectrogram`` (a real dependency) one utterance at a time,
because its dynamic-range floor (max - 8) is taken over the whole input tensor: computing a padded batch
in one call would couple utterances. Per utterance: n_fft 400, hop 160 at 16 kHz, Hann window,
power spectrum, 128 Whisper mel filters, log10 clamped at 1e-10, floored at max - 8, then (x + 4) / 4.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

SAMPLE_RATE = 16000
HOP_LENGTH = 160
N_MELS = 128


def num_frames(num_samples: int) -> int:
    """Frames for ``num_samples`` samples at 16 kHz: floor(N / 160)."""
    return num_samples // HOP_LENGTH


def log_mel(waveform_16k: np.ndarray, n_mels: int = N_MELS) -> np.ndarray:
    """(N,) float32 mono at 16 kHz -> (n_mels, N // 160) float32."""
    import whisper

    audio = torch.from_numpy(np.ascontiguousarray(waveform_16k, dtype=np.float32))
    with torch.inference_mode():
        mel = whisper.log_mel_spectrogram(audio, n_mels=n_mels)
    return mel.numpy()


def log_mel_batch(waveforms_16k: Sequence[np.ndarray], n_mels: int = N_MELS) -> list[np.ndarray]:
    """A list of (n_mels, T_i) log-mels, one per utterance (see module docstring for why not one call)."""
    return [log_mel(w, n_mels) for w in waveforms_16k]


def pad_mels(mels: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack (n_mels, T_i) arrays into (B, n_mels, T_max) float32 (zero padded) and lengths (B,) int32."""
    lengths = np.array([m.shape[1] for m in mels], dtype=np.int32)
    out = np.zeros((len(mels), mels[0].shape[0], int(lengths.max())), dtype=np.float32)
    for i, m in enumerate(mels):
        out[i, :, : m.shape[1]] = m
    return out, lengths
