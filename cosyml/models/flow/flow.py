"""The CosyVoice2 flow (upstream ``CausalMaskedDiffWithXvec``): speech tokens + speaker -> mel.

    tokens (B, T) -> input_embedding (E) -> encoder (B, 2T, D) -> encoder_proj -> mu (B, 80, 2T)
    x-vector (B, 192) -> L2-normalise -> spk_embed_affine_layer -> spks (B, 80)
    mu, spks, prompt mel -> conditional flow matching (``decoder``) -> mel (B, 80, 2T)

Submodule names are those of the official ``flow.pt``, so ``load_state_dict(strict=True)`` works on it.
"""

from __future__ import annotations

import torch
from torch import nn

from cosyml.models.flow.attention import valid_mask
from cosyml.models.flow.base import TokenToMelFlow
from cosyml.models.flow.cfm import ConditionalFlowMatching
from cosyml.models.flow.config import FlowConfig
from cosyml.models.flow.decoder import CausalConditionalDecoder
from cosyml.models.flow.encoder import UpsampleConformerEncoder


class Flow(TokenToMelFlow):
    """Token-to-mel flow matching model with speaker x-vector and prompt-mel conditioning."""

    def __init__(self, config: FlowConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.input_embedding = nn.Embedding(config.vocab_size, config.input_size)
        self.spk_embed_affine_layer = nn.Linear(config.spk_embed_dim, config.output_size)
        self.encoder = UpsampleConformerEncoder(config.encoder)
        self.encoder_proj = nn.Linear(config.encoder.output_size, config.output_size)
        self.decoder = ConditionalFlowMatching(CausalConditionalDecoder(config.estimator), config.cfm)

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
            streaming: chunked encoder attention.
            context: (B, L) ids of look-ahead tokens that follow ``tokens`` (streaming inference).

        Returns:
            mu (B, 2T, 80) before transposition, and (B,) mel lengths.
        """
        keep = valid_mask(lengths, tokens.shape[1]).unsqueeze(-1).to(self.input_embedding.weight.dtype)
        x = self.input_embedding(tokens.clamp(min=0)) * keep
        ctx = self.input_embedding(context.clamp(min=0)) if context is not None else None
        h, mel_lengths = self.encoder(x, lengths, context=ctx, streaming=streaming)
        return self.encoder_proj(h), mel_lengths


def build_flow(config: dict) -> Flow:
    """A randomly initialised :class:`Flow` with every hyperparameter from a parsed model yaml.

    ``config`` is what :func:`cosyml.models.yaml_io.read_model_yaml` returns; its ``flow`` node must be
    the CosyVoice2 ``CausalMaskedDiffWithXvec``. Load weights with ``load_state_dict(sd, strict=True)``.
    Build under ``with torch.device("meta"):`` to inspect shapes without allocating memory.
    """
    return Flow(FlowConfig.from_model_config(config))
