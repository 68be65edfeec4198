"""HiFT vocoder: full-size checkpoint layout, yaml config, state-dict normalisation, output contract."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cosyml.errors import ModelDirError
from cosyml.models.hift import (
    HiFT,
    HiFTConfig,
    SourceNoise,
    hift_config_from_yaml,
)
from cosyml.models.modeldir import load_strict
from cosyml.models.vocoder import build_hift
from cosyml.models.yaml_io import read_model_yaml

KEYS_TSV = Path(__file__).parent / "fixtures" / "parity" / "hift" / "v2_hift_keys.tsv"

# The hift section of the official cosyvoice2.yaml (data, as shipped in CosyVoice2-0.5B).
OFFICIAL_HIFT_YAML = """\
sample_rate: 24000
hift: !new:cosyvoice.hifigan.generator.HiFTGenerator
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
    f0_predictor: !new:cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor
        num_class: 1
        in_channels: 80
        cond_channels: 512
"""

TINY = HiFTConfig(base_channels=16, f0_cond_channels=16)


def _official_rows() -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in KEYS_TSV.read_text().splitlines():
        version, filename, key, shape = line.split("\t")
        assert (version, filename) == ("v2", "hift.pt")
        rows.append((key, tuple(int(d) for d in shape.split("x"))))
    return rows


def test_full_size_state_dict_matches_official_layout(tmp_path: Path) -> None:
    yaml_path = tmp_path / "cosyvoice2.yaml"
    yaml_path.write_text(OFFICIAL_HIFT_YAML)
    with torch.device("meta"):
        hift = build_hift(read_model_yaml(yaml_path), yaml_path)
    ours = [(k, tuple(v.shape)) for k, v in hift.state_dict().items()]
    official = _official_rows()
    assert len(official) == 328
    assert sorted(ours) == sorted(official)
    assert [k for k, _ in ours] == [k for k, _ in official], "key order differs from upstream"


def test_official_yaml_gives_cosyvoice2_defaults(tmp_path: Path) -> None:
    yaml_path = tmp_path / "cosyvoice2.yaml"
    yaml_path.write_text(OFFICIAL_HIFT_YAML)
    cfg = hift_config_from_yaml(read_model_yaml(yaml_path), yaml_path)
    assert cfg == HiFTConfig()
    assert cfg.samples_per_frame == 480


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("HiFTGenerator\n", "CausalHiFTGenerator\n"), "CausalHiFTGenerator"),
        (("sample_rate: 24000", "sample_rate: 22050"), "22050"),
        (("upsample_rates: [8, 5, 3]", "upsample_rates: [8, 5]"), "upsample_kernel_sizes"),
        (("base_channels: 512", "base_channels: lots"), "base_channels"),
        (("ConvRNNF0Predictor", "CausalConvRNNF0Predictor"), "f0_predictor"),
    ],
)
def test_bad_hift_yaml_is_one_line_model_dir_error(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    yaml_path = tmp_path / "cosyvoice2.yaml"
    yaml_path.write_text(OFFICIAL_HIFT_YAML.replace(*edit))
    with pytest.raises(ModelDirError, match=message) as info:
        build_hift(read_model_yaml(yaml_path), yaml_path)
    assert "\n" not in str(info.value) and str(yaml_path) in str(info.value)


def test_missing_hift_section_is_model_dir_error() -> None:
    with pytest.raises(ModelDirError, match="missing 'hift'"):
        build_hift({"sample_rate": 24000}, "cosyvoice2.yaml")


def test_tiny_round_trip_and_output_contract(tmp_path: Path) -> None:
    torch.manual_seed(0)
    hift = HiFT(TINY).eval()
    path = tmp_path / "hift.pt"
    torch.save(hift.state_dict(), path)
    loaded = HiFT(TINY).eval()
    load_strict(loaded, path, part="hift")

    mel = torch.randn(2, 80, 5) - 4
    wav, source = loaded.inference(mel, generator=torch.Generator().manual_seed(3))
    again, _ = hift.inference(mel, generator=torch.Generator().manual_seed(3))
    assert wav.shape == (2, 5 * 480) and source.shape == (2, 1, 5 * 480)
    assert wav.abs().max() <= TINY.audio_limit
    assert torch.equal(wav, again)

    noise = SourceNoise.draw(2, 5 * 480, TINY.nb_harmonics + 1, generator=torch.Generator().manual_seed(3))
    explicit, _ = loaded.inference(mel, noise=noise)
    assert torch.equal(explicit, wav)


def test_private_generator_leaves_global_rng_alone() -> None:
    hift = HiFT(TINY).eval()
    mel = torch.randn(1, 80, 2)
    state = torch.get_rng_state()
    hift.inference(mel, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), state)


def test_wrong_noise_shape_is_rejected() -> None:
    hift = HiFT(TINY).eval()
    noise = SourceNoise.draw(1, 480, TINY.nb_harmonics + 1)
    with pytest.raises(ValueError, match="SourceNoise shapes"):
        hift.inference(torch.randn(1, 80, 2), noise=noise)
