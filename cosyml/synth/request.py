"""Typed synthesis requests and results.

A :class:`SynthRequest` says what to say (``text``), in which mode and voice, and how to sample; any
field left ``None`` takes the model directory's value (the yaml's RAS parameters) or upstream's
default. :func:`SynthRequest.validate` turns every mistake into one line before any model runs.

Modes (CosyVoice2 semantics):

- ``sft``: a known speaker (``speaker`` in spk2info.pt, or in ``speaker_file``); the LLM gets no
  prompt, the flow gets the speaker embedding and no prompt mel.
- ``zero_shot``: ``prompt_wav`` + its transcript ``prompt_text``; the LLM continues the prompt
  (prompt text + prompt speech tokens), the flow gets the prompt tokens, prompt mel and embedding.
- ``cross_lingual``: ``prompt_wav`` only; the LLM has no prompt, the flow is prompted as in zero-shot.
- ``instruct``: ``instruct`` text (e.g. "用四川话说这句话") + a voice from ``prompt_wav`` or ``speaker``;
  the LLM gets the instruction (ending in ``<|endofprompt|>``, not normalised) as its prompt text
  and no prompt speech; the flow is prompted by the voice.

Fun-CosyVoice3 directories take the same requests with plain text: the engine adds the
``<|endofprompt|>`` prefixes CosyVoice3 needs (:mod:`cosyml.synth.v3`); a text, transcript or
instruction that already holds ``<|endofprompt|>`` is used as given.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cosyml.synth.errors import EmptyTextError, SynthParamError

Mode = Literal["sft", "zero_shot", "cross_lingual", "instruct"]
MODES: tuple[str, ...] = ("sft", "zero_shot", "cross_lingual", "instruct")


def infer_mode(instruct: str | None, prompt_wav: object, prompt_text: str | None) -> Mode:
    """The mode of a request that names none (the CLI's ``--mode auto``, a served row without ``mode``, a
    test-set line): an instruction makes it ``instruct``; a prompt wav makes it ``zero_shot`` with a
    transcript and ``cross_lingual`` without one; otherwise ``sft``."""
    if instruct:
        return "instruct"
    if prompt_wav:
        return "zero_shot" if (prompt_text or "").strip() else "cross_lingual"
    return "sft"


#: Upstream's defaults for the decode length, in speech tokens per text token.
DEFAULT_MIN_TOKEN_TEXT_RATIO = 2.0
DEFAULT_MAX_TOKEN_TEXT_RATIO = 20.0


@dataclass(frozen=True)
class SynthRequest:
    """One utterance to synthesise. Paths may be ``str`` or :class:`Path`."""

    text: str
    mode: Mode = "sft"
    speaker: str | None = None  # sft / instruct / zero_shot: a name in spk2info.pt or speaker_file
    speaker_file: str | Path | None = None  # spk2embedding.pt / spk2info.pt / a (192,) embedding .pt or .npy
    prompt_wav: str | Path | None = None  # zero_shot, cross_lingual, instruct
    prompt_text: str | None = None  # zero_shot: transcript of prompt_wav
    instruct: str | None = None  # instruct: the instruction
    # sampling (None: the model yaml's ras_sampling values)
    top_p: float | None = None
    top_k: int | None = None
    win_size: int | None = None
    tau_r: float | None = None
    min_token_text_ratio: float = DEFAULT_MIN_TOKEN_TEXT_RATIO
    max_token_text_ratio: float = DEFAULT_MAX_TOKEN_TEXT_RATIO
    max_tokens: int | None = None  # absolute cap on speech tokens per segment (25 tokens = 1 s)
    speed: float = 1.0  # non-stream only: the mel is stretched to int(T / speed) frames
    seed: int | None = None  # None: a fresh random seed (reported in the result)
    normalize: bool = True  # wetext text normalisation
    split_sentences: bool = False  # split long text into segments, synthesised one after another
    # weights for this request: None keeps what is loaded, "base" the model directory's, or a file
    llm: str | Path | None = None
    flow: str | Path | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "request") -> SynthRequest:
        """Build from a JSON object; unknown keys and wrong types stop with one line naming ``where``."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise SynthParamError(f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(known)}")
        if "text" not in data:
            raise SynthParamError(f"{where}: missing 'text'")
        values: dict[str, Any] = {}
        for key, value in data.items():
            values[key] = _coerce(key, value, where)
        return cls(**values)

    def replace(self, **changes: Any) -> SynthRequest:
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        """Stop with one line if the request cannot be served as given (checks that need no model)."""
        if self.mode not in MODES:
            raise SynthParamError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if not isinstance(self.text, str):
            raise SynthParamError(f"text must be one string, got {type(self.text).__name__}")
        if not self.text.strip():
            raise EmptyTextError("text is empty; pass the words to speak")
        if (
            self.mode in ("zero_shot", "cross_lingual")
            and self.prompt_wav is None
            and not (self.mode == "zero_shot" and self.speaker)
        ):
            raise SynthParamError(f"mode {self.mode} needs a prompt wav (--prompt-wav)")
        if self.mode == "zero_shot" and self.prompt_wav is not None and not (self.prompt_text or "").strip():
            raise SynthParamError("mode zero_shot needs the transcript of the prompt wav (--prompt-text)")
        if self.mode == "instruct":
            if not (self.instruct or "").strip():
                raise SynthParamError("mode instruct needs an instruction (--instruct)")
            if self.prompt_wav is None and not self.speaker:
                raise SynthParamError("mode instruct needs a voice: --prompt-wav or --speaker")
        if self.mode == "sft" and not self.speaker and self.speaker_file is None:
            raise SynthParamError("mode sft needs --speaker NAME (a speaker in spk2info.pt) or --speaker-file")
        _positive("speed", self.speed)
        _positive("max_token_text_ratio", self.max_token_text_ratio)
        if not (math.isfinite(self.min_token_text_ratio) and self.min_token_text_ratio >= 0):
            raise SynthParamError(f"min_token_text_ratio must be >= 0, got {self.min_token_text_ratio}")
        if self.min_token_text_ratio > self.max_token_text_ratio:
            raise SynthParamError(
                f"min_token_text_ratio {self.min_token_text_ratio} exceeds max_token_text_ratio {self.max_token_text_ratio}"
            )
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise SynthParamError(f"top_p must be in (0, 1], got {self.top_p}")
        for name in ("top_k", "win_size", "max_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise SynthParamError(f"{name} must be a positive integer, got {value!r}")
        if self.tau_r is not None and not (math.isfinite(self.tau_r) and self.tau_r >= 0):
            raise SynthParamError(f"tau_r must be >= 0, got {self.tau_r}")
        if self.seed is not None and (not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED):
            raise SynthParamError(f"seed must be an integer from 0 to {MAX_SEED} (2**63 - 1), got {self.seed!r}")

    def as_log_dict(self, include_text: bool = True) -> dict[str, Any]:
        """JSON-ready fields for run logs; ``include_text=False`` drops the texts (not the prompt path)."""
        out = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}
        if not include_text:
            for key in ("text", "prompt_text", "instruct"):
                out.pop(key, None)
        return out


def _positive(name: str, value: float) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise SynthParamError(f"{name} must be a positive number, got {value!r}")


#: Largest seed: torch generators take 64-bit seeds, and the vocoder's derived seed stays below 2**63.
MAX_SEED = 2**63 - 1

_FLOAT_KEYS = {"top_p", "tau_r", "min_token_text_ratio", "max_token_text_ratio", "speed"}
_INT_KEYS = {"top_k", "win_size", "max_tokens", "seed"}
_BOOL_KEYS = {"normalize", "split_sentences"}


def _coerce(key: str, value: Any, where: str) -> Any:
    if value is None:
        return None
    if key in _FLOAT_KEYS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SynthParamError(f"{where}: '{key}' must be a number, got {value!r}")
        return float(value)
    if key in _INT_KEYS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SynthParamError(f"{where}: '{key}' must be an integer, got {value!r}")
        return value
    if key in _BOOL_KEYS:
        if not isinstance(value, bool):
            raise SynthParamError(f"{where}: '{key}' must be true or false, got {value!r}")
        return value
    if not isinstance(value, str):
        raise SynthParamError(f"{where}: '{key}' must be a string, got {value!r}")
    return value


@dataclass
class Timings:
    """Wall-clock seconds spent per stage of one request (summed over its segments)."""

    frontend_s: float = 0.0  # text + prompt features
    llm_s: float = 0.0
    flow_s: float = 0.0
    hift_s: float = 0.0
    total_s: float = 0.0
    first_chunk_s: float | None = None  # streaming: request start -> first audio chunk

    def add(self, other: Timings) -> None:
        self.frontend_s += other.frontend_s
        self.llm_s += other.llm_s
        self.flow_s += other.flow_s
        self.hift_s += other.hift_s


@dataclass
class SynthResult:
    """Synthesised audio of one request.

    ``wav`` is float32 mono (N,) in [-1, 1] at ``sample_rate`` Hz (24 kHz for CosyVoice2); ``tokens``
    the speech tokens of every segment concatenated (25 a second), ``segments`` the text actually
    synthesised (normalised, one entry per segment).
    """

    wav: np.ndarray
    sample_rate: int
    tokens: list[int]
    segments: list[str]
    seed: int
    timings: Timings
    segment_tokens: list[list[int]] = field(default_factory=list)
    weights: dict[str, str] = field(default_factory=dict)  # {"llm": "base" | path, "flow": ..., "hift": ...}
    sampling: dict[str, float] = field(default_factory=dict)  # effective RAS parameters and length ratios

    @property
    def duration_s(self) -> float:
        return float(self.wav.shape[0]) / self.sample_rate

    @property
    def rtf(self) -> float:
        """Real-time factor: compute seconds per second of audio (< 1 is faster than real time)."""
        return self.timings.total_s / self.duration_s if self.duration_s > 0 else float("inf")


@dataclass(frozen=True)
class StreamChunk:
    """One streamed piece of audio: float32 (n,) at 24 kHz; ``final`` on the last chunk of the request."""

    wav: np.ndarray
    segment: int  # index of the text segment it belongs to
    index: int  # chunk number within the request
    final: bool
