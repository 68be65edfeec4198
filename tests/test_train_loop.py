"""The trainer: learning, the logged loss, exact resume, NaN stop, skipped steps, early stopping, DDP."""

from __future__ import annotations

import dataclasses
import math
import os
import random

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from _servers import free_port
from train_helpers import TinyLM, load_set, write_corpus

from cosyml.errors import ConfigError
from cosyml.train.batching import batch_to_device
from cosyml.train.callbacks import TrainCallbacks
from cosyml.train.checkpoint import list_checkpoints, load_checkpoint
from cosyml.train.config import TrainConfig
from cosyml.train.loop import TrainingDiverged, train
from cosyml.train.schedule import LRSchedule
from cosyml.train.state import BestSoFar, EpochTally, RunState

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    data_list = write_corpus(root, 14)
    return load_set(data_list, max_frames_in_batch=200), load_set(data_list, max_frames_in_batch=1000)


def config(**kw) -> TrainConfig:
    base = dict(lr=0.05, optim="adamw", accum_grad=2, max_epochs=3, log_every_steps=1, precision="fp32", seed=3)
    base.update(kw)
    return TrainConfig(**base)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_learns_and_logs(data, tmp_path):
    train_set, cv_set = data
    logs, epochs = [], []
    torch.manual_seed(0)
    model = TinyLM()
    result = train(
        model, train_set, cv_set, config(max_epochs=6), tmp_path / "ckpt",
        callbacks=TrainCallbacks(on_log=lambda m, s: logs.append((s, m)), on_epoch_end=epochs.append),
    )  # fmt: skip
    assert result.epochs_completed == 6 and len(epochs) == 6
    assert epochs[-1].cv_loss < epochs[0].cv_loss  # it learns
    assert epochs[0].cv_utts == len(cv_set)
    summary = logs[0][1]
    assert summary["data/train_utts"] == len(train_set)
    step_logs = [m for _, m in logs[1:]]
    assert {"train/loss", "train/acc", "train/lr", "train/grad_norm", "perf/utts_per_s"} <= set(step_logs[0])
    assert all(isinstance(m["train/grad_norm"], float) for m in step_logs)
    names = {i.name for i in list_checkpoints(tmp_path / "ckpt")}
    assert "epoch_5" in names and len(names) <= 2 + 5


def test_logged_loss_is_the_true_mean_not_divided_by_accum_grad(data, tmp_path):
    train_set, _ = data
    torch.manual_seed(0)
    model = TinyLM(dropout=0.0)
    cfg = config(lr=0.0, max_steps=1, max_epochs=1, accum_grad=2)
    first_two = train_set.plan(cfg.seed, 0)[:2]
    with torch.no_grad():
        losses = [float(model(batch_to_device(train_set.batch(b), torch.device("cpu")))["loss"]) for b in first_two]
    expected = sum(losses) / 2
    logs = []
    train(model, train_set, None, cfg, tmp_path, callbacks=TrainCallbacks(on_log=lambda m, s: logs.append(m)))
    assert logs[-1]["train/loss"] == pytest.approx(expected, rel=1e-6)


def test_resume_is_bit_identical(data, tmp_path):
    train_set, cv_set = data
    cfg = config(max_epochs=3, scheduler="cosine", warmup_steps=2)
    steps_per_epoch = -(-len(train_set.plan(cfg.seed, 0)) // 2)
    total = 2 * steps_per_epoch + 1  # crosses epoch boundaries
    interrupt = steps_per_epoch + 1  # mid-epoch

    torch.manual_seed(0)
    straight = TinyLM()
    train(straight, train_set, cv_set, dataclasses.replace(cfg, max_steps=total), tmp_path / "a", resume=None)

    torch.manual_seed(0)
    first = TinyLM()
    out = train(first, train_set, cv_set, dataclasses.replace(cfg, max_steps=interrupt), tmp_path / "b", resume=None)
    assert out.step == interrupt
    torch.manual_seed(123)  # a fresh process: different init and RNG; everything must come from the checkpoint
    second = TinyLM()
    out = train(second, train_set, cv_set, dataclasses.replace(cfg, max_steps=total), tmp_path / "b", resume="auto")
    assert out.step == total
    a, b = weights(straight), weights(second)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run differs from the uninterrupted one"


def _draw_randoms(*_args) -> None:
    """What a per-epoch sampler does to the global RNGs: load a model (random init) and seed its synthesis."""
    torch.randn(7)
    torch.manual_seed(1234)
    np.random.rand(3)
    random.random()


def test_callbacks_drawing_random_numbers_change_neither_training_nor_resume(data, tmp_path):
    """The flow's resume was inexact: its per-epoch sampler drew on the torch RNG after the checkpoint captured it."""
    train_set, cv_set = data
    greedy = TrainCallbacks(on_log=_draw_randoms, on_epoch_end=_draw_randoms, on_checkpoint=_draw_randoms)
    torch.manual_seed(0)
    plain = TinyLM()
    train(plain, train_set, cv_set, config(max_epochs=2), tmp_path / "plain", resume=None)

    torch.manual_seed(0)
    first = TinyLM()
    train(first, train_set, cv_set, config(max_epochs=1), tmp_path / "cb", resume=None, callbacks=greedy)
    torch.manual_seed(99)  # a new process
    resumed = TinyLM()
    train(resumed, train_set, cv_set, config(max_epochs=2), tmp_path / "cb", resume="auto", callbacks=greedy)
    a, b = weights(plain), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a), "callbacks moved the training RNG"


def test_a_collective_inside_a_rank0_only_block_fails_in_a_single_process():
    """Under torchrun such a collective desynchronises the ranks; here it must fail at once, not be a no-op."""
    from cosyml.train import ddp

    with pytest.raises(ddp.CollectiveInMainOnlyBlock), ddp.main_only():
        ddp.all_reduce_sum([1.0], ddp.DistInfo())
    assert ddp.all_reduce_sum([1.0], ddp.DistInfo()) == [1.0]


class _Logger:
    """A MetricLogger, as tracking's StageRun is one."""

    def __init__(self) -> None:
        self.logged: list[tuple[int | None, dict]] = []

    def log_metrics(self, metrics, step=None) -> None:
        self.logged.append((step, dict(metrics)))


def test_a_metric_logger_hears_what_on_log_hears(data, tmp_path):
    train_set, cv_set = data
    logger, heard = _Logger(), []
    callbacks = TrainCallbacks(logger=logger, on_log=lambda m, s: heard.append((s, dict(m))))
    train(TinyLM(), train_set, cv_set, config(max_epochs=1), tmp_path, callbacks=callbacks)
    assert [s for s, _ in logger.logged] == [s for s, _ in heard] and logger.logged[0][0] == 0
    assert "data/train_utts" in logger.logged[0][1] and "train/loss" in logger.logged[-1][1]


def test_checkpoint_from_another_config_is_refused(data, tmp_path):
    train_set, _ = data
    train(TinyLM(), train_set, None, config(max_steps=1), tmp_path, resume=None)
    with pytest.raises(ConfigError, match="another training config") as err:
        train(TinyLM(), train_set, None, config(max_steps=2, lr=0.01), tmp_path, resume="auto")
    assert "\n" not in str(err.value)


class NanAfter(TinyLM):
    def __init__(self, calls: int) -> None:
        super().__init__()
        self.calls, self.left = calls, calls

    def forward(self, batch):
        out = super().forward(batch)
        self.left -= 1
        if self.left < 0:
            out["loss"] = out["loss"] * float("nan")
        return out


def test_nan_loss_stops_with_step_and_utts_and_keeps_the_last_checkpoint(data, tmp_path):
    train_set, _ = data
    model = NanAfter(calls=4)  # steps 1-2 fine (2 batches each), step 3 NaN
    with pytest.raises(TrainingDiverged, match=r"step 3 .*utterances spk_\d{4}.*last good checkpoint: step_2") as err:
        train(model, train_set, None, config(save_every_steps=2), tmp_path, resume=None)
    assert "\n" not in str(err.value)
    assert load_checkpoint(tmp_path / "step_2.pt")["info"]["step"] == 2


class InfiniteGrad(TinyLM):
    def __init__(self) -> None:
        super().__init__()
        self.knob = torch.nn.Parameter(torch.zeros(()))

    def forward(self, batch):
        out = super().forward(batch)
        out["loss"] = out["loss"] + torch.sqrt(self.knob.abs())  # finite loss, NaN gradient at 0
        return out


def test_non_finite_grad_norm_skips_the_update(data, tmp_path):
    train_set, _ = data
    model = InfiniteGrad()
    before = weights(model)
    logs = []
    train(
        model,
        train_set,
        None,
        config(max_steps=3),
        tmp_path,
        callbacks=TrainCallbacks(on_log=lambda m, s: logs.append(m)),
    )
    assert logs[-1]["train/skipped_steps"] == 3.0
    after = weights(model)
    assert all(torch.equal(before[k], after[k]) for k in before if k != "seen")  # only the step counter moved


def test_early_stopping(data, tmp_path):
    train_set, cv_set = data
    result = train(
        TinyLM(dropout=0.0), train_set, cv_set, config(lr=0.0, max_epochs=5, early_stop_patience=2), tmp_path
    )
    assert result.stopped_early and result.epochs_completed == 3  # epoch 0 best, then 2 epochs without gain


def test_best_epochs_after_resume_are_the_uninterrupted_runs(data, tmp_path):
    """The one "is best" rule (BestSoFar, early_stop_min_delta included) travels in the checkpoint: a run
    resumed after epoch 3 calls exactly the epochs best that the uninterrupted run does."""
    train_set, cv_set = data
    cfg = config(max_epochs=6, early_stop_min_delta=0.15)

    def best_flags(out, *runs: tuple[int, int]) -> tuple[list[bool], list[float]]:
        flags: list[bool] = []
        cv: list[float] = []
        heard = TrainCallbacks(
            on_checkpoint=lambda record, is_best: flags.append(is_best) if record.kind == "epoch" else None,
            on_epoch_end=lambda result: cv.append(result.cv_loss),
        )
        for max_epochs, seed in runs:
            torch.manual_seed(seed)  # the resumed run: another process, everything from the checkpoint
            train(TinyLM(), train_set, cv_set, dataclasses.replace(cfg, max_epochs=max_epochs), out, callbacks=heard)
        return flags, cv

    straight, cv = best_flags(tmp_path / "a", (6, 0))
    resumed, _ = best_flags(tmp_path / "b", (4, 0), (6, 7))
    best, expected = math.inf, []
    for loss in cv:
        expected.append(loss < best - cfg.early_stop_min_delta)
        best = loss if expected[-1] else best
    assert straight == resumed == expected
    assert False in expected[4:], "the resumed epochs must include one that is not best for this test to bite"


def test_best_so_far_rule_and_its_checkpoint_round_trip():
    best = BestSoFar()
    judged = [best.judge(cv, None, "cv_loss", 0.1) for cv in (1.0, 0.95, 0.85, None, 0.8)]
    assert judged == [True, False, True, False, False] and best.best_cv == 0.85
    assert best.bad_epochs == 1 and best.patience_spent(1) and not best.patience_spent(2)  # the None epoch: unjudged
    assert not best.patience_spent(0)  # patience 0: never stop
    by_probe = BestSoFar()
    assert [by_probe.judge(5.0, p, "probe", 0.0) for p in ({"composite": 0.5}, None, {"composite": math.nan})] == [
        True,
        False,
        False,
    ]
    assert by_probe.bad_epochs == 0 and by_probe.best_cv == 5.0  # both bests kept whatever the rule
    state = RunState(step=7, next_epoch=2, next_batch=3, best=best, skipped_steps=1, epoch_tally=EpochTally(1.5, 2))
    saved = {"info": {"step": 7, "next_epoch": 2, "next_batch": 3}, "extra": state.extra(state.epoch_tally)}
    assert RunState.from_checkpoint(saved) == state
    old_format = {**saved, "extra": {**saved["extra"], "epoch_sums": [1.5, 2.0, 0.0, 0.0]}}  # before the names
    assert RunState.from_checkpoint(old_format) == state


def test_schedules():
    warm = LRSchedule("warmuplr", warmup_steps=4)
    assert warm.factor(3) == pytest.approx(1.0)  # peak at step w
    assert warm.factor(0) == pytest.approx(4**0.5 * 1 * 4**-1.5)
    assert warm.factor(15) == pytest.approx(4**0.5 * 16**-0.5)
    cos = LRSchedule("cosine", warmup_steps=2, decay_steps=12, min_lr_ratio=0.1)
    assert [cos.factor(s) for s in (0, 1, 2)] == pytest.approx([0.5, 1.0, 1.0])
    assert cos.factor(7) == pytest.approx(0.55) and cos.factor(12) == pytest.approx(0.1) == cos.factor(99)
    assert LRSchedule("linear", 0, 10).factor(5) == pytest.approx(0.5)
    assert LRSchedule().factor(1000) == 1.0
    with pytest.raises(ConfigError, match=r"train\.scheduler"):
        LRSchedule("noam")


def _ddp_worker(rank: int, world: int, port: int, data_list: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    from cosyml.train import ddp

    info = ddp.init_distributed(device="cpu")
    try:
        train_set = load_set(data_list, rank=rank, world_size=world, max_frames_in_batch=200)
        cv_set = load_set(data_list, rank=rank, world_size=world, max_frames_in_batch=1000)
        torch.manual_seed(0)  # same initial weights on both ranks (DDP also broadcasts rank 0's)
        model = TinyLM()
        result = train(model, train_set, cv_set, config(max_epochs=2), f"{out}/ckpt", dist=info)
        torch.save(
            {"weights": model.state_dict(), "steps": result.step, "cv": result.history[-1].cv_loss},
            f"{out}/rank{rank}.pt",
        )
    finally:
        ddp.shutdown()


def test_ddp_two_cpu_ranks_end_with_identical_weights(tmp_path):
    data_list = write_corpus(tmp_path / "corpus", 15)  # odd count: uneven shares, equalised batch counts
    # fork: the workers inherit the imported torch instead of paying for it again
    mp.start_processes(
        _ddp_worker, args=(2, free_port(), str(data_list), str(tmp_path)), nprocs=2, join=True, start_method="fork"
    )
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert r0["steps"] == r1["steps"] > 0 and r0["cv"] == r1["cv"]
    for key, value in r0["weights"].items():
        assert torch.equal(value, r1["weights"][key]), key
    assert {"epoch_0", "epoch_1"} <= {i.name for i in list_checkpoints(tmp_path / "ckpt")}


def test_the_real_qwen2lm_plugs_in_and_averages_with_its_tie(tmp_path):
    """The LLM engineer's Qwen2LM (LLMOutput, official keys, tied lm_head) trains, averages and reloads."""
    from transformers import Qwen2Config

    from cosyml.models.llm import LLMConfig, Qwen2LM
    from cosyml.train.average import average_checkpoints

    data_list = write_corpus(tmp_path / "corpus", 8)
    train_set, cv_set = load_set(data_list, max_frames_in_batch=300), load_set(data_list, max_frames_in_batch=1000)
    qwen = Qwen2Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=512, tie_word_embeddings=True,
    )  # fmt: skip
    llm = LLMConfig(llm_input_size=16, llm_output_size=16, speech_token_size=100)
    torch.manual_seed(0)
    result = train(Qwen2LM(llm, qwen), train_set, cv_set, config(lr=3e-3, max_epochs=3), tmp_path / "ckpt")
    assert result.history[-1].cv_loss < result.history[0].cv_loss and result.history[0].cv_acc is not None
    state = torch.load(average_checkpoints(tmp_path / "ckpt", tmp_path / "llm.pt", num=2).path, weights_only=True)
    assert state["llm.model.lm_head.weight"] is state["llm.model.model.embed_tokens.weight"]
    Qwen2LM(llm, qwen).load_state_dict(state, strict=True)


def test_bf16_autocast_the_gpu_default_runs_on_the_cpu_with_the_real_qwen2lm(tmp_path):
    """The CUDA default (``precision: auto`` = bf16 autocast, fp32 master weights) exercised on the CPU."""
    from transformers import Qwen2Config

    from cosyml.models.llm import LLMConfig, Qwen2LM

    data_list = write_corpus(tmp_path / "corpus", 8)
    train_set, cv_set = load_set(data_list, max_frames_in_batch=300), load_set(data_list, max_frames_in_batch=1000)
    qwen = Qwen2Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=512, tie_word_embeddings=True,
    )  # fmt: skip
    losses: dict[str, list[float]] = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = Qwen2LM(LLMConfig(llm_input_size=16, llm_output_size=16, speech_token_size=100), qwen)
        logs: list[dict] = []
        result = train(
            model,
            train_set,
            cv_set,
            config(lr=3e-3, max_epochs=2, precision=precision),
            tmp_path / precision,
            callbacks=TrainCallbacks(on_log=lambda metrics, step, logs=logs: logs.append(metrics)),
        )
        losses[precision] = [m["train/loss"] for m in logs if "train/loss" in m]
        assert result.step > 0 and all(math.isfinite(x) for x in losses[precision])
    # autocast really ran: same seed and data, bf16 matmuls give other (close) losses
    assert losses["bf16"] != losses["fp32"] and losses["bf16"][0] == pytest.approx(losses["fp32"][0], rel=0.05)
    assert all(v.dtype == torch.float32 for v in model.state_dict().values())  # master weights stay fp32
    saved = torch.load(list_checkpoints(tmp_path / "bf16")[-1].path, weights_only=True)["model"]
    assert all(v.dtype == torch.float32 for v in saved.values())
