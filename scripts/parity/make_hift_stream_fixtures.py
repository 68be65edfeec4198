"""Write the CosyVoice2 vocoder-noise parity fixtures (tests/fixtures/parity/hift_stream/) from upstream's
own ``CosyVoice2(dir)`` loader: consecutive vocoder calls on one seeded RNG, through upstream's
streaming path and through two non-streamed segments.

Run by hand, never from tests, with the upstream venv (recipe in ``_upstream_loader.py``):

    cosyml kit /work/upstream/kits/v2
    /work/upstream/venv/bin/python scripts/parity/make_hift_stream_fixtures.py --kit /work/upstream/kits/v2

What runs: ``CosyVoice2(kit)``; its vocoder gets the weights of ``tests/fixtures/parity/hift/hift_tiny.pt``
(the kit's vocoder has the same tiny sizes), its LLM is replaced by a stand-in that yields fixed tokens
(so nothing else draws from the RNG; the kit's flow weights are hashed into ``meta.json`` so a test can
rebuild the same kit with ``cosyml kit``), and ``CosyVoice2Model.tts`` runs as upstream's ``inference_*``
calls it, after ``torch.manual_seed(seed)``:

- ``stream``: ``tts(stream=True)`` with 140 tokens and a 7-token prompt: three vocoder calls (hops of
  25 + 18 prompt pad, then 50 tokens, then the rest), each after the first with the 8-frame mel cache and the source cache
  upstream keeps (``hift_cache_dict``); upstream's streaming hop lives on the model and grows across
  requests, so it is reset to 25 first;
- ``segments``: two ``tts(stream=False)`` calls in a row (a text split into two sentences).

Every call to ``hift.inference`` is recorded: its mel, cache source, and the waveform and source it
returned. Upstream's vocoder draws, per call, ``rand(B, 9)``, a ``(B, L, 9)`` normal (laid out as
``(B, 9, L)``) and an unused ``(B, L, 1)`` normal from the global RNG; cosyml with one
``torch.Generator().manual_seed(seed)`` across the calls must reproduce every call, not only the first.

Outputs: ``io.pt`` (per run: the seed, the tokens, the recorded calls; for the stream also the chunks
``tts`` yielded, after upstream's cross-fade) and ``meta.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
HIFT_WEIGHTS = ROOT / "tests" / "fixtures" / "parity" / "hift" / "hift_tiny.pt"
SEED_STREAM, SEED_SEGMENTS = 2024, 77
N_STREAM, N_SEGMENT = 140, 30


class FixedTokenLLM:
    """Stands in for the LLM in upstream's ``CosyVoice2Model.tts``: yields fixed tokens, draws nothing."""

    def __init__(self, tokens: list[int]) -> None:
        self.tokens = tokens

    def inference(self, **_kwargs):
        yield from self.tokens


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over keys, dtypes, shapes and bytes, in key order (independent of the file format)."""
    digest = hashlib.sha256()
    for key, value in state.items():
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _record_hift_calls(hift) -> list[dict]:
    calls: list[dict] = []
    original = hift.inference

    def inference(speech_feat, cache_source=None):
        if cache_source is None:
            cache_source = torch.zeros(1, 1, 0)  # upstream's default
        speech, source = original(speech_feat=speech_feat, cache_source=cache_source)
        calls.append(
            {
                "mel": speech_feat.detach().clone(),
                "cache_source": cache_source.detach().clone(),
                "wav": speech.detach().clone(),
                "source": source.detach().clone(),
            }
        )
        return speech, source

    hift.inference = inference
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", type=Path, default=Path("/work/upstream/CosyVoice"))
    parser.add_argument("--kit", type=Path, default=Path("/work/upstream/kits/v2"))
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "parity" / "hift_stream")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _upstream_loader import import_upstream, upstream_commit

    cosyvoice = import_upstream(args.upstream.resolve())
    cv = cosyvoice.CosyVoice2(str(args.kit))
    model = cv.model
    model.hift.load_state_dict(torch.load(HIFT_WEIGHTS, weights_only=True), strict=True)
    calls = _record_hift_calls(model.hift)

    g = torch.Generator().manual_seed(3)
    vocab = 6561
    prompt_tokens = torch.randint(0, vocab, (1, 7), generator=g, dtype=torch.int32)
    prompt_feat = torch.randn(1, 14, 80, generator=g) * 1.5 - 5.0
    embedding = torch.randn(1, 192, generator=g)
    stream_tokens = torch.randint(0, vocab, (N_STREAM,), generator=g).tolist()
    segments = [torch.randint(0, vocab, (N_SEGMENT,), generator=g).tolist() for _ in range(2)]
    common = dict(flow_embedding=embedding, flow_prompt_speech_token=prompt_tokens, prompt_speech_feat=prompt_feat)

    runs = {}
    model.token_hop_len = 25  # upstream grows it per request and never resets it
    model.llm = FixedTokenLLM(stream_tokens)
    calls.clear()
    torch.manual_seed(SEED_STREAM)
    chunks = [o["tts_speech"][0].clone() for o in model.tts(stream=True, **common)]
    assert len(chunks) == len(calls)
    runs["stream"] = {
        "seed": SEED_STREAM,
        "calls": list(calls),
        "tokens": torch.tensor(stream_tokens),
        "chunks": chunks,
    }
    print(
        f"stream: {len(calls)} vocoder calls, mel frames {[c['mel'].shape[2] for c in calls]}, "
        f"cache {[c['cache_source'].shape[2] for c in calls]}"
    )

    calls.clear()
    torch.manual_seed(SEED_SEGMENTS)
    for tokens in segments:
        model.llm = FixedTokenLLM(tokens)
        list(model.tts(stream=False, **common))
    runs["segments"] = {"seed": SEED_SEGMENTS, "calls": list(calls), "tokens": torch.tensor(segments)}
    print(f"segments: {len(calls)} vocoder calls, mel frames {[c['mel'].shape[2] for c in calls]}")

    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"runs": runs, "prompt_tokens": prompt_tokens, "prompt_feat": prompt_feat, "embedding": embedding},
        args.out / "io.pt",
    )
    meta = {
        "upstream": "FunAudioLLM/CosyVoice",
        "upstream_commit": upstream_commit(args.upstream),
        "torch": torch.__version__,
        "loader": "cosyvoice.cli.cosyvoice.CosyVoice2(kit) with kit = cosyml kit DIR; LLM replaced by fixed tokens",
        "hift_weights": "tests/fixtures/parity/hift/hift_tiny.pt",
        "kit_flow_weights_sha256": state_dict_sha256(model.flow.state_dict()),
        "hift_weights_sha256": hashlib.sha256(HIFT_WEIGHTS.read_bytes()).hexdigest(),
        "hift": json.loads((HIFT_WEIGHTS.parent / "meta.json").read_text())["hift"],
        "randomness": "torch.manual_seed(seed) once before each run; every vocoder call of the run draws from "
        "the global RNG in turn. Reproduce with one torch.Generator().manual_seed(seed) passed to every call.",
        "token_hop_len_reset_to": 25,
    }
    (args.out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
