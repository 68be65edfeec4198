"""Typed view of ``params.yaml``: the one source of truth for parameters.

``params.yaml`` has one top-level section per stage (``prepare``, ``extract``, ``shards``, ...). Each
section maps onto a frozen dataclass: below, or the component's own (``prepare`` -> :mod:`cosyml.data.config`,
``extract`` -> :mod:`cosyml.features.config`, ``evaluate`` -> :mod:`cosyml.evaluation.config`,
``train`` and ``train.data`` -> :mod:`cosyml.train.config`). A section may leave keys out (the dataclass default
applies); an unknown key, or a value of the wrong type, stops with one line naming the key.

Command-line flags and ``mlflow run -P`` values override the file through :func:`with_overrides`
(``--set prepare.min_duration_s=1.0``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cosyml.data.config import PLACEHOLDER_PATTERN as PLACEHOLDER_PATTERN
from cosyml.data.config import PrepareConfig as PrepareConfig
from cosyml.errors import ConfigError
from cosyml.evaluation.config import GRID_SOURCES as GRID_SOURCES
from cosyml.evaluation.config import EvaluateConfig as EvaluateConfig
from cosyml.features.config import ExtractConfig as ExtractConfig
from cosyml.train.config import TrainConfig as TrainConfig
from cosyml.train.config import TrainDataConfig as TrainDataConfig

T = TypeVar("T")

DEFAULT_PARAMS = Path("params.yaml")


@dataclass(frozen=True)
class KitConfig:
    """``kit``: the tiny model directory the demo pipeline builds (``cosyml kit``)."""

    version: str = "cosyvoice2"  # cosyvoice2 or cosyvoice3 (Fun-CosyVoice3 layout)
    whisper: str = "random"  # whisper.pt: random, or trained (hears the toy corpus; minutes once, then cached)


@dataclass(frozen=True)
class ShardsConfig:
    """``shards``: parquet shards and the data.list files upstream's trainer reads."""

    utts_per_shard: int = 1000  # utterances per parquet shard (upstream: 1000)
    min_shards: int = 1  # raise to (ranks x workers) to keep every reader busy without duplication
    absolute_paths: bool = False  # data.list entries relative to the list file (True for upstream's trainer)


@dataclass(frozen=True)
class RegistryConfig:
    """``registry``: register evaluated candidates as model versions and promote the best by this policy."""

    model_name: str = ""  # registered model; empty = cosyml-<speaker>
    candidates: str = "exp/eval/candidates.json"  # written by `cosyml evaluate`
    speakers: str = "data/features/train/spk2embedding.pt"  # the speaker's embedding (spk2embedding/spk2info)
    sampling: str = ""  # tuned sampling defaults (JSON/YAML: top_p, top_k, win_size, tau_r); empty = model yaml
    max_tokens: int = 0  # serving cap on speech tokens per segment (25 = 1 s); 0 = none
    data_stage: str = "shards"  # DVC stage whose output md5 tags each version as its data version
    cer_weight: float = 1.0  # composite = ss_weight * SS - cer_weight * CER (higher is better)
    ss_weight: float = 1.0  # weight of speaker similarity in the composite
    require_ci_separation: bool = True  # a challenger must beat the champion beyond the CI overlap
    max_cer_regression: float = 0.02  # absolute CER a candidate may lose against the base model
    max_missing_ratio: float = 0.05  # candidates with more missing outputs (missing / n) are not eligible
    alias: str = "champion"  # alias of the promoted version (serve models:/<name>@champion)
    previous_alias: str = "previous"  # alias kept on the version it replaced (rollback)


def _default_space() -> dict[str, list[float]]:
    return {"top_p": [0.5, 0.95], "top_k": [5, 50], "win_size": [5, 20], "tau_r": [0.05, 0.3]}


@dataclass(frozen=True)
class TuneConfig:
    """``tune``: Optuna search over the synthesis sampling parameters of one candidate (``cosyml tune``)."""

    candidate: str = ""  # "llm=SRC,flow=SRC"; empty = sft-avg for each part that exists, else base
    space: dict[str, list[float]] = field(default_factory=_default_space)  # [low, high] per searched name
    n_trials: int = 20  # trials the study should hold in all (finished ones count; a rerun resumes)
    seed: int = 1986  # TPE sampler seed
    direction: str = "maximize"  # the objective is the registry composite ss_weight*SS - cer_weight*CER
    subsets: list[str] = field(default_factory=list)  # test subsets to score on; empty = evaluate.subsets
    max_utts: int = 8  # usable utterances per subset (a small fixed set); 0 = all
    synth_max_tokens: int = 0  # cap on speech tokens per utterance; 0 = evaluate.synth_max_tokens
    out_dir: str = "exp/tune"  # per-trial eval folders, optuna.db, sampling.json
    storage: str = ""  # Optuna storage URL; empty = sqlite:///<out_dir>/optuna.db; postgresql://... for many workers
    study_name: str = ""  # empty = cosyml-<speaker>-sampling


@dataclass(frozen=True)
class Params:
    """Everything in ``params.yaml``. ``model_dir`` is the base model directory (official layout)."""

    model_dir: str = "models/base"  # base model directory in the official layout
    kit: KitConfig = field(default_factory=KitConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    shards: ShardsConfig = field(default_factory=ShardsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check/convert one scalar against a dataclass field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, options[0], key)
    if origin in (list, tuple):
        if isinstance(value, str) and origin is list:
            value = [value]  # one item given as a string (`mlflow run -P`, `--set prepare.inputs=raw`)
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
        if isinstance(value, bool):  # YAML reads an unquoted on/off (and yes/no) as a boolean
            return "on" if value else "off"
        return "" if value is None else str(value)
    return value


def from_mapping(cls: type[T], data: dict[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys with the key's dotted name."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'params'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]  # cls is a dataclass type (every caller passes one); a TypeVar cannot be bound to 'any dataclass class'
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown parameter; known ones are: {', '.join(sorted(names))}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_mapping(hint, value, f"{prefix}{name}.")  # type: ignore[arg-type]  # is_dataclass narrows hint to a dataclass type, which mypy does not match with type[T]
        else:
            kwargs[name] = _coerce(value, hint, f"{prefix}{name}")
    obj = cls(**kwargs)
    check_values(obj, prefix)
    return obj


_Rule = tuple[float | None, float | None, bool, str]  # (low, high, low is exclusive, what it means)

#: Allowed ranges of numeric parameters: key -> (low, high, exclusive low, hint). ``None`` = unbounded.
_RANGES: dict[type, dict[str, _Rule]] = {
    PrepareConfig: {
        "sample_rate": (8000, 192000, False, "a sample rate in Hz, e.g. 24000"),
        "min_duration_s": (0, None, True, "seconds"),
        "max_duration_s": (0, None, True, "seconds"),
        "min_keep_s": (0, None, False, "seconds"),
        "trim_top_db": (0, None, True, "dB below the loudest frame"),
        "trim_pad_s": (0, None, False, "seconds"),
        "max_silence_ratio": (0, 1, False, "a share between 0 and 1"),
        "clip_threshold": (0, 1, True, "a sample level in (0, 1]"),
        "max_clipped_ratio": (0, 1, False, "a share between 0 and 1"),
        "min_rms_dbfs": (None, 0, False, "dBFS (0 or below)"),
        "target_peak": (0, 1, True, "a peak level in (0, 1], e.g. 0.9"),
        "long_recording_s": (0, None, True, "seconds"),
        "slice_min_s": (0, None, True, "seconds"),
        "slice_max_s": (0, None, True, "seconds"),
        "dev_ratio": (0, 1, False, "a share of clips in [0, 1), e.g. 0.1"),
        "min_dev": (0, None, False, "a number of utterances"),
        "silence_floor_dbfs": (None, 0, False, "dBFS (0 or below)"),
        "slice_min_silence_s": (0, None, False, "seconds"),
        "min_confidence": (0, 1, False, "a confidence between 0 and 1"),
        "whisper_batch_size": (1, None, False, "clips per batch, at least 1"),
        "whisper_max_tokens": (0, None, False, "tokens (0 = Whisper's default)"),
        "transcript_max_cer": (0, None, True, "an error rate above 0, e.g. 0.5"),
    },
    ExtractConfig: {
        "batch_size": (1, None, False, "clips per batch, at least 1"),
        "num_threads": (0, None, False, "threads (0 = automatic)"),
        "checkpoint_every": (1, None, False, "utterances, at least 1"),
        "workers": (0, None, False, "threads (0 = one per core)"),
        "speaker_min_similarity": (-1.0, 1.0, False, "a cosine similarity in [-1, 1]"),
        "speaker_max_z": (0.0, None, False, "robust standard deviations, 0 (off) or more"),
        "speaker_min_clips": (2, None, False, "clips, at least 2"),
    },
    ShardsConfig: {
        "utts_per_shard": (1, None, False, "utterances per shard, at least 1"),
        "min_shards": (1, None, False, "shards, at least 1"),
    },
    TrainConfig: {
        "probe_every_epochs": (0, None, False, "epochs (0 = no probe)"),
        "probe_in_domain": (0, None, False, "a number of dev lines (0 = none)"),
        "probe_max_tokens": (1, None, False, "speech tokens per line, at least 1 (25 = 1 s)"),
    },
}
_CHOICES: dict[type, dict[str, tuple[str, ...]]] = {
    TrainConfig: {"early_stop_on": ("cv_loss", "probe")},
    ExtractConfig: {"device": ("auto", "cpu", "cuda"), "token_batches": ("auto", "on", "off")},
    PrepareConfig: {"whisper_device": ("auto", "cpu", "cuda"), "check_transcripts": ("auto", "on", "off")},
    KitConfig: {"whisper": ("random", "trained")},
}


def check_values(obj: Any, prefix: str = "") -> None:
    """Values, not just types: every float is a finite number, and the prepare/extract/shards numbers are
    within their ranges (one line naming the key). Called for every section :func:`from_mapping` builds."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{prefix}{f.name}: {value!r} is not a finite number; give a finite value")
    for name, (low, high, exclusive, hint) in _RANGES.get(type(obj), {}).items():
        value = getattr(obj, name)
        too_low = low is not None and (value <= low if exclusive else value < low)
        too_high = high is not None and (value >= high if name == "dev_ratio" else value > high)
        if too_low or too_high:
            raise ConfigError(f"{prefix}{name}: {value!r} is out of range; expected {hint}")
    for name, choices in _CHOICES.get(type(obj), {}).items():
        if getattr(obj, name) not in choices:
            raise ConfigError(f"{prefix}{name}: {getattr(obj, name)!r} is not one of {', '.join(choices)}")
    if isinstance(obj, PrepareConfig):
        if obj.min_duration_s >= obj.max_duration_s:
            raise ConfigError(
                f"{prefix}min_duration_s: {obj.min_duration_s:g} is not below max_duration_s={obj.max_duration_s:g}"
            )
        if obj.slice_min_s >= obj.slice_max_s:
            raise ConfigError(f"{prefix}slice_min_s: {obj.slice_min_s:g} is not below slice_max_s={obj.slice_max_s:g}")
    if isinstance(obj, TrainConfig) and obj.early_stop_on == "probe" and obj.probe_every_epochs == 0:
        raise ConfigError(
            f"{prefix}early_stop_on: 'probe' needs the probe; set {prefix}probe_every_epochs to 1 (or N) or use cv_loss"
        )
    section_check: dict[type, Callable[[Any], None]] = {
        EvaluateConfig: _check_evaluate,
        RegistryConfig: _check_registry,
        TuneConfig: _check_tune,
    }
    if type(obj) in section_check and prefix:
        section_check[type(obj)](obj)


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
    """``"prepare.seed=3"`` -> (["prepare", "seed"], 3). Values are parsed as YAML scalars.

    An empty value (``"train.max_epochs="``) means "no override" (MLflow passes unset parameters that
    way); write ``key=""`` for an empty string.
    """
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
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
        if value is None:
            continue
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


# ---------------------------------------------------------------------------------------------- value ranges
# (evaluate, registry, tune; the data sections have their own checks)

_SEED_MAX = 2**32 - 1  # numpy's and Optuna's seeds are unsigned 32-bit


def _check_range(
    section: Any,
    prefix: str,
    name: str,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    hint: str = "",
) -> None:
    """One-line :class:`ConfigError` unless ``low <= value <= high`` (``low < value`` when ``low_open``) and
    finite; ``None`` (meaning "the model's value") passes."""
    value = getattr(section, name)
    if value is None:
        return
    key = f"{prefix}.{name}"
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: {value!r} is not a finite number; set a number{hint}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        lo = "" if low is None else (f"> {low:g}" if low_open else f">= {low:g}")
        hi = "" if high is None else f"<= {high:g}"
        raise ConfigError(
            f"{key}: {value!r} is out of range; it must be {' and '.join(x for x in (lo, hi) if x)}{hint}"
        )


def check_evaluation_params(params: Params) -> None:
    """Check the value ranges of ``evaluate``, ``registry`` and ``tune`` (also done when params load; kept
    for callers that build a :class:`Params` by hand). One :class:`ConfigError` line naming the key."""
    _check_evaluate(params.evaluate)
    _check_registry(params.registry)
    _check_tune(params.tune)


def _check_evaluate(ev: EvaluateConfig) -> None:
    for name in ("batch_size", "synth_batch_size", "bootstrap_resamples"):
        _check_range(ev, "evaluate", name, 1)
    for name in (
        "max_tokens",
        "max_utts",
        "synth_max_tokens",
        "report_max_utts",
        "min_token_text_ratio",
        "min_duration_ratio",
    ):
        _check_range(ev, "evaluate", name, 0)
    for name in ("max_silence_ratio", "max_clipped_ratio", "max_no_speech_prob"):
        _check_range(ev, "evaluate", name, 0, 1)
    for name in ("seed", "synth_seed"):
        _check_range(ev, "evaluate", name, 0, _SEED_MAX)
    _check_range(ev, "evaluate", "ci_level", 0, 1, low_open=True)
    if ev.ci_level >= 1:
        raise ConfigError(f"evaluate.ci_level: {ev.ci_level!r} is out of range; it must be > 0 and < 1 (e.g. 0.95)")
    _check_range(ev, "evaluate", "silence_dbfs", None, 0, hint=" (dBFS: 0 is full scale)")
    _check_range(ev, "evaluate", "clip_threshold", 0, 1, low_open=True)
    _check_range(ev, "evaluate", "max_compression_ratio", 0, low_open=True)
    _check_range(
        ev,
        "evaluate",
        "max_duration_ratio",
        ev.min_duration_ratio,
        low_open=True,
        hint=" (above evaluate.min_duration_ratio)",
    )
    _check_range(
        ev,
        "evaluate",
        "max_token_text_ratio",
        ev.min_token_text_ratio,
        low_open=True,
        hint=" (above evaluate.min_token_text_ratio)",
    )
    _check_range(ev, "evaluate", "top_p", 0, 1, low_open=True)
    _check_range(ev, "evaluate", "top_k", 1)
    _check_range(ev, "evaluate", "win_size", 1)
    _check_range(ev, "evaluate", "tau_r", 0)
    if ev.device not in ("auto", "cpu", "cuda") and not ev.device.startswith("cuda:"):
        raise ConfigError(f"evaluate.device: {ev.device!r} is not auto, cpu, cuda or cuda:N")


def _check_registry(reg: RegistryConfig) -> None:
    for name in ("max_tokens", "cer_weight", "ss_weight", "max_cer_regression"):
        _check_range(reg, "registry", name, 0)
    _check_range(reg, "registry", "max_missing_ratio", 0, 1)
    if reg.cer_weight == 0 and reg.ss_weight == 0:
        raise ConfigError("registry.cer_weight, registry.ss_weight: both 0 leave nothing to rank by; set one above 0")
    for name in ("alias", "previous_alias"):
        if not getattr(reg, name).strip():
            raise ConfigError(f"registry.{name}: empty; name the alias (default: champion / previous)")
    if reg.alias == reg.previous_alias:
        raise ConfigError(f"registry.previous_alias: '{reg.previous_alias}' is also registry.alias; use another name")


def _check_tune(tune: TuneConfig) -> None:
    _check_range(tune, "tune", "n_trials", 1)
    _check_range(tune, "tune", "seed", 0, _SEED_MAX)
    for name in ("max_utts", "synth_max_tokens"):
        _check_range(tune, "tune", name, 0)
    if tune.direction not in ("maximize", "minimize"):
        raise ConfigError(f"tune.direction: {tune.direction!r} is not maximize or minimize")
