"""Synthesis front end: text -> token ids, prompt wav -> (speech tokens, flow mel, speaker x-vector), speakers.

Prompt features follow upstream's frontend, through our one implementation of each feature:

- speech tokens: 16 kHz mono, Whisper 128-band log-mel, the speech-tokenizer ONNX (at most 30 s);
- flow prompt mel: 24 kHz mono, the model yaml's ``feat_extractor`` mel, (1, F, 80);
- x-vector: 16 kHz Kaldi fbank + CMN, CAM++ ONNX, the raw (1, 192) vector (the flow normalises it);
- then mel and tokens are trimmed so that mel frames = 2 x tokens.

Speakers come from ``spk2info.pt`` (``{name: {"embedding": (1, 192), ...}}``, upstream's format; an entry
written by upstream's ``add_zero_shot_spk`` also holds prompt tokens and mel) or from the ``extract``
stage's ``spk2embedding.pt`` (``{name: list[192 float]}``), or from one embedding saved as a tensor/array.
"""

from __future__ import annotations

import collections
import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cosyml.audio import read_audio, resample, to_mono
from cosyml.errors import CosymlError
from cosyml.features.campplus import SpeakerEncoder
from cosyml.features.fbank import campplus_features
from cosyml.features.mel import MelConfig, mel_spectrogram
from cosyml.features.speech_tokens import MAX_TOKEN_AUDIO_S, SpeechTokenizer
from cosyml.features.whisper_mel import log_mel
from cosyml.synth import v3
from cosyml.synth.errors import EmptyTextError, PromptAudioError, UnknownSpeakerError
from cosyml.text.normalize import TextNormalizer, is_only_punctuation
from cosyml.text.tokenizer import ENDOFPROMPT, TextTokenizer

TOKEN_SAMPLE_RATE = 16000  # speech tokenizer and CAM++ input rate


# ------------------------------------------------------------------------------------------------ text


class TextFrontend:
    """Normalisation, optional sentence splitting and tokenisation of the text to speak.

    ``version`` ("v2" or "v3") picks the prompt conventions; for v3 the ``<|endofprompt|>`` prefixes of
    :mod:`cosyml.synth.v3` are added to plain texts, transcripts and instructions.
    """

    def __init__(self, tokenizer: TextTokenizer, version: str = "v2") -> None:
        self.tokenizer = tokenizer
        self.version = version

    def segments(self, text: str, normalize: bool, split: bool) -> list[str]:
        """The text to synthesise, as one string (``split=False``) or sentence segments; never empty.

        A text holding ``<|`` and ``|>`` (e.g. ``<|endofprompt|>``) is neither normalised nor split, as upstream.
        """
        if not isinstance(text, str):
            raise EmptyTextError(f"text must be a string, got {type(text).__name__}")
        if not text.strip():
            raise EmptyTextError("text is empty; pass the words to speak with --text")
        normalizer = TextNormalizer(enabled=normalize)
        # split=False: ONE string in a list, never iterated by character.
        pieces = normalizer.normalize_and_split(text, self.tokenizer.encode) if split else [normalizer.normalize(text)]
        pieces = [p for p in pieces if p.strip() and not is_only_punctuation(p.strip())]
        if not pieces:
            raise EmptyTextError(
                f"text {_clip(text)!r} has nothing speakable after normalisation; pass words, not only punctuation"
            )
        return pieces

    def tts_text(self, segment: str, llm_has_prompt: bool) -> str:
        """A segment as the LLM reads it: v3 without an LLM prompt (sft, cross_lingual) gets the system
        prompt prefix (unless it has ``<|endofprompt|>``); otherwise unchanged."""
        if self.version == "v3" and not llm_has_prompt:
            return v3.with_system_prompt(segment)
        return segment

    def prompt_text(self, text: str, normalize: bool) -> str:
        """A zero-shot transcript: normalised like the text, never split (v3: behind the system prompt)."""
        if not text.strip():
            raise EmptyTextError("prompt text is empty; pass the transcript of the prompt wav with --prompt-text")
        text = TextNormalizer(enabled=normalize).normalize(text)
        return v3.with_system_prompt(text) if self.version == "v3" else text

    def instruct_text(self, text: str) -> str:
        """An instruction as the LLM prompt, not normalised: v2 ``<instruction><|endofprompt|>``,
        v3 ``You are a helpful assistant. <instruction><|endofprompt|>`` (as given if it has the marker)."""
        if self.version == "v3":
            return v3.instruct_prompt(text)
        text = text.strip()
        return text if text.endswith(ENDOFPROMPT) else text + ENDOFPROMPT

    def stored_prompt_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Transcript ids of a stored speaker (L,); v3: the system prompt's ids go first if ``<|endofprompt|>``
        is missing (a speaker stored from plain text)."""
        if self.version != "v3" or self.tokenizer.token_id(ENDOFPROMPT) in ids.tolist():
            return ids
        return torch.cat([self.encode(v3.SYSTEM_PROMPT_PREFIX), ids.reshape(-1).long()])

    def encode(self, text: str, what: str = "text") -> torch.Tensor:
        """(L,) long text-token ids of ``text``; one-line error when it encodes to nothing."""
        ids = self.tokenizer.encode(text)
        if not ids:
            raise EmptyTextError(f"{what} {_clip(text)!r} encodes to no tokens; pass words to speak")
        return torch.tensor(ids, dtype=torch.long)


def _clip(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


# ------------------------------------------------------------------------------------------------ prompt


@dataclass
class PromptFeatures:
    """Features of one prompt wav: tokens (1, T) long, mel (1, 2T, 80), embedding (1, 192), both trimmed."""

    tokens: torch.Tensor
    feat: torch.Tensor
    embedding: torch.Tensor
    duration_s: float


#: Distinct prompt files whose features a :class:`PromptFrontend` keeps (each well under 1 MB).
PROMPT_CACHE_SIZE = 16


class PromptFrontend:
    """The two ONNX models of a model directory and the flow mel settings; sessions open on first use."""

    def __init__(
        self, campplus_path: Path, speech_tokenizer_path: Path, mel_config: MelConfig, device: str = "cpu"
    ) -> None:
        self.campplus_path = campplus_path
        self.speech_tokenizer_path = speech_tokenizer_path
        self.mel_config = mel_config
        self.onnx_device = "cpu" if device == "cpu" else "auto"
        # Keyed by the file's content, bounded: a server gets every prompt in a new temporary file, and a
        # cache keyed by path grew by one entry per request without end (issue 17.9).
        self._cache: collections.OrderedDict[str, PromptFeatures] = collections.OrderedDict()

    @functools.cached_property
    def speaker_encoder(self) -> SpeakerEncoder:
        return SpeakerEncoder(self.campplus_path, "cpu")  # upstream runs CAM++ on the CPU provider

    @functools.cached_property
    def speech_tokenizer(self) -> SpeechTokenizer:
        return SpeechTokenizer(self.speech_tokenizer_path, self.onnx_device)

    def features(self, path: str | Path) -> PromptFeatures:
        """Features of ``path``; the last :data:`PROMPT_CACHE_SIZE` distinct prompt files (by content) are
        kept, so a batch run or a server answering many requests with one prompt computes it once."""
        path = Path(path)
        if not path.is_file():
            raise PromptAudioError(f"{path}: prompt wav not found; pass an existing audio file with --prompt-wav")
        key = hashlib.sha1(path.read_bytes()).hexdigest()
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        features = self._compute(path)
        self._cache[key] = features
        while len(self._cache) > PROMPT_CACHE_SIZE:
            self._cache.popitem(last=False)
        return features

    def _compute(self, path: Path) -> PromptFeatures:
        try:
            audio = read_audio(path)
        except CosymlError as exc:
            raise PromptAudioError(f"prompt wav {exc}") from None
        mono = to_mono(audio.samples)
        duration = mono.shape[0] / audio.sample_rate if audio.sample_rate > 0 else 0.0
        if duration > MAX_TOKEN_AUDIO_S:
            raise PromptAudioError(
                f"{path}: prompt wav is {duration:.1f} s; the speech tokenizer takes at most {MAX_TOKEN_AUDIO_S:.0f} s, use a shorter clip (3-10 s is typical)"
            )
        wav16 = resample(mono, audio.sample_rate, TOKEN_SAMPLE_RATE)
        wav24 = resample(mono, audio.sample_rate, self.mel_config.sampling_rate)
        too_short = PromptAudioError(
            f"{path}: prompt wav is {duration:.2f} s, too short for one speech token; use a clip of a few seconds"
        )
        if wav24.shape[0] < self.mel_config.n_fft or wav16.shape[0] < 400:
            raise too_short
        tokens = self.speech_tokenizer.tokenize([log_mel(wav16)])[0]
        fbank = campplus_features([wav16])[0]
        if fbank.shape[0] == 0:
            raise too_short
        embedding = self.speaker_encoder.embed([fbank])[0]
        feat = mel_spectrogram(torch.from_numpy(wav24), self.mel_config)[0].T  # (F, 80)
        n = min(feat.shape[0] // 2, len(tokens))
        if n < 1:
            raise too_short
        return PromptFeatures(
            tokens=torch.tensor([tokens[:n]], dtype=torch.long),
            feat=feat[: 2 * n].unsqueeze(0).float(),
            embedding=torch.from_numpy(np.asarray(embedding, dtype=np.float32)).reshape(1, -1),
            duration_s=duration,
        )


# ------------------------------------------------------------------------------------------------ speakers


@dataclass
class Speaker:
    """A stored voice: x-vector (1, 192), plus prompt tokens/mel/text when it was stored from a prompt."""

    name: str
    embedding: torch.Tensor
    prompt_tokens: torch.Tensor | None = None  # (1, T) long
    prompt_feat: torch.Tensor | None = None  # (1, 2T, 80)
    prompt_text: torch.Tensor | None = None  # (L,) text-token ids of the prompt transcript


def _as_embedding(value: Any, where: str, dim: int) -> torch.Tensor:
    try:
        tensor = torch.as_tensor(np.asarray(value, dtype=np.float32) if not isinstance(value, torch.Tensor) else value)
    except (TypeError, ValueError):
        raise UnknownSpeakerError(f"{where}: not a {dim}-value speaker embedding") from None
    tensor = tensor.float().reshape(-1)
    if tensor.numel() != dim or not torch.isfinite(tensor).all():
        raise UnknownSpeakerError(
            f"{where}: speaker embedding has {tensor.numel()} values, expected {dim} finite values"
        )
    return tensor.reshape(1, dim)


def _entry_to_speaker(name: str, entry: Any, where: str, dim: int) -> Speaker:
    if isinstance(entry, Mapping):
        if "embedding" not in entry and "flow_embedding" not in entry:
            raise UnknownSpeakerError(f"{where}: speaker '{name}' has no 'embedding'; rebuild the speaker file")
        emb = _as_embedding(entry.get("flow_embedding", entry.get("embedding")), f"{where}: '{name}'", dim)
        tokens = entry.get("flow_prompt_speech_token")
        feat = entry.get("prompt_speech_feat")
        text = entry.get("prompt_text")
        if isinstance(tokens, torch.Tensor) and isinstance(feat, torch.Tensor) and tokens.numel() > 0:
            n = min(int(feat.shape[1]) // 2, int(tokens.shape[1]))
            return Speaker(
                name,
                emb,
                prompt_tokens=tokens[:, :n].long().cpu(),
                prompt_feat=feat[:, : 2 * n].float().cpu(),
                prompt_text=text.reshape(-1).long().cpu() if isinstance(text, torch.Tensor) else None,
            )
        return Speaker(name, emb)
    return Speaker(name, _as_embedding(entry, f"{where}: '{name}'", dim))


def load_speaker_file(path: str | Path, dim: int = 192) -> dict[str, Speaker]:
    """Speakers of ``path``: a spk2info.pt / spk2embedding.pt dict, or one embedding (named after the file)."""
    path = Path(path)
    if not path.is_file():
        raise UnknownSpeakerError(
            f"{path}: speaker file not found; pass spk2info.pt, spk2embedding.pt or an embedding file"
        )
    try:
        if path.suffix == ".npy":
            data: Any = np.load(path, allow_pickle=False)
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any decoding failure is a bad user file
        reason = str(exc).strip().splitlines()[0][:100] if str(exc).strip() else type(exc).__name__
        raise UnknownSpeakerError(
            f"{path}: cannot read speaker file ({reason}); pass a torch.save'd dict or tensor"
        ) from None
    if isinstance(data, Mapping):
        return {str(name): _entry_to_speaker(str(name), entry, str(path), dim) for name, entry in data.items()}
    return {path.stem: Speaker(path.stem, _as_embedding(data, str(path), dim))}


def pick_speaker(speakers: Mapping[str, Speaker], name: str | None, source: str) -> Speaker:
    """``speakers[name]``; with no name, the only speaker of a one-speaker file."""
    if name is None:
        if len(speakers) == 1:
            return next(iter(speakers.values()))
        known = ", ".join(sorted(speakers)[:20]) or "none"
        raise UnknownSpeakerError(f"{source}: holds {len(speakers)} speakers; pick one with --speaker (known: {known})")
    if name not in speakers:
        known = ", ".join(sorted(speakers)[:20]) or "none"
        more = f" and {len(speakers) - 20} more" if len(speakers) > 20 else ""
        raise UnknownSpeakerError(f"unknown speaker '{name}' in {source}; known speakers: {known}{more}")
    return speakers[name]
