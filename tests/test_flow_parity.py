"""Flow parity with upstream ``CausalMaskedDiffWithXvec`` on tiny deterministic weights.

Fixtures come from ``scripts/parity/make_flow_fixtures.py`` (upstream commit in ``meta.json``). The
weights are too big to commit (the encoder is 512 wide even in the tiny model), so both sides make them
with the script's ``hashed_weights``; per-key sums in ``meta.json`` prove we rebuilt the same tensors.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
import torch

from cosyml.models.flow import EstimatorConfig, Flow, build_flow, fixed_noise
from cosyml.models.flow.decoder import CausalConditionalDecoder
from cosyml.models.yaml_io import read_model_yaml

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "parity" / "flow"
ATOL = 1e-5


def _fixture_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_flow_fixtures", ROOT / "scripts/parity/make_flow_fixtures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads((FIXTURES / "meta.json").read_text())


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return torch.load(FIXTURES / "io.pt", weights_only=True)


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return _fixture_script()


@pytest.fixture(scope="module")
def flow(meta: dict, script: ModuleType) -> Flow:
    model = build_flow(read_model_yaml(FIXTURES / "tiny_flow.yaml"))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    weights = script.hashed_weights(shapes)
    assert set(weights) == set(meta["weight_sums"])
    for key, value in weights.items():
        assert float(value.double().sum()) == pytest.approx(meta["weight_sums"][key], rel=1e-9, abs=1e-9), key
    model.load_state_dict(weights, strict=True)
    return model.eval()


def _assert_close(ours: torch.Tensor, ref: torch.Tensor, atol: float = ATOL) -> float:
    assert ours.shape == ref.shape
    diff = (ours.float() - ref.float()).abs().max().item()
    assert diff <= atol, f"max abs diff {diff:.3g} > {atol}"
    return diff


@pytest.mark.parametrize("streaming", [False, True])
def test_encoder_matches_upstream(flow: Flow, io: dict, streaming: bool) -> None:
    tokens, lengths = io["batch.speech_token"], io["batch.speech_token_len"]
    keep = (torch.arange(tokens.shape[1]) < lengths.unsqueeze(1)).unsqueeze(-1).float()
    with torch.no_grad():
        h, h_len = flow.encoder(flow.input_embedding(tokens) * keep, lengths, streaming=streaming)
    _assert_close(h, io[f"encoder.h.streaming{int(streaming)}"])
    assert h_len.tolist() == (2 * lengths).tolist()


@pytest.mark.parametrize("case", [0, 1])
def test_training_loss_matches_upstream(flow: Flow, io: dict, case: int) -> None:
    batch = {k.split(".", 1)[1]: v for k, v in io.items() if k.startswith("batch.")}
    with torch.no_grad():
        loss = flow(
            batch,
            streaming=bool(io[f"loss{case}.streaming"]),
            prompt_frames=io[f"loss{case}.prompt_frames"].tolist(),
            t=io[f"loss{case}.t"],
            noise=io[f"loss{case}.noise"],
            cfg_keep=io[f"loss{case}.cfg_keep"],
        )
    _assert_close(loss, io[f"loss{case}.loss"])


@pytest.mark.parametrize(("streaming", "finalize"), [(False, True), (True, False), (True, True)])
def test_inference_matches_upstream(flow: Flow, io: dict, streaming: bool, finalize: bool) -> None:
    mel = flow.inference(
        io["infer.token"],
        torch.tensor([io["infer.token"].shape[1]]),
        io["infer.prompt_token"],
        torch.tensor([io["infer.prompt_token"].shape[1]]),
        io["infer.prompt_feat"],
        torch.tensor([io["infer.prompt_feat"].shape[1]]),
        io["infer.embedding"],
        streaming=streaming,
        finalize=finalize,
    )
    _assert_close(mel, io[f"infer.mel.streaming{int(streaming)}.finalize{int(finalize)}"])


def test_fixed_noise_matches_upstream_without_touching_global_rng(io: dict) -> None:
    fixed_noise.cache_clear()
    torch.manual_seed(123)
    expected_next = torch.rand(4)
    torch.manual_seed(123)
    noise = fixed_noise()
    assert noise.shape == (1, 80, 15000)
    assert torch.equal(noise[:, :, :64], io["fixed_noise_head"])
    assert torch.equal(torch.rand(4), expected_next)  # the global generator was not reseeded


@pytest.mark.parametrize("streaming", [False, True])
def test_two_level_estimator_matches_upstream(io: dict, meta: dict, script: ModuleType, streaming: bool) -> None:
    cfg = dict(meta["estimator_2level"])
    cfg["channels"] = tuple(cfg["channels"])
    estimator = CausalConditionalDecoder(EstimatorConfig(**cfg))
    shapes = {k: tuple(v.shape) for k, v in estimator.state_dict().items()}
    estimator.load_state_dict(script.hashed_weights(shapes, salt=meta["estimator_2level_salt"]), strict=True)
    estimator.eval()
    with torch.no_grad():
        out = estimator(
            io["est2.x"], io["est2.mask"], io["est2.mu"], io["est2.t"], io["est2.spks"], io["est2.cond"], streaming
        )
    _assert_close(out, io[f"est2.out.streaming{int(streaming)}"])
