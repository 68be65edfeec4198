"""Batched Whisper ASR for scoring synthesised speech (openai-whisper code, a local checkpoint).

Settings are fixed for ranking: the language is forced to the target language of each utterance (never
detected: accented clones get misidentified), greedy decoding at temperature 0 with no fallback, no
timestamps, no conditioning on earlier text. Utterances up to 30 s become log-mel windows (n_mels, 3000)
built exactly as ``model.transcribe`` builds them (:func:`cosyml.features.whisper_mel.whisper_windows`,
so transcripts match a per-file ``transcribe`` loop with the same settings) and are decoded together: one
encoder forward and one decoder loop per batch of ``batch_size`` utterances of the same language (sorted
by length, so similar lengths share a batch). Longer audio goes through ``model.transcribe`` with the same settings. Chinese hypotheses are
converted to simplified characters (``zhconv``), as CV3 does.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cosyml.devices import resolve_device
from cosyml.errors import InputError

SAMPLE_RATE = 16000
WINDOW_S = 30.0


@dataclass(frozen=True)
class Hypothesis:
    """Whisper's transcript of one utterance and its decoding statistics."""

    text: str
    language: str
    avg_logprob: float  # mean log-probability of the decoded tokens
    no_speech_prob: float  # probability of the no-speech token at the first step
    compression_ratio: float  # len(text bytes) / len(zlib(text)); > 2.4 means repetition (hallucination)
    long_form: bool = False  # True when the audio was over 30 s and went through model.transcribe
    silence: bool = False  # Whisper's own no-speech rule fired and the text was dropped (as transcribe does)


def compression_ratio(text: str) -> float:
    """Whisper's repetition measure: UTF-8 length over zlib-compressed length (0 for empty text)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def to_simplified(text: str) -> str:
    import zhconv

    return zhconv.convert(text, "zh-cn")


class WhisperASR:
    """A loaded Whisper model that transcribes lists of 16 kHz waveforms in forced-language batches."""

    def __init__(
        self,
        model,
        batch_size: int = 16,
        max_tokens: int | None = None,
        no_speech_threshold: float | None = 0.6,
        logprob_threshold: float | None = -1.0,
    ) -> None:
        """``model``: a loaded ``whisper.model.Whisper``. ``max_tokens`` caps tokens per utterance
        (None = Whisper's default, half the text context: 224). The two thresholds are ``transcribe``'s
        silence rule (its defaults): a window with no-speech probability above ``no_speech_threshold``
        and mean log-probability not above ``logprob_threshold`` gives empty text (None disables it)."""
        self.model = model
        self.device = str(next(model.parameters()).device)
        self.batch_size = max(1, int(batch_size))
        self.max_tokens = max_tokens
        self.no_speech_threshold = no_speech_threshold
        self.logprob_threshold = logprob_threshold

    @classmethod
    def load(
        cls, checkpoint: str | Path, device: str = "auto", batch_size: int = 16, max_tokens: int | None = None
    ) -> WhisperASR:
        """Load a local openai-whisper ``.pt`` checkpoint (never a model name: nothing is downloaded)."""
        import whisper

        path = Path(checkpoint)
        if not path.is_file():
            raise InputError(f"{path}: Whisper checkpoint not found; set evaluate.whisper_model to a local .pt file")
        try:
            model = whisper.load_model(str(path), device=resolve_device(device))
        except Exception as exc:  # torch.load or load_state_dict on a wrong file
            raise InputError(
                f"{path}: not an openai-whisper checkpoint ({type(exc).__name__}); pass a file such as large-v3.pt"
            ) from None
        return cls(model, batch_size=batch_size, max_tokens=max_tokens)

    @property
    def fp16(self) -> bool:
        return self.device.startswith("cuda")

    def settings(self) -> dict[str, object]:
        """What decided the transcripts (log these with the scores)."""
        dims = self.model.dims
        return {
            "asr": "openai-whisper",
            "n_mels": dims.n_mels,
            "n_audio_layer": dims.n_audio_layer,
            "n_audio_state": dims.n_audio_state,
            "n_vocab": dims.n_vocab,
            "temperature": 0.0,
            "language": "forced",
            "batch_size": self.batch_size,
            "fp16": self.fp16,
            "condition_on_previous_text": False,
            "without_timestamps": True,
            "max_tokens": self.max_tokens or dims.n_text_ctx // 2,
            "no_speech_threshold": self.no_speech_threshold,
            "logprob_threshold": self.logprob_threshold,
        }

    def _check_language(self, language: str) -> None:
        from whisper.tokenizer import LANGUAGES

        if language not in LANGUAGES:
            raise InputError(f"language {language!r}: not a Whisper language code; use zh, en, ja, ko, ...")
        if not self.model.is_multilingual and language != "en":
            raise InputError(
                f"language {language!r}: this Whisper checkpoint is English-only; "
                "use a multilingual one (e.g. large-v3.pt)"
            )

    def transcribe(
        self, waveforms: Sequence[np.ndarray], languages: Sequence[str], progress: bool = False
    ) -> list[Hypothesis]:
        """``waveforms``: float32 (num_samples,) mono at 16 kHz; ``languages``: one code each. Input order kept."""
        if len(waveforms) != len(languages):
            raise ValueError(f"{len(waveforms)} waveforms but {len(languages)} languages")
        for code in sorted(set(languages)):
            self._check_language(code)
        out: list[Hypothesis | None] = [None] * len(waveforms)
        limit = int(WINDOW_S * SAMPLE_RATE)
        batches: list[tuple[str, list[int]]] = []
        for code in sorted(set(languages)):
            short = [i for i, lang in enumerate(languages) if lang == code and len(waveforms[i]) <= limit]
            short.sort(key=lambda i: len(waveforms[i]))
            batches += [(code, short[k : k + self.batch_size]) for k in range(0, len(short), self.batch_size)]
            for i in (i for i, lang in enumerate(languages) if lang == code and len(waveforms[i]) > limit):
                out[i] = self._transcribe_long(waveforms[i], code)
        from tqdm import tqdm

        for code, indices in tqdm(batches, desc="whisper", unit="batch", disable=not progress, leave=False):
            for i, hyp in zip(indices, self._decode_batch([waveforms[i] for i in indices], code), strict=True):
                out[i] = hyp
        return out  # type: ignore[return-value]  # list[Hypothesis | None] filled at every index: long clips one by one, the batches partition the short ones

    def _decode_batch(self, waveforms: Sequence[np.ndarray], language: str) -> list[Hypothesis]:
        import torch
        import whisper
        from whisper.tokenizer import get_tokenizer

        from cosyml.features.whisper_mel import whisper_windows

        n_mels = self.model.dims.n_mels
        mels = torch.stack([whisper_windows(w, n_mels).decode for w in waveforms]).to(self.device)  # (B, n_mels, 3000)
        options = whisper.DecodingOptions(
            task="transcribe",
            language=language,
            temperature=0.0,
            without_timestamps=True,
            fp16=self.fp16,
            sample_len=self.max_tokens,
        )
        with torch.inference_mode():
            results = whisper.decode(self.model, mels, options)
        tokenizer = get_tokenizer(
            self.model.is_multilingual, num_languages=self.model.num_languages, language=language, task="transcribe"
        )
        out = []
        for r in results:
            # special tokens (random or broken models emit them) are not text, as in transcribe
            text = tokenizer.decode([t for t in r.tokens if t < tokenizer.eot])
            silence = self._is_silence(r.no_speech_prob, r.avg_logprob)
            out.append(
                self._hypothesis("" if silence else text, language, r.avg_logprob, r.no_speech_prob, silence=silence)
            )
        return out

    def _is_silence(self, no_speech_prob: float, avg_logprob: float) -> bool:
        if self.no_speech_threshold is None or no_speech_prob <= self.no_speech_threshold:
            return False
        return self.logprob_threshold is None or avg_logprob <= self.logprob_threshold

    def _transcribe_long(self, waveform: np.ndarray, language: str) -> Hypothesis:
        result = self.model.transcribe(
            np.ascontiguousarray(waveform, dtype=np.float32),
            language=language,
            temperature=0.0,
            condition_on_previous_text=False,
            fp16=self.fp16,
            verbose=None,
            sample_len=self.max_tokens,
            no_speech_threshold=self.no_speech_threshold,
            logprob_threshold=self.logprob_threshold,
        )
        segments = result.get("segments") or []
        text = "".join(str(s["text"]) for s in segments)  # not result["text"]: that keeps special tokens
        logprob = float(np.mean([s["avg_logprob"] for s in segments])) if segments else float("nan")
        no_speech = float(segments[0]["no_speech_prob"]) if segments else 1.0
        return self._hypothesis(text, language, logprob, no_speech, long_form=True)

    @staticmethod
    def _hypothesis(
        text: str,
        language: str,
        avg_logprob: float,
        no_speech_prob: float,
        long_form: bool = False,
        silence: bool = False,
    ) -> Hypothesis:
        text = text.strip()
        if language == "zh":
            text = to_simplified(text)
        return Hypothesis(
            text, language, float(avg_logprob), float(no_speech_prob), compression_ratio(text), long_form, silence
        )
