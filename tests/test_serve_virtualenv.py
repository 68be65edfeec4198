"""`mlflow models serve` with MLflow's DEFAULT environment manager (virtualenv), offline (issue 15.11).

A registered voice carries what a new environment needs: public pins (``torch==2.13.0``), the build tools
MLflow pins in ``python_env.yaml`` and cosyml itself as a wheel inside the model. Here MLflow builds that
environment with pyenv's Python and pip restricted to a wheelhouse (``PIP_NO_INDEX=1``,
``PIP_FIND_LINKS``), from a working directory without the checkout and without ``PYTHONPATH``, and
the server answers a request with a wav from the wheel's code.

Expensive parts are cached outside the clone under ``${COSYML_ENV_ROOT:-~/.cache/cosyml}/serve-virtualenv``:
the wheelhouse (``pip download``, ~430 MB) keyed by the third-party requirements, and MLflow's environments
(~2 GB each), which MLflow keys by the requirements text itself (so by the carried wheel's code hash: code
changes build a new one, ~2.5 min; a rerun with the same code reuses it, ~40 s for the whole test). The two
most recently used environments and wheelhouses are kept; one lock serialises clones sharing the cache.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import soundfile as sf
from _servers import MLFLOW, free_port, process, wait_http
from test_registry_serving import register_base_voice

ROOT = Path(os.environ.get("COSYML_ENV_ROOT") or Path.home() / ".cache" / "cosyml") / "serve-virtualenv"
KEEP = 2  # environments and wheelhouses kept (most recently used), ~2 GB and ~430 MB each
DONE = ".cosyml-complete"  # written once an environment served a request: MLflow reuses any existing folder


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _pyenv_python(version: str) -> Path | None:
    pyenv = shutil.which("pyenv")
    if pyenv is None:
        return None
    root = subprocess.run([pyenv, "root"], capture_output=True, text=True).stdout.strip()
    python = Path(root) / "versions" / version / "bin" / "python"
    return python if python.is_file() else None


def _prune(folder: Path, keep: int, marker: str) -> None:
    """Delete the folders under ``folder`` without ``marker`` (a build cut short) and all but the ``keep``
    most recently used complete ones. Called under the lock: nobody else is using them."""
    done = [p for p in folder.iterdir() if (p / marker).is_file()]
    done.sort(key=lambda p: (p / marker).stat().st_mtime, reverse=True)
    for path in [p for p in folder.iterdir() if p.is_dir() and p not in done[:keep]]:
        shutil.rmtree(path, ignore_errors=True)


def _wheelhouse(model: Path) -> Path:
    """A wheelhouse with the voice's third-party requirements (``pip download``; the carried cosyml wheel
    stays in the model), cached by their text, this Python and this platform. Skips when pip cannot
    reach an index to fill it."""
    lines = (model / "requirements.txt").read_text(encoding="utf-8").split()
    public = sorted(line for line in lines if not line.endswith(".whl"))
    key = "\n".join([*public, platform.python_version(), sys.platform, platform.machine()])
    house = ROOT / "wheelhouses" / hashlib.sha256(key.encode()).hexdigest()[:16]
    if (house / DONE).is_file():
        (house / DONE).touch()  # most recently used
        return house
    house.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=house.parent, prefix=".download-") as tmp:
        (Path(tmp) / "requirements.txt").write_text("\n".join(public) + "\n", encoding="utf-8")
        pip = [sys.executable, "-m", "pip", "download", "-q", "--progress-bar", "off", "-d", str(Path(tmp) / "w")]
        done = subprocess.run([*pip, "-r", str(Path(tmp) / "requirements.txt")], capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["?"])[-1]
            pytest.skip(f"pip download of the voice's requirements failed (no package index reachable?): {last}")
        (Path(tmp) / "w" / DONE).write_text("\n".join(public) + "\n", encoding="utf-8")
        shutil.rmtree(house, ignore_errors=True)
        os.rename(Path(tmp) / "w", house)
    _prune(house.parent, KEEP, DONE)
    return house


def _serve_and_ask(cmd: list[str], env: dict[str, str], log: Path, port: int) -> tuple[float, str]:
    """Start a server, wait for /ping (a first start builds the environment: minutes), send one request of
    a good row and a bad one; (seconds to /ping, response body)."""
    import urllib.request

    started = time.monotonic()
    with process(cmd, env, log) as proc:
        wait_http(f"http://127.0.0.1:{port}/ping", proc, log, timeout=1200)
        ready = time.monotonic() - started
        rows = [
            {"text": "Hello there.", "seed": 1, "max_tokens": 6},
            {"text": "Hi.", "mode": "zero_shot", "prompt_text": "Hi.", "prompt_wav": "AAAA"},
        ]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"dataframe_records": rows}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=300) as resp:
            return ready, resp.read().decode()


def _decode_wav(text: str) -> tuple[int, int]:
    data, rate = sf.read(io.BytesIO(base64.b64decode(text)), dtype="float32")
    return len(data), rate


@pytest.mark.slow
def test_mlflow_models_serve_default_env_manager_builds_offline_from_what_the_voice_carries(
    kit_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    import yaml

    if shutil.which("pyenv") is None:
        pytest.skip("pyenv is not on PATH: MLflow's default env manager (virtualenv) takes the voice's Python from it")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("COSYML_TRACKING", "on")
    monkeypatch.chdir(tmp_path)  # no checkout in the server's working directory (uvicorn puts it on sys.path)
    uri, model = register_base_voice(kit_dir, tmp_path)
    python = yaml.safe_load((model / "python_env.yaml").read_text(encoding="utf-8"))["python"]
    if _pyenv_python(python) is None:
        pytest.skip(f"pyenv has no Python {python} (the voice's python_env.yaml); `pyenv install {python}` once")
    (wheel,) = [line for line in (model / "requirements.txt").read_text().split() if line.endswith(".whl")]
    wheel_version = Path(wheel).name.split("-")[1]

    envs = ROOT / "mlflow-envs"
    with _locked(ROOT / ".lock"):  # one clone at a time builds, serves from and prunes the shared cache
        house = _wheelhouse(model)
        envs.mkdir(parents=True, exist_ok=True)
        _prune(envs, KEEP, DONE)  # an environment whose build was cut short would be reused as it is
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL")}
        env |= {
            "PIP_NO_INDEX": "1",
            "PIP_FIND_LINKS": str(house),
            # no bytecode for all of torch & co. at install (about half the build's CPU time): the server
            # compiles what it imports on first start. (Not PIP_NO_COMPILE: pip reads PIP_NO_COMPILE=1 as
            # --compile.)
            "PIP_COMPILE": "0",
            "MLFLOW_ENV_ROOT": str(envs),
            "COSYML_CACHE_DIR": str(tmp_path / "cache"),
            "OMP_NUM_THREADS": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        log = tmp_path / "serve.log"
        port = free_port()
        # no --env-manager: MLflow's default
        ready, text = _serve_and_ask([MLFLOW, "models", "serve", "-m", uri, "-p", str(port)], env, log, port)
        good, bad = json.loads(text)["predictions"]
        assert good["error"] is None and _decode_wav(good["audio"])[1] == 24000 and good["sample_rate"] == 24000
        assert _decode_wav(good["audio"])[0] > 0
        assert bad["audio"] is None and "prompt_wav" in bad["error"]
        for path in (str(tmp_path), str(envs), "/tmp/"):  # error replies name no server paths
            assert path not in text, text

        # the environment MLflow built (or reused) runs the wheel's cosyml, not this checkout
        said = log.read_text(errors="replace")
        found = re.search(r"Creating a new environment in (\S+) with|Environment (\S+) already exists", said)
        assert found, said[-3000:]
        env_dir = Path(found.group(1) or found.group(2))
        probe = "import importlib.metadata as m, cosyml; print(m.version('cosyml')); print(cosyml.__file__)"
        clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        shown = subprocess.run(
            [str(env_dir / "bin" / "python"), "-c", probe], capture_output=True, text=True, env=clean, check=True
        ).stdout.split()
        assert shown[0] == wheel_version and Path(shown[1]).is_relative_to(env_dir), shown
        (env_dir / DONE).write_text(f"{uri} ready in {ready:.0f} s\n", encoding="utf-8")
        _prune(envs, KEEP, DONE)

        # `cosyml serve --env-manager virtualenv` where a checkout could shadow the wheel: PYTHONPATH names a
        # folder whose `cosyml/` cannot be imported (as `source scripts/env.sh` names the clone), the command
        # runs in that folder (uvicorn puts the working directory first on sys.path) and names the model by
        # a relative path. The server must start elsewhere, without PYTHONPATH, and run the wheel.
        (tmp_path / "cosyml").mkdir()
        (tmp_path / "cosyml" / "__init__.py").write_text('raise ImportError("a checkout shadowed the wheel")\n')
        repo = str(Path(__file__).resolve().parents[1])
        cli = f"import sys; sys.path.insert(0, {repo!r}); from cosyml.cli import main; sys.exit(main(sys.argv[1:]))"
        port = free_port()
        args = ["serve", "--env-manager", "virtualenv", "--model-uri", model.name, "--port", str(port)]
        again, text = _serve_and_ask(
            [sys.executable, "-c", cli, *args], env | {"PYTHONPATH": str(tmp_path)}, tmp_path / "cli.log", port
        )
        assert json.loads(text)["predictions"][0]["error"] is None
    print(f"[serve-virtualenv] ready in {ready:.0f} s, then {again:.0f} s (environment {env_dir.name})")
