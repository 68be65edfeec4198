"""The one place that talks to MLflow.

A stage opens one run with :func:`stage_run`; inside it, call :meth:`StageRun.log_metrics`,
:meth:`StageRun.log_artifact` and friends. The experiment is ``cosyml/<speaker>``. Runs are tagged
with the stage name, the git commit, a hash of the stage's parameters and, where known, the data
version (the md5 DVC records for the stage's input).

The tracking URI comes only from the environment (``MLFLOW_TRACKING_URI``); by default it is a sqlite
store ``mlflow.db`` in the current directory with artifacts under ``mlruns/``. Set
``COSYML_TRACKING=off`` to run a stage without recording anything. Credentials stay in the environment
and are never logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Keys whose values never reach MLflow, whatever a caller passes.
_SECRET_MARKERS = ("password", "token", "secret", "api_key", "apikey", "credential")


def tracking_enabled() -> bool:
    return os.environ.get("COSYML_TRACKING", "on").lower() not in ("off", "0", "false", "no")


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def git_commit(cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=False, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def params_hash(params: Mapping[str, Any]) -> str:
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _is_secret(key: str) -> bool:
    lower = key.lower()
    return any(m in lower for m in _SECRET_MARKERS)


def public_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Drop anything that looks like a credential."""
    return {k: v for k, v in params.items() if not _is_secret(k)}


@dataclass
class StageRun:
    """A handle on the active MLflow run (or a no-op when tracking is off)."""

    active: bool
    run_id: str | None = None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.active:
            import mlflow

            mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.active:
            import mlflow

            clean = {k: str(v)[:6000] for k, v in public_params(params).items()}
            mlflow.log_params(clean)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.active:
            import mlflow

            mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.active and Path(path).exists():
            import mlflow

            mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_child_run(
        self,
        name: str,
        params: Mapping[str, Any],
        metrics: Mapping[str, float],
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        """One nested run under this run (e.g. an Optuna trial): params, metrics and tags, then closed."""
        if self.active:
            import mlflow

            with mlflow.start_run(run_name=name, nested=True, tags={k: str(v) for k, v in (tags or {}).items()}):
                mlflow.log_params({k: str(v)[:6000] for k, v in public_params(params).items()})
                if metrics:
                    mlflow.log_metrics({k: float(v) for k, v in metrics.items()})

    def log_dict(self, data: Any, artifact_file: str) -> None:
        if self.active:
            import mlflow

            mlflow.log_dict(data, artifact_file)


def _use_experiment(name: str) -> None:
    """Select (creating if needed) the experiment. With a local sqlite store, artifacts go to
    ``mlruns/`` beside the database file rather than beside whatever the working directory is."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if mlflow.get_experiment_by_name(name) is None and uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        with contextlib.suppress(mlflow.exceptions.MlflowException):  # another process created it first
            mlflow.create_experiment(name, artifact_location=(db.parent / "mlruns").resolve().as_uri())
    mlflow.set_experiment(name)


@contextlib.contextmanager
def stage_run(
    stage: str,
    speaker: str,
    params: Mapping[str, Any],
    data_version: str | None = None,
    run_name: str | None = None,
    system_metrics: bool = False,
) -> Iterator[StageRun]:
    """Open one MLflow run for one execution of ``stage`` (no-op when tracking is off).

    ``system_metrics`` samples CPU, memory, disk, network and GPU use into the run (``system/*``), for
    long stages such as training.
    """
    if not tracking_enabled():
        yield StageRun(active=False)
        return
    import mlflow

    mlflow.set_tracking_uri(default_tracking_uri())
    if not os.environ.get("MLFLOW_RUN_ID"):
        # Under `mlflow run` the run already exists (in the experiment the user chose): join it.
        _use_experiment(f"cosyml/{speaker}")
    tags = {
        "cosyml.stage": stage,
        "cosyml.speaker": speaker,
        "cosyml.params_hash": params_hash(params),
        "mlflow.source.git.commit": git_commit(),
    }
    if os.environ.get("DVC_STAGE"):
        tags["dvc.stage"] = os.environ["DVC_STAGE"]
    if data_version:
        tags["cosyml.data_version"] = data_version
    with mlflow.start_run(run_name=run_name or stage, tags=tags, log_system_metrics=system_metrics or None) as run:
        handle = StageRun(active=True, run_id=run.info.run_id)
        handle.log_params(params)
        yield handle
