"""Data versions as DVC records them: the md5 of a stage's outputs in ``dvc.lock``.

Used to tag MLflow runs with the exact data they consumed (``cosyml.data_version``).
"""

from __future__ import annotations

from pathlib import Path

import yaml


def data_version(stage: str, lock_file: str | Path = "dvc.lock") -> str | None:
    """The md5 of ``stage``'s first output in ``dvc.lock`` (``None`` when DVC has not run it)."""
    path = Path(lock_file)
    if not path.is_file():
        return None
    try:
        lock = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        return None
    outs = ((lock.get("stages") or {}).get(stage) or {}).get("outs") or []
    for out in outs:
        if isinstance(out, dict) and out.get("md5"):
            return str(out["md5"])
    return None
