"""Serving memory and latency: RSS of a real ``mlflow models serve`` over N requests, and p50 latency
under C concurrent clients, on a registered tiny-kit voice.

    python bench/serve.py --requests 200 --clients 4 --workers 1
    python bench/serve.py --requests 200 --clients 8 --workers 4   # MLFLOW_MODELS_WORKERS / --workers

What it does (everything real, nothing mocked): builds the tiny kit under ``--work``, registers its base
model as a voice in a sqlite MLflow store there (``cosyml.registry.register_candidates``), starts
``mlflow models serve -m models:/cosyml-bench/1 --env-manager local -w W``, then sends ``--requests``
requests from ``--clients`` threads: every other one zero-shot with the same prompt wav (base64; the
server writes it to a new temporary file per request, as a client sending its own prompt causes) and
the others sft. ``--max-tokens`` caps speech tokens per request so one request takes well under a second
on a free core. The RSS of the whole server process tree (``/proc``: the mlflow CLI, uvicorn and its
workers) is sampled after every ``--every`` requests and printed as a table with request latencies.
Kit weights are random: this measures memory and plumbing, never voice quality.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SPEAKER = "bench"


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants, MB (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def register_voice(work: Path) -> str:
    """Build the kit and register its base model as version 1 of ``cosyml-bench``; returns the tracking URI."""
    from cosyml.config import RegistryConfig
    from cosyml.kit.build import build_kit
    from cosyml.registry import read_candidates, register_candidates

    uri = f"sqlite:///{work / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    if (work / "registered").is_file():
        return uri
    model_dir = work / "model"
    if not (model_dir / "cosyvoice2.yaml").is_file():
        build_kit(model_dir, seed=0)
    speakers = work / "spk2embedding.pt"
    torch.save({SPEAKER: torch.randn(192, generator=torch.Generator().manual_seed(1)).tolist()}, speakers)
    scores = {"cer": 0.1, "cer_ci": [0.05, 0.15], "ss": 0.5, "ss_ci": [0.4, 0.6], "n": 10, "missing": 0, "over_50": 0.0}
    candidates = work / "candidates.json"
    candidates.write_text(
        json.dumps(
            {
                "speaker": SPEAKER,
                "model_dir": str(model_dir),
                "candidates": [{"name": "base", "llm": "base", "flow": "base", "summary": scores, "base": True}],
            }
        ),
        encoding="utf-8",
    )
    register_candidates(read_candidates(candidates), RegistryConfig(speakers=str(speakers)))
    (work / "registered").write_text("1\n", encoding="utf-8")
    return uri


def post(url: str, payload: dict) -> tuple[float, str | None]:
    body = json.dumps(payload).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as resp:
        answer = json.loads(resp.read())
    return time.perf_counter() - start, answer["predictions"][0]["error"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "cosyml-bench-serve"))
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--port", type=int, default=5311)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    uri = register_voice(work)

    from cosyml.audio import write_wav

    t = np.arange(int(16000 * 3.0)) / 16000
    prompt = work / "prompt.wav"
    write_wav(
        prompt, (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32), 16000
    )
    prompt_b64 = base64.b64encode(prompt.read_bytes()).decode()
    mlflow_cli = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "COSYML_CACHE_DIR": str(work / "cache"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    cmd = [
        mlflow_cli,
        "models",
        "serve",
        "-m",
        f"models:/cosyml-{SPEAKER}/1",
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(args.port),
        "-w",
        str(args.workers),
    ]
    log = open(work / "serve.log", "w")  # noqa: SIM115 - the server's whole life
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{args.port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"server did not start; see {work / 'serve.log'}") from None
                time.sleep(1)

        def payload(i: int) -> dict:
            row = {"text": f"Request number {i} says hello.", "seed": i, "max_tokens": args.max_tokens}
            if i % 2 == 0:
                row.update(mode="zero_shot", prompt_wav=prompt_b64, prompt_text="A short prompt.")
            return {"dataframe_records": [row]}

        post(f"{url}/invocations", payload(0))  # warm-up: loads the model in every worker it reaches
        rows = [(0, tree_rss_mb(server.pid), float("nan"))]
        print(f"workers={args.workers} clients={args.clients} max_tokens={args.max_tokens}")
        print(f"{'requests':>9} {'rss_mb':>8} {'p50_s':>7}")
        print(f"{0:>9} {rows[0][1]:>8.0f} {'-':>7}")
        errors: list[str] = []
        lock = threading.Lock()
        done = 0
        with ThreadPoolExecutor(args.clients) as pool:
            for start in range(1, args.requests + 1, args.every):
                batch = range(start, min(start + args.every, args.requests + 1))
                results = list(pool.map(lambda i: post(f"{url}/invocations", payload(i)), batch))
                with lock:
                    done += len(results)
                    errors += [e for _, e in results if e]
                p50 = statistics.median(s for s, _ in results)
                rows.append((done, tree_rss_mb(server.pid), p50))
                print(f"{done:>9} {rows[-1][1]:>8.0f} {p50:>7.2f}", flush=True)
        growth = rows[-1][1] - rows[1][1]
        print(
            f"rss growth after the first {rows[1][0]} requests: {growth:+.0f} MB over {done - rows[1][0]} requests"
            f"; errors: {len(errors)}" + (f" (first: {errors[0]})" if errors else "")
        )
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        log.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
