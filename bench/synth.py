"""Synthesis speed: RTF of a ~10 s sft utterance, streaming first-chunk latency and batch throughput.

Ours (:class:`cosyml.synth.engine.SynthEngine`) and, when an upstream checkout is given, upstream's
``CosyVoice2.inference_sft`` on the same model directory (same random weights, same text, same
decode length), measured in one process with the same thread count. A kit model directory is built
first (cached under ``--work``): ``--size tiny`` (the test kit) or ``--size full`` (official CosyVoice2
sizes: 24-layer 896-wide Qwen2, 512-wide flow, 20.8 M HiFT; only the text vocabulary is the kit's).

    # ours alone (project venv)
    OMP_NUM_THREADS=1 python bench/synth.py --size tiny
    # ours vs upstream (upstream venv; our package is imported from this checkout)
    COSYVOICE_UPSTREAM=/work/upstream/CosyVoice OMP_NUM_THREADS=1 /work/upstream/venv/bin/python bench/synth.py

Random weights never emit eos on purpose, so both sides decode ``20 x text tokens`` speech tokens; the
text is picked so that is about 10 s of audio. Upstream's streaming loop polls every 0.1 s, which is
part of its latency. Kit numbers measure speed only, never quality.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import types
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cosyml.kit.build import DEFAULT_KIT_DIMS, build_kit
from cosyml.kit.model_yaml import OFFICIAL_V2_DIMS
from cosyml.synth.engine import SynthEngine
from cosyml.synth.request import SynthRequest

SPEAKER = "bench"
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "small", "birds"]


def _kit(size: str, work: Path) -> Path:
    root = work / f"synth-kit-{size}"
    if not (root / "hift.pt").is_file():
        # tiny: the kit's sizes with upstream's hard-coded 512-wide flow encoder, so upstream loads it too
        dims = DEFAULT_KIT_DIMS if size == "tiny" else replace(OFFICIAL_V2_DIMS)
        print(f"building the {size} kit in {root} ...", flush=True)
        build_kit(root, seed=0, dims=dims)
    if not (root / "spk2info.pt").is_file():
        torch.save(
            {SPEAKER: {"embedding": torch.randn(1, 192, generator=torch.Generator().manual_seed(0))}},
            root / "spk2info.pt",
        )
    return root


def _text_with_tokens(engine: SynthEngine, n: int, offset: int = 0) -> str:
    """Words (from ``offset``) whose normalised text encodes to about ``n`` text tokens (the closest count)."""
    best, best_gap = "", n
    for count in range(1, 4 * n):
        words = [WORDS[(offset + i) % len(WORDS)] for i in range(count)]
        text = " ".join(words).capitalize() + "."
        tokens = len(engine.text.encode(engine.text.segments(text, True, False)[0]))
        if abs(tokens - n) < best_gap or not best:
            best, best_gap = text, abs(tokens - n)
        if tokens >= n:
            break
    return best


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    return time.perf_counter() - start[0], time.process_time() - start[1]


def _upstream(root: str, model_dir: Path):
    matcha = os.environ.get("MATCHA_PATH") or str(Path(root).resolve().parent / "paimon" / "third_party" / "Matcha-TTS")
    sys.path[:0] = [root, matcha]
    sys.modules.setdefault(
        "modelscope", types.SimpleNamespace(snapshot_download=lambda d: d)
    )  # never called: dir exists
    from cosyvoice.cli.cosyvoice import CosyVoice2

    return CosyVoice2(str(model_dir))


def token2wav_parity(engine: SynthEngine, upstream, seed: int = 7) -> None:
    """Same tokens and RNG draws through upstream's ``CosyVoice2Model.token2wav`` (driven by its stream
    schedule) and ours: prints the max abs difference per chunk, whole and streamed.

    Upstream's ``SourceModuleHnNSF`` also draws a (1, L, 1) noise it never uses on every HiFT call;
    ``mimic_unused_draw`` makes ours consume the same draw, so chunk 2+ see the same noise.
    """
    from cosyml.synth.token2wav import FlowPrompt

    model, t2w = upstream.model, engine.token2wav
    original_vocode = t2w.vocode

    def vocode_like_upstream(mel, generator, times, cache_source=None):
        wav, source = original_vocode(mel, generator, times, cache_source=cache_source)
        torch.randn(1, wav.shape[1], 1, generator=generator)  # upstream's discarded noise-branch draw
        return wav, source

    g = torch.Generator().manual_seed(0)
    for n_tok, prompt_len in ((130, 0), (97, 37)):
        tokens = torch.randint(0, 6561, (1, n_tok), generator=g)
        emb = torch.randn(1, 192, generator=g)
        ptok = torch.randint(0, 6561, (1, prompt_len), generator=g)
        pfeat = torch.randn(1, 2 * prompt_len, 80, generator=g) - 4
        prompt = FlowPrompt(ptok.long(), pfeat, emb)
        common = {"prompt_token": ptok.int(), "prompt_feat": pfeat, "embedding": emb, "uuid": "parity"}
        model.hift_cache_dict["parity"] = None
        torch.manual_seed(seed)
        whole_up = model.token2wav(token=tokens, token_offset=0, finalize=True, **common)[0]
        whole = t2w.render(tokens[0].tolist(), prompt, generator=torch.Generator().manual_seed(seed))
        # upstream's streaming schedule (cli/model.py tts loop), fresh hop per request
        model.hift_cache_dict["parity"] = None
        torch.manual_seed(seed)
        toks, hop, offset, chunks_up = tokens[0].tolist(), t2w.chunk_size, 0, []
        pad = -prompt_len % t2w.chunk_size
        for available in range(1, n_tok + 1):
            this_hop = hop + pad if offset == 0 else hop
            if available - offset >= this_hop + t2w.pre_lookahead:
                head = torch.tensor([toks[: offset + this_hop + t2w.pre_lookahead]])
                chunks_up.append(
                    model.token2wav(token=head, token_offset=offset, stream=True, finalize=False, **common)[0]
                )
                offset += this_hop
                hop = min(4 * t2w.chunk_size, 2 * hop)
        chunks_up.append(model.token2wav(token=tokens, token_offset=offset, finalize=True, **common)[0])
        t2w.vocode = vocode_like_upstream
        try:
            session = t2w.stream(prompt, torch.Generator().manual_seed(seed))
            chunks = [c for available in range(1, n_tok + 1) for c in session.push(toks[:available])]
            chunks.append(session.finish(toks))
        finally:
            t2w.vocode = original_vocode
        sizes = [c.shape[0] for c in chunks]
        assert sizes == [c.shape[0] for c in chunks_up], (sizes, [c.shape[0] for c in chunks_up])
        diffs = [f"{(a - b).abs().max().item():.1e}" for a, b in zip(chunks_up, chunks, strict=True)]
        print(
            f"token2wav parity, {n_tok} tokens, prompt {prompt_len}: whole max|diff| "
            f"{(whole_up - whole).abs().max().item():.1e}; stream chunks {sizes} max|diff| {diffs}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--work", type=Path, default=Path("/tmp/cosyml-bench"), help="where kits are cached")
    parser.add_argument("--upstream", default=os.environ.get("COSYVOICE_UPSTREAM"), help="upstream checkout (optional)")
    parser.add_argument("--text-tokens", type=int, default=13, help="text tokens; decode = 20x (13 -> 10.4 s)")
    parser.add_argument("--batch", type=int, default=4, help="utterances in the throughput run (0: skip)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--parity", action="store_true", help="with --upstream: compare token2wav outputs and stop")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model_dir = _kit(args.size, args.work)
    t = _clock()
    engine = SynthEngine.load(model_dir, device=args.device)
    print(f"ours: loaded in {_since(t)[0]:.1f} s", flush=True)
    upstream = _upstream(args.upstream, model_dir) if args.upstream else None
    if args.parity:
        if upstream is None:
            raise SystemExit("--parity needs --upstream (or COSYVOICE_UPSTREAM)")
        token2wav_parity(engine, upstream)
        return
    text = _text_with_tokens(engine, args.text_tokens)
    batch_texts = [_text_with_tokens(engine, args.text_tokens, offset=3 * i) for i in range(args.batch)]
    llm_params = sum(
        p.numel() for n, p in engine.llm.named_parameters() if "embed_tokens" not in n and "lm_head" not in n
    )
    rows: list[str] = []

    def report(name: str, audio_s: float, wall: float, cpu: float, extra: str = "") -> None:
        line = f"{name:34s} audio {audio_s:6.2f} s  wall {wall:7.2f} s  cpu {cpu:7.2f} s  RTF(wall) {wall / audio_s:6.3f}{extra}"
        rows.append(line)
        print(line, flush=True)

    # warm-up (kernels, allocator, ONNX-free sft path)
    engine.synthesize(SynthRequest(text=text, speaker=SPEAKER, seed=0, max_tokens=30))

    # 1. ~10 s sft utterance, non-streaming
    request = SynthRequest(text=text, speaker=SPEAKER, seed=1)
    t = _clock()
    result = engine.synthesize(request)
    wall, cpu = _since(t)
    tm = result.timings
    per_token = tm.llm_s / max(1, len(result.tokens))
    report(
        "ours sft",
        result.duration_s,
        wall,
        cpu,
        f"  [llm {tm.llm_s:.2f} s = {1000 * per_token:.1f} ms/token ({llm_params * 4 / per_token / 1e9:.1f} GB/s of weights), "
        f"flow {tm.flow_s:.2f} s, hift {tm.hift_s:.2f} s]",
    )
    if upstream is not None:
        torch.manual_seed(1)
        t = _clock()
        outs = [o["tts_speech"] for o in upstream.inference_sft(text, SPEAKER, stream=False)]
        wall, cpu = _since(t)
        report("upstream inference_sft", sum(o.shape[1] for o in outs) / upstream.sample_rate, wall, cpu)

    # 2. streaming: first-chunk latency
    stream = engine.stream(request)
    t = _clock()
    first = None
    for _ in stream:
        first = first if first is not None else _since(t)[0]
    wall, cpu = _since(t)
    report("ours sft stream", stream.result.duration_s, wall, cpu, f"  first chunk {first:.3f} s")
    if upstream is not None:
        torch.manual_seed(1)
        t = _clock()
        first, total = None, 0
        for o in upstream.inference_sft(text, SPEAKER, stream=True):
            first = first if first is not None else _since(t)[0]
            total += o["tts_speech"].shape[1]
        wall, cpu = _since(t)
        report("upstream inference_sft stream", total / upstream.sample_rate, wall, cpu, f"  first chunk {first:.3f} s")

    # 3. batch throughput
    if args.batch > 0:
        requests = [SynthRequest(text=x, speaker=SPEAKER, seed=10 + i) for i, x in enumerate(batch_texts)]
        t = _clock()
        results = engine.synthesize_batch(requests)
        wall, cpu = _since(t)
        audio = sum(r.duration_s for r in results if not isinstance(r, Exception))
        report(f"ours batch of {args.batch}", audio, wall, cpu, f"  {audio / wall:.2f} audio s per wall s")
        if upstream is not None:
            run_upstream: Callable[[str], int] = lambda x: sum(  # noqa: E731
                o["tts_speech"].shape[1] for o in upstream.inference_sft(x, SPEAKER, stream=False)
            )
            torch.manual_seed(10)
            t = _clock()
            samples = sum(run_upstream(x) for x in batch_texts)
            wall, cpu = _since(t)
            audio = samples / upstream.sample_rate
            report(f"upstream loop of {args.batch}", audio, wall, cpu, f"  {audio / wall:.2f} audio s per wall s")

    print(
        f"\nsize {args.size}, device {args.device}, torch {torch.__version__}, {args.threads} thread(s), "
        f"LLM {llm_params / 1e6:.1f} M params (without text embeddings), text '{text}'"
    )


if __name__ == "__main__":
    main()
