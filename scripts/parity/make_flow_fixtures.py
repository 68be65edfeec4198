"""Write the flow and flow-mel parity fixtures (tests/fixtures/parity/flow/) from upstream CosyVoice.

Run by hand, never from tests, with the upstream venv (it needs hyperpyyaml, omegaconf, diffusers,
einops, conformer, librosa, hydra-core, wget, rich for the Matcha imports):

    /work/upstream/venv/bin/python scripts/parity/make_flow_fixtures.py \
        --upstream /work/upstream/CosyVoice --matcha /work/upstream/paimon/third_party/Matcha-TTS \
        --out tests/fixtures/parity/flow

Model: upstream ``CausalMaskedDiffWithXvec`` built by HyperPyYAML from ``tiny_flow.yaml`` (the official
yaml format with tiny dims; the encoder stays 512 wide because upstream hard-codes that width).

Weights: even the tiny model has ~9 M parameters (36 MB), too big to commit, so every tensor is made by
:func:`hashed_weights`: a counter-based hash (splitmix64 of the element index, seeded by the key name) in
numpy integer arithmetic, identical on every platform and torch version. The test rebuilds the same
weights with this function and checks them against per-key sums stored in ``meta.json``.

Randomness: upstream ``forward`` draws with ``random.random``/``random.randint`` (streaming flag, prompt
lengths) and ``torch.rand``/``torch.randn_like`` (t, noise, CFG dropout). Here those calls are replaced by
scripted values, which are stored, and the test passes the same values to our ``Flow.forward``.

Outputs: ``io.pt`` (inputs, scripted draws, outputs; ``torch.load(weights_only=True)``), ``meta.json``
(upstream commit, versions, weight checksums).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
WAVE_SAMPLES = 12123  # deliberately not a multiple of the 480-sample hop
ESTIMATOR_2LEVEL = {  # a two-level U-Net, to cover the down/up-sampling path CosyVoice2 itself does not use
    "in_channels": 320,
    "out_channels": 80,
    "channels": [32, 32],
    "dropout": 0.0,
    "attention_head_dim": 16,
    "n_blocks": 1,
    "num_mid_blocks": 1,
    "num_heads": 2,
    "act_fn": "gelu",
    "static_chunk_size": 8,
    "num_decoding_left_chunks": -1,
}


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def hashed_uniform(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """float32 values in [-1, 1) of ``shape``, a pure function of (seed, element index)."""
    n = int(np.prod(shape)) if shape else 1
    with np.errstate(over="ignore"):
        counters = np.arange(n, dtype=np.uint64) + np.uint64(seed) * _GOLDEN
    unit = (_splitmix64(counters) >> np.uint64(11)).astype(np.float64) * (2.0**-53)
    return torch.from_numpy((2.0 * unit - 1.0).astype(np.float32).reshape(shape))


def hashed_weights(shapes: dict[str, tuple[int, ...]], salt: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic weights for a state dict layout (key -> shape).

    Matrices and conv kernels: uniform with unit-variance-preserving scale sqrt(3 / fan_in); 1-D
    ``weight`` (norm gains): 1 ± 0.2; biases: ± 0.1; ``pos_bias_u/v``: ± 0.5.
    """
    out = {}
    for key, shape in shapes.items():
        u = hashed_uniform(tuple(shape), zlib.crc32(key.encode()) + salt)
        if key.endswith(("pos_bias_u", "pos_bias_v")):
            out[key] = 0.5 * u
        elif len(shape) >= 2:
            out[key] = u * math.sqrt(3.0 / math.prod(shape[1:]))
        elif key.endswith("weight"):
            out[key] = 1.0 + 0.2 * u
        else:
            out[key] = 0.1 * u
    return out


class _Scripted:
    """Stands in for the ``random`` module inside upstream's flow.py: returns scripted values."""

    def __init__(self, values: list[float | int]) -> None:
        self.values = list(values)

    def random(self) -> float:
        return float(self.values.pop(0))

    def randint(self, low: int, high: int) -> int:
        value = int(self.values.pop(0))
        assert low <= value <= high, (low, value, high)
        return value


@contextmanager
def _scripted_torch(t: torch.Tensor, noise: torch.Tensor, cfg_draw: torch.Tensor) -> Iterator[None]:
    """Make compute_loss's torch.rand([b,1,1]) -> t, torch.randn_like(x1) -> noise, torch.rand(b) -> cfg_draw."""
    real_rand, real_randn_like = torch.rand, torch.randn_like
    rand_queue = [t.view(-1, 1, 1), cfg_draw]

    def rand(*args, **kwargs):
        return rand_queue.pop(0).clone()

    def randn_like(x, *args, **kwargs):
        assert x.shape == noise.shape
        return noise.clone()

    torch.rand, torch.randn_like = rand, randn_like
    try:
        yield
        assert not rand_queue, "upstream drew fewer random tensors than scripted"
    finally:
        torch.rand, torch.randn_like = real_rand, real_randn_like


def _git_commit(repo: Path) -> str:
    try:
        return subprocess.check_output(["git", "-C", str(repo), "rev-parse", "HEAD"], text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", type=Path, default=Path("/work/upstream/CosyVoice"))
    parser.add_argument("--matcha", type=Path, default=Path("/work/upstream/paimon/third_party/Matcha-TTS"))
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "tests/fixtures/parity/flow")
    args = parser.parse_args()
    sys.path[:0] = [str(args.upstream), str(args.matcha)]

    import cosyvoice.flow.flow as upstream_flow_module
    import librosa
    from cosyvoice.flow.decoder import CausalConditionalDecoder
    from hyperpyyaml import load_hyperpyyaml
    from matcha.utils.audio import mel_spectrogram

    yaml_path = args.out / "tiny_flow.yaml"
    with yaml_path.open() as handle:
        conf = load_hyperpyyaml(handle)
    flow = conf["flow"]
    shapes = {k: tuple(v.shape) for k, v in flow.state_dict().items()}
    weights = hashed_weights(shapes)
    flow.load_state_dict(weights, strict=True)
    flow.eval()
    rand_noise = flow.decoder.rand_noise.clone()

    gen = torch.Generator().manual_seed(20240601)
    vocab = conf["flow"].vocab_size
    # ---- a padded training batch: 10 and 7 tokens
    token_len = torch.tensor([10, 7])
    speech_token = torch.randint(0, vocab, (2, 10), generator=gen)
    speech_token[1, 7:] = 0
    feat_len = 2 * token_len
    speech_feat = torch.randn(2, 20, 80, generator=gen) * 2.0 - 6.0
    speech_feat[1, 14:] = 0.0
    embedding = torch.randn(2, 192, generator=gen)
    batch = {
        "speech_token": speech_token,
        "speech_token_len": token_len,
        "speech_feat": speech_feat,
        "speech_feat_len": feat_len,
        "embedding": embedding,
    }
    io: dict[str, torch.Tensor] = {f"batch.{k}": v for k, v in batch.items()}

    with torch.no_grad():
        mask = (torch.arange(10).unsqueeze(0) < token_len.unsqueeze(1)).float().unsqueeze(-1)
        embedded = flow.input_embedding(speech_token.clamp(min=0)) * mask
        for streaming in (False, True):
            h, _ = flow.encoder(embedded, token_len, streaming=streaming)
            io[f"encoder.h.streaming{int(streaming)}"] = h

    # ---- training loss with scripted draws; case = (random values, t, cfg draws)
    cases = [
        # streaming no (0.7 >= 0.5); utt0 gets a prompt (0.9 -> randint 5); utt1 none (0.1 < 0.5)
        ([0.7, 0.9, 5, 0.1], torch.tensor([0.3, 0.85]), torch.tensor([0.9, 0.1])),
        # streaming yes (0.2); utt0 none; utt1 prompt of 4 frames; both keep their conditions
        ([0.2, 0.3, 0.6, 4], torch.tensor([0.05, 0.6]), torch.tensor([0.5, 0.7])),
    ]
    for i, (script, t, cfg_draw) in enumerate(cases):
        noise = torch.randn(2, 80, 20, generator=gen)
        upstream_flow_module.random = _Scripted(script)
        with torch.no_grad(), _scripted_torch(t, noise, cfg_draw):
            loss = flow(dict(batch), torch.device("cpu"))["loss"]
        streaming = script[0] < 0.5
        prompt = []
        rest = script[1:]
        for _ in range(2):
            value = rest.pop(0)
            prompt.append(0 if value < 0.5 else int(rest.pop(0)))
        io[f"loss{i}.streaming"] = torch.tensor(streaming)
        io[f"loss{i}.prompt_frames"] = torch.tensor(prompt)
        io[f"loss{i}.t"] = t
        io[f"loss{i}.noise"] = noise
        io[f"loss{i}.cfg_keep"] = cfg_draw > 0.2
        io[f"loss{i}.loss"] = loss.detach()
        print(f"loss case {i}: streaming={streaming} prompt={prompt} loss={loss.item():.6f}")

    # ---- inference: 6 prompt tokens (12 prompt frames) + 8 new tokens
    prompt_token = torch.randint(0, vocab, (1, 6), generator=gen)
    prompt_feat = torch.randn(1, 12, 80, generator=gen) * 2.0 - 6.0
    token = torch.randint(0, vocab, (1, 8), generator=gen)
    spk = torch.randn(1, 192, generator=gen)
    io.update(
        {
            "infer.token": token,
            "infer.prompt_token": prompt_token,
            "infer.prompt_feat": prompt_feat,
            "infer.embedding": spk,
        }
    )
    for streaming, finalize in ((False, True), (True, False), (True, True)):
        mel, _ = flow.inference(
            token,
            torch.tensor([8]),
            prompt_token,
            torch.tensor([6]),
            prompt_feat,
            torch.tensor([12]),
            spk,
            streaming=streaming,
            finalize=finalize,
        )
        io[f"infer.mel.streaming{int(streaming)}.finalize{int(finalize)}"] = mel.clone()
        print(f"inference streaming={streaming} finalize={finalize}: mel {tuple(mel.shape)}")
    io["fixed_noise_head"] = rand_noise[:, :, :64].clone()

    # ---- a two-level estimator on its own (padding + odd length)
    estimator = CausalConditionalDecoder(**ESTIMATOR_2LEVEL)
    est_shapes = {k: tuple(v.shape) for k, v in estimator.state_dict().items()}
    estimator.load_state_dict(hashed_weights(est_shapes, salt=7), strict=True)
    estimator.eval()
    x = torch.randn(2, 80, 11, generator=gen)
    mu = torch.randn(2, 80, 11, generator=gen)
    cond = torch.randn(2, 80, 11, generator=gen)
    spks = torch.randn(2, 80, generator=gen)
    t = torch.tensor([0.25, 0.9])
    est_mask = (torch.arange(11).unsqueeze(0) < torch.tensor([[11], [8]])).float().unsqueeze(1)
    io.update({"est2.x": x, "est2.mu": mu, "est2.cond": cond, "est2.spks": spks, "est2.t": t, "est2.mask": est_mask})
    with torch.no_grad():
        for streaming in (False, True):
            io[f"est2.out.streaming{int(streaming)}"] = estimator(x, est_mask, mu, t, spks, cond, streaming=streaming)

    # ---- the flow mel front end on a synthetic clip, for fmax 8000 and fmax None (sr/2)
    n = torch.arange(WAVE_SAMPLES, dtype=torch.float64) / 24000
    wave = 0.4 * torch.sin(2 * math.pi * 220 * n) + 0.2 * torch.sin(2 * math.pi * 3150 * n * (1 + n))
    wave = (wave + 0.05 * torch.randn(WAVE_SAMPLES, generator=gen, dtype=torch.float64)).float().unsqueeze(0)
    io["mel.wave"] = wave
    for fmax in (8000, None):
        tag = "none" if fmax is None else str(fmax)
        io[f"mel.out.fmax_{tag}"] = mel_spectrogram(wave, 1920, 80, 24000, 480, 1920, 0, fmax, center=False)
        basis = librosa.filters.mel(sr=24000, n_fft=1920, n_mels=80, fmin=0, fmax=fmax)
        io[f"mel.basis.fmax_{tag}"] = torch.from_numpy(basis)

    torch.save(io, args.out / "io.pt")
    meta = {
        "upstream_commit": _git_commit(args.upstream),
        "torch": torch.__version__,
        "librosa": librosa.__version__,
        "yaml": "tiny_flow.yaml",
        "weights": "hashed_weights(state-dict shapes) from scripts/parity/make_flow_fixtures.py",
        "weight_sums": {k: float(v.double().sum()) for k, v in weights.items()},
        "estimator_2level": ESTIMATOR_2LEVEL,
        "estimator_2level_salt": 7,
        "num_parameters": sum(v.numel() for v in weights.values()),
    }
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {args.out / 'io.pt'} ({(args.out / 'io.pt').stat().st_size} bytes) and meta.json")


if __name__ == "__main__":
    main()
