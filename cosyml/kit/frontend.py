"""Tiny front-end models with the official ONNX interfaces, and ``write_frontend_kit``.

Official names (see the report in ``docs``/README; sources: CosyVoice's TensorRT runtime code and
third-party runtimes that address the files by name):

- ``campplus.onnx``: input ``input`` float32 (B, T, 80) -> output ``output`` float32 (B, 192).
- ``speech_tokenizer_v2.onnx``: inputs ``feats`` float32 (B, 128, T) and ``feats_length`` int32 (B,)
  -> output ``indices`` int32 (B, ceil(ceil(T/2)/2)) with ids in [0, 6561). No lengths output.

The stand-ins are torch modules exported with the legacy exporter (``dynamo=False``) with dynamic batch
and time axes. The tokenizer (random weights) masks by ``feats_length`` (as the official batch model
must) so padded batches give the same ids as single runs. The CAM++ stand-in
(:class:`SpectralCampPlus`) has no learned weights: it pools spectral statistics that differ between
voices (harmonic ripple across frequency, which follows the pitch; per-band spread), so a speaker check
can tell two espeak voices apart; it pools over every frame like the real one, so padding changes its
output (the batching code has to and does cope with that). :class:`TinyCampPlus` (random conv stack)
stays for benchmarks that need the official model's compute shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cosyml.kit.tokenizer import write_tiny_tokenizer
from cosyml.kit.whisper import write_tiny_whisper
from cosyml.models.keys import CAMPPLUS_NAME

SPEECH_TOKENIZER_FILES = {"cosyvoice2": "speech_tokenizer_v2.onnx", "cosyvoice3": "speech_tokenizer_v3.onnx"}
SPEECH_TOKEN_VOCAB = 6561  # 3 ** 8 FSQ codes
ONNX_OPSET = 17


class TinyCampPlus(nn.Module):
    """(B, T, 80) fbank -> (B, 192): conv stack, mean+std pooling over all frames, linear."""

    def __init__(self, width: int = 32, depth: int = 1, num_bins: int = 80, dim: int = 192) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv1d(num_bins, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Conv1d(width, width, 3, padding=1), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(2 * width, dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        h = self.body(feats.transpose(1, 2))  # (B, width, T)
        stats = torch.cat([h.mean(dim=2), h.std(dim=2)], dim=1)  # (B, 2 * width)
        return self.head(stats)


class SpectralCampPlus(nn.Module):
    """(B, T, 80) fbank (per-utterance mean removed) -> (B, 192): a deterministic "speaker" embedding.

    Three statistics pooled over all frames, each made independent of loudness where it can be:

    - harmonic ripple, 79 values: log mean over frames of the squared difference between neighbouring
      mel bins, minus its mean over bins. Low mel bins resolve the harmonics, so its shape follows
      the pitch and the voice's spectral fine structure more than the words;
    - spread, 80 values: log standard deviation of each bin over frames (the input is mean-removed),
      minus its mean over bins: where in the spectrum the voice moves;
    - level, 1 value: that mean (the overall dynamic range), scaled down; it makes zero-padding change
      the output as it does for the real CAM++.

    The 160 statistics are mapped into 192 dims by a fixed matrix with orthonormal columns (a
    reflection drawn from ``seed``), which keeps every cosine similarity between them. What it can show: which clips differ
    in pitch or timbre from the rest (two espeak voices separate by far). What it cannot: it is not
    trained, so it does not ignore what real speaker embeddings ignore (content, channel, emotion).
    """

    projection: torch.Tensor  # (dim, 2 * num_bins) orthonormal columns (a buffer)

    def __init__(self, seed: int = 0, num_bins: int = 80, dim: int = 192, level_weight: float = 0.1) -> None:
        super().__init__()
        # A Householder reflection I - 2 v v^T / |v|^2 is orthogonal; its first 160 columns are
        # orthonormal. (No QR: LAPACK's start-up costs a second on a busy machine, for every kit.)
        v = torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        reflection = torch.eye(dim, dtype=torch.float64) - 2.0 * torch.outer(v, v) / torch.dot(v, v)
        self.register_buffer("projection", reflection[:, : 2 * num_bins].to(torch.float32).contiguous())
        self.level_weight = level_weight

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        ripple = torch.log((feats[:, :, 1:] - feats[:, :, :-1]).pow(2).mean(dim=1) + 1e-4)  # (B, 79)
        ripple = ripple - ripple.mean(dim=1, keepdim=True)
        spread = 0.5 * torch.log(feats.pow(2).mean(dim=1) + 1e-4)  # (B, 80) log std per bin
        level = spread.mean(dim=1, keepdim=True)  # (B, 1)
        stats = torch.cat([ripple, spread - level, self.level_weight * level], dim=1)  # (B, 160)
        return stats @ self.projection.T


class TinySpeechTokenizer(nn.Module):
    """(B, 128, T) log-mel + (B,) lengths -> (B, ceil(ceil(T/2)/2)) FSQ ids in [0, 3**8).

    Two stride-2 convs (25 Hz), optional extra convs, a projection to 8 dims and 3-level rounding.
    Every layer zeroes frames past each utterance's length, so padding never leaks into valid frames.
    """

    powers: torch.Tensor  # (8,) 3**k, the base-3 digit weights (a buffer)

    def __init__(self, width: int = 32, depth: int = 0, num_mels: int = 128, gain: float = 3.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(num_mels, width, 3, stride=2, padding=1)
        self.conv2 = nn.Conv1d(width, width, 3, stride=2, padding=1)
        self.blocks = nn.ModuleList(nn.Conv1d(width, width, 3, padding=1) for _ in range(depth))
        self.width = width
        self.project = nn.Linear(width, 8)
        self.gain = gain
        self.register_buffer("powers", 3 ** torch.arange(8, dtype=torch.int64), persistent=False)

    @staticmethod
    def _mask(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(x.shape[2], device=x.device)[None, :]
        return x * (steps < lengths[:, None]).to(x.dtype)[:, None, :]

    def forward(self, feats: torch.Tensor, feats_length: torch.Tensor) -> torch.Tensor:
        lengths = feats_length.to(torch.int64)
        x = self._mask(feats, lengths)
        lengths = torch.div(lengths + 1, 2, rounding_mode="floor")
        x = self._mask(torch.nn.functional.gelu(self.conv1(x)), lengths)
        lengths = torch.div(lengths + 1, 2, rounding_mode="floor")
        x = self._mask(torch.nn.functional.gelu(self.conv2(x)), lengths)
        for block in self.blocks:
            x = self._mask(x + torch.nn.functional.gelu(block(x)), lengths)
        h = torch.nn.functional.layer_norm(x.transpose(1, 2), (self.width,))  # (B, L, width) per frame
        z = torch.tanh(self.gain * self.project(h))  # (B, L, 8) in (-1, 1)
        digits = torch.round(z).to(torch.int64) + 1  # {0, 1, 2}
        return (digits * self.powers).sum(dim=2).to(torch.int32)


def export_campplus(path: str | Path, seed: int = 0, width: int = 32, depth: int = 1, kind: str = "spectral") -> Path:
    """Export a CAM++ stand-in with the official names and dynamic (batch, frames) axes.

    ``kind`` "spectral": :class:`SpectralCampPlus` (the kit's; ``width``/``depth`` unused); "random": a
    random-weight :class:`TinyCampPlus` of ``width`` x ``depth`` (benchmarks of the compute shape).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if kind not in ("spectral", "random"):
        raise ValueError(f"export_campplus: kind {kind!r} is not 'spectral' or 'random'")
    model: nn.Module = SpectralCampPlus(seed) if kind == "spectral" else TinyCampPlus(width=width, depth=depth)
    model.eval()
    example = torch.randn(1, 120, 80)
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch", 1: "frames"}, "output": {0: "batch"}},
        opset_version=ONNX_OPSET,
        dynamo=False,
    )
    return path


def export_speech_tokenizer(path: str | Path, seed: int = 0, width: int = 32, depth: int = 0) -> Path:
    """Export a :class:`TinySpeechTokenizer` with the official names and dynamic (batch, time) axes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed + 1)
    model = TinySpeechTokenizer(width=width, depth=depth).eval()
    feats = torch.randn(1, 128, 203)
    lengths = torch.tensor([203], dtype=torch.int32)
    torch.onnx.export(
        model,
        (feats, lengths),
        str(path),
        input_names=["feats", "feats_length"],
        output_names=["indices"],
        dynamic_axes={
            "feats": {0: "batch", 2: "frames"},
            "feats_length": {0: "batch"},
            "indices": {0: "batch", 1: "tokens"},
        },
        opset_version=ONNX_OPSET,
        dynamo=False,
    )
    return path


@dataclass(frozen=True)
class FrontendKit:
    """Paths of the front-end files ``write_frontend_kit`` wrote."""

    model_dir: Path
    campplus: Path
    speech_tokenizer: Path
    tokenizer_dir: Path
    whisper: Path


def write_frontend_kit(
    model_dir: str | Path, seed: int = 0, version: str = "cosyvoice2", official_text_ids: bool = False
) -> FrontendKit:
    """Write the front-end part of a tiny model directory (official file names and layout).

    ``campplus.onnx``, ``speech_tokenizer_v2.onnx`` (``_v3`` for version "cosyvoice3"),
    ``CosyVoice-BlankEN/`` tokenizer files (``official_text_ids``: specials at their official ids, see
    :mod:`cosyml.kit.tokenizer`) and a tiny ``whisper.pt`` for transcription. Deterministic for a given
    seed; nothing is downloaded.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    return FrontendKit(
        model_dir=model_dir,
        campplus=export_campplus(model_dir / CAMPPLUS_NAME, seed),
        speech_tokenizer=export_speech_tokenizer(model_dir / SPEECH_TOKENIZER_FILES[version], seed),
        tokenizer_dir=write_tiny_tokenizer(model_dir, official_ids=official_text_ids),
        whisper=write_tiny_whisper(model_dir / "whisper.pt", seed=seed),
    )
