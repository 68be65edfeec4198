"""The flow's token encoder (upstream ``UpsampleConformerEncoder``): token rate in, mel rate out.

    tokens (B, T, E) -> Linear+LayerNorm -> ×√D + rel. positions -> look-ahead conv (sees 3 future tokens)
      -> N conformer blocks -> nearest ×2 upsample + causal conv -> Linear+LayerNorm -> ×√D + positions
      -> 4 conformer blocks -> LayerNorm  => (B, 2T, D)

With ``streaming=True`` attention is limited to static chunks (``static_chunk_size`` tokens before the
upsample, twice that after), which is how the model was trained for chunked synthesis.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cosyml.models.flow.attention import ConformerBlock, RelPositionalEncoding, attention_mask, valid_mask
from cosyml.models.flow.config import EncoderConfig


class LinearEmbed(nn.Module):
    """Linear -> LayerNorm -> dropout, then √D scaling and the relative position table."""

    def __init__(self, in_dim: int, d_model: int, dropout_rate: float, positional_dropout_rate: float) -> None:
        super().__init__()
        self.out = nn.Sequential(nn.Linear(in_dim, d_model), nn.LayerNorm(d_model, eps=1e-5), nn.Dropout(dropout_rate))
        self.pos_enc = RelPositionalEncoding(d_model, positional_dropout_rate)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, in_dim) -> (B, T, D) and positions (1, 2T-1, D)."""
        return self.pos_enc(self.out(x))


class PreLookaheadLayer(nn.Module):
    """Residual conv pair that lets each token see ``lookahead`` future tokens.

    conv1 (kernel lookahead+1) reads the current and future tokens (zero-padded on the right, or the
    real future tokens passed as ``context`` while streaming); leaky ReLU; conv2 (kernel 3) is causal.
    """

    def __init__(self, channels: int, lookahead: int) -> None:
        super().__init__()
        self.lookahead = lookahead
        self.conv1 = nn.Conv1d(channels, channels, kernel_size=lookahead + 1)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=3)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, D), context (B, <=lookahead, D) or None -> (B, T, D)."""
        h = x.transpose(1, 2)
        if context is not None and context.shape[1] > 0:
            h = torch.cat([h, context.transpose(1, 2)], dim=2)
            right_pad = self.lookahead - context.shape[1]
        else:
            right_pad = self.lookahead
        h = F.leaky_relu(self.conv1(F.pad(h, (0, right_pad))))
        h = self.conv2(F.pad(h, (self.conv2.kernel_size[0] - 1, 0)))
        return h.transpose(1, 2) + x


class CausalUpsample(nn.Module):
    """Nearest-neighbour ×stride along time, left pad 2·stride, conv (kernel 2·stride+1)."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv1d(channels, channels, kernel_size=2 * stride + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, D, T) -> (B, D, stride·T)."""
        x = torch.repeat_interleave(x, self.stride, dim=2)
        return self.conv(F.pad(x, (2 * self.stride, 0)))


class UpsampleConformerEncoder(nn.Module):
    """Speech-token embeddings (B, T, E) -> mel-rate hidden states (B, stride·T, D)."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        d = c.output_size

        def blocks(n: int) -> nn.ModuleList:
            return nn.ModuleList(
                ConformerBlock(
                    d, c.attention_heads, c.linear_units, c.dropout_rate, c.attention_dropout_rate, c.key_bias
                )
                for _ in range(n)
            )

        # Registration order matches the official state dict.
        self.embed = LinearEmbed(c.input_size, d, c.dropout_rate, c.positional_dropout_rate)
        self.after_norm = nn.LayerNorm(d, eps=1e-5)
        self.pre_lookahead_layer = PreLookaheadLayer(d, c.pre_lookahead_len)
        self.encoders = blocks(c.num_blocks)
        self.up_layer = CausalUpsample(d, c.upsample_stride)
        self.up_embed = LinearEmbed(c.input_size, d, c.dropout_rate, c.positional_dropout_rate)
        self.up_encoders = blocks(c.num_up_blocks)

    def forward(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor,
        context: torch.Tensor | None = None,
        streaming: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode embedded tokens.

        Args:
            x: (B, T, E) token embeddings, zero past each length.
            lengths: (B,) valid tokens per row.
            context: (1, L, E) embeddings of up to ``pre_lookahead_len`` future tokens (streaming
                inference only; they steer the look-ahead conv and are not encoded themselves).
            streaming: use static chunk attention masks.

        Returns:
            (B, stride·T, D) hidden states and their (B,) lengths.
        """
        c = self.config
        x, positions = self.embed(x)
        mask = attention_mask(valid_mask(lengths, x.shape[1]), c.static_chunk_size if streaming else 0)
        if context is not None and context.shape[1] > 0:
            context = self.embed.out(context) * self.embed.pos_enc.xscale
        x = self.pre_lookahead_layer(x, context)
        for block in self.encoders:
            x = block(x, mask, positions)

        x = self.up_layer(x.transpose(1, 2)).transpose(1, 2)
        lengths = lengths * c.upsample_stride
        x, positions = self.up_embed(x)
        up_chunk = c.static_chunk_size * c.upsample_stride if streaming else 0
        mask = attention_mask(valid_mask(lengths, x.shape[1]), up_chunk)
        for block in self.up_encoders:
            x = block(x, mask, positions)
        return self.after_norm(x), lengths
