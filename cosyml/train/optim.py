"""Optimiser, schedule and precision in force: :class:`~cosyml.train.config.TrainConfig` values, else the
model yaml's ``train_conf``, else upstream's SFT values (:data:`UPSTREAM_TRAIN_CONF`).

Precision: fp32 on CPU; on GPU ``precision: auto`` is bf16 autocast where supported (fp32 master weights),
``fp16`` adds a GradScaler.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from cosyml.errors import ConfigError
from cosyml.train.config import TrainConfig
from cosyml.train.schedule import LRSchedule

# Upstream's train_conf for SFT (model yaml) when the yaml does not say.
UPSTREAM_TRAIN_CONF: dict[str, Any] = {
    "optim": "adam",
    "optim_conf": {"lr": 1e-5},
    "scheduler": "constantlr",
    "scheduler_conf": {"warmup_steps": 2500},
    "grad_clip": 5.0,
    "accum_grad": 2,
}


@dataclass(frozen=True)
class OptimSettings:
    """The optimiser settings in force: TrainConfig values, else the model yaml's ``train_conf``."""

    optim: str
    lr: float
    weight_decay: float
    schedule: LRSchedule
    grad_clip: float  # <= 0: no clipping (the norm is still measured)
    accum_grad: int


def resolve_settings(
    cfg: TrainConfig, model_train_conf: Mapping[str, Any] | None, steps_per_epoch: int
) -> OptimSettings:
    """Merge TrainConfig over the model yaml's ``train_conf`` (over upstream's SFT values)."""
    yaml_conf = {**UPSTREAM_TRAIN_CONF, **dict(model_train_conf or {})}
    optim = cfg.optim or str(yaml_conf["optim"])
    if optim not in ("adam", "adamw"):
        raise ConfigError(f"train.optim: unknown optimiser '{optim}'; use adam or adamw")
    lr = cfg.lr if cfg.lr is not None else float((yaml_conf.get("optim_conf") or {}).get("lr", 1e-5))
    accum = cfg.accum_grad if cfg.accum_grad is not None else int(yaml_conf["accum_grad"])
    if accum < 1:
        raise ConfigError(f"train.accum_grad: must be >= 1, got {accum}")
    warmup = cfg.warmup_steps
    if warmup is None:
        warmup = int((yaml_conf.get("scheduler_conf") or {}).get("warmup_steps", 0))
    name = cfg.scheduler or str(yaml_conf["scheduler"])
    decay = cfg.decay_steps or max(1, cfg.max_epochs * steps_per_epoch)
    return OptimSettings(
        optim=optim,
        lr=float(lr),
        weight_decay=cfg.weight_decay,
        schedule=LRSchedule(name=name, warmup_steps=warmup, decay_steps=decay, min_lr_ratio=cfg.min_lr_ratio),
        grad_clip=float(cfg.grad_clip if cfg.grad_clip is not None else yaml_conf["grad_clip"]),
        accum_grad=accum,
    )


def build_optimizer(model: torch.nn.Module, settings: OptimSettings) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    kind = torch.optim.AdamW if settings.optim == "adamw" else torch.optim.Adam
    return kind(params, lr=settings.lr, weight_decay=settings.weight_decay)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (``None`` = fp32, no autocast)."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"train.precision: unknown value '{precision}'; use auto, fp32, bf16 or fp16")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision: fp16 needs a CUDA device; use fp32 or bf16 on the CPU")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """Autocast to ``dtype`` on ``device`` (``None``: fp32, nothing to do)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
