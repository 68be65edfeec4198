"""Checkpoint averaging: best-n epochs by CV loss (upstream's ``--val_best``), the last n epochs, or the
best-n epochs by the per-epoch probe (:mod:`cosyml.train.probe`: CER and SS composite).

The result is an official weight file (plain fp32 state dict, no ``epoch``/``step`` keys) that loads with
``strict=True`` into the model, so it can be dropped into a model directory as ``llm.pt`` / ``flow.pt``.

- Floating tensors are averaged in float64 and stored as float32.
- Integer/bool tensors (step counters such as ``num_batches_tracked``, index buffers) are not averaged:
  the newest selected checkpoint's value is kept.
- Tensors that are one tensor in the model (the LLM's ``llm.model.lm_head.weight`` and
  ``llm.model.model.embed_tokens.weight``) are averaged once and stay one tensor in the file.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from cosyml.errors import ConfigError, InputError
from cosyml.models import keys
from cosyml.train.checkpoint import CheckpointInfo, list_checkpoints, load_checkpoint, save_plain_state_dict

AVERAGE_BY = ("cv_loss", "last", "probe")

#: ``(cer, ss) -> composite`` (higher is better): how ``by="probe"`` ranks epochs. The command passes the
#: registry's composite with the params' weights; the default is the registry's default weights (1, 1).
ProbeRank = Callable[[float, float], float]


def _default_rank(cer: float, ss: float) -> float:
    return ss - cer


@dataclass(frozen=True)
class AverageResult:
    path: Path
    sources: list[str]  # checkpoint names, in the order averaged
    by: str


def probe_rank_of(info: CheckpointInfo, rank: ProbeRank) -> float | None:
    """``rank(cer, ss)`` of the probe scores stored with ``info``; None when the probe did not score it."""
    scores = info.probe or {}
    cer, ss = scores.get("cer"), scores.get("ss")
    if cer is None or ss is None or not (math.isfinite(cer) and math.isfinite(ss)):
        return None
    return float(rank(float(cer), float(ss)))


def best_probe_checkpoint(folder: str | Path, rank: ProbeRank | None = None) -> CheckpointInfo | None:
    """The epoch checkpoint of ``folder`` with the highest probe composite (ties: the newer), or None."""
    rank = rank or _default_rank
    scored = [(probe_rank_of(i, rank), i) for i in list_checkpoints(folder) if i.kind == "epoch"]
    ranked = [(value, i) for value, i in scored if value is not None]
    return max(ranked, key=lambda pair: (pair[0], pair[1].step))[1] if ranked else None


def select_checkpoints(
    folder: str | Path, num: int, by: str = "cv_loss", rank: ProbeRank | None = None
) -> list[CheckpointInfo]:
    """The epoch checkpoints to average, oldest first: the ``num`` lowest CV losses, the last ``num``, or
    the ``num`` highest probe composites (``rank(cer, ss)``, higher is better; ties: the newer).

    A run that ``train.max_steps`` stopped before any epoch ended has only step checkpoints: the newest one
    is taken alone (there is no CV loss to rank by).
    """
    if by not in AVERAGE_BY:
        raise ConfigError(f"train.average_by: unknown value '{by}'; use cv_loss, last or probe")
    if num < 1:
        raise ConfigError(f"train.average_num: must be >= 1, got {num}")
    found = list_checkpoints(folder)
    epochs = [i for i in found if i.kind == "epoch"]
    if not epochs:
        steps = [i for i in found if i.kind == "step"]
        if steps:  # a run stopped by train.max_steps inside its first epoch: its last state is the result
            return [steps[-1]]
        raise InputError(f"{folder}: no epoch checkpoints to average; train at least one epoch first")
    if by == "cv_loss":
        scored = [i for i in epochs if i.cv_loss is not None]
        if not scored:
            raise InputError(f"{folder}: epoch checkpoints have no CV loss; average with train.average_by=last")
        chosen = sorted(scored, key=lambda i: (i.cv_loss, -i.step))[:num]
    elif by == "probe":
        rank = rank or _default_rank
        probed = [(value, i) for i in epochs if (value := probe_rank_of(i, rank)) is not None]
        if not probed:
            raise InputError(
                f"{folder}: no epoch checkpoint has probe scores; train with train.probe_every_epochs=1 "
                "or average with train.average_by=cv_loss"
            )
        chosen = [i for _, i in sorted(probed, key=lambda pair: (-pair[0], -pair[1].step))[:num]]
    else:
        chosen = epochs[-num:]
    return sorted(chosen, key=lambda i: i.step)


def _alias_groups(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """alias key -> the first key holding the same tensor (shared storage, or :data:`keys.TIED_KEYS`)."""
    first: dict[tuple[int, int, tuple[int, ...]], str] = {}
    aliases: dict[str, str] = {}
    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor) or tensor.numel() == 0:
            continue
        ident = (tensor.untyped_storage().data_ptr(), int(tensor.storage_offset()), tuple(tensor.shape))
        if ident in first:
            aliases[key] = first[ident]
        else:
            first[ident] = key
    for alias, source in keys.TIED_KEYS.items():
        if alias in state and source in state and alias not in aliases:
            aliases[alias] = source
    return aliases


def average_state_dicts(states: list[Mapping[str, torch.Tensor]]) -> OrderedDict[str, torch.Tensor]:
    """Average ``states`` (oldest first; the last one gives the non-float values and the key order)."""
    if not states:
        raise ValueError("nothing to average")
    reference = states[-1]
    names = [k for k, v in reference.items() if isinstance(v, torch.Tensor) and k not in keys.TRAINING_ONLY_KEYS]
    for other in states[:-1]:
        if set(k for k in other if k not in keys.TRAINING_ONLY_KEYS) != set(names):
            raise InputError("checkpoints to average have different keys; average checkpoints of one run only")
    aliases = _alias_groups(reference)
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key in names:
        if key in aliases:
            continue
        ref = reference[key]
        if ref.is_floating_point():
            total = torch.zeros(ref.shape, dtype=torch.float64)
            for state in states:
                total += state[key].to(torch.float64)
            out[key] = (total / len(states)).to(torch.float32)
        else:
            out[key] = ref.detach().clone()
    for key in names:
        if key in aliases:
            out[key] = out[aliases[key]]
    return OrderedDict((k, out[k]) for k in names)


def average_checkpoints(
    folder: str | Path, out_path: str | Path, num: int = 5, by: str = "cv_loss", rank: ProbeRank | None = None
) -> AverageResult:
    """Average the selected epoch checkpoints of ``folder`` into the weight file ``out_path``."""
    chosen = select_checkpoints(folder, num, by, rank)
    states = [load_checkpoint(info.path, mmap=True)["model"] for info in chosen]
    path = save_plain_state_dict(average_state_dicts(states), out_path)
    return AverageResult(path=path, sources=[i.name for i in chosen], by=by)
