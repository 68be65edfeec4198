"""Typed view of ``params.yaml``: the one source of truth for parameters.

``params.yaml`` has one top-level section per stage (``prepare``, ``extract``, ``shards``, ...). Each
section maps onto a frozen dataclass below. A section may leave keys out (the dataclass default
applies); an unknown key, or a value of the wrong type, stops with one line naming the key.

Command-line flags and ``mlflow run -P`` values override the file through :func:`with_overrides`
(``--set prepare.min_duration_s=1.0``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cosyml.errors import ConfigError

T = TypeVar("T")

DEFAULT_PARAMS = Path("params.yaml")


@dataclass(frozen=True)
class PrepareConfig:
    """``prepare``: raw clips -> normalised 24 kHz mono clips, kaldi files, manifest, rejects."""

    speaker: str = "speaker"
    sample_rate: int = 24000
    language: str = "auto"  # "zh", "en", ... or "auto": detected per clip by Whisper when transcribing
    transcribe: bool = True  # Whisper-transcribe clips that have no transcript
    whisper_model: str = ""  # path to a Whisper checkpoint (.pt); empty = <model_dir>/whisper.pt
    min_duration_s: float = 0.5
    max_duration_s: float = 30.0
    min_keep_s: float = 1.5  # silence trim never cuts a clip that was longer than this below it
    trim_top_db: float = 40.0  # frames quieter than peak - top_db are silence
    trim_pad_s: float = 0.1  # silence kept at each end after trimming
    max_silence_ratio: float = 0.9  # reject clips that are mostly silence
    clip_threshold: float = 0.999  # |sample| at or above this counts as clipped
    max_clipped_ratio: float = 0.01  # reject clips with more clipped samples than this share
    min_rms_dbfs: float = -50.0  # reject clips whose speech part is quieter than this
    target_peak: float = 0.9  # peak-normalise louder or quieter clips to this peak
    long_recording_s: float = 60.0  # recordings longer than this are sliced at silences
    slice_min_s: float = 3.0
    slice_max_s: float = 15.0
    dev_ratio: float = 0.05
    min_dev: int = 2
    seed: int = 1986
    instruct: str = ""  # CosyVoice3: instruct prefix written to the `instruct` kaldi file
    placeholder_pattern: str = r"\{[A-Za-z_]+\}|#\w+#|<[A-Za-z_]+>"


@dataclass(frozen=True)
class ExtractConfig:
    """``extract``: campplus embeddings and speech tokens from the prepared clips."""

    batch_size: int = 16
    num_threads: int = 0  # onnxruntime intra-op threads; 0 = onnxruntime's default
    device: str = "auto"  # "auto" (CUDA provider when present), "cpu" or "cuda"
    checkpoint_every: int = 200  # utterances between atomic writes of the resume cache
    io_workers: int = 2  # threads that read and resample audio while the models run


@dataclass(frozen=True)
class ShardsConfig:
    """``shards``: parquet shards and the data.list files upstream's trainer reads."""

    utts_per_shard: int = 1000
    min_shards: int = 1  # raise to (ranks x workers) to keep every reader busy without duplication
    absolute_paths: bool = False  # data.list entries relative to the list file (True for upstream's trainer)


@dataclass(frozen=True)
class Params:
    """Everything in ``params.yaml``. ``model_dir`` is the base model directory (official layout)."""

    model_dir: str = "models/base"
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    shards: ShardsConfig = field(default_factory=ShardsConfig)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check/convert one scalar against a dataclass field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, options[0], key)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(annotation)[:1] or (Any,)
        return type(value)(_coerce(v, item, f"{key}[]") for v in value) if origin is list else tuple(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if annotation in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            number = annotation(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected {annotation.__name__}, got {value!r}") from None
        if annotation is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{key}: expected a whole number, got {value!r}")
        return number
    if annotation is str:
        if isinstance(value, dict | list):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return "" if value is None else str(value)
    return value


def from_mapping(cls: type[T], data: dict[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys with the key's dotted name."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'params'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{prefix}{unknown[0]}: unknown parameter; known ones are: {', '.join(sorted(names))}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_mapping(hint, value, f"{prefix}{name}.")  # type: ignore[arg-type]
        else:
            kwargs[name] = _coerce(value, hint, f"{prefix}{name}")
    return cls(**kwargs)


def load_params(path: str | Path | None = None) -> Params:
    """Read ``params.yaml`` (or ``path``). A missing default file gives the built-in defaults."""
    path = Path(path) if path is not None else DEFAULT_PARAMS
    if not path.exists():
        if path == DEFAULT_PARAMS:
            return Params()
        raise ConfigError(f"{path}: parameters file not found; pass --params with an existing file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}; fix the file") from None
    return from_mapping(Params, data or {}, prefix="")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"prepare.seed=3"`` -> (["prepare", "seed"], 3). Values are parsed as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected section.key=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    return [k for k in key.strip().split(".") if k], value


def with_overrides(params: Params, overrides: list[str] | dict[str, Any]) -> Params:
    """Return ``params`` with dotted-key overrides applied (validated like the file itself)."""
    data = dataclasses.asdict(params)
    items = (
        [parse_override(o) for o in overrides]
        if isinstance(overrides, list)
        else [([k for k in key.split(".") if k], v) for key, v in overrides.items()]
    )
    for keys, value in items:
        node = data
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                raise ConfigError(f"{'.'.join(keys)}: unknown parameter section '{k}'")
            node = node[k]
        if keys[-1] not in node:
            raise ConfigError(f"{'.'.join(keys)}: unknown parameter")
        node[keys[-1]] = value
    return from_mapping(Params, data)


def as_flat_dict(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a (nested) dataclass into ``{"prepare.seed": 1986, ...}`` for logging."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(as_flat_dict(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out
