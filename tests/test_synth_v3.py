"""The synthesis engine on Fun-CosyVoice3: upstream parity of the decode and of token2wav, then every mode,
streaming, batches, seeds and hot swap on the tiny v3 kit.

Parity fixtures come from ``scripts/parity/make_synth_v3_fixtures.py`` (upstream commit in ``meta.json``):
``llm_decode.pt`` (upstream ``CosyVoice3LM.inference``, seeded) and ``token2wav.pt`` (upstream
``CosyVoice3Model.tts`` with a stand-in LLM yielding fixed tokens: its silent-token limiter, DiT flow,
causal HiFT and streaming schedule). The kit's weights are random: the kit tests prove plumbing only.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from transformers import Qwen2Config

from cosyml.audio import write_wav
from cosyml.errors import CosymlError
from cosyml.kit.build import build_kit
from cosyml.models.flow import DiTFlow, build_flow
from cosyml.models.generation import DecodeRow, SamplingParams, decode_batch, decode_one
from cosyml.models.hift_causal import CausalHiFT
from cosyml.models.llm import LLMConfig, Qwen2LM, build_llm
from cosyml.models.modeldir import ModelDir, save_state_dict
from cosyml.models.vocoder import build_hift
from cosyml.models.yaml_io import Tagged, read_model_yaml
from cosyml.synth import v3
from cosyml.synth.engine import SynthEngine
from cosyml.synth.errors import UnknownSpeakerError
from cosyml.synth.request import SynthRequest
from cosyml.synth.token2wav import FlowPrompt, Token2Wav

ROOT = Path(__file__).resolve().parents[1]
PARITY = ROOT / "tests" / "fixtures" / "parity"
FIXTURES = PARITY / "synth_v3"
SAMPLES_PER_TOKEN = 2 * 480
CAP = 24


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "parity" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.double() - b.double()).abs().max().item()


# ------------------------------------------------------------------------------------------- parity: decode


@pytest.fixture(scope="module")
def upstream_decode() -> dict:
    return torch.load(FIXTURES / "llm_decode.pt", weights_only=True)


@pytest.fixture(scope="module")
def tiny_v3_llm(upstream_decode: dict) -> Qwen2LM:
    qwen = Qwen2Config(**upstream_decode["qwen_config"])
    qwen._attn_implementation = "sdpa"
    size = upstream_decode["speech_token_size"]
    model = Qwen2LM(LLMConfig(version="v3", llm_input_size=64, llm_output_size=64, speech_token_size=size), qwen)
    model.tie_weights()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "llm.model.lm_head.weight"}
    weights = _script("make_synth_v3_fixtures").llm_weights(shapes)
    model.load_state_dict({**weights, "llm.model.lm_head.weight": weights["llm.model.model.embed_tokens.weight"]})
    return model.eval()


def _row(run: dict, sampling: SamplingParams, max_tokens: int | None = None) -> DecodeRow:
    return DecodeRow(
        text=run["text"],
        prompt_text=run["prompt_text"],
        prompt_speech=run["prompt_speech_token"],
        sampling=sampling,
        min_token_text_ratio=2.0,
        max_token_text_ratio=20.0,
        max_tokens=max_tokens,
        generator=torch.Generator().manual_seed(run["seed"]),
    )


def test_v3_decode_ids_match_upstream_and_keep_its_min_length_quirk(
    tiny_v3_llm: Qwen2LM, upstream_decode: dict
) -> None:
    sampling = SamplingParams(**upstream_decode["sampling"])
    s = upstream_decode["speech_token_size"]
    assert tiny_v3_llm.layout.stop_ids == tuple(range(s, s + 200))
    assert (tiny_v3_llm.layout.sos_row, tiny_v3_llm.layout.task_row, tiny_v3_llm.layout.eos) == (s, s + 2, s + 1)
    stopped = 0
    for run in upstream_decode["runs"]:
        scores: list[torch.Tensor] = []
        ours = list(decode_one(tiny_v3_llm, _row(run, sampling)))
        assert ours == run["tokens"].tolist(), run["name"]
        # the scores upstream's sampler saw: same to float32 rounding; the min-length mask hits sos (s), not eos
        min_len = 2 * run["text"].numel()
        up = run["scores"]
        assert torch.isinf(up[:min_len, s]).all() and torch.isfinite(up[:min_len, s + 1]).all()
        for _ in tiny_v3_llm.inference(
            run["text"],
            run["prompt_text"],
            run["prompt_speech_token"],
            sampling=sampling,
            generator=torch.Generator().manual_seed(run["seed"]),
            scores_out=scores,
        ):
            pass
        got = torch.stack(scores[: up.shape[0]])
        finite = torch.isfinite(up)
        assert torch.equal(finite, torch.isfinite(got))
        assert _max_err(got[finite], up[finite]) < 1e-4
        stopped += bool(run["stopped_by_stop_id"]) and len(ours) < 20 * run["text"].numel()
    assert stopped >= 2  # some runs end on a stop id after min_len (the quirk's visible effect)
    # batched decoding gives the same ids
    runs = upstream_decode["runs"]
    batched = decode_batch(tiny_v3_llm, [_row(r, sampling) for r in runs])
    assert batched == [r["tokens"].tolist() for r in runs]


# ------------------------------------------------------------------------------------------- parity: token2wav


@pytest.fixture(scope="module")
def upstream_t2w() -> dict:
    return torch.load(FIXTURES / "token2wav.pt", weights_only=True)


@pytest.fixture(scope="module")
def tiny_t2w() -> Token2Wav:
    flow = build_flow(read_model_yaml(PARITY / "flow_v3" / "tiny_flow_v3.yaml"))
    assert isinstance(flow, DiTFlow)
    inv_key = "decoder.estimator.rotary_embed.inv_freq"
    shapes = {k: tuple(v.shape) for k, v in flow.state_dict().items() if k != inv_key}
    inv_freq = torch.load(PARITY / "flow_v3" / "io.pt", weights_only=True)["inv_freq"]
    flow.load_state_dict({**_script("make_flow_fixtures").hashed_weights(shapes), inv_key: inv_freq}, strict=True)
    args = dict(json.loads((PARITY / "hift_v3" / "meta.json").read_text())["hift"])
    f0 = Tagged("new", "cosyvoice.hifigan.f0_predictor.CausalConvRNNF0Predictor", args.pop("f0_predictor"))
    hift = build_hift(
        {"hift": Tagged("new", "cosyvoice.hifigan.generator.CausalHiFTGenerator", {**args, "f0_predictor": f0})}
    )
    assert isinstance(hift, CausalHiFT)
    hift.load_state_dict(torch.load(PARITY / "hift_v3" / "hift_tiny.pt", weights_only=True), strict=True)
    hift.fold_weight_norm()
    return Token2Wav(flow.eval(), hift.eval(), chunk_size=25)


# Bounds of the token2wav parity (fp32 error analysis; see each constant).
#
# MEL_ATOL: the tiny DiT flow's mel (|mel| <= ~5.5) after 10 Euler steps, each a DiT pass of matmuls
# with fan-in <= 128. Two fp32 implementations that sum in different orders differ per dot product by
# ~sqrt(n) * eps32/2 relative (random-walk rounding, n = 128: ~7e-7), compounded over ~10 layers per step
# and 10 steps (~sqrt(100) = 10): ~1e-5 relative, ~5e-5 absolute at |mel| ~ 5. 1e-4 covers that with a
# 2x margin; a wrong schedule or prompt changes the mel by O(1).
MEL_ATOL = 1e-4
# VOCODER_ATOL: cosyml's vocoder on upstream's own mel: the same fp32 conv stack as tests/test_hift_v3.py
# (its WAV_ATOL 1e-5; folding weight norm adds a few ulp of the weights, measured 4e-7). A wrong noise table
# differs by 6e-3, wrong streaming bookkeeping by O(0.1).
VOCODER_ATOL = 1e-5


def _mel_shift_response(hift: CausalHiFT, mel: torch.Tensor, shift: float) -> float:
    """Max wav change when every mel value moves by ``shift`` (all up, all down, random signs).

    The causal source integrates f0 into phase over the whole utterance, so a mel difference far below
    what any fp32 check can promise grows, through the f0 predictor, into a phase drift of the later
    samples: on this tiny vocoder one ulp of mel (~5e-7 at |mel| ~ 5) moves the wav by ~4e-4. An
    end-to-end wav bound therefore has to scale with the mel difference actually present (first-order
    propagation)."""
    base, _ = hift.inference(mel)
    signs = torch.randint(0, 2, mel.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    probes = [torch.full_like(mel, shift), torch.full_like(mel, -shift), shift * signs]
    return max((hift.inference(mel + probe)[0] - base).abs().max().item() for probe in probes)


def test_token2wav_vocoder_matches_upstream_on_upstreams_mel(tiny_t2w: Token2Wav, upstream_t2w: dict) -> None:
    """Every vocoder call upstream made (whole, and the re-vocoded prefixes of the stream), given the same
    mel: catches a wrong noise table or streaming bookkeeping apart from the flow's fp32 noise."""
    calls = upstream_t2w["whole_vocoder_calls"] + upstream_t2w["stream_vocoder_calls"]
    assert len(calls) == 1 + 3 and [c["finalize"] for c in calls] == [True, False, False, True]
    for call in calls:
        wav, _ = tiny_t2w.hift.inference(call["mel"], finalize=call["finalize"])
        assert wav.shape == call["wav"].shape
        assert _max_err(wav, call["wav"]) <= VOCODER_ATOL


def test_token2wav_matches_upstream_whole_and_streamed(tiny_t2w: Token2Wav, upstream_t2w: dict) -> None:
    io = upstream_t2w
    kept = v3.SilenceLimiter().filter(io["raw_tokens"].tolist())
    assert kept == io["kept_tokens"].tolist() and len(kept) == len(io["raw_tokens"]) - 3
    prompt = FlowPrompt(io["prompt_tokens"], io["prompt_feat"], io["embedding"])
    from cosyml.synth.token2wav import StageTimes

    mel = tiny_t2w.mel(torch.tensor([kept]), prompt, streaming=False, finalize=True, times=StageTimes())
    assert _max_err(mel, io["whole_mel"]) < MEL_ATOL
    # End to end, the wav bound follows the mel difference present (first-order propagation through the
    # vocoder, x2 for the part of the Jacobian a 3-probe estimate can miss), plus the vocoder's own bound:
    # no mel difference (where the fixture was written) gives VOCODER_ATOL; a few ulp, a few 1e-3. The
    # streamed mel comes from the same flow operations as the whole one and its prefixes are shorter (less
    # phase to drift), so the whole mel's difference and response bound the chunks too.
    shift = (mel - io["whole_mel"]).abs().max().item()
    wav_atol = VOCODER_ATOL + 2.0 * (_mel_shift_response(tiny_t2w.hift, io["whole_mel"], shift) if shift else 0.0)
    whole = tiny_t2w.render(kept, prompt)
    err = _max_err(whole, io["whole_chunks"][0])
    print(f"token2wav: mel differs by {shift:.3g}; wav differs by {err:.3g} (bound {wav_atol:.3g})")
    assert err <= wav_atol
    session = tiny_t2w.stream(prompt)
    chunks = [c for n in range(1, len(kept) + 1) for c in session.push(kept[:n])] + [session.finish(kept)]
    assert [c.numel() for c in chunks] == [c.numel() for c in io["stream_chunks"]] == [37440, 48000, 7680]
    errors = [_max_err(ours, theirs) for ours, theirs in zip(chunks, io["stream_chunks"], strict=True)]
    print(f"token2wav stream chunks differ by {errors}")
    assert max(errors) <= wav_atol


# ------------------------------------------------------------------------------------------- the v3 kit


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synth_v3_kit")
    model_dir = root / "model"
    build_kit(model_dir, seed=0, version="cosyvoice3")
    md = ModelDir(model_dir)
    assert md.version == "v3"
    gen = torch.Generator().manual_seed(7)
    torch.save(
        {
            "alice": {"embedding": torch.randn(1, 192, generator=gen)},
            "bob": {"embedding": torch.randn(1, 192, generator=gen)},
        },
        model_dir / "spk2info.pt",
    )

    def chatty(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # Random weights stop often (200 of 6761 ids stop); sharper speech logits make decodes long enough to stream.
        state = dict(state)
        weight = state["llm_decoder.weight"].clone()
        weight[: md.hparams.speech_token_size] *= 4.0
        state["llm_decoder.weight"] = weight
        return state

    torch.save(chatty(torch.load(md.llm_path, weights_only=True)), md.llm_path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        other_llm = build_llm(md)
        other_llm.tie_weights()
        other_flow = build_flow(md.config)
    llm_ckpt = root / "epoch_2_whole.pt"
    torch.save({**chatty(other_llm.state_dict()), "epoch": 2, "step": 50}, llm_ckpt)
    flow_pt = save_state_dict(other_flow, root / "flow_ft.pt")
    t = np.arange(int(16000 * 2.5)) / 16000
    voice = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    prompt = root / "prompt.wav"
    write_wav(prompt, voice.astype(np.float32), 16000)
    return {"model_dir": model_dir, "llm_ckpt": llm_ckpt, "flow_pt": flow_pt, "prompt": prompt, "root": root}


@pytest.fixture(scope="module")
def engine(kit: dict[str, Path]) -> SynthEngine:
    torch.set_num_threads(2)
    return SynthEngine.load(kit["model_dir"], device="cpu")


@pytest.fixture(autouse=True)
def _base_weights(request: pytest.FixtureRequest):
    if "engine" in request.fixturenames:
        request.getfixturevalue("engine").swap(llm="base", flow="base")
    yield


def sft(text: str = "Hello world, this is a test.", **kw) -> SynthRequest:
    return SynthRequest(text=text, **{"mode": "sft", "speaker": "alice", "seed": 1, "max_tokens": CAP, **kw})


def mode_request(mode: str, kit: dict[str, Path]) -> SynthRequest:
    common = {"text": "Good morning.", "seed": 3, "max_tokens": CAP}
    if mode == "sft":
        return SynthRequest(mode="sft", speaker="bob", **common)
    if mode == "zero_shot":
        return SynthRequest(mode="zero_shot", prompt_wav=kit["prompt"], prompt_text="a short prompt", **common)
    if mode == "cross_lingual":
        return SynthRequest(mode="cross_lingual", prompt_wav=kit["prompt"], **common)
    return SynthRequest(mode="instruct", instruct="speak slowly", prompt_wav=kit["prompt"], **common)


def test_v3_prompt_conventions(engine: SynthEngine) -> None:
    text = engine.text
    assert engine.version == "v3" and v3.SYSTEM_PROMPT_PREFIX == "You are a helpful assistant.<|endofprompt|>"
    assert text.tts_text("Hi.", llm_has_prompt=False) == "You are a helpful assistant.<|endofprompt|>Hi."
    assert text.tts_text("Hi.", llm_has_prompt=True) == "Hi."
    assert text.tts_text("Be calm.<|endofprompt|>Hi.", llm_has_prompt=False) == "Be calm.<|endofprompt|>Hi."
    assert text.prompt_text("a short prompt", False) == "You are a helpful assistant.<|endofprompt|>a short prompt"
    assert text.instruct_text("请用广东话表达。") == "You are a helpful assistant. 请用广东话表达。<|endofprompt|>"
    assert (
        text.instruct_text("You are a helpful assistant. Speak fast.")
        == "You are a helpful assistant. Speak fast.<|endofprompt|>"
    )
    assert text.instruct_text("Mine.<|endofprompt|>") == "Mine.<|endofprompt|>"
    # a text with <|...|> is neither normalised nor split (upstream)
    assert text.segments("Room 101.<|endofprompt|>Two. Three.", True, True) == ["Room 101.<|endofprompt|>Two. Three."]
    marker = text.tokenizer.token_id("<|endofprompt|>")
    stored = text.stored_prompt_ids(text.encode("a short prompt"))
    assert marker in stored.tolist() and text.stored_prompt_ids(stored).tolist() == stored.tolist()


def test_silence_limiter_keeps_runs_of_five() -> None:
    limiter = v3.SilenceLimiter()
    assert limiter.filter([7, 1, 2, 28, 29, 55, 248, 494, 9, 1, 1]) == [7, 1, 2, 28, 29, 55, 9, 1, 1]


@pytest.mark.parametrize("mode", ["sft", "zero_shot", "cross_lingual", "instruct"])
def test_every_mode_gives_24khz_audio(engine: SynthEngine, kit, mode: str) -> None:
    result = engine.synthesize(mode_request(mode, kit))
    assert result.sample_rate == 24000 and result.wav.dtype == np.float32
    assert 0 < len(result.tokens) <= CAP and all(0 <= t < 6561 for t in result.tokens)
    assert result.wav.shape[0] == len(result.tokens) * SAMPLES_PER_TOKEN
    assert np.isfinite(result.wav).all() and np.abs(result.wav).max() <= 0.99 + 1e-6
    assert result.segments == ["Good morning."]


def test_plain_text_equals_text_with_the_explicit_prefix(engine: SynthEngine, kit) -> None:
    plain = engine.synthesize(sft("Good morning.", normalize=False))
    explicit = engine.synthesize(sft("You are a helpful assistant.<|endofprompt|>Good morning."))
    assert plain.tokens == explicit.tokens and np.array_equal(plain.wav, explicit.wav)
    instruct = engine.synthesize(mode_request("instruct", kit))
    spelled = engine.synthesize(
        mode_request("instruct", kit).replace(instruct="You are a helpful assistant. speak slowly<|endofprompt|>")
    )
    assert instruct.tokens == spelled.tokens
    # cross_lingual and sft give the LLM the same input; zero_shot and instruct do not
    cross = engine.synthesize(mode_request("cross_lingual", kit))
    assert cross.tokens == engine.synthesize(mode_request("sft", kit)).tokens
    assert engine.synthesize(mode_request("zero_shot", kit)).tokens != cross.tokens != instruct.tokens


def test_seeds_and_hot_swap(engine: SynthEngine, kit) -> None:
    base = engine.synthesize(sft())
    again = engine.synthesize(sft())
    assert base.tokens == again.tokens and np.array_equal(base.wav, again.wav)
    assert engine.synthesize(sft(seed=2)).tokens != base.tokens
    engine.swap(flow=kit["flow_pt"])
    flow_swapped = engine.synthesize(sft())
    assert flow_swapped.tokens == base.tokens and not np.allclose(flow_swapped.wav, base.wav)
    engine.swap(llm=kit["llm_ckpt"], flow="base")
    assert engine.synthesize(sft()).tokens != base.tokens
    restored = engine.synthesize(sft(llm="base"))
    assert restored.tokens == base.tokens and np.array_equal(restored.wav, base.wav)


def test_stream_chunks_concatenate_to_the_whole(engine: SynthEngine) -> None:
    request = sft(max_tokens=90)
    whole = engine.synthesize(request)
    stream = engine.stream(request)
    chunks = list(stream)
    assert stream.result is not None and stream.result.tokens == whole.tokens and len(whole.tokens) == 90
    sizes = [c.wav.shape[0] for c in chunks]
    # hop 25 tokens (+3 look-ahead): 50 mel frames, of which the causal HiFT holds back 8; then 50 tokens
    assert sizes[0] == (50 - 8) * 480 and sizes[1] == 100 * 480
    assert sum(sizes) == whole.wav.shape[0] == 90 * SAMPLES_PER_TOKEN
    joined = np.concatenate([c.wav for c in chunks])
    assert np.array_equal(joined, stream.result.wav) and np.isfinite(joined).all()
    assert [c.final for c in chunks] == [False] * (len(chunks) - 1) + [True]


def test_batched_decoding_equals_one_by_one(engine: SynthEngine, kit) -> None:
    requests = [mode_request(m, kit) for m in ("sft", "zero_shot", "cross_lingual", "instruct")]
    one_by_one = [engine.synthesize(r) for r in requests]
    batched = engine.synthesize_batch(requests, batch_size=4)
    for single, together in zip(one_by_one, batched, strict=True):
        assert not isinstance(together, CosymlError)
        assert together.tokens == single.tokens and np.array_equal(together.wav, single.wav)


def test_bad_input_is_one_line(engine: SynthEngine) -> None:
    with pytest.raises(UnknownSpeakerError) as info:
        engine.synthesize(sft(speaker="nobody"))
    assert "\n" not in str(info.value) and "known speakers: alice, bob" in str(info.value)
