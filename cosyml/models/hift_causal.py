"""Causal HiFT vocoder of CosyVoice3: 80-bin log-mel at 50 frames/s -> 24 kHz waveform, streamable.

The CosyVoice2 generator (:mod:`cosyml.models.hift`) with every convolution made causal, so audio up to
a frame depends only on mel up to a few frames later:

- ``conv_pre`` is a k5 conv with 4 mel frames of look-ahead; the f0 predictor's first conv is k4 with
  3 frames of look-ahead; every other conv pads on the left only.
- upsampling is nearest-neighbour repeat + causal conv instead of a transposed conv;
- the harmonic source brings its phase back to sample rate with nearest (not linear) interpolation
  and uses *fixed* random draws (a per-module noise table), so re-vocoding a longer mel reproduces the
  earlier samples exactly;
- the f0 predictor runs in float64.

Streaming (``finalize=False``): feed all mel so far; the last ``3 + 4`` frames only serve as
look-ahead and one more frame of audio is withheld, so ``T`` frames give ``(T - 8) * 480`` samples that
equal the first samples of the final (``finalize=True``) output. Shapes: ``B`` batch, ``T`` mel frames,
``L = 480 T`` samples. State dict: exactly the official CosyVoice3 ``hift.pt`` layout (328 keys).
"""

from __future__ import annotations

import torch
from torch import nn

from cosyml.models.hift import CausalHiFTConfig
from cosyml.models.hift_parts import (
    CausalConv1d,
    CausalDownsample,
    CausalF0Predictor,
    CausalUpsample,
    SnakeResBlock,
    SourceNoise,
    SpectralStages,
    fold_weight_norm,
    weight_normed,
)

__all__ = ["UPSTREAM_NOISE_SAMPLES", "CausalHiFT", "upstream_source_noise"]

#: Length of upstream's fixed noise table: 300 s at 24 kHz. Longer inputs make upstream fail; cosyml
#: draws on past it (the same stream), so the first 300 s equal upstream's.
UPSTREAM_NOISE_SAMPLES = 300 * 24000


class _UpstreamNoiseStream:
    """The fixed draws of upstream's causal source, replayed on a private CPU generator.

    Upstream's ``CosyVoice3`` loader builds the model from its yaml; the flow's ``CausalConditionalCFM``
    calls ``torch.manual_seed(0)`` and draws ``randn(1, 80, 15000)``, then the flow initialises
    ``Embedding(vocab, input_size)`` (normal) and ``Linear(spk_embed_dim, output_size)`` (uniform
    weight and bias), then the vocoder's f0 predictor (five weight-normed convs and a Linear, uniform),
    and then the vocoder's source draws ``rand(1, 9)`` (initial phases; column 0 zeroed afterwards) and
    ``rand(1, 7200000, 9)`` (the noise table). Every draw above is replayed here with the same operation
    on a tensor of the same size and layout, so the generator reaches the same state (torch's CPU
    generator is the same Mersenne Twister whether global or private). Nothing reads or touches the
    global RNG. torch's CPU ``rand`` fills a tensor sequentially, so a shorter table is the prefix of a
    longer one: the table is drawn only as far as needed, from the state saved after the phases.
    """

    def __init__(self, config: CausalHiFTConfig, num_sines: int) -> None:
        gen = torch.Generator().manual_seed(0)
        torch.randn(1, 80, 50 * 300, generator=gen)  # the flow's fixed noise (CausalConditionalCFM)
        torch.empty(config.flow_vocab_size, config.flow_input_size).normal_(generator=gen)  # input_embedding
        _uniform_layer((config.flow_output_size, config.flow_spk_embed_dim), gen)  # spk_embed_affine_layer
        cond = config.f0_cond_channels
        _uniform_layer((cond, config.f0_in_channels, 4), gen)  # f0 condnet: look-ahead conv, then 4 more
        for _ in range(4):
            _uniform_layer((cond, cond, 3), gen)
        _uniform_layer((config.f0_num_class, cond), gen)  # f0 classifier
        phase = torch.rand(1, num_sines, generator=gen)
        phase[:, 0] = 0.0  # the fundamental starts at phase 0
        self.initial_phase = phase
        self.num_sines = num_sines
        self._state = gen.get_state()  # where the noise table starts

    def table(self, num_samples: int) -> torch.Tensor:
        """The first ``num_samples`` rows of the table: ``(1, num_samples, H)`` uniform [0, 1)."""
        gen = torch.Generator()
        gen.set_state(self._state)
        return torch.rand(1, num_samples, self.num_sines, generator=gen)


def _uniform_layer(weight_shape: tuple[int, ...], gen: torch.Generator) -> None:
    """Advance ``gen`` as torch's default init of a Linear/Conv1d with this weight shape does
    (kaiming-uniform weight, then a uniform bias of ``weight_shape[0]``); bounds do not change the count."""
    torch.empty(weight_shape).uniform_(generator=gen)
    torch.empty(weight_shape[0]).uniform_(generator=gen)


def upstream_source_noise(num_samples: int, config: CausalHiFTConfig, num_sines: int = 9) -> SourceNoise:
    """The causal source's fixed draws for ``num_samples`` samples, on CPU, equal to the tables upstream's
    ``CosyVoice3`` loader builds for a model of ``config``'s sizes (see :class:`_UpstreamNoiseStream`).

    ``initial_phase`` ``(1, H)`` and ``additive`` ``(1, num_samples, H)``, both **uniform** [0, 1)
    (upstream scales uniform draws, not Gaussian ones, in the causal source).
    """
    stream = _UpstreamNoiseStream(config, num_sines)
    return SourceNoise(initial_phase=stream.initial_phase, additive=stream.table(num_samples))


class CausalHiFT(SpectralStages, nn.Module):
    """The CosyVoice3 vocoder (upstream ``CausalHiFTGenerator``), inference only.

    Submodules, in the official key order: ``m_source``, ``conv_pre``, ``ups``, ``source_downs``,
    ``source_resblocks``, ``resblocks``, ``conv_post``, ``f0_predictor``. The fixed source-noise table
    (not part of the state dict) is upstream's (:func:`upstream_source_noise`), drawn on first use.
    """

    def __init__(self, config: CausalHiFTConfig) -> None:
        super().__init__()
        self.config = config
        cfg = config
        self.m_source = self._build_source(phase_upsample="nearest")
        self.conv_pre = weight_normed(
            CausalConv1d(cfg.in_channels, cfg.base_channels, cfg.conv_pre_look_right + 1, look_ahead=True)
        )
        self.ups = nn.ModuleList(
            weight_normed(CausalUpsample(cfg.base_channels // (2**i), cfg.channels(i), kernel, rate))
            for i, (rate, kernel) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True))
        )
        spec_channels = cfg.n_fft + 2  # real and imaginary parts of n_fft/2 + 1 bins
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        for i, (kernel, dilations, factor) in enumerate(
            zip(
                cfg.source_resblock_kernel_sizes,
                cfg.source_resblock_dilation_sizes,
                self._source_down_factors(),
                strict=True,
            )
        ):
            down: nn.Module
            if factor == 1:
                down = CausalConv1d(spec_channels, cfg.channels(i), 1)
            else:
                down = CausalDownsample(spec_channels, cfg.channels(i), factor)
            self.source_downs.append(down)
            self.source_resblocks.append(SnakeResBlock(cfg.channels(i), kernel, dilations, causal=True))
        self.resblocks = nn.ModuleList(
            SnakeResBlock(cfg.channels(i), kernel, dilations, causal=True)
            for i in range(len(cfg.upsample_rates))
            for kernel, dilations in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True)
        )
        last_channels = cfg.channels(len(cfg.upsample_rates) - 1)
        self.conv_post = weight_normed(CausalConv1d(last_channels, spec_channels, 7))
        self.f0_predictor = CausalF0Predictor(cfg.f0_in_channels, cfg.f0_cond_channels, cfg.f0_num_class)
        self._register_stft_window()
        self._noise_stream: _UpstreamNoiseStream | None = None
        self._noise_table: torch.Tensor | None = None

    # -- streaming geometry -------------------------------------------------------------------------

    @property
    def look_ahead_frames(self) -> int:
        """Mel frames a non-final call consumes as look-ahead only: f0 predictor (3) + conv_pre (4)."""
        return self.f0_predictor.look_ahead + self.config.conv_pre_look_right

    @property
    def withheld_frames(self) -> int:
        """Mel frames a non-final call yields no audio for: look-ahead plus one frame (8 officially)."""
        return self.look_ahead_frames + 1

    # -- pieces -------------------------------------------------------------------------------------

    def source_noise(self, num_samples: int) -> SourceNoise:
        """The first ``num_samples`` of upstream's fixed noise table (see :func:`upstream_source_noise`),
        drawn on first use and grown by doubling when a longer input arrives (the full 300 s table
        would take 259 MB)."""
        table = self._noise_table
        if table is None or table.shape[1] < num_samples:
            have = 0 if table is None else table.shape[1]
            with torch.inference_mode(False):  # a cached table must stay usable outside inference()
                if self._noise_stream is None:
                    self._noise_stream = _UpstreamNoiseStream(self.config, self.m_source.num_sines)
                table = self._noise_stream.table(max(num_samples, 2 * have))
            self._noise_table = table
        assert self._noise_stream is not None
        return SourceNoise(initial_phase=self._noise_stream.initial_phase, additive=table[:, :num_samples])

    def source(self, f0: torch.Tensor, noise: SourceNoise | None = None) -> torch.Tensor:
        """``(B, T)`` f0 in Hz -> ``(B, 1, L)`` excitation, ``L = T * 480``.

        ``noise``: ``initial_phase`` ``(1 or B, H)`` and ``additive`` ``(1 or B, >= L, H)`` uniform draws
        (only the first ``L`` samples are used); default: the module's fixed table.
        """
        batch, frames = f0.shape
        samples = frames * self.config.samples_per_frame
        if noise is None:
            noise = self.source_noise(samples)
        if noise.additive.shape[1] < samples:
            raise ValueError(f"source noise has {noise.additive.shape[1]} samples; {samples} are needed")
        phase = noise.initial_phase.to(f0.device)
        additive = noise.additive[:, :samples].to(f0.device)
        expanded = SourceNoise(initial_phase=phase.expand(batch, -1), additive=additive.expand(batch, -1, -1))
        return self.m_source(f0, expanded)

    def decode(self, speech_feat: torch.Tensor, source: torch.Tensor, finalize: bool = True) -> torch.Tensor:
        """``(B, in_channels, T)`` mel and ``(B, 1, 480 T)`` excitation -> audio in ±audio_limit.

        ``finalize=True``: ``(B, 480 T)``. ``finalize=False``: the last ``conv_pre_look_right`` frames
        are look-ahead only and the last remaining frame of audio is dropped: ``(B, 480 (T - look - 1))``.
        """
        cfg = self.config
        source_spec = self._stft(source.squeeze(1))
        if finalize:
            x = self.conv_pre(speech_feat)
        else:
            split = speech_feat.shape[2] - cfg.conv_pre_look_right
            x = self.conv_pre(speech_feat[:, :, :split], speech_feat[:, :, split:])
            stft_per_frame = cfg.samples_per_frame // cfg.hop_len
            source_spec = source_spec[:, :, : source_spec.shape[2] - cfg.conv_pre_look_right * stft_per_frame]
        audio = self._render(x, source_spec)
        if not finalize:
            audio = audio[:, : audio.shape[1] - cfg.samples_per_frame]
        return audio.clamp(-cfg.audio_limit, cfg.audio_limit)

    # -- entry points -------------------------------------------------------------------------------

    def forward(
        self, speech_feat: torch.Tensor, finalize: bool = True, noise: SourceNoise | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mel -> ``(wav, source)``; see :meth:`inference`."""
        if not finalize and speech_feat.shape[2] <= self.withheld_frames:
            raise ValueError(
                f"a non-final chunk needs more than {self.withheld_frames} mel frames, got {speech_feat.shape[2]}"
            )
        f0 = self.f0_predictor(speech_feat, finalize=finalize).to(speech_feat.dtype)  # float64 inside
        source = self.source(f0, noise)
        if not finalize:
            speech_feat = speech_feat[:, :, : f0.shape[1]]  # the f0 look-ahead frames are spent
        return self.decode(speech_feat, source, finalize=finalize), source

    @torch.inference_mode()
    def inference(
        self, speech_feat: torch.Tensor, finalize: bool = True, noise: SourceNoise | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Vocode ``(B, in_channels, T)`` log-mel into ``(wav (B, N), source (B, 1, M))``.

        ``finalize=True`` (whole utterance): ``N = M = 480 T``. ``finalize=False`` (streaming; pass all
        mel so far): ``M = 480 (T - 3)``, ``N = 480 (T - 8)`` and the wav equals the first ``N`` samples
        of the final output. ``noise`` overrides the fixed draws (see :meth:`source`).
        """
        return self.forward(speech_feat, finalize=finalize, noise=noise)

    def fold_weight_norm(self) -> CausalHiFT:
        """Fold weight norm into plain weights, except in the f0 predictor; returns self.

        The f0 predictor keeps its parametrization: it computes ``g * v / ||v||`` in float64, and a
        folded fp32 weight would shift f0 by ~1e-5 relative, which the source integrates into phase
        drift (~4e-5 in the waveform). It is a small share of the compute. Output is unchanged up to
        fp32 rounding of the other weights.
        """
        for name, child in self.named_children():
            if name != "f0_predictor":
                fold_weight_norm(child)
        return self
