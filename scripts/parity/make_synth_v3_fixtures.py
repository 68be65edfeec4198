"""Write golden fixtures for the CosyVoice3 synthesis-engine parity tests (run by hand, never from tests).

    /work/upstream/venv/bin/python scripts/parity/make_synth_v3_fixtures.py

Writes ``tests/fixtures/parity/synth_v3/``:

- ``llm_decode.pt``: upstream ``CosyVoice3LM.inference`` on a tiny Qwen2 (hidden 64, the official text
  vocabulary of 151936 so that ``<|endofprompt|>`` = 151646 exists) with weights from
  :func:`llm_weights` (seeded, rebuilt by the test, never stored), seeded with ``torch.manual_seed``:
  per run the inputs, the ids and the scores the sampler saw (so the min-length mask on id 6561-like
  ``speech_token_size`` is visible);
- ``token2wav.pt``: upstream ``CosyVoice3Model.tts`` (its real token2wav, streaming schedule and silent
  token limiter) driven by a stand-in LLM that yields fixed tokens, with the tiny DiT flow of
  ``tests/fixtures/parity/flow_v3`` (hashed weights) and the tiny causal HiFT of
  ``tests/fixtures/parity/hift_v3`` loaded into the vocoder of upstream's own ``CosyVoice3(kit)`` loader
  (so its fixed noise table is the one that loader draws), non-streaming and streaming;
  every vocoder call of both runs is recorded too (its mel, ``finalize`` and waveform), so the vocoder
  can be checked on upstream's own mel apart from the flow;
- ``meta.json``: the upstream commit and versions.

Upstream pins transformers 4.51.3; the decode must come from it (``--transformers-path``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import torch

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "parity" / "synth_v3"
FLOW_DIR = ROOT / "tests" / "fixtures" / "parity" / "flow_v3"
HIFT_DIR = ROOT / "tests" / "fixtures" / "parity" / "hift_v3"

QWEN = dict(
    vocab_size=151936,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    use_sliding_window=False,
)
SPEECH_TOKEN_SIZE = 120
END_OF_PROMPT = 151646
SAMPLING = dict(top_p=0.8, top_k=25, win_size=10, tau_r=0.1)
WEIGHT_SEED = 31
SPEECH_LOGIT_SCALE = 2.0  # speech rows (and the sos row 120) x2: decodes run long enough to matter
FLOW_TOKENS = 50  # the tiny flow's vocabulary
SCORE_STEPS = 30


def llm_weights(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Seeded tiny-LLM weights for ``shapes`` (a state-dict layout; lm_head left out, it is tied).

    Norm weights are 1 + small noise, everything else N(0, 0.05^2) except ``llm_decoder.weight``
    (N(0, 0.3^2), rows 0..120 scaled by ``SPEECH_LOGIT_SCALE``) and ``speech_embedding`` (N(0, 0.3^2)).
    Keys are drawn in sorted order from one CPU generator: the same on every machine.
    """
    gen = torch.Generator().manual_seed(WEIGHT_SEED)
    out: dict[str, torch.Tensor] = {}
    for key in sorted(shapes):
        shape = shapes[key]
        if key.endswith("norm.weight"):
            out[key] = 1.0 + 0.05 * torch.randn(shape, generator=gen)
        elif key in ("llm_decoder.weight", "speech_embedding.weight"):
            out[key] = 0.3 * torch.randn(shape, generator=gen)
        else:
            out[key] = 0.05 * torch.randn(shape, generator=gen)
    out["llm_decoder.weight"][: SPEECH_TOKEN_SIZE + 1] *= SPEECH_LOGIT_SCALE
    return out


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "parity" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_llm_runs(upstream_llm, qwen_config_cls, causal_lm_cls) -> dict:
    from cosyvoice.utils.common import ras_sampling

    config = qwen_config_cls(**QWEN)
    upstream_llm.Qwen2ForCausalLM.from_pretrained = staticmethod(lambda _path: causal_lm_cls(config))
    seen: list[torch.Tensor] = []

    def sampling_fn(weighted_scores, decoded_tokens, sampling):
        seen.append(weighted_scores.detach().clone())
        return ras_sampling(weighted_scores, decoded_tokens, sampling, **SAMPLING)

    model = upstream_llm.CosyVoice3LM(
        llm_input_size=QWEN["hidden_size"],
        llm_output_size=QWEN["hidden_size"],
        speech_token_size=SPEECH_TOKEN_SIZE,
        llm=upstream_llm.Qwen2Encoder("unused"),
        sampling=sampling_fn,
    ).eval()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "llm.model.lm_head.weight"}
    weights = llm_weights(shapes)
    model.load_state_dict({**weights, "llm.model.lm_head.weight": weights["llm.model.model.embed_tokens.weight"]})
    g = torch.Generator().manual_seed(5)
    system = torch.tensor([[11, 22, 33, END_OF_PROMPT]])
    words = torch.randint(100, 5000, (1, 8), generator=g)
    transcript = torch.randint(100, 5000, (1, 5), generator=g)
    prompt_speech = torch.randint(0, SPEECH_TOKEN_SIZE, (1, 12), generator=g)
    empty = torch.zeros(1, 0, dtype=torch.long)
    cases = [
        # (name, text, prompt_text, prompt_speech, seed): sft/cross-lingual (prefix in the text),
        # zero-shot (prefix + transcript as prompt text, prompt speech), instruct (prefix as prompt text)
        ("text_prefix", torch.cat([system, words], 1), empty, empty, 1234),
        ("text_prefix_seed2", torch.cat([system, words], 1), empty, empty, 77),
        ("zero_shot", words, torch.cat([system, transcript], 1), prompt_speech, 99),
        ("instruct", words, system, empty, 5),
    ]
    runs = []
    for name, text, prompt_text, prompt_speech_token, seed in cases:
        seen.clear()
        torch.manual_seed(seed)
        tokens = list(
            model.inference(
                text=text,
                text_len=torch.tensor([text.shape[1]], dtype=torch.int32),
                prompt_text=prompt_text,
                prompt_text_len=torch.tensor([prompt_text.shape[1]], dtype=torch.int32),
                prompt_speech_token=prompt_speech_token,
                prompt_speech_token_len=torch.tensor([prompt_speech_token.shape[1]], dtype=torch.int32),
                embedding=torch.zeros(1, 0),
            )
        )
        runs.append(
            {
                "name": name,
                "seed": seed,
                "text": text[0],
                "prompt_text": prompt_text[0],
                "prompt_speech_token": prompt_speech_token[0],
                "tokens": torch.tensor(tokens, dtype=torch.long),
                "scores": torch.stack(seen[:SCORE_STEPS]),  # the first steps only (size)
                "stopped_by_stop_id": len(seen) > len(tokens),  # the last draw was a stop id
            }
        )
        print(f"llm {name} seed {seed}: {len(tokens)} tokens, {len(seen)} steps, min_len {2 * text.shape[1]}")
    return {"sampling": SAMPLING, "qwen_config": QWEN, "speech_token_size": SPEECH_TOKEN_SIZE, "runs": runs}


class FixedTokenLLM:
    """Stands in for the LLM in upstream's ``CosyVoice3Model.tts``: yields fixed tokens."""

    def __init__(self, tokens: list[int]) -> None:
        self.tokens = tokens

    def inference(self, **_kwargs):
        yield from self.tokens


def make_token2wav(model_module, flow, hift) -> dict:
    g = torch.Generator().manual_seed(11)
    raw = torch.randint(3, FLOW_TOKENS, (100,), generator=g).tolist()
    raw[40:48] = [1, 2, 28, 29, 1, 2, 28, 29]  # 8 silent tokens in a row: upstream drops the last 3
    prompt_tokens = torch.randint(0, FLOW_TOKENS, (1, 7), generator=g)
    prompt_feat = torch.randn(1, 14, 80, generator=g)
    embedding = torch.randn(1, 192, generator=g)
    out: dict = {
        "raw_tokens": torch.tensor(raw),
        "prompt_tokens": prompt_tokens,
        "prompt_feat": prompt_feat,
        "embedding": embedding,
    }
    for stream in (False, True):
        model = model_module.CosyVoice3Model(FixedTokenLLM(raw), flow, hift)  # fresh: its hop grows per call
        seen_tokens: list[torch.Tensor] = []
        original = model.token2wav

        def recording(token, *a, _orig=original, _seen=seen_tokens, **kw):
            _seen.append(token.clone())
            return _orig(token, *a, **kw)

        model.token2wav = recording
        vocoder_calls: list[dict] = []
        vocoder = hift.inference

        def vocoding(speech_feat, finalize=True, _orig=vocoder, _calls=vocoder_calls):
            speech, source = _orig(speech_feat=speech_feat, finalize=finalize)
            _calls.append({"mel": speech_feat.clone(), "finalize": finalize, "wav": speech.clone()})
            return speech, source

        hift.inference = vocoding
        chunks = [
            o["tts_speech"].clone()
            for o in model.tts(
                text=torch.zeros(1, 1, dtype=torch.int32),
                flow_embedding=embedding,
                flow_prompt_speech_token=prompt_tokens,
                prompt_speech_feat=prompt_feat,
                stream=stream,
            )
        ]
        kept = seen_tokens[-1][0]
        key = "stream" if stream else "whole"
        out[f"{key}_chunks"] = [c[0] for c in chunks]
        out["kept_tokens"] = kept
        out[f"{key}_vocoder_calls"] = vocoder_calls  # every hift.inference call: its mel, finalize, wav
        hift.inference = vocoder
        print(f"token2wav {key}: {len(raw)} raw tokens, {kept.numel()} kept, chunks {[c.shape[1] for c in chunks]}")
    with torch.no_grad():
        out["whole_mel"] = flow.inference(
            token=out["kept_tokens"][None].int(),
            token_len=torch.tensor([out["kept_tokens"].numel()], dtype=torch.int32),
            prompt_token=prompt_tokens,
            prompt_token_len=torch.tensor([7], dtype=torch.int32),
            prompt_feat=prompt_feat,
            prompt_feat_len=torch.tensor([14], dtype=torch.int32),
            embedding=embedding,
            streaming=False,
            finalize=True,
        )[0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", default="/work/upstream/CosyVoice")
    parser.add_argument("--matcha", default="/work/upstream/paimon/third_party/Matcha-TTS")
    parser.add_argument("--transformers-path", default="/work/upstream/tf4513")
    parser.add_argument(
        "--kit", default="/work/upstream/kits/v3", help="cosyml kit DIR --version cosyvoice3 --official-text-ids"
    )
    parser.add_argument(
        "--part",
        choices=("llm", "token2wav"),
        required=True,
        help="llm: needs transformers 4.51.3; token2wav: the venv's own libraries (diffusers needs a newer "
        "huggingface_hub than the 4.51.3 folder holds); run both",
    )
    args = parser.parse_args()
    sys.path[:0] = ([args.transformers_path] if args.part == "llm" else []) + [args.upstream, args.matcha]

    import transformers

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _upstream_loader import upstream_commit

    commit = upstream_commit(Path(args.upstream))
    OUT.mkdir(parents=True, exist_ok=True)
    meta_path = OUT / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta.update(upstream="FunAudioLLM/CosyVoice", upstream_commit=commit, torch=torch.__version__)
    meta["generator"] = "scripts/parity/make_synth_v3_fixtures.py (--part llm, then --part token2wav)"
    if args.part == "llm":
        import cosyvoice.llm.llm as upstream_llm
        from transformers import Qwen2Config, Qwen2ForCausalLM

        if transformers.__version__ != "4.51.3":
            raise SystemExit(f"transformers {transformers.__version__} found; pass --transformers-path with 4.51.3")
        torch.save(make_llm_runs(upstream_llm, Qwen2Config, Qwen2ForCausalLM), OUT / "llm_decode.pt")
        meta.update(llm_transformers=transformers.__version__, llm_weights=f"llm_weights(seed {WEIGHT_SEED})")
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
        print("wrote", OUT / "llm_decode.pt")
        return

    hift_script = _script("make_hift_v3_fixtures")
    cosyvoice, _generator, _f0_module = hift_script._import_upstream(Path(args.upstream))  # stand-ins first
    import cosyvoice.cli.model as model_module
    from hyperpyyaml import load_hyperpyyaml

    flow_script = _script("make_flow_fixtures")
    with (FLOW_DIR / "tiny_flow_v3.yaml").open() as handle:
        flow = load_hyperpyyaml(handle)["flow"].eval()
    inv_key = "decoder.estimator.rotary_embed.inv_freq"
    shapes = {k: tuple(v.shape) for k, v in flow.state_dict().items() if k != inv_key}
    inv_freq = torch.load(FLOW_DIR / "io.pt", weights_only=True)["inv_freq"]
    flow.load_state_dict({**flow_script.hashed_weights(shapes), inv_key: inv_freq}, strict=True)

    # the vocoder upstream's own CosyVoice3(kit) loader builds: its fixed noise tables, as any user gets them
    hift = hift_script.load_upstream_hift(cosyvoice, Path(args.kit))
    hift.load_state_dict(torch.load(HIFT_DIR / "hift_tiny.pt", weights_only=True), strict=True)

    torch.save(make_token2wav(model_module, flow, hift), OUT / "token2wav.pt")
    meta.update(
        flow="tests/fixtures/parity/flow_v3/tiny_flow_v3.yaml + make_flow_fixtures.hashed_weights",
        hift="tests/fixtures/parity/hift_v3/hift_tiny.pt in the vocoder of upstream's CosyVoice3(kit) loader "
        "(its own fixed noise table)",
        token_hop_len=25,
    )
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    print("wrote", OUT / "token2wav.pt")


if __name__ == "__main__":
    main()
