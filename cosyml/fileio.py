"""Files that survive a crash and do not change when their content does not.

Every file cosyml writes goes through here:

- ``atomic_write_bytes`` / ``_text`` / ``_json`` / ``atomic_torch_save``: written to a temporary file in the
  same folder, fsynced, then renamed over the target, so a kill at any moment leaves either the old file or
  the new one, never half of one.
- ``torch_bytes``: ``torch.save`` into memory. Saving to a path records the file's name inside the zip
  archive, so the same tensors saved through two temporary names differ in md5 and DVC reruns stages for
  nothing; saved from memory, the same tensors always give the same bytes.
- ``output_lock``: one writer per output folder. A second ``cosyml`` process aiming at the same folder stops
  with one line naming the holder instead of mixing its files with the first one's. The lock is an
  ``flock`` on a file next to the folder, so it is released when its process dies (no stale locks).
"""

from __future__ import annotations

import contextlib
import fcntl
import filecmp
import io
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from cosyml.errors import InputError

TEMP_SUFFIX = ".tmp"


def _atomic_write(
    path: Path, write: Callable[[BinaryIO], object], mode: int = 0o644, keep_unchanged: bool = False
) -> bool:
    """Call ``write(handle)`` on a temp file next to ``path``, fsync it, then rename it over ``path``.

    ``keep_unchanged``: when ``path`` already holds exactly the new bytes, leave it (and its mtime) alone.
    Returns True when ``path`` was (re)written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_unchanged and path.is_file() and filecmp.cmp(tmp, path, shallow=False):
            return False
        tmp.chmod(mode)  # mkstemp creates 0600; outputs are shared read-only artifacts
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return True


def atomic_write_bytes(path: str | Path, data: bytes, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` through a temp file + fsync + rename (crash-safe)."""
    _atomic_write(Path(path), lambda handle: handle.write(data), mode)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(obj: Any, path: str | Path) -> Path:
    """JSON with sorted keys and a fixed indent, so equal objects give equal bytes."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_if_changed(path: str | Path, data: bytes) -> bool:
    """Write ``data`` atomically unless ``path`` already holds exactly these bytes; True when written.

    Keeps the mtime (and so DVC's and make's view) of an output whose content did not change.
    """
    path = Path(path)
    with contextlib.suppress(OSError):
        if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    atomic_write_bytes(path, data)
    return True


def torch_bytes(obj: Any) -> bytes:
    """``torch.save(obj)`` as bytes that depend only on ``obj`` (not on a file name)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def atomic_torch_save(obj: Any, path: str | Path, keep_unchanged: bool = False) -> Path:
    """Byte-stable, crash-safe ``torch.save``.

    Streams into the open temp file (a file object, so no name is recorded: the bytes equal
    ``torch_bytes(obj)``) instead of building the archive in memory, which for a 0.5B LLM checkpoint with
    optimizer state would cost ~6 GB of RAM at every save. ``keep_unchanged``: an existing file with the
    same bytes is left as it is (mtime included).
    """
    import torch

    _atomic_write(Path(path), lambda handle: torch.save(obj, handle), keep_unchanged=keep_unchanged)
    return Path(path)


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete temp files a writer left when it was killed mid-write."""
    removed = []
    for tmp in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def lock_path(folder: str | Path) -> Path:
    folder = Path(folder)
    return folder.parent / f".{folder.name}.lock"


@contextlib.contextmanager
def output_lock(folder: str | Path, what: str | None = None) -> Iterator[None]:
    """Hold the one-writer lock of an output ``folder`` for the duration of the block.

    Raises :class:`InputError` at once (one line: the folder, the holder's pid, host, command and start
    time) when another process holds it.
    """
    folder = Path(folder)
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole block
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise InputError(
                f"{folder}: in use by {holder}; wait for it to finish or write to another folder"
            ) from None
        command = what or " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv))
        handle.seek(0)
        handle.truncate()
        handle.write(
            f"pid {os.getpid()} on {socket.gethostname()} ({command[:200]}) since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        )
        handle.flush()
        yield
    finally:
        handle.close()  # releases the flock; the file stays (removing it would race a waiting writer)
