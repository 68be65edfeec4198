"""A generated project under real git, DVC and MLflow: `cosyml init` with a Unicode speaker, `dvc repro`
killed during train_llm resumes (not restarts) and ends with the weights of an uninterrupted run
(`mlflow run . -e train_llm` in the same project), and the full pipeline ends with a champion."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch

from cosyml.registry import speaker_model_name

ROOT = Path(__file__).resolve().parents[1]
SPEAKER = "派蒙"
pytestmark = pytest.mark.slow

# The user's edits after init: a tiny kit needs few epochs and a short evaluation (the real-run values are
# what `cosyml init` writes; see test_init.py). Per-epoch samples off: see issue 17.1 (sampler RNG).
EDITS = [
    ("prepare", "check_transcripts", "off"),  # the kit's random Whisper hears nothing (the demo uses the trained one)
    ("shards", "min_shards", "2"),
    ("train", "max_epochs", "4"),
    ("train", "sample_every_epochs", "0"),
    ("evaluate", "max_utts", "1"),
    ("evaluate", "max_tokens", "8"),
    ("evaluate", "synth_max_tokens", "50"),
    ("evaluate", "subsets", "[zero_shot/zh]"),
    ("tune", "n_trials", "2"),
    ("tune", "max_utts", "1"),
]


def set_param(text: str, section: str, key: str, value: str) -> str:
    pattern = re.compile(rf"(^{section}:\n(?:  .*\n|\n)*?  {key}: )[^#\n]*?(  #)", re.M)
    text, n = pattern.subn(lambda m: m.group(1) + value + m.group(2), text, count=1)
    assert n == 1, f"{section}.{key} not in params.yaml"
    return text


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    base = tmp_path_factory.mktemp("own-voice")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{base / 'p' / 'mlflow.db'}",
        "DVC_NO_ANALYTICS": "1",
        "OMP_NUM_THREADS": "2",
    }
    env.pop("MLFLOW_RUN_ID", None)
    _run(["cosyml", "kit", str(base / "model")], base, env)
    shutil.copytree(ROOT / "examples" / "toy_speaker", base / "clips")
    out = _run(
        [
            "cosyml",
            "init",
            str(base / "p"),
            "--model-dir",
            str(base / "model"),
            "--clips",
            str(base / "clips"),
            "--speaker",
            SPEAKER,
            "--whisper",
            str(base / "model" / "whisper.pt"),
        ],
        base,
        env,
    )
    assert "dvc repro" in out
    proj = base / "p"
    params = proj / "params.yaml"
    text = params.read_text(encoding="utf-8")
    for section, key, value in EDITS:
        text = set_param(text, section, key, value)
    params.write_text(text, encoding="utf-8")
    return proj, env


def _model_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_killed_repro_resumes_training_and_matches_an_uninterrupted_run(project):
    proj, env = project
    _run(["dvc", "repro", "shards"], proj, env)
    checkpoints = proj / "exp" / "llm" / "checkpoints"
    proc = subprocess.Popen(
        ["dvc", "repro", "train_llm"],
        cwd=proj,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600
    while not (checkpoints / "epoch_0.json").exists():
        assert proc.poll() is None, "train_llm ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (checkpoints / "epoch_3.json").exists()  # killed mid-run

    out = _run(["dvc", "repro", "train_llm"], proj, env)
    assert "resuming llm from" in out and "starting over" not in out
    assert "trained llm: 4 epochs" in out

    # the same training, uninterrupted, through the project's MLproject
    _run(
        [
            "mlflow",
            "run",
            ".",
            "-e",
            "train_llm",
            "--env-manager",
            "local",
            "-P",
            "output=exp/llm-uninterrupted",
            "-P",
            "resume=none",
        ],
        proj,
        env,
    )
    resumed = _model_state(checkpoints / "epoch_3.pt")
    reference = _model_state(proj / "exp" / "llm-uninterrupted" / "checkpoints" / "epoch_3.pt")
    assert resumed.keys() == reference.keys()
    worst = max((resumed[k].double() - reference[k].double()).abs().max().item() for k in resumed)
    assert worst <= 1e-6, f"resumed weights differ from an uninterrupted run by {worst}"


def test_full_repro_ends_with_a_champion_for_a_unicode_speaker(project):
    proj, env = project
    out = _run(["dvc", "repro"], proj, env)
    assert "Running stage 'promote'" in out
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(f"cosyml/{SPEAKER}")
    assert experiment is not None
    stages = {r.data.tags.get("cosyml.stage") for r in client.search_runs([experiment.experiment_id])}
    assert {"prepare", "extract", "shards", "train_llm", "train_flow", "evaluate", "promote"} <= stages
    name = speaker_model_name(SPEAKER)
    model = client.get_registered_model(name)
    assert model.tags["cosyml.speaker"] == SPEAKER and SPEAKER in model.description
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.tags["cosyml.speaker"] == SPEAKER
    utts = (proj / "data" / "prepared" / "train" / "text").read_text(encoding="utf-8").split("\n")
    assert utts[0].startswith(f"{SPEAKER}_")
    # `dvc plots show` works without internet: init gave the project a page template that carries vega
    assert "html_template = plots/offline.html" in (proj / ".dvc" / "config").read_text(encoding="utf-8")
    _run(["dvc", "plots", "show", "-o", "plots-page"], proj, env)
    page = (proj / "plots-page" / "index.html").read_text(encoding="utf-8")
    assert "cdn.jsdelivr" not in page and "vegaEmbed" in page
