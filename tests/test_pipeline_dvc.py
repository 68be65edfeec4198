"""The demo pipeline under real DVC: every stage runs, a second repro does nothing, a changed param
reruns only what depends on it, and each stage execution is an MLflow run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import mlflow
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

#: Every stage of the demo's dvc.yaml (``average`` is a foreach over both parts).
DVC_STAGES = (
    "kit",
    "prepare",
    "extract",
    "shards",
    "train_llm",
    "train_flow",
    "average@llm",
    "average@flow",
    "assemble",
    "evaluate",
    "tune",
    "promote",
)


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = tmp_path_factory.mktemp("dvc") / "project"
    ws.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, ws / name)
    shutil.copytree(ROOT / "examples" / "toy_speaker", ws / "examples" / "toy_speaker")
    shutil.copytree(ROOT / "eval", ws / "eval")
    shutil.copytree(ROOT / "cosyml", ws / "cosyml", ignore=shutil.ignore_patterns("__pycache__"))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{ws / 'mlflow.db'}",
        "DVC_NO_ANALYTICS": "1",
        "OMP_NUM_THREADS": "2",
    }
    env.pop("MLFLOW_RUN_ID", None)
    _run(["git", "init", "-q"], ws, env)
    _run(["dvc", "init", "-q"], ws, env)
    _run(["dvc", "config", "core.analytics", "false"], ws, env)
    _run(["dvc", "remote", "add", "-d", "local", str(ws.parent / "remote")], ws, env)
    return ws, env


def test_full_repro_then_noop_then_param_change(workspace):
    ws, env = workspace
    out = _run(["dvc", "repro"], ws, env)
    assert sorted(re.findall(r"Running stage '([^']+)'", out)) == sorted(DVC_STAGES)
    assert (ws / "models" / "sft" / "spk2info.pt").is_file()
    assert (ws / "data" / "shards" / "train" / "data.list").is_file()
    assert (ws / "exp" / "eval" / "report.html").is_file()
    assert (ws / "exp" / "tune" / "sampling.json").is_file()

    again = _run(["dvc", "repro"], ws, env)
    assert "Running stage" not in again
    assert "Data and pipelines are up to date" in again

    params = (ws / "params.yaml").read_text()
    assert "  min_shards: 2  #" in params
    (ws / "params.yaml").write_text(params.replace("  min_shards: 2  #", "  min_shards: 3  #"))
    changed = _run(["dvc", "repro", "shards"], ws, env)
    assert "Running stage 'shards'" in changed
    for upstream_stage in ("kit", "prepare", "extract"):
        assert f"Running stage '{upstream_stage}'" not in changed
    assert len((ws / "data" / "shards" / "train" / "data.list").read_text().split()) == 3

    _run(["dvc", "push", "-q"], ws, env)
    assert any((ws.parent / "remote").rglob("*"))


def test_every_stage_recorded_one_mlflow_run(workspace):
    ws, _ = workspace
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{ws / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cosyml/toy")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    top = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]  # tune's trials are nested runs
    assert {r.info.status for r in top} == {"FINISHED"}
    # one run per stage execution, tagged with its DVC stage: the first repro ran every stage but `kit`
    # (no speaker, no run) once, the min_shards change reran `shards`; `promote --register` opens a
    # `register` run and a `promote` run
    assert Counter(r.data.tags.get("dvc.stage") for r in top) == {
        **{stage: 1 for stage in DVC_STAGES if stage not in ("kit", "shards", "promote")},
        "shards": 2,
        "promote": 2,
    }
    by_stage = Counter(r.data.tags["cosyml.stage"] for r in top)
    assert by_stage == {
        **{stage.replace("@", "_"): 1 for stage in DVC_STAGES if stage not in ("kit", "shards")},
        "shards": 2,
        "register": 1,
    }
    run_of = {r.data.tags["cosyml.stage"]: r for r in top if r.data.tags["cosyml.stage"] != "shards"}
    train = run_of["train_llm"]
    history = [m.value for m in client.get_metric_history(train.info.run_id, "epoch/cv_loss")]
    assert len(history) == 3 and history[-1] < history[0]  # the tiny LLM learns the toy voice's tokens
    assert train.data.tags.get("cosyml.data_version")  # the shards' md5 from dvc.lock
    for key in ("probe/cer", "probe/ss"):  # the demo probes every epoch (params.yaml train.probe_every_epochs)
        assert [m.step for m in client.get_metric_history(train.info.run_id, key)] == [0, 1, 2], key
    samples = [a.path for a in client.list_artifacts(train.info.run_id, "samples/epoch_002")]
    assert samples and all(p.endswith(".wav") for p in samples)  # per-epoch audio, playable in the UI
    champion = client.get_model_version_by_alias("cosyml-toy", "champion")  # the main job ends with a champion
    assert champion.tags["cosyml.speaker"] == "toy" and "score.cer" in champion.tags
    # lineage: a version whose part is exp/<part>/<part>.pt names the `average` run that wrote that file
    linked = 0
    for version in client.search_model_versions("name='cosyml-toy'"):
        for part in ("llm", "flow"):
            if version.tags[f"cosyml.{part}"] == str((ws / "exp" / part / f"{part}.pt").resolve()):
                assert version.tags[f"cosyml.{part}_run_id"] == run_of[f"average_{part}"].info.run_id
                linked += 1
    assert linked >= 2, [v.tags for v in client.search_model_versions("name='cosyml-toy'")]
