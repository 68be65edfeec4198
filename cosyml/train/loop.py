"""The training loop: one function, :func:`train`, that reads top to bottom.

Model protocol
--------------
Any ``torch.nn.Module`` whose ``forward(batch)`` takes the batch dict of :func:`cosyml.train.batching.collate`
(upstream's keys: ``text_token`` (B, Lt), ``speech_token`` (B, Ls), ``speech_feat`` (B, T, 80),
``embedding`` (B, 192) and their ``*_len``) and returns either a dict with ``"loss"`` (scalar tensor, the
mean over the batch) and optionally ``"acc"``, or an object with ``.loss`` / ``.acc`` attributes (the LLM's
``LLMOutput``). ``model.state_dict()`` must have the official key layout (``llm.pt`` / ``flow.pt``): it is
what checkpoints hold and what averaging and export write.

What one optimiser step does
----------------------------
``accum_grad`` batches are run forward and backward (DDP gradient sync only on the last), each loss scaled by
1 / (batches in the group), so the summed gradient is that of the mean loss. Then: unscale (fp16),
clip to ``grad_clip`` (the pre-clip total norm is logged as a float), skip the update when that norm is not
finite, set the lr from the schedule, step, zero. The logged ``train/loss`` is the true mean loss of the
group over all ranks (upstream logs it divided by ``accum_grad``). A non-finite loss stops the run with one
line naming the step and the utterances; the last checkpoint written stays the newest.

Precision: fp32 on CPU; on GPU ``precision: auto`` is bf16 autocast where supported (fp32 master weights),
``fp16`` adds a GradScaler.

Callbacks (rank 0 only): a :class:`MetricLogger` and/or ``on_log(metrics, step)`` every ``log_every_steps``
steps and once with the data summary at step 0, ``on_epoch_end(EpochResult)``, ``on_checkpoint(CheckpointInfo, is_best)`` (``is_best``:
the loop's own rule, ``early_stop_min_delta`` and the best CV loss restored on resume included), and
``on_probe(epoch, model)`` every ``probe_every_epochs`` epochs after validation and before the epoch's
checkpoint is written: it scores the model's current weights and returns the scores (a flat dict with
``"composite"``, higher is better) or ``None``. The scores go into the checkpoint record
(``CheckpointInfo.probe``), are broadcast from rank 0 to every rank (outside the rank-0 block), and
with ``early_stop_on: probe`` decide ``is_best`` and early stopping instead of the CV loss. The loop
knows nothing about MLflow. Callbacks run inside :func:`_rank0_block`: they may not call collectives
(every rank computes what they log first) and whatever they draw from the python/numpy/torch RNGs (an
audio sampler loading a synthesis engine does) is given back, so a run with callbacks and a resumed run
draw the same random numbers as one without.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from cosyml.errors import ConfigError, CosymlError
from cosyml.train import ddp
from cosyml.train.batching import DROP_REASONS, UtteranceSet, batch_to_device
from cosyml.train.checkpoint import (
    CheckpointInfo,
    apply_retention,
    capture_rng,
    config_hash,
    isolated_rng,
    latest_resumable,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from cosyml.train.config import TrainConfig
from cosyml.train.ddp import DistInfo
from cosyml.train.schedule import LRSchedule, set_lr

# Upstream's train_conf for SFT (model yaml) when the yaml does not say.
UPSTREAM_TRAIN_CONF: dict[str, Any] = {
    "optim": "adam",
    "optim_conf": {"lr": 1e-5},
    "scheduler": "constantlr",
    "scheduler_conf": {"warmup_steps": 2500},
    "grad_clip": 5.0,
    "accum_grad": 2,
}


class TrainingDiverged(CosymlError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True)
class OptimSettings:
    """The optimiser settings in force: TrainConfig values, else the model yaml's ``train_conf``."""

    optim: str
    lr: float
    weight_decay: float
    schedule: LRSchedule
    grad_clip: float  # <= 0: no clipping (the norm is still measured)
    accum_grad: int


@dataclass
class Tally:
    """Sums added up over ranks in one ``all_reduce``: the fields, in order, are the reduced vector."""

    def vector(self) -> list[float]:
        return [float(getattr(self, f.name)) for f in fields(self)]

    def reduced(self, info: DistInfo) -> Any:
        """The element-wise sum over all ranks (a collective: every rank calls it)."""
        return type(self)(*ddp.all_reduce_sum(self.vector(), info))


@dataclass
class GroupTally(Tally):
    """One optimiser step's batches (one accumulation group)."""

    loss_sum: float = 0.0  # sum of the batches' mean losses (non-finite ones counted as 0)
    batches: float = 0.0
    acc_sum: float = 0.0
    acc_batches: float = 0.0  # batches whose model reported an accuracy
    nonfinite: float = 0.0  # batches whose loss was NaN or infinite
    utts: float = 0.0
    speech_tokens: float = 0.0
    mel_frames: float = 0.0

    def count(self, batch: Mapping[str, Any]) -> None:
        """Add a batch's utterances, speech tokens and mel frames (for throughput)."""
        utts, tokens, frames = _batch_counts(batch)
        self.utts += utts
        self.speech_tokens += tokens
        self.mel_frames += frames


@dataclass
class EpochTally(Tally):
    """The epoch so far, per optimiser step (stored in step checkpoints as ``extra["epoch_sums"]``)."""

    loss_sum: float = 0.0
    steps: float = 0.0
    acc_sum: float = 0.0
    acc_steps: float = 0.0

    def add_step(self, loss: float, acc: float | None) -> None:
        self.loss_sum += loss
        self.steps += 1
        if acc is not None:
            self.acc_sum += acc
            self.acc_steps += 1


@dataclass
class CvTally(Tally):
    """Validation, weighted by utterances."""

    loss_sum: float = 0.0  # sum of batch loss x utterances
    acc_sum: float = 0.0  # sum of batch acc x utterances
    acc_utts: float = 0.0
    utts: float = 0.0


@dataclass
class Throughput:
    """What was processed since the last logged step, for the ``perf/*`` rates."""

    started: float = field(default_factory=time.perf_counter)
    utts: float = 0.0
    speech_tokens: float = 0.0
    mel_frames: float = 0.0

    def add(self, group: GroupTally) -> None:
        self.utts += group.utts
        self.speech_tokens += group.speech_tokens
        self.mel_frames += group.mel_frames

    def rates(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        out = {"perf/utts_per_s": self.utts / elapsed}
        if self.speech_tokens:
            out["perf/speech_tokens_per_s"] = self.speech_tokens / elapsed
        if self.mel_frames:
            out["perf/frames_per_s"] = self.mel_frames / elapsed
        return out


@dataclass
class EpochResult:
    """What one epoch produced (passed to ``on_epoch_end``)."""

    epoch: int
    step: int
    train_loss: float | None
    train_acc: float | None
    cv_loss: float | None
    cv_acc: float | None
    cv_utts: int
    checkpoint: str | None
    is_best: bool
    probe: dict[str, float] | None = None  # on_probe's scores for this epoch (None: no probe ran)


class MetricLogger(Protocol):
    """Where the loop's owner sends step metrics (:class:`cosyml.tracking.StageRun` is one)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...


@dataclass
class TrainCallbacks:
    """What rank 0 hears from the loop; ``logger`` and ``on_log`` both receive the step metrics."""

    on_log: Callable[[dict[str, float], int], None] | None = None
    on_epoch_end: Callable[[EpochResult], None] | None = None
    on_checkpoint: Callable[[CheckpointInfo, bool], None] | None = None
    logger: MetricLogger | None = None
    on_probe: Callable[[int, torch.nn.Module], dict[str, float] | None] | None = None

    @property
    def logs(self) -> bool:
        return self.on_log is not None or self.logger is not None

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=step)
        if self.on_log is not None:
            self.on_log(metrics, step)


@dataclass
class TrainResult:
    step: int
    epochs_completed: int
    stopped_early: bool
    checkpoint_dir: Path
    history: list[EpochResult] = field(default_factory=list)


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


def loss_and_acc(output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(loss, acc)`` from a model output: a scalar loss tensor (the flow), a dict with "loss"/"acc",
    or an object with .loss/.acc (the LLM)."""
    if isinstance(output, torch.Tensor):
        return output, None
    if isinstance(output, Mapping):
        return output["loss"], output.get("acc")
    return output.loss, getattr(output, "acc", None)


@contextlib.contextmanager
def _rank0_block() -> Any:
    """Rank-0-only work: no collectives inside (:func:`ddp.main_only`), the training RNG left untouched."""
    with ddp.main_only(), isolated_rng():
        yield


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _batch_counts(batch: Mapping[str, Any]) -> tuple[float, float, float]:
    """(utterances, speech tokens, mel frames) in a batch, for throughput."""
    tokens = float(batch["speech_token_len"].sum()) if "speech_token_len" in batch else 0.0
    frames = float(batch["speech_feat_len"].sum()) if "speech_feat_len" in batch else 0.0
    return float(len(batch["utts"])), tokens, frames


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, data: UtteranceSet, info: DistInfo, autocast_dtype: torch.dtype | None
) -> tuple[float | None, float | None, int]:
    """Utterance-weighted CV loss and acc over all ranks' shares: sum(v x n_utts) / sum(n_utts)."""
    was_training = model.training
    model.eval()
    tally = CvTally()
    for indices in data.plan(seed=0, epoch=0, shuffle=False):
        batch = batch_to_device(data.batch(indices), info.device)
        with _autocast(info.device, autocast_dtype):
            loss, acc = loss_and_acc(model(batch))
        n = len(indices)
        tally.loss_sum += float(loss) * n
        tally.utts += n
        if acc is not None:
            tally.acc_sum += float(acc) * n
            tally.acc_utts += n
    model.train(was_training)
    total = tally.reduced(info)
    if total.utts == 0:
        return None, None, 0
    return total.loss_sum / total.utts, (total.acc_sum / total.acc_utts if total.acc_utts else None), int(total.utts)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def data_summary(train_set: UtteranceSet, cv_set: UtteranceSet | None, info: DistInfo) -> dict[str, float]:
    """Kept and dropped utterance counts over all ranks, for logging once at the start."""
    reasons = DROP_REASONS  # the same names on every rank: the all_reduce needs equal lengths
    sets = {"train": train_set, "cv": cv_set}
    names, values = [], []
    for split, data in sets.items():
        if data is None:
            continue
        names.append(f"data/{split}_utts")
        values.append(float(len(data)))
        for reason in reasons:
            names.append(f"data/{split}_dropped/{reason}")
            values.append(float(data.dropped.get(reason, 0)))
    return dict(zip(names, ddp.all_reduce_sum(values, info), strict=True))


@dataclass
class Progress:
    """Where a run stands: a fresh start, or what a checkpoint restored."""

    step: int = 0  # optimiser steps taken
    next_epoch: int = 0
    next_batch: int = 0  # batches of next_epoch already consumed
    # loop counters kept in checkpoints: early stopping, skipped steps (and "epoch_sums" mid-epoch)
    extra: dict[str, Any] = field(
        default_factory=lambda: {"best_cv": math.inf, "best_probe": -math.inf, "bad_epochs": 0, "skipped_steps": 0}
    )


def probe_due(cfg: TrainConfig, epoch: int) -> bool:
    """Does the probe run after (0-based) ``epoch``? Every ``probe_every_epochs``-th epoch; 0 = never."""
    return cfg.probe_every_epochs > 0 and (epoch + 1) % cfg.probe_every_epochs == 0


def run_probe(
    cfg: TrainConfig, epoch: int, model: torch.nn.Module, callbacks: TrainCallbacks, info: DistInfo
) -> dict[str, float] | None:
    """Rank 0's probe scores of ``model`` after ``epoch``, on every rank (None: not due, off, or nothing scored).

    Whether a broadcast happens depends only on ``cfg`` (the same on every rank), never on rank 0's callback,
    so the ranks always meet in it; the probe itself runs in the rank-0 block (no collectives, RNG untouched).
    """
    if not probe_due(cfg, epoch):
        return None
    scores = None
    if info.is_main and callbacks.on_probe is not None:
        with _rank0_block():
            scores = callbacks.on_probe(epoch, model)
    return ddp.broadcast_object(scores, info)


def _update_best(
    cfg: TrainConfig, extra: dict[str, Any], cv_loss: float | None, probe: Mapping[str, float] | None
) -> bool:
    """Update the best CV loss / probe composite and the early-stopping count; is this epoch the best one?

    ``early_stop_on`` picks the rule: a CV loss below the best by more than ``early_stop_min_delta``, or a
    probe composite above the best by more than it. An epoch the rule cannot judge (no CV set, no probe
    this epoch) neither resets nor counts towards ``early_stop_patience``.
    """
    composite = probe.get("composite") if probe else None
    if composite is not None and not math.isfinite(composite):
        composite = None
    cv_better = cv_loss is not None and cv_loss < extra["best_cv"] - cfg.early_stop_min_delta
    if cv_better:
        extra["best_cv"] = cv_loss
    best_probe = extra.get("best_probe", -math.inf)
    probe_better = composite is not None and composite > best_probe + cfg.early_stop_min_delta
    if probe_better:
        extra["best_probe"] = composite
    if cfg.early_stop_on == "probe":
        is_best, judged = probe_better, composite is not None
    else:
        is_best, judged = cv_better, cv_loss is not None
    if is_best:
        extra["bad_epochs"] = 0
    elif judged:
        extra["bad_epochs"] += 1
    return is_best


def _resume_path(resume: str | Path | None, checkpoint_dir: Path, info: DistInfo) -> str | None:
    """The checkpoint to resume from: rank 0 picks the newest full one for "auto" and tells the others."""
    if resume == "auto":
        latest = latest_resumable(checkpoint_dir) if info.is_main else None
        return ddp.broadcast_object(latest.path if latest else None, info)
    return None if resume is None else str(resume)


def _restore(
    path: str, chash: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, info: DistInfo
) -> Progress:
    """Load weights, optimiser, scaler and this rank's RNG states from a full checkpoint."""
    state = load_checkpoint(path, chash)
    if "optimizer" not in state:
        raise ConfigError(f"{path}: weights-only checkpoint cannot be resumed; pick a full one")
    model.load_state_dict(state["model"], strict=True)
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    rngs = state["rng"]
    restore_rng(rngs[info.rank] if len(rngs) == info.world_size else rngs[0])
    progress = Progress(int(state["info"]["step"]), int(state["info"]["next_epoch"]), int(state["info"]["next_batch"]))
    progress.extra.update(state["extra"])
    return progress


def completed_checkpoint(checkpoint_dir: str | Path, cfg: TrainConfig, model: torch.nn.Module) -> CheckpointInfo | None:
    """The newest checkpoint of ``checkpoint_dir`` when that run already reached its end under ``cfg``
    (``max_epochs`` done, ``max_steps`` reached, or early stopping triggered), else ``None``.

    A checkpoint written under another training config (:func:`config_hash`) is never complete: resuming
    it fails with the one-line refusal of :func:`train`.
    """
    latest = latest_resumable(checkpoint_dir)
    if latest is None or latest.config_hash != config_hash(cfg, model):
        return None
    if (cfg.max_steps > 0 and latest.step >= cfg.max_steps) or latest.next_epoch >= cfg.max_epochs:
        return latest
    if cfg.early_stop_patience > 0 and latest.kind == "epoch":
        extra = load_checkpoint(latest.path, mmap=True).get("extra", {})
        if int(extra.get("bad_epochs", 0)) >= cfg.early_stop_patience:
            return latest
    return None


def train(
    model: torch.nn.Module,
    train_set: UtteranceSet,
    cv_set: UtteranceSet | None,
    cfg: TrainConfig,
    checkpoint_dir: str | Path,
    *,
    model_train_conf: Mapping[str, Any] | None = None,
    dist: DistInfo | None = None,
    resume: str | Path | None = "auto",
    callbacks: TrainCallbacks | None = None,
) -> TrainResult:
    """Train ``model`` on this rank's ``train_set``, validating on ``cv_set`` after every epoch.

    ``resume``: "auto" continues from the newest full checkpoint in ``checkpoint_dir`` if there is one,
    a path continues from that checkpoint, ``None`` starts fresh. A checkpoint written under another
    config (see :func:`cosyml.train.checkpoint.config_hash`) is refused with one line.
    """
    info = dist or ddp.current()
    callbacks = callbacks or TrainCallbacks()
    checkpoint_dir = Path(checkpoint_dir)
    emit = info.is_main

    # ---- setup: seeds, model, optimiser, schedule
    _seed_everything(cfg.seed + info.rank)
    model.to(info.device)
    chash = config_hash(cfg, model)
    first_plan_len = ddp.equal_batch_count(len(train_set.plan(cfg.seed, 0)), info)
    provisional = resolve_settings(cfg, model_train_conf, 1)
    settings = resolve_settings(cfg, model_train_conf, math.ceil(first_plan_len / provisional.accum_grad))
    optimizer = build_optimizer(model, settings)
    autocast_dtype = resolve_precision(cfg.precision, info.device)
    scaler = torch.amp.GradScaler(info.device.type, enabled=autocast_dtype == torch.float16)

    # ---- resume
    resume_path = _resume_path(resume, checkpoint_dir, info)
    progress = Progress()
    if resume_path is not None:
        progress = _restore(resume_path, chash, model, optimizer, scaler, info)
    step, start_epoch, skip_batches, extra = progress.step, progress.next_epoch, progress.next_batch, progress.extra

    net = ddp.wrap_model(model, info, cfg.find_unused_parameters)
    summary = data_summary(train_set, cv_set, info)  # a collective: every rank, before the rank-0 block
    if emit and callbacks.logs:
        with _rank0_block():
            callbacks.log(summary, step)

    def checkpoint(
        name: str,
        kind: str,
        epoch: int,
        next_epoch: int,
        next_batch: int,
        cv: tuple[Any, ...] = (),
        is_best: bool = False,
        probe: dict[str, float] | None = None,
    ) -> CheckpointInfo:
        rngs = ddp.gather_objects(capture_rng(), info)  # collective: every rank calls it
        record = CheckpointInfo(
            name=name, kind=kind, epoch=epoch, step=step, next_epoch=next_epoch, next_batch=next_batch,
            config_hash=chash, cv_loss=cv[0] if cv else None, cv_acc=cv[1] if cv else None, probe=probe,
        )  # fmt: skip
        if emit:
            with _rank0_block():
                _save(record, rngs, is_best)
        ddp.barrier(info)
        return record

    def _save(record: CheckpointInfo, rngs: list[Any], is_best: bool) -> None:
        payload = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rngs,
            "extra": dict(extra),
        }
        save_checkpoint(checkpoint_dir, record, payload)
        apply_retention(checkpoint_dir, cfg.keep_last, cfg.keep_best)
        if callbacks.on_checkpoint:
            callbacks.on_checkpoint(record, is_best)

    history: list[EpochResult] = []
    stopped_early = False
    epochs_completed = start_epoch
    last_saved = resume_path or "none"
    window = Throughput()

    # ---- epochs
    for epoch in range(start_epoch, cfg.max_epochs):
        plan = train_set.plan(cfg.seed, epoch)
        plan = plan[: ddp.equal_batch_count(len(plan), info)]  # uneven shares: all ranks run the same count
        net.train()
        done = skip_batches if epoch == start_epoch else 0
        saved = extra.pop("epoch_sums", None) if epoch == start_epoch else None  # resumed mid-epoch
        epoch_tally = EpochTally(*saved) if saved else EpochTally()

        while done < len(plan):
            group = plan[done : done + settings.accum_grad]
            tally = GroupTally()
            bad_utts: list[str] = []
            for j, indices in enumerate(group):
                batch = batch_to_device(train_set.batch(indices), info.device)
                sync = j == len(group) - 1 or not info.distributed
                with contextlib.nullcontext() if sync else net.no_sync():  # type: ignore[operator]  # sync is False only when distributed, and then net is a DistributedDataParallel (has no_sync)
                    with _autocast(info.device, autocast_dtype):
                        loss, acc = loss_and_acc(net(batch))
                    scaler.scale(loss.float() / len(group)).backward()
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    tally.nonfinite += 1
                    bad_utts.extend(batch["utts"])
                    loss_value = 0.0
                tally.loss_sum += loss_value
                tally.batches += 1
                if acc is not None:
                    tally.acc_sum += float(acc.detach())
                    tally.acc_batches += 1
                tally.count(batch)
            tally = tally.reduced(info)
            if tally.nonfinite > 0:
                culprits = [u for utts in ddp.gather_objects(bad_utts, info) for u in utts]
                raise TrainingDiverged(
                    f"train: loss is not finite at step {step + 1} (epoch {epoch}, batch {done}) on utterances "
                    f"{', '.join(culprits[:8])}; last good checkpoint: {last_saved}; lower train.lr or use precision fp32"
                )

            scaler.unscale_(optimizer)
            max_norm = settings.grad_clip if settings.grad_clip > 0 else math.inf
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
            lr = set_lr(optimizer, settings.lr, settings.schedule, step)
            if math.isfinite(grad_norm):
                scaler.step(optimizer)
            else:
                extra["skipped_steps"] += 1
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            done += len(group)

            step_loss = tally.loss_sum / tally.batches
            step_acc = tally.acc_sum / tally.acc_batches if tally.acc_batches else None
            epoch_tally.add_step(step_loss, step_acc)
            window.add(tally)

            if emit and callbacks.logs and step % max(1, cfg.log_every_steps) == 0:
                metrics = {
                    "train/loss": step_loss,
                    "train/lr": lr,
                    "train/grad_norm": grad_norm,
                    "train/epoch": epoch + done / max(1, len(plan)),
                    "train/skipped_steps": float(extra["skipped_steps"]),
                    **window.rates(),
                }
                if step_acc is not None:
                    metrics["train/acc"] = step_acc
                if info.device.type == "cuda":
                    metrics["perf/gpu_mem_max_gib"] = torch.cuda.max_memory_allocated(info.device) / 2**30
                    torch.cuda.reset_peak_memory_stats(info.device)
                with _rank0_block():
                    callbacks.log(metrics, step)
                window = Throughput()

            reached_max = cfg.max_steps > 0 and step >= cfg.max_steps
            if reached_max or (cfg.save_every_steps > 0 and step % cfg.save_every_steps == 0):
                extra["epoch_sums"] = epoch_tally.vector()
                record = checkpoint(f"step_{step}", "step", epoch, epoch, done)
                last_saved = record.name
                extra.pop("epoch_sums")
            if reached_max:
                return TrainResult(step, epochs_completed, False, checkpoint_dir, history)

        # ---- end of epoch: validate, probe, checkpoint, early stopping
        cv_loss, cv_acc, cv_utts = (None, None, 0)
        if cv_set is not None:
            cv_loss, cv_acc, cv_utts = evaluate(model, cv_set, info, autocast_dtype)
        probe = run_probe(cfg, epoch, model, callbacks, info)
        is_best = _update_best(cfg, extra, cv_loss, probe)
        record = checkpoint(f"epoch_{epoch}", "epoch", epoch, epoch + 1, 0, (cv_loss, cv_acc), is_best, probe)
        last_saved = record.name
        epochs_completed = epoch + 1
        result = EpochResult(
            epoch=epoch,
            step=step,
            train_loss=epoch_tally.loss_sum / epoch_tally.steps if epoch_tally.steps else None,
            train_acc=epoch_tally.acc_sum / epoch_tally.acc_steps if epoch_tally.acc_steps else None,
            cv_loss=cv_loss,
            cv_acc=cv_acc,
            cv_utts=cv_utts,
            checkpoint=record.path or None,
            is_best=is_best,
            probe=probe,
        )
        history.append(result)
        if emit and callbacks.on_epoch_end:
            with _rank0_block():
                callbacks.on_epoch_end(result)
        if cfg.early_stop_patience > 0 and extra["bad_epochs"] >= cfg.early_stop_patience:
            stopped_early = True
            break

    return TrainResult(step, epochs_completed, stopped_early, checkpoint_dir, history)
