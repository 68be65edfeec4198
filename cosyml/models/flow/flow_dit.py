"""The CosyVoice3 flow (upstream ``CausalMaskedDiffWithDiT``): speech tokens + speaker -> mel.

    tokens (B, T) -> input_embedding (B, T, 80) -> pre_lookahead_layer (sees 3 future tokens)
      -> repeat each token ×2 => mu (B, 2T, 80)                    (no conformer encoder, no encoder_proj)
    x-vector (B, 192) -> L2-normalise -> spk_embed_affine_layer -> spks (B, 80)
    mu, spks, prompt mel -> conditional flow matching with the DiT estimator (``decoder``) -> mel (B, 80, 2T)

Submodule names are those of the official v3 ``flow.pt`` (330 keys), so ``load_state_dict(strict=True)``
works on it. ``forward`` and ``inference`` take the same arguments as the v2 :class:`~cosyml.models.flow.Flow`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cosyml.models.flow.attention import valid_mask
from cosyml.models.flow.base import TokenToMelFlow
from cosyml.models.flow.cfm import ConditionalFlowMatching
from cosyml.models.flow.config import DiTFlowConfig, PreLookaheadConfig
from cosyml.models.flow.dit import DiT


class PreLookaheadLayer(nn.Module):
    """Residual conv pair over token embeddings that lets each token see ``pre_lookahead_len`` future tokens.

    conv1 (in -> channels, kernel lookahead+1) reads the current and future tokens, zero-padded on the
    right or continued by the real future tokens passed as ``context``; leaky ReLU (slope 0.01);
    conv2 (channels -> in, kernel 3) is causal (left-padded by 2); the input is added back.
    """

    def __init__(self, config: PreLookaheadConfig) -> None:
        super().__init__()
        self.lookahead = config.pre_lookahead_len
        self.conv1 = nn.Conv1d(config.in_channels, config.channels, kernel_size=self.lookahead + 1)
        self.conv2 = nn.Conv1d(config.channels, config.in_channels, kernel_size=3)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C), context (B, <= lookahead, C) or None -> (B, T, C)."""
        h = x.transpose(1, 2)
        right_pad = self.lookahead
        if context is not None and context.shape[1] > 0:
            h = torch.cat([h, context.transpose(1, 2)], dim=2)
            right_pad -= context.shape[1]
        h = F.leaky_relu(self.conv1(F.pad(h, (0, right_pad))))
        h = self.conv2(F.pad(h, (self.conv2.kernel_size[0] - 1, 0)))
        return h.transpose(1, 2) + x


class DiTFlow(TokenToMelFlow):
    """Token-to-mel flow matching model of CosyVoice3 (DiT estimator, pre-lookahead token front end)."""

    context_leaves_lengths = True

    def __init__(self, config: DiTFlowConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.input_embedding = nn.Embedding(config.vocab_size, config.input_size)
        self.spk_embed_affine_layer = nn.Linear(config.spk_embed_dim, config.output_size)
        self.pre_lookahead_layer = PreLookaheadLayer(config.pre_lookahead)
        self.decoder = ConditionalFlowMatching(DiT(config.estimator), config.cfm)

    def encode(
        self,
        tokens: torch.Tensor,
        lengths: torch.Tensor,
        streaming: bool = False,
        context: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Speech tokens -> mel-rate conditioning.

        Args:
            tokens: (B, T) token ids (negative padding ids are clamped to 0 and masked).
            lengths: (B,) valid tokens per row.
            streaming: unused (the pre-lookahead layer is causal either way; the DiT chunks attention).
            context: (B, L) ids of look-ahead tokens that follow ``tokens`` (streaming inference).

        Returns:
            mu (B, ratio·T, 80) before transposition, and (B,) mel lengths (ratio × lengths).
        """
        keep = valid_mask(lengths, tokens.shape[1]).unsqueeze(-1).to(self.input_embedding.weight.dtype)
        x = self.input_embedding(tokens.clamp(min=0)) * keep
        ctx = self.input_embedding(context.clamp(min=0)) if context is not None else None
        h = self.pre_lookahead_layer(x, ctx)
        ratio = self.config.token_mel_ratio
        return h.repeat_interleave(ratio, dim=1), lengths * ratio


def build_dit_flow(config: dict) -> DiTFlow:
    """A randomly initialised :class:`DiTFlow` with every hyperparameter from a parsed model yaml.

    ``config`` is what :func:`cosyml.models.yaml_io.read_model_yaml` returns; its ``flow`` node must be
    the CosyVoice3 ``CausalMaskedDiffWithDiT``. Load weights with ``load_state_dict(sd, strict=True)``.
    Build under ``with torch.device("meta"):`` to inspect shapes without allocating memory.
    """
    return DiTFlow(DiTFlowConfig.from_model_config(config))
