"""The CosyVoice3 velocity estimator (upstream ``DiT``): a diffusion transformer over mel frames.

    [x_t, cond, mu, spk] (B, T, 320) -> proj -> + causal conv position embedding      => h (B, T, D)
    flow time t (B,) -> sinusoid (256) -> MLP                                            => c (B, D)
    depth × DiT block: AdaLN-zero(c) -> self-attention (RoPE) -> gated residual -> AdaLN -> GELU MLP
    AdaLN-final(c) -> proj_out                                                           => v (B, 80, T)

Two upstream details that change numbers and are reproduced on purpose:

* RoPE is applied to the full ``heads × dim_head`` wide q and k *before* the head split, with a
  rotation ``dim_head`` wide, so only the first ``dim_head`` channels (head 0) are rotated. Pairs are
  interleaved (channels 2i, 2i+1 share frequency i) and the rotation runs in float32.
* The final AdaLN splits its modulation as (scale, shift); the block AdaLN as (shift, scale, gate) × 2.

Submodule and buffer names follow the official ``flow.pt`` (``decoder.estimator.*``), including the
persistent ``rotary_embed.inv_freq`` buffer. Shapes: B batch, T mel frames, D model width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cosyml.models.flow.attention import attention_mask
from cosyml.models.flow.config import DiTConfig
from cosyml.models.flow.decoder import timestep_embedding

#: Width of the sinusoidal flow-time embedding fed to the time MLP.
TIME_FREQ_DIM = 256
#: Kernel and group count of the causal convolutional position embedding.
CONV_POS_KERNEL = 31
CONV_POS_GROUPS = 16


class TimestepEmbedding(nn.Module):
    """Flow time t in [0, 1] (B,) -> (B, D): sinusoid (scale 1000, 256 wide) -> Linear -> SiLU -> Linear."""

    def __init__(self, dim: int, freq_dim: int = TIME_FREQ_DIM) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.time_mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.time_mlp(timestep_embedding(t, self.freq_dim).to(t.dtype))


class CausalConvPositionEmbedding(nn.Module):
    """Two grouped convs (kernel 31, left-padded by 30 so frame t sees frames <= t), each followed by Mish."""

    def __init__(self, dim: int, kernel_size: int = CONV_POS_KERNEL, groups: int = CONV_POS_GROUPS) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.conv1 = nn.Sequential(nn.Conv1d(dim, dim, kernel_size, groups=groups), nn.Mish())
        self.conv2 = nn.Sequential(nn.Conv1d(dim, dim, kernel_size, groups=groups), nn.Mish())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) -> (B, T, D)."""
        h = x.transpose(1, 2)
        h = self.conv1(F.pad(h, (self.kernel_size - 1, 0)))
        h = self.conv2(F.pad(h, (self.kernel_size - 1, 0)))
        return h.transpose(1, 2)


class InputEmbedding(nn.Module):
    """Project [x_t, cond, mu, spk] (this order; v2 packs [x, mu, spk, cond]) to D, add conv positions."""

    def __init__(self, mel_dim: int, mu_dim: int, spk_dim: int, dim: int) -> None:
        super().__init__()
        self.spk_dim = spk_dim
        self.proj = nn.Linear(2 * mel_dim + mu_dim + spk_dim, dim)
        self.conv_pos_embed = CausalConvPositionEmbedding(dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, mu: torch.Tensor, spks: torch.Tensor) -> torch.Tensor:
        """x, cond (B, T, 80), mu (B, T, mu_dim), spks (B, spk_dim) -> (B, T, D)."""
        parts = [x, cond, mu]
        if self.spk_dim > 0:
            parts.append(spks.unsqueeze(1).expand(-1, x.shape[1], -1))
        h = self.proj(torch.cat(parts, dim=-1))
        return self.conv_pos_embed(h) + h


class RotaryEmbedding(nn.Module):
    """Rotary position frequencies ``dim`` wide (interleaved pairs); ``inv_freq`` is a persistent buffer.

    inv_freq_i = 10000^(-2i/dim), i = 0 .. dim/2 - 1 (shape (dim/2,)), saved in ``flow.pt``.
    """

    def __init__(self, dim: int, base: float = 10000.0) -> None:
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)))

    def forward(self, seq_len: int) -> torch.Tensor:
        """(1, T, dim) float32 angles p·inv_freq_i for positions p = 0 .. T-1, each repeated for its pair."""
        inv_freq: torch.Tensor = self.inv_freq  # type: ignore[assignment]  # a registered buffer; nn.Module.__getattr__ is typed Tensor | Module
        positions = torch.arange(seq_len, device=inv_freq.device).to(inv_freq.dtype)
        angles = positions.unsqueeze(1) * inv_freq.unsqueeze(0)
        return torch.repeat_interleave(angles, 2, dim=-1).unsqueeze(0)


def apply_rotary(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``angles.shape[-1]`` channels of x (B, T, C) pairwise; the rest pass through.

    Pair (a, b) at channels (2i, 2i+1) becomes (a·cos - b·sin, b·cos + a·sin), computed in float32 and
    cast back to x's dtype.
    """
    width = angles.shape[-1]
    rot, rest = x[..., :width].float(), x[..., width:]
    pairs = rot.unflatten(-1, (-1, 2))
    swapped = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    angles = angles[:, -x.shape[-2] :, :].float()
    rotated = rot * angles.cos() + swapped * angles.sin()
    return torch.cat((rotated.to(x.dtype), rest), dim=-1)


class AdaLayerNormZero(nn.Module):
    """LayerNorm (no affine, eps 1e-6) modulated by the time embedding: 6 vectors per block."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 6 * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x (B, T, D), c (B, D) -> modulated x, then gate_msa, shift_mlp, scale_mlp, gate_mlp (each (B, D))."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.linear(F.silu(c)).chunk(6, dim=1)
        return self.norm(x) * (1 + scale_msa[:, None]) + shift_msa[:, None], gate_msa, shift_mlp, scale_mlp, gate_mlp


class AdaLayerNormFinal(nn.Module):
    """The output LayerNorm modulated by the time embedding; the modulation splits as (scale, shift)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        scale, shift = self.linear(F.silu(c)).chunk(2, dim=1)
        return self.norm(x) * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head self-attention with biased q/k/v/out projections and the head-0-only RoPE quirk."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(dropout)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), mask (B, 1, T, T) bool (True = may attend), rope (1, T, dim_head) -> (B, T, D).

        Output rows of padded frames (False in the mask's last query row) are zeroed.
        """
        b, n, _ = x.shape
        q = apply_rotary(self.to_q(x), rope)
        k = apply_rotary(self.to_k(x), rope)
        v = self.to_v(x)
        q, k, v = (z.view(b, n, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        h = h.transpose(1, 2).reshape(b, n, -1).to(q.dtype)
        h = self.to_out[1](self.to_out[0](h))
        return h.masked_fill(~mask[:, 0, -1].unsqueeze(-1), 0.0)


class FeedForward(nn.Module):
    """Linear -> GELU(tanh) -> dropout -> Linear; keys ``ff.0.0`` and ``ff.2``."""

    def __init__(self, dim: int, mult: int, dropout: float) -> None:
        super().__init__()
        inner = int(dim * mult)
        self.ff = nn.Sequential(
            nn.Sequential(nn.Linear(dim, inner), nn.GELU(approximate="tanh")),
            nn.Dropout(dropout),
            nn.Linear(inner, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff(x)


class DiTBlock(nn.Module):
    """AdaLN-zero transformer block: gated attention residual, then gated feed-forward residual."""

    def __init__(self, dim: int, heads: int, dim_head: int, ff_mult: int, dropout: float) -> None:
        super().__init__()
        self.attn_norm = AdaLayerNormZero(dim)
        self.attn = Attention(dim, heads, dim_head, dropout)
        self.ff_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(dim, ff_mult, dropout)

    def forward(self, x: torch.Tensor, c: torch.Tensor, mask: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), c (B, D) time embedding, mask (B, 1, T, T), rope (1, T, dim_head) -> (B, T, D)."""
        h, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.attn_norm(x, c)
        x = x + gate_msa.unsqueeze(1) * self.attn(h, mask, rope)
        h = self.ff_norm(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        return x + gate_mlp.unsqueeze(1) * self.ff(h)


class DiT(nn.Module):
    """Velocity estimator v(x_t, t | mu, spk, cond) of the CosyVoice3 flow; same call as the v2 U-Net."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        self.time_embed = TimestepEmbedding(config.dim)
        self.input_embed = InputEmbedding(config.mel_dim, config.mu_dim, config.spk_dim, config.dim)
        self.rotary_embed = RotaryEmbedding(config.dim_head)
        self.transformer_blocks = nn.ModuleList(
            DiTBlock(config.dim, config.heads, config.dim_head, config.ff_mult, config.dropout)
            for _ in range(config.depth)
        )
        self.norm_out = AdaLayerNormFinal(config.dim)
        self.proj_out = nn.Linear(config.dim, config.mel_dim)

    def attention_mask(self, mask: torch.Tensor, streaming: bool) -> torch.Tensor:
        """(B, 1, T) float frame mask -> (B, 1, T, T) bool: padding, plus static chunks when streaming.

        Streaming frames see every earlier chunk (no left-chunk limit) and their own chunk of
        ``static_chunk_size`` frames.
        """
        valid = mask[:, 0].bool()
        chunk = self.config.static_chunk_size if streaming else 0
        full = attention_mask(valid, chunk).expand(-1, valid.shape[1], -1)
        return full.unsqueeze(1)

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
        """Predict the flow velocity.

        Args:
            x: (B, 80, T) noisy mel x_t.
            mask: (B, 1, T) 1.0 on valid frames.
            mu: (B, mu_dim, T) token conditioning at mel rate.
            t: (B,) or () flow times in [0, 1].
            spks: (B, spk_dim) projected speaker vector.
            cond: (B, 80, T) prompt mel (zeros outside the prompt).
            streaming: chunked attention (``static_chunk_size`` frames).

        Returns:
            (B, 80, T) velocity; padded frames are not zeroed (the loss masks them).
        """
        b, _, n = x.shape
        if t.ndim == 0:
            t = t.repeat(b)
        c = self.time_embed(t)
        h = self.input_embed(x.transpose(1, 2), cond.transpose(1, 2), mu.transpose(1, 2), spks)
        rope = self.rotary_embed(n)
        attn_mask = self.attention_mask(mask, streaming)
        for block in self.transformer_blocks:
            h = block(h, c, attn_mask, rope)
        return self.proj_out(self.norm_out(h, c)).transpose(1, 2)
