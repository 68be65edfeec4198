"""CosyVoice2 vocoder noise across consecutive calls equals upstream's, through upstream's own loader.

Fixtures: ``scripts/parity/make_hift_stream_fixtures.py`` runs upstream's ``CosyVoice2(kit)`` with the
tiny vocoder weights of ``tests/fixtures/parity/hift`` and records every ``hift.inference`` call of
(a) one streamed request (three calls, the later ones with upstream's mel and source caches) and (b) two
non-streamed segments, each run after one ``torch.manual_seed(seed)``. Upstream's vocoder draws three
tensors per call from the global RNG (the last one unused); cosyml, given one
``torch.Generator().manual_seed(seed)`` for the whole request, must reproduce every call, not only the
first (``SourceNoise.draw`` consumes the generator as upstream does).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from cosyml.models.hift import HiFT
from cosyml.models.vocoder import build_hift
from cosyml.models.yaml_io import Tagged

FIXTURES = Path(__file__).parent / "fixtures" / "parity" / "hift_stream"
WEIGHTS = Path(__file__).parent / "fixtures" / "parity" / "hift" / "hift_tiny.pt"
# Same bound as the single-call v2 parity (tests/test_hift_parity.py): the source integrates the phase
# in float32 over a chunk (cumsum over ~100 frames, then x480 interpolation and sin), so a one-ulp
# difference in a phase increment (eps32 ~ 1.2e-7 relative of up to ~2*pi*harmonics) grows with the
# cumulative sum to a few 1e-6 over ~5e4 samples; measured <= 5.2e-6 single-call. A wrong noise draw
# differs by the noise itself (std 3e-3 voiced, 3e-2 unvoiced, before the network), >= 1e-3 in the wav.
ATOL = 5e-5


def _meta() -> dict:
    return json.loads((FIXTURES / "meta.json").read_text())


@pytest.fixture(scope="module")
def runs() -> dict:
    return torch.load(FIXTURES / "io.pt", weights_only=True)["runs"]


@pytest.fixture(scope="module")
def model() -> HiFT:
    torch.set_num_threads(1)
    meta = _meta()
    assert hashlib.sha256(WEIGHTS.read_bytes()).hexdigest() == meta["hift_weights_sha256"]
    args = dict(meta["hift"])
    f0_args = args.pop("f0_predictor")
    args["f0_predictor"] = Tagged("new", "cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor", f0_args)
    hift = build_hift({"hift": Tagged("new", "cosyvoice.hifigan.generator.HiFTGenerator", args)})
    assert isinstance(hift, HiFT)
    hift.load_state_dict(torch.load(WEIGHTS, weights_only=True), strict=True)
    return hift.eval()


def _replay(model: HiFT, run: dict) -> list[tuple[float, float]]:
    """Run every recorded call on one generator seeded like upstream's RNG; (wav, source) max errors."""
    generator = torch.Generator().manual_seed(run["seed"])
    errors = []
    for call in run["calls"]:
        cache = call["cache_source"] if call["cache_source"].shape[2] > 0 else None
        wav, source = model.inference(call["mel"], cache_source=cache, generator=generator)
        assert wav.shape == call["wav"].shape and source.shape == call["source"].shape
        errors.append(((wav - call["wav"]).abs().max().item(), (source - call["source"]).abs().max().item()))
    return errors


def test_fixture_comes_from_upstreams_loader() -> None:
    meta = _meta()
    assert meta["upstream_commit"].startswith("ace7c47")
    assert "CosyVoice2(kit)" in meta["loader"]


@pytest.mark.parametrize("name", ["stream", "segments"])
def test_every_vocoder_call_matches_upstream(model: HiFT, runs: dict, name: str) -> None:
    run = runs[name]
    assert len(run["calls"]) >= 2, "the point is the calls after the first"
    errors = _replay(model, run)
    print(f"{name}: per-call max-abs-err (wav, source) vs upstream: {[(f'{w:.2g}', f'{s:.2g}') for w, s in errors]}")
    for i, (wav_err, source_err) in enumerate(errors):
        assert source_err <= ATOL, f"call {i + 1}: source differs by {source_err:.3g}"
        assert wav_err <= ATOL, f"call {i + 1}: wav differs by {wav_err:.3g}"


def test_stream_chunks_after_the_first_reuse_upstreams_cache(runs: dict) -> None:
    calls = runs["stream"]["calls"]
    assert calls[0]["cache_source"].shape[2] == 0
    for call in calls[1:]:
        k = call["cache_source"].shape[2]
        assert k > 0 and torch.equal(call["source"][:, :, :k], call["cache_source"])


# -- end to end: cosyml's own v2 streaming session on the same kit -----------------------------------


def _state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """As ``state_dict_sha256`` in the fixture script: keys, dtypes, shapes and bytes, in key order."""
    digest = hashlib.sha256()
    for key, value in state.items():
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def test_streamed_chunks_match_upstream_end_to_end(kit_dir: Path, model: HiFT) -> None:
    """cosyml's StreamSession (schedule, mel and source caches, cross-fade, one vocoder generator for the
    whole request) against the chunks upstream's ``CosyVoice2Model.tts(stream=True)`` yielded on the
    same kit flow and vocoder weights and seed."""
    from cosyml.models.flow import build_flow
    from cosyml.models.modeldir import ModelDir, load_strict
    from cosyml.synth.token2wav import FlowPrompt, Token2Wav

    data = torch.load(FIXTURES / "io.pt", weights_only=True)
    run = data["runs"]["stream"]
    md = ModelDir(kit_dir)
    state = torch.load(md.flow_path, weights_only=True)
    assert _state_dict_sha256(state) == _meta()["kit_flow_weights_sha256"], (
        "the kit's flow weights changed: regenerate with scripts/parity/make_hift_stream_fixtures.py"
    )
    flow = build_flow(md.config)
    load_strict(flow, md.flow_path, part="flow")
    t2w = Token2Wav(flow.eval(), model, chunk_size=md.hparams.chunk_size)
    prompt = FlowPrompt(data["prompt_tokens"].long(), data["prompt_feat"], data["embedding"])
    tokens = run["tokens"].tolist()
    session = t2w.stream(prompt, torch.Generator().manual_seed(run["seed"]))
    mels: list[torch.Tensor] = []  # what our session hands the vocoder, to set the bound below
    vocode = t2w.vocode

    def spy(mel, *args, **kwargs):
        mels.append(mel.clone())
        return vocode(mel, *args, **kwargs)

    t2w.vocode = spy  # type: ignore[method-assign]
    chunks = [c for n in range(1, len(tokens) + 1) for c in session.push(tokens[:n])] + [session.finish(tokens)]
    assert [c.numel() for c in chunks] == [c.numel() for c in run["chunks"]]
    errors = [(ours - theirs).abs().max().item() for ours, theirs in zip(chunks, run["chunks"], strict=True)]
    # The flow's fp32 mel differs from upstream's (different summation order in its 512-wide encoder;
    # tests/test_flow_parity.py bounds it), and the vocoder turns a mel difference into waveform through
    # f0 and the integrated phase. Bound: the vocoder's own bound plus first-order propagation of the mel
    # difference actually present: the wav change when every mel value moves by that much (coherently
    # up, down, or with random signs), x2 for what a 3-probe estimate of the Jacobian can miss.
    calls = run["calls"]
    assert len(mels) == len(calls)
    shift = max((ours - call["mel"]).abs().max().item() for ours, call in zip(mels, calls, strict=True))
    response = max(_mel_shift_response(model, call["mel"], shift) for call in calls) if shift else 0.0
    bound = ATOL + 2.0 * response
    print(f"v2 stream chunks max-abs-err vs upstream: {errors}; mel differs by {shift:.3g}, bound {bound:.3g}")
    assert max(errors) <= bound


def _mel_shift_response(model: HiFT, mel: torch.Tensor, shift: float) -> float:
    """Max wav change when every mel value moves by ``shift`` (all up, all down, random signs), with the
    same noise draws for every run."""

    def run(x: torch.Tensor) -> torch.Tensor:
        return model.inference(x, generator=torch.Generator().manual_seed(0))[0]

    base = run(mel)
    signs = torch.randint(0, 2, mel.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    probes = [torch.full_like(mel, shift), torch.full_like(mel, -shift), shift * signs]
    return max((run(mel + probe) - base).abs().max().item() for probe in probes)
