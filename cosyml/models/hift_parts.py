"""Building blocks of the HiFT vocoder (``cosyml.models.hift``).

Each block's submodule names follow the official ``hift.pt`` key layout (for example
``resblocks.3.convs1.0.parametrizations.weight.original0``), because the attribute names *are* the
checkpoint format. Shapes: ``B`` batch, ``C`` channels, ``T`` mel frames, ``L`` audio samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm


def weight_normed(module: nn.Module) -> nn.Module:
    """Weight-normalize ``module.weight`` over dim 0.

    The state dict then holds ``parametrizations.weight.original0`` (the gain g, shape ``[dim0, 1, ...]``)
    and ``parametrizations.weight.original1`` (the direction v, the full weight shape). For a
    ``ConvTranspose1d`` dim 0 is the *input* channels, so g is ``[in, 1, 1]``.
    """
    return weight_norm(module, name="weight", dim=0)


def fold_weight_norm(module: nn.Module) -> nn.Module:
    """Replace every weight-norm parametrization under ``module`` by its current weight, in place.

    The forward result is unchanged (the stored weight is exactly ``g * v / ||v||`` as computed by the
    parametrization); it only skips recomputing that product on every call. A folded module's state dict
    uses plain ``.weight`` keys, so save checkpoints from an unfolded module. Fold a module of its own,
    not a ``copy.deepcopy`` of one still in use: torch's parametrized modules share their generated
    class across copies, and folding one removes the ``weight`` property from the other as well.
    """
    for sub in module.modules():
        if parametrize.is_parametrized(sub, "weight"):
            parametrize.remove_parametrizations(sub, "weight", leave_parametrized=True)
    return module


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """Padding that keeps the length of a stride-1 convolution with an odd kernel."""
    return (kernel_size * dilation - dilation) // 2


class Snake(nn.Module):
    """Snake activation ``x + sin²(αx) / α`` with a learned per-channel α (linear scale, init 1).

    Input and output ``(B, C, T)``. ``alpha`` is ``[C]``.
    """

    # Guards 1/α; the same constant as the official checkpoints were trained with.
    EPS = 1e-9

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha[None, :, None]
        return x + (1.0 / (alpha + self.EPS)) * torch.sin(x * alpha).pow(2)


class SnakeResBlock(nn.Module):
    """HiFi-GAN residual block with Snake activations: for each dilation d,
    ``x = x + conv2(snake2(conv1_d(snake1(x))))``. Length-preserving, ``(B, C, T) -> (B, C, T)``.

    Keys: ``convs1.{i}``, ``convs2.{i}`` (weight-normed convs), ``activations1.{i}.alpha``,
    ``activations2.{i}.alpha``.
    """

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            weight_normed(
                nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=same_padding(kernel_size, d))
            )
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            weight_normed(nn.Conv1d(channels, channels, kernel_size, padding=same_padding(kernel_size)))
            for _ in dilations
        )
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv1, conv2, act1, act2 in zip(
            self.convs1, self.convs2, self.activations1, self.activations2, strict=True
        ):
            x = conv2(act2(conv1(act1(x)))) + x
        return x


class F0Predictor(nn.Module):
    """Mel -> fundamental frequency: 5 weight-normed k3 convs with ELU, a linear head, ``abs``.

    ``(B, n_mels, T)`` log-mel -> ``(B, T)`` f0 in Hz (non-negative). Keys ``condnet.{0,2,4,6,8}``
    (the odd indices are the parameter-free ELUs) and ``classifier``.
    """

    def __init__(self, in_channels: int = 80, cond_channels: int = 512, num_class: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(5):
            conv = nn.Conv1d(in_channels if i == 0 else cond_channels, cond_channels, 3, padding=1)
            layers += [weight_normed(conv), nn.ELU()]
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(cond_channels, num_class)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        hidden = self.condnet(mel).transpose(1, 2)  # (B, T, cond)
        return self.classifier(hidden).squeeze(-1).abs()


@dataclass(frozen=True)
class SourceNoise:
    """The random draws of the harmonic source, made explicit so a run can be reproduced.

    ``initial_phase``: ``(B, H)`` uniform [0, 1) cycles, one per harmonic (column 0, the fundamental, is
    forced to 0). ``additive``: ``(B, L, H)`` standard-normal noise, ``L`` = audio samples, ``H`` =
    harmonics + 1.
    """

    initial_phase: torch.Tensor
    additive: torch.Tensor

    @staticmethod
    def draw(
        batch: int,
        num_samples: int,
        num_sines: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> SourceNoise:
        """Draw in the order upstream does (phase, then noise), from ``generator`` or the global RNG.

        The noise tensor is a ``(B, L, H)`` view of ``(B, H, L)`` memory, the layout upstream's
        ``randn_like`` inherits from its transposed sine tensor; torch fills a non-contiguous tensor with
        a different sampling routine than a contiguous one, so the layout is part of reproducing it.
        With ``generator = torch.Generator().manual_seed(s)`` the draws equal upstream's after
        ``torch.manual_seed(s)`` on CPU.
        """
        phase = torch.rand(batch, num_sines, generator=generator, device=device)
        noise = torch.empty(batch, num_sines, num_samples, device=device).transpose(1, 2)
        noise.normal_(generator=generator)
        return SourceNoise(initial_phase=phase, additive=noise)


class HarmonicSource(nn.Module):
    """Neural source filter excitation: f0 -> harmonic sines + noise -> one channel (Linear + tanh).

    ``forward(f0 (B, T) Hz, noise) -> (B, 1, L)`` with ``L = T * upsample_scale``. The phase is
    integrated at frame rate and interpolated back to sample rate (the "SineGen2" variant used for
    24 kHz models). Frames with ``f0 <= voiced_threshold`` are unvoiced: their sines are zeroed and the
    noise std rises from ``noise_std`` to ``sine_amp / 3``. Key: ``l_linear`` ``[1, H]``.
    """

    def __init__(
        self,
        sampling_rate: int,
        upsample_scale: int,
        num_harmonics: int,
        sine_amp: float,
        noise_std: float,
        voiced_threshold: float,
    ) -> None:
        super().__init__()
        self.sampling_rate = sampling_rate
        self.upsample_scale = upsample_scale
        self.num_sines = num_harmonics + 1
        self.sine_amp = sine_amp
        self.noise_std = noise_std
        self.voiced_threshold = voiced_threshold
        self.l_linear = nn.Linear(self.num_sines, 1)

    def sines(self, f0_samples: torch.Tensor, noise: SourceNoise) -> torch.Tensor:
        """``(B, L, 1)`` sample-rate f0 -> ``(B, L, H)`` noisy harmonic sines (before merging)."""
        batch, samples, _ = f0_samples.shape
        if noise.initial_phase.shape != (batch, self.num_sines) or noise.additive.shape != (
            batch,
            samples,
            self.num_sines,
        ):
            raise ValueError(
                f"SourceNoise shapes {tuple(noise.initial_phase.shape)}, {tuple(noise.additive.shape)} do not "
                f"fit batch {batch}, {samples} samples, {self.num_sines} sines"
            )
        multiples = torch.arange(1, self.num_sines + 1, dtype=f0_samples.dtype, device=f0_samples.device)
        freqs = f0_samples * multiples  # (B, L, H) Hz
        cycles = (freqs / self.sampling_rate) % 1  # phase increment per sample, in cycles
        phase_offset = noise.initial_phase.to(cycles).clone()
        phase_offset[:, 0] = 0
        # The offset lands on sample 0 only; the linear frame-rate resampling below reads samples
        # scale/2 - 1 and scale/2 of each frame, so it has no effect for scale > 2 (kept for parity).
        cycles[:, 0, :] = cycles[:, 0, :] + phase_offset
        per_frame = F.interpolate(cycles.transpose(1, 2), scale_factor=1 / self.upsample_scale, mode="linear")
        phase = torch.cumsum(per_frame, dim=2) * 2 * math.pi  # radians per frame step, summed
        phase = F.interpolate(phase * self.upsample_scale, scale_factor=self.upsample_scale, mode="linear")
        sines = torch.sin(phase.transpose(1, 2)) * self.sine_amp  # (B, L, H)

        voiced = (f0_samples > self.voiced_threshold).to(sines.dtype)  # (B, L, 1)
        noise_scale = voiced * self.noise_std + (1 - voiced) * self.sine_amp / 3
        return sines * voiced + noise_scale * noise.additive.to(sines)

    def forward(self, f0: torch.Tensor, noise: SourceNoise) -> torch.Tensor:
        f0_samples = F.interpolate(f0[:, None], scale_factor=self.upsample_scale, mode="nearest")
        merged = torch.tanh(self.l_linear(self.sines(f0_samples.transpose(1, 2), noise)))  # (B, L, 1)
        return merged.transpose(1, 2)
