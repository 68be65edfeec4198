"""The model registry: evaluated candidates become versions of one registered model per speaker, and
a written policy moves the ``champion`` alias.

- :func:`read_candidates` reads ``candidates.json`` (written by ``cosyml evaluate``).
- :func:`ensure_base_assets` logs the base model's assets once per content hash (a run in the
  experiment ``cosyml/base-models``, artifact ``base_model/``); :func:`ensure_weights` logs each
  fine-tuned ``llm.pt``/``flow.pt`` once per tensor content (a run in ``cosyml/weights``, artifact
  ``weights/<part>.pt``). Versions reference both by URI and hold no weights.
- :func:`register_candidates` logs each candidate as a :class:`cosyml.pyfunc.VoiceModel` and registers it
  as a version of ``cosyml-<speaker>``, tagged with its scores. A candidate whose identity (base assets,
  llm and flow tensors, speaker embedding, sampling defaults) is already registered is not registered
  again: its score tags are refreshed instead.
- :func:`decide` is the promotion policy (pure, no MLflow); :func:`promote` applies it to the registry
  and moves the aliases (``previous`` keeps the old champion for :func:`rollback`).

Version tags (a few headlines, all strings): ``cosyml.candidate``, ``cosyml.speaker``, ``cosyml.is_base``,
``cosyml.llm`` / ``cosyml.flow`` (source path or ``base``), ``cosyml.llm_run_id`` / ``cosyml.flow_run_id``
(the run that wrote the weights, when known), ``cosyml.data_version``, ``cosyml.version_key`` (identity),
``cosyml.eval_sha`` (the candidates.json it was scored in), ``score.cer``, ``score.ss``, ``score.n``.
Every score (summary with CIs, missing, over_50, and ``<subset>/<key>`` per subset) is a metric of the
version's logged model (MLflow's model metrics; promotion reads them) and is in its artifact
``scores.json``; hashes and storage URIs are in ``artifacts/voice.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from cosyml.config import RegistryConfig
from cosyml.errors import ConfigError, CosymlError, InputError
from cosyml.features.onnx_runtime import ORT_DISTRIBUTIONS
from cosyml.pyfunc import BASE, BASE_ARTIFACT, SAMPLING_KEYS, VoiceSpec

BASE_EXPERIMENT = "cosyml/base-models"
WEIGHTS_EXPERIMENT = "cosyml/weights"
WEIGHTS_ARTIFACT = "weights"
_SCORE_KEYS = ("cer", "cer_ci", "ss", "ss_ci", "n", "missing", "over_50")


# ---------------------------------------------------------------------------------------------- candidates.json


@dataclass(frozen=True)
class Scores:
    """Evaluation numbers of one candidate (or one subset): CER as a fraction, SS as a cosine."""

    cer: float
    cer_ci: tuple[float, float]
    ss: float
    ss_ci: tuple[float, float]
    n: int  # scored utterances
    missing: int  # utterances without usable output
    over_50: float  # share of utterances with CER > 50 %

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Scores | None:
        """Scores from ``candidates.json``; None when nothing was scored (``null`` summary or numbers)."""
        if data is None or (
            isinstance(data, Mapping) and any(k in data and data[k] is None for k in ("cer", "cer_ci", "ss", "ss_ci"))
        ):
            return None
        if not isinstance(data, Mapping):
            raise InputError(f"{where}: expected an object with {', '.join(_SCORE_KEYS)}")
        missing = [k for k in _SCORE_KEYS if k not in data]
        if missing:
            raise InputError(f"{where}: missing {', '.join(missing)}; rerun `cosyml evaluate`")

        def number(key: str) -> float:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise InputError(f"{where}.{key}: expected a finite number, got {value!r}")
            return float(value)

        def interval(key: str) -> tuple[float, float]:
            value = data[key]
            ok = isinstance(value, list | tuple) and len(value) == 2
            ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
            if not ok or value[0] > value[1]:
                raise InputError(f"{where}.{key}: expected [low, high], got {value!r}")
            return (float(value[0]), float(value[1]))

        def within(key: str, value: float, low: float, high: float, what: str) -> None:
            if not low <= value <= high:
                raise InputError(f"{where}.{key}: {value!r} is not {what}; rerun `cosyml evaluate`")

        scores = cls(
            cer=number("cer"),
            cer_ci=interval("cer_ci"),
            ss=number("ss"),
            ss_ci=interval("ss_ci"),
            n=int(number("n")),
            missing=int(number("missing")),
            over_50=number("over_50"),
        )
        # CER/WER is an error rate (>= 0; insertions can take it above 1), SS a cosine
        within("cer", scores.cer, 0.0, math.inf, "an error rate (>= 0)")
        within("cer_ci", scores.cer_ci[0], 0.0, math.inf, "an interval of error rates (>= 0)")
        within("ss", scores.ss, -1.0, 1.0, "a cosine similarity (-1 to 1)")
        for bound in scores.ss_ci:
            within("ss_ci", bound, -1.0, 1.0, "an interval of cosine similarities (-1 to 1)")
        within("n", data["n"], 0, math.inf, "a count (a whole number >= 0)")
        within("missing", data["missing"], 0, scores.n, f"a count between 0 and n ({scores.n})")
        within("over_50", scores.over_50, 0.0, 1.0, "a share (0 to 1)")
        for key in ("n", "missing"):
            if float(data[key]) != int(data[key]):
                raise InputError(f"{where}.{key}: {data[key]!r} is not a whole number; rerun `cosyml evaluate`")
        return scores

    def tags(self, prefix: str) -> dict[str, str]:
        return {
            f"{prefix}cer": repr(self.cer),
            f"{prefix}cer_ci_lo": repr(self.cer_ci[0]),
            f"{prefix}cer_ci_hi": repr(self.cer_ci[1]),
            f"{prefix}ss": repr(self.ss),
            f"{prefix}ss_ci_lo": repr(self.ss_ci[0]),
            f"{prefix}ss_ci_hi": repr(self.ss_ci[1]),
            f"{prefix}n": str(self.n),
            f"{prefix}missing": str(self.missing),
            f"{prefix}over_50": repr(self.over_50),
        }

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """The numbers as MLflow metrics (the model metrics of a version): same keys as :meth:`tags`."""
        return {key: float(value) for key, value in self.tags(prefix).items()}

    @classmethod
    def from_tags(cls, tags: Mapping[str, str | float], prefix: str = "score.") -> Scores | None:
        """Scores stored by :meth:`tags` (or :meth:`metrics`), or None when a key is missing or unreadable."""
        try:
            return cls(
                cer=float(tags[f"{prefix}cer"]),
                cer_ci=(float(tags[f"{prefix}cer_ci_lo"]), float(tags[f"{prefix}cer_ci_hi"])),
                ss=float(tags[f"{prefix}ss"]),
                ss_ci=(float(tags[f"{prefix}ss_ci_lo"]), float(tags[f"{prefix}ss_ci_hi"])),
                n=int(tags[f"{prefix}n"]),
                missing=int(tags[f"{prefix}missing"]),
                over_50=float(tags[f"{prefix}over_50"]),
            )
        except (KeyError, ValueError):
            return None


@dataclass(frozen=True)
class Candidate:
    """One evaluated (llm, flow) combination; ``llm``/``flow`` are ``"base"`` or a weight file."""

    name: str
    llm: str
    flow: str
    summary: Scores | None  # None: evaluation scored nothing (such a candidate is not registered)
    subsets: dict[str, Scores]
    base: bool
    runs: dict[str, str] = field(default_factory=dict)  # optional {"llm": run_id, "flow": run_id}


@dataclass(frozen=True)
class CandidateSet:
    """The content of ``candidates.json``; relative weight paths are resolved against the working directory."""

    path: Path
    sha256: str
    speaker: str
    model_dir: str
    candidates: list[Candidate]


def read_candidates(path: str | Path) -> CandidateSet:
    """Read and check ``candidates.json``; any problem is one line naming the file and key."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: candidates file not found; run `cosyml evaluate` first (it writes candidates.json)")
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc}); rerun `cosyml evaluate`") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected an object with speaker, model_dir and candidates")
    for key in ("speaker", "model_dir"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise InputError(f"{path}: '{key}' must be a non-empty string")
    items = data.get("candidates")
    if not isinstance(items, list) or not items:
        raise InputError(f"{path}: 'candidates' must be a non-empty list")
    candidates: list[Candidate] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = f"{path}: candidates[{i}]"
        if not isinstance(item, dict):
            raise InputError(f"{where}: expected an object")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise InputError(f"{where}.name: must be a non-empty string")
        if name in seen:
            raise InputError(f"{where}.name: '{name}' appears twice; candidate names must be unique")
        seen.add(name)
        for part in ("llm", "flow"):
            if not isinstance(item.get(part), str) or not item[part]:
                raise InputError(f"{where}.{part}: must be 'base' or a weight file path")
        subsets = item.get("subsets") or {}
        if not isinstance(subsets, dict):
            raise InputError(f"{where}.subsets: expected an object of subset scores")
        runs = item.get("runs") or {}
        candidates.append(
            Candidate(
                name=name,
                llm=item["llm"],
                flow=item["flow"],
                summary=Scores.from_dict(item.get("summary"), f"{where}.summary"),
                subsets={
                    str(k): scores
                    for k, v in subsets.items()
                    if (scores := Scores.from_dict(v, f"{where}.subsets.{k}")) is not None
                },
                base=bool(item.get("base", False)),
                runs={str(k): str(v) for k, v in runs.items()} if isinstance(runs, dict) else {},
            )
        )
    return CandidateSet(path, hashlib.sha256(raw).hexdigest(), data["speaker"], data["model_dir"], candidates)


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


# ---------------------------------------------------------------------------------------------- MLflow plumbing


def client() -> Any:
    """An MlflowClient on the project's tracking URI (``MLFLOW_TRACKING_URI`` or ./mlflow.db)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from cosyml.tracking import default_tracking_uri, tracking_enabled

    if not tracking_enabled():
        raise ConfigError("COSYML_TRACKING=off: the model registry needs MLflow; unset COSYML_TRACKING")
    uri = default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    with store_creation_lock(uri):
        mlc = MlflowClient(tracking_uri=uri)
        # Open (and on a fresh sqlite file create and migrate) the tracking and registry tables now,
        # under the lock: two processes migrating one new database at once crash one of them.
        mlc.search_experiments(max_results=1)
        mlc.search_registered_models(max_results=1)
    return mlc


@contextlib.contextmanager
def store_creation_lock(uri: str) -> Iterator[None]:
    """For a ``sqlite:///`` store: hold (waiting for it) an exclusive lock on ``.<db name>.lock`` beside
    the database while the block creates or migrates it; other stores need no lock (a server migrates
    its own database once, at start)."""
    import fcntl

    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / f".{db.name}.lock", "a+", encoding="utf-8") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # released when the file is closed
        yield


def _experiment_id(mlc: Any, name: str) -> str:
    import mlflow

    exp = mlc.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    uri = mlflow.get_tracking_uri()
    location = None
    if uri.startswith("sqlite:///"):  # artifacts beside the database, as cosyml.tracking does
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlruns").resolve().as_uri()
    try:
        return mlc.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created by another process meanwhile
        return mlc.get_experiment_by_name(name).experiment_id


@dataclass(frozen=True)
class BaseAssets:
    """Where a base model's assets live in the artifact store."""

    uri: str  # runs:/<run_id>/base_model
    hash: str  # cosyml.pyfunc.tree_hash of the files
    run_id: str
    created: bool


def _log_once(
    mlc: Any, experiment: str, match: dict[str, str], run_name: str, tags: dict[str, str], files: list[tuple[str, Path]]
) -> tuple[str, bool]:
    """The id of the complete run in ``experiment`` tagged with ``match``, or of a new one holding ``files``
    (``(artifact path, local file)`` pairs). Returns (run id, created). Only a complete upload is reused."""
    exp_id = _experiment_id(mlc, experiment)
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in {**match, "cosyml.complete": "true"}.items())
    found = mlc.search_runs([exp_id], filter_string=query, max_results=1)
    if found:
        return found[0].info.run_id, False
    run_id = mlc.create_run(exp_id, run_name=run_name, tags={**match, **tags}).info.run_id
    try:
        for name, path in files:
            parent = str(Path(name).parent)
            mlc.log_artifact(run_id, str(path.resolve()), artifact_path=None if parent == "." else parent)
        mlc.set_tag(run_id, "cosyml.complete", "true")
    except BaseException:
        mlc.set_terminated(run_id, status="FAILED")
        raise
    mlc.set_terminated(run_id)
    return run_id, True


def ensure_base_assets(mlc: Any, model_dir: str | Path) -> BaseAssets:
    """Log the base assets of ``model_dir`` once per content hash; later calls reuse that run."""
    from cosyml.pyfunc import base_asset_files, tree_hash

    files = base_asset_files(model_dir)
    digest = tree_hash(files)
    run_id, created = _log_once(
        mlc,
        BASE_EXPERIMENT,
        {"cosyml.base_hash": digest},
        f"base-{Path(model_dir).resolve().name}-{digest[:8]}",
        {"cosyml.model_dir": str(Path(model_dir).resolve())},
        [(f"{BASE_ARTIFACT}/{name}", path) for name, path in files],
    )
    return BaseAssets(f"runs:/{run_id}/{BASE_ARTIFACT}", digest, run_id, created=created)


@dataclass(frozen=True)
class SharedWeights:
    """Where a fine-tuned part lives in the artifact store (once per tensor content)."""

    uri: str  # runs:/<run_id>/weights/<part>.pt
    file_sha256: str  # of the stored file, checked after download
    run_id: str
    created: bool


def ensure_weights(mlc: Any, part: str, weights: PartWeights) -> SharedWeights:
    """Log a staged fine-tuned ``part`` once per tensor hash; later calls (other versions) reuse it."""
    from cosyml.pyfunc import file_sha256

    assert weights.file is not None
    run_id, created = _log_once(
        mlc,
        WEIGHTS_EXPERIMENT,
        {"cosyml.part": part, "cosyml.weights_sha256": weights.sha256},
        f"{part}-{weights.sha256[:8]}",
        {"cosyml.source": weights.source, "cosyml.file_sha256": file_sha256(weights.file)},
        [(f"{WEIGHTS_ARTIFACT}/{part}.pt", weights.file)],
    )
    stored = mlc.get_run(run_id).data.tags["cosyml.file_sha256"]  # the file first logged, on reuse
    return SharedWeights(f"runs:/{run_id}/{WEIGHTS_ARTIFACT}/{part}.pt", stored, run_id, created)


# ---------------------------------------------------------------------------------------------- weights


def tensors_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """A hash of a state dict's content (names, dtypes, shapes, bytes), whatever file format held it."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(f"{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


@dataclass(frozen=True)
class PartWeights:
    source: str  # "base" or the resolved source path
    sha256: str  # tensors_sha256, or "base"
    file: Path | None  # the plain fp32 copy to store in the version, or None for "base"


def _stage_part(part: Literal["llm", "flow"], source: str, model_dir: str, out_dir: Path, where: str) -> PartWeights:
    """Read a candidate's part (official file, averaged file or checkpoint), check it fits the base, stage it."""
    from cosyml.models.modeldir import ModelDir, describe_mismatch, load_state_dict_file
    from cosyml.synth.weights import read_weights
    from cosyml.train.checkpoint import save_plain_state_dict

    if source == BASE:
        return PartWeights(BASE, BASE, None)
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / f"{part}.pt"
    if not path.is_file():
        raise InputError(f"{where}.{part}: {path} not found; the weights must exist where evaluation read them")
    state = read_weights(path, part)
    reference = load_state_dict_file(ModelDir(model_dir).weight_path(part), part=part)
    mismatch = describe_mismatch(reference, state)
    if mismatch:
        raise InputError(f"{where}.{part}: {path}: {mismatch}; pass weights trained from {model_dir}")
    target = out_dir / f"{part}.pt"
    save_plain_state_dict(state, target)
    return PartWeights(str(path.resolve()), tensors_sha256(state), target)


def _speaker_table(speaker: str, speakers_file: str, model_dir: str) -> dict[str, dict[str, torch.Tensor]]:
    """``{speaker: {"embedding": (1, 192)}}`` from spk2embedding.pt / spk2info.pt, else the model dir's spk2info."""
    from cosyml.synth.frontend import load_speaker_file

    tried = []
    for candidate in (speakers_file, str(Path(model_dir) / "spk2info.pt")):
        if not candidate or not Path(candidate).is_file():
            tried.append(candidate)
            continue
        known = load_speaker_file(candidate)
        if speaker in known:
            return {speaker: {"embedding": known[speaker].embedding.reshape(1, -1).float().contiguous()}}
        tried.append(f"{candidate} (no '{speaker}')")
    raise InputError(
        f"speaker '{speaker}': no embedding in {', '.join(t for t in tried if t) or 'registry.speakers'}; "
        "set registry.speakers to the spk2embedding.pt that `cosyml extract` wrote"
    )


def read_sampling(path: str) -> dict[str, float]:
    """Tuned sampling defaults from a JSON/YAML file (keys: top_p, top_k, win_size, tau_r, *_token_text_ratio)."""
    if not path:
        return {}
    import yaml

    file = Path(path)
    if not file.is_file():
        raise InputError(f"registry.sampling: {file} not found; point it at the tuned sampling file or leave it empty")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        raise InputError(f"{file}: not valid JSON/YAML; fix the file") from None
    if isinstance(data, dict) and isinstance(data.get("sampling"), dict):
        data = data["sampling"]
    if not isinstance(data, dict):
        raise InputError(f"{file}: expected an object of sampling parameters")
    unknown = sorted(set(data) - set(SAMPLING_KEYS))
    if unknown:
        raise InputError(f"{file}: unknown sampling key(s) {', '.join(unknown)}; known: {', '.join(SAMPLING_KEYS)}")
    out: dict[str, float] = {}
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"{file}: '{key}' must be a number, got {value!r}")
        out[key] = value
    return out


# ---------------------------------------------------------------------------------------------- register


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    candidate: str
    version_key: str
    created: bool  # False: an identical version existed; its score tags were refreshed
    skipped: str = ""  # why the candidate was not registered (e.g. "no scores"); "" when it was


def _sanitize(text: str) -> str:
    """A name MLflow accepts for a logged model (no ``. / : %`` quotes) and a folder name, at most 60
    characters; names that had to change get a hash of the original, so two candidates never share one."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")
    if safe == text and 0 < len(safe) <= 60:
        return safe
    return f"{safe[:51]}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:8]}".lstrip("-")


def _written_weights(run: Any, part: str) -> Path | None:
    """The weight file a finished ``average_<part>`` or ``train_<part>`` run wrote, resolved, or None.

    ``average`` logs the file as its ``out`` param; ``train`` writes ``<output>/<part>.pt`` only when it
    averaged its checkpoints (then it sets ``cosyml.averaged_from``, which holds checkpoint *names*, not
    paths, and so says nothing about where the result went).
    """
    tags, params = run.data.tags, run.data.params
    stage = tags.get("cosyml.stage", "")
    if stage == f"average_{part}" and params.get("out"):
        return Path(params["out"]).expanduser().resolve()
    if stage == f"train_{part}" and params.get("output") and "cosyml.averaged_from" in tags:
        return (Path(params["output"]).expanduser() / f"{part}.pt").resolve()
    return None


def _producer_run(mlc: Any, speaker: str, part: str, source: str) -> str | None:
    """The newest finished run of the speaker's experiment that wrote exactly ``source``, if any.

    Relative paths in the runs' params are read against the working directory, as ``cosyml`` wrote them.
    """
    if source == BASE:
        return None
    exp = mlc.get_experiment_by_name(f"cosyml/{speaker}")
    if exp is None:
        return None
    target = Path(source).expanduser().resolve()
    runs = mlc.search_runs(
        [exp.experiment_id],
        filter_string="attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1000,
    )
    for run in runs:  # newest first: the file's last writer
        if _written_weights(run, part) == target:
            return run.info.run_id
    return None


def register_candidates(
    candidates: CandidateSet,
    config: RegistryConfig,
    speakers_file: str | None = None,
    sampling: Mapping[str, float] | None = None,
    data_version: str | None = None,
    only: list[str] | None = None,
) -> list[RegisteredVersion]:
    """Register every candidate (or those named in ``only``) of ``candidates``; see the module docstring."""
    import mlflow

    from cosyml.tracking import stage_run

    mlc = client()
    name = model_name(config, candidates.speaker)
    chosen = [c for c in candidates.candidates if only is None or c.name in only]
    if only is not None and len(chosen) != len(set(only)):
        missing = sorted(set(only) - {c.name for c in chosen})
        raise InputError(f"{candidates.path}: no candidate named {', '.join(missing)}")
    speakers = _speaker_table(
        candidates.speaker, speakers_file if speakers_file is not None else config.speakers, candidates.model_dir
    )
    sampling = dict(sampling or {})
    base = ensure_base_assets(mlc, candidates.model_dir)
    with contextlib.suppress(mlflow.exceptions.MlflowException):
        mlc.create_registered_model(
            name,
            tags={"cosyml.speaker": candidates.speaker},
            description=f"cosyml voice of speaker '{candidates.speaker}': one version per evaluated candidate",
        )
    existing = {v.tags.get("cosyml.version_key"): v for v in mlc.search_model_versions(f"name='{name}'")}
    speaker_hash = tensors_sha256(speakers[candidates.speaker])
    logged = {
        "candidates": str(candidates.path),
        "model_name": name,
        "base_hash": base.hash,
        "speakers_file": speakers_file or config.speakers,
        **{f"sampling.{k}": v for k, v in sampling.items()},
    }
    out: list[RegisteredVersion] = []
    wheel: Path | None = None
    with (
        stage_run("register", candidates.speaker, logged, data_version=data_version) as run,
        tempfile.TemporaryDirectory(prefix="cosyml-register-") as tmp,
    ):
        for cand in chosen:
            where = f"{candidates.path}: candidate '{cand.name}'"
            if cand.summary is None:
                out.append(RegisteredVersion(name, "", cand.name, "", created=False, skipped="no scores"))
                continue
            stage = Path(tmp) / _sanitize(cand.name)
            stage.mkdir()
            parts = {p: _stage_part(p, getattr(cand, p), candidates.model_dir, stage, where) for p in ("llm", "flow")}
            weights_hash = hashlib.sha256(
                f"{base.hash}|{parts['llm'].sha256}|{parts['flow'].sha256}".encode()
            ).hexdigest()
            identity = json.dumps([weights_hash, speaker_hash, sorted(sampling.items()), config.max_tokens])
            key = hashlib.sha256(identity.encode()).hexdigest()
            # A few headline tags; every score is a model metric and in scores.json, the storage
            # lineage (hashes, URIs) is in voice.json.
            tags = {
                "cosyml.candidate": cand.name,
                "cosyml.speaker": candidates.speaker,
                "cosyml.is_base": str(cand.base).lower(),
                "cosyml.version_key": key,
                "cosyml.eval_sha": candidates.sha256,
                "score.cer": repr(cand.summary.cer),
                "score.ss": repr(cand.summary.ss),
                "score.n": str(cand.summary.n),
            }
            for part, weights in parts.items():
                tags[f"cosyml.{part}"] = weights.source
                producer = cand.runs.get(part) or _producer_run(mlc, candidates.speaker, part, weights.source)
                if producer:
                    tags[f"cosyml.{part}_run_id"] = producer
            if data_version:
                tags["cosyml.data_version"] = data_version
            metrics = score_metrics(cand)
            scores_doc = {
                "candidate": cand.name,
                "llm": cand.llm,
                "flow": cand.flow,
                "eval_file": str(candidates.path),
                "eval_sha": candidates.sha256,
                "register_run_id": run.run_id or None,
                "summary": dataclasses.asdict(cand.summary),
                "subsets": {k: dataclasses.asdict(v) for k, v in cand.subsets.items()},
            }
            description = (
                f"candidate {cand.name}: llm={cand.llm} flow={cand.flow}; CER {cand.summary.cer:.4f} "
                f"[{cand.summary.cer_ci[0]:.4f}, {cand.summary.cer_ci[1]:.4f}], SS {cand.summary.ss:.4f} "
                f"[{cand.summary.ss_ci[0]:.4f}, {cand.summary.ss_ci[1]:.4f}], n={cand.summary.n}"
            )
            if key in existing:
                version = existing[key]
                for tag, value in tags.items():
                    if version.tags.get(tag) != value:
                        mlc.set_model_version_tag(name, version.version, tag, value)
                for tag in version.tags:  # a version registered by an older cosyml carried every score as a tag
                    if tag not in tags and (tag.startswith(("score.", "subset.")) or tag in _RETIRED_TAGS):
                        mlc.delete_model_version_tag(name, version.version, tag)
                if (model_id := _logged_model_id(version)) is not None:
                    _log_scores(model_id, run.run_id, metrics, scores_doc, Path(tmp) / f"rescore-{key[:12]}")
                mlc.update_model_version(name, version.version, description=description)
                out.append(RegisteredVersion(name, str(version.version), cand.name, key, created=False))
                continue
            shared = {p: ensure_weights(mlc, p, w) for p, w in parts.items() if w.file is not None}
            spec = VoiceSpec(
                speaker=candidates.speaker,
                candidate=cand.name,
                base_uri=base.uri,
                base_hash=base.hash,
                llm=shared["llm"].uri if "llm" in shared else BASE,
                flow=shared["flow"].uri if "flow" in shared else BASE,
                llm_sha256=parts["llm"].sha256,
                flow_sha256=parts["flow"].sha256,
                llm_file_sha256=shared["llm"].file_sha256 if "llm" in shared else "",
                flow_file_sha256=shared["flow"].file_sha256 if "flow" in shared else "",
                sampling=sampling,
                max_tokens=config.max_tokens,
                scores={
                    "summary": dataclasses.asdict(cand.summary),
                    "subsets": {k: dataclasses.asdict(v) for k, v in cand.subsets.items()},
                },
            )
            (stage / "voice.json").write_text(spec.to_json(), encoding="utf-8")
            torch.save(speakers, stage / "spk2info.pt")
            artifacts = {"voice": str(stage / "voice.json"), "spk2info": str(stage / "spk2info.pt")}
            if wheel is None:  # built once per call, carried by every version it registers
                wheel = build_cosyml_wheel(Path(tmp) / "wheels")
            model_uri = _log_voice(stage, artifacts, candidates.speaker, cand.name, run.run_id, wheel)
            _log_scores(model_uri.removeprefix("models:/"), run.run_id, metrics, scores_doc, stage / "scores")
            version = mlflow.register_model(model_uri, name, tags=tags)
            first = _first_with_key(mlc, name, key) or version
            if str(first.version) != str(version.version):  # another process registered it meanwhile
                mlc.delete_model_version(name, version.version)
                existing[key] = first
                out.append(RegisteredVersion(name, str(first.version), cand.name, key, created=False))
                continue
            mlc.update_model_version(name, version.version, description=description)
            existing[key] = version
            out.append(RegisteredVersion(name, str(version.version), cand.name, key, created=True))
        run.set_tags({"cosyml.registered": ",".join(f"{r.candidate}=v{r.version}" for r in out if not r.skipped)})
    return out


#: Version tags older releases wrote that now live in voice.json / scores.json; removed on re-registration.
_RETIRED_TAGS = frozenset(
    {
        "cosyml.weights_hash",
        "cosyml.base_hash",
        "cosyml.base_uri",
        "cosyml.eval_file",
        "cosyml.register_run_id",
        "cosyml.llm_sha256",
        "cosyml.flow_sha256",
        "cosyml.llm_uri",
        "cosyml.flow_uri",
    }
)


def score_metrics(cand: Candidate) -> dict[str, float]:
    """Every number of a candidate as model metrics: ``cer``, ``cer_ci_lo`` ... and ``<subset>/cer`` ..."""
    assert cand.summary is not None
    out = cand.summary.metrics()
    for sub, scores in cand.subsets.items():
        out.update(scores.metrics(f"{re.sub(r'[^A-Za-z0-9_./ -]+', '_', sub)}/"))
    return out


def _log_scores(
    model_id: str, run_id: str | None, metrics: Mapping[str, float], doc: Mapping[str, Any], folder: Path
) -> None:
    """The scores as metrics of the logged model (its "Metrics" in the MLflow UI; the latest value wins on
    a refresh) and as its artifact ``scores.json``."""
    import mlflow

    mlflow.log_metrics(dict(metrics), model_id=model_id, run_id=run_id)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scores.json").write_text(
        json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    mlflow.MlflowClient().log_model_artifacts(model_id, str(folder))


def _first_with_key(mlc: Any, name: str, key: str) -> Any | None:
    """The lowest-numbered version of ``name`` tagged with ``key``.

    Two ``register`` runs at once can both find a candidate missing and both register it; each then
    keeps its version only if it is the first with that key, so exactly one survives, whichever wins.
    """
    same = mlc.search_model_versions(f"name='{name}' and tags.`cosyml.version_key` = '{key}'")
    return min(same, key=lambda v: int(v.version)) if same else None


def _log_voice(
    stage: Path, artifacts: dict[str, str], speaker: str, candidate: str, run_id: str | None, wheel: Path
) -> str:
    """Log one voice as an MLflow logged model; returns its ``models:/<model_id>`` URI.

    ``mlflow.pyfunc.log_model`` would load the model and synthesise the input example to validate it
    (the whole engine, per version); the model is saved locally and uploaded instead, with the same
    MLmodel, signature and input example.
    """
    import mlflow
    from mlflow.models import Model

    from cosyml.pyfunc import input_example, signature

    logged = mlflow.initialize_logged_model(
        name=f"voice-{_sanitize(candidate)}",
        source_run_id=run_id,
        model_type="cosyml-voice",
        tags={"cosyml.candidate": candidate, "cosyml.speaker": speaker},
    )
    try:
        local = stage / "model"
        mlflow.pyfunc.save_model(
            path=str(local),
            python_model=str(Path(__file__).with_name("pyfunc_model.py")),  # code, not a pickle
            artifacts=artifacts,
            signature=signature(),
            input_example=input_example(speaker),
            pip_requirements=requirements(f"{WHEELS_DIR}/{wheel.name}"),
            model_config={"device": "auto", "cache_dir": "", "batch_size": 8},
            mlflow_model=Model(artifact_path=logged.artifact_location, run_id=run_id, model_id=logged.model_id),
        )
        (local / WHEELS_DIR).mkdir()
        shutil.copyfile(wheel, local / WHEELS_DIR / wheel.name)  # requirements.txt names it by this path
        mlflow.MlflowClient().log_model_artifacts(logged.model_id, str(local))
    except BaseException:
        mlflow.finalize_logged_model(logged.model_id, "FAILED")
        raise
    mlflow.finalize_logged_model(logged.model_id, "READY")
    return f"models:/{logged.model_id}"


#: Folder of a logged voice that holds the cosyml wheel its requirements.txt installs.
WHEELS_DIR = "wheels"


def requirements(cosyml_wheel: str) -> list[str]:
    """The pip requirements of a voice: the installed versions of what the pyfunc imports, as public
    versions (``torch==2.13.0``, not the ``+cpu`` local build, which no index serves), and cosyml itself
    as the wheel carried in the model (``cosyml_wheel``: its path relative to the model folder)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in (
        "mlflow",
        "torch",
        "numpy",
        "pandas",
        "soundfile",
        *ORT_DISTRIBUTIONS,
        "transformers",
        "wetext",
        "PyYAML",
    ):  # the onnxruntime build installed here (cpu or gpu)
        with contextlib.suppress(PackageNotFoundError):
            out.append(f"{dist}=={version(dist).split('+', 1)[0]}")
    return [*out, cosyml_wheel]


def build_cosyml_wheel(out_dir: Path) -> Path:
    """A wheel (PEP 427, pure Python, no dependencies declared: the voice's requirements list them) of the
    cosyml package this process runs, written directly from its files.

    Works the same from a checkout and from an installed cosyml (a ``cosyml init`` project has no
    pyproject.toml), needs no network and no build backend, and the same files give the same bytes (sorted
    entries, fixed timestamps), so re-registering the same code uploads nothing new.
    """
    import base64
    import zipfile

    import cosyml

    package = Path(cosyml.__file__).resolve().parent
    version = cosyml.__version__
    dist_info = f"cosyml-{version}.dist-info"
    files: list[tuple[str, bytes]] = []
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo"):
            files.append((f"cosyml/{path.relative_to(package).as_posix()}", path.read_bytes()))
    metadata = f"Metadata-Version: 2.1\nName: cosyml\nVersion: {version}\nRequires-Python: >=3.11\n"
    wheel_info = "Wheel-Version: 1.0\nGenerator: cosyml\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    entry_points = "[console_scripts]\ncosyml = cosyml.cli:main\n"
    files += [
        (f"{dist_info}/METADATA", metadata.encode()),
        (f"{dist_info}/WHEEL", wheel_info.encode()),
        (f"{dist_info}/entry_points.txt", entry_points.encode()),
    ]

    def record_line(name: str, data: bytes) -> str:
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        return f"{name},sha256={digest},{len(data)}"

    record = "\n".join([*(record_line(n, d) for n, d in files), f"{dist_info}/RECORD,,"]) + "\n"
    files.append((f"{dist_info}/RECORD", record.encode()))
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = out_dir / f"cosyml-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return wheel


# ---------------------------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class ScoredVersion:
    version: str
    candidate: str
    scores: Scores | None  # None: the version carries no readable score tags
    is_base: bool = False


@dataclass(frozen=True)
class Verdict:
    version: str
    candidate: str
    composite: float | None
    eligible: bool
    reason: str


@dataclass(frozen=True)
class Decision:
    """What promotion does: ``promote`` moves the champion alias to ``target``; ``keep`` moves nothing."""

    action: Literal["promote", "keep"]
    target: str | None  # version that becomes champion
    champion: str | None  # current champion version (None: there is none)
    reason: str
    verdicts: list[Verdict]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def composite(scores: Scores, config: RegistryConfig) -> float:
    """Higher is better: ``ss_weight * SS - cer_weight * CER``."""
    return config.ss_weight * scores.ss - config.cer_weight * scores.cer


def _fmt(ci: tuple[float, float]) -> str:
    return f"[{ci[0]:.4f}, {ci[1]:.4f}]"


def beats(challenger: Scores, champion: Scores, config: RegistryConfig) -> tuple[bool, str]:
    """Does ``challenger`` beat ``champion`` by the policy? (answer, reason)."""
    c_new, c_old = composite(challenger, config), composite(champion, config)
    if c_new <= c_old:
        return False, f"composite {c_new:.4f} is not above the champion's {c_old:.4f}"
    if not config.require_ci_separation:
        return True, f"composite {c_new:.4f} > champion {c_old:.4f}"
    cer_better = challenger.cer_ci[1] < champion.cer_ci[0]
    ss_better = challenger.ss_ci[0] > champion.ss_ci[1]
    cer_worse = challenger.cer_ci[0] > champion.cer_ci[1]
    ss_worse = challenger.ss_ci[1] < champion.ss_ci[0]
    cis = f"CER {_fmt(challenger.cer_ci)} vs {_fmt(champion.cer_ci)}, SS {_fmt(challenger.ss_ci)} vs {_fmt(champion.ss_ci)}"
    if cer_worse or ss_worse:
        return False, f"significantly worse on {'CER' if cer_worse else 'SS'} ({cis})"
    if not (cer_better or ss_better):
        return False, f"confidence intervals overlap the champion's ({cis})"
    better = " and ".join(m for m, ok in (("CER", cer_better), ("SS", ss_better)) if ok)
    return True, f"better beyond the CIs on {better} ({cis}); composite {c_new:.4f} > {c_old:.4f}"


def _eligibility(item: ScoredVersion, base: Scores, config: RegistryConfig) -> tuple[bool, str]:
    s = item.scores
    if s is None:
        return False, "no scores"
    if s.n <= 0:
        return False, "no scored utterances"
    if s.missing / s.n > config.max_missing_ratio:
        return False, f"{s.missing} of {s.n} outputs missing (> registry.max_missing_ratio {config.max_missing_ratio})"
    if s.cer - base.cer > config.max_cer_regression:
        return False, (
            f"CER {s.cer:.4f} regresses vs base {base.cer:.4f} by {s.cer - base.cer:.4f} "
            f"(> registry.max_cer_regression {config.max_cer_regression})"
        )
    return True, "eligible"


def decide(pool: list[ScoredVersion], champion: ScoredVersion | None, config: RegistryConfig) -> Decision:
    """The promotion policy (see README "Promotion policy"). ``pool`` must hold the base model's version."""
    bases = [v for v in pool if v.is_base and v.scores is not None]
    if not bases:
        raise InputError(
            "no evaluated base model among the candidates; evaluate the base model (llm=base, flow=base) too"
        )
    base = bases[0].scores
    assert base is not None
    verdicts = []
    for item in pool:
        ok, why = _eligibility(item, base, config)
        verdicts.append(
            Verdict(item.version, item.candidate, composite(item.scores, config) if item.scores else None, ok, why)
        )
    ranked = sorted(
        (v for v in verdicts if v.eligible),
        key=lambda v: (-(v.composite or 0.0), int(v.version) if v.version.isdigit() else 0),
    )
    current = champion.version if champion else None
    if not ranked:
        return Decision(
            "keep",
            None,
            current,
            "no eligible candidate: " + "; ".join(f"v{v.version} {v.candidate}: {v.reason}" for v in verdicts),
            verdicts,
        )
    best = ranked[0]
    if champion is None:
        return Decision(
            "promote",
            best.version,
            None,
            f"no champion yet; v{best.version} ({best.candidate}) is the best eligible candidate (composite {best.composite:.4f})",
            verdicts,
        )
    if best.version == champion.version:
        return Decision(
            "keep",
            None,
            current,
            f"the champion v{current} ({champion.candidate}) is still the best eligible candidate",
            verdicts,
        )
    if champion.scores is None:
        return Decision(
            "promote",
            best.version,
            current,
            f"the champion v{current} has no scores; v{best.version} ({best.candidate}) is the best eligible candidate",
            verdicts,
        )
    reasons = []
    for verdict in ranked:
        if verdict.version == champion.version:
            break  # candidates ranked below the champion cannot beat it
        scores = next(p.scores for p in pool if p.version == verdict.version)
        assert scores is not None
        ok, why = beats(scores, champion.scores, config)
        if ok:
            return Decision(
                "promote",
                verdict.version,
                current,
                f"v{verdict.version} ({verdict.candidate}) beats champion v{current}: {why}",
                verdicts,
            )
        reasons.append(f"v{verdict.version} ({verdict.candidate}): {why}")
    return Decision(
        "keep",
        None,
        current,
        f"no candidate beats champion v{current} ({champion.candidate}): "
        + "; ".join(reasons or ["none ranks above it"]),
        verdicts,
    )


# ---------------------------------------------------------------------------------------------- promote


def _logged_model_id(version: Any) -> str | None:
    """The logged model behind a version (MLflow 3 leaves ``model_id`` empty in listings; the source
    ``models:/<model_id>`` names it)."""
    model_id = getattr(version, "model_id", None)
    source = str(getattr(version, "source", "") or "")
    if not model_id and source.startswith("models:/m-"):
        model_id = source.removeprefix("models:/").strip("/")
    return model_id or None


def _model_metrics(mlc: Any, version: Any) -> dict[str, float]:
    """The latest value of each metric of the version's logged model ({} when there is none)."""
    from mlflow.exceptions import MlflowException

    model_id = _logged_model_id(version)
    if not model_id:
        return {}
    try:
        metrics = mlc.get_logged_model(model_id).metrics or []
    except MlflowException:
        return {}
    latest: dict[str, float] = {}
    for metric in sorted(metrics, key=lambda m: (m.timestamp, m.step)):
        latest[metric.key] = metric.value
    return latest


def _version_score(mlc: Any, version: Any) -> ScoredVersion:
    """A version's scores: its model metrics, or the score tags of a version registered by an older cosyml."""
    tags = version.tags or {}
    return ScoredVersion(
        version=str(version.version),
        candidate=tags.get("cosyml.candidate", f"v{version.version}"),
        scores=Scores.from_tags(_model_metrics(mlc, version), prefix="") or Scores.from_tags(tags),
        is_base=tags.get("cosyml.is_base") == "true",
    )


def _alias_version(mlc: Any, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return mlc.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


@dataclass(frozen=True)
class PromotionResult:
    model_name: str
    decision: Decision
    moved: bool
    dry_run: bool
    policy: dict[str, Any] = field(default_factory=dict)


def promote(candidates: CandidateSet, config: RegistryConfig, dry_run: bool = False) -> PromotionResult:
    """Apply the policy to the versions registered from ``candidates`` and move the aliases.

    The champion alias moves only on a ``promote`` decision; the old champion keeps ``previous``. Each
    alias move is one atomic registry call, ``previous`` is set first, so an interruption leaves the
    old champion serving. The decision is logged as a ``promote`` stage run (also on a dry run).
    """
    from cosyml.config import as_flat_dict
    from cosyml.tracking import stage_run

    mlc = client()
    name = model_name(config, candidates.speaker)
    try:
        versions = mlc.search_model_versions(f"name='{name}'")
    except Exception as exc:  # pragma: no cover - network trouble
        raise CosymlError(
            f"model registry: cannot list versions of '{name}' ({exc}); check MLFLOW_TRACKING_URI"
        ) from None
    pool = [_version_score(mlc, v) for v in versions if (v.tags or {}).get("cosyml.eval_sha") == candidates.sha256]
    if not pool:
        raise InputError(
            f"{candidates.path}: its candidates are not registered in '{name}'; run `cosyml register` first (or promote --register)"
        )
    champ_version = _alias_version(mlc, name, config.alias)
    champion = _version_score(mlc, champ_version) if champ_version is not None else None
    decision = decide(pool, champion, config)
    policy = as_flat_dict(config, "registry.")
    moved = False
    if decision.action == "promote" and not dry_run:
        assert decision.target is not None
        if champion is not None and champion.version != decision.target:
            mlc.set_registered_model_alias(name, config.previous_alias, champion.version)
        if champion is None or champion.version != decision.target:
            mlc.set_registered_model_alias(name, config.alias, decision.target)
            moved = True
    with stage_run(
        "promote", candidates.speaker, {**policy, "candidates": str(candidates.path), "dry_run": dry_run}
    ) as run:
        run.set_tags(
            {
                "cosyml.decision": decision.action if not dry_run else f"{decision.action} (dry run)",
                "cosyml.reason": decision.reason[:4900],
                "cosyml.model_name": name,
                "cosyml.champion_before": decision.champion or "none",
                "cosyml.champion_after": decision.target if moved else (decision.champion or "none"),
                "cosyml.moved": str(moved).lower(),
            }
        )
        run.log_dict({"model_name": name, "dry_run": dry_run, "moved": moved, **decision.as_dict()}, "promotion.json")
    return PromotionResult(name, decision, moved, dry_run, policy)


def rollback(speaker: str, config: RegistryConfig) -> tuple[str, str]:
    """Swap ``champion`` and ``previous``; returns (new champion, new previous)."""
    mlc = client()
    name = model_name(config, speaker)
    champion = _alias_version(mlc, name, config.alias)
    previous = _alias_version(mlc, name, config.previous_alias)
    if previous is None:
        raise InputError(f"model '{name}' has no '{config.previous_alias}' alias; nothing to roll back to")
    mlc.set_registered_model_alias(name, config.alias, previous.version)
    if champion is not None:
        mlc.set_registered_model_alias(name, config.previous_alias, champion.version)
    return str(previous.version), str(champion.version) if champion is not None else "none"


def describe_versions(speaker: str, config: RegistryConfig) -> Iterator[str]:
    """One line per version: number, aliases, candidate, scores (for `cosyml promote --list`)."""
    from mlflow.exceptions import MlflowException

    mlc = client()
    name = model_name(config, speaker)
    try:  # search_model_versions leaves aliases empty; the registered model holds them
        by_alias = dict(mlc.get_registered_model(name).aliases or {})
    except MlflowException:
        raise InputError(
            f"no registered model '{name}'; run `cosyml register` (or check MLFLOW_TRACKING_URI)"
        ) from None
    aliases_of: dict[str, list[str]] = {}
    for alias, number in sorted(by_alias.items()):
        aliases_of.setdefault(str(number), []).append(alias)
    for version in sorted(mlc.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version)):
        item = _version_score(mlc, version)
        aliases = ",".join(aliases_of.get(str(version.version), []))
        s = item.scores
        score = f"CER {s.cer:.4f} {_fmt(s.cer_ci)} SS {s.ss:.4f} {_fmt(s.ss_ci)} n={s.n}" if s else "no scores"
        yield f"v{item.version:<4} {aliases or '-':<20} {item.candidate:<24} {score}"
