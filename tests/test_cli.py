"""The command line: every stage is reachable, user mistakes are one line with exit status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cosyml.cli import build_parser, main


def test_every_stage_has_a_subcommand():
    names = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert {"kit", "prepare", "extract", "shards"} <= names


def test_bad_params_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "params.yaml"
    bad.write_text("prepare:\n  no_such_key: 1\n")
    assert main(["shards", "--data", str(tmp_path), "--params", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["cosyml: error: prepare.no_such_key: unknown parameter; known ones are: " + err[0].split("are: ")[1]]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("shards.min_shards=many", "shards.min_shards: expected int, got 'many'"),
        ("shards.nope=1", "shards.nope: unknown parameter"),
        ("nosection.x=1", "nosection.x: unknown parameter section 'nosection'"),
    ],
)
def test_bad_override_is_one_line(tmp_path, capsys, override, message):
    assert main(["shards", "--data", str(tmp_path), "--set", override]) == 2
    assert capsys.readouterr().err.strip() == f"cosyml: error: {message}"


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "cosyml", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("cosyml ")
