"""Hot-swapping ``llm.pt`` / ``flow.pt`` weights into loaded modules without rebuilding anything else.

A weight source is ``"base"`` (the model directory's own file), a weight file (an official-format
``llm.pt``/``flow.pt``, an averaged file, an upstream training checkpoint with ``epoch``/``step``, or a
cosyml training checkpoint whose tensors sit under ``model``), a model directory (its ``<part>.pt``), or
:class:`InMemoryWeights` (a training run's current weights: the per-epoch probe synthesises with them
without writing a file; loaded exactly as the file :func:`~cosyml.models.modeldir.save_state_dict` would
write, so the audio is the same).
The base weights are copied to CPU memory the first time another source replaces them, so switching
back to ``"base"`` costs a copy, not a file read (memory: one extra CPU copy of that part).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from cosyml.errors import ModelDirError
from cosyml.models.keys import WEIGHT_FILE, Part
from cosyml.models.modeldir import load_state_dict_file, load_strict, official_state_dict

BASE = "base"
StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True, eq=False)
class InMemoryWeights:
    """Weights held in memory, not in a file; ``label`` names them in messages and in :attr:`WeightSlot.source`.

    Build with :meth:`of`: the state dict in official form (fp32 CPU tensors, no training keys), what the
    weight file of the same module would hold. Never cached by the slot: each :meth:`WeightSlot.use` loads it.
    """

    state: Mapping[str, torch.Tensor]
    label: str

    @classmethod
    def of(cls, weights: torch.nn.Module | Mapping[str, torch.Tensor], label: str) -> InMemoryWeights:
        """``weights`` (a module or its state dict) as :func:`~cosyml.models.modeldir.save_state_dict` writes
        them (tensors already fp32 on the CPU are shared, not copied)."""
        state = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
        return cls(official_state_dict(state), label)


WeightSource = str | Path | InMemoryWeights


def resolve_source(source: str | Path, part: Part) -> str:
    """``"base"`` or the absolute path of the weight file ``source`` names (a directory -> its ``<part>.pt``)."""
    if str(source) == BASE:
        return BASE
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / WEIGHT_FILE[part]
    if not path.is_file():
        raise ModelDirError(
            f"{path}: {part} weights not found; pass a {WEIGHT_FILE[part]}, a checkpoint file or 'base'"
        )
    return str(path.resolve())


def read_weights(path: str | Path, part: Part) -> StateDict:
    """The state dict in ``path``: an official weight file, an upstream or a cosyml training checkpoint."""
    return load_state_dict_file(path, part)


def _cpu_copy(state: StateDict) -> StateDict:
    """Copy tensors to CPU memory, tensors that share storage (tied embeddings) copied once."""
    copies: dict[tuple[int, int, tuple[int, ...], tuple[int, ...]], torch.Tensor] = {}
    out: StateDict = {}
    for key, value in state.items():
        ident = (
            value.untyped_storage().data_ptr(),
            int(value.storage_offset()),
            tuple(value.shape),
            tuple(value.stride()),
        )
        if ident not in copies or value.numel() == 0:
            copies[ident] = value.detach().to("cpu", copy=True)
        out[key] = copies[ident]
    return out


@dataclass
class _Loaded:
    source: str  # "base" or an absolute path
    stamp: tuple[int, int] | None  # (size, mtime_ns) of the file when it was loaded


def _stamp(source: str) -> tuple[int, int] | None:
    if source == BASE:
        return None
    stat = Path(source).stat()
    return (stat.st_size, stat.st_mtime_ns)


class WeightSlot:
    """One swappable part (``llm`` or ``flow``) of a loaded engine."""

    def __init__(self, part: Part, module: torch.nn.Module, base_path: Path) -> None:
        self.part = part
        self.module = module
        self.base_path = base_path
        self.loaded: _Loaded | None = None
        self._base_copy: StateDict | None = None

    @property
    def source(self) -> str:
        return self.loaded.source if self.loaded else "unloaded"

    def mark_loaded(self, source: str | Path) -> None:
        """Record that the module already holds ``source`` (e.g. loaded by the model builder)."""
        resolved = resolve_source(source, self.part)
        self.loaded = _Loaded(resolved, _stamp(resolved))

    def would_change(self, source: WeightSource) -> bool:
        """Would :meth:`use` load weights for ``source``? (Always, for in-memory weights.)"""
        if isinstance(source, InMemoryWeights):
            return True
        resolved = resolve_source(source, self.part)
        return self.loaded is None or self.loaded.source != resolved or self.loaded.stamp != _stamp(resolved)

    def use(self, source: WeightSource) -> bool:
        """Make ``source`` the module's weights; returns True when weights were (re)loaded.

        A file already loaded and unchanged on disk is not read again.
        """
        if isinstance(source, InMemoryWeights):
            self._keep_base_copy()
            load_strict(self.module, source.state, part=self.part, label=source.label)
            self.loaded = _Loaded(f"memory:{source.label}", None)
            return True
        if not self.would_change(source):
            return False
        resolved = resolve_source(source, self.part)
        stamp = _stamp(resolved)
        if resolved == BASE:
            state: StateDict | str = self._base_copy if self._base_copy is not None else str(self.base_path)
        else:
            self._keep_base_copy()
            state = read_weights(resolved, self.part)
        label = f"{self.base_path if resolved == BASE else resolved}"
        if isinstance(state, str):
            load_strict(self.module, state, part=self.part)
        else:
            load_strict(self.module, state, part=self.part, label=label)
        self.loaded = _Loaded(resolved, stamp)
        return True

    def _keep_base_copy(self) -> None:
        """Before the base weights are first replaced: keep a CPU copy, so going back costs no file read."""
        if self.loaded is not None and self.loaded.source == BASE and self._base_copy is None:
            self._base_copy = _cpu_copy(self.module.state_dict())
