"""Model-directory I/O: version detection, checks, strict loading and official-format saving."""

from __future__ import annotations

import os
import shutil
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from cosyml.errors import ModelDirError
from cosyml.kit.model_yaml import KitDims, write_model_yaml, write_qwen_backbone
from cosyml.models.modeldir import (
    ModelDir,
    load_state_dict_file,
    load_strict,
    remove_stale_exports,
    save_state_dict,
)


@pytest.fixture(scope="module")
def kit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kit")
    write_model_yaml(root / "cosyvoice2.yaml")
    write_qwen_backbone(root / "CosyVoice-BlankEN", vocab_size=256)
    for name in ("llm.pt", "flow.pt", "hift.pt", "campplus.onnx", "speech_tokenizer_v2.onnx"):
        (root / name).write_bytes(b"x")
    for name in ("vocab.json", "merges.txt"):
        (root / "CosyVoice-BlankEN" / name).write_text("{}")
    return root


def copy_of(kit_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(kit_dir, dst)
    return dst


# ---------------------------------------------------------------------------------------------
# ModelDir


def test_paths_version_and_hparams_come_from_the_directory(kit_dir: Path) -> None:
    md = ModelDir(kit_dir)
    assert md.version == "v2"
    assert md.speech_tokenizer_path.name == "speech_tokenizer_v2.onnx"
    assert md.config["qwen_pretrain_path"] == str(kit_dir / "CosyVoice-BlankEN")
    assert md.config["llm"].get("llm").get("pretrain_path") == str(kit_dir / "CosyVoice-BlankEN")
    hp = md.hparams
    assert (hp.sample_rate, hp.mel.fmax, hp.tokenizer_version, hp.llm_input_size) == (24000, 8000.0, "cosyvoice2", 64)
    assert hp.sampling.top_k == 25 and hp.mix_ratio == (5, 15)
    md.check()


def test_v3_is_detected_and_its_fmax_and_tokenizer_version_are_read(tmp_path: Path) -> None:
    text = write_model_yaml(tmp_path / "x.yaml").read_text()
    text = text.replace("fmax: 8000", "fmax: null").replace(
        "skip_special_tokens: True", "skip_special_tokens: True\n    version: cosyvoice3"
    )
    (tmp_path / "cosyvoice3.yaml").write_text(text)
    (tmp_path / "x.yaml").unlink()
    md = ModelDir(tmp_path)
    assert md.version == "v3" and md.speech_tokenizer_path.name == "speech_tokenizer_v3.onnx"
    assert md.hparams.mel.fmax is None and md.hparams.tokenizer_version == "cosyvoice3"
    with pytest.raises(
        ModelDirError, match=r"cosyvoice3\.yaml: 'llm' is Qwen2LM but a v3 directory needs CosyVoice3LM"
    ):
        md.check()


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        (lambda d: None, "no cosyvoice2.yaml or cosyvoice3.yaml"),
        (lambda d: (d / "cosyvoice.yaml").write_text("x: 1"), "v1"),
    ],
)
def test_directories_without_a_v2_or_v3_yaml_are_refused(tmp_path: Path, setup, match: str) -> None:
    setup(tmp_path)
    with pytest.raises(ModelDirError, match=match):
        ModelDir(tmp_path)
    with pytest.raises(ModelDirError, match="not found"):
        ModelDir(tmp_path / "nope")


@pytest.mark.parametrize(
    "missing", ["flow.pt", "campplus.onnx", "speech_tokenizer_v2.onnx", "CosyVoice-BlankEN/config.json"]
)
def test_check_names_the_missing_file_in_one_line(kit_dir: Path, tmp_path: Path, missing: str) -> None:
    root = copy_of(kit_dir, tmp_path)
    (root / missing).unlink()
    with pytest.raises(ModelDirError) as err:
        ModelDir(root).check()
    assert str(root / missing) in str(err.value) and "\n" not in str(err.value)


def test_check_refuses_empty_files_and_can_skip_the_frontend(kit_dir: Path, tmp_path: Path) -> None:
    root = copy_of(kit_dir, tmp_path)
    (root / "hift.pt").write_bytes(b"")
    (root / "campplus.onnx").unlink()
    ModelDir(root).check(parts=("llm", "flow"), frontend=False)
    with pytest.raises(ModelDirError, match=r"hift\.pt: empty file"):
        ModelDir(root).check(frontend=False)


def test_bad_hyperparameter_is_named(kit_dir: Path, tmp_path: Path) -> None:
    root = copy_of(kit_dir, tmp_path)
    yaml_path = root / "cosyvoice2.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("sample_rate: 24000", "sample_rate: fast"))
    with pytest.raises(ModelDirError, match="sample_rate"):
        _ = ModelDir(root).hparams


# ---------------------------------------------------------------------------------------------
# state dicts


class Tiny(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.proj = nn.Linear(width, 3)
        self.norm = nn.LayerNorm(3)


def test_training_checkpoint_entries_are_stripped(tmp_path: Path) -> None:
    module = Tiny()
    torch.save({**module.state_dict(), "epoch": 3, "step": 120}, tmp_path / "epoch_3_whole.pt")
    state = load_state_dict_file(tmp_path / "epoch_3_whole.pt")
    assert set(state) == set(module.state_dict())
    load_strict(Tiny(), tmp_path / "epoch_3_whole.pt")


def test_hift_generator_prefix_is_stripped_and_discriminator_dropped(tmp_path: Path) -> None:
    module = Tiny()
    state = {f"generator.{k}": v for k, v in module.state_dict().items()}
    state["discriminator.w"] = torch.zeros(1)
    torch.save(state, tmp_path / "hift.pt")
    assert set(load_state_dict_file(tmp_path / "hift.pt")) == set(module.state_dict())


def test_weight_norm_spellings_are_both_accepted(tmp_path: Path) -> None:
    old = nn.utils.weight_norm(nn.Conv1d(2, 3, 3))  # weight_g / weight_v
    new = nn.utils.parametrizations.weight_norm(nn.Conv1d(2, 3, 3))  # parametrizations.weight.original0/1
    torch.save(old.state_dict(), tmp_path / "old.pt")
    load_strict(new, tmp_path / "old.pt")
    assert torch.allclose(new.weight, old.weight)
    torch.save(new.state_dict(), tmp_path / "new.pt")
    load_strict(old, tmp_path / "new.pt")


def test_mismatch_names_file_keys_and_shapes_in_one_line(tmp_path: Path) -> None:
    state = Tiny(width=5).state_dict()
    state["extra.weight"] = torch.zeros(2)
    del state["norm.bias"]
    torch.save(state, tmp_path / "flow.pt")
    with pytest.raises(ModelDirError) as err:
        load_strict(Tiny(width=4), tmp_path / "flow.pt")
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "flow.pt") in message
    assert "1 missing (e.g. norm.bias)" in message
    assert "1 unexpected (e.g. extra.weight)" in message
    assert "proj.weight: expected 3x4 found 3x5" in message


@pytest.mark.parametrize(
    ("content", "match"),
    [(None, "not found"), ("garbage", "cannot be read"), ([1, 2], "not a state dict"), ({"a": "b"}, "not a tensor")],
)
def test_unreadable_weight_files_are_reported(tmp_path: Path, content: object, match: str) -> None:
    path = tmp_path / "llm.pt"
    if content == "garbage":
        path.write_bytes(b"not a pickle at all")
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(ModelDirError, match=match):
        load_state_dict_file(path)


def test_weights_only_refuses_arbitrary_objects(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(1), "obj": Path("x")}, tmp_path / "flow.pt")
    with pytest.raises(ModelDirError, match="weights_only"):
        load_state_dict_file(tmp_path / "flow.pt")


class Tied(nn.Module):
    """The LLM's tied-embedding layout in miniature (same key names)."""

    def __init__(self) -> None:
        super().__init__()
        self.llm = nn.Module()
        self.llm.model = nn.Module()
        self.llm.model.model = nn.Module()
        self.llm.model.model.embed_tokens = nn.Embedding(1000, 64)
        self.llm.model.lm_head = nn.Linear(64, 1000, bias=False)
        self.llm.model.lm_head.weight = self.llm.model.model.embed_tokens.weight


def test_save_writes_plain_fp32_cpu_dict_with_ties_stored_once(tmp_path: Path) -> None:
    module = Tied().to(torch.bfloat16)
    path = save_state_dict(module, tmp_path / "llm.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["llm.pt"]  # no temp file left
    raw = torch.load(path, weights_only=True)
    assert type(raw) is OrderedDict and list(raw) == list(module.state_dict())
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in raw.values())
    embed, head = raw["llm.model.model.embed_tokens.weight"], raw["llm.model.lm_head.weight"]
    assert embed.untyped_storage().data_ptr() == head.untyped_storage().data_ptr()
    assert path.stat().st_size < 1000 * 64 * 4 * 1.2  # one copy of the 256 KB table
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_equal_untied_copies_are_stored_once(tmp_path: Path) -> None:
    module = Tied()
    module.llm.model.lm_head.weight = nn.Parameter(module.llm.model.model.embed_tokens.weight.detach().clone())
    path = save_state_dict(module, tmp_path / "llm.pt")
    assert path.stat().st_size < 1000 * 64 * 4 * 1.2


def test_save_is_atomic_when_writing_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "flow.pt"
    path.write_bytes(b"old")

    def broken_save(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_state_dict(Tiny(), path)
    assert path.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["flow.pt"]


def test_stale_exports_are_removed(tmp_path: Path) -> None:
    stale = [
        "flow.encoder.fp32.zip",
        "flow.encoder.fp16.zip",
        "flow.decoder.estimator.fp32.onnx",
        "flow.decoder.estimator.fp16.mygpu.plan",
    ]
    for name in [*stale, "campplus.onnx", "speech_tokenizer_v2.onnx"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "vllm").mkdir()
    (tmp_path / "vllm" / "config.json").write_text("{}")
    removed = {p.name for p in remove_stale_exports(tmp_path)}
    assert removed == {*stale, "vllm"}
    assert sorted(os.listdir(tmp_path)) == ["campplus.onnx", "speech_tokenizer_v2.onnx"]


def test_write_weights_replaces_the_file_and_clears_exports(kit_dir: Path, tmp_path: Path) -> None:
    from cosyml.models.llm import build_llm

    root = copy_of(kit_dir, tmp_path)
    (root / "flow.decoder.estimator.fp32.onnx").write_bytes(b"x")
    md = ModelDir(root)
    model = build_llm(md)
    md.write_weights("llm", model)
    assert not (root / "flow.decoder.estimator.fp32.onnx").exists()
    load_strict(build_llm(md), md.llm_path)


def test_kit_dims_reach_the_qwen_config(tmp_path: Path) -> None:
    import json

    write_qwen_backbone(tmp_path, vocab_size=300, dims=KitDims(llm_size=48, qwen_heads=4), endoftext_id=297)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["hidden_size"], config["vocab_size"], config["eos_token_id"]) == (48, 300, 297)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "generation_config.json").is_file()


def test_load_llm_reproduces_the_saved_model(kit_dir: Path, tmp_path: Path) -> None:
    from cosyml.models.llm import build_llm, load_llm

    root = copy_of(kit_dir, tmp_path)
    md = ModelDir(root)
    torch.manual_seed(3)
    model = build_llm(md).eval()
    md.write_weights("llm", model)
    loaded = load_llm(md)
    assert loaded.llm.model.lm_head.weight is loaded.llm.model.model.embed_tokens.weight
    batch = {
        "text_token": torch.tensor([[5, 6, 7, 8]]),
        "text_token_len": torch.tensor([4]),
        "speech_token": torch.tensor([list(range(20))]),
        "speech_token_len": torch.tensor([20]),
    }
    with torch.no_grad():
        want, got = model(batch, mode="bistream"), loaded(batch, mode="bistream")
    assert torch.equal(want.logits, got.logits)  # rotary buffers rebuilt after loading from meta


def test_one_version_detector_and_both_yamls_are_one_error(kit_dir: Path, tmp_path: Path) -> None:
    """ModelDir and the feature extractor used to disagree (v2 vs v3) on a folder with both yamls."""
    from cosyml.features.extract import find_frontend_models

    root = copy_of(kit_dir, tmp_path)
    shutil.copyfile(root / "cosyvoice2.yaml", root / "cosyvoice3.yaml")
    (root / "speech_tokenizer_v3.onnx").write_bytes(b"x")
    for detect in (ModelDir, find_frontend_models):
        with pytest.raises(ModelDirError, match=r"both cosyvoice2\.yaml and cosyvoice3\.yaml") as err:
            detect(root)
        assert "\n" not in str(err.value)


def test_broken_vocab_json_is_one_line(kit_dir: Path, tmp_path: Path) -> None:
    root = copy_of(kit_dir, tmp_path)
    (root / "CosyVoice-BlankEN" / "vocab.json").write_text('{"a": 1,', encoding="utf-8")
    with pytest.raises(ModelDirError, match=r"vocab\.json: not valid JSON"):
        ModelDir(root).check(frontend=False)


def test_corrupt_onnx_is_one_line(tmp_path: Path) -> None:
    from cosyml.features.onnx_runtime import make_session

    path = tmp_path / "campplus.onnx"
    path.write_bytes(b"\x08\x07garbage that is not a protobuf model")
    with pytest.raises(ModelDirError, match=r"campplus\.onnx: not a loadable ONNX model") as err:
        make_session(path, "cpu")
    assert "\n" not in str(err.value)
