"""Trainer throughput: our ``cosyml.train.loop.train`` on shards of the toy corpus, and upstream's trainer.

Builds shards from ``examples/toy_speaker`` with the CLI (``cosyml kit / prepare / extract / shards``) in a
work folder (or reuses ``--shards``), then trains a random-weight LLM or flow of ``--size`` (our
``bench/models.py`` dims; ``full`` = the official 0.5B LLM / full flow) for ``--warmup-steps + --steps``
optimiser steps and prints samples/s, speech tokens/s (LLM) or mel frames/s (flow) over the timed steps.
A step is timed from its first forward to the end of its optimiser update (epoch-end checkpoints excluded).
On CUDA it also prints MFU against a bf16 matmul peak measured in the same run (model FLOPs counted with
``FlopCounterMode`` on one batch). Run it in the project venv:

    OMP_NUM_THREADS=2 python bench/train.py --size small --part all

Upstream's ``cosyvoice/bin/train.py`` (``--upstream PATH``) needs CUDA + NCCL (and deepspeed importable);
when those are present it runs on the same shards, yaml, initial weights, batch budget and accumulation,
and the first steps' losses are printed side by side. Otherwise the script says why it is skipped.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.models import SIZES, model_yaml
from cosyml.features.mel import MelConfig
from cosyml.models.flow import build_flow
from cosyml.models.llm import build_llm
from cosyml.models.modeldir import ModelDir
from cosyml.text.tokenizer import TextTokenizer
from cosyml.train.batching import UtteranceSet, batch_to_device, default_featurizer
from cosyml.train.callbacks import TrainCallbacks
from cosyml.train.config import TrainConfig, TrainDataConfig
from cosyml.train.ddp import DistInfo
from cosyml.train.loop import loss_and_acc, train

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class StepLog:
    """What the bench saw of our trainer: per step, its seconds and counts and loss."""

    seconds: list[float] = field(default_factory=list)
    counts: list[tuple[float, float, float]] = field(default_factory=list)  # utts, speech tokens, mel frames
    losses: list[float] = field(default_factory=list)
    batches_per_epoch: int = 0
    vocab_size: int = 0  # text rows of the LLM (upstream's backbone must match)
    _start: float | None = None
    _pending: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])


class Counted(torch.nn.Module):
    """Passes batches to ``model`` and notes the step start and the work in each batch."""

    def __init__(self, model: torch.nn.Module, log: StepLog) -> None:
        super().__init__()
        self.model, self.log = model, log

    def forward(self, batch: dict[str, Any]) -> Any:
        if self.log._start is None:
            self.log._start = time.perf_counter()
        counts = (
            len(batch["utts"]),
            float(batch["speech_token_len"].sum()),
            float(batch.get("speech_feat_len", torch.zeros(1)).sum()),
        )
        self.log._pending = [a + b for a, b in zip(self.log._pending, counts, strict=True)]
        return self.model(batch)


def build_shards(work: Path) -> Path:
    """Kit, prepare, extract and shards of the toy corpus under ``work`` (MLflow runs land there too)."""
    steps = [
        ["kit", str(work / "kit")],
        ["prepare", "--input", str(ROOT / "examples" / "toy_speaker"), "--output", str(work / "prepared"), "--speaker", "toy",
         "--whisper", str(work / "kit" / "whisper.pt")],
        ["extract", "--data", str(work / "prepared"), "--model-dir", str(work / "kit"), "--output", str(work / "features")],
        ["shards", "--data", str(work / "prepared"), "--features", str(work / "features"), "--output", str(work / "shards"), "--absolute-paths"],
    ]  # fmt: skip
    for argv in steps:
        print("$ cosyml", " ".join(argv), flush=True)
        params = [] if argv[0] == "kit" else ["--params", str(ROOT / "params.yaml")]
        subprocess.run([sys.executable, "-m", "cosyml", *argv, *params], cwd=work, check=True)
    return work / "shards"


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a large square matmul on ``device`` (the best of a few runs)."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = math.inf
    for _ in range(10 if device.type == "cuda" else 3):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def flops_per_unit(model: torch.nn.Module, data: UtteranceSet, device: torch.device, part: str, amp: Any) -> float:
    """Forward+backward FLOPs of the first planned batch per speech token (LLM) or mel frame (flow)."""
    batch = batch_to_device(data.batch(data.plan(0, 0)[0]), device)
    with FlopCounterMode(display=False) as counter:
        with amp:
            loss, _ = loss_and_acc(model(batch))
        loss.backward()
    model.zero_grad(set_to_none=True)
    units = batch["speech_token_len"].sum() if part == "llm" else batch["speech_feat_len"].sum()
    return counter.get_total_flops() / float(units)


def run_ours(part: str, args: argparse.Namespace, shards: Path, kit: Path, device: torch.device) -> StepLog:
    md = ModelDir(kit)
    tokenizer = TextTokenizer(md.qwen_dir, md.hparams.tokenizer_version)
    featurizer = default_featurizer(tokenizer.encode, MelConfig.from_model_config(md.config), with_mel=part == "flow")
    data_cfg = TrainDataConfig(max_frames_in_batch=args.max_frames)
    train_set = UtteranceSet.load(shards / "train" / "data.list", featurizer, data_cfg)
    with tempfile.TemporaryDirectory() as tmp:
        config, _, qwen = model_yaml(args.size, Path(tmp))
    qwen.vocab_size = max(qwen.vocab_size, len(tokenizer))
    torch.manual_seed(0)
    model = build_llm(config, qwen_config=qwen) if part == "llm" else build_flow(config)
    torch.save(model.state_dict(), args.work / f"init_{part}.pt")  # upstream starts from the same weights
    model.to(device)
    cfg = TrainConfig(lr=1e-5, accum_grad=args.accum, max_steps=args.warmup_steps + args.steps, max_epochs=10_000,
                      log_every_steps=1, keep_last=1, keep_best=0, sample_every_epochs=0, data=data_cfg)  # fmt: skip
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )
    per_unit = flops_per_unit(model, train_set, device, part, amp) if device.type == "cuda" or args.flops else 0.0
    log = StepLog(batches_per_epoch=len(train_set.plan(cfg.seed, 0)), vocab_size=qwen.vocab_size)

    def on_log(metrics: dict[str, float], step: int) -> None:
        if "train/loss" not in metrics or log._start is None:
            return
        log.seconds.append(time.perf_counter() - log._start)
        log.counts.append((log._pending[0], log._pending[1], log._pending[2]))
        log.losses.append(metrics["train/loss"])
        log._start, log._pending = None, [0.0, 0.0, 0.0]

    print(f"[{part}] {len(train_set)} utterances, {log.batches_per_epoch} batches/epoch, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as ckpt:
        dist = DistInfo(device=device)
        train(
            Counted(model, log),
            train_set,
            None,
            cfg,
            ckpt,
            dist=dist,
            resume=None,
            callbacks=TrainCallbacks(on_log=on_log),
        )
    timed = slice(args.warmup_steps, None)
    secs, counts = sum(log.seconds[timed]), [sum(c[i] for c in log.counts[timed]) for i in range(3)]
    line = f"[{part}] ours: {len(log.seconds[timed])} timed steps, {secs / max(1, len(log.seconds[timed])):.3f} s/step, {counts[0] / secs:.2f} samples/s"
    line += f", {counts[1] / secs:.1f} speech tokens/s" if part == "llm" else f", {counts[2] / secs:.1f} mel frames/s"
    if per_unit:
        achieved = per_unit * counts[1 if part == "llm" else 2] / secs
        peak = matmul_peak(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
        line += f", {achieved / 1e9:.1f} GFLOP/s, MFU {achieved / peak:.1%} of a measured {peak / 1e9:.1f} GFLOP/s matmul peak"
    print(line, flush=True)
    return log


def upstream_blocker(args: argparse.Namespace, device: torch.device) -> str | None:
    """Why upstream's trainer cannot run here, or None."""
    if args.upstream is None:
        return "no --upstream checkout given"
    if device.type != "cuda":
        return "upstream's train.py initialises NCCL and moves the model with .cuda() (it asserts a GPU); this run is on the CPU"
    probe = subprocess.run(
        [args.upstream_python, "-c", "import deepspeed, hyperpyyaml, tensorboard"], capture_output=True, text=True
    )
    if probe.returncode:
        return f"{args.upstream_python} cannot import upstream's trainer dependencies: {probe.stderr.strip().splitlines()[-1]}"
    return None


def run_upstream(
    part: str, args: argparse.Namespace, shards: Path, kit: Path, ours: StepLog
) -> tuple[float, list[float]]:
    """Upstream's trainer on the same shards; returns (seconds per optimiser step after warm-up, step losses)."""
    from cosyml.kit.model_yaml import write_qwen_backbone

    dims, _ = SIZES[args.size]
    out = args.work / f"upstream_{part}"
    text = (args.work / "model.yaml").read_text()
    text = text.replace("max_frames_in_batch: 2000", f"max_frames_in_batch: {args.max_frames}")
    text = re.sub(r"accum_grad: 2", f"accum_grad: {args.accum}", text, count=1)
    text = re.sub(r"log_interval: 100", "log_interval: 1", text, count=1)
    text = text.replace("use_spk_embedding: False", "use_spk_embedding: True")  # SFT, as ours
    epochs = math.ceil((args.warmup_steps + args.steps) * args.accum / max(1, ours.batches_per_epoch))
    text = re.sub(r"max_epoch: 200", f"max_epoch: {epochs}", text, count=1)
    (out / "qwen").mkdir(parents=True, exist_ok=True)
    yaml = out / "train.yaml"
    yaml.write_text(text)
    qwen_dir = write_qwen_backbone(out / "qwen", vocab_size=ours.vocab_size, dims=dims)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        if (ModelDir(kit).qwen_dir / name).is_file():
            (qwen_dir / name).write_bytes((ModelDir(kit).qwen_dir / name).read_bytes())
    env = {**os.environ, "PYTHONPATH": f"{args.upstream}:{args.upstream.parent / 'paimon/third_party/Matcha-TTS'}"}
    cmd = [args.upstream_python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
           str(args.upstream / "cosyvoice/bin/train.py"), "--train_engine", "torch_ddp", "--model", part,
           "--config", str(yaml), "--train_data", str(shards / "train/data.list"), "--cv_data", str(shards / "dev/data.list"),
           "--qwen_pretrain_path", str(qwen_dir), "--onnx_path", str(kit), "--checkpoint", str(args.work / f"init_{part}.pt"),
           "--model_dir", str(out / "ckpt"), "--tensorboard_dir", str(out / "tb"), "--num_workers", "2", "--pin_memory", "--use_amp"]  # fmt: skip
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.upstream_timeout)
    (out / "train.log").write_text(proc.stdout + proc.stderr)
    pattern = re.compile(r"^(\S+ \S+),(\d+) DEBUG TRAIN Batch \d+/(\d+) loss ([\d.]+)", re.M)
    stamps, losses = [], []
    for m in pattern.finditer(proc.stdout + proc.stderr):
        if int(m.group(3)) % args.accum == 0:  # the batch that ends an optimiser step
            stamps.append(time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000)
            losses.append(float(m.group(4)) * args.accum)  # upstream logs the loss divided by accum_grad
    if len(stamps) <= args.warmup_steps + 1:
        raise RuntimeError(
            f"upstream trainer logged {len(stamps)} steps (rc {proc.returncode}); see {out / 'train.log'}"
        )
    timed = stamps[args.warmup_steps :]
    return (timed[-1] - timed[0]) / (len(timed) - 1), losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--part", choices=("llm", "flow", "all"), default="all")
    parser.add_argument("--shards", type=Path, default=None, help="reuse shards (with the kit in <shards>/../kit)")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--steps", type=int, default=4, help="timed optimiser steps")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--accum", type=int, default=2, help="batches per optimiser step (upstream SFT: 2)")
    parser.add_argument("--max-frames", type=int, default=2000, help="padded mel frames per batch (upstream: 2000)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--flops", action="store_true", help="also count FLOPs (and CPU MFU) on the CPU")
    parser.add_argument("--upstream", type=Path, default=None, help="upstream CosyVoice checkout (runs on CUDA only)")
    parser.add_argument("--upstream-python", default="/work/upstream/venv/bin/python")
    parser.add_argument("--upstream-timeout", type=int, default=3600)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    device = torch.device("cuda" if cuda else "cpu")
    where = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"torch {torch.__version__}, {where}, size {args.size}, max_frames_in_batch {args.max_frames}, "
          f"accum_grad {args.accum}, {args.warmup_steps} warm-up + {args.steps} timed steps, load avg {os.getloadavg()[0]:.2f}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        args.work = (args.work or Path(tmp)).resolve()
        args.work.mkdir(parents=True, exist_ok=True)
        shards = args.shards.resolve() if args.shards else build_shards(args.work)
        kit = shards.parent / "kit"
        model_yaml(args.size, args.work)  # the yaml upstream's trainer reads (renamed below)
        (args.work / "cosyvoice2.yaml").rename(args.work / "model.yaml")
        blocker = upstream_blocker(args, device)
        for part in ("llm", "flow") if args.part == "all" else (args.part,):
            ours = run_ours(part, args, shards, kit, device)
            if blocker:
                print(f"[{part}] upstream: not run: {blocker}")
                continue
            up_step, up_losses = run_upstream(part, args, shards, kit, ours)
            ours_step = sum(ours.seconds[args.warmup_steps :]) / max(1, len(ours.seconds[args.warmup_steps :]))
            print(
                f"[{part}] upstream: {up_step:.3f} s/step; ours/upstream step time {ours_step / up_step:.3f} (speed-up {up_step / ours_step:.2f}x)"
            )
            print(f"[{part}] loss per step (ours | upstream):")
            for i in range(min(len(ours.losses), len(up_losses))):
                print(f"  {i + 1:4d} {ours.losses[i]:10.4f} | {up_losses[i]:10.4f}")
    print(f"load avg at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
