"""The CosyVoice3 flow (``CausalMaskedDiffWithDiT``): official layout, yaml handling, upstream parity.

Parity fixtures come from ``scripts/parity/make_flow_v3_fixtures.py`` (upstream commit in ``meta.json``).
Both sides make the tiny weights with ``make_flow_fixtures.hashed_weights``; per-key sums in
``meta.json`` prove we rebuilt the same tensors, and RoPE's ``inv_freq`` is compared with upstream's.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
import torch

from cosyml.errors import InputError, ModelDirError
from cosyml.models.flow import DiT, DiTFlow, DiTFlowConfig, Flow, build_flow
from cosyml.models.yaml_io import Tagged, read_model_yaml

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "parity" / "flow_v3"
TINY_YAML = FIXTURES / "tiny_flow_v3.yaml"
V2_YAML = ROOT / "tests" / "fixtures" / "parity" / "flow" / "tiny_flow.yaml"
INV_FREQ_KEY = "decoder.estimator.rotary_embed.inv_freq"
ATOL = 1e-5


def _reference_rows() -> list[tuple[str, str]]:
    local = ROOT / "tests" / "fixtures" / "upstream-state-dicts.tsv"
    path = local if local.exists() else Path("/work/shared/reference/upstream-state-dicts.tsv")
    rows = [
        line.rstrip("\n").split("\t") for line in path.read_text().splitlines() if line and not line.startswith("#")
    ]
    return [(r[2], r[3]) for r in rows if r[0] == "v3" and r[1] == "flow.pt"]


def _with_args(node: Tagged, **changes: object) -> Tagged:
    return Tagged(node.kind, node.target, {**node.args, **changes})


def _official_v3_config() -> dict:
    """The flow section of the official cosyvoice3.yaml (example conf values), as read_model_yaml returns it."""
    config = read_model_yaml(TINY_YAML)
    flow = config["flow"]
    pre = _with_args(flow.args["pre_lookahead_layer"], channels=1024)
    cfm = flow.args["decoder"]
    est = _with_args(cfm.args["estimator"], dim=1024, depth=22, heads=16, dim_head=64, static_chunk_size=50)
    config["flow"] = _with_args(flow, vocab_size=6561, pre_lookahead_layer=pre, decoder=_with_args(cfm, estimator=est))
    return config


# ------------------------------------------------------------------------------------ layout and yaml


def test_full_size_v3_flow_has_the_official_keys_and_shapes() -> None:
    with torch.device("meta"):
        flow = build_flow(_official_v3_config())
    assert isinstance(flow, DiTFlow)
    cfg = flow.config
    assert (cfg.estimator.dim, cfg.estimator.depth, cfg.estimator.heads, cfg.estimator.ff_mult) == (1024, 22, 16, 2)
    assert cfg.estimator.dropout == 0.1 and cfg.estimator.static_chunk_size == 50
    state = flow.state_dict()
    ours = [(k, "x".join(str(d) for d in v.shape)) for k, v in state.items()]
    reference = _reference_rows()
    assert len(reference) == 330
    assert ours == reference  # same keys, shapes and order
    assert all(v.dtype == torch.float32 for v in state.values())
    assert INV_FREQ_KEY in state  # the RoPE buffer is persistent, as in the official flow.pt


def test_build_flow_dispatches_on_the_yaml_class() -> None:
    assert isinstance(build_flow(read_model_yaml(TINY_YAML)), DiTFlow)
    assert isinstance(build_flow(read_model_yaml(V2_YAML)), Flow)
    config = read_model_yaml(TINY_YAML)
    other = dict(config, flow=Tagged("new", "cosyvoice.flow.flow.MaskedDiffWithXvec", {}))
    with pytest.raises(ModelDirError, match="MaskedDiffWithXvec"):
        build_flow(other)


def test_yaml_values_reach_the_config() -> None:
    cfg = DiTFlowConfig.from_model_config(read_model_yaml(TINY_YAML))
    assert cfg.input_size == 80 and cfg.vocab_size == 50 and cfg.pre_lookahead_len == 3
    assert cfg.pre_lookahead.channels == 64 and cfg.pre_lookahead.in_channels == 80
    est = cfg.estimator
    assert (est.dim, est.depth, est.heads, est.dim_head, est.ff_mult) == (64, 2, 2, 32, 2)
    assert est.static_chunk_size == 8 and est.num_decoding_left_chunks == -1 and est.dropout == 0.1
    assert cfg.cfm.sigma_min == 1e-6 and cfg.cfm.inference_cfg_rate == 0.7 and cfg.cfm.spk_emb_dim == 80


def test_bad_v3_yaml_is_a_one_line_error_naming_the_key() -> None:
    config = read_model_yaml(TINY_YAML)
    flow = config["flow"]
    missing = dict(config, flow=Tagged(flow.kind, flow.target, {k: v for k, v in flow.args.items() if k != "decoder"}))
    with pytest.raises(ModelDirError, match="has no 'decoder'"):
        build_flow(missing)
    cfm = flow.args["decoder"]
    wrong_est = _with_args(cfm, estimator=Tagged("new", "cosyvoice.flow.decoder.CausalConditionalDecoder", {}))
    with pytest.raises(ModelDirError, match=r"flow\.decoder\.estimator' is CausalConditionalDecoder"):
        build_flow(dict(config, flow=_with_args(flow, decoder=wrong_est)))
    bad_mu = _with_args(cfm, estimator=_with_args(cfm.args["estimator"], mu_dim=64))
    with pytest.raises(ModelDirError, match="mu_dim") as error:
        build_flow(dict(config, flow=_with_args(flow, decoder=bad_mu)))
    assert "\n" not in str(error.value)
    cfg = DiTFlowConfig.from_model_config(config)
    bad = dataclasses.replace(cfg, pre_lookahead=dataclasses.replace(cfg.pre_lookahead, pre_lookahead_len=2))
    with pytest.raises(ModelDirError, match="pre_lookahead_len"):
        DiTFlow(bad)


# ------------------------------------------------------------------------------------ parity


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
def flow(meta: dict, io: dict) -> DiTFlow:
    model = build_flow(read_model_yaml(TINY_YAML))
    assert isinstance(model, DiTFlow)
    layout = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert layout == [(k, list(s)) for k, s in meta["state_dict_layout"]]  # strict loading works both ways
    shapes = {k: tuple(s) for k, s in layout if k != INV_FREQ_KEY}
    weights = _fixture_script().hashed_weights(shapes)
    assert set(weights) == set(meta["weight_sums"])
    for key, value in weights.items():
        assert float(value.double().sum()) == pytest.approx(meta["weight_sums"][key], rel=1e-9, abs=1e-9), key
    assert torch.equal(model.state_dict()[INV_FREQ_KEY], io["inv_freq"])  # our RoPE buffer == upstream's
    model.load_state_dict({**weights, INV_FREQ_KEY: io["inv_freq"]}, strict=True)
    return model.eval()


def _assert_close(ours: torch.Tensor, ref: torch.Tensor, atol: float = ATOL) -> float:
    assert ours.shape == ref.shape
    diff = (ours.float() - ref.float()).abs().max().item()
    assert diff <= atol, f"max abs diff {diff:.3g} > {atol}"
    return diff


def test_fixture_records_the_upstream_commit(meta: dict) -> None:
    assert meta["upstream_commit"].startswith("ace7c47")


@pytest.mark.parametrize("streaming", [False, True])
def test_estimator_matches_upstream(flow: DiTFlow, io: dict, streaming: bool) -> None:
    estimator = flow.decoder.estimator
    assert isinstance(estimator, DiT)
    args = (io["est.x"], io["est.mask"], io["est.mu"], io["est.t"], io["est.spks"], io["est.cond"])
    with torch.no_grad():
        out = estimator(*args, streaming)
    _assert_close(out, io[f"est.out.streaming{int(streaming)}"])


def test_estimator_accepts_a_scalar_time(flow: DiTFlow, io: dict) -> None:
    with torch.no_grad():
        out = flow.decoder.estimator(
            io["est.x"][:1],
            io["est.mask"][:1],
            io["est.mu"][:1],
            torch.tensor(0.5),
            io["est.spks"][:1],
            io["est.cond"][:1],
        )
    _assert_close(out, io["est.out.scalar_t"])


def test_pre_lookahead_layer_matches_upstream(flow: DiTFlow, io: dict) -> None:
    tokens, lengths = io["batch.speech_token"], io["batch.speech_token_len"]
    keep = (torch.arange(tokens.shape[1]) < lengths.unsqueeze(1)).unsqueeze(-1).float()
    with torch.no_grad():
        h = flow.pre_lookahead_layer(flow.input_embedding(tokens) * keep)
    _assert_close(h, io["pre_lookahead.h"])


@pytest.mark.parametrize("case", [0, 1])
def test_training_loss_matches_upstream(flow: DiTFlow, io: dict, case: int) -> None:
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


def _infer(flow: DiTFlow, io: dict, streaming: bool, finalize: bool, prompt: bool = True, **kwargs) -> torch.Tensor:
    n = io["infer.prompt_token"].shape[1] if prompt else 0
    token = io["infer.token"]
    return flow.inference(
        token,
        torch.tensor([token.shape[1]]),
        io["infer.prompt_token"][:, :n],
        torch.tensor([n]),
        io["infer.prompt_feat"][:, : 2 * n],
        torch.tensor([2 * n]),
        io["infer.embedding"],
        streaming=streaming,
        finalize=finalize,
        **kwargs,
    )


@pytest.mark.parametrize(("streaming", "finalize"), [(False, True), (True, False), (True, True)])
def test_inference_matches_upstream(flow: DiTFlow, io: dict, streaming: bool, finalize: bool) -> None:
    mel = _infer(flow, io, streaming, finalize)
    _assert_close(mel, io[f"infer.mel.streaming{int(streaming)}.finalize{int(finalize)}"])


def test_inference_without_prompt_matches_upstream(flow: DiTFlow, io: dict) -> None:
    _assert_close(_infer(flow, io, False, True, prompt=False), io["infer.mel.noprompt"])


# ------------------------------------------------------------------------------------ behaviour


def test_training_step_is_reproducible_and_reaches_every_parameter(flow: DiTFlow, io: dict) -> None:
    batch = {k.split(".", 1)[1]: v for k, v in io.items() if k.startswith("batch.")}
    flow.train()
    try:
        torch.manual_seed(5)  # dropout draws
        loss_a = flow(batch, generator=torch.Generator().manual_seed(3), cfg_keep=torch.tensor([True, True]))
        torch.manual_seed(5)
        loss_b = flow(batch, generator=torch.Generator().manual_seed(3), cfg_keep=torch.tensor([True, True]))
        assert torch.isfinite(loss_a) and loss_a.item() == loss_b.item()
        loss_a.backward()
        missing = [n for n, p in flow.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
        assert not missing
    finally:
        flow.zero_grad(set_to_none=True)
        flow.eval()


def test_inference_options(flow: DiTFlow, io: dict) -> None:
    full = _infer(flow, io, False, True, n_timesteps=2)
    assert full.shape == (1, 80, 16) and full.dtype == torch.float32
    assert torch.equal(full, _infer(flow, io, False, True, n_timesteps=2))
    custom = _infer(flow, io, False, True, n_timesteps=2, noise=torch.zeros(1, 80, 28))
    assert not torch.equal(custom, full)  # the noise argument is used
    two = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(InputError, match="one utterance"):
        flow.inference(
            two,
            torch.tensor([3, 3]),
            two[:, :0],
            torch.tensor([0, 0]),
            torch.zeros(2, 0, 80),
            torch.tensor([0, 0]),
            torch.zeros(2, 192),
        )
    batch = {k.split(".", 1)[1]: v for k, v in io.items() if k.startswith("batch.")}
    batch["speech_feat"] = batch["speech_feat"][:, :19]
    with pytest.raises(InputError, match="2 × tokens"):
        flow(batch)
