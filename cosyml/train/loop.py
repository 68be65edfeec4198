"""The training recipe: :class:`TrainingRecipe` (setup, resume, train step, epoch end) and :func:`train`.

Read :meth:`TrainingRecipe.train` first: it is the whole run in twenty lines. The state it carries is
named (:mod:`cosyml.train.state`), what it tells its owner goes through :class:`~cosyml.train.callbacks.
Callbacks` (rank 0 only; the recipe knows nothing of MLflow), its settings are a
:class:`~cosyml.train.config.TrainConfig`.

Model protocol
--------------
Any ``torch.nn.Module`` whose ``forward(batch)`` takes the batch dict of :func:`cosyml.train.batching.collate`
(upstream's keys: ``text_token`` (B, Lt), ``speech_token`` (B, Ls), ``speech_feat`` (B, T, 80),
``embedding`` (B, 192) and their ``*_len``) and returns a scalar loss tensor, a dict with ``"loss"`` (scalar
tensor, the mean over the batch) and optionally ``"acc"``, or an object with ``.loss`` / ``.acc`` attributes
(the LLM's ``LLMOutput``). ``model.state_dict()`` must have the official key layout (``llm.pt`` /
``flow.pt``): it is what checkpoints hold and what averaging and export write.

What one optimiser step does (:meth:`TrainingRecipe.train_step`)
----------------------------------------------------------------
``accum_grad`` batches are run forward and backward (DDP gradient sync only on the last), each loss scaled by
1 / (batches in the group), so the summed gradient is that of the mean loss. Then: unscale (fp16),
clip to ``grad_clip`` (the pre-clip total norm is logged as a float), skip the update when that norm is not
finite, set the lr from the schedule, step, zero. The logged ``train/loss`` is the true mean loss of the
group over all ranks (upstream logs it divided by ``accum_grad``). A non-finite loss stops the run with one
line naming the step and the utterances; the last checkpoint written stays the newest.

End of an epoch (:meth:`TrainingRecipe.end_epoch`)
--------------------------------------------------
Validate on the CV set (utterance-weighted, all ranks), run the probe when due (rank 0, scores broadcast),
judge the epoch with :class:`~cosyml.train.state.BestSoFar` (the one "is best" rule: early stopping and
``log_checkpoints: best`` both follow it), write the epoch checkpoint, tell the callbacks.

Distributed runs: every rank runs the same collectives in the same order; rank-0-only work (callbacks,
checkpoint files) runs in :func:`rank0_block`, where a collective fails at once and the RNGs are left as
they were.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cosyml.errors import ConfigError, CosymlError
from cosyml.train import ddp
from cosyml.train.batching import DROP_REASONS, UtteranceSet, batch_to_device
from cosyml.train.callbacks import Callbacks, Scores, TrainCallbacks
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
from cosyml.train.optim import autocast, build_optimizer, resolve_precision, resolve_settings
from cosyml.train.schedule import set_lr
from cosyml.train.state import (
    CvTally,
    EpochResult,
    EpochTally,
    GroupTally,
    RunState,
    StepResult,
    Throughput,
    TrainResult,
)


class TrainingDiverged(CosymlError):
    """The loss became NaN or infinite."""


def loss_and_acc(output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(loss, acc)`` from a model output: a scalar loss tensor (the flow), a dict with "loss"/"acc",
    or an object with .loss/.acc (the LLM)."""
    if isinstance(output, torch.Tensor):
        return output, None
    if isinstance(output, Mapping):
        return output["loss"], output.get("acc")
    return output.loss, getattr(output, "acc", None)


@contextlib.contextmanager
def rank0_block() -> Iterator[None]:
    """Rank-0-only work: no collectives inside (:func:`ddp.main_only`), the training RNG left untouched."""
    with ddp.main_only(), isolated_rng():
        yield


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: UtteranceSet, info: DistInfo, autocast_dtype: torch.dtype | None) -> CvTally:
    """CV loss and acc over all ranks' shares, weighted by utterances: ``.loss`` = sum(v x n_utts) / sum(n_utts)."""
    was_training = model.training
    model.eval()
    tally = CvTally()
    for indices in data.plan(seed=0, epoch=0, shuffle=False):
        batch = batch_to_device(data.batch(indices), info.device)
        with autocast(info.device, autocast_dtype):
            loss, acc = loss_and_acc(model(batch))
        n = len(indices)
        tally.loss_sum += float(loss) * n
        tally.utts += n
        if acc is not None:
            tally.acc_sum += float(acc) * n
            tally.acc_utts += n
    model.train(was_training)
    return tally.reduced(info)


def data_summary(train_set: UtteranceSet, cv_set: UtteranceSet | None, info: DistInfo) -> dict[str, float]:
    """Kept and dropped utterance counts over all ranks, for logging once at the start."""
    names, values = [], []
    for split, data in (("train", train_set), ("cv", cv_set)):
        if data is None:
            continue
        names.append(f"data/{split}_utts")
        values.append(float(len(data)))
        for reason in DROP_REASONS:  # the same names on every rank: the all_reduce needs equal lengths
            names.append(f"data/{split}_dropped/{reason}")
            values.append(float(data.dropped.get(reason, 0)))
    return dict(zip(names, ddp.all_reduce_sum(values, info), strict=True))


def probe_due(cfg: TrainConfig, epoch: int) -> bool:
    """Does the probe run after (0-based) ``epoch``? Every ``probe_every_epochs``-th epoch; 0 = never."""
    return cfg.probe_every_epochs > 0 and (epoch + 1) % cfg.probe_every_epochs == 0


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
        state = RunState.from_checkpoint(load_checkpoint(latest.path, mmap=True))
        if state.best.patience_spent(cfg.early_stop_patience):
            return latest
    return None


class TrainingRecipe:
    """One training run of ``model`` on this rank's ``train_set``, validated on ``cv_set`` after every epoch.

    ``__init__`` is the setup (seeds, device, optimiser, schedule, precision), :meth:`resume` restores a
    checkpoint, :meth:`train` runs the epochs. Checkpoints go to ``checkpoint_dir``; ``model_train_conf``
    is the model yaml's ``train_conf`` (used where ``cfg`` says ``None``).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        train_set: UtteranceSet,
        cv_set: UtteranceSet | None,
        cfg: TrainConfig,
        checkpoint_dir: str | Path,
        *,
        model_train_conf: Mapping[str, Any] | None = None,
        dist: DistInfo | None = None,
        callbacks: Callbacks | None = None,
    ) -> None:
        self.info = dist or ddp.current()
        self.cfg = cfg
        self.train_set, self.cv_set = train_set, cv_set
        self.checkpoint_dir = Path(checkpoint_dir)
        self.callbacks: Callbacks = callbacks or TrainCallbacks()

        seed_everything(cfg.seed + self.info.rank)
        self.model = model.to(self.info.device)
        self.config_hash = config_hash(cfg, model)
        # the schedule's decay length needs the optimiser steps per epoch, which need accum_grad
        first_epoch_batches = ddp.equal_batch_count(len(train_set.plan(cfg.seed, 0)), self.info)
        accum = resolve_settings(cfg, model_train_conf, 1).accum_grad
        self.settings = resolve_settings(cfg, model_train_conf, math.ceil(first_epoch_batches / accum))
        self.optimizer = build_optimizer(model, self.settings)
        self.autocast_dtype = resolve_precision(cfg.precision, self.info.device)
        self.scaler = torch.amp.GradScaler(self.info.device.type, enabled=self.autocast_dtype == torch.float16)
        self.net = model  # the DDP-wrapped model once training starts (wrapped after a resume restored the weights)

        self.state = RunState()
        self.last_saved = "none"  # the newest checkpoint, named in the divergence message
        self.window = Throughput()
        self.history: list[EpochResult] = []

    # ------------------------------------------------------------------------------------------ resume

    def resume(self, resume: str | Path | None) -> None:
        """``"auto"``: continue from the newest full checkpoint in the checkpoint folder, if any; a path:
        from that checkpoint; ``None``: start fresh. Restores weights, optimiser, scaler, this rank's RNG
        states and the :class:`RunState`; a checkpoint written under another config is refused in one line."""
        if resume == "auto":  # rank 0 picks, the others hear it
            latest = latest_resumable(self.checkpoint_dir) if self.info.is_main else None
            path = ddp.broadcast_object(latest.path if latest else None, self.info)
        else:
            path = None if resume is None else str(resume)
        if path is None:
            return
        saved = load_checkpoint(path, self.config_hash)
        if "optimizer" not in saved:
            raise ConfigError(f"{path}: weights-only checkpoint cannot be resumed; pick a full one")
        self.model.load_state_dict(saved["model"], strict=True)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scaler.load_state_dict(saved["scaler"])
        rngs = saved["rng"]
        restore_rng(rngs[self.info.rank] if len(rngs) == self.info.world_size else rngs[0])
        self.state = RunState.from_checkpoint(saved)
        self.last_saved = path

    # ------------------------------------------------------------------------------------------ the run

    def train(self) -> TrainResult:
        """Run the epochs left; stop at ``max_epochs``, ``max_steps`` or when early stopping says so."""
        cfg, state = self.cfg, self.state
        self.net = ddp.wrap_model(self.model, self.info, cfg.find_unused_parameters)
        summary = data_summary(self.train_set, self.cv_set, self.info)  # a collective: before the rank-0 block
        self._on_rank0(self.callbacks.log_metrics, summary, state.step)
        for epoch in range(state.next_epoch, cfg.max_epochs):
            plan = self.train_set.plan(cfg.seed, epoch)
            plan = plan[: ddp.equal_batch_count(len(plan), self.info)]  # uneven shares: all ranks run the same count
            self.net.train()
            if state.epoch_tally is None:  # else resumed mid-epoch: the epoch so far came with the checkpoint
                state.epoch_tally = EpochTally()
            while state.next_batch < len(plan):
                group = plan[state.next_batch : state.next_batch + self.settings.accum_grad]
                step = self.train_step(group, epoch)
                state.next_batch += len(group)
                state.epoch_tally.add_step(step.tally.loss, step.tally.acc)
                self.window.add(step.tally)
                if state.step % max(1, cfg.log_every_steps) == 0:
                    self.log_step(step, epoch, len(plan))
                reached_max = cfg.max_steps > 0 and state.step >= cfg.max_steps
                if reached_max or (cfg.save_every_steps > 0 and state.step % cfg.save_every_steps == 0):
                    self.write_checkpoint("step", epoch)
                if reached_max:
                    return self._result(stopped_early=False)
            self.end_epoch(epoch)
            if state.best.patience_spent(cfg.early_stop_patience):
                return self._result(stopped_early=True)
        return self._result(stopped_early=False)

    def train_step(self, group: Sequence[Sequence[int]], epoch: int) -> StepResult:
        """Forward and backward over one accumulation ``group`` of batches (lists of utterance indices),
        then one optimiser step."""
        info = self.info
        tally = GroupTally()
        bad_utts: list[str] = []
        for j, indices in enumerate(group):
            batch = batch_to_device(self.train_set.batch(indices), info.device)
            sync = j == len(group) - 1 or not info.distributed
            with contextlib.nullcontext() if sync else self.net.no_sync():  # type: ignore[operator]  # sync is False only when distributed, and then net is a DistributedDataParallel (has no_sync)
                with autocast(info.device, self.autocast_dtype):
                    loss, acc = loss_and_acc(self.net(batch))
                self.scaler.scale(loss.float() / len(group)).backward()
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                bad_utts.extend(batch["utts"])
            tally.add_batch(batch, loss_value, None if acc is None else float(acc.detach()))
        tally = tally.reduced(info)
        if tally.nonfinite > 0:
            culprits = [u for utts in ddp.gather_objects(bad_utts, info) for u in utts]
            raise TrainingDiverged(
                f"train: loss is not finite at step {self.state.step + 1} (epoch {epoch}, batch "
                f"{self.state.next_batch}) on utterances {', '.join(culprits[:8])}; last good checkpoint: "
                f"{self.last_saved}; lower train.lr or use precision fp32"
            )
        grad_norm, lr = self._optimizer_step()
        return StepResult(tally, grad_norm, lr)

    def _optimizer_step(self) -> tuple[float, float]:
        """Unscale, clip, step (skipped on a non-finite norm), zero; returns (pre-clip grad norm, lr)."""
        settings, state = self.settings, self.state
        self.scaler.unscale_(self.optimizer)
        max_norm = settings.grad_clip if settings.grad_clip > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        lr = set_lr(self.optimizer, settings.lr, settings.schedule, state.step)
        if math.isfinite(grad_norm):
            self.scaler.step(self.optimizer)
        else:
            state.skipped_steps += 1
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        return grad_norm, lr

    def log_step(self, step: StepResult, epoch: int, epoch_batches: int) -> None:
        """The step metrics since the last logged step (rank 0)."""
        if not self.info.is_main:
            return
        metrics = {
            "train/loss": step.tally.loss,
            "train/lr": step.lr,
            "train/grad_norm": step.grad_norm,
            "train/epoch": epoch + self.state.next_batch / max(1, epoch_batches),
            "train/skipped_steps": float(self.state.skipped_steps),
            **self.window.rates(),
        }
        if step.tally.acc is not None:
            metrics["train/acc"] = step.tally.acc
        if self.info.device.type == "cuda":
            metrics["perf/gpu_mem_max_gib"] = torch.cuda.max_memory_allocated(self.info.device) / 2**30
            torch.cuda.reset_peak_memory_stats(self.info.device)
        self._on_rank0(self.callbacks.log_metrics, metrics, self.state.step)
        self.window = Throughput()

    # ------------------------------------------------------------------------------------------ epoch end

    def end_epoch(self, epoch: int) -> EpochResult:
        """Validate, probe, judge the epoch (:class:`~cosyml.train.state.BestSoFar`), checkpoint, tell rank 0."""
        state = self.state
        cv = evaluate(self.model, self.cv_set, self.info, self.autocast_dtype) if self.cv_set is not None else CvTally()
        probe = self.run_probe(epoch)
        is_best = state.best.judge(cv.loss, probe, self.cfg.early_stop_on, self.cfg.early_stop_min_delta)
        trained, state.epoch_tally = state.epoch_tally or EpochTally(), None
        state.next_epoch, state.next_batch = epoch + 1, 0
        record = self.write_checkpoint("epoch", epoch, cv, is_best, probe)
        result = EpochResult(
            epoch=epoch,
            step=state.step,
            train_loss=trained.loss,
            train_acc=trained.acc,
            cv_loss=cv.loss,
            cv_acc=cv.acc,
            cv_utts=int(cv.utts),
            checkpoint=record.path or None,
            is_best=is_best,
            probe=probe,
        )
        self.history.append(result)
        self._on_rank0(self.callbacks.epoch_ended, result)
        return result

    def run_probe(self, epoch: int) -> Scores | None:
        """Rank 0's probe scores of the model after ``epoch``, on every rank (None: not due or nothing scored).

        Whether a broadcast happens depends only on the config (the same on every rank), never on rank 0's
        callback, so the ranks always meet in it.
        """
        if not probe_due(self.cfg, epoch):
            return None
        scores = self._on_rank0(self.callbacks.probe, epoch, self.model)
        return ddp.broadcast_object(scores, self.info)

    # ------------------------------------------------------------------------------------------ checkpoints

    def write_checkpoint(
        self,
        kind: str,
        epoch: int,
        cv: CvTally | None = None,
        is_best: bool = False,
        probe: Scores | None = None,
    ) -> CheckpointInfo:
        """Write ``epoch_<epoch>`` or ``step_<step>`` at the run's current position (a collective: every rank
        calls it; rank 0 writes, applies retention and calls ``checkpoint_written``)."""
        state = self.state
        rngs = ddp.gather_objects(capture_rng(), self.info)
        record = CheckpointInfo(
            name=f"epoch_{epoch}" if kind == "epoch" else f"step_{state.step}",
            kind=kind,
            epoch=epoch,
            step=state.step,
            next_epoch=state.next_epoch,
            next_batch=state.next_batch,
            config_hash=self.config_hash,
            cv_loss=cv.loss if cv else None,
            cv_acc=cv.acc if cv else None,
            probe=probe,
        )
        if self.info.is_main:
            with rank0_block():
                payload = {
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scaler": self.scaler.state_dict(),
                    "rng": rngs,
                    "extra": state.extra(state.epoch_tally if kind == "step" else None),
                }
                save_checkpoint(self.checkpoint_dir, record, payload)
                apply_retention(self.checkpoint_dir, self.cfg.keep_last, self.cfg.keep_best)
                self.callbacks.checkpoint_written(record, is_best)
        ddp.barrier(self.info)
        self.last_saved = record.name
        return record

    # ------------------------------------------------------------------------------------------ helpers

    def _on_rank0(self, callback: Any, *args: Any) -> Any:
        """``callback(*args)`` on rank 0 inside the rank-0 block; None elsewhere."""
        if not self.info.is_main:
            return None
        with rank0_block():
            return callback(*args)

    def _result(self, stopped_early: bool) -> TrainResult:
        return TrainResult(self.state.step, self.state.next_epoch, stopped_early, self.checkpoint_dir, self.history)


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
    callbacks: Callbacks | None = None,
) -> TrainResult:
    """Set up a :class:`TrainingRecipe`, resume it (``resume``: "auto", a checkpoint path or ``None``; see
    :meth:`TrainingRecipe.resume`) and train."""
    recipe = TrainingRecipe(
        model, train_set, cv_set, cfg, checkpoint_dir, model_train_conf=model_train_conf, dist=dist, callbacks=callbacks
    )
    recipe.resume(resume)
    return recipe.train()
