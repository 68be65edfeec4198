"""Module speed: our LLM and flow vs upstream CosyVoice's on the same weights and the same batch.

Times, per side: one training step of the LLM and of the flow (forward + backward, no optimiser) and
the LLM's KV-cache decode (tokens/s). Upstream's modules are built from the same yaml (our
``write_model_yaml``) with upstream's classes, their state dicts are loaded into ours with
``strict=True``, and the entries alternate within each round so load changes hit both alike.
Reported: the median of ``--iters`` runs after ``--warmup`` runs, wall and process-CPU seconds.

    OMP_NUM_THREADS=2 /work/upstream/venv/bin/python bench/models.py --upstream /work/upstream/CosyVoice --size small
    python bench/models.py --size full --part flow          # ours alone (any venv with cosyml)

On CUDA both sides run under bf16 autocast with SDPA attention in the Qwen2 backbone. Upstream's KV-cache
decode is only *correct* under transformers 4.51.3; this bench uses the venv's transformers, which is
fine for speed (the same work per step), and prints which version it used.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cosyml.kit.model_yaml import OFFICIAL_QWEN_VOCAB, OFFICIAL_V2_DIMS, KitDims, qwen_config_dict, write_model_yaml
from cosyml.models.flow import build_flow
from cosyml.models.llm import build_llm
from cosyml.models.yaml_io import Tagged, read_model_yaml

# Upstream hard-codes an 896-wide empty instruct (v2 LLM) and a 512-wide flow encoder: keep those widths.
SMALL_DIMS = KitDims(
    llm_size=896, qwen_layers=2, qwen_heads=14, qwen_kv_heads=2, qwen_intermediate=1024,
    flow_size=512, flow_encoder_heads=8, flow_encoder_linear_units=1024, flow_encoder_blocks=2,
    estimator_channels=128, estimator_head_dim=64, estimator_n_blocks=1, estimator_mid_blocks=2, estimator_heads=4,
)  # fmt: skip
SIZES: dict[str, tuple[KitDims, int]] = {"small": (SMALL_DIMS, 8192), "full": (OFFICIAL_V2_DIMS, OFFICIAL_QWEN_VOCAB)}
# (batch, text tokens, speech tokens, decoded tokens) per (size, device type)
SHAPES = {("small", "cpu"): (4, 20, 100, 60), ("full", "cpu"): (2, 20, 100, 40),
          ("small", "cuda"): (16, 30, 250, 200), ("full", "cuda"): (16, 30, 250, 200)}  # fmt: skip


@dataclass
class Timing:
    """Per-run wall and process-CPU seconds of one bench entry."""

    wall: list[float]
    cpu: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.wall)


def model_yaml(size: str, folder: Path) -> tuple[dict[str, Any], Path, Any]:
    """Write the yaml of ``size``; return (parsed yaml, its path, the Qwen2Config both sides use)."""
    from transformers import Qwen2Config

    dims, vocab = SIZES[size]
    path = write_model_yaml(folder, dims)
    qwen = Qwen2Config(**qwen_config_dict(dims, vocab))
    qwen._attn_implementation = "sdpa"
    return read_model_yaml(path), path, qwen


def instantiate(node: Any) -> Any:
    """Build upstream objects from a parsed yaml node, as HyperPyYAML would (``!new:`` / ``!name:``)."""
    if isinstance(node, list):
        return [instantiate(v) for v in node]
    if isinstance(node, dict):
        return {k: instantiate(v) for k, v in node.items()}
    if not isinstance(node, Tagged):
        return node
    module, name = node.target.rsplit(".", 1)
    target = getattr(importlib.import_module(module), name)
    args = instantiate(node.args)
    if node.kind == "name":
        return functools.partial(target, **(args or {}))
    return target(*args) if isinstance(args, list) else target(**(args or {}))


class _FixedRandom:
    """Stands in for ``random`` in upstream modules: fixed draws, so both sides take the same branch."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value

    def randint(self, low: int, high: int) -> int:
        return high


def use_upstream(root: Path, qwen: Any) -> None:
    """Put upstream and Matcha-TTS on sys.path; make ``from_pretrained`` a constructor (no download)."""
    sys.path[:0] = [str(root), str(root.parent / "paimon" / "third_party" / "Matcha-TTS")]
    import cosyvoice.flow.flow as up_flow
    import cosyvoice.llm.llm as up_llm

    up_llm.Qwen2ForCausalLM.from_pretrained = staticmethod(lambda _path: up_llm.Qwen2ForCausalLM(qwen))
    up_llm.random = _FixedRandom(0.9)  # unistream for every utterance
    up_flow.random = _FixedRandom(0.9)  # not streaming; a prompt of int(0.3 x frames) for every utterance


def time_interleaved(runs: dict[str, Callable[[], Any]], warmup: int, iters: int, cuda: bool) -> dict[str, Timing]:
    """Run each entry ``warmup`` times, then ``iters`` rounds in which every entry runs once (the order
    flips every round, so neither side always runs right after the other)."""
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    out = {name: Timing([], []) for name in runs}
    for round_ in range(iters):
        for name, fn in list(runs.items())[:: -1 if round_ % 2 else 1]:
            if cuda:
                torch.cuda.synchronize()
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            if cuda:
                torch.cuda.synchronize()
            out[name].wall.append(time.perf_counter() - wall)
            out[name].cpu.append(time.process_time() - cpu)
    return out


def llm_batch(b: int, lt: int, ls: int, vocab: int, speech_vocab: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Padded LLM batch; utterance i is 2i text and 8i speech tokens shorter than the first."""
    text_len = torch.tensor([max(1, lt - 2 * i) for i in range(b)], dtype=torch.int32)
    speech_len = torch.tensor([max(1, ls - 8 * i) for i in range(b)], dtype=torch.int32)
    text = torch.randint(0, vocab, (b, lt), generator=g)
    speech = torch.randint(0, speech_vocab, (b, ls), generator=g)
    for i in range(b):
        text[i, text_len[i] :], speech[i, speech_len[i] :] = 0, 0
    return {"text_token": text, "text_token_len": text_len, "speech_token": speech, "speech_token_len": speech_len}


def flow_batch(b: int, ls: int, speech_vocab: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Padded flow batch: tokens (B, Ls), mel (B, 2 Ls, 80), x-vectors (B, 192)."""
    token_len = torch.tensor([max(1, ls - 8 * i) for i in range(b)], dtype=torch.int32)
    token = torch.randint(0, speech_vocab, (b, ls), generator=g)
    feat = torch.randn(b, 2 * ls, 80, generator=g) * 2.0 - 6.0
    for i in range(b):
        token[i, token_len[i] :], feat[i, 2 * token_len[i] :] = 0, 0.0
    return {"speech_token": token, "speech_token_len": token_len, "speech_feat": feat,
            "speech_feat_len": 2 * token_len, "embedding": torch.randn(b, 192, generator=g)}  # fmt: skip


def train_step(
    model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor], amp: contextlib.AbstractContextManager
) -> Callable[[], float]:
    def step() -> float:
        with amp:
            loss = loss_fn()
        loss.backward()
        model.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def bench_llm(
    args: argparse.Namespace, config: dict[str, Any], qwen: Any, device: torch.device, amp: Any
) -> list[tuple[str, Timing, float]]:
    """Rows (entry, timing, work units per run) for the LLM: train steps (utterances) and decode (tokens)."""
    b, lt, ls, n_decode = args.shape
    torch.manual_seed(0)
    ours = build_llm(config, qwen_config=qwen).to(device)
    upstream = None
    if args.upstream:
        upstream = instantiate(config["llm"]).to(device)
        state = upstream.state_dict()
    else:
        state = ours.state_dict()
    ours.load_state_dict(state, strict=True)
    s = ours.config.speech_token_size
    g = torch.Generator().manual_seed(1)
    batch = {k: v.to(device) for k, v in llm_batch(b, lt, ls, qwen.vocab_size, s, g).items()}
    text = torch.randint(0, qwen.vocab_size, (1, 10), generator=g).to(device)
    ratio = n_decode / text.shape[1]
    decoded: dict[str, int] = {}

    def decode_ours() -> None:
        with amp:
            decoded["ours"] = len(list(ours.inference(text[0], min_token_text_ratio=ratio, max_token_text_ratio=ratio)))

    runs: dict[str, Callable[[], Any]] = {}
    losses: dict[str, float] = {}
    ours.train()
    runs["llm train step: ours"] = lambda: losses.__setitem__(
        "ours", train_step(ours, lambda: ours(batch, mode="unistream").loss, amp)()
    )
    if upstream is not None:
        upstream.train()
        runs["llm train step: upstream"] = lambda: losses.__setitem__(
            "upstream", train_step(upstream, lambda: upstream(batch, device)["loss"], amp)()
        )
    timings = time_interleaved(runs, args.warmup, args.iters, device.type == "cuda")
    if upstream is not None:
        print(f"llm loss ours {losses['ours']:.5f} upstream {losses['upstream']:.5f} (same weights/batch, unistream)")

    runs = {"llm decode: ours": decode_ours}
    if upstream is not None:
        upstream.eval()
        empty = torch.zeros(1, 0, dtype=torch.long, device=device)

        def decode_upstream() -> None:
            zero = torch.zeros(1, dtype=torch.int32, device=device)
            with amp:
                tokens = upstream.inference(text, torch.tensor([text.shape[1]], dtype=torch.int32, device=device), empty,
                                            zero, empty, zero.clone(), torch.zeros(1, 0, device=device),
                                            max_token_text_ratio=ratio, min_token_text_ratio=ratio)  # fmt: skip
                decoded["upstream"] = len(list(tokens))

        runs["llm decode: upstream"] = decode_upstream
    ours.eval()
    with torch.no_grad():  # no stop id is ever sampled: every decode runs exactly n_decode steps
        for model in (ours, upstream):
            if model is not None:
                model.llm_decoder.bias[s : s + 3] = -1e4
    timings.update(time_interleaved(runs, args.warmup, args.iters, device.type == "cuda"))
    print(f"decoded tokens per run: {decoded}")
    rows = [(name, t, float(b)) for name, t in timings.items() if "train" in name]
    rows += [(name, t, float(decoded[name.split(": ")[1]])) for name, t in timings.items() if "decode" in name]
    return rows


def bench_flow(
    args: argparse.Namespace, config: dict[str, Any], device: torch.device, amp: Any
) -> list[tuple[str, Timing, float]]:
    """Rows for the flow training step (work unit: utterances)."""
    b, _, ls, _ = args.shape
    torch.manual_seed(0)
    ours = build_flow(config).to(device).train()
    runs: dict[str, Callable[[], Any]] = {}
    g = torch.Generator().manual_seed(2)
    batch = {k: v.to(device) for k, v in flow_batch(b, ls, config["flow"].get("vocab_size"), g).items()}
    prompt = [int(0.3 * n) for n in batch["speech_feat_len"].tolist()]  # upstream's draw under _FixedRandom(0.9)
    if args.upstream:
        upstream = instantiate(config["flow"]).to(device).train()
        ours.load_state_dict(upstream.state_dict(), strict=True)
        runs["flow train step: upstream"] = train_step(upstream, lambda: upstream(batch, device)["loss"], amp)
    runs["flow train step: ours"] = train_step(ours, lambda: ours(batch, streaming=False, prompt_frames=prompt), amp)
    timings = time_interleaved(runs, args.warmup, args.iters, device.type == "cuda")
    return [(name, t, float(b)) for name, t in sorted(timings.items(), key=lambda kv: "upstream" in kv[0])]


def print_table(rows: list[tuple[str, Timing, float]]) -> None:
    """One line per entry; ours lines also get ours/upstream time and the speed-up."""
    by_name = {name: t for name, t, _ in rows}
    print(
        f"{'entry':26s} {'median s':>9s} {'cpu s':>8s} {'units/s':>9s} {'ours/up':>8s} {'speed-up':>8s} {'ours/up cpu':>11s}"
    )
    for name, t, units in rows:
        line = f"{name:26s} {t.median:9.4f} {statistics.median(t.cpu):8.3f} {units / t.median:9.2f}"
        other = by_name.get(name.replace(": ours", ": upstream"))
        if name.endswith(": ours") and other is not None:
            cpu_ratio = statistics.median(t.cpu) / statistics.median(other.cpu)
            line += f" {t.median / other.median:8.3f} {other.median / t.median:7.2f}x {cpu_ratio:11.3f}"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", type=Path, default=None, help="upstream CosyVoice checkout (optional)")
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--part", choices=("llm", "flow", "all"), default="all")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--shape", type=int, nargs=4, default=None, metavar=("B", "LT", "LS", "DECODE"),
                        help="batch, text tokens, speech tokens, decoded tokens (default per size and device)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    args = parser.parse_args()
    cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    device = torch.device("cuda" if cuda else "cpu")
    torch.set_num_threads(args.threads)
    args.shape = args.shape or SHAPES[(args.size, device.type)]
    amp: Any = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    random.seed(0)
    import transformers

    where = torch.cuda.get_device_name(device) if cuda else f"CPU, {args.threads} thread(s)"
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {where}, size {args.size}, "
          f"shape (B, Lt, Ls, decode) {tuple(args.shape)}, {'bf16 autocast' if cuda else 'fp32'}, "
          f"median of {args.iters} after {args.warmup} warm-up, load avg {os.getloadavg()[0]:.2f}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        config, _, qwen = model_yaml(args.size, Path(tmp))
        if args.upstream:
            use_upstream(args.upstream.resolve(), qwen)
        rows: list[tuple[str, Timing, float]] = []
        if args.part in ("llm", "all"):
            rows += bench_llm(args, config, qwen, device, amp)
            gc.collect()
        if args.part in ("flow", "all"):
            rows += bench_flow(args, config, device, amp)
    print_table(rows)
    print(f"units: llm/flow train = utterances, decode = tokens; load avg at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
