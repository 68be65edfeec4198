"""scripts/env.sh: sourced by the README's commands, shared by every clone on a machine."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bash(script: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COSYML_VENV")}
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _clone(dest: Path) -> Path:
    """The files env.sh reads, plus a package marker, in a folder of their own (another clone)."""
    (dest / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "env.sh", dest / "scripts" / "env.sh")
    for name in ("pyproject.toml", "constraints.txt"):
        shutil.copy(REPO / name, dest / name)
    (dest / "cosyml").mkdir()
    (dest / "cosyml" / "__init__.py").write_text("CLONE = 'second'\n")
    return dest


def test_a_script_that_sources_it_still_stops_on_errors():
    out = _bash("set -euo pipefail; source scripts/env.sh; false; echo after-false", REPO)
    assert out.returncode != 0, out.stdout + out.stderr
    assert "after-false" not in out.stdout


def test_a_shell_without_errexit_keeps_its_own_options():
    out = _bash('source scripts/env.sh; false; echo "after-false $-"; echo "${NOT_SET_ANYWHERE:-unset-ok}"', REPO)
    assert out.returncode == 0, out.stderr
    flags = out.stdout.split("after-false ")[1].split()[0]
    assert "e" not in flags and "u" not in flags
    assert "unset-ok" in out.stdout


def _venv_snapshot(venv: Path) -> dict[str, int]:
    """mtime of every entry of bin/ and of site-packages' top level (where an install would write)."""
    (site,) = (venv / "lib").glob("python*/site-packages")
    return {str(p): p.stat().st_mtime_ns for folder in (venv / "bin", site) for p in folder.iterdir()}


def test_a_second_clone_touches_nothing_shared_and_runs_its_own_code(tmp_path):
    first = _bash('source scripts/env.sh; echo "VENV=$COSYML_VENV"; echo "LAUNCHER=$(command -v cosyml)"', REPO)
    assert first.returncode == 0, first.stderr
    values = dict(line.split("=", 1) for line in first.stdout.splitlines() if "=" in line)
    venv = Path(values["VENV"])
    before = _venv_snapshot(venv)

    clone = _clone(tmp_path / "clone2")
    second = _bash(
        'source scripts/env.sh; echo "LAUNCHER=$(command -v cosyml)";'
        " python -c \"import cosyml; print('CODE=' + cosyml.__file__)\"",
        clone,
    )
    assert second.returncode == 0, second.stderr
    values2 = dict(line.split("=", 1) for line in second.stdout.splitlines() if "=" in line)
    assert _venv_snapshot(venv) == before  # nothing was (re)installed into the shared environment
    assert values2["LAUNCHER"] != values["LAUNCHER"]
    assert Path(values2["CODE"]).resolve() == (clone / "cosyml" / "__init__.py").resolve()
    # the first clone's launcher still runs the first clone's code
    assert str(REPO) in Path(values["LAUNCHER"]).read_text()
