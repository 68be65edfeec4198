"""Assembling a fine-tuned model directory: links for unchanged files, strict weights, spk2info."""

from __future__ import annotations

import pytest
import torch

from cosyml.cli import main
from cosyml.errors import InputError
from cosyml.models.modeldir import ModelDir, load_state_dict_file
from cosyml.train.assemble import assemble


@pytest.fixture()
def spk2embedding(tmp_path):
    path = tmp_path / "spk2embedding.pt"
    torch.save({"toy": [0.25] * 192}, path)
    return path


def test_assemble_links_base_files_and_writes_spk2info(tmp_path, kit_dir, spk2embedding):
    state = load_state_dict_file(kit_dir / "llm.pt")
    tuned = {k: v + 0.5 for k, v in state.items()}
    tuned["llm.model.lm_head.weight"] = tuned["llm.model.model.embed_tokens.weight"]  # tied, as trained
    torch.save({"model": tuned, "optimizer": {}}, tmp_path / "epoch_1.pt")  # a cosyml training checkpoint
    (kit_dir / "flow.decoder.estimator.fp32.onnx").write_bytes(b"stale")  # an export of the base weights

    out = assemble(kit_dir, tmp_path / "sft", "toy", spk2embedding, llm=tmp_path / "epoch_1.pt").model_dir
    (kit_dir / "flow.decoder.estimator.fp32.onnx").unlink()

    assert (out / "hift.pt").is_symlink() and (out / "flow.pt").is_symlink()
    assert not (out / "llm.pt").is_symlink()
    assert not (out / "flow.decoder.estimator.fp32.onnx").exists()
    written = load_state_dict_file(out / "llm.pt")
    assert torch.equal(written["llm_decoder.weight"], tuned["llm_decoder.weight"])
    raw = torch.load(out / "llm.pt", weights_only=True)
    assert raw["llm.model.lm_head.weight"].data_ptr() == raw["llm.model.model.embed_tokens.weight"].data_ptr()
    info = torch.load(out / "spk2info.pt", weights_only=True)
    assert list(info) == ["toy"] and info["toy"]["embedding"].shape == (1, 192)
    assert info["toy"]["embedding"].dtype == torch.float32 and info["toy"]["embedding"].device.type == "cpu"
    ModelDir(out).check()


def test_assemble_refuses_weights_of_another_layout(tmp_path, kit_dir, spk2embedding):
    torch.save({"llm_decoder.weight": torch.zeros(3, 3)}, tmp_path / "odd.pt")
    with pytest.raises(InputError, match=r"odd\.pt: .*missing"):
        assemble(kit_dir, tmp_path / "sft", "toy", spk2embedding, llm=tmp_path / "odd.pt")


def test_assemble_cli_unknown_speaker_is_one_line(tmp_path, kit_dir, spk2embedding, capsys, monkeypatch):
    monkeypatch.setenv("COSYML_TRACKING", "off")
    code = main(["assemble", "--base", str(kit_dir), "--out", str(tmp_path / "o"),
                 "--spk2embedding", str(spk2embedding), "--speaker", "nobody"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no speaker 'nobody' (known: toy)" in err[0]
