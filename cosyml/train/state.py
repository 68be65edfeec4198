"""The training recipe's state, named: sums over ranks, where a run stands, the best epoch so far.

- :class:`GroupTally`, :class:`EpochTally`, :class:`CvTally`: sums added up over ranks in one
  ``all_reduce`` (a tally's fields, in order, are the reduced vector; nowhere else is it positional).
- :class:`StepResult`: what one optimiser step reports.
- :class:`Throughput`: what was processed since the last logged step (``perf/*`` rates).
- :class:`BestSoFar`: the one "is this epoch the best?" rule (CV loss or probe composite, with
  ``early_stop_min_delta``) and the early-stopping count. It drives early stopping, the ``is_best`` the
  checkpoint callback hears and so ``log_checkpoints: best``; a checkpoint keeps it, so a resumed run judges
  its epochs against the best before the interruption.
- :class:`RunState`: what a checkpoint restores (step, data position, :class:`BestSoFar`, skipped steps,
  the epoch's tally mid-epoch) and how it is stored (the checkpoint's ``info`` and ``extra``).
- :class:`EpochResult`, :class:`TrainResult`: what an epoch and a run produced.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Self

from cosyml.train import ddp
from cosyml.train.ddp import DistInfo


@dataclass
class Tally:
    """Sums added up over ranks in one ``all_reduce``: the fields, in order, are the reduced vector."""

    def vector(self) -> list[float]:
        return [float(getattr(self, f.name)) for f in fields(self)]

    def reduced(self, info: DistInfo) -> Self:
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

    def add_batch(self, batch: Mapping[str, Any], loss: float, acc: float | None) -> None:
        """Count one batch: its mean ``loss`` (NaN/inf counted as non-finite, summed as 0), ``acc``, and its
        utterances, speech tokens and mel frames (for throughput)."""
        if math.isfinite(loss):
            self.loss_sum += loss
        else:
            self.nonfinite += 1
        self.batches += 1
        if acc is not None:
            self.acc_sum += acc
            self.acc_batches += 1
        self.utts += float(len(batch["utts"]))
        self.speech_tokens += float(batch["speech_token_len"].sum()) if "speech_token_len" in batch else 0.0
        self.mel_frames += float(batch["speech_feat_len"].sum()) if "speech_feat_len" in batch else 0.0

    @property
    def loss(self) -> float:
        """The group's mean loss (the logged ``train/loss``)."""
        return self.loss_sum / self.batches

    @property
    def acc(self) -> float | None:
        return self.acc_sum / self.acc_batches if self.acc_batches else None


@dataclass
class EpochTally(Tally):
    """The epoch so far, per optimiser step (kept in step checkpoints: a resumed epoch reports its whole mean)."""

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

    @property
    def loss(self) -> float | None:
        return self.loss_sum / self.steps if self.steps else None

    @property
    def acc(self) -> float | None:
        return self.acc_sum / self.acc_steps if self.acc_steps else None


@dataclass
class CvTally(Tally):
    """Validation, weighted by utterances."""

    loss_sum: float = 0.0  # sum of batch loss x utterances
    acc_sum: float = 0.0  # sum of batch acc x utterances
    acc_utts: float = 0.0
    utts: float = 0.0

    @property
    def loss(self) -> float | None:
        return self.loss_sum / self.utts if self.utts else None

    @property
    def acc(self) -> float | None:
        return self.acc_sum / self.acc_utts if self.acc_utts else None


@dataclass(frozen=True)
class StepResult:
    """One optimiser step: its batches' tally summed over ranks, the pre-clip gradient norm, the lr used."""

    tally: GroupTally
    grad_norm: float  # total norm before clipping (inf/NaN: the update was skipped)
    lr: float


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
class BestSoFar:
    """The best epoch so far and the epochs since: early stopping and the "best" checkpoint follow it."""

    best_cv: float = math.inf  # lowest CV loss so far
    best_probe: float = -math.inf  # highest probe composite so far
    bad_epochs: int = 0  # judged epochs since the best one (early_stop_patience counts these)

    def judge(self, cv_loss: float | None, probe: Mapping[str, float] | None, on: str, min_delta: float) -> bool:
        """Record an epoch's CV loss and probe scores; is it the best epoch so far?

        ``on`` (``early_stop_on``) picks the rule: a CV loss below the best by more than ``min_delta``, or a
        probe composite above the best by more than it. An epoch the rule cannot judge (no CV set, no probe
        this epoch) neither resets nor counts towards the patience. Both bests are kept whatever the rule.
        """
        composite = probe.get("composite") if probe else None
        if composite is not None and not math.isfinite(composite):
            composite = None
        cv_better = probe_better = False
        if cv_loss is not None and cv_loss < self.best_cv - min_delta:
            self.best_cv, cv_better = cv_loss, True
        if composite is not None and composite > self.best_probe + min_delta:
            self.best_probe, probe_better = composite, True
        if on == "probe":
            is_best, judged = probe_better, composite is not None
        else:
            is_best, judged = cv_better, cv_loss is not None
        if is_best:
            self.bad_epochs = 0
        elif judged:
            self.bad_epochs += 1
        return is_best

    def patience_spent(self, patience: int) -> bool:
        """Stop early? (``patience`` 0: never)."""
        return patience > 0 and self.bad_epochs >= patience


@dataclass
class RunState:
    """Where a run stands: a fresh start, or what a checkpoint restored."""

    step: int = 0  # optimiser steps taken
    next_epoch: int = 0
    next_batch: int = 0  # batches of next_epoch already consumed
    best: BestSoFar = field(default_factory=BestSoFar)
    skipped_steps: int = 0  # optimiser steps skipped for a non-finite gradient norm
    epoch_tally: EpochTally | None = None  # the epoch so far, when the checkpoint was written mid-epoch

    def extra(self, epoch_tally: EpochTally | None = None) -> dict[str, Any]:
        """The checkpoint's ``extra``: the counters and, in a step checkpoint, the epoch so far."""
        out: dict[str, Any] = {**asdict(self.best), "skipped_steps": self.skipped_steps}
        if epoch_tally is not None:
            out["epoch_sums"] = asdict(epoch_tally)
        return out

    @classmethod
    def from_checkpoint(cls, state: Mapping[str, Any]) -> RunState:
        """The state a loaded checkpoint (:func:`cosyml.train.checkpoint.load_checkpoint`) holds."""
        info, extra = state["info"], state.get("extra", {})
        sums = extra.get("epoch_sums")
        if isinstance(sums, Mapping):
            tally: EpochTally | None = EpochTally(**sums)
        else:  # older checkpoints: the fields as a list, in order
            tally = EpochTally(*sums) if sums else None
        best = BestSoFar(
            float(extra.get("best_cv", math.inf)),
            float(extra.get("best_probe", -math.inf)),
            int(extra.get("bad_epochs", 0)),
        )
        return cls(
            step=int(info["step"]),
            next_epoch=int(info["next_epoch"]),
            next_batch=int(info["next_batch"]),
            best=best,
            skipped_steps=int(extra.get("skipped_steps", 0)),
            epoch_tally=tally,
        )


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
    probe: dict[str, float] | None = None  # the probe's scores for this epoch (None: no probe ran)


@dataclass
class TrainResult:
    step: int
    epochs_completed: int
    stopped_early: bool
    checkpoint_dir: Path
    history: list[EpochResult] = field(default_factory=list)
