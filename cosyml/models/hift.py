"""HiFT vocoder of CosyVoice2: 80-bin log-mel at 50 frames/s -> 24 kHz waveform.

A neural-source-filter + iSTFT generator ("HiFTNet"): an f0 predictor reads the mel, a harmonic
source turns f0 into an excitation signal, its STFT is injected at every upsampling stage of a
HiFi-GAN-style generator, and the generator predicts an 18-channel (n_fft 16) log-magnitude / phase
spectrogram that an inverse STFT turns into audio. Each mel frame becomes
``prod(upsample_rates) * hop_len`` = 8·5·3·4 = 480 samples.

The module's state dict is exactly the official ``hift.pt`` layout (328 keys for CosyVoice2, weight
norm as ``parametrizations.weight.original0/1``). Load ``hift.pt`` with
``cosyml.models.modeldir.load_strict(model, path, part="hift")``, which also accepts the ``generator.``
prefix and the old ``weight_g``/``weight_v`` spelling. Shapes: ``B`` batch, ``T`` mel frames, ``L = 480 T`` samples.

CosyVoice3's causal variant lives in :mod:`cosyml.models.hift_causal`; this module reads both yaml
classes (:func:`hift_config_from_yaml`) and :func:`cosyml.models.vocoder.build_hift` returns the matching
vocoder (a module of its own, so that ``hift_causal`` can import the configs here without a cycle).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cosyml.errors import ModelDirError
from cosyml.models.hift_parts import (
    F0Predictor,
    SnakeResBlock,
    SourceNoise,
    SpectralStages,
    fold_weight_norm,
    weight_normed,
)
from cosyml.models.yaml_io import Tagged

__all__ = [
    "CausalHiFTConfig",
    "HiFT",
    "HiFTConfig",
    "SourceNoise",
    "fold_weight_norm",
    "hift_config_from_yaml",
]

SUPPORTED_CLASS = "HiFTGenerator"
SUPPORTED_F0_CLASS = "ConvRNNF0Predictor"
CAUSAL_CLASS = "CausalHiFTGenerator"
CAUSAL_F0_CLASS = "CausalConvRNNF0Predictor"
# yaml class of the vocoder -> the f0 predictor class it must be built with
_F0_CLASS_FOR = {SUPPORTED_CLASS: SUPPORTED_F0_CLASS, CAUSAL_CLASS: CAUSAL_F0_CLASS}


@dataclass(frozen=True)
class HiFTConfig:
    """Hyperparameters of the v2 HiFT vocoder. Defaults are those of ``CosyVoice2-0.5B``."""

    in_channels: int = 80
    base_channels: int = 512
    nb_harmonics: int = 8
    sampling_rate: int = 24000
    nsf_alpha: float = 0.1  # sine amplitude
    nsf_sigma: float = 0.003  # noise std in voiced frames
    nsf_voiced_threshold: float = 10.0  # Hz; f0 at or below is unvoiced
    upsample_rates: tuple[int, ...] = (8, 5, 3)
    upsample_kernel_sizes: tuple[int, ...] = (16, 11, 7)
    n_fft: int = 16
    hop_len: int = 4
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    source_resblock_kernel_sizes: tuple[int, ...] = (7, 7, 11)
    source_resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99
    f0_num_class: int = 1
    f0_in_channels: int = 80
    f0_cond_channels: int = 512

    @property
    def samples_per_frame(self) -> int:
        """Audio samples per mel frame (480 for CosyVoice2)."""
        total = self.hop_len
        for rate in self.upsample_rates:
            total *= rate
        return total

    def channels(self, stage: int) -> int:
        """Channels after upsampling stage ``stage`` (0-based): base / 2^(stage+1)."""
        return self.base_channels // (2 ** (stage + 1))


@dataclass(frozen=True)
class CausalHiFTConfig(HiFTConfig):
    """Hyperparameters of the CosyVoice3 causal HiFT (yaml class ``CausalHiFTGenerator``).

    The same numbers as :class:`HiFTConfig` (the official ``cosyvoice3.yaml`` repeats the v2 values),
    plus ``conv_pre_look_right``: mel frames of look-ahead of the first conv (kernel = look_right + 1).
    """

    conv_pre_look_right: int = 4
    # Where upstream's fixed source-noise table starts in torch's random stream (see
    # cosyml.models.hift_causal.upstream_source_noise): upstream draws it from the global RNG after its
    # flow has seeded it with 0 and initialised ``Embedding(flow_vocab_size, flow_input_size)`` and
    # ``Linear(flow_spk_embed_dim, flow_output_size)``. Read from the yaml's flow node when there is one.
    flow_vocab_size: int = 6561
    flow_input_size: int = 80
    flow_output_size: int = 80
    flow_spk_embed_dim: int = 192


@dataclass
class _YamlReader:
    node: Tagged
    where: str

    def get(self, key: str, kind: type, default: Any) -> Any:
        value = self.node.get(key, default)
        try:
            if kind is tuple:
                return tuple(tuple(v) if isinstance(v, list) else v for v in value)
            return kind(value)
        except (TypeError, ValueError):
            raise ModelDirError(
                f"{self.where}: '{key}' = {value!r} is not a valid {kind.__name__}; restore the official yaml"
            ) from None


def hift_config_from_yaml(config: Mapping[str, Any] | Tagged, path: str | Path = "model yaml") -> HiFTConfig:
    """Read the ``hift`` node of a model-dir yaml parsed by ``read_model_yaml`` into a config.

    ``config`` is the whole parsed yaml (a dict with a ``hift`` entry) or the ``hift`` node itself.
    Returns a :class:`HiFTConfig` for ``HiFTGenerator`` (CosyVoice2) and a :class:`CausalHiFTConfig`
    for ``CausalHiFTGenerator`` (CosyVoice3). Missing keys take upstream's constructor defaults only
    where the official yaml always sets them.
    """
    node = config if isinstance(config, Tagged) else config.get("hift")
    if not isinstance(node, Tagged):
        raise ModelDirError(f"{path}: missing 'hift' section (a '!new:' node); restore the official yaml")
    if node.class_name not in _F0_CLASS_FOR:
        raise ModelDirError(
            f"{path}: hift is {node.class_name}; cosyml supports {SUPPORTED_CLASS} (CosyVoice2) and "
            f"{CAUSAL_CLASS} (CosyVoice3); restore the official yaml"
        )
    where = f"{path}: hift"
    read = _YamlReader(node, where)
    istft = node.get("istft_params") or {}
    f0_node = node.get("f0_predictor")
    f0_class = _F0_CLASS_FOR[node.class_name]
    if not isinstance(f0_node, Tagged) or f0_node.class_name != f0_class:
        found = f0_node.class_name if isinstance(f0_node, Tagged) else f0_node
        raise ModelDirError(f"{where}.f0_predictor is {found!r}; {node.class_name} needs {f0_class}")
    f0 = _YamlReader(f0_node, f"{where}.f0_predictor")
    defaults = HiFTConfig()
    extra: dict[str, Any] = {}
    config_class: type[HiFTConfig] = HiFTConfig
    if node.class_name == CAUSAL_CLASS:
        config_class = CausalHiFTConfig
        extra["conv_pre_look_right"] = read.get("conv_pre_look_right", int, 4)
        flow_node = None if isinstance(config, Tagged) else config.get("flow")
        if isinstance(flow_node, Tagged):
            flow = _YamlReader(flow_node, f"{path}: flow")
            extra["flow_vocab_size"] = flow.get("vocab_size", int, 6561)
            extra["flow_input_size"] = flow.get("input_size", int, 80)
            extra["flow_output_size"] = flow.get("output_size", int, 80)
            extra["flow_spk_embed_dim"] = flow.get("spk_embed_dim", int, 192)
    cfg = config_class(
        in_channels=read.get("in_channels", int, 80),
        base_channels=read.get("base_channels", int, 512),
        nb_harmonics=read.get("nb_harmonics", int, 8),
        sampling_rate=read.get("sampling_rate", int, 22050),
        nsf_alpha=read.get("nsf_alpha", float, 0.1),
        nsf_sigma=read.get("nsf_sigma", float, 0.003),
        nsf_voiced_threshold=read.get("nsf_voiced_threshold", float, 10.0),
        upsample_rates=read.get("upsample_rates", tuple, defaults.upsample_rates),
        upsample_kernel_sizes=read.get("upsample_kernel_sizes", tuple, defaults.upsample_kernel_sizes),
        n_fft=int(istft.get("n_fft", 16)),
        hop_len=int(istft.get("hop_len", 4)),
        resblock_kernel_sizes=read.get("resblock_kernel_sizes", tuple, defaults.resblock_kernel_sizes),
        resblock_dilation_sizes=read.get("resblock_dilation_sizes", tuple, defaults.resblock_dilation_sizes),
        source_resblock_kernel_sizes=read.get(
            "source_resblock_kernel_sizes", tuple, defaults.source_resblock_kernel_sizes
        ),
        source_resblock_dilation_sizes=read.get(
            "source_resblock_dilation_sizes", tuple, defaults.source_resblock_dilation_sizes
        ),
        lrelu_slope=read.get("lrelu_slope", float, 0.1),
        audio_limit=read.get("audio_limit", float, 0.99),
        f0_num_class=f0.get("num_class", int, 1),
        f0_in_channels=f0.get("in_channels", int, 80),
        f0_cond_channels=f0.get("cond_channels", int, 512),
        **extra,
    )
    _validate(cfg, where)
    return cfg


def _validate(cfg: HiFTConfig, where: str) -> None:
    if cfg.sampling_rate == 22050:
        raise ModelDirError(
            f"{where}: sampling_rate 22050 selects the CosyVoice1 sine source, which cosyml does not implement"
        )
    stages = len(cfg.upsample_rates)
    lengths = {
        "upsample_kernel_sizes": len(cfg.upsample_kernel_sizes),
        "source_resblock_kernel_sizes": len(cfg.source_resblock_kernel_sizes),
        "source_resblock_dilation_sizes": len(cfg.source_resblock_dilation_sizes),
    }
    for key, n in lengths.items():
        if n != stages:
            raise ModelDirError(f"{where}: '{key}' has {n} entries but upsample_rates has {stages}")
    if len(cfg.resblock_kernel_sizes) != len(cfg.resblock_dilation_sizes):
        raise ModelDirError(f"{where}: resblock_kernel_sizes and resblock_dilation_sizes differ in length")
    if cfg.f0_num_class != 1:
        raise ModelDirError(f"{where}.f0_predictor: num_class must be 1 (one f0 value per frame)")
    if isinstance(cfg, CausalHiFTConfig) and cfg.conv_pre_look_right < 0:
        raise ModelDirError(f"{where}: conv_pre_look_right must be >= 0 (official: 4)")


class HiFT(SpectralStages, nn.Module):
    """The CosyVoice2 HiFT generator (upstream ``HiFTGenerator``), inference only.

    Submodules, in the official key order: ``m_source`` (harmonic source, key ``l_linear``),
    ``conv_pre``, ``ups``, ``source_downs``, ``source_resblocks``, ``resblocks``, ``conv_post``,
    ``f0_predictor``.
    """

    def __init__(self, config: HiFTConfig) -> None:
        super().__init__()
        self.config = config
        cfg = config
        self.m_source = self._build_source(phase_upsample="linear")
        self.conv_pre = weight_normed(nn.Conv1d(cfg.in_channels, cfg.base_channels, 7, padding=3))
        self.ups = nn.ModuleList(
            weight_normed(
                nn.ConvTranspose1d(
                    cfg.base_channels // (2**i), cfg.channels(i), kernel, rate, padding=(kernel - rate) // 2
                )
            )
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
            if factor == 1:
                down = nn.Conv1d(spec_channels, cfg.channels(i), 1)
            else:
                down = nn.Conv1d(spec_channels, cfg.channels(i), factor * 2, factor, padding=factor // 2)
            self.source_downs.append(down)
            self.source_resblocks.append(SnakeResBlock(cfg.channels(i), kernel, dilations))
        self.resblocks = nn.ModuleList(
            SnakeResBlock(cfg.channels(i), kernel, dilations)
            for i in range(len(cfg.upsample_rates))
            for kernel, dilations in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True)
        )
        last_channels = cfg.channels(len(cfg.upsample_rates) - 1)
        self.conv_post = weight_normed(nn.Conv1d(last_channels, spec_channels, 7, padding=3))
        self.f0_predictor = F0Predictor(cfg.f0_in_channels, cfg.f0_cond_channels, cfg.f0_num_class)
        self._register_stft_window()

    # -- pieces -------------------------------------------------------------------------------------

    def source(
        self,
        f0: torch.Tensor,
        noise: SourceNoise | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``(B, T)`` f0 in Hz -> ``(B, 1, L)`` excitation. Randomness: ``noise`` if given, else drawn
        from ``generator`` (or the global RNG when ``generator`` is None)."""
        if noise is None:
            noise = SourceNoise.draw(
                f0.shape[0],
                f0.shape[1] * self.config.samples_per_frame,
                self.m_source.num_sines,
                generator=generator,
                device=f0.device,
            )
        return self.m_source(f0, noise)

    def decode(self, speech_feat: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, T)`` mel and ``(B, 1, L)`` excitation -> ``(B, L)`` audio in ±audio_limit."""
        cfg = self.config
        audio = self._render(self.conv_pre(speech_feat), self._stft(source.squeeze(1)))
        return audio.clamp(-cfg.audio_limit, cfg.audio_limit)

    # -- entry points -------------------------------------------------------------------------------

    def forward(
        self,
        speech_feat: torch.Tensor,
        cache_source: torch.Tensor | None = None,
        noise: SourceNoise | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mel -> ``(wav (B, L), source (B, 1, L))``; see :meth:`inference`."""
        f0 = self.f0_predictor(speech_feat)
        source = self.source(f0, noise=noise, generator=generator)
        if cache_source is not None and cache_source.shape[2] > 0:
            # Streaming: the head of this chunk's audio repeats the previous chunk's tail, so reuse
            # the excitation generated for it to keep the sine phase continuous.
            source[:, :, : cache_source.shape[2]] = cache_source
        return self.decode(speech_feat, source), source

    @torch.inference_mode()
    def inference(
        self,
        speech_feat: torch.Tensor,
        cache_source: torch.Tensor | None = None,
        noise: SourceNoise | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Vocode ``(B, in_channels, T)`` log-mel into ``(wav (B, T*480), source (B, 1, T*480))``.

        ``cache_source`` ``(B, 1, K)``: excitation kept from the previous streaming chunk; it overwrites
        the first ``K`` samples of this chunk's excitation. The random source draws come from ``noise``
        (explicit tensors), else ``generator``, else the global RNG; nothing is reseeded.
        """
        return self.forward(speech_feat, cache_source=cache_source, noise=noise, generator=generator)

    def fold_weight_norm(self) -> HiFT:
        """Fold weight norm into plain weights for faster inference (output unchanged); returns self."""
        fold_weight_norm(self)
        return self
