"""What the per-epoch probe costs: the demo's ``cosyml train`` with and without ``train.probe_every_epochs``.

Builds the demo's shards of ``examples/toy_speaker`` with the tiny kit (``bench/train.py``'s builder, about a
minute on the CPU; ``--work`` reuses a folder), then runs ``cosyml train <part>`` for ``--epochs`` epochs
with the repo's ``params.yaml`` (the demo's train settings), once without the probe and once with it every
epoch, alternating the order over ``--rounds`` so machine load hits both sides alike. Prints the wall seconds
of each run, the probe's own seconds per epoch (from the checkpoint records) and the ratio of the two
sides' medians: the goal is at most 1.10 on the CPU. Numbers come from random weights (speed only).

    OMP_NUM_THREADS=2 python bench/probe.py --part llm --epochs 2 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.train import build_shards
from cosyml.train.checkpoint import list_checkpoints

ROOT = Path(__file__).resolve().parents[1]


def train_once(
    work: Path, part: str, epochs: int, probe: bool, tag: str, extra: list[str]
) -> tuple[float, list[float]]:
    """Wall seconds of one ``cosyml train`` (fresh run folder) and the probe's seconds per epoch."""
    out = work / "runs" / tag / part
    settings = [
        "--set", f"train.max_epochs={epochs}",
        "--set", f"train.probe_every_epochs={1 if probe else 0}",
        "--set", "train.device=cpu",
        "--set", f"model_dir={work / 'kit'}",
        "--set", f"prepare.whisper_model={work / 'kit' / 'whisper.pt'}",
        *extra,
    ]  # fmt: skip
    argv = [sys.executable, "-m", "cosyml", "train", part, "--data", str(work / "shards"), "--output", str(out)]
    argv += ["--resume", "none", "--params", str(ROOT / "params.yaml"), *settings]
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=work, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"cosyml train {part} failed:\n{done.stderr[-3000:]}")
    probes = [
        float(i.probe["seconds"]) for i in list_checkpoints(out / "checkpoints") if i.probe and "seconds" in i.probe
    ]
    for line in done.stderr.splitlines():
        if "probe epoch" in line or "skipped" in line:
            print("   ", line.strip())
    return seconds, probes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("llm", "flow"), default="llm")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="off/on pairs, order alternated")
    parser.add_argument("--work", default=None, help="work folder to build in or reuse (default: a temp folder)")
    parser.add_argument("--set", action="append", default=[], help="extra params overrides (section.key=value)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="cosyml-bench-probe-"))
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "shards" / "train" / "data.list").is_file():
        build_shards(work)
    extra = [x for s in args.set for x in ("--set", s)]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"probe cost: cosyml train {args.part}, {args.epochs} epochs, {args.rounds} round(s), load {load:.1f}")
    walls: dict[bool, list[float]] = {False: [], True: []}
    probe_seconds: list[float] = []
    for r in range(args.rounds):
        for probe in (False, True) if r % 2 == 0 else (True, False):
            seconds, probes = train_once(work, args.part, args.epochs, probe, f"r{r}_{'on' if probe else 'off'}", extra)
            walls[probe].append(seconds)
            probe_seconds += probes
            print(
                f"  round {r} probe {'on ' if probe else 'off'}: {seconds:7.1f} s"
                + (f"  probes {probes}" if probe else "")
            )
    off, on = statistics.median(walls[False]), statistics.median(walls[True])
    per_probe = statistics.median(probe_seconds) if probe_seconds else float("nan")
    per_epoch_off = off / args.epochs
    print(f"without probe: {off:.1f} s ({per_epoch_off:.1f} s/epoch incl. start-up)   with: {on:.1f} s")
    print(f"probe: {per_probe:.1f} s per epoch (median)   ratio with/without: {on / off:.3f} (goal <= 1.10)")


if __name__ == "__main__":
    main()
