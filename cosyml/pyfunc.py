"""The MLflow pyfunc flavor of a voice: one registered model version = one evaluated candidate.

What a model version holds (its ``artifacts/`` folder, next to ``MLmodel`` and ``pyfunc_model.py``, the code
MLflow runs to load it: no pickled object is stored):

- ``voice.json``: the :class:`VoiceSpec` (speaker, candidate name, where the base assets live and their
  content hash, which parts are fine-tuned and their hashes, tuned sampling defaults, evaluation scores);
- ``spk2info.pt``: ``{speaker: {"embedding": (1, 192) float32}}`` as upstream's frontend reads it;

Weights are NOT in the version. The base model assets (yaml, ``llm.pt``/``flow.pt``/``hift.pt``, the ONNX
front end, the Qwen tokenizer folder) are logged once per base model (content hash) as the artifact
``base_model/`` of a run in the experiment ``cosyml/base-models``; a fine-tuned ``llm.pt``/``flow.pt``
(plain fp32, official keys) is logged once per tensor content as ``weights/<part>.pt`` of a run in
``cosyml/weights``, so two versions that share a fine-tuned LLM store it once. ``voice.json`` references
both by URI (``runs:/<run_id>/...``). On load they are downloaded into a local cache (``COSYML_CACHE_DIR``,
default ``~/.cache/cosyml/models``; or ``model_config={"cache_dir": ...}``), verified against their
content hash and reused by every later load. (A ``voice.json`` whose part is a plain file name reads
that file from the version's own artifacts.)

``predict`` takes a DataFrame of requests (columns :data:`REQUEST_COLUMNS`; ``prompt_wav`` is a
base64-encoded audio file) and returns one row per request: ``audio`` (base64 16-bit PCM wav),
``sample_rate``, ``duration_s``, ``seed`` and ``error``. A bad request gets its one-line reason in
``error`` (and ``audio`` None); the other rows are still synthesised.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models.signature import ModelSignature
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types.schema import ColSpec, Schema

from cosyml.errors import CosymlError, ModelDirError
from cosyml.models.keys import CAMPPLUS_NAME, SPK2INFO_NAME, WEIGHT_FILE

#: Version of the ``voice.json`` layout; a loader refuses versions it does not know.
VOICE_FORMAT = 1
BASE = "base"
BASE_ARTIFACT = "base_model"

#: Request columns: (name, MLflow type). Only ``text`` is required. Integer-valued fields are typed
#: ``double`` because pandas turns an integer column with a missing value into floats.
REQUEST_COLUMNS: tuple[tuple[str, str], ...] = (
    ("text", "string"),
    ("mode", "string"),  # sft | zero_shot | cross_lingual | instruct; default: from the other fields
    ("speaker", "string"),  # default: the registered voice
    ("prompt_wav", "string"),  # base64 of an audio file (wav, flac, ogg)
    ("prompt_text", "string"),
    ("instruct", "string"),
    ("seed", "double"),
    ("speed", "double"),
    ("top_p", "double"),
    ("top_k", "double"),
    ("win_size", "double"),
    ("tau_r", "double"),
    ("min_token_text_ratio", "double"),
    ("max_token_text_ratio", "double"),
    ("max_tokens", "double"),
)
RESPONSE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("audio", "string"),  # base64 of a 16-bit PCM mono wav; None when the row failed
    ("sample_rate", "long"),
    ("duration_s", "double"),
    ("seed", "long"),  # -1 when the row failed
    ("error", "string"),  # None when the row succeeded
)
_DTYPES = {"audio": object, "sample_rate": "int64", "duration_s": "float64", "seed": "int64", "error": object}
_INT_FIELDS = {"seed", "top_k", "win_size", "max_tokens"}
_FLOAT_FIELDS = {"speed", "top_p", "tau_r", "min_token_text_ratio", "max_token_text_ratio"}
SAMPLING_KEYS = ("top_p", "top_k", "win_size", "tau_r", "min_token_text_ratio", "max_token_text_ratio")

#: Files of a base model directory the engine needs (relative names); nothing else is uploaded.
_BASE_FILES = (*WEIGHT_FILE.values(), CAMPPLUS_NAME, SPK2INFO_NAME)


def signature() -> ModelSignature:
    """The request/response schema every voice version is logged with."""
    inputs = Schema([ColSpec(kind, name, required=(name == "text")) for name, kind in REQUEST_COLUMNS])
    outputs = Schema([ColSpec(kind, name, required=False) for name, kind in RESPONSE_COLUMNS])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example(speaker: str) -> pd.DataFrame:
    """A request that works on any voice version (sft mode, the registered speaker)."""
    return pd.DataFrame([{"text": "Hello, this is my voice.", "mode": "sft", "speaker": speaker, "seed": 1.0}])


def save_voice(
    path: Path,
    artifacts: dict[str, str],
    speaker: str,
    pip_requirements: list[str],
    run_id: str | None,
    model_id: str,
    artifact_location: str,
) -> None:
    """Write one voice in this flavor to the local folder ``path`` (MLmodel, ``pyfunc_model.py``, the
    ``artifacts`` files, signature, input example, requirements), for logged model ``model_id``.

    ``mlflow.pyfunc.log_model`` would load the model and synthesise the input example to validate it (the
    whole engine, per version); the registry saves locally and uploads the folder instead.
    """
    from mlflow.models import Model

    mlflow.pyfunc.save_model(
        path=str(path),
        python_model=str(Path(__file__).with_name("pyfunc_model.py")),  # code, not a pickle
        artifacts=artifacts,
        signature=signature(),
        input_example=input_example(speaker),
        pip_requirements=pip_requirements,
        model_config={"device": "auto", "cache_dir": "", "batch_size": 8},
        mlflow_model=Model(artifact_path=artifact_location, run_id=run_id, model_id=model_id),
    )


# ---------------------------------------------------------------------------------------------- content hashes


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def tree_files(root: Path) -> list[tuple[str, Path]]:
    """(relative posix name, path) of every file under ``root`` (symlinks followed), sorted."""
    out = [(p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file()]
    return sorted(out)


def tree_hash(files: Iterable[tuple[str, Path]]) -> str:
    """sha256 over (name, file sha256) pairs: the same files with the same bytes give the same hash."""
    digest = hashlib.sha256()
    for name, path in sorted(files):
        digest.update(f"{name}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def base_asset_files(model_dir: str | Path) -> list[tuple[str, Path]]:
    """The files of a base model directory a voice needs: yaml, weights, ONNX front end, Qwen folder.

    Exports (``*.plan``, ``flow.*.onnx``), Whisper checkpoints and other extras are left out.
    """
    from cosyml.models.modeldir import ModelDir

    md = ModelDir(model_dir)
    md.check(frontend=True)
    names = [md.yaml_path.name, md.speech_tokenizer_path.name, md.speech_tokenizer_batch_path.name, *_BASE_FILES]
    files = [(name, md.root / name) for name in names if (md.root / name).is_file()]
    files += [(f"{md.qwen_dir.name}/{rel}", path) for rel, path in tree_files(md.qwen_dir)]
    return sorted(files)


# ---------------------------------------------------------------------------------------------- voice.json


@dataclass(frozen=True)
class VoiceSpec:
    """What ``voice.json`` holds: everything about a version except the weights themselves."""

    speaker: str
    candidate: str
    base_uri: str  # artifact URI of the base assets, e.g. runs:/<run_id>/base_model
    base_hash: str  # tree_hash of the base assets
    llm: str = BASE  # "base", the URI of shared weights (runs:/<id>/weights/llm.pt) or a file in the version
    flow: str = BASE
    llm_sha256: str = BASE  # content hash of the fine-tuned tensors, or "base"
    flow_sha256: str = BASE
    llm_file_sha256: str = ""  # sha256 of the shared weights file (checked after download)
    flow_file_sha256: str = ""
    sampling: dict[str, float] = field(default_factory=dict)  # tuned defaults (SAMPLING_KEYS)
    max_tokens: int = 0  # serving cap on speech tokens per segment (25 = 1 s); 0 = none
    scores: dict[str, Any] = field(default_factory=dict)  # the candidate's evaluation summary
    format: int = VOICE_FORMAT

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True, ensure_ascii=False)

    @classmethod
    def read(cls, path: str | Path) -> VoiceSpec:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelDirError(f"{path}: unreadable voice.json ({exc}); re-register the version") from None
        if data.get("format") != VOICE_FORMAT:
            raise ModelDirError(
                f"{path}: voice format {data.get('format')!r} is not {VOICE_FORMAT}; use the cosyml release that registered it"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# ---------------------------------------------------------------------------------------------- base asset cache


def cache_root(configured: str | None = None) -> Path:
    """Where downloaded base assets are kept: ``configured``, ``$COSYML_CACHE_DIR`` or ``~/.cache/cosyml/models``."""
    root = configured or os.environ.get("COSYML_CACHE_DIR") or str(Path.home() / ".cache" / "cosyml" / "models")
    return Path(root).expanduser()


def fetch_base_assets(uri: str, base_hash: str, cache: Path) -> Path:
    """The local model directory of the base assets at ``uri``, downloaded once into ``cache``."""
    return _fetch_once(
        uri,
        cache / "base" / base_hash,
        BASE_ARTIFACT,
        lambda p: tree_hash(tree_files(p)),
        base_hash,
        "base model assets",
        "the base-model run",
    )


def fetch_weights(uri: str, part: str, file_hash: str, cache: Path) -> Path:
    """The local copy of a version's shared ``part`` weights (``llm.pt``/``flow.pt``) at ``uri``, downloaded
    once into ``cache`` and checked against ``file_hash`` (sha256 of the file)."""
    return _fetch_once(
        uri, cache / "weights" / file_hash, f"{part}.pt", file_sha256, file_hash, f"{part} weights", "the weights run"
    )


def _fetch_once(
    uri: str, target: Path, name: str, digest: Callable[[Path], str], expected: str, what: str, holder: str
) -> Path:
    """``target/name``: the artifact at ``uri`` (a file or a folder), downloaded once.

    The download lands in a temporary folder next to ``target``, is checked with ``digest(path) ==
    expected`` and is then renamed into place, so an interrupted or corrupted download is never used.
    """
    local_copy = target / name
    if (target / ".complete").is_file():
        return local_copy
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name[:12]}-", dir=target.parent))
    try:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(staging)))
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise ModelDirError(
                f"{what} {uri}: cannot be downloaded ({reason}); check MLFLOW_TRACKING_URI and that "
                f"{holder} still exists, or re-register the candidates"
            ) from None
        if local.name != name:
            local.rename(staging / name)
        found = digest(staging / name)
        if found != expected:
            raise ModelDirError(
                f"{what} {uri}: content hash {found[:12]} differs from the registered {expected[:12]}; "
                "the artifact store was modified, re-register the candidates"
            )
        (staging / ".complete").write_text(uri + "\n", encoding="utf-8")
        try:
            staging.rename(target)
        except OSError:  # another process finished the same download first
            if not (target / ".complete").is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return local_copy


# ---------------------------------------------------------------------------------------------- audio <-> base64


def wav_to_base64(wav: np.ndarray, sample_rate: int, scratch: Path) -> str:
    """16-bit PCM mono wav bytes of ``wav`` (float32 (N,) in [-1, 1]) as base64 text."""
    from cosyml.audio import write_wav

    path = scratch / f"out-{os.getpid()}-{threading.get_ident()}.wav"
    write_wav(path, wav, sample_rate)
    try:
        return base64.b64encode(path.read_bytes()).decode("ascii")
    finally:
        path.unlink(missing_ok=True)


def _decode_prompt(text: str, path: Path) -> Path:
    try:
        data = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise CosymlError("prompt_wav: not valid base64; send the audio file's bytes base64-encoded") from None
    if not data:
        raise CosymlError("prompt_wav: empty; send the audio file's bytes base64-encoded")
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------------------------- requests


def _present(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    return value is not pd.NA


def _row_fields(row: dict[str, Any], spec: VoiceSpec) -> dict[str, Any]:
    """A request row -> SynthRequest fields (prompt_wav still base64); one-line error on bad values."""
    known = {name for name, _ in REQUEST_COLUMNS}
    unknown = sorted(k for k, v in row.items() if k not in known and _present(v))
    if unknown:
        raise CosymlError(f"unknown column(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    fields: dict[str, Any] = {}
    for key, value in row.items():
        if key not in known or not _present(value):
            continue
        if isinstance(value, np.generic):
            value = value.item()
        if key in _INT_FIELDS:
            if isinstance(value, bool) or not isinstance(value, int | float) or float(value) != int(value):
                raise CosymlError(f"'{key}' must be an integer, got {value!r}")
            value = int(value)
        elif key in _FLOAT_FIELDS:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise CosymlError(f"'{key}' must be a number, got {value!r}")
            value = float(value)
        elif not isinstance(value, str):
            raise CosymlError(f"'{key}' must be a string, got {value!r}")
        fields[key] = value
    if "text" not in fields:
        raise CosymlError("text is empty; pass the words to speak")
    if "mode" not in fields:
        from cosyml.synth.request import infer_mode

        fields["mode"] = infer_mode(fields.get("instruct"), fields.get("prompt_wav"), fields.get("prompt_text"))
    if "speaker" not in fields and fields["mode"] in ("sft", "instruct") and not fields.get("prompt_wav"):
        fields["speaker"] = spec.speaker
    for key, value in spec.sampling.items():
        fields.setdefault(key, int(value) if key in _INT_FIELDS else float(value))
    if spec.max_tokens > 0:
        fields["max_tokens"] = min(int(fields.get("max_tokens", spec.max_tokens)), spec.max_tokens)
    return fields


# ---------------------------------------------------------------------------------------------- the model


class VoiceModel(PythonModel):
    """A registered voice: loads the engine once per process and synthesises request DataFrames.

    ``model_config`` (set at log time, overridable at load time with ``load_model(uri, model_config=...)``):
    ``device`` ("auto": ``$COSYML_DEVICE`` or CUDA when present; "cpu", "cuda"), ``cache_dir`` ("" = see
    :func:`cache_root`), ``batch_size`` (requests decoded together by the LLM).
    """

    def load_context(self, context: PythonModelContext) -> None:
        from cosyml.synth.engine import SynthEngine

        config = dict(context.model_config or {})
        voice_path = Path(context.artifacts["voice"])
        self.spec = VoiceSpec.read(voice_path)
        cache = cache_root(config.get("cache_dir") or None)
        base_dir = fetch_base_assets(self.spec.base_uri, self.spec.base_hash, cache)
        weights = {part: _part_file(context, part, self.spec, voice_path, cache) for part in ("llm", "flow")}
        self.batch_size = int(config.get("batch_size", 8))
        self.engine = SynthEngine.load(
            base_dir,
            device=str(config.get("device") or "auto")
            if config.get("device") not in (None, "", "auto")
            else os.environ.get("COSYML_DEVICE", "auto"),
            llm=weights["llm"],
            flow=weights["flow"],
            speakers=context.artifacts["spk2info"],
        )
        self._lock = threading.Lock()  # the engine serves one request batch at a time

    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        with self._lock, tempfile.TemporaryDirectory(prefix="cosyml-voice-") as tmp:
            rows = self._predict(model_input, Path(tmp))
        # object columns keep None for "no audio" / "no error" (pandas 3 would turn them into NaN strings)
        return pd.DataFrame({c: pd.Series([r[c] for r in rows], dtype=_DTYPES[c]) for c, _ in RESPONSE_COLUMNS})

    def _predict(self, frame: pd.DataFrame, scratch: Path) -> list[dict[str, Any]]:
        from cosyml.synth.request import SynthRequest

        rows: list[dict[str, Any]] = [_failed("not synthesised") for _ in range(len(frame))]
        todo: list[tuple[int, SynthRequest]] = []
        for i, record in enumerate(frame.to_dict(orient="records")):
            try:
                fields = _row_fields(record, self.spec)
                if "prompt_wav" in fields:
                    fields["prompt_wav"] = str(_decode_prompt(fields["prompt_wav"], scratch / f"prompt-{i}.bin"))
                request = SynthRequest.from_dict(fields, where=f"row {i}")
                request.validate()
            except CosymlError as exc:
                rows[i] = _failed(_public(str(exc), scratch))
                continue
            todo.append((i, request))
        if not todo:
            return rows
        try:
            results: list[Any] = self.engine.synthesize_batch([r for _, r in todo], batch_size=self.batch_size)
        except Exception:  # an engine bug in a batch: retry one by one so good rows still get audio
            traceback.print_exc(file=sys.stderr)
            results = [self._one(request) for _, request in todo]
        for (i, _), result in zip(todo, results, strict=True):
            if isinstance(result, BaseException):
                rows[i] = _failed(
                    _public(str(result) if isinstance(result, CosymlError) else _internal(result), scratch)
                )
                continue
            rows[i] = {
                "audio": wav_to_base64(result.wav, result.sample_rate, scratch),
                "sample_rate": int(result.sample_rate),
                "duration_s": round(float(result.duration_s), 4),
                "seed": int(result.seed),
                "error": None,
            }
        return rows

    def _one(self, request: Any) -> Any:
        try:
            return self.engine.synthesize(request)
        except CosymlError as exc:
            return exc
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            return exc


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s:;,'\"()\[\]]+/)*[^\s:;,'\"()\[\]]+")


def _public(message: str, scratch: Path) -> str:
    """An error reply without server paths: the request's own temporary prompt file becomes ``prompt_wav``,
    any other absolute path becomes its last component (the server log keeps the full text)."""
    message = re.sub(re.escape(str(scratch)) + r"/prompt-\d+\.bin", "prompt_wav", message)
    return _ABSOLUTE_PATH.sub(lambda m: Path(m.group(0)).name or "<path>", message)


def _internal(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"internal error ({type(exc).__name__}: {text[:200]}); see the server log"


def _failed(message: str) -> dict[str, Any]:
    return {"audio": None, "sample_rate": 0, "duration_s": 0.0, "seed": -1, "error": message}


def _part_file(context: PythonModelContext, part: str, spec: VoiceSpec, voice_path: Path, cache: Path) -> str:
    """The weights file of ``part``: ``base``, shared weights fetched into ``cache``, or a file in the version."""
    source = getattr(spec, part)
    if source == BASE:
        return BASE
    if ":/" in source:  # an artifact URI: weights stored once and shared by every version that uses them
        return str(fetch_weights(source, part, getattr(spec, f"{part}_file_sha256"), cache))
    path = context.artifacts.get(part)
    if not path or not Path(path).is_file():
        raise ModelDirError(f"{voice_path.parent}: the version's {part}.pt is missing; re-register the candidate")
    return str(path)


# ---------------------------------------------------------------------------------------------- loading by URI


def load_voice(model_uri: str, cache_dir: str | None = None, device: str | None = None) -> Any:
    """``mlflow.pyfunc.load_model(model_uri)`` with one-line errors for a missing alias/version/artifacts."""
    from mlflow.exceptions import MlflowException

    config: dict[str, Any] = {}
    if cache_dir:
        config["cache_dir"] = cache_dir
    if device:
        config["device"] = device
    check_model_uri(model_uri)
    try:
        return mlflow.pyfunc.load_model(model_uri, model_config=config or None)
    except CosymlError:
        raise
    except (MlflowException, OSError) as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelDirError(
            f"{model_uri}: the version's artifacts cannot be loaded ({reason}); they may have been deleted from "
            "the artifact store: re-register the candidate (cosyml register)"
        ) from None


def check_model_uri(model_uri: str) -> None:
    """For ``models:/name@alias`` and ``models:/name/N``: one line when the alias or version does not exist."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if not model_uri.startswith("models:/"):
        return
    ref = model_uri.removeprefix("models:/").strip("/")
    client = MlflowClient()
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            try:
                client.get_registered_model(name)
            except MlflowException:
                raise ModelDirError(
                    f"{model_uri}: no registered model '{name}'; run `cosyml register` (or check MLFLOW_TRACKING_URI)"
                ) from None
            try:
                client.get_model_version_by_alias(name, alias)
            except MlflowException:
                raise ModelDirError(
                    f"{model_uri}: model '{name}' has no alias '{alias}'; run `cosyml promote` or name a version"
                ) from None
        elif "/" in ref:
            name, version = ref.split("/", 1)
            if version.isdigit():
                try:
                    client.get_model_version(name, version)
                except MlflowException:
                    raise ModelDirError(f"{model_uri}: model '{name}' has no version {version}") from None
    except ModelDirError:
        raise
    except MlflowException as exc:
        reason = str(exc).strip().splitlines()[0][:200]
        raise ModelDirError(
            f"{model_uri}: the model registry cannot be reached ({reason}); check MLFLOW_TRACKING_URI"
        ) from None
