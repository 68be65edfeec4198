"""The tiny Fun-CosyVoice3 kit: official v3 layout, official key sets, strict loading, deterministic, CLI.

Upstream's own loader (``cosyvoice.cli.cosyvoice.CosyVoice3``) was checked by hand against this kit (it
needs the upstream checkout, so it is not a test); see the kit section of the README.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch

from cosyml.cli import main
from cosyml.errors import InputError
from cosyml.kit.build import DEFAULT_KIT_DIMS_V3, build_kit
from cosyml.kit.model_yaml import (
    OFFICIAL_QWEN_VOCAB,
    OFFICIAL_V3_DIMS,
    KitDims,
    qwen_config_dict,
    write_model_yaml,
)
from cosyml.kit.tokenizer import CORPUS
from cosyml.models import keys
from cosyml.models.flow import DiTFlow, build_flow
from cosyml.models.hift_causal import CausalHiFT
from cosyml.models.llm import build_llm, load_llm
from cosyml.models.modeldir import ModelDir, load_state_dict_file, load_strict
from cosyml.models.vocoder import build_hift
from cosyml.models.yaml_io import read_model_yaml
from cosyml.text.tokenizer import COSYVOICE3_SPECIALS, QWEN_SPECIALS, TextTokenizer

ROOT = Path(__file__).resolve().parents[1]

V3_FILES = {
    "cosyvoice3.yaml",
    "llm.pt",
    "flow.pt",
    "hift.pt",
    "campplus.onnx",
    "speech_tokenizer_v3.onnx",
    "CosyVoice-BlankEN/config.json",
    "CosyVoice-BlankEN/generation_config.json",
    "CosyVoice-BlankEN/model.safetensors",
    "CosyVoice-BlankEN/vocab.json",
    "CosyVoice-BlankEN/merges.txt",
    "CosyVoice-BlankEN/tokenizer_config.json",
}
PARTS = ("llm", "flow", "hift")


@pytest.fixture(scope="module")
def kit3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A v3 kit with seed 0, built once for this module."""
    kit = build_kit(tmp_path_factory.mktemp("kit3") / "model", version="cosyvoice3")
    assert kit.version == "cosyvoice3"
    return kit.model_dir


def _official_rows() -> dict[str, dict[str, tuple[int, ...]]]:
    """``{file stem: {key: shape}}`` of the official v3 weight files (upstream-state-dicts.tsv)."""
    local = ROOT / "tests" / "fixtures" / "upstream-state-dicts.tsv"
    path = local if local.exists() else Path("/work/shared/reference/upstream-state-dicts.tsv")
    rows: dict[str, dict[str, tuple[int, ...]]] = {part: {} for part in PARTS}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        version, file, key, shape = line.split("\t")
        if version == "v3":
            rows[file.removesuffix(".pt")][key] = tuple(int(d) for d in shape.split("x"))  # "896x64"
    assert all(rows.values())
    return rows


def _layer_pattern(key: str) -> str:
    """A key with its repeated-block index removed (kit depths are smaller than the official ones)."""
    return re.sub(r"\.(layers|transformer_blocks)\.\d+\.", r".\1.N.", key)


# ------------------------------------------------------------------------------------------ layout


def test_v3_kit_has_the_official_layout_and_classes(kit3: Path) -> None:
    present = {str(p.relative_to(kit3)) for p in kit3.rglob("*") if p.is_file()}
    assert present >= V3_FILES
    assert not {"cosyvoice2.yaml", "speech_tokenizer_v2.onnx"} & present
    assert not (kit3 / "CosyVoice-BlankEN" / "tokenizer.json").exists()
    md = ModelDir(kit3)
    md.check()
    assert md.version == "v3"
    hp = md.hparams
    assert hp.tokenizer_version == "cosyvoice3"
    assert hp.mel.fmax is None and (hp.mel.n_fft, hp.mel.hop_size, hp.mel.num_mels) == (1920, 480, 80)
    assert (hp.sample_rate, hp.speech_token_size, hp.mix_ratio) == (24000, 6561, (5, 15))
    assert (hp.sampling.top_p, hp.sampling.top_k, hp.sampling.win_size, hp.sampling.tau_r) == (0.8, 25, 10, 0.1)
    cfg = md.config
    assert cfg["llm"].target == "cosyvoice.llm.llm.CosyVoice3LM"
    assert cfg["llm"].get("sampling").target == "cosyvoice.utils.common.ras_sampling"
    assert cfg["flow"].target == "cosyvoice.flow.flow.CausalMaskedDiffWithDiT"
    assert cfg["flow"].get("pre_lookahead_layer").class_name == "PreLookaheadLayer"
    assert cfg["flow"].get("decoder").class_name == "CausalConditionalCFM"
    assert cfg["flow"].get("decoder").get("estimator").target == "cosyvoice.flow.DiT.dit.DiT"
    assert cfg["flow"].get("decoder").get("estimator").get("static_chunk_size") == 50
    assert cfg["hift"].target == "cosyvoice.hifigan.generator.CausalHiFTGenerator"
    assert cfg["hift"].get("f0_predictor").class_name == "CausalConvRNNF0Predictor"
    assert cfg["get_tokenizer"].get("version") == "cosyvoice3"


# ------------------------------------------------------------------------------------------ loading


def test_v3_kit_loads_strictly_into_our_modules(kit3: Path) -> None:
    md = ModelDir(kit3)
    llm = load_llm(md)
    assert llm.config.version == "v3" and not hasattr(llm, "llm_embedding")
    assert llm.llm.model.lm_head.weight.data_ptr() == llm.llm.model.model.embed_tokens.weight.data_ptr()
    flow = build_flow(md.config)
    assert isinstance(flow, DiTFlow)
    assert flow.config.estimator.depth == DEFAULT_KIT_DIMS_V3.dit_depth
    load_strict(flow, md.flow_path, part="flow")
    hift = build_hift(md.config)
    assert isinstance(hift, CausalHiFT)
    load_strict(hift, md.hift_path, part="hift")
    for part in PARTS:
        state = load_state_dict_file(md.weight_path(part), part=part)
        assert all(t.dtype == torch.float32 for t in state.values() if t.is_floating_point()), part
    llm_state = torch.load(md.llm_path, weights_only=True)
    tied = llm_state["llm.model.lm_head.weight"], llm_state["llm.model.model.embed_tokens.weight"]
    assert tied[0].data_ptr() == tied[1].data_ptr()  # stored once, as in the official file


def test_v3_kit_keys_follow_the_official_files(kit3: Path) -> None:
    official = _official_rows()
    for part in PARTS:
        kit_keys = set(load_state_dict_file(kit3 / f"{part}.pt", part=part))
        assert kit_keys <= set(official[part]), (part, sorted(kit_keys - set(official[part]))[:3])
        assert {_layer_pattern(k) for k in kit_keys} == {_layer_pattern(k) for k in official[part]}, part


def test_v3_yaml_with_official_sizes_builds_exactly_the_official_state_dicts(tmp_path: Path) -> None:
    """The yaml writer names the official classes and arguments: at official sizes every key and shape
    of the official llm.pt / flow.pt / hift.pt comes out (built on the meta device, nothing allocated)."""
    from transformers import Qwen2Config

    official = _official_rows()
    config = read_model_yaml(write_model_yaml(tmp_path, OFFICIAL_V3_DIMS), {"qwen_pretrain_path": str(tmp_path)})
    qwen = Qwen2Config(**qwen_config_dict(OFFICIAL_V3_DIMS, OFFICIAL_QWEN_VOCAB))
    with torch.device("meta"):
        modules = {"llm": build_llm(config, qwen_config=qwen), "flow": build_flow(config), "hift": build_hift(config)}
    for part, module in modules.items():
        got = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        assert got == official[part], part


# ------------------------------------------------------------------------------------------ tokenizer


def test_v3_tokenizer_has_the_official_special_order(kit3: Path) -> None:
    md = ModelDir(kit3)
    tok = TextTokenizer(md.root, md.hparams.tokenizer_version)
    endoftext = tok.token_id(QWEN_SPECIALS[0])
    # Official: <|endoftext|> 151643, <|endofprompt|> 151646, <|endofsystem|> 151663, last [ǜ] 151923.
    assert tok.token_id("<|endofprompt|>") - endoftext == 151646 - 151643
    assert tok.token_id("<|endofsystem|>") - endoftext == 151663 - 151643
    assert tok.token_id("[ǜ]") - endoftext == 151923 - 151643
    specials = [*QWEN_SPECIALS[1:], *COSYVOICE3_SPECIALS]
    assert [tok.token_id(s) for s in specials] == list(range(endoftext + 1, endoftext + 1 + len(specials)))
    vocab = json.loads((md.qwen_dir / "config.json").read_text())["vocab_size"]
    assert len(tok) <= vocab and vocab % 128 == 0  # every v3 id has an embedding row
    ids = tok.encode("You are a helpful assistant.<|endofprompt|>今天天气很好。")
    assert ids.count(tok.token_id("<|endofprompt|>")) == 1


def test_official_text_ids_kit_matches_the_official_ids_and_encodes_text_alike(kit3: Path, tmp_path: Path) -> None:
    kit = build_kit(tmp_path / "official", version="cosyvoice3", official_text_ids=True).model_dir
    md = ModelDir(kit)
    md.check()
    tok = TextTokenizer(kit, "cosyvoice3")
    official = {
        "<|endoftext|>": 151643,
        "<|endofprompt|>": keys.END_OF_PROMPT_ID,
        "<|endofsystem|>": 151663,
        "[ǜ]": 151923,
    }
    assert {t: tok.token_id(t) for t in official} == official
    assert json.loads((md.qwen_dir / "config.json").read_text())["vocab_size"] == OFFICIAL_QWEN_VOCAB
    tiny = TextTokenizer(kit3, "cosyvoice3")
    for line in CORPUS.splitlines():  # padding never changes how text encodes
        assert tok.encode(line) == tiny.encode(line)
    prompt = "You are a helpful assistant.<|endofprompt|>你好。"
    assert keys.END_OF_PROMPT_ID in tok.encode(prompt)
    llm = load_llm(md)
    assert llm.text_embedding.weight.shape[0] == OFFICIAL_QWEN_VOCAB


# ------------------------------------------------------------------------------------------ determinism


def test_v3_kit_is_deterministic_for_a_seed(kit3: Path, tmp_path: Path) -> None:
    rng_before = torch.random.get_rng_state()
    again = build_kit(tmp_path / "again", seed=0, version="cosyvoice3").model_dir
    assert torch.equal(rng_before, torch.random.get_rng_state())  # global RNG left alone
    for name in ("llm.pt", "flow.pt", "hift.pt"):
        a, b = load_state_dict_file(kit3 / name), load_state_dict_file(again / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name

    def digest(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    assert digest(kit3 / "cosyvoice3.yaml") == digest(again / "cosyvoice3.yaml")
    assert digest(kit3 / "CosyVoice-BlankEN" / "vocab.json") == digest(again / "CosyVoice-BlankEN" / "vocab.json")


# ------------------------------------------------------------------------------------------ CLI and errors


def test_cli_writes_a_v3_kit_and_switches_a_v2_directory(kit3: Path, tmp_path: Path, capsys) -> None:
    target = tmp_path / "m"
    target.mkdir()
    for stale in ("cosyvoice2.yaml", "speech_tokenizer_v2.onnx"):  # left over from a v2 kit
        (target / stale).write_text("old")
    assert main(["kit", str(target), "--version", "cosyvoice3", "--seed", "3"]) == 0
    assert "proves plumbing, not voice quality" in capsys.readouterr().out
    assert not (target / "cosyvoice2.yaml").exists() and not (target / "speech_tokenizer_v2.onnx").exists()
    md = ModelDir(target)
    md.check()
    assert md.version == "v3"
    seed3, seed0 = load_state_dict_file(target / "llm.pt"), load_state_dict_file(kit3 / "llm.pt")
    assert not torch.equal(seed3["speech_embedding.weight"], seed0["speech_embedding.weight"])


def test_cli_refuses_an_unknown_version(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["kit", str(tmp_path / "m"), "--version", "cosyvoice4"])
    assert exc.value.code == 2
    assert "invalid choice: 'cosyvoice4'" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_build_kit_refuses_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="kit version 'v3'"):
        build_kit(tmp_path / "a", version="v3")
    with pytest.raises(TypeError, match="KitDimsV3"):
        build_kit(tmp_path / "b", dims=KitDims(), version="cosyvoice3")
    with pytest.raises(TypeError, match="KitDims"):
        build_kit(tmp_path / "c", dims=DEFAULT_KIT_DIMS_V3)
    assert not any(tmp_path.iterdir())
