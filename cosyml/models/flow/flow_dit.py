"""The CosyVoice3 flow (upstream ``CausalMaskedDiffWithDiT``): speech tokens + speaker -> mel.

    tokens (B, T) -> input_embedding (B, T, 80) -> pre_lookahead_layer (sees 3 future tokens)
      -> repeat each token ×2 => mu (B, 2T, 80)                    (no conformer encoder, no encoder_proj)
    x-vector (B, 192) -> L2-normalise -> spk_embed_affine_layer -> spks (B, 80)
    mu, spks, prompt mel -> conditional flow matching with the DiT estimator (``decoder``) -> mel (B, 80, 2T)

Submodule names are those of the official v3 ``flow.pt`` (330 keys), so ``load_state_dict(strict=True)``
works on it. ``forward`` and ``inference`` take the same arguments as the v2 :class:`~cosyml.models.flow.Flow`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cosyml.errors import InputError
from cosyml.models.flow.attention import valid_mask
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


class DiTFlow(nn.Module):
    """Token-to-mel flow matching model of CosyVoice3 (DiT estimator, pre-lookahead token front end)."""

    def __init__(self, config: DiTFlowConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.input_embedding = nn.Embedding(config.vocab_size, config.input_size)
        self.spk_embed_affine_layer = nn.Linear(config.spk_embed_dim, config.output_size)
        self.pre_lookahead_layer = PreLookaheadLayer(config.pre_lookahead)
        self.decoder = ConditionalFlowMatching(DiT(config.estimator), config.cfm)

    # ------------------------------------------------------------------------------------ shared parts

    def speaker_vector(self, embedding: torch.Tensor) -> torch.Tensor:
        """(B, 192) x-vector -> (B, 80): L2-normalised, then affine."""
        return self.spk_embed_affine_layer(F.normalize(embedding, dim=1))

    def encode(
        self, tokens: torch.Tensor, lengths: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Speech tokens -> mel-rate conditioning.

        Args:
            tokens: (B, T) token ids (negative padding ids are clamped to 0 and masked).
            lengths: (B,) valid tokens per row.
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
            streaming: chunked DiT attention for this batch; default drawn with p = 0.5 (trains both modes).
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
        mu, mel_lengths = self.encode(tokens, token_len)
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
            streaming: chunked attention in the DiT.
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
            lengths = (lengths - lookahead).clamp(min=0)
        mu, _ = self.encode(tokens, lengths, context=context)
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


def build_dit_flow(config: dict) -> DiTFlow:
    """A randomly initialised :class:`DiTFlow` with every hyperparameter from a parsed model yaml.

    ``config`` is what :func:`cosyml.models.yaml_io.read_model_yaml` returns; its ``flow`` node must be
    the CosyVoice3 ``CausalMaskedDiffWithDiT``. Load weights with ``load_state_dict(sd, strict=True)``.
    Build under ``with torch.device("meta"):`` to inspect shapes without allocating memory.
    """
    return DiTFlow(DiTFlowConfig.from_model_config(config))
