"""The README's "scaling out" rows against real servers: SeaweedFS as the S3 object store, PostgreSQL and
`mlflow server` (see tests/_servers.py), all on 127.0.0.1.

- MLflow on PostgreSQL + S3 artifacts: a training stage logs checkpoints and wavs into the bucket through
  the server; evaluate, register and promote; the champion loads from a fresh cache with only the
  tracking URI; base assets and fine-tuned weights are stored once; the S3 secret is nowhere.
- A DVC S3 remote: push, wipe, pull, and `dvc repro` has nothing to do.
- Tuning workers: `cosyml tune` workers on one PostgreSQL study record into the same MLflow + S3; a worker
  killed mid-trial leaves a FAIL that is retried, never a trial RUNNING forever.

The S3 credentials live in the environment of the processes that talk to the bucket (the MLflow server,
DVC); the client side of MLflow reaches artifacts through the server and holds none.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from _servers import S3Store, mlflow_server, pg_dump, postgres_server, s3_server
from test_tune import workdir  # noqa: F401  (the tiny kit and a one-utterance test set)

from cosyml.cli import main

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "examples" / "toy_speaker"
CLIENT_SECRETS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "MLFLOW_S3_ENDPOINT_URL",
    "AWS_ENDPOINT_URL",
    "MLFLOW_RUN_ID",
)


@pytest.fixture(scope="module")
def databases() -> Iterator[SimpleNamespace]:
    """One PostgreSQL cluster: a database for MLflow's store, one for Optuna's studies."""
    import psycopg

    with postgres_server("mlflow") as mlflow_db:
        optuna_db = mlflow_db.rsplit("/", 1)[0] + "/optuna"
        with psycopg.connect(mlflow_db, autocommit=True) as conn:
            conn.execute("CREATE DATABASE optuna")
        yield SimpleNamespace(mlflow=mlflow_db, optuna=optuna_db)


@pytest.fixture(scope="module")
def store() -> Iterator[S3Store]:
    with s3_server() as running:
        yield running


@pytest.fixture(scope="module")
def stack(
    store: S3Store,
    databases: SimpleNamespace,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SimpleNamespace]:
    """`mlflow server --backend-store-uri postgresql://... --artifacts-destination s3://...`, the S3
    credentials in its environment only."""
    root = tmp_path_factory.mktemp("scaling")
    with mlflow_server(
        databases.mlflow,
        root,
        artifacts_destination=f"s3://{store.bucket}/mlflow",
        server_env=store.server_env(),
        timeout=180,
    ) as (uri, proc, log):
        yield SimpleNamespace(
            store=store,
            database=databases.mlflow,
            optuna=databases.optuna,
            uri=uri,
            proc=proc,
            log=log,
            root=root,
            output=[],
        )


@pytest.fixture
def client_env(stack: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """This process as a user's machine: the tracking URI and nothing else of the stores."""
    for key in CLIENT_SECRETS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack.uri)
    monkeypatch.setenv("COSYML_TRACKING", "on")
    return stack


def _run(argv: list[str]) -> None:
    assert main(argv) == 0, argv


def _client(stack: SimpleNamespace):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=stack.uri)


def _stage_run(stack: SimpleNamespace, stage: str):
    client = _client(stack)
    exp = client.get_experiment_by_name("cosyml/toy")
    (run,) = client.search_runs([exp.experiment_id], filter_string=f"tags.`cosyml.stage` = '{stage}'")
    return run


# ---------------------------------------------------------------------------------------------- the store


def test_the_s3_store_takes_only_its_own_credentials(store: S3Store):
    import boto3
    import botocore.exceptions

    store.client().put_object(Bucket=store.bucket, Key="probe/x.bin", Body=b"\0" * 1000)
    assert store.objects("probe/") == {"probe/x.bin": 1000}
    wrong = boto3.client(
        "s3",
        endpoint_url=store.endpoint,
        aws_access_key_id=store.access_key,
        aws_secret_access_key="not-the-secret",
        region_name="us-east-1",
    )
    with pytest.raises(botocore.exceptions.ClientError, match=r"SignatureDoesNotMatch|AccessDenied"):
        wrong.list_objects_v2(Bucket=store.bucket)
    store.client().delete_object(Bucket=store.bucket, Key="probe/x.bin")


# ---------------------------------------------------------------------------------------------- MLflow + S3


@pytest.fixture(scope="module")
def work(stack: SimpleNamespace, kit_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny kit and the toy speaker's shards (tracking off: these stages are not what is tested here)."""
    root = tmp_path_factory.mktemp("scaling_work")
    (root / "kit").symlink_to(kit_dir, target_is_directory=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COSYML_TRACKING", "off")
        _run(
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
            ]
        )
        _run(
            ["extract", "--data", str(root / "data"), "--model-dir", str(root / "kit"), "--output", str(root / "feats")]
        )
        _run(
            [
                "shards",
                "--data",
                str(root / "data"),
                "--features",
                str(root / "feats"),
                "--output",
                str(root / "shards"),
            ]
        )
    return root


@pytest.mark.slow
def test_training_logs_checkpoints_and_wavs_to_s3_through_the_server(client_env, work: Path, capfd):
    stack = client_env
    _run(
        [
            "train",
            "llm",
            "--data",
            str(work / "shards"),
            "--model-dir",
            str(work / "kit"),
            "--output",
            str(work / "exp" / "llm"),
            "--max-epochs",
            "1",
            "--set",
            "train.log_checkpoints=all",
        ]
    )
    stack.output.append(capfd.readouterr())
    run = _stage_run(stack, "train_llm")
    client = _client(stack)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied: the client has no S3 credentials
    checkpoints = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")]
    wavs = [a.path for a in client.list_artifacts(run.info.run_id, "samples/epoch_000")]
    assert checkpoints and all(p.endswith(".pt") for p in checkpoints)
    assert wavs and all(p.endswith(".wav") for p in wavs)
    # the files are objects in the bucket, under the server's artifacts destination
    objects = stack.store.objects("mlflow/")
    in_run = {
        k.split(f"/{run.info.run_id}/artifacts/", 1)[1]: size
        for k, size in objects.items()
        if f"/{run.info.run_id}/artifacts/" in k
    }
    assert set(checkpoints) | set(wavs) | {"weights/llm.pt"} <= set(in_run)
    local = work / "exp" / "llm" / "checkpoints" / Path(checkpoints[0]).name
    # checkpoints are logged as weights only (no optimizer state): smaller than the full checkpoint on disk
    assert 0 < in_run[checkpoints[0]] < local.stat().st_size
    _figure(f"training run upload: {len(in_run)} objects, {sum(in_run.values())} bytes")


def _figure(line: str) -> None:
    """Sizes and times for the README's scaling notes (shown with ``pytest -s``; never asserted)."""
    print(f"[figure] {line}")


def _count(objects: dict[str, int], suffix: str) -> int:
    return sum(key.endswith(suffix) for key in objects)


@pytest.mark.slow
def test_register_promote_and_load_the_champion_from_a_fresh_cache(
    client_env, work: Path, workdir: Path, tmp_path: Path, capfd, monkeypatch
):
    import mlflow
    import pandas as pd

    stack = client_env
    monkeypatch.chdir(tmp_path)  # no params.yaml: defaults plus the flags
    monkeypatch.setenv("COSYML_CACHE_DIR", str(tmp_path / "registering_cache"))
    eval_dir = work / "eval"
    speakers = work / "feats" / "train" / "spk2embedding.pt"
    _run(
        [
            "evaluate",
            "--model-dir",
            str(work / "kit"),
            "--data",
            str(work / "data"),
            "--out",
            str(eval_dir),
            "--test-sets",
            str(workdir / "sets"),
            "--max-utts",
            "1",
            "--no-progress",
            "--speaker-file",
            str(speakers),  # 1 utt
            "--candidates",
            "llm=base,flow=base",
            "--candidates",
            f"llm={work / 'exp' / 'llm' / 'llm.pt'},flow=base",
            "--set",
            f"evaluate.whisper_model={work / 'kit' / 'whisper.pt'}",
            "--set",
            "prepare.speaker=toy",
        ]
    )
    promote = [
        "promote",
        "--register",
        "--candidates",
        str(eval_dir / "candidates.json"),
        "--set",
        f"registry.speakers={speakers}",
        "--set",
        "prepare.speaker=toy",
    ]
    _run(promote)
    client = _client(stack)
    versions = client.search_model_versions("name='cosyml-toy'")
    assert len(versions) == 2
    champion = client.get_model_version_by_alias("cosyml-toy", "champion")
    before = stack.store.objects("mlflow/")
    _run(promote)  # registering the same candidates again stores nothing new
    assert len(client.search_model_versions("name='cosyml-toy'")) == 2
    after = stack.store.objects("mlflow/")
    assert set(after) - set(before) <= {
        k for k in after if "/models/" not in k and "/artifacts/weights/" not in k and "/artifacts/base_model/" not in k
    }  # at most the promote run's own files

    # content-addressed on S3 as on disk: one copy of each base asset and of the fine-tuned llm.pt
    from cosyml.registry import BASE_EXPERIMENT, WEIGHTS_EXPERIMENT

    base_exp = client.get_experiment_by_name(BASE_EXPERIMENT).experiment_id
    weights_exp = client.get_experiment_by_name(WEIGHTS_EXPERIMENT).experiment_id
    base_objects = {k: s for k, s in after.items() if k.startswith(f"mlflow/{base_exp}/")}
    weight_objects = {k: s for k, s in after.items() if k.startswith(f"mlflow/{weights_exp}/")}
    for asset in ("base_model/llm.pt", "base_model/flow.pt", "base_model/hift.pt", "base_model/cosyvoice2.yaml"):
        assert _count(base_objects, asset) == 1, asset
    assert _count(weight_objects, "/weights/llm.pt") == 1 and _count(weight_objects, "/weights/flow.pt") == 0
    for key in after:  # the model versions hold no weights, only references (and the speaker table)
        if "/models/" in key:
            assert not key.endswith(("llm.pt", "flow.pt", "hift.pt", ".onnx", "cosyvoice2.yaml")), key
    _figure(
        f"registry upload (base assets + fine-tuned weights, once): {len(base_objects) + len(weight_objects)} "
        f"objects, {sum(base_objects.values()) + sum(weight_objects.values())} bytes"
    )

    # a fresh machine: only the tracking URI, an empty cache
    fresh = tmp_path / "fresh_cache"
    monkeypatch.setenv("COSYML_CACHE_DIR", str(fresh))
    started = time.monotonic()
    voice = mlflow.pyfunc.load_model("models:/cosyml-toy@champion")
    _figure(f"champion load from a fresh cache: {time.monotonic() - started:.1f} s")
    out = voice.predict(pd.DataFrame([{"text": "Hello there.", "seed": 1.0, "max_tokens": 6.0}]))
    assert out["error"][0] is None and out["sample_rate"][0] == 24000 and out["duration_s"][0] > 0
    assert list(fresh.rglob("base_model/cosyvoice2.yaml"))  # fetched from the bucket through the server
    if champion.tags["cosyml.llm"] != "base":
        assert list(fresh.rglob("weights/*/llm.pt"))
    stack.output.append(capfd.readouterr())


@pytest.mark.slow  # reads what the two tests above logged (their runs, params, tags and artifacts)
def test_the_s3_secret_is_in_no_param_tag_artifact_or_log(client_env, tmp_path: Path):
    stack = client_env
    secret = stack.store.secret_key
    dump = pg_dump(stack.database)
    assert "cosyml/toy" in dump and "train_llm" in dump  # the dump holds the runs, params and tags
    assert secret not in dump
    bucket = stack.store.client()
    objects = stack.store.objects()
    assert len(objects) > 20
    for key in objects:
        body = bucket.get_object(Bucket=stack.store.bucket, Key=key)["Body"].read()
        assert secret.encode() not in body, key
    assert secret not in stack.log.read_text(errors="replace")  # the server's own log
    captured = "".join(c.out + c.err for c in stack.output)
    assert "promoted" in captured or "keep" in captured
    assert secret not in captured and stack.store.access_key not in captured


# ---------------------------------------------------------------------------------------------- DVC S3 remote


def _dvc(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_a_dvc_s3_remote_pushes_pulls_and_repro_has_nothing_to_do(store: S3Store, tmp_path: Path):
    """A user's project with one `cosyml prepare` stage and an S3 remote; credentials from the environment."""
    pytest.importorskip("dvc_s3", reason="dvc-s3 not installed: pip install -e .[s3]")
    ws = tmp_path / "project"
    shutil.copytree(TOY, ws / "corpus")
    (ws / "dvc.yaml").write_text(
        json.dumps(
            {
                "stages": {
                    "prepare": {
                        "cmd": f"{sys.executable} -m cosyml prepare --input corpus --output data --speaker toy "
                        "--set prepare.transcribe=false",
                        "deps": ["corpus"],
                        "outs": ["data"],
                    }
                }
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_SECRETS}
    env.update(
        {
            "COSYML_TRACKING": "off",
            "DVC_NO_ANALYTICS": "1",
            "AWS_ACCESS_KEY_ID": store.access_key,
            "AWS_SECRET_ACCESS_KEY": store.secret_key,
        }
    )
    subprocess.run(["git", "init", "-q"], cwd=ws, check=True)
    _dvc(["init", "-q"], ws, env)
    _dvc(["repro"], ws, env)
    _dvc(["remote", "add", "-d", "store", f"s3://{store.bucket}/dvc"], ws, env)
    _dvc(["remote", "modify", "store", "endpointurl", store.endpoint], ws, env)
    produced = _tree_digest(ws / "data")

    started = time.monotonic()
    _dvc(["push"], ws, env)
    pushed_s = time.monotonic() - started
    remote = store.objects("dvc/")
    assert remote and sum(remote.values()) >= sum((ws / "data" / p).stat().st_size for p in produced)

    shutil.rmtree(ws / ".dvc" / "cache")
    shutil.rmtree(ws / "data")
    started = time.monotonic()
    _dvc(["pull"], ws, env)
    pulled_s = time.monotonic() - started
    assert _tree_digest(ws / "data") == produced

    again = _dvc(["repro"], ws, env)
    assert "Running stage" not in again and "up to date" in again
    assert "Data and pipelines are up to date" in _dvc(["status"], ws, env)
    for path in [ws / "dvc.yaml", ws / "dvc.lock", *(ws / ".dvc").glob("config*")]:
        assert store.secret_key not in path.read_text()  # the credentials stayed in the environment
    _figure(
        f"dvc push: {len(remote)} objects, {sum(remote.values())} bytes in {pushed_s:.1f} s; dvc pull: {pulled_s:.1f} s"
    )


# ---------------------------------------------------------------------------------------------- tuning workers


@pytest.mark.slow
def test_cosyml_tune_workers_on_postgresql_record_into_mlflow_with_s3_artifacts(
    client_env, workdir: Path, tmp_path: Path
):
    import optuna

    stack = client_env
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_SECRETS}  # the tracking URI, no S3 credentials
    command = [
        sys.executable,
        "-m",
        "cosyml",
        "tune",
        "--params",
        str(workdir / "params.yaml"),
        "--storage",
        stack.optuna,
        "--study-name",
        "toy-s3",
        "--n-trials",
        "3",
    ]
    workers = [
        subprocess.Popen(
            [*command, "--out", str(tmp_path / f"worker{i}"), "--seed", str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for i in (1, 2)
    ]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    trials = optuna.load_study(study_name="toy-s3", storage=stack.optuna).get_trials()
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert 3 <= len(complete) <= 4
    client = _client(stack)
    exp = client.get_experiment_by_name("cosyml/toy")
    parents = client.search_runs(
        [exp.experiment_id], filter_string="tags.`cosyml.study` = 'toy-s3' and tags.`cosyml.stage` = 'tune'"
    )
    assert len(parents) == 2  # one tune run per worker
    children = client.search_runs([exp.experiment_id], filter_string="tags.`cosyml.stage` = 'tune-trial'")
    objects = stack.store.objects("mlflow/")
    for parent in parents:
        nested = [r for r in children if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert nested, "each worker's trials are nested runs under its tune run"
        stored = {k.rsplit("/", 1)[1] for k in objects if f"/{parent.info.run_id}/artifacts/" in k}
        assert {"sampling.json", "trials.json"} <= stored  # in the bucket, uploaded through the server
    assert stack.store.secret_key not in "".join(outputs)


HANGING_WORKER = """
import sys, time
from pathlib import Path
from cosyml.tune import StudySettings, TrialScore, parse_space, run_study
storage, marker, hang = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "hang"
def objective(sampling, number):
    if hang:
        marker.write_text(str(number))
        time.sleep(600)  # killed here, mid-trial
    time.sleep(0.2)
    return TrialScore(objective=-abs(sampling["top_p"] - 0.7), cer=0.1, ss=0.5, n=1, missing=0)
settings = StudySettings(storage, "killed", n_trials=4, seed=int(sys.argv[4]), heartbeat_s=1, grace_s=2)
print(" ".join(map(str, run_study(objective, parse_space({"top_p": [0.5, 0.9]}), settings).ran)))
"""


def test_a_worker_killed_mid_trial_leaves_a_failed_trial_that_is_retried(databases: SimpleNamespace, tmp_path: Path):
    import optuna

    marker = tmp_path / "started"
    doomed = subprocess.Popen(
        [sys.executable, "-c", HANGING_WORKER, databases.optuna, str(marker), "hang", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert doomed.poll() is None and time.monotonic() < deadline, doomed.communicate()
        time.sleep(0.1)
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait(timeout=30)
    study = optuna.load_study(study_name="killed", storage=databases.optuna)
    (stuck,) = study.get_trials()
    assert stuck.state.name == "RUNNING"  # dead, but nobody knows yet
    time.sleep(3)  # past the grace period: the next worker to start a trial declares it failed
    worker = subprocess.run(
        [sys.executable, "-c", HANGING_WORKER, databases.optuna, str(marker), "run", "2"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert worker.returncode == 0, worker.stderr[-3000:]
    trials = optuna.load_study(study_name="killed", storage=databases.optuna).get_trials()
    states = {t.number: t.state.name for t in trials}
    assert states[stuck.number] == "FAIL" and "RUNNING" not in states.values()
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == stuck.number]
    assert retry.state.name == "COMPLETE" and retry.params == stuck.params  # the same parameters, run again
    assert sum(s in ("COMPLETE", "FAIL") for s in states.values()) >= 4  # the study filled up
