"""Write the CosyVoice3 causal HiFT parity fixtures (tests/fixtures/parity/hift_v3/) from upstream CosyVoice.

Run by hand, never from tests, with the upstream venv (recipe in ``_upstream_loader.py``):

    cosyml kit /work/upstream/kits/v3 --version cosyvoice3 --official-text-ids
    /work/upstream/venv/bin/python scripts/parity/make_hift_v3_fixtures.py \
        --kit /work/upstream/kits/v3 --out tests/fixtures/parity/hift_v3

The vocoder is the ``CausalHiFTGenerator`` that upstream's own ``CosyVoice3(kit)`` loader builds for the
tiny kit (base_channels 32, f0 cond_channels 32, the real CosyVoice3 structure otherwise: k5 conv_pre
with 4 frames of look-ahead, rates 8·5·3, n_fft 16). Its weights are then replaced by random ones in
the official key layout, and f0 (float64), source and waveform are recorded for fixed mels, whole
(finalize=True) and as a streaming prefix (finalize=False).

Randomness: in eval mode the causal source never draws at inference; it reads the tables upstream drew
from the global RNG while the loader built the model (``torch.manual_seed(0)`` in the flow's
``CausalConditionalCFM``, then the flow's and the f0 predictor's inits, then ``rand(1, 9)`` and
``rand(1, 7200000, 9)``). Nothing here seeds anything before the loader: the tables are what any
``CosyVoice3(dir)`` of these sizes gets. Stored: the phases, the first samples of the table, rows far into
it and the sha256 of the whole table (float32 bytes), which
``cosyml.models.hift_causal.upstream_source_noise`` must reproduce.

Upstream's ``inference`` converts its f0 predictor to float64 in place, so the state dict is saved
before any inference.

Outputs: ``hift_tiny.pt`` (state dict, ``parametrizations.weight.original0/1``), ``hift_tiny_legacy.pt``
(the same weights as ``generator.``-prefixed ``weight_g``/``weight_v``; checked here to give upstream's
old-API module identical output), ``io.pt`` (inputs, draws, outputs), ``meta.json`` (config, commit,
versions) and ``v3_hift_keys.tsv`` (full-size key/shape rows copied from the reference TSV).
"""

from __future__ import annotations

import argparse
import hashlib
import json
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
    "conv_pre_look_right": 4,
}
F0_TINY = {"num_class": 1, "in_channels": 80, "cond_channels": 32}
FAR_ROWS = (24000, 1_000_003, 7_199_999)  # table rows stored besides the first ones (last row included)
T_MAIN, T_STREAM, T_BATCH = 20, 14, 10
SAMPLES_PER_FRAME = 480


def _import_upstream(root: Path):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _upstream_loader import import_upstream

    cosyvoice = import_upstream(root)
    from cosyvoice.hifigan import f0_predictor, generator

    return cosyvoice, generator, f0_predictor


def load_upstream_hift(cosyvoice, kit: Path) -> torch.nn.Module:
    """The vocoder of upstream's own ``CosyVoice3(kit)`` (its fixed noise tables as that loader draws them)."""
    hift = cosyvoice.CosyVoice3(str(kit)).model.hift
    assert isinstance(hift.m_source.l_sin_gen.sine_waves, torch.Tensor)
    got = {k: tuple(v.shape) for k, v in hift.state_dict().items()}
    f0 = hift.f0_predictor.condnet[0]
    assert f0.weight.shape[0] == F0_TINY["cond_channels"] and hift.conv_pre.weight.shape[0] == TINY["base_channels"], (
        f"the kit's vocoder sizes differ from the fixture's ({len(got)} keys)"
    )
    return hift.eval()


def _build(generator, f0_module, tables_from: torch.nn.Module) -> torch.nn.Module:
    """A second upstream module of the same sizes, with ``tables_from``'s fixed noise tables."""
    f0 = f0_module.CausalConvRNNF0Predictor(**F0_TINY)
    model = generator.CausalHiFTGenerator(**TINY, f0_predictor=f0).eval()
    model.m_source.l_sin_gen.rand_ini = tables_from.m_source.l_sin_gen.rand_ini
    model.m_source.l_sin_gen.sine_waves = tables_from.m_source.l_sin_gen.sine_waves
    return model


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
    cls.bias.fill_(0.0)
    post = model.conv_post.parametrizations.weight.original0
    post.copy_(torch.rand(post.shape, generator=gen) * 0.5 + 0.5)


@torch.no_grad()
def _center_f0(model: torch.nn.Module, mel: torch.Tensor) -> None:
    """Shift the f0 head so the main mel's 5th-lowest raw f0 lands on 0 Hz: that frame (and any within
    10 Hz of it) is unvoiced, the others voiced at up to a few hundred Hz."""
    x = mel
    for layer in model.f0_predictor.condnet:
        x = layer(x)
    raw = model.f0_predictor.classifier(x.transpose(1, 2)).flatten()
    model.f0_predictor.classifier.bias.fill_(-raw.sort().values[4].item())


def _legacy_copy(generator, f0_module, state: dict[str, torch.Tensor], tables_from) -> torch.nn.Module:
    """The same model built with torch's old weight norm (weight_g / weight_v parameters)."""
    old_wn = torch.nn.utils.weight_norm
    saved = (generator.weight_norm, f0_module.weight_norm)
    generator.weight_norm = old_wn
    f0_module.weight_norm = old_wn
    try:
        model = _build(generator, f0_module, tables_from)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", type=Path, default=Path("/work/upstream/CosyVoice"))
    parser.add_argument("--kit", type=Path, default=Path("/work/upstream/kits/v3"))
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/parity/hift_v3"))
    parser.add_argument("--tsv", type=Path, default=Path("/work/shared/reference/upstream-state-dicts.tsv"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    cosyvoice, generator, f0_module = _import_upstream(args.upstream.resolve())
    from _upstream_loader import upstream_commit

    commit = upstream_commit(args.upstream)

    data = torch.Generator().manual_seed(1)
    mel = torch.randn(1, 80, T_MAIN, generator=data) * 1.5 - 5.0
    mel_batch = torch.randn(2, 80, T_BATCH, generator=data) * 1.5 - 5.0
    mel_stream = mel[:, :, :T_STREAM].clone()

    model = load_upstream_hift(cosyvoice, args.kit)
    _randomize(model, seed=0)
    _center_f0(model, mel)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    assert all(v.dtype == torch.float32 for v in state.values())
    sine_gen = model.m_source.l_sin_gen
    initial_phase = sine_gen.rand_ini.clone()
    additive = sine_gen.sine_waves[:, : T_MAIN * SAMPLES_PER_FRAME].clone()
    table = sine_gen.sine_waves.contiguous()
    table_sha256 = hashlib.sha256(table.numpy().tobytes()).hexdigest()
    far_rows = table[0, list(FAR_ROWS)].clone()

    with torch.inference_mode():
        wav, source = model.inference(speech_feat=mel, finalize=True)
        wav_stream, source_stream = model.inference(speech_feat=mel_stream, finalize=False)
        wav_batch, source_batch = model.inference(speech_feat=mel_batch, finalize=True)
        # inference() has turned the f0 predictor to float64 already; these are its float64 outputs.
        f0 = model.f0_predictor(mel.to(torch.float64), finalize=True)
        f0_stream = model.f0_predictor(mel_stream.to(torch.float64), finalize=False)
    assert f0.dtype == torch.float64
    stream_vs_full = (wav_stream - wav[:, : wav_stream.shape[1]]).abs().max().item()
    print(f"upstream stream prefix vs full: {stream_vs_full:.3g} ({wav_stream.shape[1]} samples)")

    legacy_model = _legacy_copy(generator, f0_module, state, model)
    with torch.inference_mode():
        wav_legacy, _ = legacy_model.inference(speech_feat=mel, finalize=True)
    assert torch.equal(wav_legacy, wav), "old-API weight norm model disagrees with the new one"
    legacy_model.f0_predictor.float()  # undo upstream's in-place float64 conversion before saving
    legacy_state = {"generator." + k: v.detach().clone() for k, v in legacy_model.state_dict().items()}
    assert all(v.dtype == torch.float32 for v in legacy_state.values())

    voiced = (f0 > TINY["nsf_voiced_threshold"]).double().mean().item()
    assert 0 < voiced < 1, f"voiced fraction {voiced}: the fixture must have voiced and unvoiced frames"
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
            "noise_table_rows": torch.tensor(FAR_ROWS),
            "noise_table_far": far_rows,
            "wav": wav.clone(),
            "source": source.clone(),
            "mel_stream": mel_stream,
            "f0_stream": f0_stream.clone(),
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
        "kit": "cosyml kit DIR --version cosyvoice3 --official-text-ids (hift weights replaced, see script)",
        "randomness": "the fixed noise tables of upstream's CosyVoice3(kit) loader, nothing seeded by this "
        "script; reproduce with cosyml.models.hift_causal.upstream_source_noise(L, config)",
        "noise_table_shape": list(table.shape),
        "noise_table_sha256": table_sha256,
        "upstream_stream_prefix_max_abs_diff": stream_vs_full,
        "voiced_fraction": voiced,
        "clipped_fraction": clipped,
    }
    (args.out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")

    rows = [line for line in args.tsv.read_text().splitlines() if line.startswith("v3\thift.pt\t")]
    (args.out / "v3_hift_keys.tsv").write_text("\n".join(rows) + "\n")
    print(f"wrote {args.out} ({len(state)} tiny keys, {len(rows)} full-size rows, upstream {commit[:7]})")


if __name__ == "__main__":
    main()
