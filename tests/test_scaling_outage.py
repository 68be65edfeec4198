"""The object store going away behind a live `mlflow server` (`--artifacts-destination s3://...`, SeaweedFS
killed with SIGKILL): the stage goes on, artifacts the store did not take are listed on disk (paths, not
copies) and retried at later logging calls and at the end; what is still missing is one line, and
`cosyml track flush` uploads it once the store is back (restarted on the same data and ports).

Kept apart from tests/test_scaling.py, whose module-wide store must stay up. The server's backend store is
sqlite here: the outage under test is the object store's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from _servers import S3Store, mlflow_server, process, s3_server, wait_for_file
from test_tracking import (
    _assert_complete_weights,
    _train_argv,
    shards,  # noqa: F401  (the toy corpus as shards for the tiny kit)
)

from cosyml.tracking import stage_run

CLIENT_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MLFLOW_S3_ENDPOINT_URL")
LEFT_OVER = re.compile(
    r"^cosyml: warning: tracking: (\d+) artifacts not logged \(([\d.]+ [kMG]?B): .*\): the artifact store behind "
    r"(\S+) did not take them; they are on disk under (\S+); upload later with: cosyml track flush$"
)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[SimpleNamespace]:
    """SeaweedFS S3 and an `mlflow server` whose artifacts go to its bucket (the S3 credentials in the
    server's environment only)."""
    with (
        s3_server(tmp_path / "s3") as store,
        mlflow_server(
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            tmp_path,
            artifacts_destination=f"s3://{store.bucket}/mlflow",
            # The server gives up on a dead store after one retry (boto's legacy default is five, with
            # backoff, for each refused upload): what is under test is our side of a refusal.
            server_env={**store.server_env(), "AWS_RETRY_MODE": "standard", "AWS_MAX_ATTEMPTS": "2"},
        ) as (uri, _, log),
    ):
        yield SimpleNamespace(store=store, uri=uri, log=log)


def _client_env(uri: str, pending: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_SECRETS and k != "MLFLOW_RUN_ID"}
    env.update(
        {
            "MLFLOW_TRACKING_URI": uri,
            "COSYML_TRACKING": "on",
            "COSYML_PENDING_DIR": str(pending),
            "COSYML_TRACKING_RETRY_S": "2",
            "OMP_NUM_THREADS": "1",
        }
    )
    return env


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    """Every file of the run under ``path``."""
    found: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_artifacts_the_store_refused_are_retried_at_a_later_log_point(
    servers: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd
):
    pending = tmp_path / "pending"
    for key, value in _client_env(servers.uri, pending).items():
        monkeypatch.setenv(key, value)
    for key in CLIENT_SECRETS:
        monkeypatch.delenv(key, raising=False)
    first, second = tmp_path / "first.bin", tmp_path / "second.bin"
    first.write_bytes(b"1" * 5000)
    second.write_bytes(b"2" * 7000)
    store: S3Store = servers.store
    client = mlflow.MlflowClient(tracking_uri=servers.uri)
    with stage_run("outage", "toy", {}) as run:
        run.log_artifact(first, "files")
        store.kill()
        run.log_artifact(second, "files")  # refused (after the server's own S3 retries): listed, not lost
        run.log_text("after the outage", "notes/later.txt")  # not even tried: the store is known to refuse
        run.log_metrics({"loss": 1.0}, step=1)  # metrics do not wait for the artifact store
        (listed,) = pending.glob("*.json")
        record = json.loads(listed.read_text())
        assert [u["dest"] for u in record["uploads"]] == ["files/second.bin", "notes/later.txt"]
        assert record["uploads"][0]["source"] == str(second.absolute())  # a path, not a copy
        restarted = contextlib.ExitStack()
        restarted.enter_context(s3_server(again=store))
        step, deadline = 2, time.monotonic() + 60
        while list(pending.glob("*.json")):  # later log points, past the retry wait: the held ones go first
            assert time.monotonic() < deadline, "the held artifacts were never retried"
            time.sleep(1)
            run.log_metrics({"loss": 1.0 / step}, step=step)
            step += 1
    with restarted:
        err = capfd.readouterr().err
        assert err.count("did not take files/second.bin") == 1, err
        assert "not logged" not in err, err
        assert _artifacts(client, run.run_id) == {"files/first.bin", "files/second.bin", "notes/later.txt"}
        assert client.get_run(run.run_id).info.status == "FINISHED"
        assert len(client.get_metric_history(run.run_id, "loss")) == step - 1  # every metric, the outage's too


@pytest.mark.slow
def test_an_object_store_killed_mid_training_loses_nothing_and_the_leftovers_upload_later(
    servers: SimpleNamespace,
    shards: Path,  # noqa: F811
    kit_dir: Path,
    tmp_path: Path,
):
    store: S3Store = servers.store
    out, log, pending = tmp_path / "exp" / "llm", tmp_path / "train.log", tmp_path / "pending"
    env = _client_env(servers.uri, pending)
    sets = ("train.log_checkpoints=all", "train.sample_every_epochs=1", "train.keep_last=3")
    argv = _train_argv(shards, kit_dir, out, 3, *sets)  # keep_last: every checkpoint stays to be uploaded later
    with process(argv, env, log) as train:
        wait_for_file(out / "checkpoints" / "epoch_0.json", train, log, timeout=600)
        store.kill()
        assert train.wait(timeout=900) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    # training finished untouched: every epoch's checkpoint and the averaged weights, complete
    assert sorted(p.name for p in (out / "checkpoints").glob("epoch_*.json")) == [f"epoch_{i}.json" for i in range(3)]
    _assert_complete_weights(out / "llm.pt", kit_dir)
    # one line for what the store did not take; nothing else missing (the tracking server stayed up)
    lines = text.splitlines()
    left = [m for m in map(LEFT_OVER.match, lines) if m]
    assert len(left) == 1, text[-3000:]
    assert left[0].group(3) == servers.uri and left[0].group(4) == str(out)
    assert not [line for line in lines if "not logged" in line and not LEFT_OVER.match(line)], text[-3000:]
    assert sum("the artifact store behind" in line and "did not take" in line for line in lines) == 2  # first + last
    assert store.secret_key not in text and store.access_key not in text
    (listed,) = pending.glob("*.json")
    record = json.loads(listed.read_text())
    assert len(record["uploads"]) == int(left[0].group(1))
    assert {"checkpoints/epoch_2.pt", "weights/llm.pt"} <= {u["dest"] for u in record["uploads"]}

    client = mlflow.MlflowClient(tracking_uri=servers.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cosyml/toy").experiment_id])
    assert run.info.status == "FINISHED"  # the tracking server took the status and every metric
    assert len(client.get_metric_history(run.info.run_id, "epoch/cv_loss")) == 3
    refused = subprocess.run(
        [sys.executable, "-m", "cosyml", "track", "flush"], env=env, capture_output=True, text=True, timeout=300
    )
    assert refused.returncode == 1 and "still pending" in refused.stdout, refused.stdout + refused.stderr

    with s3_server(again=store):  # the store is back: same data folder, ports and credentials
        done = subprocess.run(
            [sys.executable, "-m", "cosyml", "track", "flush"], env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"{len(record['uploads'])} artifacts uploaded" in done.stdout, done.stdout
        assert not list(pending.glob("*.json"))
        stored = _artifacts(client, run.info.run_id)
    assert {f"checkpoints/epoch_{i}.pt" for i in range(3)} | {"weights/llm.pt"} <= stored
    assert {p for p in stored if p.startswith("samples/epoch_002/")}  # the last epoch's wavs
    assert store.secret_key not in done.stdout + done.stderr


def test_refused_artifacts_are_one_line_and_track_flush_uploads_them_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd
):
    """The same path on the local store, no servers: the artifact folder cannot be created (a file is in
    the way) until the user clears it, then `cosyml track flush` uploads what the stage left."""
    from cosyml.cli import main
    from cosyml.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

    uri, pending, blocker = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "pending", tmp_path / "store"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("COSYML_PENDING_DIR", str(pending))
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    blocker.write_text("not a folder")
    client = mlflow.MlflowClient(tracking_uri=uri)
    client.create_experiment(
        "cosyml/toy", artifact_location=(blocker / "mlruns").as_uri(), tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
    )
    out = tmp_path / "exp" / "llm"
    (out / "samples").mkdir(parents=True)
    wav, gone = out / "samples" / "a.wav", out / "samples" / "b.wav"
    wav.write_bytes(b"\0" * 3000)
    gone.write_bytes(b"\0" * 2000)
    with stage_run("train_llm", "toy", {"x": 1}) as run:
        run.log_artifact(wav, "samples/epoch_000")
        run.log_artifact(gone, "samples/epoch_000")
        run.log_dict({"epoch": 0}, "checkpoints/best.json")
        run.log_metrics({"loss": 1.0}, step=0)
    err = capfd.readouterr().err.splitlines()
    left = [line for line in err if "not logged" in line]
    assert left == [
        "cosyml: warning: tracking: 3 artifacts not logged (5.0 kB: samples/epoch_000/a.wav, "
        f"samples/epoch_000/b.wav, checkpoints/best.json): the artifact store behind {uri} did not take them; "
        f"they are on disk under {out / 'samples'}; upload later with: cosyml track flush"
    ], err
    assert sum("did not take samples/epoch_000/a.wav" in line for line in err) == 1
    assert client.get_run(run.run_id).data.metrics == {"loss": 1.0}  # the rest of the run is complete

    assert main(["track", "flush", "--dry-run"]) == 0
    assert f"run {run.run_id}: 3 artifacts pending" in capfd.readouterr().out
    assert main(["track", "flush"]) == 1  # still in the way: nothing lost, the list stays
    assert "still pending (the store refused samples/epoch_000/a.wav" in capfd.readouterr().out
    assert len(json.loads((pending / f"{run.run_id}.json").read_text())["uploads"]) == 3

    blocker.unlink()  # the user clears the store; meanwhile one file was deleted
    gone.unlink()
    assert main(["track", "flush"]) == 0
    assert capfd.readouterr().out.strip() == (
        f"track flush: run {run.run_id}: 2 artifacts uploaded (3.0 kB); 1 dropped, their files are gone"
    )
    assert _artifacts(client, run.run_id) == {"samples/epoch_000/a.wav", "checkpoints/best.json"}
    assert not list(pending.glob("*.json"))
    assert main(["track", "flush"]) == 0
    assert "nothing pending" in capfd.readouterr().out
