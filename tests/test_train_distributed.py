"""`cosyml train` under real `torchrun` (gloo on the CPU): one node with two ranks, and two nodes of one
rank each rendezvousing on 127.0.0.1, with per-epoch samples, resume and a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _servers import free_port
from train_helpers import write_cli_shards

from cosyml.train.checkpoint import list_checkpoints, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workspace(kit_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    write_cli_shards(root / "data", num_train=8, num_dev=2)
    return root


def env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",  # two ranks on a small machine: one thread each
    }


def params(root: Path, kit_dir: Path, **train: object) -> Path:
    settings = {"max_epochs": 2, "lr": 0.001, "precision": "fp32", "device": "cpu", "log_every_steps": 1,
                "average_num": 2, "sample_every_epochs": 1, "sample_max_tokens": 8, "accum_grad": 1, "seed": 5}  # fmt: skip
    settings.update(train)
    lines = [f"model_dir: {kit_dir}", "prepare:", "  speaker: ddp", "train:"]
    lines += [f"  {k}: {v}" for k, v in settings.items()]
    path = root / f"params_{abs(hash(tuple(sorted(settings.items()))))}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def train_cmd(root: Path, output: Path, params_file: Path, *launcher: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "cosyml", "train", "llm",
            "--data", str(root / "data" / "shards"), "--output", str(output), "--params", str(params_file)]  # fmt: skip


def run(cmd: list[str], cwd: Path, timeout: float = 400) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done


def final_weights(output: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(max(list_checkpoints(output / "checkpoints"), key=lambda i: i.step).path)["model"]


def test_cli_under_torchrun_two_ranks_runs_to_the_end_with_samples_and_resume(workspace, kit_dir):
    """Rank 0 logs, writes checkpoints and renders samples alone; no collective may hide in that work."""
    out = workspace / "exp_two_ranks" / "llm"
    launcher = ("--standalone", "--nproc_per_node", "2")
    first = run(train_cmd(workspace, out, params(workspace, kit_dir, max_epochs=1), *launcher), workspace)
    assert "trained llm: 1 epochs" in first.stdout
    assert sorted((out / "samples").glob("epoch_000/*.wav"))
    second = run(train_cmd(workspace, out, params(workspace, kit_dir, max_epochs=2), *launcher), workspace)
    assert "trained llm: 2 epochs" in second.stdout  # resumed from epoch_0, trained epoch 1
    assert sorted((out / "samples").glob("epoch_001/*.wav"))
    assert {"epoch_0", "epoch_1"} <= {i.name for i in list_checkpoints(out / "checkpoints")}
    assert (out / "llm.pt").is_file()
