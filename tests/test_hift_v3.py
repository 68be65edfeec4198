"""CosyVoice3 causal HiFT: parity with upstream ``CausalHiFTGenerator`` on tiny random weights, the
full-size checkpoint layout, yaml dispatch and the streaming contract.

Fixtures come from ``scripts/parity/make_hift_v3_fixtures.py`` (upstream commit in ``meta.json``): the
vocoder of upstream's own ``CosyVoice3(kit)`` loader. Upstream's causal source reads fixed noise tables
drawn from the global RNG while that loader builds the model (after the flow seeds it with 0);
``upstream_source_noise`` replays those draws on a private generator, and the fixture stores the first
rows of the table, rows far into it and the whole table's sha256.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from cosyml.errors import ModelDirError
from cosyml.models.hift import CausalHiFTConfig, HiFT, hift_config_from_yaml
from cosyml.models.hift_causal import UPSTREAM_NOISE_SAMPLES, CausalHiFT, upstream_source_noise
from cosyml.models.hift_parts import SourceNoise
from cosyml.models.modeldir import load_strict
from cosyml.models.vocoder import build_hift
from cosyml.models.yaml_io import Tagged, read_model_yaml

FIXTURES = Path(__file__).parent / "fixtures" / "parity" / "hift_v3"
# Same weights, same input, same noise, the same fp32 operations in the same order: the waveform agrees
# with upstream's to the last bit on the machine that wrote the fixture (measured 0). On another CPU,
# fp32 kernels (conv, STFT) may accumulate in another order: each rounding step is <= eps32/2 ~ 6e-8
# relative; through ~30 conv layers of fan-in <= 32*11 (sqrt(352) ~ 19 random-walk growth), with the
# wav std ~0.1 and the limit 0.99, the spread stays ~1e-6 absolute. 1e-5 keeps a 10x margin, and is 1e-4
# of the waveform's std: any difference in noise or weights is orders of magnitude larger (3e-3 measured
# with a wrong noise table).
WAV_ATOL = 1e-5
F0_ATOL = 1e-9  # Hz; both sides compute in float64

# The hift section of the official cosyvoice3.yaml (examples/libritts/cosyvoice3/conf, Fun-CosyVoice3-0.5B).
OFFICIAL_V3_HIFT_YAML = """\
sample_rate: 24000
hift: !new:cosyvoice.hifigan.generator.CausalHiFTGenerator
    in_channels: 80
    base_channels: 512
    nb_harmonics: 8
    sampling_rate: !ref <sample_rate>
    nsf_alpha: 0.1
    nsf_sigma: 0.003
    nsf_voiced_threshold: 10
    upsample_rates: [8, 5, 3]
    upsample_kernel_sizes: [16, 11, 7]
    istft_params:
        n_fft: 16
        hop_len: 4
    resblock_kernel_sizes: [3, 7, 11]
    resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    source_resblock_kernel_sizes: [7, 7, 11]
    source_resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    lrelu_slope: 0.1
    audio_limit: 0.99
    conv_pre_look_right: 4
    f0_predictor: !new:cosyvoice.hifigan.f0_predictor.CausalConvRNNF0Predictor
        num_class: 1
        in_channels: 80
        cond_channels: 512
"""


def _meta() -> dict:
    return json.loads((FIXTURES / "meta.json").read_text())


def _hift_node(meta: dict) -> Tagged:
    args = dict(meta["hift"])
    f0_args = args.pop("f0_predictor")
    args["f0_predictor"] = Tagged("new", "cosyvoice.hifigan.f0_predictor.CausalConvRNNF0Predictor", f0_args)
    return Tagged("new", "cosyvoice.hifigan.generator.CausalHiFTGenerator", args)


def _tiny() -> CausalHiFT:
    hift = build_hift({"hift": _hift_node(_meta())})
    assert isinstance(hift, CausalHiFT)
    return hift.eval()


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.double() - b.double()).abs().max().item()


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return torch.load(FIXTURES / "io.pt", weights_only=True)


@pytest.fixture(scope="module")
def model() -> CausalHiFT:
    torch.set_num_threads(1)
    hift = _tiny()
    hift.load_state_dict(torch.load(FIXTURES / "hift_tiny.pt", weights_only=True), strict=True)
    return hift


@pytest.fixture(scope="module")
def stored_noise(io: dict) -> SourceNoise:
    return SourceNoise(initial_phase=io["initial_phase"], additive=io["additive_noise"])


def test_fixture_records_upstream_commit() -> None:
    assert _meta()["upstream_commit"].startswith("ace7c47")


def test_state_dict_matches_upstream_both_ways(model: CausalHiFT) -> None:
    upstream = torch.load(FIXTURES / "hift_tiny.pt", weights_only=True)
    ours = model.state_dict()
    # Same keys, order and shapes: each side loads the other's state dict with strict=True.
    assert [(k, tuple(v.shape)) for k, v in ours.items()] == [(k, tuple(v.shape)) for k, v in upstream.items()]
    assert all(v.dtype == torch.float32 for v in ours.values())


def test_f0_matches_upstream_float64(model: CausalHiFT, io: dict) -> None:
    with torch.inference_mode():
        f0 = model.f0_predictor(io["mel"], finalize=True)
        f0_stream = model.f0_predictor(io["mel_stream"], finalize=False)
    assert f0.dtype == torch.float64 and io["f0"].dtype == torch.float64
    assert f0_stream.shape == (1, io["mel_stream"].shape[2] - 3)
    torch.testing.assert_close(f0, io["f0"], atol=F0_ATOL, rtol=0)
    torch.testing.assert_close(f0_stream, io["f0_stream"], atol=F0_ATOL, rtol=0)
    voiced = io["f0"] > _meta()["hift"]["nsf_voiced_threshold"]
    assert voiced.any() and (~voiced).any(), "fixture must exercise voiced and unvoiced frames"
    assert all(p.dtype == torch.float32 for p in model.parameters()), "float64 must not leak into the weights"


def test_wav_matches_upstream_with_stored_draws(model: CausalHiFT, io: dict, stored_noise: SourceNoise) -> None:
    wav, source = model.inference(io["mel"], noise=stored_noise)
    assert wav.shape == (1, io["mel"].shape[2] * 480)
    assert _max_err(source, io["source"]) <= WAV_ATOL
    err = _max_err(wav, io["wav"])
    print(f"causal hift wav max-abs-err vs upstream: {err:.3g}")
    assert err <= WAV_ATOL


def test_noise_table_is_the_one_upstreams_loader_draws(model: CausalHiFT, io: dict) -> None:
    """The table upstream's ``CosyVoice3(dir)`` builds (seeded 0 by its flow, drawn after the flow's and
    f0 predictor's inits), not a table of our choosing; the module's own table gives upstream's audio."""
    cfg = model.config
    assert isinstance(cfg, CausalHiFTConfig)
    drawn = upstream_source_noise(io["additive_noise"].shape[1], cfg)
    assert torch.equal(drawn.initial_phase, io["initial_phase"])
    assert torch.equal(drawn.additive, io["additive_noise"])
    wav, source = model.inference(io["mel"])  # the module's own table
    assert torch.equal(source, io["source"]) or _max_err(source, io["source"]) <= WAV_ATOL
    err = _max_err(wav, io["wav"])
    print(f"causal hift wav (own noise table) max-abs-err vs upstream loader: {err:.3g}")
    assert err <= WAV_ATOL


def test_noise_table_is_independent_of_the_global_rng(io: dict) -> None:
    state = torch.get_rng_state()
    try:
        tables = []
        for seed in (0, 1986):
            torch.manual_seed(seed)
            hift = _tiny()
            before = torch.get_rng_state()
            tables.append(hift.source_noise(4800).additive)
            assert torch.equal(torch.get_rng_state(), before), "drawing the table must not touch the global RNG"
        assert torch.equal(tables[0], tables[1])
        assert torch.equal(tables[0], io["additive_noise"][:, :4800])
    finally:
        torch.set_rng_state(state)


def test_noise_table_grows_as_a_prefix(model: CausalHiFT, io: dict) -> None:
    short = model.source_noise(1000).additive.clone()
    longer = model.source_noise(30_000).additive  # grows the cached table
    assert torch.equal(longer[:, :1000], short)
    assert torch.equal(longer[:, :1000], io["additive_noise"][:, :1000])
    row = int(io["noise_table_rows"][0])
    assert torch.equal(longer[0, row], io["noise_table_far"][0])


def test_noise_table_depends_on_the_sizes_upstream_builds_before_it() -> None:
    official = upstream_source_noise(100, CausalHiFTConfig())
    other = upstream_source_noise(100, CausalHiFTConfig(flow_vocab_size=4096))
    assert not torch.equal(official.additive, other.additive)


@pytest.mark.slow
def test_whole_noise_table_matches_upstream_hash(io: dict) -> None:
    """All 300 s of upstream's table (259 MB): the sha256 and rows far into it."""
    meta = _meta()
    table = upstream_source_noise(UPSTREAM_NOISE_SAMPLES, _tiny().config).additive
    assert list(table.shape) == meta["noise_table_shape"]
    rows = io["noise_table_rows"].tolist()
    assert torch.equal(table[0, rows], io["noise_table_far"])
    assert hashlib.sha256(table.numpy().tobytes()).hexdigest() == meta["noise_table_sha256"]
    del table


def test_streaming_finalize_false_matches_upstream(model: CausalHiFT, io: dict, stored_noise: SourceNoise) -> None:
    mel = io["mel_stream"]
    wav, source = model.inference(mel, finalize=False, noise=stored_noise)
    frames = mel.shape[2]
    assert source.shape == (1, 1, (frames - 3) * 480)
    assert wav.shape == (1, (frames - model.withheld_frames) * 480) == io["wav_stream"].shape
    assert _max_err(source, io["source_stream"]) <= WAV_ATOL
    err = _max_err(wav, io["wav_stream"])
    print(f"causal hift streaming wav max-abs-err vs upstream: {err:.3g}")
    assert err <= WAV_ATOL


def test_batch_matches_upstream(model: CausalHiFT, io: dict, stored_noise: SourceNoise) -> None:
    wav, source = model.inference(io["mel_batch"], noise=stored_noise)
    assert wav.shape == io["wav_batch"].shape
    assert _max_err(source, io["source_batch"]) <= WAV_ATOL
    assert _max_err(wav, io["wav_batch"]) <= WAV_ATOL


def test_streaming_prefixes_equal_the_final_audio(model: CausalHiFT, io: dict) -> None:
    """Re-vocoding all mel so far (upstream CosyVoice3's stream mode) never rewrites emitted audio."""
    mel = io["mel"]
    final, _ = model.inference(mel)
    emitted = 0
    for end in (10, 13, 17):
        chunk, _ = model.inference(mel[:, :, :end], finalize=False)
        assert chunk.shape[1] == (end - 8) * 480
        torch.testing.assert_close(chunk, final[:, : chunk.shape[1]], atol=1e-6, rtol=0)
        emitted = chunk.shape[1]
    assert emitted < final.shape[1]
    with pytest.raises(ValueError, match="more than 8 mel frames"):
        model.inference(mel[:, :, :8], finalize=False)


def test_legacy_checkpoint_loads_strictly_and_matches(io: dict, stored_noise: SourceNoise) -> None:
    legacy = torch.load(FIXTURES / "hift_tiny_legacy.pt", weights_only=True)
    assert all(k.startswith("generator.") for k in legacy)
    assert any(k.endswith(".weight_g") for k in legacy)
    hift = _tiny()
    load_strict(hift, FIXTURES / "hift_tiny_legacy.pt", part="hift")
    wav, _ = hift.inference(io["mel"], noise=stored_noise)
    assert _max_err(wav, io["wav"]) <= WAV_ATOL


def test_folding_weight_norm_keeps_output(io: dict, stored_noise: SourceNoise) -> None:
    hift = _tiny()
    hift.load_state_dict(torch.load(FIXTURES / "hift_tiny.pt", weights_only=True), strict=True)
    before, _ = hift.inference(io["mel"], noise=stored_noise)
    hift.fold_weight_norm()
    folded = [k for k in hift.state_dict() if "parametrizations" in k]
    assert folded and all(k.startswith("f0_predictor.") for k in folded)  # f0 keeps float64 weight norm
    after, _ = hift.inference(io["mel"], noise=stored_noise)
    assert _max_err(after, before) <= 1e-6
    assert _max_err(after, io["wav"]) <= WAV_ATOL


# -- full size and yaml ----------------------------------------------------------------------------


def _official_rows() -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in (FIXTURES / "v3_hift_keys.tsv").read_text().splitlines():
        version, filename, key, shape = line.split("\t")
        assert (version, filename) == ("v3", "hift.pt")
        rows.append((key, tuple(int(d) for d in shape.split("x"))))
    return rows


def test_full_size_state_dict_matches_official_v3_layout(tmp_path: Path) -> None:
    yaml_path = tmp_path / "cosyvoice3.yaml"
    yaml_path.write_text(OFFICIAL_V3_HIFT_YAML)
    hift = build_hift(read_model_yaml(yaml_path), yaml_path)  # real fp32 tensors (about 21 M parameters)
    assert isinstance(hift, CausalHiFT)
    state = hift.state_dict()
    official = _official_rows()
    assert len(official) == 328
    assert sorted((k, tuple(v.shape)) for k, v in state.items()) == sorted(official)
    assert list(state) == [k for k, _ in official], "key order differs from upstream"
    assert all(v.dtype == torch.float32 for v in state.values())


def test_official_v3_yaml_gives_causal_config(tmp_path: Path) -> None:
    yaml_path = tmp_path / "cosyvoice3.yaml"
    yaml_path.write_text(OFFICIAL_V3_HIFT_YAML)
    cfg = hift_config_from_yaml(read_model_yaml(yaml_path), yaml_path)
    assert cfg == CausalHiFTConfig()
    assert cfg.samples_per_frame == 480 and cfg.conv_pre_look_right == 4


def test_v2_yaml_still_builds_the_v2_vocoder(tmp_path: Path) -> None:
    yaml_path = tmp_path / "cosyvoice2.yaml"
    text = OFFICIAL_V3_HIFT_YAML.replace("CausalHiFTGenerator", "HiFTGenerator")
    text = text.replace("CausalConvRNNF0Predictor", "ConvRNNF0Predictor").replace("    conv_pre_look_right: 4\n", "")
    yaml_path.write_text(
        text.replace("base_channels: 512", "base_channels: 16").replace("cond_channels: 512", "cond_channels: 16")
    )
    hift = build_hift(read_model_yaml(yaml_path), yaml_path)
    assert type(hift) is HiFT and not isinstance(hift.config, CausalHiFTConfig)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("CausalConvRNNF0Predictor", "ConvRNNF0Predictor"), "needs CausalConvRNNF0Predictor"),
        (("conv_pre_look_right: 4", "conv_pre_look_right: -1"), "conv_pre_look_right"),
        (("conv_pre_look_right: 4", "conv_pre_look_right: soon"), "conv_pre_look_right"),
        (("CausalHiFTGenerator", "StreamingHiFTGenerator"), "supports HiFTGenerator"),
    ],
)
def test_bad_v3_yaml_is_one_line_model_dir_error(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    yaml_path = tmp_path / "cosyvoice3.yaml"
    yaml_path.write_text(OFFICIAL_V3_HIFT_YAML.replace(*edit))
    with pytest.raises(ModelDirError, match=message) as info:
        build_hift(read_model_yaml(yaml_path), yaml_path)
    assert "\n" not in str(info.value) and str(yaml_path) in str(info.value)
