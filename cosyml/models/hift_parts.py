"""Building blocks of the HiFT vocoders (``cosyml.models.hift``, ``cosyml.models.hift_causal``).

Each block's submodule names follow the official ``hift.pt`` key layout (for example
``resblocks.3.convs1.0.parametrizations.weight.original0``), because the attribute names *are* the
checkpoint format. Shapes: ``B`` batch, ``C`` channels, ``T`` mel frames, ``L`` audio samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
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


class CausalConv1d(nn.Conv1d):
    """Stride-1, length-preserving conv that pads on one side only.

    ``look_ahead=False`` (causal): output frame t reads input frames ``t - pad .. t``;
    ``look_ahead=True``: it reads ``t .. t + pad``, with ``pad = (kernel_size - 1) * dilation``.
    ``forward(x (B, C_in, T), context (B, C_in, pad) | None) -> (B, C_out, T)``: ``context`` holds the
    real frames before (causal) or after (look-ahead) ``x``; without it they are zeros.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1, look_ahead: bool = False
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation)
        if kernel_size % 2 == 0 and dilation != 1:
            raise ValueError("an even kernel needs dilation 1 to keep the length")
        self.pad = (kernel_size - 1) * dilation
        self.look_ahead = look_ahead

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is None:
            x = F.pad(x, (0, self.pad) if self.look_ahead else (self.pad, 0))
        elif context.shape[2] != self.pad:
            raise ValueError(f"context has {context.shape[2]} frames; this conv needs {self.pad}")
        else:
            x = torch.cat([x, context] if self.look_ahead else [context, x], dim=2)
        return super().forward(x)


class CausalDownsample(nn.Conv1d):
    """Strided causal conv: ``(B, C_in, T) -> (B, C_out, ceil(T / rate))``, kernel ``2 * rate``,
    ``rate - 1`` zeros on the left. Output step j reads input steps ``j*rate - rate + 1 .. j*rate + rate``."""

    def __init__(self, in_channels: int, out_channels: int, rate: int) -> None:
        super().__init__(in_channels, out_channels, 2 * rate, stride=rate)
        self.pad = rate - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.pad, 0)))


class CausalUpsample(nn.Conv1d):
    """Nearest-neighbour ×``rate`` then a causal stride-1 conv: ``(B, C_in, T) -> (B, C_out, T * rate)``.

    A plain ``Conv1d`` (weight ``[out, in, k]``), so its weight-norm gain is ``[out, 1, 1]``, unlike the
    ``ConvTranspose1d`` of the CosyVoice2 vocoder.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, rate: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size)
        self.rate = rate
        self.pad = kernel_size - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=self.rate, mode="nearest")
        return super().forward(F.pad(x, (self.pad, 0)))


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
    ``causal=True`` pads every conv on the left only (:class:`CausalConv1d`), as in CosyVoice3.

    Keys: ``convs1.{i}``, ``convs2.{i}`` (weight-normed convs), ``activations1.{i}.alpha``,
    ``activations2.{i}.alpha``.
    """

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int], causal: bool = False) -> None:
        super().__init__()

        def conv(dilation: int) -> nn.Module:
            if causal:
                return weight_normed(CausalConv1d(channels, channels, kernel_size, dilation=dilation))
            padding = same_padding(kernel_size, dilation)
            return weight_normed(nn.Conv1d(channels, channels, kernel_size, dilation=dilation, padding=padding))

        self.convs1 = nn.ModuleList(conv(d) for d in dilations)
        self.convs2 = nn.ModuleList(conv(1) for _ in dilations)
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


def _call_in_dtype(module: nn.Module, dtype: torch.dtype, *args: torch.Tensor | None) -> torch.Tensor:
    """Run ``module`` with its parameters cast to ``dtype`` (weight norm recomputed in that dtype), leaving
    the stored parameters untouched."""
    params = {name: p.to(dtype) for name, p in module.named_parameters()}
    return functional_call(module, params, args)


class CausalF0Predictor(nn.Module):
    """CosyVoice3 f0 predictor: like :class:`F0Predictor`, but the first conv is k4 with 3 frames of
    look-ahead and the other four are k3 causal.

    ``forward(mel (B, n_mels, T), finalize) -> (B, T')`` f0 in Hz (non-negative). ``finalize=True``:
    ``T' = T`` (the look-ahead past the end is zeros); ``finalize=False``: the last ``look_ahead`` frames
    only serve as look-ahead, ``T' = T - look_ahead``. Computed in ``compute_dtype`` (float64 by default,
    as upstream does: the causal source integrates f0 over the whole utterance, so rounding matters),
    returned in that dtype; the stored parameters stay fp32. Keys as :class:`F0Predictor`.
    """

    def __init__(self, in_channels: int = 80, cond_channels: int = 512, num_class: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            weight_normed(CausalConv1d(in_channels, cond_channels, 4, look_ahead=True)),
            nn.ELU(),
        ]
        for _ in range(4):
            layers += [weight_normed(CausalConv1d(cond_channels, cond_channels, 3)), nn.ELU()]
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(cond_channels, num_class)

    @property
    def look_ahead(self) -> int:
        """Mel frames of look-ahead (3)."""
        first = self.condnet[0]
        assert isinstance(first, CausalConv1d)
        return first.pad

    def forward(
        self, mel: torch.Tensor, finalize: bool = True, compute_dtype: torch.dtype = torch.float64
    ) -> torch.Tensor:
        x = mel.to(compute_dtype)
        if finalize:
            x = _call_in_dtype(self.condnet[0], compute_dtype, x)
        else:
            split = x.shape[2] - self.look_ahead
            x = _call_in_dtype(self.condnet[0], compute_dtype, x[:, :, :split], x[:, :, split:])
        for layer in list(self.condnet)[1:]:
            x = _call_in_dtype(layer, compute_dtype, x)
        logits = _call_in_dtype(self.classifier, compute_dtype, x.transpose(1, 2))  # (B, T', 1)
        return logits.squeeze(-1).abs()


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
        """Draw exactly what upstream draws per vocoder call, in its order, from ``generator`` (or the
        global RNG): the phases ``(B, H)`` uniform, the additive noise ``(B, L, H)`` normal, then a
        ``(B, L, 1)`` normal draw that upstream's source makes for its noise branch and the vocoder never
        uses. The last draw is made and thrown away so that the generator is left where upstream's is:
        the next call (a stream's next chunk, the next sentence of a split text) then gets upstream's
        noise too.

        The noise tensor is a ``(B, L, H)`` view of ``(B, H, L)`` memory, the layout upstream's
        ``randn_like`` inherits from its transposed sine tensor; torch fills a non-contiguous tensor with
        a different sampling routine than a contiguous one (and that routine keeps a spare Box-Muller
        sample in the generator), so the layout is part of reproducing it. With
        ``generator = torch.Generator().manual_seed(s)`` the draws of consecutive calls equal upstream's
        after ``torch.manual_seed(s)`` on CPU.
        """
        phase = torch.rand(batch, num_sines, generator=generator, device=device)
        noise = torch.empty(batch, num_sines, num_samples, device=device).transpose(1, 2)
        noise.normal_(generator=generator)
        # upstream's unused noise-branch draw: (B, L, 1), contiguous in every dimension that counts
        torch.empty(batch, num_samples, 1, device=device).normal_(generator=generator)
        return SourceNoise(initial_phase=phase, additive=noise)


class HarmonicSource(nn.Module):
    """Neural source filter excitation: f0 -> harmonic sines + noise -> one channel (Linear + tanh).

    ``forward(f0 (B, T) Hz, noise) -> (B, 1, L)`` with ``L = T * upsample_scale``. The phase is
    integrated at frame rate and interpolated back to sample rate (the "SineGen2" variant used for
    24 kHz models). Frames with ``f0 <= voiced_threshold`` are unvoiced: their sines are zeroed and the
    noise std rises from ``noise_std`` to ``sine_amp / 3``. Key: ``l_linear`` ``[1, H]``.
    ``phase_upsample``: how the frame-rate phase returns to sample rate, ``"linear"`` (CosyVoice2) or
    ``"nearest"`` (the causal CosyVoice3 source, whose phase at a sample never depends on the next frame).
    """

    def __init__(
        self,
        sampling_rate: int,
        upsample_scale: int,
        num_harmonics: int,
        sine_amp: float,
        noise_std: float,
        voiced_threshold: float,
        phase_upsample: str = "linear",
    ) -> None:
        super().__init__()
        self.phase_upsample = phase_upsample
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
        phase = F.interpolate(phase * self.upsample_scale, scale_factor=self.upsample_scale, mode=self.phase_upsample)
        sines = torch.sin(phase.transpose(1, 2)) * self.sine_amp  # (B, L, H)

        voiced = (f0_samples > self.voiced_threshold).to(sines.dtype)  # (B, L, 1)
        noise_scale = voiced * self.noise_std + (1 - voiced) * self.sine_amp / 3
        return sines * voiced + noise_scale * noise.additive.to(sines)

    def forward(self, f0: torch.Tensor, noise: SourceNoise) -> torch.Tensor:
        f0_samples = F.interpolate(f0[:, None], scale_factor=self.upsample_scale, mode="nearest")
        merged = torch.tanh(self.l_linear(self.sines(f0_samples.transpose(1, 2), noise)))  # (B, L, 1)
        return merged.transpose(1, 2)


class SpectralStages:
    """What both HiFT generators share: the harmonic source and STFT window they build, the STFT rate of
    each stage, and, after ``conv_pre``, the upsampling stages fed by the source's STFT, ``conv_post`` and
    the inverse STFT. Mixed into :class:`~cosyml.models.hift.HiFT` and
    :class:`~cosyml.models.hift_causal.CausalHiFT`, which own ``config``, ``ups``, ``source_downs``,
    ``source_resblocks``, ``resblocks``, ``conv_post`` and the ``stft_window`` buffer."""

    config: Any
    ups: nn.ModuleList
    source_downs: nn.ModuleList
    source_resblocks: nn.ModuleList
    resblocks: nn.ModuleList
    conv_post: nn.Module
    stft_window: torch.Tensor

    def _build_source(self, phase_upsample: str) -> HarmonicSource:
        """The harmonic source (``m_source``) the config describes."""
        cfg = self.config
        return HarmonicSource(
            sampling_rate=cfg.sampling_rate,
            upsample_scale=cfg.samples_per_frame,
            num_harmonics=cfg.nb_harmonics,
            sine_amp=cfg.nsf_alpha,
            noise_std=cfg.nsf_sigma,
            voiced_threshold=cfg.nsf_voiced_threshold,
            phase_upsample=phase_upsample,
        )

    def _source_down_factors(self) -> list[int]:
        """Per stage, source STFT frames per step: stage i runs at hop_len * prod(upsample_rates[i+1:])
        samples per step, the STFT at hop_len, so its branch downsamples by that product."""
        rates = self.config.upsample_rates
        return [math.prod(rates[i + 1 :]) for i in range(len(rates))]

    def _register_stft_window(self) -> None:
        """Periodic Hann, computed in float64 then rounded, like scipy's get_window("hann", n, fftbins=True)."""
        window = torch.hann_window(self.config.n_fft, periodic=True, dtype=torch.float64).float()
        self.register_buffer("stft_window", window, persistent=False)  # type: ignore[attr-defined]  # a mixin of nn.Module subclasses: mypy checks it without its nn.Module base

    def _stft(self, signal: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` -> ``(B, n_fft + 2, L / hop + 1)``: real parts then imaginary parts."""
        cfg = self.config
        spec = torch.stft(signal, cfg.n_fft, cfg.hop_len, cfg.n_fft, window=self.stft_window, return_complex=True)
        return torch.cat([spec.real, spec.imag], dim=1)

    def _istft(self, magnitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        magnitude = magnitude.clamp(max=1e2)
        spec = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
        return torch.istft(spec, cfg.n_fft, cfg.hop_len, cfg.n_fft, window=self.stft_window)

    def _render(self, x: torch.Tensor, source_spec: torch.Tensor) -> torch.Tensor:
        """``conv_pre`` output ``(B, C, T)`` and the source STFT -> ``(B, L)`` audio (not clamped)."""
        cfg = self.config
        per_stage = len(cfg.resblock_kernel_sizes)
        last = len(self.ups) - 1
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, cfg.lrelu_slope))
            if i == last:
                x = F.pad(x, (1, 0), mode="reflect")  # one extra step to match the STFT frame count
            x = x + self.source_resblocks[i](self.source_downs[i](source_spec))
            blocks = self.resblocks[i * per_stage : (i + 1) * per_stage]
            total = blocks[0](x)
            for block in blocks[1:]:
                total = total + block(x)
            x = total / per_stage
        x = self.conv_post(F.leaky_relu(x))  # default slope 0.01 here, as trained
        bins = cfg.n_fft // 2 + 1
        return self._istft(torch.exp(x[:, :bins]), torch.sin(x[:, bins:]))
