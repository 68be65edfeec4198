"""Names in the registry: one registered model per speaker (ASCII, stable) and the names of logged
models. Pure (no MLflow)."""

from __future__ import annotations

import hashlib
import re

from cosyml.config import RegistryConfig


def model_name(config: RegistryConfig, speaker: str) -> str:
    """The registered model of a speaker: ``registry.model_name``, else :func:`speaker_model_name`."""
    return config.model_name or speaker_model_name(speaker)


def shown_name(name: str, speaker: str) -> str:
    """A registered model's name as printed: with the speaker's own name when the name does not show it."""
    return name if speaker in name else f"{name} ({speaker})"


def speaker_model_name(speaker: str) -> str:
    """``cosyml-<speaker>`` for an ASCII speaker; otherwise an ASCII-only, stable name
    ``cosyml-xn--<punycode>-<8 hex of sha256>`` (``派蒙`` -> ``cosyml-xn--nzw411c-...``).

    Registered-model names travel in URIs (``models:/NAME@champion``), URLs, file names and shells, so
    they stay ASCII; the speaker's own name is in the model's ``cosyml.speaker`` tag and description.
    The hash keeps an ASCII speaker spelled like a punycode string from taking a Unicode speaker's name.
    """
    if speaker.isascii():
        return f"cosyml-{speaker}"
    digest = hashlib.sha256(speaker.encode("utf-8")).hexdigest()[:8]
    return f"cosyml-xn--{speaker.encode('punycode').decode('ascii')}-{digest}"


def sanitize(text: str) -> str:
    """A name MLflow accepts for a logged model (no ``. / : %`` quotes) and a folder name, at most 60
    characters; names that had to change get a hash of the original, so two candidates never share one."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")
    if safe == text and 0 < len(safe) <= 60:
        return safe
    return f"{safe[:51]}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:8]}".lstrip("-")
