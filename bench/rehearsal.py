"""Full-size dress rehearsal: the generated-project path on a random-weight model of the official size.

    source scripts/env.sh
    OMP_NUM_THREADS=2 python bench/rehearsal.py --work /tmp/rehearsal            # CPU, fewest steps
    python bench/rehearsal.py --work /tmp/rehearsal --version cosyvoice3 --steps 20 --utts 4   # on a GPU

Runs, each stage as its own process: ``cosyml kit --size full`` (skipped when the kit exists),
``cosyml init`` (speaker 派蒙, the toy corpus, the kit's Whisper), then ``dvc repro -s`` of every stage of
the generated ``dvc.yaml`` (prepare, extract, shards, train llm and flow for ``--steps`` optimiser steps,
average, assemble, evaluate with ``--utts`` utterances per subset, tune, promote = register + champion),
``cosyml synth`` in every mode, and one request to ``mlflow models serve`` of the champion. Prints per
stage: wall seconds, peak RSS of the stage's process tree (``wait4``), bytes added to the project and the
MLflow store. Then checks that every large artifact (the 2 GB LLM) is stored once in the registry's
artifact store, however many versions reference it. The only edits to the generated params are the
short-run ones listed in ``SHORT_RUN`` (and the user-facing ones a reader would make: none).

Random weights: the figures measure time and memory, never quality.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEAKER = "派蒙"
LARGE = 100 * 2**20  # artifacts above this size are checked for duplicates


@dataclass
class StageFigure:
    name: str
    wall_s: float
    peak_rss_gb: float
    written_mb: float
    ok: bool


def tree_bytes(*roots: Path) -> int:
    total = 0
    for root in roots:
        if root.is_file():
            total += root.stat().st_size
        elif root.is_dir():
            for dirpath, _, files in os.walk(root):
                for name in files:
                    path = Path(dirpath) / name
                    if not path.is_symlink():
                        total += path.stat().st_size
    return total


def run_stage(
    name: str, cmd: list[str], cwd: Path, env: dict[str, str], measured: list[Path], log: Path
) -> StageFigure:
    """Run ``cmd``; wall time, the peak RSS of its process tree (``wait4`` counts waited-for descendants)."""
    before = tree_bytes(*measured)
    start = time.perf_counter()
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    figure = StageFigure(
        name, wall, usage.ru_maxrss / 2**20, (tree_bytes(*measured) - before) / 2**20, proc.returncode == 0
    )
    status_text = "ok" if figure.ok else f"FAILED (exit {proc.returncode}; see {log})"
    print(
        f"{name:<16} {wall:>9.1f} s {figure.peak_rss_gb:>8.2f} GB {figure.written_mb:>10.1f} MB  {status_text}",
        flush=True,
    )
    return figure


def set_param(text: str, section: str, key: str, value: str) -> str:
    pattern = re.compile(rf"(^{section}:\n(?:  .*\n|\n)*?  {key}: )[^#\n]*?(  #)", re.M)
    text, n = pattern.subn(lambda m: m.group(1) + value + m.group(2), text, count=1)
    if n != 1:
        raise SystemExit(f"params.yaml: {section}.{key} not found")
    return text


def duplicate_artifacts(store: Path) -> tuple[int, list[list[str]]]:
    """(large files, groups of large files with the same bytes) in an MLflow artifact store."""
    by_hash: dict[str, list[str]] = {}
    count = 0
    for path in store.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_size > LARGE:
            count += 1
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
            by_hash.setdefault(digest.hexdigest(), []).append(str(path.relative_to(store)))
    return count, [paths for paths in by_hash.values() if len(paths) > 1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_one_request(project: Path, env: dict[str, str], log: Path, timeout_s: float) -> StageFigure:
    """Start ``cosyml serve`` (mlflow models serve of the champion), send one request, stop it."""
    port = free_port()
    start = time.perf_counter()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            ["cosyml", "serve", "--port", str(port)],
            cwd=project,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    body = json.dumps(
        {"dataframe_records": [{"text": "你好，我是派蒙。", "mode": "sft", "speaker": SPEAKER, "seed": 1.0}]}
    ).encode()
    ok, answer = False, ""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                answer = response.read().decode()[:200]
                ok = response.status == 200
            break
        except OSError:
            time.sleep(2)
    wall = time.perf_counter() - start
    rss = 0.0
    try:
        rss = sum(_rss_gb(pid) for pid in _tree(proc.pid))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    print(
        f"{'serve+request':<16} {wall:>9.1f} s {rss:>8.2f} GB {0.0:>10.1f} MB  {'ok' if ok else 'FAILED'} "
        f"{answer[:80]!r}",
        flush=True,
    )
    return StageFigure("serve+request", wall, rss, 0.0, ok)


def _tree(pid: int) -> list[int]:
    out = [pid]
    for child in Path("/proc").glob("[0-9]*"):
        try:
            fields = (child / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.extend(_tree(int(child.name)))
    return out


def _rss_gb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/cosyml-rehearsal"))
    parser.add_argument("--version", choices=("cosyvoice2", "cosyvoice3"), default="cosyvoice2")
    parser.add_argument(
        "--steps",
        type=int,
        default=0,
        help="optimiser steps per trained part; 0 = one whole epoch (averaging needs an epoch "
        "checkpoint: a run stopped by max_steps mid-epoch leaves only a step checkpoint)",
    )
    parser.add_argument("--utts", type=int, default=1, help="evaluated utterances per test subset")
    parser.add_argument("--subsets", default="[zero_shot/zh, zero_shot/en]", help="evaluate.subsets (YAML list)")
    parser.add_argument("--max-frames", type=int, default=2000, help="train.data.max_frames_in_batch")
    parser.add_argument("--synth-max-tokens", type=int, default=50, help="speech-token cap per utterance (CPU)")
    parser.add_argument("--serve-timeout", type=float, default=900.0)
    parser.add_argument("--keep", action="store_true", help="keep the project folder (default: delete at the end)")
    args = parser.parse_args()

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    kit, project, log = work / f"kit-{args.version}", work / "project", work / "rehearsal.log"
    log.write_text("")
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
        "PYTHONUNBUFFERED": "1",
    }
    env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    env.pop("MLFLOW_RUN_ID", None)
    shutil.rmtree(project, ignore_errors=True)
    clips = work / "clips"
    if not clips.is_dir():
        shutil.copytree(ROOT / "examples" / "toy_speaker", clips)

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"full-size rehearsal: {args.version}, {device}, {args.steps or 'one epoch of'} steps per part, {args.utts} utts per subset, "
        f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}; log: {log}"
    )
    print(f"{'stage':<16} {'wall':>11} {'peak RSS':>11} {'written':>13}")
    figures: list[StageFigure] = []
    measured = [project, work / "mlruns"]
    if not (kit / "llm.pt").is_file():
        figures.append(
            run_stage(
                "kit --size full",
                ["cosyml", "kit", str(kit), "--size", "full", "--version", args.version],
                work,
                env,
                [kit],
                log,
            )
        )
    figures.append(
        run_stage(
            "init",
            [
                "cosyml",
                "init",
                str(project),
                "--model-dir",
                str(kit),
                "--clips",
                str(clips),
                "--speaker",
                SPEAKER,
                "--whisper",
                str(kit / "whisper.pt"),
            ],
            work,
            env,
            measured,
            log,
        )
    )
    if not figures[-1].ok:
        return 1
    params = project / "params.yaml"
    text = params.read_text(encoding="utf-8")
    short_run = [  # SHORT_RUN: the only edits to the generated params
        ("train", "max_epochs", "1"),
        ("train", "max_steps", str(args.steps)),
        ("train", "average_num", "1"),
        ("train", "sample_every_epochs", "1"),
        ("train", "sample_max_tokens", str(args.synth_max_tokens)),
        ("evaluate", "max_utts", str(args.utts)),
        ("evaluate", "subsets", args.subsets),
        ("evaluate", "synth_max_tokens", str(args.synth_max_tokens)),
        ("evaluate", "report_max_utts", "1"),
        ("tune", "n_trials", "1"),
        ("tune", "max_utts", "1"),
    ]
    for section, key, value in short_run:
        text = set_param(text, section, key, value)
    text = re.sub(r"(\n    max_frames_in_batch: )\d+", rf"\g<1>{args.max_frames}", text)
    params.write_text(text, encoding="utf-8")
    for stage in (
        "prepare",
        "extract",
        "shards",
        "train_llm",
        "train_flow",
        "average@llm",
        "average@flow",
        "assemble",
        "evaluate",
        "tune",
        "promote",
    ):
        figures.append(run_stage(stage, ["dvc", "repro", "-s", stage], project, env, measured, log))
        if not figures[-1].ok:
            break
    else:
        synth = [
            "cosyml",
            "synth",
            "--model-dir",
            "models/sft",
            "--device",
            "auto",
            "--max-tokens",
            str(args.synth_max_tokens),
            "--seed",
            "1",
        ]
        prompt = sorted(clips.glob("*.wav"))[0]
        prompt_text = prompt.with_suffix(".lab").read_text(encoding="utf-8").strip()
        modes = {
            "sft": ["--speaker", SPEAKER, "--text", "你好，我是派蒙。"],
            "zero_shot": ["--prompt-wav", str(prompt), "--prompt-text", prompt_text, "--text", "你好，世界。"],
            "cross_lingual": ["--mode", "cross_lingual", "--prompt-wav", str(prompt), "--text", "Hello there."],
            "instruct": ["--instruct", "用开心的语气说这句话", "--speaker", SPEAKER, "--text", "今天天气很好。"],
        }
        for mode, extra in modes.items():
            figures.append(
                run_stage(f"synth {mode}", [*synth, *extra, "--out", f"synth-{mode}.wav"], project, env, measured, log)
            )
        figures.append(serve_one_request(project, env, log, args.serve_timeout))

    store = project / "mlruns"
    large, duplicates = duplicate_artifacts(store)
    print(
        f"artifact store {store}: {tree_bytes(store) / 2**30:.2f} GB, {large} files over {LARGE >> 20} MB, "
        f"{len(duplicates)} stored more than once" + (f": {duplicates}" if duplicates else "")
    )
    total = sum(f.wall_s for f in figures)
    print(
        f"total {total / 60:.1f} min, peak RSS {max(f.peak_rss_gb for f in figures):.2f} GB, "
        f"{sum(f.written_mb for f in figures) / 1024:.2f} GB written; failed: "
        f"{[f.name for f in figures if not f.ok] or 'none'}"
    )
    if not args.keep:
        shutil.rmtree(project, ignore_errors=True)
    return 0 if all(f.ok for f in figures) and not duplicates else 1


if __name__ == "__main__":
    sys.exit(main())
