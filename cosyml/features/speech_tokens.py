"""Speech tokens (``speech_tokenizer_v2.onnx`` / ``_v3``) through onnxruntime, and the token/mel length rule.

Official interface (v2): input 0 ``feats`` float32 (B, 128, T) Whisper log-mel, input 1 ``feats_length``
int32 (B,); output 0 ``indices`` int32 (B, ceil(ceil(T/2)/2)) in [0, 6561), 25 tokens a second.
Upstream addresses inputs by position, so we do too. Audio longer than 30 s gets no tokens (upstream).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path

import numpy as np

from cosyml.features.onnx_runtime import (
    batch_dim_is_dynamic,
    make_session,
    padding_is_exact,
    plan_batches,
)
from cosyml.features.whisper_mel import pad_mels

MAX_TOKEN_AUDIO_S = 30.0  # upstream refuses longer audio
FLOW_SAMPLE_RATE = 24000
FLOW_MEL_HOP = 480  # flow mel: 50 frames a second at 24 kHz
TOKEN_MEL_RATIO = 2


def num_tokens(mel_frames: int) -> int:
    """Tokens the tokenizer emits for ``mel_frames`` Whisper frames: ceil(ceil(T / 2) / 2)."""
    return math.ceil(math.ceil(mel_frames / 2) / 2)


def flow_mel_frames(num_samples: int, sample_rate: int) -> int:
    """Flow mel frames for a clip: floor(N24 / 480), N24 the length after resampling to 24 kHz."""
    n24 = num_samples if sample_rate == FLOW_SAMPLE_RATE else math.ceil(num_samples * FLOW_SAMPLE_RATE / sample_rate)
    return n24 // FLOW_MEL_HOP


def usable_token_count(mel_frames: int, token_count: int) -> int:
    """L = min(mel_frames // 2, token_count): the length both sides are trimmed to (mid-2025 rule)."""
    return min(mel_frames // TOKEN_MEL_RATIO, token_count)


def align_tokens_and_mel(speech_feat, speech_token):
    """Trim a flow mel and its speech tokens so that mel frames == 2 x tokens.

    Args:
        speech_feat: (T, 80) mel frames (tensor or array).
        speech_token: (L,) tokens (tensor, array or list).
    Returns:
        (speech_feat[: 2 * n], speech_token[: n]) with n = :func:`usable_token_count`.
    """
    n = usable_token_count(int(speech_feat.shape[0]), len(speech_token))
    return speech_feat[: TOKEN_MEL_RATIO * n], speech_token[:n]


class SpeechTokenizer:
    """Wraps the speech tokenizer ONNX. ``tokenize`` maps (128, T_i) log-mels to lists of token ids."""

    def __init__(self, path: str | Path, device: str = "auto", num_threads: int = 0) -> None:
        self.path = Path(path)
        self.session = make_session(self.path, device, num_threads)
        inputs = self.session.get_inputs()
        self.feats_name, self.lengths_name = inputs[0].name, inputs[1].name
        self.num_mels = int(inputs[0].shape[1])
        dynamic = batch_dim_is_dynamic(self.session)
        self.padding_exact = dynamic and padding_is_exact(
            self._run_padded,
            lambda n, rng: rng.standard_normal((self.num_mels, n)).astype(np.float32),
        )
        self.batches_enabled = dynamic

    def _run_padded(self, mels: Sequence[np.ndarray]) -> list[np.ndarray]:
        feats, lengths = pad_mels(mels)
        out = self.session.run(None, {self.feats_name: feats, self.lengths_name: lengths})[0]
        out = np.asarray(out).reshape(len(mels), -1)  # v1 files answer (B, 1, L)
        return [out[i, : num_tokens(int(n))].astype(np.int64) for i, n in enumerate(lengths)]

    def tokenize(
        self, mels: Sequence[np.ndarray], batch_size: int = 16, executor: Executor | None = None
    ) -> list[list[int]]:
        """(128, T_i) float32 log-mels -> token id lists, in input order (padding only when exact).

        With ``executor``, batches run concurrently on its threads (onnxruntime releases the GIL).
        """
        if not mels:
            return []
        size = batch_size if self.batches_enabled else 1
        plan = plan_batches([m.shape[1] for m in mels], size, self.padding_exact)
        runs = [executor.submit(self._run_padded, [mels[i] for i in g]) if executor else None for g in plan.groups]
        out: list[list[int]] = [[] for _ in mels]
        for group, run in zip(plan.groups, runs, strict=True):
            ids_list = run.result() if run is not None else self._run_padded([mels[i] for i in group])
            for i, ids in zip(group, ids_list, strict=True):
                out[i] = ids.tolist()
        return out
