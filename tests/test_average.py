"""Checkpoint averaging: best-n by CV loss or last-n, tied tensors kept tied, integer buffers not averaged."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
from train_helpers import TinyLM

from cosyml.errors import InputError
from cosyml.train.average import average_checkpoints, select_checkpoints
from cosyml.train.checkpoint import CheckpointInfo, save_checkpoint

TIED = ("llm.model.lm_head.weight", "llm.model.model.embed_tokens.weight")


@pytest.fixture
def run_dir(tmp_path):
    """Five epoch checkpoints; model i has every float weight equal to i and the step counter 10 * i."""
    for i, cv in enumerate([5.0, 1.0, 4.0, 2.0, 3.0]):
        model = TinyLM()
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float(i))
        model.seen.fill_(10 * i)
        record = CheckpointInfo(f"epoch_{i}", "epoch", i, 10 * (i + 1), i + 1, 0, "h", cv_loss=cv)
        save_checkpoint(tmp_path, record, {"model": model.state_dict()})
    return tmp_path


def test_best_n_by_cv_loss(run_dir, tmp_path):
    assert [i.name for i in select_checkpoints(run_dir, 3, "cv_loss")] == ["epoch_1", "epoch_3", "epoch_4"]
    result = average_checkpoints(run_dir, tmp_path / "out" / "llm.pt", num=3, by="cv_loss")
    state = torch.load(result.path, weights_only=True)
    assert torch.all(state["spk_proj.weight"] == (1 + 3 + 4) / 3)
    assert state["seen"].dtype == torch.long and int(state["seen"]) == 40  # newest selected, not averaged
    assert state[TIED[0]] is state[TIED[1]]
    model = TinyLM()
    model.load_state_dict(state, strict=True)
    assert model.llm.model.lm_head.weight is model.llm.model.model.embed_tokens.weight


def test_last_n(run_dir, tmp_path):
    result = average_checkpoints(run_dir, tmp_path / "flow.pt", num=2, by="last")
    assert result.sources == ["epoch_3", "epoch_4"]
    state = torch.load(result.path, weights_only=True)
    assert torch.all(state["norm.weight"] == 3.5) and state["norm.weight"].dtype == torch.float32


def test_no_epoch_checkpoints_is_one_line(tmp_path):
    with pytest.raises(InputError, match="no epoch checkpoints to average"):
        average_checkpoints(tmp_path, tmp_path / "llm.pt")


def test_two_averages_of_the_same_checkpoints_are_byte_identical_and_a_rerun_leaves_the_file(run_dir, tmp_path):
    """DVC compares md5s: the file name (or the temp file's) must not end up inside the weight file."""
    a = average_checkpoints(run_dir, tmp_path / "a" / "llm.pt", num=3).path
    b = average_checkpoints(run_dir, tmp_path / "b" / "other_name.pt", num=3).path
    assert hashlib.md5(a.read_bytes()).hexdigest() == hashlib.md5(b.read_bytes()).hexdigest()
    os.utime(a, ns=(1, 1))
    average_checkpoints(run_dir, a, num=3)
    assert a.stat().st_mtime_ns == 1  # same bytes: not rewritten


def test_a_run_stopped_by_max_steps_inside_its_first_epoch_averages_its_last_step(tmp_path):
    """The full-size rehearsal (train.max_steps=2) left only step checkpoints and `cosyml average` refused it."""
    for step in (1, 2):
        model = TinyLM()
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float(step))
        record = CheckpointInfo(f"step_{step}", "step", 0, step, 1, 0, "h")
        save_checkpoint(tmp_path, record, {"model": model.state_dict()})
    result = average_checkpoints(tmp_path, tmp_path / "out" / "llm.pt", num=5, by="cv_loss")
    assert result.sources == ["step_2"]
    assert torch.all(torch.load(result.path, weights_only=True)["norm.weight"] == 2.0)
