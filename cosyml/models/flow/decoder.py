"""The flow-matching velocity estimator (upstream ``CausalConditionalDecoder``): a causal 1-D U-Net.

Input channels are packed as [x_t, mu, speaker, cond] (each 80 wide for CosyVoice2). Every level has
a causal resnet block (conv k3 left-padded, LayerNorm over channels, Mish, plus a projected time
embedding), ``n_blocks`` transformer blocks, and a resampling conv. Attention sees the whole
utterance, or only up to the end of the current chunk of ``static_chunk_size`` frames when streaming.
Submodule names follow the official state dict (``down_blocks.0.1.0.attn1.to_q`` ...).

Shapes: B batch, C channels, T mel frames; masks are (B, 1, T) floats with 1 on valid frames.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from cosyml.models.flow.attention import attention_mask
from cosyml.models.flow.config import EstimatorConfig


def timestep_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Sinusoidal embedding of flow times t in [0, 1]: (B,) -> (B, dim) = [sin(scale·t·w), cos(scale·t·w)].

    Frequencies w_i = 10000^(-i / (dim/2 - 1)), i = 0 .. dim/2 - 1.
    """
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device).float() * -(math.log(10000) / (half - 1)))
    angles = scale * t.reshape(-1).unsqueeze(1) * freqs.unsqueeze(0)
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


class TimestepMLP(nn.Module):
    """linear_1 -> SiLU -> linear_2 on the sinusoidal time embedding."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class CausalConv1d(nn.Conv1d):
    """Stride-1 Conv1d that pads kernel_size - 1 zeros on the left only (output t sees inputs <= t)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.kernel_size[0] - 1, 0)))


class _SwapTimeChannels(nn.Module):
    """(B, C, T) <-> (B, T, C), so LayerNorm normalises over channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class CausalConvBlock(nn.Module):
    """Masked causal conv k3 -> LayerNorm over channels -> Mish (``block.0`` conv, ``block.2`` norm)."""

    def __init__(self, dim: int, dim_out: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            CausalConv1d(dim, dim_out, 3), _SwapTimeChannels(), nn.LayerNorm(dim_out), _SwapTimeChannels(), nn.Mish()
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.block(x * mask) * mask


class CausalResnetBlock(nn.Module):
    """block2(block1(x) + mlp(time)) + res_conv(x), with ``mlp`` = Mish -> Linear (key ``mlp.1``)."""

    def __init__(self, dim: int, dim_out: int, time_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Mish(), nn.Linear(time_dim, dim_out))
        self.block1 = CausalConvBlock(dim, dim_out)
        self.block2 = CausalConvBlock(dim_out, dim_out)
        self.res_conv = nn.Conv1d(dim, dim_out, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x, mask) + self.mlp(time_emb).unsqueeze(-1)
        return self.block2(h, mask) + self.res_conv(x * mask)


class SelfAttention(nn.Module):
    """Multi-head self-attention without q/k/v biases (keys ``to_q``, ``to_k``, ``to_v``, ``to_out.0``)."""

    def __init__(self, dim: int, heads: int, head_dim: int, dropout: float) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.dropout = dropout
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(dropout)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, C), mask (B, 1|T, T) bool -> (B, T, C)."""
        b, t, _ = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            heads(self.to_q(x)),
            heads(self.to_k(x)),
            heads(self.to_v(x)),
            attn_mask=mask.unsqueeze(1),
            dropout_p=self.dropout if self.training else 0.0,
        )
        out = out.transpose(1, 2).reshape(b, t, -1)
        return self.to_out[1](self.to_out[0](out))


class GeluProjection(nn.Module):
    """Linear ``proj`` followed by GELU (exact, or tanh-approximated)."""

    def __init__(self, dim: int, dim_out: int, approximate: str) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim_out)
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate=self.approximate)


class FeedForward(nn.Module):
    """net = [GELU projection to 4·C, dropout, Linear back to C] (keys ``net.0.proj``, ``net.2``)."""

    def __init__(self, dim: int, dropout: float, act_fn: str) -> None:
        super().__init__()
        approximate = "tanh" if act_fn == "gelu-approximate" else "none"
        self.net = nn.ModuleList(
            [GeluProjection(dim, 4 * dim, approximate), nn.Dropout(dropout), nn.Linear(4 * dim, dim)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class TransformerBlock(nn.Module):
    """Pre-norm self-attention and feed-forward, each with a residual (``norm1``/``attn1``, ``norm3``/``ff``)."""

    def __init__(self, dim: int, heads: int, head_dim: int, dropout: float, act_fn: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = SelfAttention(dim, heads, head_dim, dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout, act_fn)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, C), mask (B, 1|T, T) bool -> (B, T, C)."""
        x = x + self.attn1(self.norm1(x), mask)
        return x + self.ff(self.norm3(x))


class _Downsample(nn.Module):
    """Stride-2 conv between U-Net levels (non-causal, as upstream; unused when there is one level)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _Upsample(nn.Module):
    """Transposed stride-2 conv between U-Net levels (unused when there is one level)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose1d(dim, dim, 4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _levels(blocks: nn.ModuleList) -> list[Level]:
    """The U-Net levels of ``blocks`` with their type (nn.ModuleList iterates as plain Modules)."""
    return cast("list[Level]", list(blocks))


def _resample(level: Level, h: torch.Tensor) -> torch.Tensor:
    if level.resample is None:
        raise ValueError("a down/up level has a resample conv (index 2)")
    return level.resample(h)


class Level(nn.ModuleList):
    """One U-Net level: [resnet, transformer blocks, resample conv] (indices 0, 1, 2 in the state dict)."""

    @property
    def resnet(self) -> CausalResnetBlock:
        return self[0]  # type: ignore[return-value]  # ModuleList indexing is typed Module; slot 0 is built as a CausalResnetBlock

    @property
    def transformers(self) -> nn.ModuleList:
        return self[1]  # type: ignore[return-value]  # ModuleList indexing is typed Module; slot 1 is built as a ModuleList

    @property
    def resample(self) -> nn.Module | None:
        return self[2] if len(self) > 2 else None


class CausalConditionalDecoder(nn.Module):
    """Velocity estimator v(x_t, t | mu, spks, cond): (B, 80, T) -> (B, 80, T)."""

    def __init__(self, config: EstimatorConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        time_dim = c.channels[0] * 4
        self.time_mlp = TimestepMLP(c.in_channels, time_dim)

        def transformers(dim: int) -> nn.ModuleList:
            return nn.ModuleList(
                TransformerBlock(dim, c.num_heads, c.attention_head_dim, c.dropout, c.act_fn) for _ in range(c.n_blocks)
            )

        self.down_blocks = nn.ModuleList()
        width = c.in_channels
        for i, out_width in enumerate(c.channels):
            last = i == len(c.channels) - 1
            resample: nn.Module = CausalConv1d(out_width, out_width, 3) if last else _Downsample(out_width)
            self.down_blocks.append(
                Level([CausalResnetBlock(width, out_width, time_dim), transformers(out_width), resample])
            )
            width = out_width
        self.mid_blocks = nn.ModuleList(
            Level([CausalResnetBlock(width, width, time_dim), transformers(width)]) for _ in range(c.num_mid_blocks)
        )
        self.up_blocks = nn.ModuleList()
        widths = (*c.channels[::-1], c.channels[0])
        for i in range(len(widths) - 1):
            last = i == len(widths) - 2
            out_width = widths[i + 1]
            resample = CausalConv1d(out_width, out_width, 3) if last else _Upsample(out_width)
            self.up_blocks.append(
                Level([CausalResnetBlock(2 * widths[i], out_width, time_dim), transformers(out_width), resample])
            )
        self.final_block = CausalConvBlock(widths[-1], widths[-1])
        self.final_proj = nn.Conv1d(widths[-1], c.out_channels, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        """Kaiming-normal (ReLU gain) convs and linears with zero biases, as upstream initialises them."""
        for module in self.modules():
            if isinstance(module, nn.Conv1d | nn.Linear):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def _run_level(
        self, level: Level, x: torch.Tensor, mask: torch.Tensor, time_emb: torch.Tensor, streaming: bool
    ) -> torch.Tensor:
        x = level.resnet(x, mask, time_emb)
        attn = attention_mask(mask[:, 0].bool(), self.config.static_chunk_size if streaming else 0)
        x = x.transpose(1, 2)
        for block in level.transformers:
            x = block(x, attn)
        return x.transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mu: torch.Tensor,
        t: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        streaming: bool = False,
    ) -> torch.Tensor:
        """Predict the velocity.

        Args:
            x: (B, 80, T) current sample x_t.
            mask: (B, 1, T) 1.0 on valid frames.
            mu: (B, 80, T) encoder output (projected).
            t: (B,) flow time in [0, 1].
            spks: (B, 80) projected speaker embedding.
            cond: (B, 80, T) prompt mel (zeros where there is none).
            streaming: chunked attention.

        Returns:
            (B, 80, T) velocity, zero on padding.
        """
        time_emb = self.time_mlp(timestep_embedding(t, self.config.in_channels).to(t.dtype))
        h = torch.cat([x, mu, spks.unsqueeze(-1).expand(-1, -1, x.shape[-1]), cond], dim=1)

        skips: list[torch.Tensor] = []
        masks = [mask]
        for level in _levels(self.down_blocks):
            h = self._run_level(level, h, masks[-1], time_emb, streaming)
            skips.append(h)
            h = _resample(level, h * masks[-1])
            masks.append(masks[-1][:, :, ::2])
        masks.pop()
        for level in _levels(self.mid_blocks):
            h = self._run_level(level, h, masks[-1], time_emb, streaming)
        for level in _levels(self.up_blocks):
            level_mask = masks.pop()
            skip = skips.pop()
            h = torch.cat([h[:, :, : skip.shape[-1]], skip], dim=1)
            h = self._run_level(level, h, level_mask, time_emb, streaming)
            h = _resample(level, h * level_mask)
        h = self.final_block(h, level_mask)
        return self.final_proj(h * level_mask) * mask
