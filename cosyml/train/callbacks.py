"""What the training recipe tells its owner: the :class:`Callbacks` protocol (rank 0 only).

The recipe knows nothing of MLflow; the command (``cosyml train``) implements :class:`Callbacks` with
:mod:`cosyml.tracking`, tests and benches with plain functions (:class:`TrainCallbacks`).

- ``log_metrics(metrics, step)``: the data summary (``data/*`` counts) once at the start, then the step
  metrics (``train/*``, ``perf/*``) every ``log_every_steps`` optimiser steps;
- ``probe(epoch, model)``: every ``probe_every_epochs`` epochs, after validation and before the epoch's
  checkpoint: score the model's current weights; returns the scores (a flat dict with ``"composite"``,
  higher is better) or ``None`` (nothing scored). The recipe stores them with the checkpoint, broadcasts
  them to every rank and, with ``early_stop_on: probe``, judges the epoch by them;
- ``checkpoint_written(record, is_best)``: after every checkpoint; ``is_best`` is the recipe's one rule
  (:class:`cosyml.train.state.BestSoFar`: ``early_stop_on``, ``early_stop_min_delta`` and the best restored
  on resume), always False for step checkpoints;
- ``epoch_ended(result)``: after the epoch's checkpoint.

They run inside the recipe's rank-0 block: no collectives (every rank computes what they receive first),
and whatever they draw from the python/numpy/torch RNGs (a sampler loading a synthesis engine does) is
given back, so a run with callbacks and a resumed run draw the same random numbers as one without.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch

from cosyml.train.checkpoint import CheckpointInfo
from cosyml.train.state import EpochResult

Scores = dict[str, float]


class MetricLogger(Protocol):
    """Where step metrics go (:class:`cosyml.tracking.StageRun` is one)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...


class Callbacks(MetricLogger, Protocol):
    """What rank 0 hears from the recipe (see the module docstring for when each is called)."""

    def probe(self, epoch: int, model: torch.nn.Module) -> Scores | None: ...

    def checkpoint_written(self, record: CheckpointInfo, is_best: bool) -> None: ...

    def epoch_ended(self, result: EpochResult) -> None: ...


@dataclass
class TrainCallbacks:
    """:class:`Callbacks` made of optional functions (``logger`` and ``on_log`` both hear the step metrics)."""

    on_log: Callable[[dict[str, float], int], None] | None = None
    on_epoch_end: Callable[[EpochResult], None] | None = None
    on_checkpoint: Callable[[CheckpointInfo, bool], None] | None = None
    logger: MetricLogger | None = None
    on_probe: Callable[[int, torch.nn.Module], Scores | None] | None = None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=step)
        if self.on_log is not None:
            self.on_log(dict(metrics), step or 0)

    def probe(self, epoch: int, model: torch.nn.Module) -> Scores | None:
        return self.on_probe(epoch, model) if self.on_probe is not None else None

    def checkpoint_written(self, record: CheckpointInfo, is_best: bool) -> None:
        if self.on_checkpoint is not None:
            self.on_checkpoint(record, is_best)

    def epoch_ended(self, result: EpochResult) -> None:
        if self.on_epoch_end is not None:
            self.on_epoch_end(result)
