"""Our LLM against golden outputs of upstream CosyVoice (scripts/parity/make_llm_fixtures.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config

from cosyml.models.generation import SamplingParams
from cosyml.models.llm import LLMConfig, Qwen2LM, label_smoothing_loss, token_accuracy
from cosyml.models.modeldir import load_strict

FIXTURES = Path(__file__).parent / "fixtures" / "parity" / "llm"
META = json.loads((FIXTURES / "meta.json").read_text())
ATOL = 1e-5


def build(version: str) -> Qwen2LM:
    qwen = Qwen2Config(**META["qwen_config"])
    qwen._attn_implementation = "sdpa"
    config = LLMConfig(
        version=version,  # type: ignore[arg-type]
        llm_input_size=qwen.hidden_size,
        llm_output_size=qwen.hidden_size,
        speech_token_size=META["speech_token_size"],
        mix_ratio=tuple(META["mix_ratio"]),  # type: ignore[arg-type]
        sampling=SamplingParams(**META["sampling"]),
    )
    torch.manual_seed(0)
    model = Qwen2LM(config, qwen)
    load_strict(model, FIXTURES / f"{version}_weights.pt", part="llm")
    return model.eval()


@pytest.fixture(scope="module", params=["v2", "v3"])
def version_model(request: pytest.FixtureRequest) -> tuple[str, Qwen2LM]:
    return request.param, build(request.param)


def test_fixture_records_upstream_commit() -> None:
    assert len(META["upstream_commit"]) == 40


@pytest.mark.parametrize("mode", ["unistream", "bistream"])
def test_training_forward_matches_upstream(version_model: tuple[str, Qwen2LM], mode: str) -> None:
    version, model = version_model
    cases = torch.load(FIXTURES / f"{version}_cases.pt", weights_only=True)
    expected = cases[mode]
    with torch.no_grad():
        out = model(cases["batch"], mode=mode)  # type: ignore[arg-type]
    assert out.lengths.tolist() == expected["lengths"].tolist()
    assert torch.equal(out.target, expected["target"])
    valid = torch.arange(out.target.size(1))[None, :] < out.lengths[:, None]
    diff = (out.logits - expected["logits"]).abs()[valid].max().item()
    assert diff < ATOL, f"max |logit diff| {diff}"
    assert abs(out.loss.item() - expected["loss"].item()) < ATOL
    assert out.acc.item() == pytest.approx(expected["acc"].item(), abs=1e-7)


def test_modes_really_differ() -> None:
    cases = torch.load(FIXTURES / "v2_cases.pt", weights_only=True)
    assert not torch.equal(cases["unistream"]["target"], cases["bistream"]["target"])


@pytest.mark.parametrize("mode", ["unistream", "bistream"])
def test_loss_variants_match_upstream(mode: str) -> None:
    cases = torch.load(FIXTURES / "v2_cases.pt", weights_only=True)[mode]
    for smoothing in (0.0, 0.1):
        for normalize in (True, False):
            loss = label_smoothing_loss(cases["logits"], cases["target"], smoothing, normalize_length=normalize)
            expected = cases["losses"][f"lsm{smoothing}_norm{int(normalize)}"].item()
            assert loss.item() == pytest.approx(expected, rel=1e-6), (smoothing, normalize)
    assert token_accuracy(cases["logits"], cases["target"]).item() == pytest.approx(cases["acc"].item())


def test_seeded_decode_matches_upstream() -> None:
    model = build("v2")
    recorded = torch.load(FIXTURES / "v2_inference.pt", weights_only=True)
    for run in recorded["runs"]:
        scores: list[torch.Tensor] = []
        generator = torch.Generator().manual_seed(int(run["seed"]))
        tokens = list(
            model.inference(
                run["text"],
                run["prompt_text"],
                run["prompt_speech_token"],
                generator=generator,
                scores_out=scores,
            )
        )
        assert len(scores) == len(run["scores"])
        got, want = torch.stack(scores), run["scores"]
        finite = torch.isfinite(want)
        assert torch.equal(finite, torch.isfinite(got))  # the same ids masked before min_len
        assert (got[finite] - want[finite]).abs().max().item() < ATOL
        assert tokens == run["tokens"].tolist()
