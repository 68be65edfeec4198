"""Lineage: the training or averaging run that wrote a registered part's weights, found exactly (the
file the run wrote, resolved, equals the part's source file; never a match by folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cosyml.pyfunc import BASE
from cosyml.tracking import finished_runs


def written_weights(run: Any, part: str) -> Path | None:
    """The weight file a finished ``average_<part>`` or ``train_<part>`` run wrote, resolved, or None.

    ``average`` logs the file as its ``out`` param; ``train`` writes ``<output>/<part>.pt`` only when it
    averaged its checkpoints (then it sets ``cosyml.averaged_from``, which holds checkpoint *names*, not
    paths, and so says nothing about where the result went).
    """
    tags, params = run.data.tags, run.data.params
    stage = tags.get("cosyml.stage", "")
    if stage == f"average_{part}" and params.get("out"):
        return Path(params["out"]).expanduser().resolve()
    if stage == f"train_{part}" and params.get("output") and "cosyml.averaged_from" in tags:
        return (Path(params["output"]).expanduser() / f"{part}.pt").resolve()
    return None


def producer_run(mlc: Any, speaker: str, part: str, source: str) -> str | None:
    """The newest finished run of the speaker's experiment that wrote exactly ``source``, if any.

    Relative paths in the runs' params are read against the working directory, as ``cosyml`` wrote them.
    """
    if source == BASE:
        return None
    target = Path(source).expanduser().resolve()
    runs = finished_runs(mlc, f"cosyml/{speaker}", max_results=1000)
    for run in runs:  # newest first: the file's last writer
        if written_weights(run, part) == target:
            return run.info.run_id
    return None
