"""The model registry: evaluated candidates become versions of one registered model per speaker, and a
written policy moves the ``champion`` alias.

One job per module:

- :mod:`~cosyml.registry.candidates`: the schema of ``candidates.json`` (written by ``cosyml evaluate``):
  :class:`Scores`, :class:`EvaluatedCandidate` (the one :class:`~cosyml.evaluation.candidates.Candidate`
  with its scores), :func:`read_candidates`. Pure.
- :mod:`~cosyml.registry.policy`: the promotion policy: :func:`composite` (``ss_weight * SS - cer_weight *
  CER``), the guard rules and :func:`decide`. Pure: no MLflow, no torch.
- :mod:`~cosyml.registry.names`: registered-model and logged-model names. Pure.
- :mod:`~cosyml.registry.staging`: a candidate's weights, speaker embedding and sampling defaults, checked
  and staged on local disk (torch, no MLflow).
- :mod:`~cosyml.registry.register`, :mod:`~cosyml.registry.promotion`, :mod:`~cosyml.registry.lineage`,
  :mod:`~cosyml.registry.packaging`: the MLflow side (register versions, move aliases, find the run that
  wrote a part, package a voice). They never import mlflow: the client, experiment creation, the default
  tracking URI and every fluent call are in :mod:`cosyml.tracking`, the pyfunc flavor in :mod:`cosyml.pyfunc`.

``import cosyml.registry`` loads the pure modules only; a name of the MLflow side is imported on first use.

Version tags (a few headlines, all strings): ``cosyml.candidate``, ``cosyml.speaker``, ``cosyml.is_base``,
``cosyml.llm`` / ``cosyml.flow`` (source path or ``base``), ``cosyml.llm_run_id`` / ``cosyml.flow_run_id``
(the run that wrote the weights, when known), ``cosyml.data_version``, ``cosyml.version_key`` (identity),
``cosyml.eval_sha`` (the candidates.json it was scored in), ``score.cer``, ``score.ss``, ``score.n``.
Every score (summary with CIs, missing, over_50, and ``<subset>/<key>`` per subset) is a metric of the
version's logged model (MLflow's model metrics; promotion reads them) and is in its artifact
``scores.json``; hashes and storage URIs are in ``artifacts/voice.json``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cosyml.registry.candidates import CandidateSet, EvaluatedCandidate, Scores, read_candidates
from cosyml.registry.names import model_name, shown_name, speaker_model_name
from cosyml.registry.policy import Decision, ScoredVersion, Verdict, beats, composite, decide

if TYPE_CHECKING:
    from cosyml.registry.packaging import WHEELS_DIR, build_cosyml_wheel, requirements
    from cosyml.registry.promotion import PromotionResult, describe_versions, promote, rollback
    from cosyml.registry.register import (
        BASE_EXPERIMENT,
        WEIGHTS_EXPERIMENT,
        RegisteredVersion,
        ensure_base_assets,
        ensure_weights,
        register_candidates,
        score_metrics,
    )
    from cosyml.registry.staging import read_sampling, tensors_sha256
    from cosyml.tracking import registry_client as client

#: The MLflow side, imported when first named (``from cosyml.registry import promote``).
_LAZY = {
    "WHEELS_DIR": ("cosyml.registry.packaging", "WHEELS_DIR"),
    "build_cosyml_wheel": ("cosyml.registry.packaging", "build_cosyml_wheel"),
    "requirements": ("cosyml.registry.packaging", "requirements"),
    "PromotionResult": ("cosyml.registry.promotion", "PromotionResult"),
    "describe_versions": ("cosyml.registry.promotion", "describe_versions"),
    "promote": ("cosyml.registry.promotion", "promote"),
    "rollback": ("cosyml.registry.promotion", "rollback"),
    "BASE_EXPERIMENT": ("cosyml.registry.register", "BASE_EXPERIMENT"),
    "WEIGHTS_EXPERIMENT": ("cosyml.registry.register", "WEIGHTS_EXPERIMENT"),
    "RegisteredVersion": ("cosyml.registry.register", "RegisteredVersion"),
    "ensure_base_assets": ("cosyml.registry.register", "ensure_base_assets"),
    "ensure_weights": ("cosyml.registry.register", "ensure_weights"),
    "register_candidates": ("cosyml.registry.register", "register_candidates"),
    "score_metrics": ("cosyml.registry.register", "score_metrics"),
    "read_sampling": ("cosyml.registry.staging", "read_sampling"),
    "tensors_sha256": ("cosyml.registry.staging", "tensors_sha256"),
    "client": ("cosyml.tracking", "registry_client"),
}

__all__ = [
    "BASE_EXPERIMENT",
    "WEIGHTS_EXPERIMENT",
    "WHEELS_DIR",
    "CandidateSet",
    "Decision",
    "EvaluatedCandidate",
    "PromotionResult",
    "RegisteredVersion",
    "ScoredVersion",
    "Scores",
    "Verdict",
    "beats",
    "build_cosyml_wheel",
    "client",
    "composite",
    "decide",
    "describe_versions",
    "ensure_base_assets",
    "ensure_weights",
    "model_name",
    "promote",
    "read_candidates",
    "read_sampling",
    "register_candidates",
    "requirements",
    "rollback",
    "score_metrics",
    "shown_name",
    "speaker_model_name",
    "tensors_sha256",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'cosyml.registry' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
