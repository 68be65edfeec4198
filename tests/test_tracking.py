"""The MLflow edge: one run per stage execution in the speaker's experiment, tags, no secrets."""

from __future__ import annotations

from pathlib import Path

import mlflow

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

    from cosyml.cli import main

    with postgres_server("mlflow") as database, mlflow_server(database, tmp_path) as (uri, _, _):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.setenv("COSYML_TRACKING", "on")
        monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
        code = main(["prepare", "--input", str(TOY), "--output", str(tmp_path / "data"), "--speaker", "toy",
                     "--set", "prepare.transcribe=false"])
        assert code == 0
        client = mlflow.MlflowClient(tracking_uri=uri)
        (run,) = client.search_runs([client.get_experiment_by_name("cosyml/toy").experiment_id])
        assert run.data.tags["cosyml.stage"] == "prepare" and run.data.metrics["train_utts"] > 60
        assert "rejects.jsonl" in {a.path for a in client.list_artifacts(run.info.run_id)}
        assert (tmp_path / "artifacts").is_dir()  # the artifacts went to the server's store
