"""The tiny kit: official layout, loadable by our strict loaders, deterministic per seed."""

from __future__ import annotations

import hashlib

import torch

from cosyml.cli import main
from cosyml.kit.build import build_kit
from cosyml.models.flow import build_flow
from cosyml.models.llm import load_llm
from cosyml.models.modeldir import ModelDir, load_state_dict_file, load_strict
from cosyml.models.vocoder import build_hift

OFFICIAL_FILES = {
    "cosyvoice2.yaml",
    "llm.pt",
    "flow.pt",
    "hift.pt",
    "campplus.onnx",
    "speech_tokenizer_v2.onnx",
    "CosyVoice-BlankEN/config.json",
    "CosyVoice-BlankEN/generation_config.json",
    "CosyVoice-BlankEN/model.safetensors",
    "CosyVoice-BlankEN/vocab.json",
    "CosyVoice-BlankEN/merges.txt",
    "CosyVoice-BlankEN/tokenizer_config.json",
}


def test_kit_has_the_official_layout_and_passes_the_checks(kit_dir):
    present = {str(p.relative_to(kit_dir)) for p in kit_dir.rglob("*") if p.is_file()}
    assert present >= OFFICIAL_FILES
    assert not (kit_dir / "CosyVoice-BlankEN" / "tokenizer.json").exists()  # like the official folder
    md = ModelDir(kit_dir)
    md.check()
    assert md.version == "v2" and md.hparams.mel.fmax == 8000


def test_kit_weights_load_strictly_into_our_modules(kit_dir):
    md = ModelDir(kit_dir)
    llm = load_llm(md)
    assert llm.llm.model.lm_head.weight.data_ptr() == llm.llm.model.model.embed_tokens.weight.data_ptr()
    flow = build_flow(md.config)
    load_strict(flow, md.flow_path, part="flow")
    hift = build_hift(md.config)
    load_strict(hift, md.hift_path, part="hift")
    for part in ("llm", "flow", "hift"):
        state = load_state_dict_file(md.weight_path(part), part=part)
        assert all(t.dtype == torch.float32 for t in state.values() if t.is_floating_point())


def test_kit_is_deterministic_for_a_seed(tmp_path, kit_dir):
    again = build_kit(tmp_path / "again").model_dir
    for name in ("llm.pt", "flow.pt", "hift.pt"):
        a = load_state_dict_file(kit_dir / name)
        b = load_state_dict_file(again / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(kit_dir / "cosyvoice2.yaml") == digest(again / "cosyvoice2.yaml")


def test_kit_cli_writes_a_loadable_directory(tmp_path, capsys):
    assert main(["kit", str(tmp_path / "m"), "--seed", "3"]) == 0
    ModelDir(tmp_path / "m").check()
    assert "proves plumbing, not voice quality" in capsys.readouterr().out
