"""Reading and writing official CosyVoice2/3 model directories.

A model directory (``CosyVoice2-0.5B``, ``Fun-CosyVoice3-0.5B``, or one we assembled) holds the model
yaml, ``llm.pt``/``flow.pt``/``hift.pt``, the ONNX frontends and the ``CosyVoice-BlankEN`` Qwen folder.
:class:`ModelDir` names every file, tells v2 from v3 by which yaml exists, parses the yaml without
importing upstream code and exposes the hyperparameters it sets (they are always read from the file,
never hard-coded: ``fmax`` and the tokenizer version differ between releases).

The state-dict helpers are shared by the LLM, flow and HiFT modules: strict loading with a one-line
error naming the file and the first mismatching keys, and saving plain fp32 CPU dicts with exactly the
official key set (tied tensors stored once) atomically.
"""

from __future__ import annotations

import json
import shutil
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from cosyml.errors import ModelDirError
from cosyml.features.mel import MelConfig
from cosyml.models import keys
from cosyml.models.generation import SamplingParams
from cosyml.models.keys import Part, Version
from cosyml.models.yaml_io import Tagged, read_model_yaml, require_tagged

StateDict = dict[str, torch.Tensor]


# --------------------------------------------------------------------------------------------------
# Hyperparameters


@dataclass(frozen=True)
class ModelHParams:
    """Hyperparameters of a model directory, as its yaml sets them."""

    version: Version
    sample_rate: int  # Hz of the output waveform
    llm_input_size: int
    llm_output_size: int
    spk_embed_dim: int
    speech_token_size: int  # number of speech-token codes (6561 = 3^8)
    token_frame_rate: int  # speech tokens per second
    token_mel_ratio: int  # mel frames per speech token
    chunk_size: int  # streaming chunk, in speech tokens
    mix_ratio: tuple[int, int]  # bistream: text tokens, speech tokens per chunk
    sampling: SamplingParams
    mel: MelConfig  # the feat_extractor settings (training targets and inference prompt mels)
    tokenizer_version: str  # "cosyvoice2" or "cosyvoice3" (get_tokenizer.version; absent = cosyvoice2)
    allowed_special: str


def _number(value: Any, where: str, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ModelDirError(f"{where} is {value!r}, expected a {kind.__name__}; restore the official model yaml")
    if kind is int and float(value) != int(value):
        raise ModelDirError(f"{where} is {value!r}, expected an integer; restore the official model yaml")
    return kind(value)


def _get(node: Tagged | Mapping[str, Any], key: str, where: str, kind: type, default: Any = ...) -> Any:
    kwargs = node.kwargs() if isinstance(node, Tagged) else node
    if key not in kwargs:
        if default is ...:
            raise ModelDirError(f"{where}: missing '{key}'; restore the official model yaml")
        return default
    value = kwargs[key]
    if value is None and default is None:
        return None
    return _number(value, f"{where}.{key}", kind)


def parse_hparams(config: Mapping[str, Any], version: Version, path: str | Path) -> ModelHParams:
    """Read :class:`ModelHParams` from a parsed model yaml (see :func:`read_model_yaml`)."""
    where = str(path)
    llm = require_tagged(dict(config), "llm", path)
    feat = require_tagged(dict(config), "feat_extractor", path)
    tok = require_tagged(dict(config), "get_tokenizer", path)
    sampling = llm.get("sampling")
    if not isinstance(sampling, Tagged):
        raise ModelDirError(f"{where}: 'llm.sampling' is missing; restore the official model yaml")
    sample_rate = _get(config, "sample_rate", where, int)
    for key in ("n_fft", "num_mels", "sampling_rate", "hop_size", "win_size"):  # required, no defaults
        _get(feat, key, f"{where}: feat_extractor", int)
    mix = llm.get("mix_ratio", [5, 15])
    if not (isinstance(mix, list) and len(mix) == 2 and all(isinstance(v, int) and v > 0 for v in mix)):
        raise ModelDirError(f"{where}: 'llm.mix_ratio' is {mix!r}, expected two positive integers like [5, 15]")
    return ModelHParams(
        version=version,
        sample_rate=sample_rate,
        llm_input_size=_get(llm, "llm_input_size", f"{where}: llm", int),
        llm_output_size=_get(llm, "llm_output_size", f"{where}: llm", int),
        spk_embed_dim=_get(config, "spk_embed_dim", where, int, 192),
        speech_token_size=_get(llm, "speech_token_size", f"{where}: llm", int),
        token_frame_rate=_get(config, "token_frame_rate", where, int, 25),
        token_mel_ratio=_get(config, "token_mel_ratio", where, int, 2),
        chunk_size=_get(config, "chunk_size", where, int, 25),
        mix_ratio=(int(mix[0]), int(mix[1])),
        sampling=SamplingParams.from_kwargs(sampling.kwargs()),
        mel=MelConfig.from_yaml_node(feat),
        tokenizer_version=str(tok.get("version") or "cosyvoice2"),
        allowed_special=str(config.get("allowed_special", "all")),
    )


# --------------------------------------------------------------------------------------------------
# The directory


def detect_version(root: str | Path, default: Version | None = None) -> Version:
    """ "v2" or "v3" from the yaml a model directory holds: the one version detector of the package.

    A directory holding both ``cosyvoice2.yaml`` and ``cosyvoice3.yaml`` is an error (upstream's
    AutoModel would silently take v2 while the weights may be v3): one line says which to remove.
    ``default`` is returned for a folder with neither yaml (a folder of front-end ONNX files only).
    """
    root = Path(root)
    found = [v for v in ("v2", "v3") if (root / keys.YAML_NAME[v]).is_file()]
    if len(found) == 2:
        raise ModelDirError(
            f"{root}: holds both {keys.YAML_NAME['v2']} and {keys.YAML_NAME['v3']}; an official directory has one "
            "(CosyVoice2-0.5B or Fun-CosyVoice3-0.5B): remove the one that does not match the weights"
        )
    if found:
        return found[0]  # type: ignore[return-value]  # found holds keys of keys.YAML_NAME, i.e. the Literal versions, as str
    if default is not None:
        return default
    if (root / "cosyvoice.yaml").is_file():
        raise ModelDirError(f"{root}: CosyVoice v1 (cosyvoice.yaml) is not supported; use CosyVoice2-0.5B or v3")
    raise ModelDirError(f"{root}: no cosyvoice2.yaml or cosyvoice3.yaml; pass an official CosyVoice2/3 model directory")


class ModelDir:
    """An official-layout model directory. Construction checks only that the folder and its yaml exist.

    Attributes name every official file whether or not it exists; :meth:`check` verifies them.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise ModelDirError(
                f"{self.root}: model directory not found; pass the folder that holds cosyvoice2.yaml or cosyvoice3.yaml"
            )
        self.version: Version = self._detect_version()
        self.yaml_path = self.root / keys.YAML_NAME[self.version]
        self.qwen_dir = self.root / keys.QWEN_DIR_NAME
        self.llm_path = self.root / keys.WEIGHT_FILE["llm"]
        self.flow_path = self.root / keys.WEIGHT_FILE["flow"]
        self.hift_path = self.root / keys.WEIGHT_FILE["hift"]
        self.campplus_path = self.root / keys.CAMPPLUS_NAME
        self.speech_tokenizer_path = self.root / keys.SPEECH_TOKENIZER_NAME[self.version]
        self.speech_tokenizer_batch_path = self.root / keys.SPEECH_TOKENIZER_BATCH_NAME[self.version]
        self.spk2info_path = self.root / keys.SPK2INFO_NAME

    def _detect_version(self) -> Version:
        return detect_version(self.root)

    def __repr__(self) -> str:
        return f"ModelDir({str(self.root)!r}, version={self.version!r})"

    def weight_path(self, part: Part) -> Path:
        """``llm.pt``, ``flow.pt`` or ``hift.pt`` in this directory."""
        return self.root / keys.WEIGHT_FILE[part]

    @cached_property
    def config(self) -> dict[str, Any]:
        """The parsed yaml (tags as :class:`Tagged` data), with ``qwen_pretrain_path`` = <dir>/CosyVoice-BlankEN."""
        return read_model_yaml(self.yaml_path, overrides={"qwen_pretrain_path": str(self.qwen_dir)})

    @cached_property
    def hparams(self) -> ModelHParams:
        """Hyperparameters read from the yaml."""
        return parse_hparams(self.config, self.version, self.yaml_path)

    def section(self, part: str) -> Tagged:
        """The yaml's ``llm`` / ``flow`` / ``hift`` node (one-line error if it is missing)."""
        return require_tagged(self.config, part, self.yaml_path)

    def check(self, parts: Iterable[Part] = keys.PARTS, *, frontend: bool = True, tokenizer: bool = True) -> None:
        """Stop with one line naming the first missing or mismatching file.

        Checks the yaml's class triple against the version, the weight files of ``parts``, the Qwen
        folder's ``config.json`` (``tokenizer``: also its tokenizer files) and, with ``frontend``, the
        campplus and speech-tokenizer ONNX files. Key sets are checked when weights load.
        """
        for part in keys.PARTS:
            node = self.section(part)
            expected = keys.EXPECTED_CLASSES[self.version][part]
            if node.class_name != expected:
                raise ModelDirError(
                    f"{self.yaml_path}: '{part}' is {node.class_name} but a {self.version} directory needs {expected}; "
                    f"restore {self.yaml_path.name} from the same official release"
                )
        self.hparams  # noqa: B018 - parse now so a bad value stops here
        required: list[tuple[Path, str]] = [(self.weight_path(p), f"the official {p}.pt") for p in parts]
        required.append((self.qwen_dir / "config.json", "the official CosyVoice-BlankEN folder"))
        if tokenizer and not (self.qwen_dir / "tokenizer.json").is_file():
            for name in ("vocab.json", "merges.txt"):
                required.append((self.qwen_dir / name, "the official CosyVoice-BlankEN folder"))
        if frontend:
            required.append((self.campplus_path, "campplus.onnx from the official release"))
            required.append(
                (self.speech_tokenizer_path, f"{self.speech_tokenizer_path.name} from the official release")
            )
        for path, what in required:
            if not path.is_file():
                raise ModelDirError(f"{path}: missing; copy {what} into {self.root}")
            if path.stat().st_size == 0:
                raise ModelDirError(f"{path}: empty file (interrupted download?); copy {what} again")
        for name in ("config.json", "vocab.json", "tokenizer_config.json", "tokenizer.json"):
            check_json(self.qwen_dir / name, "the official CosyVoice-BlankEN folder")

    def write_weights(self, part: Part, module: torch.nn.Module) -> Path:
        """Save ``module`` as this directory's ``<part>.pt`` and delete exports derived from old weights."""
        path = save_state_dict(module, self.weight_path(part))
        if part in ("llm", "flow"):
            remove_stale_exports(self.root)
        return path


# --------------------------------------------------------------------------------------------------
# State dicts


def check_json(path: Path, what: str) -> None:
    """One line when a model-directory JSON file exists but does not parse (truncated, edited by hand)."""
    if not path.is_file():
        return
    try:
        json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        where = f" (line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise ModelDirError(f"{path}: not valid JSON{where}; copy {what} again") from None


def _part_of(path: Path) -> Part | None:
    for part, name in keys.WEIGHT_FILE.items():
        if path.name == name:
            return part
    return None


def load_state_dict_file(path: str | Path, part: Part | None = None) -> StateDict:
    """Read a weight file as a plain ``{key: tensor}`` dict on the CPU (``torch.load(weights_only=True)``).

    Accepts training checkpoints: upstream's (``epoch``/``step`` entries are dropped) and cosyml's
    (the tensors under ``model``; optimiser and RNG state ignored). For ``part="hift"``
    (inferred from the file name ``hift.pt`` when not given) the ``generator.`` prefix of HiFi-GAN
    training checkpoints is removed and discriminator entries are dropped.
    """
    path = Path(path)
    part = part or _part_of(path)
    if not path.is_file():
        raise ModelDirError(f"{path}: weight file not found; copy the official file or check the path")
    try:
        try:  # memory-mapped: a 2 GB llm.pt is not read into memory twice
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "zip" not in str(exc).lower():
                raise
            loaded = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as exc:  # any unpickling failure means a bad file for the user
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelDirError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({reason[:120]}); replace it with an official file"
        ) from None
    if not isinstance(loaded, Mapping):
        raise ModelDirError(
            f"{path}: holds a {type(loaded).__name__}, not a state dict; save model.state_dict() instead"
        )
    nested = loaded.get("model")
    if isinstance(nested, Mapping) and nested and all(isinstance(v, torch.Tensor) for v in nested.values()):
        loaded = nested  # a cosyml training checkpoint (cosyml.train.checkpoint)
    state: StateDict = {}
    for key, value in loaded.items():
        if key in keys.TRAINING_ONLY_KEYS and not isinstance(value, torch.Tensor):
            continue
        if not isinstance(value, torch.Tensor):
            raise ModelDirError(
                f"{path}: entry '{key}' is a {type(value).__name__}, not a tensor; this is not a weight file"
            )
        state[str(key)] = value
    if part == "hift" and any(k.startswith(keys.HIFT_STRIP_PREFIX) for k in state):
        prefix = keys.HIFT_STRIP_PREFIX
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def _align_weight_norm(state: StateDict, expected: Iterable[str]) -> StateDict:
    """Rename weight-norm keys between ``weight_g/weight_v`` and ``parametrizations.weight.original0/1``."""
    expected_set = set(expected)
    out: StateDict = {}
    for key, value in state.items():
        new_key = key
        if key not in expected_set:
            dotted = "." + key  # a top-level module's keys have no leading component
            for old, new in keys.WEIGHT_NORM_RENAMES:
                for a, b in ((old, new), (new, old)):
                    candidate = (dotted[: -len(a)] + b)[1:]
                    if dotted.endswith(a) and candidate in expected_set:
                        new_key = candidate
        out[new_key] = value
    return out


def _shape(t: torch.Tensor) -> str:
    return "x".join(str(d) for d in t.shape) or "scalar"


def describe_mismatch(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], limit: int = 3) -> str:
    """A short text listing missing / unexpected keys and shape mismatches ('' when they agree)."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [k for k in expected if k in found and tuple(expected[k].shape) != tuple(found[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:limit])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:limit])})")
    if shapes:
        detail = ", ".join(f"{k}: expected {_shape(expected[k])} found {_shape(found[k])}" for k in shapes[:limit])
        parts.append(f"{len(shapes)} with other shapes ({detail})")
    return "; ".join(parts)


def load_strict(
    module: torch.nn.Module,
    source: str | Path | Mapping[str, torch.Tensor],
    *,
    part: Part | None = None,
    label: str | None = None,
) -> None:
    """Load ``source`` (a weight file or a state dict) into ``module`` with every key and shape matching.

    On a mismatch raises :class:`ModelDirError` with one line naming the file and the first few
    missing / unexpected keys and shape differences. Weight-norm key spellings are reconciled.
    """
    if isinstance(source, str | Path):
        label = label or str(source)
        state = load_state_dict_file(source, part)
    else:
        label = label or f"{type(module).__name__} state dict"
        state = dict(source)
    expected = module.state_dict()
    state = _align_weight_norm(state, expected.keys())
    problem = describe_mismatch(expected, state)
    if problem:
        raise ModelDirError(
            f"{label}: does not match {type(module).__name__} ({problem}); "
            "use the weight file of the same model version and yaml"
        )
    module.load_state_dict(state, strict=True)


def _fp32_cpu(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    if t.is_floating_point():
        t = t.to(dtype=torch.float32)
    t = t.to("cpu").contiguous()
    # torch.save writes a tensor's whole storage: a view into a larger one (a slice, an averaging buffer)
    # is copied so the file holds only its own values
    if t.untyped_storage().nbytes() != t.numel() * t.element_size():
        t = t.clone()
    return t


def official_state_dict(state: Mapping[str, Any]) -> OrderedDict[str, torch.Tensor]:
    """``state`` as an official-format state dict: fp32 CPU tensors, no training keys (``epoch``/``step``),
    tensors that shared storage still shared.

    Keys in :data:`keys.TIED_KEYS` are stored as the very same tensor object as their source when their
    values are equal, so ``torch.save`` writes them once.
    """
    converted: dict[tuple[int, int, tuple[int, ...], tuple[int, ...], torch.dtype], torch.Tensor] = {}
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, tensor in state.items():
        if key in keys.TRAINING_ONLY_KEYS or not isinstance(tensor, torch.Tensor):
            continue
        ident = (
            tensor.untyped_storage().data_ptr(),
            int(tensor.storage_offset()),
            tuple(tensor.shape),
            tuple(tensor.stride()),
            tensor.dtype,
        )
        if ident not in converted or tensor.numel() == 0:
            converted[ident] = _fp32_cpu(tensor)
        out[key] = converted[ident]
    for alias, source in keys.TIED_KEYS.items():
        if alias in out and source in out and out[alias] is not out[source]:
            a, s = out[alias], out[source]
            if a.shape == s.shape and torch.equal(a, s):
                out[alias] = s
    return out


def export_state_dict(module: torch.nn.Module) -> OrderedDict[str, torch.Tensor]:
    """``module.state_dict()`` as :func:`official_state_dict`."""
    return official_state_dict(module.state_dict())


def save_state_dict(weights: torch.nn.Module | Mapping[str, Any], path: str | Path) -> Path:
    """The one writer of official weight files (``llm.pt``/``flow.pt``/``hift.pt``, averages, assembled dirs).

    ``weights``: a module or a state dict, written as :func:`official_state_dict` (loads with
    ``strict=True``). Crash-safe (temp file, fsync, rename) and byte-stable: the same tensors give the same
    bytes whatever the file is called, and a file that already holds those bytes is left untouched (its
    mtime too), so DVC and make see no change where there is none.
    """
    from cosyml.fileio import atomic_torch_save

    state = official_state_dict(weights.state_dict() if isinstance(weights, torch.nn.Module) else weights)
    return atomic_torch_save(state, path, keep_unchanged=True)


def remove_stale_exports(model_dir: str | Path) -> list[Path]:
    """Delete artifacts derived from old ``llm.pt``/``flow.pt`` (JIT zips, estimator ONNX/TensorRT, vllm/).

    Upstream loads these without checking that they match the weights, so after writing new weights they
    would silently override them. Returns the removed paths.
    """
    root = Path(model_dir)
    removed: list[Path] = []
    for pattern in keys.STALE_EXPORT_GLOBS:
        for path in sorted(root.glob(pattern)):
            if path.is_file():
                path.unlink()
                removed.append(path)
    for name in keys.STALE_EXPORT_DIRS:
        path = root / name
        if path.is_dir():
            shutil.rmtree(path)
            removed.append(path)
    return removed
