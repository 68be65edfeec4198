"""Learning-rate schedules as pure functions of the optimiser step.

A schedule maps the number of optimiser steps already taken (``step`` = 0 for the first update) to a
factor of the base learning rate. Being a pure function, it needs no state of its own in a checkpoint:
resuming at step ``s`` gives the same rate as never having stopped.

- ``constantlr``: 1 (upstream's SFT setting).
- ``warmuplr``: upstream's formula, ``sqrt(w) * min(n ** -0.5, n * w ** -1.5)`` with ``n = step + 1``
  and ``w`` the warmup steps; it peaks at 1 when ``n == w`` and then decays as ``1 / sqrt(n)``. With
  ``w == 0`` it is ``n ** -0.5``.
- ``linear`` / ``cosine``: linear warmup ``(step + 1) / w`` over ``w`` steps, then a linear or
  half-cosine decay from 1 to ``min_lr_ratio`` reached at ``decay_steps`` (held afterwards).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cosyml.errors import ConfigError

SCHEDULES = ("constantlr", "warmuplr", "linear", "cosine")


@dataclass(frozen=True)
class LRSchedule:
    """A learning-rate factor per optimiser step (see the module docstring for the formulas)."""

    name: str = "constantlr"
    warmup_steps: int = 0
    decay_steps: int = 0  # linear/cosine: the step at which the factor reaches min_lr_ratio
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ConfigError(f"train.scheduler: unknown schedule '{self.name}'; use one of {', '.join(SCHEDULES)}")
        if self.warmup_steps < 0:
            raise ConfigError(f"train.warmup_steps: must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"train.min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")

    def factor(self, step: int) -> float:
        """Multiplier of the base lr for the update that follows ``step`` completed updates."""
        n = step + 1
        w = self.warmup_steps
        if self.name == "constantlr":
            return 1.0
        if self.name == "warmuplr":
            if w == 0:
                return n**-0.5
            return w**0.5 * min(n**-0.5, n * w**-1.5)
        if step < w:
            return n / w
        span = max(1, self.decay_steps - w)
        progress = min(1.0, (step - w) / span)
        shape = 1.0 - progress if self.name == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * shape


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, schedule: LRSchedule, step: int) -> float:
    """Set every parameter group's lr for the next update and return it."""
    lr = base_lr * schedule.factor(step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
