"""A killed prepare leaves the previous output as it was; a rerun completes. Two prepares into one
folder: the second stops with one line naming the first."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _bad_inputs import make_good

from cosyml.config import PrepareConfig
from cosyml.data.prepare import prepare
from cosyml.errors import InputError
from cosyml.fileio import output_lock

REPO = Path(__file__).resolve().parents[1]


def _tree(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _prepare_cmd(raw: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cosyml",
        "prepare",
        "--input",
        str(raw),
        "--output",
        str(out),
        "--speaker",
        "toy",
        "--no-transcribe",
        "--no-progress",
        "--set",
        "prepare.dev_ratio=0.3",
        *extra,
    ]


def test_kill_9_mid_run_keeps_the_previous_output_and_a_rerun_completes(tmp_path: Path) -> None:
    # The subprocesses run this checkout's code (PYTHONPATH), whatever is installed.
    env = {**os.environ, "COSYML_TRACKING": "off", "PYTHONPATH": str(REPO)}
    small, big = tmp_path / "small", tmp_path / "big"
    make_good(small, 4)
    make_good(big, 80)
    out = tmp_path / "data"
    subprocess.run(_prepare_cmd(small, out), check=True, env=env, cwd=tmp_path, capture_output=True)
    before = _tree(out)
    assert "summary.json" in before and len([k for k in before if k.startswith("wavs/")]) == 4

    proc = subprocess.Popen(
        _prepare_cmd(big, out, "--set", "prepare.target_peak=0.5"),
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    staging = tmp_path / ".data.new" / "wavs"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if staging.is_dir() and len(list(staging.iterdir())) >= 5:
            break  # mid-run: clips are being written
        if not (out / "wavs").is_dir():
            break  # (what the old code did first: delete the previous output)
        time.sleep(0.02)
    assert proc.poll() is None, "prepare finished before it could be killed; give it more clips"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _tree(out) == before  # the old output, untouched (and its summary still tells the truth)

    subprocess.run(
        _prepare_cmd(big, out, "--set", "prepare.target_peak=0.5"),
        check=True,
        env=env,
        cwd=tmp_path,
        capture_output=True,
    )
    after = _tree(out)
    assert (
        len([k for k in after if k.startswith("wavs/")]) == len(list(big.glob("*.wav")))
        and not (tmp_path / ".data.new").exists()
    )
    reference = tmp_path / "reference"
    subprocess.run(
        _prepare_cmd(big, reference, "--set", "prepare.target_peak=0.5"),
        check=True,
        env=env,
        cwd=tmp_path,
        capture_output=True,
    )
    ref = _tree(reference)
    same = {k for k in ref if k != "summary.json"}
    assert {k: after[k] for k in same} == {k: ref[k] for k in same}


def test_failed_run_keeps_the_previous_output(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    make_good(raw, 4)
    cfg = PrepareConfig(speaker="toy", transcribe=False, dev_ratio=0.3)
    out = tmp_path / "data"
    prepare([raw], out, cfg, progress=False, warn=lambda m: None)
    before = _tree(out)
    with pytest.raises(InputError, match="fall in dev"):  # a run that fails at its end
        prepare([raw], out, PrepareConfig(speaker="toy", transcribe=False, dev_ratio=0.999999), progress=False)
    assert _tree(out) == before


def test_second_prepare_into_a_locked_folder_is_one_line(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    make_good(raw, 2)
    out = tmp_path / "data"
    with (
        output_lock(out, "cosyml prepare (the first one)"),
        pytest.raises(InputError, match=r"in use by pid \d+ .*the first one"),
    ):
        prepare([raw], out, PrepareConfig(speaker="toy", transcribe=False), progress=False)
    assert not out.exists()


def test_kill_9_during_transcription_resumes_from_the_cache(tmp_path: Path) -> None:
    """The Whisper cache is appended per batch: after a kill, a rerun transcribes only what is missing."""
    import json

    from _data_fixtures import utterance, write

    from cosyml.kit.whisper import write_tiny_whisper

    whisper = write_tiny_whisper(tmp_path / "tiny.pt")
    raw = tmp_path / "raw"
    count = 10
    for i in range(count):
        write(raw / f"c{i:02d}.wav", utterance(1.2 + 0.05 * i, seed=300 + i))
    out = tmp_path / "data"
    env = {**os.environ, "COSYML_TRACKING": "off", "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "cosyml",
        "prepare",
        "--input",
        str(raw),
        "--output",
        str(out),
        "--speaker",
        "toy",
        "--whisper",
        str(whisper),
        "--no-progress",
        "--set",
        "prepare.whisper_batch_size=1",
        "--set",
        "prepare.whisper_max_tokens=12",
        "--set",
        "prepare.whisper_device=cpu",
        "--set",
        "prepare.min_confidence=0",
        "--set",
        "prepare.dev_ratio=0.3",
    ]
    cache = out / "whisper_cache.jsonl"

    def lines() -> list[str]:
        return [x for x in cache.read_text(encoding="utf-8").splitlines() if x.strip()] if cache.is_file() else []

    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and len(lines()) < 2:
        time.sleep(0.01)
    assert proc.poll() is None, "transcription finished before the kill; use more clips"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(lines())
    assert 2 <= done < count
    subprocess.run(cmd, check=True, env=env, cwd=tmp_path, capture_output=True)
    keys = [json.loads(x)["key"] for x in lines()]
    assert len(keys) == count == len(set(keys))  # the rerun added only the clips the kill left
