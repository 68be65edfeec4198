"""The package and tests stay ruff-clean (the same check developers run)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed in this environment (it is in the dev extra)")
    result = subprocess.run(
        [ruff, "check", "cosyml", "tests", "scripts", "bench"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-4000:]


def test_ruff_format_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed in this environment (it is in the dev extra)")
    result = subprocess.run([ruff, "format", "--check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, "run `ruff format .`:\n" + result.stdout[-4000:]


def test_mypy_clean():
    mypy = shutil.which("mypy") or str(Path(sys.executable).parent / "mypy")
    if not Path(mypy).exists():
        pytest.skip("mypy is not installed in this environment (it is in the dev extra)")
    # configured in pyproject.toml ([tool.mypy]: the package, unused ignores are errors)
    # Its incremental cache lives in the environment (outside the clone, keyed by the pins like the venv):
    # a fresh machine checks everything once, later runs re-check only changed files (mypy compares hashes).
    cache = Path(sys.prefix) / "mypy-cache"
    result = subprocess.run([mypy, "--cache-dir", str(cache)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:]
