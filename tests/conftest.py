"""Session-wide test settings: no test writes into the repository's MLflow store."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_tracking(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    yield


@pytest.fixture(scope="session")
def kit_dir(tmp_path_factory):
    """A complete tiny model directory (official layout), built once per test session."""
    from cosyml.kit.build import build_kit

    return build_kit(tmp_path_factory.mktemp("kit") / "model").model_dir
