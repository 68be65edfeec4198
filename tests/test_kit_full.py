"""`cosyml kit --size full` dims: the modules built from a full-size kit yaml have exactly the official key set
and shapes (``upstream-state-dicts.tsv``), checked on the meta device so no weights are allocated or written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cosyml.kit.build import FULL_KIT_DIMS, FULL_KIT_DIMS_V3, kit_dims
from cosyml.kit.model_yaml import qwen_config_dict, write_model_yaml
from cosyml.models.flow import build_flow
from cosyml.models.llm import build_llm
from cosyml.models.vocoder import build_hift
from cosyml.models.yaml_io import read_model_yaml

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_TEXT_ROWS = 151936


def _official_shapes(version: str) -> dict[str, dict[str, tuple[int, ...]]]:
    local = ROOT / "tests" / "fixtures" / "upstream-state-dicts.tsv"
    path = local if local.exists() else Path("/work/shared/reference/upstream-state-dicts.tsv")
    out: dict[str, dict[str, tuple[int, ...]]] = {}
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        ver, file, key, shape = line.split("\t")
        if ver == version:
            out.setdefault(file, {})[key] = tuple(int(d) for d in shape.split("x")) if shape else ()
    return out


@pytest.mark.parametrize("version", ["cosyvoice2", "cosyvoice3"])
def test_full_kit_modules_have_the_official_keys_and_shapes(tmp_path, version):
    from transformers import Qwen2Config

    dims = kit_dims(version, "full")
    assert dims == (FULL_KIT_DIMS if version == "cosyvoice2" else FULL_KIT_DIMS_V3)
    yaml_path = write_model_yaml(tmp_path, dims)
    config = read_model_yaml(Path(yaml_path), overrides={"qwen_pretrain_path": str(tmp_path / "q")})
    qwen = Qwen2Config(**qwen_config_dict(dims, OFFICIAL_TEXT_ROWS, 151643))
    with torch.device("meta"):
        modules = {
            "llm.pt": build_llm(config, qwen_config=qwen),
            "flow.pt": build_flow(config),
            "hift.pt": build_hift(config),
        }
    official = _official_shapes("v2" if version == "cosyvoice2" else "v3")
    for file, module in modules.items():
        ours = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        assert ours == official[file], f"{version} {file}: keys or shapes differ from the official model"
