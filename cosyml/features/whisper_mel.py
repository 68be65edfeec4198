"""Whisper log-mel spectrograms: the speech tokenizer's input, and the 30 s windows Whisper ASR decodes.

We call openai-whisper's own ``log_mel_spectrogram`` (a real dependency) one utterance at a time,
because its dynamic-range floor (max - 8) is taken over the whole input tensor: computing a padded batch
in one call would couple utterances. Per utterance: n_fft 400, hop 160 at 16 kHz, Hann window,
power spectrum, 128 Whisper mel filters, log10 clamped at 1e-10, floored at max - 8, then (x + 4) / 4.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

SAMPLE_RATE = 16000
HOP_LENGTH = 160
N_MELS = 128
WINDOW_FRAMES = 3000  # Whisper's 30 s input window, in frames


def num_frames(num_samples: int) -> int:
    """Frames for ``num_samples`` samples at 16 kHz: floor(N / 160)."""
    return num_samples // HOP_LENGTH


def _whisper_log_mel(waveform_16k: np.ndarray, n_mels: int, padding: int) -> torch.Tensor:
    """(N,) mono at 16 kHz and ``padding`` zero samples -> (n_mels, (N + padding) // 160) float32."""
    import whisper

    audio = torch.from_numpy(np.ascontiguousarray(waveform_16k, dtype=np.float32))
    with torch.no_grad():  # not inference_mode: the toy Whisper trains on these windows
        return whisper.log_mel_spectrogram(audio, n_mels=n_mels, padding=padding)


def log_mel(waveform_16k: np.ndarray, n_mels: int = N_MELS) -> np.ndarray:
    """(N,) float32 mono at 16 kHz -> (n_mels, N // 160) float32."""
    return _whisper_log_mel(waveform_16k, n_mels, padding=0).numpy()


@dataclass(frozen=True)
class WhisperWindows:
    """The two (n_mels, 3000) float32 log-mel windows openai-whisper's ``transcribe`` builds from a clip."""

    decode: torch.Tensor  # the clip's frames (at most 3000), then zero frames: what transcribe decodes
    language: torch.Tensor  # the first 3000 frames of the padded log-mel (silence at the floor after the
    # clip): what transcribe detects the language on


def whisper_windows(waveform_16k: np.ndarray, n_mels: int = N_MELS) -> WhisperWindows:
    """(N,) float32 mono at 16 kHz -> the first windows of ``whisper.transcribe``, built as it builds them.

    The log-mel is taken over the clip plus 30 s of zeros (``padding=N_SAMPLES``), so the dynamic-range
    floor (max - 8) is that of the clip; the decode window keeps the clip's N // 160 frames and pads with
    zeros (the normalised log-mel's 0, not silence), the language window keeps the padded silence frames.
    Decoding these windows (greedy, temperature 0) therefore gives what ``model.transcribe`` gives for a
    clip of at most 30 s; the evaluation's ASR and prepare's transcription both use this one function.
    """
    import whisper

    mel = _whisper_log_mel(waveform_16k, n_mels, padding=WINDOW_FRAMES * HOP_LENGTH)  # (n_mels, N // 160 + 3000)
    content = mel.shape[-1] - WINDOW_FRAMES
    return WhisperWindows(
        decode=whisper.pad_or_trim(mel[:, :content], WINDOW_FRAMES),
        language=whisper.pad_or_trim(mel, WINDOW_FRAMES),
    )


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
