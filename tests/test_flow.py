"""The flow module: official key layout at full size, yaml handling, training and inference behaviour."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from cosyml.errors import InputError, ModelDirError
from cosyml.models.flow import Flow, FlowConfig, build_flow, fixed_noise
from cosyml.models.yaml_io import Tagged, read_model_yaml

ROOT = Path(__file__).resolve().parents[1]
TINY_YAML = ROOT / "tests" / "fixtures" / "parity" / "flow" / "tiny_flow.yaml"


def _reference_rows() -> list[tuple[str, str]]:
    local = ROOT / "tests" / "fixtures" / "upstream-state-dicts.tsv"
    path = local if local.exists() else Path("/work/shared/reference/upstream-state-dicts.tsv")
    rows = [
        line.rstrip("\n").split("\t") for line in path.read_text().splitlines() if line and not line.startswith("#")
    ]
    return [(r[2], r[3]) for r in rows if r[0] == "v2" and r[1] == "flow.pt"]


def _official_v2_config() -> dict:
    """The flow section of the official cosyvoice2.yaml, as read_model_yaml returns it."""
    config = read_model_yaml(TINY_YAML)
    flow = config["flow"]
    enc = flow.args["encoder"]
    cfm = flow.args["decoder"]
    est = cfm.args["estimator"]
    enc = Tagged(
        enc.kind,
        enc.target,
        {
            **enc.args,
            "input_size": 512,
            "attention_heads": 8,
            "linear_units": 2048,
            "num_blocks": 6,
            "static_chunk_size": 25,
        },
    )
    est = Tagged(
        est.kind,
        est.target,
        {
            **est.args,
            "channels": [256],
            "attention_head_dim": 64,
            "n_blocks": 4,
            "num_mid_blocks": 12,
            "num_heads": 8,
            "static_chunk_size": 50,
        },
    )
    cfm = Tagged(cfm.kind, cfm.target, {**cfm.args, "estimator": est})
    config["flow"] = Tagged(flow.kind, flow.target, {**flow.args, "vocab_size": 6561, "encoder": enc, "decoder": cfm})
    return config


def test_full_size_v2_flow_has_the_official_keys_and_shapes() -> None:
    with torch.device("meta"):
        flow = build_flow(_official_v2_config())
    ours = [(k, "x".join(str(d) for d in v.shape)) for k, v in flow.state_dict().items()]
    reference = _reference_rows()
    assert len(reference) == 1121
    assert ours == reference  # same keys, shapes and order
    assert all(v.dtype == torch.float32 for v in flow.state_dict().values())


def test_yaml_values_reach_the_config() -> None:
    cfg = FlowConfig.from_model_config(read_model_yaml(TINY_YAML))
    assert cfg.encoder.static_chunk_size == 4 and cfg.estimator.static_chunk_size == 8
    assert cfg.estimator.channels == (32,) and cfg.cfm.sigma_min == 1e-6 and cfg.cfm.inference_cfg_rate == 0.7
    assert cfg.vocab_size == 50 and cfg.encoder.attention_dropout_rate == 0.1


def test_unsupported_flow_classes_and_settings_are_one_line_errors() -> None:
    config = read_model_yaml(TINY_YAML)
    v1 = dict(config, flow=Tagged("new", "cosyvoice.flow.flow.MaskedDiffWithXvec", {}))  # CosyVoice 1's flow
    with pytest.raises(ModelDirError, match=r"'flow' is MaskedDiffWithXvec; cosyml implements"):
        build_flow(v1)
    with pytest.raises(ModelDirError, match="missing 'flow'"):
        build_flow({})
    enc = config["flow"].args["encoder"]
    macaron = Tagged(enc.kind, enc.target, {**enc.args, "macaron_style": True})
    bad = dict(config, flow=Tagged("new", config["flow"].target, {**config["flow"].args, "encoder": macaron}))
    with pytest.raises(ModelDirError, match="macaron_style"):
        build_flow(bad)


@pytest.fixture(scope="module")
def tiny_flow() -> Flow:
    torch.manual_seed(0)
    return build_flow(read_model_yaml(TINY_YAML))


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "speech_token": torch.randint(0, 50, (2, 6), generator=g),
        "speech_token_len": torch.tensor([6, 4]),
        "speech_feat": torch.randn(2, 12, 80, generator=g),
        "speech_feat_len": torch.tensor([12, 8]),
        "embedding": torch.randn(2, 192, generator=g),
    }


def test_training_step_is_reproducible_from_a_generator_and_trains(tiny_flow: Flow) -> None:
    tiny_flow.train()
    batch = _batch()
    torch.manual_seed(5)  # dropout draws
    loss_a = tiny_flow(batch, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(5)
    loss_b = tiny_flow(batch, generator=torch.Generator().manual_seed(3))
    assert torch.isfinite(loss_a) and loss_a.item() == loss_b.item()
    loss_a.backward()
    grads = [p.grad for p in tiny_flow.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads[:3])
    assert tiny_flow.decoder.estimator.final_proj.weight.grad.abs().sum() > 0
    tiny_flow.zero_grad()
    tiny_flow.eval()


def test_conditions_matter_for_the_loss(tiny_flow: Flow) -> None:
    batch = _batch()
    common = {"streaming": False, "t": torch.tensor([0.5, 0.5]), "noise": torch.randn(2, 80, 12)}
    with torch.no_grad():
        kept = tiny_flow(batch, prompt_frames=[3, 0], cfg_keep=torch.tensor([True, True]), **common)
        dropped = tiny_flow(batch, prompt_frames=[3, 0], cfg_keep=torch.tensor([False, False]), **common)
    assert kept.item() != dropped.item()


def test_misaligned_tokens_and_mel_are_rejected(tiny_flow: Flow) -> None:
    batch = _batch()
    batch["speech_feat"] = batch["speech_feat"][:, :11]
    with pytest.raises(InputError, match="2 × tokens"):
        tiny_flow(batch)


def test_inference_shapes_and_determinism(tiny_flow: Flow) -> None:
    g = torch.Generator().manual_seed(2)
    prompt_token, token = torch.randint(0, 50, (1, 5), generator=g), torch.randint(0, 50, (1, 7), generator=g)
    prompt_feat, spk = torch.randn(1, 10, 80, generator=g), torch.randn(1, 192, generator=g)
    args = (token, torch.tensor([7]), prompt_token, torch.tensor([5]), prompt_feat, torch.tensor([10]), spk)
    full = tiny_flow.inference(*args, streaming=False, finalize=True, n_timesteps=2)
    assert full.shape == (1, 80, 14) and full.dtype == torch.float32
    assert torch.equal(full, tiny_flow.inference(*args, streaming=False, finalize=True, n_timesteps=2))
    partial = tiny_flow.inference(*args, streaming=True, finalize=False, n_timesteps=2)
    assert partial.shape == (1, 80, 14 - 2 * tiny_flow.config.pre_lookahead_len)
    no_prompt = tiny_flow.inference(
        token,
        torch.tensor([7]),
        token[:, :0],
        torch.tensor([0]),
        prompt_feat[:, :0],
        torch.tensor([0]),
        spk,
        n_timesteps=2,
    )
    assert no_prompt.shape == (1, 80, 14)
    custom = tiny_flow.inference(*args, noise=fixed_noise()[:, :, :24] * 0, n_timesteps=2)
    assert not torch.equal(custom, full)  # the noise argument is used


def test_config_validation_names_the_key() -> None:
    cfg = FlowConfig.from_model_config(read_model_yaml(TINY_YAML))
    with pytest.raises(ModelDirError, match="in_channels"):
        Flow(dataclasses.replace(cfg, estimator=dataclasses.replace(cfg.estimator, in_channels=100)))
