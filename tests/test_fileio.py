"""Crash-safe, byte-stable writes and the one-writer lock of an output folder."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from cosyml.errors import InputError
from cosyml.fileio import atomic_torch_save, output_lock, write_if_changed


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_same_tensors_give_the_same_bytes_whatever_the_file_name(tmp_path):
    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(3)}
    a = atomic_torch_save(state, tmp_path / "a" / "llm.pt")
    b = atomic_torch_save({k: v.clone() for k, v in state.items()}, tmp_path / "b" / "other.pt")
    assert _md5(a) == _md5(b)
    # plain torch.save to a path records the name: this is what the helper exists to avoid
    torch.save(state, tmp_path / "x.pt")
    torch.save(state, tmp_path / "y.pt")
    assert _md5(tmp_path / "x.pt") != _md5(tmp_path / "y.pt")
    loaded = torch.load(a, weights_only=True)
    assert torch.equal(loaded["w"], state["w"])
    assert not list(tmp_path.glob("**/.*.tmp"))


def test_write_if_changed_keeps_an_unchanged_file(tmp_path):
    path = tmp_path / "summary.json"
    assert write_if_changed(path, b"{}\n")
    mtime = path.stat().st_mtime_ns
    time.sleep(0.01)
    assert not write_if_changed(path, b"{}\n")
    assert path.stat().st_mtime_ns == mtime
    assert write_if_changed(path, b'{"a": 1}\n')


def test_a_second_writer_is_refused_with_the_holder_named(tmp_path):
    out = tmp_path / "prepared"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time
            from cosyml.fileio import output_lock
            with output_lock({str(out)!r}, "cosyml prepare (holder)"):
                print("locked", flush=True)
                time.sleep(60)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(InputError) as err, output_lock(out):
            pass
        assert f"pid {holder.pid}" in str(err.value) and "cosyml prepare (holder)" in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    # the holder died: the lock went with it
    with output_lock(out):
        pass


def test_streamed_save_equals_the_in_memory_bytes_and_keeps_an_unchanged_file(tmp_path):
    from cosyml.fileio import torch_bytes

    state = {"w": torch.randn(4, 5, generator=torch.Generator().manual_seed(0))}
    path = atomic_torch_save(state, tmp_path / "flow.pt")
    assert path.read_bytes() == torch_bytes(state)
    mtime = path.stat().st_mtime_ns
    time.sleep(0.01)
    atomic_torch_save({"w": state["w"].clone()}, path, keep_unchanged=True)
    assert path.stat().st_mtime_ns == mtime
    atomic_torch_save({"w": state["w"] + 1}, path, keep_unchanged=True)
    assert path.stat().st_mtime_ns != mtime
    assert not list(tmp_path.glob(".*.tmp"))
