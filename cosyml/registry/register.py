"""Registering evaluated candidates as versions of the speaker's registered model.

Each candidate is logged as a :class:`cosyml.pyfunc.VoiceModel` and registered as a version of
``cosyml-<speaker>``, tagged with its headline scores. The base model's assets are logged once per content
hash (a run in ``cosyml/base-models``, artifact ``base_model/``) and each fine-tuned ``llm.pt``/``flow.pt``
once per tensor content (a run in ``cosyml/weights``, artifact ``weights/<part>.pt``); versions reference
both by URI and hold no weights. A candidate whose identity (base assets, llm and flow tensors, speaker
embedding, sampling defaults, token cap) is already registered is not registered again: its score tags
are refreshed instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cosyml.config import RegistryConfig
from cosyml.errors import InputError
from cosyml.fileio import atomic_torch_save
from cosyml.models.keys import SPK2INFO_NAME
from cosyml.pyfunc import BASE, BASE_ARTIFACT, VoiceSpec, base_asset_files, file_sha256, tree_hash
from cosyml.registry.candidates import CandidateSet, EvaluatedCandidate
from cosyml.registry.lineage import producer_run
from cosyml.registry.names import model_name, sanitize
from cosyml.registry.packaging import build_cosyml_wheel, log_voice
from cosyml.registry.staging import PartWeights, speaker_table, stage_part, tensors_sha256
from cosyml.tracking import (
    ensure_registered_model,
    log_model_artifacts,
    log_model_metrics,
    log_once,
    logged_weights,
    register_model,
    registry_client,
    stage_run,
    version_model_id,
)

BASE_EXPERIMENT = "cosyml/base-models"
WEIGHTS_EXPERIMENT = "cosyml/weights"
WEIGHTS_ARTIFACT = "weights"

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


# ---------------------------------------------------------------------------------------------- shared assets


@dataclass(frozen=True)
class BaseAssets:
    """Where a base model's assets live in the artifact store."""

    uri: str  # runs:/<run_id>/base_model
    hash: str  # cosyml.pyfunc.tree_hash of the files
    run_id: str
    created: bool


def ensure_base_assets(mlc: Any, model_dir: str | Path) -> BaseAssets:
    """Log the base assets of ``model_dir`` once per content hash; later calls reuse that run."""
    files = base_asset_files(model_dir)
    digest = tree_hash(files)
    run_id, created = log_once(
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


def ensure_weights(mlc: Any, part: str, weights: PartWeights, speaker: str | None = None) -> SharedWeights:
    """Log a staged fine-tuned ``part`` once per tensor hash; later calls (other versions) reuse it.

    The ``average_<part>`` stage of ``speaker`` may have uploaded the same tensors already (it tags its run
    with their hash): then that upload is the stored copy, and a 2 GB LLM is not stored a second time."""
    assert weights.file is not None
    if speaker is not None:
        found = logged_weights(mlc, f"cosyml/{speaker}", weights.sha256, f"{WEIGHTS_ARTIFACT}/{part}.pt")
        if found is not None:
            run_id, stored = found
            return SharedWeights(f"runs:/{run_id}/{WEIGHTS_ARTIFACT}/{part}.pt", stored, run_id, False)
    run_id, created = log_once(
        mlc,
        WEIGHTS_EXPERIMENT,
        {"cosyml.part": part, "cosyml.weights_sha256": weights.sha256},
        f"{part}-{weights.sha256[:8]}",
        {"cosyml.source": weights.source, "cosyml.file_sha256": file_sha256(weights.file)},
        [(f"{WEIGHTS_ARTIFACT}/{part}.pt", weights.file)],
    )
    stored = mlc.get_run(run_id).data.tags["cosyml.file_sha256"]  # the file first logged, on reuse
    return SharedWeights(f"runs:/{run_id}/{WEIGHTS_ARTIFACT}/{part}.pt", stored, run_id, created)


# ---------------------------------------------------------------------------------------------- versions


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    candidate: str
    version_key: str
    created: bool  # False: an identical version existed; its score tags were refreshed
    skipped: str = ""  # why the candidate was not registered (e.g. "no scores"); "" when it was


@dataclass(frozen=True)
class _Call:
    """What every candidate of one :func:`register_candidates` call shares."""

    mlc: Any
    name: str  # the registered model
    candidates: CandidateSet
    config: RegistryConfig
    base: BaseAssets
    speakers: dict[str, dict[str, torch.Tensor]]  # {speaker: {"embedding": (1, 192)}}
    sampling: dict[str, float]
    data_version: str | None
    run_id: str | None  # the register stage run
    tmp: Path


def register_candidates(
    candidates: CandidateSet,
    config: RegistryConfig,
    speakers_file: str | None = None,
    sampling: Mapping[str, float] | None = None,
    data_version: str | None = None,
    only: list[str] | None = None,
) -> list[RegisteredVersion]:
    """Register every candidate (or those named in ``only``) of ``candidates``; see the module docstring."""
    mlc = registry_client()
    name = model_name(config, candidates.speaker)
    chosen = _chosen(candidates, only)
    speakers = speaker_table(
        candidates.speaker, speakers_file if speakers_file is not None else config.speakers, candidates.model_dir
    )
    sampling = dict(sampling or {})
    base = ensure_base_assets(mlc, candidates.model_dir)
    ensure_registered_model(
        mlc,
        name,
        tags={"cosyml.speaker": candidates.speaker},
        description=f"cosyml voice of speaker '{candidates.speaker}': one version per evaluated candidate",
    )
    existing = {v.tags.get("cosyml.version_key"): v for v in mlc.search_model_versions(f"name='{name}'")}
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
        call = _Call(mlc, name, candidates, config, base, speakers, sampling, data_version, run.run_id, Path(tmp))
        for cand in chosen:
            if cand.summary is None:
                out.append(RegisteredVersion(name, "", cand.name, "", created=False, skipped="no scores"))
                continue
            stage = call.tmp / sanitize(cand.name)
            stage.mkdir()
            where = f"{candidates.path}: candidate '{cand.name}'"
            parts = {
                p: stage_part(p, cand.candidate.source(p), candidates.model_dir, stage, where) for p in ("llm", "flow")
            }
            key = _version_key(call, parts)
            tags = _version_tags(call, cand, parts, key)
            if key in existing:
                _refresh_version(call, existing[key], cand, tags, call.tmp / f"rescore-{key[:12]}")
                out.append(RegisteredVersion(name, str(existing[key].version), cand.name, key, created=False))
                continue
            if wheel is None:  # built once per call, carried by every version it registers
                wheel = build_cosyml_wheel(call.tmp / "wheels")
            version, created = _add_version(call, cand, parts, tags, stage, wheel)
            existing[key] = version
            out.append(RegisteredVersion(name, str(version.version), cand.name, key, created=created))
        run.set_tags({"cosyml.registered": ",".join(f"{r.candidate}=v{r.version}" for r in out if not r.skipped)})
    return out


def _chosen(candidates: CandidateSet, only: list[str] | None) -> list[EvaluatedCandidate]:
    """The candidates named in ``only`` (all when None); a name that is not there is one line."""
    chosen = [c for c in candidates.candidates if only is None or c.name in only]
    if only is not None and len(chosen) != len(set(only)):
        missing = sorted(set(only) - {c.name for c in chosen})
        raise InputError(f"{candidates.path}: no candidate named {', '.join(missing)}")
    return chosen


def _version_key(call: _Call, parts: Mapping[str, PartWeights]) -> str:
    """A version's identity: base assets, both parts' tensors, the speaker embedding, sampling, token cap."""
    weights_hash = hashlib.sha256(f"{call.base.hash}|{parts['llm'].sha256}|{parts['flow'].sha256}".encode())
    speaker_hash = tensors_sha256(call.speakers[call.candidates.speaker])
    identity = json.dumps(
        [weights_hash.hexdigest(), speaker_hash, sorted(call.sampling.items()), call.config.max_tokens]
    )
    return hashlib.sha256(identity.encode()).hexdigest()


def _version_tags(call: _Call, cand: EvaluatedCandidate, parts: Mapping[str, PartWeights], key: str) -> dict[str, str]:
    """A few headline tags; every score is a model metric and in scores.json, the storage lineage
    (hashes, URIs) is in voice.json."""
    assert cand.summary is not None
    tags = {
        "cosyml.candidate": cand.name,
        "cosyml.speaker": call.candidates.speaker,
        "cosyml.is_base": str(cand.base).lower(),
        "cosyml.version_key": key,
        "cosyml.eval_sha": call.candidates.sha256,
        "score.cer": repr(cand.summary.cer),
        "score.ss": repr(cand.summary.ss),
        "score.n": str(cand.summary.n),
    }
    for part, weights in parts.items():
        tags[f"cosyml.{part}"] = weights.source
        producer = cand.runs.get(part) or producer_run(call.mlc, call.candidates.speaker, part, weights.source)
        if producer:
            tags[f"cosyml.{part}_run_id"] = producer
    if call.data_version:
        tags["cosyml.data_version"] = call.data_version
    return tags


def _scores_doc(call: _Call, cand: EvaluatedCandidate) -> dict[str, Any]:
    """The version's ``scores.json``: every number, and the evaluation it came from."""
    assert cand.summary is not None
    return {
        "candidate": cand.name,
        "llm": cand.candidate.llm,
        "flow": cand.candidate.flow,
        "eval_file": str(call.candidates.path),
        "eval_sha": call.candidates.sha256,
        "register_run_id": call.run_id or None,
        "summary": dataclasses.asdict(cand.summary),
        "subsets": {k: dataclasses.asdict(v) for k, v in cand.subsets.items()},
    }


def _description(cand: EvaluatedCandidate) -> str:
    s = cand.summary
    assert s is not None
    return (
        f"candidate {cand.name}: llm={cand.candidate.llm} flow={cand.candidate.flow}; CER {s.cer:.4f} "
        f"[{s.cer_ci[0]:.4f}, {s.cer_ci[1]:.4f}], SS {s.ss:.4f} [{s.ss_ci[0]:.4f}, {s.ss_ci[1]:.4f}], n={s.n}"
    )


def _refresh_version(
    call: _Call, version: Any, cand: EvaluatedCandidate, tags: Mapping[str, str], folder: Path
) -> None:
    """An identical version exists: bring its tags, model metrics, scores.json and description up to date."""
    mlc, name = call.mlc, call.name
    for tag, value in tags.items():
        if version.tags.get(tag) != value:
            mlc.set_model_version_tag(name, version.version, tag, value)
    for tag in version.tags:  # a version registered by an older cosyml carried every score as a tag
        if tag not in tags and (tag.startswith(("score.", "subset.")) or tag in _RETIRED_TAGS):
            mlc.delete_model_version_tag(name, version.version, tag)
    if (model_id := version_model_id(version)) is not None:
        _log_scores(model_id, call.run_id, score_metrics(cand), _scores_doc(call, cand), folder)
    mlc.update_model_version(name, version.version, description=_description(cand))


def _add_version(
    call: _Call,
    cand: EvaluatedCandidate,
    parts: Mapping[str, PartWeights],
    tags: Mapping[str, str],
    stage: Path,
    wheel: Path,
) -> tuple[Any, bool]:
    """Store the parts once, log the voice and register it; returns (version, created). When another
    process registered the same identity meanwhile, the first version stays and this one is deleted."""
    assert cand.summary is not None
    mlc, name = call.mlc, call.name
    shared = {p: ensure_weights(mlc, p, w, call.candidates.speaker) for p, w in parts.items() if w.file is not None}
    spec = VoiceSpec(
        speaker=call.candidates.speaker,
        candidate=cand.name,
        base_uri=call.base.uri,
        base_hash=call.base.hash,
        llm=shared["llm"].uri if "llm" in shared else BASE,
        flow=shared["flow"].uri if "flow" in shared else BASE,
        llm_sha256=parts["llm"].sha256,
        flow_sha256=parts["flow"].sha256,
        llm_file_sha256=shared["llm"].file_sha256 if "llm" in shared else "",
        flow_file_sha256=shared["flow"].file_sha256 if "flow" in shared else "",
        sampling=call.sampling,
        max_tokens=call.config.max_tokens,
        scores={
            "summary": dataclasses.asdict(cand.summary),
            "subsets": {k: dataclasses.asdict(v) for k, v in cand.subsets.items()},
        },
    )
    (stage / "voice.json").write_text(spec.to_json(), encoding="utf-8")
    atomic_torch_save(call.speakers, stage / SPK2INFO_NAME)
    artifacts = {"voice": str(stage / "voice.json"), "spk2info": str(stage / "spk2info.pt")}
    model_uri = log_voice(stage, artifacts, call.candidates.speaker, cand.name, call.run_id, wheel)
    _log_scores(
        model_uri.removeprefix("models:/"), call.run_id, score_metrics(cand), _scores_doc(call, cand), stage / "scores"
    )
    version = register_model(model_uri, name, tags)
    first = _first_with_key(mlc, name, tags["cosyml.version_key"]) or version
    if str(first.version) != str(version.version):  # another process registered it meanwhile
        mlc.delete_model_version(name, version.version)
        return first, False
    mlc.update_model_version(name, version.version, description=_description(cand))
    return version, True


def score_metrics(cand: EvaluatedCandidate) -> dict[str, float]:
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
    log_model_metrics(model_id, run_id, metrics)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scores.json").write_text(
        json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    log_model_artifacts(model_id, folder)


def _first_with_key(mlc: Any, name: str, key: str) -> Any | None:
    """The lowest-numbered version of ``name`` tagged with ``key``.

    Two ``register`` runs at once can both find a candidate missing and both register it; each then
    keeps its version only if it is the first with that key, so exactly one survives, whichever wins.
    """
    same = mlc.search_model_versions(f"name='{name}' and tags.`cosyml.version_key` = '{key}'")
    return min(same, key=lambda v: int(v.version)) if same else None
