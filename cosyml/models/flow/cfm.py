"""Conditional flow matching (OT path) around the velocity estimator: training loss and Euler sampling.

Training: x_t = (1 - (1 - σ)·t)·z + t·x1 with t ~ U(0, 1), z ~ N(0, I); the estimator regresses the
constant velocity u = x1 - (1 - σ)·z. With probability ``training_cfg_rate`` per utterance, mu, the
speaker vector and the prompt mel are all zeroed so the model also learns the unconditional field.

Inference: start from a fixed noise tensor (the same for every call, so synthesis is deterministic),
take ``n_timesteps`` Euler steps on t = 1 - cos(s·π/2), s uniform in [0, 1], and mix conditional and
unconditional velocities: v = (1 + w)·v_cond - w·v_uncond, w = ``inference_cfg_rate``. Both are
computed in one estimator call on a doubled batch.

Every random draw can be passed in (``t``, ``noise``, ``cfg_keep``) or taken from a ``generator``; this
module never touches the global RNG state.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from cosyml.errors import InputError
from cosyml.models.flow.config import CFMConfig

#: Frames covered by the fixed inference noise: 300 s of mel at 50 frames/s.
FIXED_NOISE_FRAMES = 50 * 300


@functools.lru_cache(maxsize=1)
def fixed_noise() -> torch.Tensor:
    """(1, 80, 15000) float32 CPU noise: ``torch.randn`` from a generator seeded 0 (upstream's numbers)."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    return torch.randn((1, 80, FIXED_NOISE_FRAMES), generator=generator, device="cpu")


def time_schedule(n_timesteps: int, scheduler: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(n_timesteps + 1,) solver times from 0 to 1; ``cosine`` crowds steps near t = 0."""
    s = torch.linspace(0, 1, n_timesteps + 1, device=device, dtype=dtype)
    return 1 - torch.cos(s * 0.5 * math.pi) if scheduler == "cosine" else s


class ConditionalFlowMatching(nn.Module):
    """The flow's ``decoder``: holds the ``estimator`` and implements the loss and the sampler.

    The estimator is the v2 U-Net (:class:`~cosyml.models.flow.decoder.CausalConditionalDecoder`) or the
    v3 :class:`~cosyml.models.flow.dit.DiT`; both are called as
    ``estimator(x_t, mask, mu, t, spks, cond, streaming) -> velocity`` with (B, 80, T) tensors.
    """

    def __init__(self, estimator: nn.Module, config: CFMConfig) -> None:
        super().__init__()
        self.config = config
        self.estimator = estimator

    def compute_loss(
        self,
        x1: torch.Tensor,
        mask: torch.Tensor,
        mu: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        streaming: bool = False,
        *,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        cfg_keep: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Masked MSE between predicted and target velocity.

        Args:
            x1: (B, 80, T) target mel.
            mask: (B, 1, T) 1.0 on valid frames.
            mu: (B, 80, T) encoder output; spks: (B, 80); cond: (B, 80, T) prompt mel or zeros.
            streaming: chunked attention in the estimator.
            t: (B,) flow times; default U(0, 1).
            noise: (B, 80, T) z; default N(0, I).
            cfg_keep: (B,) bool, False drops the conditions of that row; default keep with
                probability 1 - training_cfg_rate.
            generator: source of the default draws.

        Returns:
            Scalar loss: sum over valid frames and bins of squared error / (valid frames · 80).
        """
        b = x1.shape[0]
        if t is None:
            t = torch.rand((b,), generator=generator, device=x1.device, dtype=x1.dtype)
        if noise is None:
            noise = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        if cfg_keep is None:
            draw = torch.rand((b,), generator=generator, device=x1.device)
            cfg_keep = draw > self.config.training_cfg_rate
        t = t.reshape(b, 1, 1).to(x1)
        sigma = self.config.sigma_min
        x_t = (1 - (1 - sigma) * t) * noise + t * x1
        target = x1 - (1 - sigma) * noise
        keep = cfg_keep.to(x1).reshape(b, 1, 1)
        pred = self.estimator(x_t, mask, mu * keep, t.reshape(b), spks * keep[:, :, 0], cond * keep, streaming)
        return F.mse_loss(pred * mask, target * mask, reduction="sum") / (mask.sum() * target.shape[1])

    @torch.no_grad()
    def sample(
        self,
        mu: torch.Tensor,
        mask: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        n_timesteps: int = 10,
        streaming: bool = False,
        *,
        noise: torch.Tensor | None = None,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """Generate mel frames with classifier-free guidance.

        Args:
            mu: (B, 80, T); mask: (B, 1, T); spks: (B, 80); cond: (B, 80, T).
            n_timesteps: Euler steps.
            streaming: chunked attention in the estimator.
            noise: (B, 80, T) starting point; default the first T frames of :func:`fixed_noise`.
            temperature: noise scale.

        Returns:
            (B, 80, T) float32 mel.
        """
        frames = mu.shape[2]
        if noise is None:
            if frames > FIXED_NOISE_FRAMES:
                raise InputError(
                    f"flow: {frames} mel frames requested; one call can make at most {FIXED_NOISE_FRAMES} "
                    "(300 s): split the text into shorter sentences"
                )
            noise = fixed_noise()[:, :, :frames].expand(mu.shape[0], -1, -1)
        x = noise.to(device=mu.device, dtype=mu.dtype) * temperature
        times = time_schedule(n_timesteps, self.config.t_scheduler, mu.device, mu.dtype)
        w = self.config.inference_cfg_rate

        # Row block 0 is conditional, block 1 unconditional (mu, speaker and prompt zeroed).
        mask2 = torch.cat([mask, mask]).to(mu.dtype)
        mu2 = torch.cat([mu, torch.zeros_like(mu)])
        spks2 = torch.cat([spks, torch.zeros_like(spks)])
        cond2 = torch.cat([cond, torch.zeros_like(cond)])
        t = times[0]
        dt = times[1] - times[0]
        for step in range(1, len(times)):
            v = self.estimator(torch.cat([x, x]), mask2, mu2, t.expand(2 * x.shape[0]), spks2, cond2, streaming)
            v_cond, v_uncond = v.chunk(2)
            x = x + dt * ((1.0 + w) * v_cond - w * v_uncond)
            # t accumulates dt (not times[step]) so the float rounding matches the reference solver.
            t = t + dt
            if step < len(times) - 1:
                dt = times[step + 1] - t
        return x.float()
