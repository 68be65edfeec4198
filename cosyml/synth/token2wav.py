"""Speech tokens -> waveform: the flow renders a mel, HiFT vocodes it; whole or in streamed chunks.

Non-stream: one flow call on all tokens (``finalize=True``, full attention), an optional speed change
(the mel is linearly interpolated to ``int(F / speed)`` frames), one HiFT call.

Stream (CosyVoice2's schedule, read from the model yaml): a chunk is rendered once the LLM has
``hop + pre_lookahead`` tokens beyond the last chunk (hop = ``chunk_size``, 25 tokens = 1 s; the first
hop is stretched so prompt + hop is a multiple of ``chunk_size``). Every chunk re-runs the flow on all
tokens so far with chunked attention (``streaming=True``, ``finalize=False``: the last
``pre_lookahead_len`` tokens are look-ahead only) and keeps the new frames. The hop doubles after each
chunk up to 4 x ``chunk_size``; the schedule lives in a :class:`StreamSchedule` made per request, so
nothing carries over between requests. The last chunk renders the remaining tokens with
``finalize=True`` and full attention.

HiFT continuity between chunks: the last 8 mel frames of a chunk are vocoded again at the head of
the next one, the excitation (source) of those 3840 samples is reused so the sine phase continues,
and the newest 3840 samples of a chunk are held back and cross-faded (a symmetric Hamming window of
2 x 3840 samples, rising half on the new audio, falling half on the held-back audio) into the next.
The concatenated chunks have exactly the length of the non-stream output: 480 samples per mel frame.

CosyVoice3 (a :class:`~cosyml.models.hift_causal.CausalHiFT` vocoder, upstream ``CosyVoice3Model``):
the same flow schedule, but no HiFT cache or cross-fade. The new mel of each chunk is appended to all
mel so far and the causal HiFT re-vocodes all of it (``finalize=False``: its last 8 frames give no
audio yet); a chunk is the audio beyond what earlier chunks returned. The last chunk vocodes all mel
with ``finalize=True``. The causal HiFT draws its source noise from a fixed table, so the audio does not
depend on a generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cosyml.models.flow import FlowModel
from cosyml.models.hift import HiFT
from cosyml.models.hift_causal import CausalHiFT

MEL_CACHE_FRAMES = 8  # mel frames vocoded twice across a chunk boundary
MAX_HOP_FACTOR = 4  # the hop grows to at most 4 x chunk_size
HOP_SCALE = 2  # ... doubling after every chunk


@dataclass
class FlowPrompt:
    """What conditions the flow: prompt tokens (1, Tp) long, prompt mel (1, 2 Tp, 80), x-vector (1, 192).

    ``Tp`` is 0 for sft (no prompt mel); the embedding is the raw CAM++ vector (the flow normalises it).
    """

    tokens: torch.Tensor
    feat: torch.Tensor
    embedding: torch.Tensor

    @classmethod
    def speaker_only(cls, embedding: torch.Tensor, num_mels: int = 80) -> FlowPrompt:
        return cls(
            tokens=torch.zeros(1, 0, dtype=torch.long),
            feat=torch.zeros(1, 0, num_mels),
            embedding=embedding.reshape(1, -1).float(),
        )

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[1])


@dataclass
class StageTimes:
    """Seconds spent in the flow and in HiFT."""

    flow_s: float = 0.0
    hift_s: float = 0.0


def _lengths(n: int, device: torch.device) -> torch.Tensor:
    return torch.tensor([n], dtype=torch.int32, device=device)


class Token2Wav:
    """Renders speech tokens with a flow and a HiFT vocoder (both already on ``device``, eval mode).

    v2: :class:`~cosyml.models.flow.Flow` + :class:`~cosyml.models.hift.HiFT`; v3:
    :class:`~cosyml.models.flow.DiTFlow` + :class:`~cosyml.models.hift_causal.CausalHiFT`.
    """

    def __init__(
        self, flow: FlowModel, hift: HiFT | CausalHiFT, chunk_size: int, device: torch.device | str = "cpu"
    ) -> None:
        self.flow = flow
        self.hift = hift
        self.chunk_size = int(chunk_size)
        self.device = torch.device(device)
        self.samples_per_frame = hift.config.samples_per_frame  # 480 at 24 kHz
        self.source_cache_len = MEL_CACHE_FRAMES * self.samples_per_frame  # 3840
        # numpy.hamming(2 * 3840): the symmetric window, computed in float64 as numpy does.
        self.fade_window = torch.hamming_window(2 * self.source_cache_len, periodic=False, dtype=torch.float64)
        self.causal = isinstance(hift, CausalHiFT)

    @property
    def token_mel_ratio(self) -> int:
        return self.flow.config.token_mel_ratio

    @property
    def pre_lookahead(self) -> int:
        return self.flow.config.pre_lookahead_len

    def _timer(self) -> float:
        import time

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def mel(
        self, tokens: torch.Tensor, prompt: FlowPrompt, *, streaming: bool, finalize: bool, times: StageTimes
    ) -> torch.Tensor:
        """(1, T) tokens -> (1, 80, F) mel for the tokens after the prompt."""
        t0 = self._timer()
        dev = self.device
        mel = self.flow.inference(
            tokens.to(dev),
            _lengths(tokens.shape[1], dev),
            prompt.tokens.to(dev),
            _lengths(prompt.num_tokens, dev),
            prompt.feat.to(dev),
            _lengths(prompt.feat.shape[1], dev),
            prompt.embedding.to(dev),
            streaming=streaming,
            finalize=finalize,
        )
        times.flow_s += self._timer() - t0
        return mel

    def vocode(
        self,
        mel: torch.Tensor,
        generator: torch.Generator | None,
        times: StageTimes,
        cache_source: torch.Tensor | None = None,
        finalize: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, 80, F) mel -> (wav (1, 480 F), source (1, 1, 480 F)).

        v2: source noise from ``generator``, ``cache_source`` continues a stream. v3 (causal HiFT): both
        unused (fixed noise); ``finalize=False`` returns only ``480 (F - 8)`` samples (see CausalHiFT).
        """
        t0 = self._timer()
        if isinstance(self.hift, CausalHiFT):
            wav, source = self.hift.inference(mel, finalize=finalize)
        else:
            wav, source = self.hift.inference(mel, cache_source=cache_source, generator=generator)
        times.hift_s += self._timer() - t0
        return wav, source

    @torch.inference_mode()
    def render(
        self,
        tokens: list[int],
        prompt: FlowPrompt,
        *,
        speed: float = 1.0,
        generator: torch.Generator | None = None,
        times: StageTimes | None = None,
    ) -> torch.Tensor:
        """All tokens at once -> (N,) float32 CPU waveform; ``speed`` stretches the mel (1.0: unchanged)."""
        times = times if times is not None else StageTimes()
        token_tensor = torch.tensor([tokens], dtype=torch.long)
        mel = self.mel(token_tensor, prompt, streaming=False, finalize=True, times=times)
        if speed != 1.0:
            mel = F.interpolate(mel, size=max(1, int(mel.shape[2] / speed)), mode="linear")
        wav, _ = self.vocode(mel, generator, times)
        return wav[0].float().cpu()

    def stream(self, prompt: FlowPrompt, generator: torch.Generator | None = None) -> StreamSession:
        """A fresh per-request streaming session (its own hop schedule and HiFT cache)."""
        if self.causal:
            return CausalStreamSession(self, prompt, generator)
        return StreamSession(self, prompt, generator)


class StreamSchedule:
    """When the next chunk is due. Made per request: the hop starts at ``chunk_size`` every time."""

    def __init__(self, chunk_size: int, pre_lookahead: int, prompt_tokens: int) -> None:
        self.hop = chunk_size
        self.max_hop = MAX_HOP_FACTOR * chunk_size
        self.pre_lookahead = pre_lookahead
        # First hop padded so that prompt + hop ends on a chunk boundary of the flow's attention.
        self.prompt_pad = math.ceil(prompt_tokens / chunk_size) * chunk_size - prompt_tokens
        self.offset = 0  # tokens already rendered

    @property
    def this_hop(self) -> int:
        return self.hop + self.prompt_pad if self.offset == 0 else self.hop

    def due(self, available: int) -> bool:
        """Enough tokens for the next intermediate chunk (hop + look-ahead beyond the offset)?"""
        return available - self.offset >= self.this_hop + self.pre_lookahead

    def advance(self) -> None:
        self.offset += self.this_hop
        self.hop = min(self.max_hop, self.hop * HOP_SCALE)


class StreamSession:
    """Turns a growing token list into audio chunks (see the module docstring)."""

    def __init__(self, t2w: Token2Wav, prompt: FlowPrompt, generator: torch.Generator | None) -> None:
        self.t2w = t2w
        self.prompt = prompt
        self.generator = generator
        self.schedule = StreamSchedule(t2w.chunk_size, t2w.pre_lookahead, prompt.num_tokens)
        self.times = StageTimes()
        self._cache_mel: torch.Tensor | None = None  # (1, 80, 8)
        self._cache_source: torch.Tensor | None = None  # (1, 1, 3840)
        self._cache_speech: torch.Tensor | None = None  # (1, 3840)

    @torch.inference_mode()
    def push(self, tokens: list[int]) -> list[torch.Tensor]:
        """Call with all tokens decoded so far; returns the (n,) chunks that became due (often none)."""
        chunks = []
        while self.schedule.due(len(tokens)):
            end = self.schedule.offset + self.schedule.this_hop + self.schedule.pre_lookahead
            chunks.append(self._chunk(tokens[:end], finalize=False))
            self.schedule.advance()
        return chunks

    @torch.inference_mode()
    def finish(self, tokens: list[int]) -> torch.Tensor:
        """The last chunk: every token not rendered yet, plus the held-back tail."""
        return self._chunk(tokens, finalize=True)

    def _chunk(self, tokens: list[int], finalize: bool) -> torch.Tensor:
        t2w = self.t2w
        token_tensor = torch.tensor([tokens], dtype=torch.long)
        # Intermediate chunks use chunked attention; the last one full attention (as upstream).
        mel = t2w.mel(token_tensor, self.prompt, streaming=not finalize, finalize=finalize, times=self.times)
        mel = mel[:, :, self.schedule.offset * t2w.token_mel_ratio :]
        cache_source = None
        if self._cache_mel is not None:
            mel = torch.cat([self._cache_mel, mel], dim=2)
            cache_source = self._cache_source
        wav, source = t2w.vocode(mel, self.generator, self.times, cache_source=cache_source)
        if self._cache_speech is not None:
            wav = self._cross_fade(wav, self._cache_speech)
        if not finalize:
            keep = t2w.source_cache_len
            self._cache_mel = mel[:, :, -MEL_CACHE_FRAMES:]
            self._cache_source = source[:, :, -keep:]
            self._cache_speech = wav[:, -keep:]
            wav = wav[:, :-keep]
        return wav[0].float().cpu()

    def _cross_fade(self, wav: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """Blend the head of ``wav`` (1, n) with the held-back tail ``previous`` (1, 3840)."""
        half = self.t2w.source_cache_len
        window = self.t2w.fade_window.to(device=wav.device)
        out = wav.clone()
        head = wav[:, :half].double() * window[:half] + previous[:, -half:].double() * window[half:]
        out[:, :half] = head.to(wav.dtype)
        return out


class CausalStreamSession(StreamSession):
    """CosyVoice3 streaming: all mel so far re-vocoded by the causal HiFT; no cache or cross-fade."""

    def __init__(self, t2w: Token2Wav, prompt: FlowPrompt, generator: torch.Generator | None) -> None:
        super().__init__(t2w, prompt, generator)
        self._mel: torch.Tensor | None = None  # (1, 80, F): every frame rendered so far
        self._emitted = 0  # samples returned so far

    def _chunk(self, tokens: list[int], finalize: bool) -> torch.Tensor:
        t2w = self.t2w
        token_tensor = torch.tensor([tokens], dtype=torch.long)
        mel = t2w.mel(token_tensor, self.prompt, streaming=not finalize, finalize=finalize, times=self.times)
        mel = mel[:, :, self.schedule.offset * t2w.token_mel_ratio :]
        self._mel = mel if self._mel is None else torch.cat([self._mel, mel], dim=2)
        hift = self.t2w.hift
        if not finalize and isinstance(hift, CausalHiFT) and self._mel.shape[2] <= hift.withheld_frames:
            return torch.zeros(0)  # too short for any audio yet (only with a very small chunk_size)
        wav, _ = t2w.vocode(self._mel, None, self.times, finalize=finalize)
        new = wav[:, self._emitted :]
        self._emitted += new.shape[1]
        return new[0].float().cpu()
