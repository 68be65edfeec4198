"""The MLflow edge: one run per stage execution in the speaker's experiment, tags, no secrets; outages of
the store (unreachable at the start, killed mid-training) and killed stages."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import torch

from cosyml.cli import main
from cosyml.tracking import public_params, stage_run

TOY = Path(__file__).resolve().parents[1] / "examples" / "toy_speaker"


def test_stage_run_records_params_metrics_tags_and_artifacts(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    report = tmp_path / "rejects.jsonl"
    report.write_text('{"reason": "empty_text"}\n')
    with stage_run("prepare", "toy", {"prepare.seed": 3, "remote.api_key": "hunter2"}, data_version="abc") as run:
        run.log_metrics({"train_utts": 10})
        run.log_artifact(report)
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("cosyml/toy")
    assert exp is not None and exp.artifact_location.startswith((tmp_path / "mlruns").as_uri())
    (recorded,) = client.search_runs([exp.experiment_id])
    assert recorded.data.params == {"prepare.seed": "3"}  # the credential never reaches MLflow
    assert recorded.data.metrics["train_utts"] == 10
    assert recorded.data.tags["cosyml.stage"] == "prepare"
    assert recorded.data.tags["cosyml.data_version"] == "abc"
    assert len(recorded.data.tags["cosyml.params_hash"]) == 16
    assert [a.path for a in client.list_artifacts(recorded.info.run_id)] == ["rejects.jsonl"]


def test_tracking_off_records_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("COSYML_TRACKING", "off")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with stage_run("prepare", "toy", {}) as run:
        run.log_metrics({"x": 1})
    assert not (tmp_path / "mlflow.db").exists()


def test_public_params_drops_credentials():
    assert public_params({"a": 1, "MLFLOW_TRACKING_PASSWORD": "x", "hf_token": "y", "secret_key": "z"}) == {"a": 1}


def test_a_stage_records_its_run_and_artifacts_in_an_mlflow_server_on_postgresql(tmp_path, monkeypatch):
    """The README's scale-out row: `mlflow server` on PostgreSQL, reached through MLFLOW_TRACKING_URI."""
    from _servers import mlflow_server, postgres_server

    with postgres_server("mlflow") as database, mlflow_server(database, tmp_path) as (uri, _, _):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.setenv("COSYML_TRACKING", "on")
        monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
        code = main(
            [
                "prepare",
                "--input",
                str(TOY),
                "--output",
                str(tmp_path / "data"),
                "--speaker",
                "toy",
                "--set",
                "prepare.transcribe=false",
            ]
        )
        assert code == 0
        client = mlflow.MlflowClient(tracking_uri=uri)
        (run,) = client.search_runs([client.get_experiment_by_name("cosyml/toy").experiment_id])
        assert run.data.tags["cosyml.stage"] == "prepare" and run.data.metrics["train_utts"] > 60
        assert "rejects.jsonl" in {a.path for a in client.list_artifacts(run.info.run_id)}
        assert (tmp_path / "artifacts").is_dir()  # the artifacts went to the server's store


# ------------------------------------------------------------------------------ outages, kills, secrets

NOT_LOGGED = re.compile(r"tracking: \d+ (metric batches|param batches|tag batches|artifacts|run status) not logged")


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COSYML_TRACKING": "on", **extra}
    env.pop("MLFLOW_RUN_ID", None)
    return env


def _cosyml(*args: str) -> list[str]:
    return [sys.executable, "-m", "cosyml", *args]


@pytest.fixture(scope="module")
def shards(kit_dir, tmp_path_factory) -> Iterator[Path]:
    """The toy corpus as shards for the tiny kit (made without tracking)."""
    root = tmp_path_factory.mktemp("tracking-data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COSYML_TRACKING", "off")
        for argv in (
            [
                "prepare",
                "--input",
                str(TOY),
                "--output",
                str(root / "data"),
                "--speaker",
                "toy",
                "--set",
                "prepare.transcribe=false",
            ],
            ["extract", "--data", str(root / "data"), "--model-dir", str(kit_dir), "--output", str(root / "feats")],
            [
                "shards",
                "--data",
                str(root / "data"),
                "--features",
                str(root / "feats"),
                "--output",
                str(root / "shards"),
            ],
        ):
            assert main(argv) == 0, argv
    yield root / "shards"


def _train_argv(shards: Path, kit_dir: Path, out: Path, epochs: int, *sets: str) -> list[str]:
    extra = [x for s in sets for x in ("--set", s)]
    return _cosyml(
        "train",
        "llm",
        "--data",
        str(shards),
        "--model-dir",
        str(kit_dir),
        "--output",
        str(out),
        "--max-epochs",
        str(epochs),
        "--set",
        "prepare.speaker=toy",
        *extra,
    )


def _assert_complete_weights(weights: Path, kit_dir: Path) -> None:
    trained, base = torch.load(weights, weights_only=True), torch.load(kit_dir / "llm.pt", weights_only=True)
    assert {k: tuple(v.shape) for k, v in trained.items()} == {k: tuple(v.shape) for k, v in base.items()}


def test_an_unreachable_tracking_store_is_one_line_before_any_work(tmp_path):
    """Before: MLflow retried for ~250 s, then a 40-line traceback (and prepare had already started)."""
    from _servers import closed_port_uri

    out = tmp_path / "data"
    proc = subprocess.run(
        _cosyml(
            "prepare",
            "--input",
            str(TOY),
            "--output",
            str(out),
            "--speaker",
            "toy",
            "--set",
            "prepare.transcribe=false",
        ),
        env=_env(MLFLOW_TRACKING_URI=closed_port_uri()),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "is unreachable" in lines[0] and "COSYML_TRACKING=off" in lines[0], proc.stderr
    assert not out.exists()  # no work was done


@pytest.mark.slow
def test_a_tracking_server_killed_mid_training_loses_nothing_on_disk(shards, kit_dir, tmp_path):
    """The server dies after the first epoch: training finishes, the weights are complete, the run says in
    one line per kind what it could not log; a later stage marks the run that never closed."""
    from _servers import kill_group, mlflow_server, process, wait_for_file

    store, out, log = f"sqlite:///{tmp_path / 'store.db'}", tmp_path / "exp", tmp_path / "train.log"
    with mlflow_server(store, tmp_path) as (uri, server, _):
        env = _env(MLFLOW_TRACKING_URI=uri, COSYML_TRACKING_RETRY_S="1")
        argv = _train_argv(shards, kit_dir, out, 4, "train.log_checkpoints=all", "train.sample_every_epochs=0")
        with process(argv, env, log) as train:
            wait_for_file(out / "checkpoints" / "epoch_0.json", train, log, timeout=600)
            kill_group(server)
            assert train.wait(timeout=900) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    _assert_complete_weights(out / "llm.pt", kit_dir)
    assert sorted(p.name for p in (out / "checkpoints").glob("epoch_*.json"))[-1] == "epoch_3.json"
    kinds = [NOT_LOGGED.search(line).group(1) for line in text.splitlines() if NOT_LOGGED.search(line)]
    assert sorted(kinds) == sorted(set(kinds)) and {"metric batches", "artifacts", "tag batches"} <= set(kinds), text
    assert text.count("went away") == 1

    with mlflow_server(store, tmp_path) as (uri, _, _):  # the server is back: the next stage marks the run
        env = _env(MLFLOW_TRACKING_URI=uri)
        done = subprocess.run(
            _cosyml(
                "average",
                "--checkpoints",
                str(out / "checkpoints"),
                "--out",
                str(tmp_path / "avg" / "llm.pt"),
                "--set",
                "prepare.speaker=toy",
            ),
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        client = mlflow.MlflowClient(tracking_uri=uri)
        runs = client.search_runs([client.get_experiment_by_name("cosyml/toy").experiment_id])
        by_stage = {r.data.tags["cosyml.stage"]: r for r in runs}
        assert by_stage["train_llm"].info.status == "KILLED" and "cosyml.end" in by_stage["train_llm"].data.tags
        assert by_stage["average_llm"].info.status == "FINISHED"
        assert (
            len(client.get_metric_history(by_stage["train_llm"].info.run_id, "epoch/cv_loss")) < 4
        )  # not all reached it


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_killed_stage_does_not_leave_its_run_running(shards, kit_dir, tmp_path, how):
    """SIGTERM closes the run as KILLED at once; after kill -9 the next stage on this host marks it."""
    from _servers import process, wait_for_file

    store, out, log = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "exp", tmp_path / "train.log"
    env = _env(MLFLOW_TRACKING_URI=store)
    with process(_train_argv(shards, kit_dir, out, 20, "train.sample_every_epochs=0"), env, log) as train:
        wait_for_file(out / "checkpoints" / "epoch_0.json", train, log, timeout=600)
        os.killpg(train.pid, getattr(signal, how))
        train.wait(timeout=120)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
    client = mlflow.MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name("cosyml/toy")
    (run,) = client.search_runs([exp.experiment_id])
    if how == "SIGKILL":
        assert run.info.status == "RUNNING"  # nothing could close it ...
        done = subprocess.run(
            _cosyml(
                "average",
                "--checkpoints",
                str(out / "checkpoints"),
                "--out",
                str(tmp_path / "avg" / "llm.pt"),
                "--set",
                "prepare.speaker=toy",
            ),
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert "marked KILLED" in done.stderr
        run = client.get_run(run.info.run_id)  # ... until the next stage on this host
    assert run.info.status == "KILLED"


@pytest.mark.parametrize("signals", [1, 2])
def test_an_ending_signal_waits_for_the_store_call_in_progress(tmp_path, monkeypatch, signals):
    """Before: SIGTERM raised inside a sqlite read; the cut transaction kept the database locked, so the
    KILLED status (and the system-metrics thread's inserts) failed after sqlite's busy timeout with a
    traceback (seen in CI). One signal now acts when the call returns; a second one does not wait."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    done: list[str] = []
    with pytest.raises(SystemExit) as ended, stage_run("prepare", "sig", {}) as run:

        def call() -> None:
            for _ in range(signals):
                os.kill(os.getpid(), signal.SIGTERM)
            done.append(run._client.get_run(run.run_id).info.status)  # a read after the signal

        run._send("tags", "tags", call)
        done.append("after the call")  # never reached: the held signal ends the stage here
    assert ended.value.code == 128 + signal.SIGTERM
    assert done == (["RUNNING"] if signals == 1 else [])
    client = mlflow.MlflowClient(tracking_uri=uri)
    (recorded,) = client.search_runs([client.get_experiment_by_name("cosyml/sig").experiment_id])
    assert recorded.info.status == "KILLED"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the stage's handler is gone with it


def test_the_experiment_opens_as_model_training_and_the_command_line_is_the_source(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    with stage_run("prepare", "kind", {}):
        pass
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("cosyml/kind")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # MLflow's "Machine learning" kind
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.tags["mlflow.source.name"] == "cosyml prepare"  # not the launcher's absolute path


def test_secrets_and_project_paths_are_masked_in_everything_logged(tmp_path, monkeypatch, capsys):
    """Before: a password in a storage URL was logged as is, and absolute paths landed in params and tags."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)  # not a git work tree: the project root is the current directory
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "envSecret42")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    params = {
        "tune.storage": "postgresql://cosyml:pgSecret1@db.example:5432/optuna",
        "store": "sqlite:///optuna.db?password=qsSecret2&timeout=5",
        "server": "http://alice:httpSecret3@mlflow.example:5000",
        "note": "token envSecret42 in a value",
        "output": str(tmp_path / "exp" / "llm"),
    }
    with stage_run("tune", "mask", params, run_name=f"tune {tmp_path / 'exp'}") as run:
        run.set_tags({"cosyml.candidates": str(tmp_path / "exp" / "candidates.json")})
        run.log_dict({"storage": params["tune.storage"]}, "config.json")
    client = mlflow.MlflowClient(tracking_uri=uri)
    (recorded,) = client.search_runs([client.get_experiment_by_name("cosyml/mask").experiment_id])
    assert recorded.data.params["output"] == "exp/llm"
    assert recorded.data.params["tune.storage"] == "postgresql://cosyml:***@db.example:5432/optuna"
    assert recorded.data.tags["cosyml.candidates"] == "exp/candidates.json"
    assert recorded.info.run_name == "tune exp"
    stored = (tmp_path / "mlflow.db").read_bytes() + b"".join(
        p.read_bytes() for p in (tmp_path / "mlruns").rglob("*") if p.is_file()
    )
    for secret in ("pgSecret1", "qsSecret2", "httpSecret3", "envSecret42"):
        assert secret.encode() not in stored
    assert str(tmp_path).encode() + b"/exp" not in stored

    from cosyml.tracking import mask, warn  # what tracking prints goes through the same function

    warn(f"could not reach {params['server']} with {params['note']}")
    printed = capsys.readouterr().err
    assert not any(secret in printed for secret in ("httpSecret3", "envSecret42"))
    assert "http://alice:***@mlflow.example:5000" in printed
    assert mask(str(tmp_path)) == "." and mask(str(tmp_path) + "x/y") == str(tmp_path) + "x/y"


@pytest.mark.slow
def test_a_training_run_logs_weights_not_optimizer_state_curves_first_and_named_samples(
    shards, kit_dir, tmp_path, monkeypatch
):
    """Before: every better epoch uploaded a full checkpoint (optimizer state: 3x the weights), the data counts
    opened the run page as one-point bar charts, and samples were named `llm_only_0.wav`."""
    from cosyml.train.samples import OUT_OF_DOMAIN, sentence_slug

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("COSYML_TRACKING", "on")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    out = tmp_path / "exp" / "llm"
    assert (
        main(
            [
                "train",
                "llm",
                "--data",
                str(shards),
                "--model-dir",
                str(kit_dir),
                "--output",
                str(out),
                "--max-epochs",
                "2",
                "--set",
                "prepare.speaker=toy",
                "--set",
                "train.log_checkpoints=best",
                "--set",
                "train.sample_max_tokens=10",
            ]
        )
        == 0
    )
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cosyml/toy").experiment_id])
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert logged == {"checkpoints/best.pt", "checkpoints/best.json"}
    best = torch.load(
        client.download_artifacts(run.info.run_id, "checkpoints/best.pt", str(tmp_path / "dl")), weights_only=True
    )
    base = torch.load(kit_dir / "llm.pt", weights_only=True)
    assert set(best) == set(base)  # an official state dict: no optimizer, scaler or RNG entries
    assert not any(k.startswith("data/") for k in run.data.metrics) and int(run.data.params["data/train_utts"]) > 60
    assert "epoch/cv_loss" in run.data.metrics and "epoch/step" not in run.data.metrics
    sentences = (out / "samples" / "sentences.txt").read_text(encoding="utf-8").splitlines()
    assert sentences[-1] == f"{len(sentences) - 1}\t{sentence_slug(OUT_OF_DOMAIN[-1])}\t{OUT_OF_DOMAIN[-1]}"
    wavs = {a.path.rsplit("/", 1)[1] for a in client.list_artifacts(run.info.run_id, "samples/epoch_000")}
    assert f"llm_only_{len(sentences) - 1}_the-bridge-is-closed-so.wav" in wavs
    assert "samples/sentences.txt" in {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
