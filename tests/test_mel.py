"""The flow mel front end against Matcha-TTS ``mel_spectrogram`` and librosa's Slaney filterbank.

Reference numbers come from ``scripts/parity/make_flow_fixtures.py`` (upstream venv: Matcha-TTS, librosa).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cosyml.errors import InputError
from cosyml.features.mel import MelConfig, mel_spectrogram, slaney_mel_filterbank
from cosyml.models.yaml_io import Tagged, read_model_yaml

FIXTURES = Path(__file__).parent / "fixtures" / "parity" / "flow"


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return torch.load(FIXTURES / "io.pt", weights_only=True)


@pytest.mark.parametrize(("tag", "fmax"), [("8000", 8000.0), ("none", None)])
def test_filterbank_matches_librosa_slaney(io: dict, tag: str, fmax: float | None) -> None:
    ours = slaney_mel_filterbank(24000, 1920, 80, 0.0, fmax)
    assert ours.dtype == np.float32 and ours.shape == (80, 961)
    np.testing.assert_allclose(ours, io[f"mel.basis.fmax_{tag}"].numpy(), rtol=0, atol=1e-9)


@pytest.mark.parametrize(("tag", "fmax"), [("8000", 8000.0), ("none", None)])
def test_mel_matches_matcha(io: dict, tag: str, fmax: float | None) -> None:
    wave = io["mel.wave"]
    mel = mel_spectrogram(wave, MelConfig(fmax=fmax))
    ref = io[f"mel.out.fmax_{tag}"]
    assert mel.shape == ref.shape == (1, 80, wave.shape[1] // 480)
    assert (mel - ref).abs().max().item() <= 1e-5


def test_frame_count_is_floor_of_hops_and_batch_shape() -> None:
    cfg = MelConfig()
    for n in (961, 1919, 4800, 4801, 24000 + 479):
        wave = torch.zeros(2, n).uniform_(-0.5, 0.5)
        mel = mel_spectrogram(wave, cfg)
        assert mel.shape == (2, 80, n // 480) == (2, 80, cfg.num_frames(n))
    assert mel_spectrogram(torch.zeros(4800)).shape == (1, 80, 10)
    # silence hits the clamp: log(1e-5)
    assert torch.allclose(mel_spectrogram(torch.zeros(1, 4800)), torch.full((1, 80, 10), float(np.log(1e-5))))


def test_too_short_clip_is_a_one_line_input_error() -> None:
    with pytest.raises(InputError, match="too short"):
        mel_spectrogram(torch.zeros(1, 500))


def test_config_from_model_yaml() -> None:
    cfg = MelConfig.from_model_config(read_model_yaml(FIXTURES / "tiny_flow.yaml"))
    assert cfg == MelConfig(fmax=8000.0)
    v3 = Tagged("name", "matcha.utils.audio.mel_spectrogram", {**cfg.__dict__, "fmax": None})
    assert MelConfig.from_yaml_node(v3).fmax is None
    assert MelConfig.from_yaml_node(v3) != cfg  # different cache key, different basis
