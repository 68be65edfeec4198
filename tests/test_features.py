"""Front-end features against upstream numbers (fixtures from scripts/parity/make_frontend_fixtures.py).

Tolerances (fp32): resampling 1e-5 absolute; Kaldi fbank + CMN 2e-3 absolute on log energies (float32
FFT ordering differs from torchaudio's; typical max error is ~1e-4); Whisper log-mel: a per-element bound
from the fp32 error analysis of its FFT, filterbank and log (``_whisper_fp32_bound``); CAM++
embeddings 1e-4 on the same ONNX file; speech tokens exactly equal.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cosyml.audio import read_audio, resample, to_mono
from cosyml.features.campplus import SpeakerEncoder
from cosyml.features.fbank import campplus_features, mel_banks, num_frames
from cosyml.features.speech_tokens import (
    SpeechTokenizer,
    align_tokens_and_mel,
    flow_mel_frames,
    num_tokens,
    usable_token_count,
)
from cosyml.features.whisper_mel import log_mel, log_mel_batch

FIXTURES = Path(__file__).parent / "fixtures" / "parity" / "frontend"
CLIPS = ("a16k", "b24k_stereo", "c22k")


@pytest.fixture(scope="module")
def upstream() -> dict:
    return json.loads((FIXTURES / "upstream.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "features.npz") as data:
        return {k: data[k] for k in data.files}


def _mono(name: str) -> tuple[np.ndarray, int]:
    audio = read_audio(FIXTURES / f"{name}.wav")
    return to_mono(audio.samples), audio.sample_rate


def test_fixture_records_upstream_commit(upstream):
    assert upstream["meta"]["upstream_commit"].startswith("ace7c47")


@pytest.mark.parametrize("name", CLIPS)
def test_resample_matches_torchaudio(name, arrays):
    mono, sr = _mono(name)
    ours = resample(mono, sr, 16000)
    ref = arrays[f"{name}.resampled_16k"]
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_resample_up_matches_torchaudio(arrays):
    mono, sr = _mono("a16k")
    ours = resample(mono, sr, 24000)
    ref = arrays["a16k.resampled_24k"]
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", CLIPS)
def test_kaldi_fbank_cmn_matches_torchaudio(name, arrays):
    wav16 = arrays[f"{name}.resampled_16k"]
    ours = campplus_features([wav16])[0]
    ref = arrays[f"{name}.fbank_cmn"]
    assert ours.shape == ref.shape == (num_frames(len(wav16)), 80)
    assert np.abs(ours - ref).max() < 2e-3


def test_fbank_batch_equals_one_at_a_time(arrays):
    waves = [arrays[f"{n}.resampled_16k"] for n in CLIPS]
    together = campplus_features(waves)
    for wav, feat in zip(waves, together, strict=True):
        np.testing.assert_array_equal(feat, campplus_features([wav])[0])


def test_mel_banks_shape_and_nyquist_zero():
    banks = mel_banks(80)
    assert banks.shape == (257, 80)
    assert torch.all(banks[-1] == 0) and torch.all(banks >= 0)


def _whisper_fp32_bound(wav16: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """How far two fp32 computations of Whisper's log-mel (different CPUs, FFT libraries, summation
    orders) may differ, element by element: ``(n_mels, T)``.

    Whisper: ``out = (max(log10(M), max - 8) + 4) / 4`` with ``M = F @ |STFT(x)|^2`` (n = 400, Hann,
    201 bins, filters ``F``). Per implementation, with ``u = eps32 / 2``:

    - FFT (Higham, *Accuracy and Stability*, Thm 24.2): ``||dX||_2 <= log2(n) * eta * ||X||_2`` with
      ``eta = mu + gamma_4 (sqrt2 + mu) ~ 7u``; ``||X||_2^2 = n * sum(frame^2)`` (Parseval). Then
      ``dM_j = sum_k F_jk 2 |X_k| |dX_k| <= 2 ||dX|| sqrt(W_j M_j)`` (Cauchy-Schwarz, ``W_j = sum_k F_jk``),
      so ``dM_j / M_j <= 14 log2(n) u ||X|| sqrt(W_j / M_j)``: tight for loud bands, large for bands far
      below the frame's energy (which the floor at max - 8 lets through down to 1e-8 of the peak);
    - the filterbank product (positive terms): ``gamma_201 ~ 201 u`` relative;
    - log10 then ``(x + 4) / 4``: ``d out = dM / (M ln 10) / 4`` plus ~1 ulp of ``log10 M`` and 2 of ``out``.

    Two implementations: twice that. ``M`` is recovered from ``ref`` (a floored value gives a smaller ``M``
    and so a larger, still valid, bound); frame energies come from ``wav16`` in float64. Loud bands get
    ~4e-6, the quietest allowed ones ~4e-3; a wrong window, filterbank or floor moves values by >1e-2.
    """
    import whisper

    n_fft, hop = 400, 160
    x = np.asarray(wav16, dtype=np.float64)
    padded = np.pad(x, n_fft // 2, mode="reflect")  # torch.stft(center=True), as Whisper
    frames = len(x) // hop  # Whisper drops the last STFT frame
    index = np.arange(frames)[:, None] * hop + np.arange(n_fft)[None, :]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    norm_x = np.sqrt(n_fft * ((padded[index] * window) ** 2).sum(-1))  # ||X||_2 of the full DFT, (T,)
    weights = whisper.audio.mel_filters("cpu", ref.shape[0]).double().numpy().sum(-1)  # W_j, (n_mels,)
    mel = 10.0 ** (4.0 * ref.astype(np.float64) - 4.0)
    u = np.finfo(np.float32).eps / 2
    rel_mel = 14 * np.log2(n_fft) * u * norm_x[None, :] * np.sqrt(weights[:, None] / mel) + (n_fft // 2 + 1) * u
    one = rel_mel / (4 * np.log(10)) + u * (np.abs(np.log10(mel)) / 4 + 2 * np.abs(ref) + 2)
    return 2 * one


@pytest.mark.parametrize("name", CLIPS)
def test_whisper_log_mel_matches_upstream(name, arrays):
    wav16 = arrays[f"{name}.resampled_16k"]
    ours = log_mel(wav16)
    ref = arrays[f"{name}.whisper_mel"]
    assert ours.shape == ref.shape == (128, len(wav16) // 160)
    bound = _whisper_fp32_bound(wav16, ref)
    err = np.abs(ours.astype(np.float64) - ref)
    worst = np.unravel_index(np.argmax(err / bound), err.shape)
    assert np.all(err <= bound), f"log-mel differs by {err[worst]:.3g} at {worst}, bound there {bound[worst]:.3g}"


def test_whisper_fp32_bound_is_tight_where_the_signal_is():
    """The bound must not hide a real difference: within 10 dB of the peak it stays under 2e-5, and over
    90% of the elements it is under 1e-3, far below what a wrong window, filterbank or floor changes."""
    with np.load(FIXTURES / "features.npz") as data:
        wav16, ref = data["a16k.resampled_16k"], data["a16k.whisper_mel"]
    bound = _whisper_fp32_bound(wav16, ref)
    loud = ref >= ref.max() - 0.25  # out is log10 / 4: 0.25 = 10 dB
    assert loud.sum() > 100 and bound[loud].max() < 2e-5
    assert (bound < 1e-3).mean() > 0.9


def test_whisper_batch_keeps_per_utterance_floor(arrays):
    loud = arrays["a16k.resampled_16k"]
    quiet = 1e-3 * arrays["c22k.resampled_16k"]
    mels = log_mel_batch([loud, quiet])
    np.testing.assert_array_equal(mels[1], log_mel(quiet))


@pytest.fixture(scope="module")
def encoder() -> SpeakerEncoder:
    return SpeakerEncoder(FIXTURES / "campplus.onnx", device="cpu", num_threads=1)


@pytest.fixture(scope="module")
def tokenizer() -> SpeechTokenizer:
    return SpeechTokenizer(FIXTURES / "speech_tokenizer_v2.onnx", device="cpu", num_threads=1)


def _wav16(name: str) -> np.ndarray:
    mono, sr = _mono(name)
    return resample(mono, sr, 16000)


def test_embeddings_match_upstream_frontend(encoder, upstream):
    feats = campplus_features([_wav16(n) for n in CLIPS])
    ours = encoder.embed(feats, batch_size=8)
    for i, name in enumerate(CLIPS):
        np.testing.assert_allclose(ours[i], np.array(upstream["embeddings"][name]), atol=1e-4, rtol=0)


def test_speech_tokens_match_upstream_frontend(tokenizer, upstream):
    mels = log_mel_batch([_wav16(n) for n in CLIPS])
    ours = tokenizer.tokenize(mels, batch_size=8)
    for i, name in enumerate(CLIPS):
        assert ours[i] == upstream["speech_tokens"][name]
        assert len(ours[i]) == num_tokens(mels[i].shape[1])


def test_campplus_padding_is_detected_as_inexact_and_batching_is_exact(encoder):
    # The CAM++ stand-in pools over all frames like the real one, so padded batches would differ.
    assert encoder.padding_exact is False
    rng = np.random.default_rng(3)
    feats = [rng.standard_normal((n, 80)).astype(np.float32) for n in (50, 80, 50, 120, 80)]
    batched = encoder.embed(feats, batch_size=4)
    single = np.stack([encoder.embed([f])[0] for f in feats])
    np.testing.assert_array_equal(batched, single)
    naive = encoder._run_padded([feats[0], feats[3]])[0]  # what padding would have produced
    assert not np.allclose(naive, single[0], atol=1e-4)


def test_tokenizer_padded_batch_equals_one_at_a_time(tokenizer):
    assert tokenizer.padding_exact is True
    rng = np.random.default_rng(4)
    mels = [rng.standard_normal((128, n)).astype(np.float32) for n in (37, 100, 101, 64, 3)]
    batched = tokenizer.tokenize(mels, batch_size=5)
    single = [tokenizer.tokenize([m])[0] for m in mels]
    assert batched == single
    assert [len(t) for t in batched] == [num_tokens(m.shape[1]) for m in mels]
    assert all(0 <= t < 6561 for ids in batched for t in ids)


def test_token_count_formula():
    assert [num_tokens(t) for t in (1, 2, 3, 4, 5, 100, 101, 3000)] == [1, 1, 1, 1, 2, 25, 26, 750]


def test_flow_frames_and_trim_rule():
    assert flow_mel_frames(24000, 24000) == 50
    assert flow_mel_frames(16000 + 10, 16000) == 50  # ceil(16010 * 1.5) = 24015 -> 50
    assert usable_token_count(85, 43) == 42 and usable_token_count(86, 40) == 40
    feat = torch.zeros(85, 80)
    trimmed_feat, trimmed_tokens = align_tokens_and_mel(feat, list(range(43)))
    assert trimmed_feat.shape[0] == 84 and len(trimmed_tokens) == 42
    trimmed_feat, trimmed_tokens = align_tokens_and_mel(feat, torch.arange(30))
    assert trimmed_feat.shape[0] == 60 and trimmed_tokens.shape[0] == 30
