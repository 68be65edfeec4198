"""Attention pieces of the flow encoder: masks, ESPnet relative positions, rel-pos self-attention.

Masks are boolean, True = may attend. Shapes: B batch, T time, H heads, D model width, Dh = D / H.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def valid_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B, T) True at positions < length. Lengths above ``max_len`` count as ``max_len``."""
    return torch.arange(max_len, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def chunk_mask(size: int, chunk: int, device: torch.device) -> torch.Tensor:
    """(T, T) streaming mask: frame i sees every frame up to the end of its own chunk of ``chunk`` frames."""
    pos = torch.arange(size, device=device)
    chunk_end = (torch.div(pos, chunk, rounding_mode="trunc") + 1) * chunk
    return pos.unsqueeze(0) < chunk_end.unsqueeze(1)


def attention_mask(valid: torch.Tensor, chunk: int) -> torch.Tensor:
    """Self-attention mask for a padded batch.

    Args:
        valid: (B, T) key positions that hold data.
        chunk: streaming chunk in frames, or 0 for full context.

    Returns:
        (B, 1, T) when ``chunk`` is 0, else (B, T, T). A query row with no visible key (an empty
        utterance) is opened fully, as upstream does, so softmax never sees an all-masked row.
    """
    mask = valid.unsqueeze(1)
    if chunk > 0:
        mask = mask & chunk_mask(valid.shape[1], chunk, valid.device).unsqueeze(0)
    return mask | ~mask.any(dim=-1, keepdim=True)


def relative_sinusoids(size: int, d_model: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """ESPnet relative position table for ``size`` frames: (1, 2·size - 1, D).

    Row k encodes relative position (size - 1 - k): from +(size-1) (key far to the left) down to
    -(size-1). Even channels hold sin(p·w_i), odd channels cos(p·w_i), w_i = 10000^(-2i/D).
    """
    positions = torch.arange(size - 1, -size, -1, dtype=torch.float32, device=device).unsqueeze(1)
    freqs = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32, device=device) * -(math.log(10000.0) / d_model))
    angles = positions * freqs
    table = torch.zeros(2 * size - 1, d_model, device=device)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles)
    return table.unsqueeze(0).to(dtype)


class RelPositionalEncoding(nn.Module):
    """Scales inputs by √D and returns the relative position table, both through dropout."""

    def __init__(self, d_model: int, dropout_rate: float) -> None:
        super().__init__()
        self.d_model = d_model
        self.xscale = math.sqrt(d_model)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, D) -> (x·√D (B, T, D), positions (1, 2T-1, D))."""
        table = relative_sinusoids(x.shape[1], self.d_model, x.device, x.dtype)
        return self.dropout(x * self.xscale), self.dropout(table)


def _relative_to_absolute(scores: torch.Tensor) -> torch.Tensor:
    """(B, H, T, 2T-1) scores per relative position -> (B, H, T, T) scores per key.

    Query i and key j have relative position i - j, which sits in column (T-1) - i + j of the
    relative table; reading row i from column T-1-i onwards is a strided view of the flat buffer.
    """
    scores = scores.contiguous()
    b, h, t, width = scores.shape
    return scores.as_strided(
        (b, h, t, t),
        (h * t * width, t * width, width - 1, 1),
        storage_offset=scores.storage_offset() + t - 1,
    )


class RelPositionSelfAttention(nn.Module):
    """Transformer-XL style self-attention with ESPnet relative positions (keys as in upstream ``self_attn``).

    score(i, j) = ((q_i + u)·k_j + (q_i + v)·p_{i-j}) / √Dh, with learned per-head biases u, v
    (``pos_bias_u``, ``pos_bias_v``) and projected positions p = linear_pos(table).
    """

    def __init__(self, n_heads: int, d_model: int, dropout_rate: float, key_bias: bool = True) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.dropout_rate = dropout_rate
        self.linear_q = nn.Linear(d_model, d_model)
        self.linear_k = nn.Linear(d_model, d_model, bias=key_bias)
        self.linear_v = nn.Linear(d_model, d_model)
        self.linear_out = nn.Linear(d_model, d_model)
        self.linear_pos = nn.Linear(d_model, d_model, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(n_heads, self.d_head))
        self.pos_bias_v = nn.Parameter(torch.empty(n_heads, self.d_head))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.n_heads, self.d_head).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, pos_table: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), mask (B, 1|T, T) bool, pos_table (1, 2T-1, D) -> (B, T, D)."""
        b, t, d = x.shape
        q = self.linear_q(x).view(b, t, self.n_heads, self.d_head)
        k = self._heads(self.linear_k(x))
        v = self._heads(self.linear_v(x))
        p = self._heads(self.linear_pos(pos_table))  # (1, H, 2T-1, Dh)
        q_content = (q + self.pos_bias_u).transpose(1, 2)
        q_position = (q + self.pos_bias_v).transpose(1, 2)
        scale = 1.0 / math.sqrt(self.d_head)
        position_scores = _relative_to_absolute(torch.matmul(q_position, p.transpose(-2, -1))) * scale
        bias = position_scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        out = F.scaled_dot_product_attention(
            q_content, k, v, attn_mask=bias, dropout_p=self.dropout_rate if self.training else 0.0, scale=scale
        )
        return self.linear_out(out.transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    """Position-wise feed-forward: w_2(dropout(SiLU(w_1 x)))."""

    def __init__(self, d_model: int, hidden: int, dropout_rate: float) -> None:
        super().__init__()
        self.w_1 = nn.Linear(d_model, hidden)
        self.dropout = nn.Dropout(dropout_rate)
        self.w_2 = nn.Linear(hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.dropout(F.silu(self.w_1(x))))


class ConformerBlock(nn.Module):
    """Pre-norm block: x + attn(norm_mha(x)), then x + ff(norm_ff(x)) (no macaron FF, no conv module)."""

    def __init__(
        self, d_model: int, n_heads: int, hidden: int, dropout_rate: float, attention_dropout: float, key_bias: bool
    ) -> None:
        super().__init__()
        self.self_attn = RelPositionSelfAttention(n_heads, d_model, attention_dropout, key_bias)
        self.feed_forward = FeedForward(d_model, hidden, dropout_rate)
        self.norm_ff = nn.LayerNorm(d_model, eps=1e-12)
        self.norm_mha = nn.LayerNorm(d_model, eps=1e-12)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, pos_table: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), mask (B, 1|T, T), pos_table (1, 2T-1, D) -> (B, T, D)."""
        x = x + self.dropout(self.self_attn(self.norm_mha(x), mask, pos_table))
        return x + self.dropout(self.feed_forward(self.norm_ff(x)))
