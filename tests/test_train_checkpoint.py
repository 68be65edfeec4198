"""Checkpoints: atomic writes, kill safety, retention, export to an official weight file."""

from __future__ import annotations

import pytest
import torch
from train_helpers import TinyLM

from cosyml.errors import ConfigError
from cosyml.train.checkpoint import (
    CheckpointInfo,
    apply_retention,
    capture_rng,
    export_model_state,
    latest_resumable,
    list_checkpoints,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)

TIED = ("llm.model.lm_head.weight", "llm.model.model.embed_tokens.weight")


def info(name: str, step: int, kind: str = "epoch", cv: float | None = None) -> CheckpointInfo:
    return CheckpointInfo(
        name, kind, epoch=step, step=step, next_epoch=step + 1, next_batch=0, config_hash="h", cv_loss=cv
    )


def payload(model: torch.nn.Module) -> dict:
    return {"model": model.state_dict(), "optimizer": {}, "rng": [capture_rng()], "extra": {}}


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("killed mid-write")


def test_failed_write_leaves_the_previous_checkpoint_intact_and_no_temp_file(tmp_path):
    model = TinyLM()
    save_checkpoint(tmp_path, info("epoch_0", 1), payload(model))
    before = (tmp_path / "epoch_0.pt").read_bytes()
    with pytest.raises(RuntimeError, match="killed mid-write"):
        save_checkpoint(tmp_path, info("epoch_0", 2), {**payload(model), "bad": Unpicklable()})
    assert (tmp_path / "epoch_0.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0.json", "epoch_0.pt"]
    assert load_checkpoint(tmp_path / "epoch_0.pt")["info"]["step"] == 1


def test_a_killed_writers_temp_files_are_never_used(tmp_path):
    model = TinyLM()
    save_checkpoint(tmp_path, info("step_1", 1, "step"), payload(model))
    # what a process killed during torch.save leaves behind: a truncated temp file, no .json
    (tmp_path / ".step_2.pt.abc123.tmp").write_bytes(b"PK\x03\x04trunc")
    (tmp_path / "step_3.pt").write_bytes(b"half")  # a .pt whose .json was never written
    assert latest_resumable(tmp_path).name == "step_1"
    save_checkpoint(tmp_path, info("step_4", 4, "step"), payload(model))
    assert not list(tmp_path.glob(".*.tmp"))


def test_config_mismatch_is_refused_in_one_line(tmp_path):
    save_checkpoint(tmp_path, info("epoch_0", 1), payload(TinyLM()))
    with pytest.raises(ConfigError, match=r"epoch_0\.pt: written under another training config") as err:
        load_checkpoint(tmp_path / "epoch_0.pt", expected_hash="other")
    assert "\n" not in str(err.value)


def test_rng_round_trip_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(5)
    import random

    import numpy as np

    save_checkpoint(tmp_path, info("step_1", 1, "step"), payload(TinyLM()))
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    restore_rng(load_checkpoint(tmp_path / "step_1.pt")["rng"][0])
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


def test_retention_keeps_last_full_and_best_slim(tmp_path):
    model = TinyLM()
    losses = [5.0, 1.0, 4.0, 2.0, 3.0]
    for epoch, loss in enumerate(losses):
        save_checkpoint(tmp_path, info(f"epoch_{epoch}", epoch + 1, cv=loss), payload(model))
        apply_retention(tmp_path, keep_last=1, keep_best=2)
    kept = {i.name: i.full for i in list_checkpoints(tmp_path)}
    assert kept == {"epoch_1": False, "epoch_3": False, "epoch_4": True}
    slim = load_checkpoint(tmp_path / "epoch_1.pt")
    assert "optimizer" not in slim and set(slim["model"]) == set(model.state_dict())


def test_export_writes_an_official_plain_state_dict(tmp_path):
    model = TinyLM()
    save_checkpoint(tmp_path, info("epoch_0", 1), payload(model))
    out = export_model_state(tmp_path / "epoch_0.pt", tmp_path / "llm.pt")
    state = torch.load(out, weights_only=True)
    assert "epoch" not in state and "step" not in state and "optimizer" not in state
    assert state[TIED[0]] is state[TIED[1]]  # stored once, as upstream does
    assert all(v.dtype == torch.float32 for k, v in state.items() if k != "seen")
    TinyLM().load_state_dict(state, strict=True)
