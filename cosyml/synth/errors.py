"""One-line errors of the synthesis engine (all :class:`~cosyml.errors.CosymlError` subclasses)."""

from __future__ import annotations

from cosyml.errors import ConfigError, CosymlError, InputError


class SynthInputError(InputError):
    """A synthesis request cannot be served as given (bad text, prompt or speaker)."""


class UnknownSpeakerError(SynthInputError):
    """The speaker is not in spk2info.pt or in the speaker-embedding file."""


class EmptyTextError(SynthInputError):
    """The text is empty, or nothing speakable is left after normalisation."""


class PromptAudioError(SynthInputError):
    """The prompt wav is missing, unreadable, too short or too long."""


class SynthParamError(ConfigError):
    """A sampling / speed / length parameter is out of range, or a mode lacks a required field."""


class NoSpeechError(CosymlError):
    """The LLM stopped before producing a single speech token."""
