"""What the CosyVoice2 and CosyVoice3 flows share: speaker vector, training loss, inference.

Both turn speech tokens + a speaker x-vector + a prompt mel into a mel spectrogram by conditional flow
matching; they differ in how tokens become the mel-rate condition ``mu`` (:meth:`TokenToMelFlow.encode`:
a conformer encoder in v2, a pre-lookahead conv layer in v3) and in the estimator inside ``decoder``.
Subclasses define ``input_embedding``, ``spk_embed_affine_layer``, ``decoder`` (a
:class:`~cosyml.models.flow.cfm.ConditionalFlowMatching`) and ``config`` (``token_mel_ratio``,
``pre_lookahead_len``, ``output_size``, ``n_timesteps``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cosyml.errors import InputError
from cosyml.models.flow.attention import valid_mask
from cosyml.models.flow.cfm import ConditionalFlowMatching


class TokenToMelFlow(nn.Module):
    """Base of :class:`~cosyml.models.flow.Flow` (v2) and :class:`~cosyml.models.flow.DiTFlow` (v3)."""

    config: Any
    input_embedding: nn.Embedding
    spk_embed_affine_layer: nn.Linear
    decoder: ConditionalFlowMatching
    #: In streaming inference the look-ahead tokens leave ``lengths`` (v3) or stay counted in it (v2),
    #: as upstream does for each version.
    context_leaves_lengths = False

    # ------------------------------------------------------------------------------------ shared parts

    def speaker_vector(self, embedding: torch.Tensor) -> torch.Tensor:
        """(B, 192) x-vector -> (B, 80): L2-normalised, then affine."""
        return self.spk_embed_affine_layer(F.normalize(embedding, dim=1))

    def encode(
        self,
        tokens: torch.Tensor,
        lengths: torch.Tensor,
        streaming: bool = False,
        context: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Speech tokens (B, T) -> mel-rate conditioning mu (B, ratio·T, 80) and (B,) mel lengths."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------ training

    def forward(
        self,
        batch: Mapping[str, torch.Tensor],
        *,
        streaming: bool | None = None,
        prompt_frames: Sequence[int] | None = None,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        cfg_keep: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Flow-matching training loss for one batch.

        Args:
            batch: ``speech_token`` (B, T) int, ``speech_token_len`` (B,), ``speech_feat`` (B, 2T, 80)
                mel (frames = token_mel_ratio × tokens, padded), ``speech_feat_len`` (B,),
                ``embedding`` (B, 192) speaker x-vector.
            streaming: chunked attention for this batch; default drawn with p = 0.5 (trains both modes).
            prompt_frames: per utterance, how many leading ground-truth mel frames are given as the
                prompt condition; default: 0 with p = 0.5, else uniform in [0, int(0.3 · feat_len)].
            t, noise, cfg_keep: the flow-matching draws (see :meth:`ConditionalFlowMatching.compute_loss`).
            generator: source of every default draw (the global RNG is used when None).

        Returns:
            Scalar loss.
        """
        device = self.input_embedding.weight.device
        tokens = batch["speech_token"].to(device)
        token_len = batch["speech_token_len"].to(device)
        feat = batch["speech_feat"].to(device=device, dtype=torch.float32)
        feat_len = batch["speech_feat_len"].to(device)
        embedding = batch["embedding"].to(device=device, dtype=torch.float32)
        ratio = self.config.token_mel_ratio
        if feat.shape[1] != ratio * tokens.shape[1]:
            raise InputError(
                f"flow batch: speech_feat has {feat.shape[1]} frames but speech_token has {tokens.shape[1]} tokens; "
                f"frames must be {ratio} × tokens (trim the mel or the tokens when preparing shards)"
            )

        if streaming is None:
            streaming = bool(torch.rand((), generator=generator) < 0.5)
        if prompt_frames is None:
            prompt_frames = []
            for n in feat_len.tolist():
                use_prompt = bool(torch.rand((), generator=generator) >= 0.5)
                upper = int(0.3 * n)
                prompt_frames.append(int(torch.randint(0, upper + 1, (), generator=generator)) if use_prompt else 0)

        spks = self.speaker_vector(embedding)
        mu, mel_lengths = self.encode(tokens, token_len, streaming=streaming)
        cond = torch.zeros_like(feat)
        for i, n in enumerate(prompt_frames):
            cond[i, :n] = feat[i, :n]
        mask = valid_mask(mel_lengths, mu.shape[1]).unsqueeze(1).to(mu.dtype)
        return self.decoder.compute_loss(
            feat.transpose(1, 2),
            mask,
            mu.transpose(1, 2),
            spks,
            cond.transpose(1, 2),
            streaming,
            t=t,
            noise=noise,
            cfg_keep=cfg_keep,
            generator=generator,
        )

    # ------------------------------------------------------------------------------------ inference

    @torch.inference_mode()
    def inference(
        self,
        token: torch.Tensor,
        token_len: torch.Tensor,
        prompt_token: torch.Tensor,
        prompt_token_len: torch.Tensor,
        prompt_feat: torch.Tensor,
        prompt_feat_len: torch.Tensor,
        embedding: torch.Tensor,
        streaming: bool = False,
        finalize: bool = True,
        *,
        n_timesteps: int | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Synthesize the mel of ``token`` in the voice of the prompt.

        Args:
            token: (1, T) speech tokens to render; token_len: (1,).
            prompt_token: (1, Tp) prompt tokens (may be empty); prompt_token_len: (1,).
            prompt_feat: (1, Fp, 80) prompt mel, Fp = 2·Tp; prompt_feat_len: (1,) (unused, kept for
                interface compatibility with upstream).
            embedding: (1, 192) speaker x-vector.
            streaming: chunked attention (encoder and estimator for v2, the DiT for v3).
            finalize: False while more tokens will follow: the last ``pre_lookahead_len`` tokens then
                only serve as look-ahead context and produce no frames.
            n_timesteps: Euler steps (default the config's, 10).
            noise: starting noise (1, 80, frames); default the fixed noise.

        Returns:
            (1, 80, F) float32 mel for the new tokens only (prompt frames removed).
        """
        if token.shape[0] != 1:
            raise InputError(f"flow.inference renders one utterance at a time, got a batch of {token.shape[0]}")
        device = self.input_embedding.weight.device
        dtype = self.input_embedding.weight.dtype
        spks = self.speaker_vector(embedding.to(device=device, dtype=dtype))
        tokens = torch.cat([prompt_token.to(device), token.to(device)], dim=1)
        lengths = prompt_token_len.to(device) + token_len.to(device)
        context = None
        if not finalize:
            lookahead = self.config.pre_lookahead_len
            tokens, context = tokens[:, :-lookahead], tokens[:, -lookahead:]
            if self.context_leaves_lengths:
                lengths = (lengths - lookahead).clamp(min=0)
        mu, _ = self.encode(tokens, lengths, streaming=streaming, context=context)
        prompt_frames = prompt_feat.shape[1]
        frames = mu.shape[1]
        cond = torch.zeros(1, frames, self.config.output_size, device=device, dtype=mu.dtype)
        cond[:, :prompt_frames] = prompt_feat.to(device=device, dtype=mu.dtype)
        mask = torch.ones(1, 1, frames, device=device, dtype=mu.dtype)
        mel = self.decoder.sample(
            mu.transpose(1, 2),
            mask,
            spks,
            cond.transpose(1, 2),
            n_timesteps or self.config.n_timesteps,
            streaming,
            noise=noise,
        )
        return mel[:, :, prompt_frames:].float()
