"""Real servers for tests, each on 127.0.0.1 and a free port, stopped whatever happens.

- :func:`mlflow_server`: ``mlflow server`` with a given backend store and a local artifact root.
- :func:`kill_group`, :func:`wait_for_file`, :func:`closed_port_uri`: outages for the tracking tests (a
  server killed at a chosen moment of a stage, a URI nothing answers).
- :func:`postgres_server`: a throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl``, trust auth). The
  server refuses to run as root, so under root the cluster belongs to the ``postgres`` system user (the
  Debian package creates it) and is started through ``runuser``. Missing binaries, user or driver skip
  the test with the reason; ``scripts/test.sh`` installs PostgreSQL with apt.
"""

from __future__ import annotations

import glob
import os
import pwd
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
def process(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` in its own process group; the whole group is stopped on exit, whatever happened."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=3)
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
def mlflow_server(backend_store_uri: str, root: Path, timeout: float = 180) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    """``mlflow server`` on ``backend_store_uri`` with artifacts in ``root/artifacts``; yields (URI, process, log)."""
    port = free_port()
    cmd = [MLFLOW, "server", "--backend-store-uri", backend_store_uri, "--artifacts-destination",
           str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
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
        subprocess.run([*run_as, str(bin_dir / "initdb"), "-D", str(data), "-U", "cosyml", "--auth=trust", "-E", "UTF8"],
                       check=True, capture_output=True)
        subprocess.run([*pg_ctl, "-l", str(root / "server.log"), "-w", "-t", "60",
                        "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"],
                       check=True, capture_output=True)
        try:
            with psycopg.connect(host="127.0.0.1", port=port, user="cosyml", dbname="postgres", autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {database}")
            yield f"postgresql://cosyml@127.0.0.1:{port}/{database}"
        finally:
            subprocess.run([*pg_ctl, "-m", "fast", "stop"], capture_output=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


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
