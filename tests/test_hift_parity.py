"""HiFT parity with upstream CosyVoice ``HiFTGenerator`` on tiny random weights.

Fixtures come from ``scripts/parity/make_hift_fixtures.py`` (upstream commit in ``meta.json``). Upstream
draws its source noise from the global RNG right after ``torch.manual_seed(seed)``; we reproduce those
draws with ``torch.Generator().manual_seed(seed)`` or pass the stored draws explicitly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cosyml.models.hift import HiFT, SourceNoise
from cosyml.models.modeldir import load_strict
from cosyml.models.vocoder import build_hift
from cosyml.models.yaml_io import Tagged

FIXTURES = Path(__file__).parent / "fixtures" / "parity" / "hift"
# float32 sines of a phase integrated over thousands of samples drift by a few ulp across torch builds.
ATOL = 5e-5  # measured drift vs torch 2.9.1 upstream: <= 5.2e-6 (source), <= 2.6e-6 (wav)


def _meta() -> dict:
    return json.loads((FIXTURES / "meta.json").read_text())


def _hift_node(meta: dict) -> Tagged:
    args = dict(meta["hift"])
    f0_args = args.pop("f0_predictor")
    args["f0_predictor"] = Tagged("new", "cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor", f0_args)
    return Tagged("new", "cosyvoice.hifigan.generator.HiFTGenerator", args)


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return torch.load(FIXTURES / "io.pt", weights_only=True)


@pytest.fixture(scope="module")
def model() -> HiFT:
    torch.set_num_threads(1)
    hift = build_hift({"hift": _hift_node(_meta())})
    hift.load_state_dict(torch.load(FIXTURES / "hift_tiny.pt", weights_only=True), strict=True)
    return hift.eval()


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_f0_matches_upstream(model: HiFT, io: dict) -> None:
    with torch.inference_mode():
        f0 = model.f0_predictor(io["mel"])
    assert f0.shape == io["f0"].shape
    torch.testing.assert_close(f0, io["f0"], atol=1e-4, rtol=1e-5)
    voiced = io["f0"] > _meta()["hift"]["nsf_voiced_threshold"]
    assert voiced.any() and (~voiced).any(), "fixture must exercise voiced and unvoiced frames"


def test_source_and_wav_match_upstream_with_stored_draws(model: HiFT, io: dict) -> None:
    noise = SourceNoise(initial_phase=io["initial_phase"], additive=io["additive_noise"])
    wav, source = model.inference(io["mel"], noise=noise)
    assert wav.shape == (1, io["mel"].shape[2] * 480)
    torch.testing.assert_close(source, io["source"], atol=ATOL, rtol=0)
    torch.testing.assert_close(wav, io["wav"], atol=ATOL, rtol=0)


def test_generator_reproduces_upstream_global_seed(model: HiFT, io: dict) -> None:
    seed = _meta()["seeds"]["main"]
    wav, source = model.inference(io["mel"], generator=_seeded(seed))
    torch.testing.assert_close(source, io["source"], atol=ATOL, rtol=0)
    torch.testing.assert_close(wav, io["wav"], atol=ATOL, rtol=0)
    other, _ = model.inference(io["mel"], generator=_seeded(seed + 1))
    assert not torch.allclose(other, io["wav"], atol=1e-4), "the draws must matter"


def test_streaming_cache_source_matches_upstream(model: HiFT, io: dict) -> None:
    seed = _meta()["seeds"]["stream"]
    cache = io["cache_source"]
    wav, source = model.inference(io["mel_stream"], cache_source=cache, generator=_seeded(seed))
    assert torch.equal(source[:, :, : cache.shape[2]], cache)
    torch.testing.assert_close(source, io["source_stream"], atol=ATOL, rtol=0)
    torch.testing.assert_close(wav, io["wav_stream"], atol=ATOL, rtol=0)


def test_batch_matches_upstream(model: HiFT, io: dict) -> None:
    seed = _meta()["seeds"]["batch"]
    wav, source = model.inference(io["mel_batch"], generator=_seeded(seed))
    torch.testing.assert_close(source, io["source_batch"], atol=ATOL, rtol=0)
    torch.testing.assert_close(wav, io["wav_batch"], atol=ATOL, rtol=0)


def test_legacy_checkpoint_loads_strictly_and_matches(io: dict) -> None:
    legacy = torch.load(FIXTURES / "hift_tiny_legacy.pt", weights_only=True)
    assert all(k.startswith("generator.") for k in legacy)
    assert any(k.endswith(".weight_g") for k in legacy)
    hift = build_hift({"hift": _hift_node(_meta())}).eval()
    load_strict(hift, FIXTURES / "hift_tiny_legacy.pt", part="hift")  # the model-dir loader path
    noise = SourceNoise(initial_phase=io["initial_phase"], additive=io["additive_noise"])
    wav, _ = hift.inference(io["mel"], noise=noise)
    torch.testing.assert_close(wav, io["wav"], atol=ATOL, rtol=0)


def test_folding_weight_norm_keeps_output(io: dict) -> None:
    hift = build_hift({"hift": _hift_node(_meta())}).eval()
    hift.load_state_dict(torch.load(FIXTURES / "hift_tiny.pt", weights_only=True), strict=True)
    noise = SourceNoise(initial_phase=io["initial_phase"], additive=io["additive_noise"])
    before, _ = hift.inference(io["mel"], noise=noise)
    hift.fold_weight_norm()
    assert not any("parametrizations" in k for k in hift.state_dict())
    after, _ = hift.inference(io["mel"], noise=noise)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)
    torch.testing.assert_close(after, io["wav"], atol=ATOL, rtol=0)
