"""The command line: every stage is reachable, user mistakes are one line with exit status 2."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cosyml.cli import build_parser, main
from cosyml.config import PrepareConfig

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "init",
    "kit",
    "prepare",
    "extract",
    "shards",
    "train",
    "average",
    "assemble",
    "synth",
    "evaluate",
    "tune",
    "register",
    "promote",
    "serve",
    "track",
}


def test_every_stage_has_a_subcommand(capsys):
    names = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert names == COMMANDS
    for file in ("dvc.yaml", "MLproject"):  # every DVC stage and MLflow entry point runs one of them
        lines = (ROOT / file).read_text(encoding="utf-8").splitlines()
        used = set(re.findall(r"\bcosyml ([a-z_]+)", "\n".join(x for x in lines if not x.lstrip().startswith("#"))))
        assert len(used) >= 10 and used <= names, (file, used - names)
    for name in sorted(names):
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0 and f"usage: cosyml {name}" in capsys.readouterr().out


def test_bad_params_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "params.yaml"
    bad.write_text("prepare:\n  no_such_key: 1\n")
    assert main(["shards", "--data", str(tmp_path), "--params", str(bad)]) == 2
    known = ", ".join(sorted(f.name for f in dataclasses.fields(PrepareConfig)))
    assert capsys.readouterr().err.strip().splitlines() == [
        f"cosyml: error: prepare.no_such_key: unknown parameter; known ones are: {known}"
    ]


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
