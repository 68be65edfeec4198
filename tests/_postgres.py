"""A throwaway PostgreSQL server for tests: ``initdb`` + ``pg_ctl`` on a free port, trust auth on 127.0.0.1.

The server refuses to run as root, so under root the cluster belongs to the ``postgres`` system user
(the Debian package creates it) and is started through ``runuser``. Missing binaries, user or driver
make :func:`postgres_server` skip with the reason; ``scripts/test.sh`` installs PostgreSQL with apt.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _bin_dir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(versions[-1]).parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    data, port = root / "data", _free_port()
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
