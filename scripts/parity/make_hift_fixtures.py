"""Write the HiFT parity fixtures (tests/fixtures/parity/hift/) from upstream CosyVoice.

Run by hand, never from tests, with the upstream venv:

    /work/upstream/venv/bin/python scripts/parity/make_hift_fixtures.py \
        --upstream /work/upstream/CosyVoice --out tests/fixtures/parity/hift

It builds upstream ``HiFTGenerator`` with tiny channel counts (base_channels 32, f0 cond_channels 32)
and the real CosyVoice2 structure otherwise, gives it random weights in the official key layout, and
records f0, source and waveform for a fixed mel.

Randomness: upstream draws inside ``inference`` from the global RNG, in this order on CPU:
``torch.rand(B, 9)`` (initial harmonic phases), ``torch.randn_like`` of a ``(B, L, 9)`` tensor whose
memory is laid out as ``(B, 9, L)`` (additive noise; torch samples a non-contiguous tensor element by
element, so the layout matters), then a
``(B, L, 1)`` draw that inference never uses. The main run records the first two draws by wrapping
``torch.rand`` / ``torch.randn_like``. We call ``torch.manual_seed(seed)`` right before
each upstream call; ``cosyml.models.hift.SourceNoise.draw(..., generator=torch.Generator().manual_seed(seed))``
makes the same two draws. The main case also stores the draws themselves, so the parity test does not
depend on the RNG algorithm of the installed torch.

Outputs: ``hift_tiny.pt`` (state dict, ``parametrizations.weight.original0/1``),
``hift_tiny_legacy.pt`` (the same weights as ``generator.``-prefixed ``weight_g``/``weight_v``, as saved
by older torch weight norm; checked here to give upstream's old-API module identical output),
``io.pt`` (inputs, draws, outputs), ``meta.json`` (config, seeds, commit, versions), and
``v2_hift_keys.tsv`` (full-size key/shape rows copied from the reference TSV).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

TINY = {
    "in_channels": 80,
    "base_channels": 32,
    "nb_harmonics": 8,
    "sampling_rate": 24000,
    "nsf_alpha": 0.1,
    "nsf_sigma": 0.003,
    "nsf_voiced_threshold": 10,
    "upsample_rates": [8, 5, 3],
    "upsample_kernel_sizes": [16, 11, 7],
    "istft_params": {"n_fft": 16, "hop_len": 4},
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "source_resblock_kernel_sizes": [7, 7, 11],
    "source_resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "lrelu_slope": 0.1,
    "audio_limit": 0.99,
}
F0_TINY = {"num_class": 1, "in_channels": 80, "cond_channels": 32}
SEED_MAIN, SEED_STREAM, SEED_BATCH = 1234, 4321, 777
T_MAIN, T_NEW_STREAM, T_BATCH = 16, 8, 8
MEL_CACHE_FRAMES, SOURCE_CACHE_SAMPLES = 8, 3840  # upstream CosyVoice2Model streaming cache sizes


def _import_upstream(root: Path):
    sys.path[:0] = [str(root), str(root.parent / "paimon" / "third_party" / "Matcha-TTS")]
    from cosyvoice.hifigan import f0_predictor, generator

    return generator, f0_predictor


def _build(generator, f0_module) -> torch.nn.Module:
    f0 = f0_module.ConvRNNF0Predictor(**F0_TINY)
    return generator.HiFTGenerator(**TINY, f0_predictor=f0).eval()


@torch.no_grad()
def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Random weights at scales that keep every path active: some frames voiced (f0 > 10 Hz) and some
    not, and a waveform that mostly stays inside the ±0.99 clamp."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("alpha"):
            p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
        elif name.endswith("original0"):  # weight-norm gain
            p.copy_(torch.rand(p.shape, generator=gen) * 0.5 + 0.25)
        elif name.endswith("bias"):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        else:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    cls = model.f0_predictor.classifier
    cls.weight.copy_(torch.randn(cls.weight.shape, generator=gen) * 300.0)
    cls.bias.fill_(30.0)
    post = model.conv_post.parametrizations.weight.original0
    post.copy_(torch.rand(post.shape, generator=gen) * 0.5 + 0.5)


def _legacy_copy(generator, f0_module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The same model built with torch's old weight norm (weight_g / weight_v parameters)."""
    old_wn = torch.nn.utils.weight_norm
    saved = (generator.weight_norm, f0_module.weight_norm)
    generator.weight_norm = old_wn
    f0_module.weight_norm = old_wn
    try:
        model = _build(generator, f0_module)
    finally:
        generator.weight_norm, f0_module.weight_norm = saved
    legacy = {}
    for key in model.state_dict():
        if key.endswith(".weight_g"):
            legacy[key] = state[key[: -len(".weight_g")] + ".parametrizations.weight.original0"]
        elif key.endswith(".weight_v"):
            legacy[key] = state[key[: -len(".weight_v")] + ".parametrizations.weight.original1"]
        else:
            legacy[key] = state[key]
    model.load_state_dict(legacy, strict=True)
    return model


def _run(model: torch.nn.Module, mel: torch.Tensor, seed: int, cache: torch.Tensor | None = None):
    torch.manual_seed(seed)
    if cache is None:
        return model.inference(speech_feat=mel)
    return model.inference(speech_feat=mel, cache_source=cache)


def _run_recording_draws(model: torch.nn.Module, mel: torch.Tensor, seed: int):
    """Run upstream and record what its ``torch.rand`` / ``torch.randn_like`` calls returned."""
    draws: dict[str, list[torch.Tensor]] = {"rand": [], "randn_like": []}
    real_rand, real_randn_like = torch.rand, torch.randn_like

    def rand(*args, **kwargs):
        out = real_rand(*args, **kwargs)
        draws["rand"].append(out.clone())
        return out

    def randn_like(*args, **kwargs):
        out = real_randn_like(*args, **kwargs)
        draws["randn_like"].append(out.clone())
        return out

    torch.rand, torch.randn_like = rand, randn_like
    try:
        outputs = _run(model, mel, seed)
    finally:
        torch.rand, torch.randn_like = real_rand, real_randn_like
    return outputs, draws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", type=Path, default=Path("/work/upstream/CosyVoice"))
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/parity/hift"))
    parser.add_argument("--tsv", type=Path, default=Path("/work/shared/reference/upstream-state-dicts.tsv"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    generator, f0_module = _import_upstream(args.upstream.resolve())
    commit = subprocess.run(
        ["git", "-C", str(args.upstream), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()

    model = _build(generator, f0_module)
    _randomize(model, seed=0)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}

    data = torch.Generator().manual_seed(1)
    mel = torch.randn(1, 80, T_MAIN, generator=data) * 1.5 - 5.0
    mel_new = torch.randn(1, 80, T_NEW_STREAM, generator=data) * 1.5 - 5.0
    mel_batch = torch.randn(2, 80, T_BATCH, generator=data) * 1.5 - 5.0

    with torch.inference_mode():
        f0 = model.f0_predictor(mel)
    (wav, source), draws = _run_recording_draws(model, mel, SEED_MAIN)

    # The draws upstream made for the main case: the initial phases (first torch.rand, recorded before
    # upstream zeroes column 0) and the additive noise (first randn_like: logically (B, L, 9), laid out
    # in memory as (B, 9, L) because it copies the strides of a transposed tensor, and torch's normal_
    # on a non-contiguous tensor samples element by element, unlike randn on a contiguous one).
    # A private generator seeded alike, filling a tensor of the same layout, reproduces both.
    initial_phase = draws["rand"][0]
    additive = draws["randn_like"][0]
    private = torch.Generator().manual_seed(SEED_MAIN)
    assert torch.equal(initial_phase, torch.rand(1, 9, generator=private))
    same_layout = torch.empty(1, 9, T_MAIN * 480).transpose(1, 2).normal_(generator=private)
    assert torch.equal(additive, same_layout)
    additive = additive.contiguous()

    # Streaming: prepend the cached mel tail, overwrite the source head with the cached source tail.
    mel_stream = torch.cat([mel[:, :, -MEL_CACHE_FRAMES:], mel_new], dim=2)
    cache = source[:, :, -SOURCE_CACHE_SAMPLES:].clone()
    wav_stream, source_stream = _run(model, mel_stream, SEED_STREAM, cache)
    assert torch.equal(source_stream[:, :, :SOURCE_CACHE_SAMPLES], cache)

    wav_batch, source_batch = _run(model, mel_batch, SEED_BATCH)

    legacy_model = _legacy_copy(generator, f0_module, state)
    wav_legacy, _ = _run(legacy_model, mel, SEED_MAIN)
    assert torch.equal(wav_legacy, wav), "old-API weight norm model disagrees with the new one"
    legacy_state = {"generator." + k: v.detach().clone() for k, v in legacy_model.state_dict().items()}

    voiced = (f0 > TINY["nsf_voiced_threshold"]).float().mean().item()
    clipped = (wav.abs() >= TINY["audio_limit"]).float().mean().item()
    print(f"voiced frames {voiced:.2f}, clipped samples {clipped:.3f}, wav std {wav.std():.4f}")

    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.out / "hift_tiny.pt")
    torch.save(legacy_state, args.out / "hift_tiny_legacy.pt")
    torch.save(
        {
            "mel": mel,
            "f0": f0.clone(),
            "initial_phase": initial_phase,
            "additive_noise": additive,
            "wav": wav.clone(),
            "source": source.clone(),
            "mel_stream": mel_stream,
            "cache_source": cache,
            "wav_stream": wav_stream.clone(),
            "source_stream": source_stream.clone(),
            "mel_batch": mel_batch,
            "wav_batch": wav_batch.clone(),
            "source_batch": source_batch.clone(),
        },
        args.out / "io.pt",
    )
    meta = {
        "upstream": "FunAudioLLM/CosyVoice",
        "upstream_commit": commit,
        "torch": torch.__version__,
        "hift": {**TINY, "f0_predictor": F0_TINY},
        "seeds": {"main": SEED_MAIN, "stream": SEED_STREAM, "batch": SEED_BATCH},
        "randomness": "torch.manual_seed(seed) right before each upstream inference; reproduce with "
        "SourceNoise.draw(B, L, 9, generator=torch.Generator().manual_seed(seed))",
        "voiced_fraction": voiced,
        "clipped_fraction": clipped,
    }
    (args.out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")

    rows = [line for line in args.tsv.read_text().splitlines() if line.startswith("v2\thift.pt\t")]
    (args.out / "v2_hift_keys.tsv").write_text("\n".join(rows) + "\n")
    print(f"wrote {args.out} ({len(state)} tiny keys, {len(rows)} full-size rows, upstream {commit[:7]})")


if __name__ == "__main__":
    main()
