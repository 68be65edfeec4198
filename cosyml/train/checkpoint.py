"""Training checkpoints: atomic writes, exact resume, retention, export to official weight files.

A checkpoint is two files in the run's checkpoint folder:

- ``<name>.pt`` (``torch.load(weights_only=True)``-safe): ``model`` (the module's state dict, official key
  layout), and in a *full* checkpoint also ``optimizer``, ``scaler``, ``rng`` (one entry per rank:
  python, numpy, torch, cuda states), ``position`` (epoch, batch index inside it), ``step``,
  ``config_hash`` and ``extra`` (loop counters such as early-stopping state);
- ``<name>.json``: the same scalars plus CV metrics, read to pick checkpoints without loading tensors.

Both are written to a temporary file in the same folder and renamed over the target (``os.replace``), the
``.pt`` first, the ``.json`` last: a checkpoint exists only once its ``.json`` does, so killing the process
at any moment leaves either the previous complete set or the new one, never a half-written file in use.
Leftover ``.*.tmp`` files from a killed writer are ignored and removed by the next save.

Names: ``epoch_{E}`` at the end of epoch E (0-based), ``step_{S}`` every ``save_every_steps``.
Retention (:func:`apply_retention`): the newest ``keep_last`` stay full (resumable); older epoch
checkpoints among the ``keep_best`` lowest CV losses, or among the ``keep_best`` highest probe composites
(when the probe ran), are slimmed to weights only (enough for averaging and export); everything else is
deleted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cosyml.errors import ConfigError, InputError
from cosyml.fileio import atomic_torch_save, atomic_write_json, remove_stale_temp_files
from cosyml.models.modeldir import save_state_dict

CHECKPOINT_FORMAT = "cosyml.train/1"

# TrainConfig fields that change how long or how verbosely a run goes, not what it computes: a run may be
# resumed with different values.
RUN_CONTROL_FIELDS = frozenset(
    {
        "max_epochs",
        "max_steps",
        "log_every_steps",
        "save_every_steps",
        "keep_last",
        "keep_best",
        "early_stop_patience",
        "early_stop_min_delta",
        "average_num",
        "average_by",
        "probe_every_epochs",
        "probe_in_domain",
        "probe_texts",
        "probe_max_tokens",
        "early_stop_on",
    }
)


@dataclass
class CheckpointInfo:
    """The ``.json`` sidecar of a checkpoint."""

    name: str
    kind: str  # "epoch" | "step"
    epoch: int  # epoch the checkpoint was written in
    step: int  # optimiser steps taken
    next_epoch: int  # data position to resume from: epoch ...
    next_batch: int  # ... and batches of it already consumed
    config_hash: str
    full: bool = True  # has optimiser/RNG state (resumable); False = weights only
    cv_loss: float | None = None
    cv_acc: float | None = None
    # the epoch's probe scores (cosyml.train.probe): "cer", "ss", "cer_<lang>", "ss_<lang>", "composite"
    # (higher is better, the registry's weights at training time), "n", "skipped"; None: no probe ran
    probe: dict[str, float] | None = None
    saved_at: float = 0.0
    path: str = ""  # the .pt file (filled in when listed)


def config_hash(config: Any, model: torch.nn.Module | None = None) -> str:
    """Hash of the config fields that affect training (not :data:`RUN_CONTROL_FIELDS`) and, when given, the
    model's parameter names, shapes and dtypes."""
    is_instance = dataclasses.is_dataclass(config) and not isinstance(config, type)
    fields = dataclasses.asdict(config) if is_instance else dict(config)
    fields = {k: v for k, v in fields.items() if k not in RUN_CONTROL_FIELDS}
    blob: dict[str, Any] = {"config": fields}
    if model is not None:
        blob["model"] = [(k, list(v.shape), str(v.dtype)) for k, v in model.state_dict().items()]
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ RNG state


def capture_rng() -> dict[str, Any]:
    """This process's python, numpy, torch and CUDA RNG states, in ``weights_only``-loadable types."""
    kind, mt, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(np.asarray(mt, dtype=np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, mt, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, mt.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def isolated_rng() -> Iterator[None]:
    """Run a block without consuming this process's RNGs: their states are put back when it ends.

    Side work during training (per-epoch audio samples load a synthesis engine, whose module init and
    seeding draw on the global torch RNG) must not move the training's random stream, or a resumed run,
    whose checkpoint captured the stream before that work, would draw other numbers than an uninterrupted one.
    """
    state = capture_rng()
    try:
        yield
    finally:
        restore_rng(state)


# ------------------------------------------------------------------------------------------ save / list / load


def save_checkpoint(folder: str | Path, info: CheckpointInfo, payload: Mapping[str, Any]) -> Path:
    """Write ``<folder>/<info.name>.pt`` (``payload`` plus the scalars of ``info``) and its ``.json``."""
    folder = Path(folder)
    remove_stale_temp_files(folder)
    info.saved_at = time.time()
    path = folder / f"{info.name}.pt"
    scalars = {k: v for k, v in dataclasses.asdict(info).items() if k != "path"}
    atomic_torch_save({"format": CHECKPOINT_FORMAT, **payload, "info": scalars}, path)
    atomic_write_json(scalars, folder / f"{info.name}.json")
    info.path = str(path)
    return path


def list_checkpoints(folder: str | Path) -> list[CheckpointInfo]:
    """Complete checkpoints in ``folder`` (a ``.json`` with its ``.pt``), oldest step first."""
    found = []
    for meta in Path(folder).glob("*.json"):
        pt = meta.with_suffix(".pt")
        if not pt.is_file():
            continue
        try:
            data = json.loads(meta.read_text(encoding="utf-8"))
            info = CheckpointInfo(**{k: v for k, v in data.items() if k != "path"})
        except (ValueError, TypeError):
            continue
        info.path = str(pt)
        found.append(info)
    return sorted(found, key=lambda i: (i.step, i.kind == "epoch", i.saved_at))


def latest_resumable(folder: str | Path) -> CheckpointInfo | None:
    full = [i for i in list_checkpoints(folder) if i.full]
    return full[-1] if full else None


def load_checkpoint(path: str | Path, expected_hash: str | None = None, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint (``weights_only=True``); refuse one written under another training config.

    ``mmap=True`` maps tensors from the file instead of reading them all (averaging large models).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found; pass an existing checkpoint or resume from a run folder")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:
        raise InputError(f"{path}: cannot read checkpoint ({type(exc).__name__}); pick another checkpoint") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not a cosyml training checkpoint; resume from a checkpoint written by cosyml train")
    found = data["info"]["config_hash"]
    if expected_hash is not None and found != expected_hash:
        raise ConfigError(
            f"{path}: written under another training config or model (hash {found}, now {expected_hash}); "
            "restore the params it was trained with or start a new run folder"
        )
    return data


def probe_composite(info: CheckpointInfo) -> float | None:
    """The probe composite stored with ``info`` (higher is better), or None when no probe scored it."""
    value = (info.probe or {}).get("composite")
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def apply_retention(folder: str | Path, keep_last: int, keep_best: int) -> None:
    """Keep the newest ``keep_last`` checkpoints full; slim older epoch checkpoints among the ``keep_best``
    lowest CV losses to weights only; delete the rest."""
    infos = list_checkpoints(folder)
    full = [i for i in infos if i.full]
    keep_full = {i.name for i in full[-max(1, keep_last) :]}
    epochs = [i for i in infos if i.kind == "epoch" and i.cv_loss is not None]
    best = {i.name for i in sorted(epochs, key=lambda i: (i.cv_loss, -i.step))[: max(0, keep_best)]}
    probed = [i for i in infos if i.kind == "epoch" and probe_composite(i) is not None]
    best |= {i.name for i in sorted(probed, key=lambda i: (-(probe_composite(i) or 0.0), -i.step))[: max(0, keep_best)]}
    for info in infos:
        if info.name in keep_full:
            continue
        pt, meta = Path(info.path), Path(info.path).with_suffix(".json")
        if info.name in best:
            if info.full:
                data = torch.load(pt, map_location="cpu", weights_only=True)
                info.full = False
                slim = {"format": CHECKPOINT_FORMAT, "model": data["model"]}
                scalars = {k: v for k, v in dataclasses.asdict(info).items() if k != "path"}
                atomic_torch_save({**slim, "info": scalars}, pt)
                atomic_write_json(scalars, meta)
            continue
        meta.unlink(missing_ok=True)  # the .json first: a half-deleted checkpoint is never listed
        pt.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ export


def save_plain_state_dict(state: Mapping[str, torch.Tensor], path: str | Path) -> Path:
    """Write ``state`` as an official weight file (:func:`cosyml.models.modeldir.save_state_dict`)."""
    return save_state_dict(state, path)


def export_model_state(checkpoint: str | Path, out_path: str | Path) -> Path:
    """Write the model part of a training checkpoint as an official weight file (``llm.pt``/``flow.pt``)."""
    data = load_checkpoint(checkpoint)
    return save_plain_state_dict(data["model"], out_path)
