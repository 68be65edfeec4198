"""Write ``params.yaml`` with every key commented, from :class:`cosyml.config.Params`.

The comments are the ones next to each field in :mod:`cosyml.config` (one place for what a key means),
so a generated project and the README cannot disagree with the code. Values are whatever ``Params``
holds: the real-run defaults of :mod:`cosyml.config`, with a project's paths and names filled in.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any

import yaml

from cosyml import config as config_module
from cosyml.config import Params

_FIELD_COMMENT = re.compile(r"^\s+(\w+):.*?\s\s#\s(.*)$")  # "  # " starts the comment (a value may hold "#")

#: Section comments (what the stage does); keys carry their own.
SECTION_NOTES = {
    "model_dir": "base model directory in the official layout (CosyVoice2-0.5B or Fun-CosyVoice3-0.5B)",
    "kit": "the demo's tiny random-weight model (`cosyml kit`); not part of a real project",
    "prepare": "raw clips -> normalised 24 kHz clips, kaldi files, train/dev split, rejects report",
    "extract": "campplus speaker embeddings and speech tokens (onnxruntime)",
    "shards": "parquet shards + data.list for training",
    "train": (
        "speaker SFT of the LLM and the flow. Upstream's recipe (the model yaml's train_conf): adam, lr 1e-5,\n"
        "constantlr (its warmup_steps 2500 is ignored by constantlr), grad_clip 5, accum_grad 2, dynamic\n"
        "batches of 2000 mel frames, average of the 5 best epochs by CV loss; keys set to null take those values"
    ),
    "evaluate": "CV3-Eval-style scoring of every candidate (CER with Whisper, speaker similarity with campplus)",
    "registry": "register evaluated candidates as versions of one model per speaker; promote by this policy",
    "tune": "Optuna search over the sampling parameters of one candidate",
}


def field_comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` from the ``# ...`` after each field of dataclass ``cls`` in its source."""
    out: dict[str, str] = {}
    for line in inspect.getsource(cls).splitlines():
        match = _FIELD_COMMENT.match(line)
        if match and not line.lstrip().startswith("#"):
            out.setdefault(match.group(1), match.group(2).strip())
    return out


def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=1000).strip()
    return text[: -len("\n...")] if text.endswith("\n...") else text.removesuffix("...").strip()


def _emit(obj: Any, indent: int, lines: list[str], notes: dict[str, str]) -> None:
    comments = field_comments(type(obj))
    pad = " " * indent
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        note = notes.get(f.name) or comments.get(f.name, "")
        if dataclasses.is_dataclass(value):
            if note:
                lines.append(f"{pad}# {note}")
            lines.append(f"{pad}{f.name}:")
            _emit(value, indent + 2, lines, {})
            continue
        item = f"{pad}{f.name}: {_scalar(value)}"
        lines.append(f"{item}  # {note}" if note else item)


def render_params(params: Params, header: str, include_kit: bool = False, notes: dict[str, str] | None = None) -> str:
    """``params.yaml`` text for ``params``: ``header`` (comment lines without ``#``), then each section
    with its note and every key with its comment. ``notes`` = extra per-key comments ("train.lr": ...)
    that replace the field's own (used to say why a project's value differs from upstream's)."""
    notes = notes or {}
    lines = [f"# {line}".rstrip() for line in header.strip().splitlines()]
    for f in dataclasses.fields(params):
        if f.name == "kit" and not include_kit:
            continue
        value = getattr(params, f.name)
        lines.append("")
        section_note = SECTION_NOTES.get(f.name, "")
        if not dataclasses.is_dataclass(value):
            lines.append(f"{f.name}: {_scalar(value)}  # {notes.get(f.name) or section_note}")
            continue
        lines.extend(f"# {line}" for line in section_note.splitlines())
        lines.append(f"{f.name}:")
        prefix = f"{f.name}."
        _emit(value, 2, lines, {k[len(prefix) :]: v for k, v in notes.items() if k.startswith(prefix)})
    return "\n".join(lines) + "\n"


def undocumented_keys(text: str) -> list[str]:
    """Keys in a rendered ``params.yaml`` without a comment on their line (mappings excepted)."""
    missing = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.endswith(":"):
            continue
        if " # " not in line:
            missing.append(stripped.split(":")[0])
    return missing


assert config_module  # the comments are read from this module's source
