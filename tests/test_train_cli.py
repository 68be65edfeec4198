"""`cosyml train` as users run it (the tiny kit, real shards, real MLflow on sqlite): a finished run asked
again, checkpoint logging after resume, and two trainings aimed at one folder."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_helpers import write_cli_shards

from cosyml.cli import main

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_cli_shards(tmp_path_factory.mktemp("cli_train"), num_train=6, num_dev=2)


def params_file(folder: Path, kit_dir: Path, speaker: str, **train: object) -> Path:
    settings = {"max_epochs": 1, "lr": 0.001, "precision": "fp32", "device": "cpu", "log_every_steps": 1,
                "average_num": 2, "sample_every_epochs": 0, "accum_grad": 1, "seed": 5}  # fmt: skip
    settings.update(train)
    lines = [f"model_dir: {kit_dir}", "prepare:", f"  speaker: {speaker}", "train:"]
    lines += [f"  {k}: {v}" for k, v in settings.items()]
    path = folder / f"params_{speaker}_{len(list(folder.glob('params_*')))}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def train_args(shards: Path, output: Path, params: Path) -> list[str]:
    return ["train", "llm", "--data", str(shards), "--output", str(output), "--params", str(params)]


def runs_of(speaker: str) -> list:
    import mlflow

    return mlflow.search_runs(experiment_names=[f"cosyml/{speaker}"], output_format="list")


def test_a_finished_run_asked_again_says_so_and_rewrites_nothing(shards, kit_dir, tmp_path, capsys):
    """`mlflow run -e train_llm` after the demo 'resumed' a finished run and rewrote the DVC-tracked llm.pt."""
    out = tmp_path / "exp" / "llm"
    params = params_file(tmp_path, kit_dir, "done")
    assert main(train_args(shards, out, params)) == 0
    weights = out / "llm.pt"
    md5, mtime = hashlib.md5(weights.read_bytes()).hexdigest(), weights.stat().st_mtime_ns
    (trained,) = runs_of("done")
    assert {"train/loss", "epoch/cv_loss"} <= set(trained.data.metrics)
    assert "data/train_utts" in trained.data.params  # counts are params: the run page opens with the curves
    capsys.readouterr()

    assert main(train_args(shards, out, params)) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "already trained (epoch_0: 1 epochs" in printed[0], printed
    assert weights.stat().st_mtime_ns == mtime and hashlib.md5(weights.read_bytes()).hexdigest() == md5
    assert len(runs_of("done")) == 1  # no empty run in the experiment


def test_best_checkpoint_logging_after_resume_follows_the_loops_rule(shards, kit_dir, tmp_path):
    """The command kept its own best that ignored early_stop_min_delta and the best restored on resume."""
    from mlflow import MlflowClient

    out = tmp_path / "exp" / "llm"
    # min_delta this large: only the first epoch ever counts as an improvement
    first = params_file(tmp_path, kit_dir, "best", max_epochs=1, early_stop_min_delta=1e9)
    second = params_file(tmp_path, kit_dir, "best", max_epochs=2, early_stop_min_delta=1e9)
    assert main(train_args(shards, out, first)) == 0
    assert main(train_args(shards, out, second)) == 0  # resumes after epoch_0
    client = MlflowClient()
    by_start = sorted(runs_of("best"), key=lambda r: r.info.start_time)
    logged = [[a.path for a in client.list_artifacts(r.info.run_id, "checkpoints")] for r in by_start]
    # one best.pt (weights only) + best.json naming it; the resumed run finds nothing better to upload
    assert logged == [["checkpoints/best.json", "checkpoints/best.pt"], []], logged
    best = json.loads(Path(client.download_artifacts(by_start[0].info.run_id, "checkpoints/best.json")).read_text())
    assert best["checkpoint"] == "epoch_0"


def test_a_second_train_into_the_same_folder_stops_at_once_naming_the_holder(shards, kit_dir, tmp_path):
    out = tmp_path / "exp" / "llm"
    params = params_file(tmp_path, kit_dir, "lock", max_epochs=3)
    cmd = [sys.executable, "-m", "cosyml", *train_args(shards, out, params)]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    lock = out.parent / ".llm.lock"
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (lock.is_file() and f"pid {first.pid} " in lock.read_text()):
            assert first.poll() is None and time.monotonic() < deadline, "the first training never took the lock"
            time.sleep(0.2)
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert first.poll() is None  # checked while the first still holds the folder
        assert second.returncode == 2, second.stderr[-2000:]
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"in use by pid {first.pid}" in lines[0] and "cosyml train llm" in lines[0], lines
        _, err = first.communicate(timeout=300)
        assert first.returncode == 0, err[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert (out / "llm.pt").is_file()


@pytest.mark.slow
def test_flow_killed_after_its_first_checkpoint_resumes_to_the_uninterrupted_weights(shards, kit_dir, tmp_path):
    """kill -9 during epoch 0's audio samples, rerun: the sampler's engine had drawn on the training RNG
    after the checkpoint captured it, so 205/205 tensors differed."""
    from cosyml.train.checkpoint import list_checkpoints, load_checkpoint

    params = params_file(tmp_path, kit_dir, "flowkill", max_epochs=2, sample_every_epochs=1, sample_max_tokens=8)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}

    def cmd(out: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "cosyml",
            "train",
            "flow",
            "--data",
            str(shards),
            "--output",
            str(out),
            "--params",
            str(params),
        ]

    straight = tmp_path / "straight" / "flow"
    subprocess.run(cmd(straight), env=env, check=True, capture_output=True, timeout=600)

    killed = tmp_path / "killed" / "flow"
    proc = subprocess.Popen(cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (killed / "checkpoints" / "epoch_0.json").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, "training ended before its first checkpoint"
        time.sleep(0.05)
    proc.kill()  # SIGKILL, while epoch 0's samples render
    proc.wait()
    assert not (killed / "checkpoints" / "epoch_1.json").is_file(), "the kill came too late"
    subprocess.run(cmd(killed), env=env, check=True, capture_output=True, timeout=600)  # --resume auto

    def final(out: Path) -> dict:
        return load_checkpoint(next(i for i in list_checkpoints(out / "checkpoints") if i.name == "epoch_1").path)[
            "model"
        ]

    a, b = final(straight), final(killed)
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)}/{len(a)} tensors differ"
    assert sorted((killed / "samples").glob("epoch_001/*.wav"))
