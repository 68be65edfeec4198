"""Session-wide test settings: no test writes into the repository's MLflow store."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_tracking(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    # artifacts a killed store did not take are listed here, not in the user's ~/.local/state
    os.environ.setdefault("COSYML_PENDING_DIR", str(root / "pending-uploads"))
    yield


@pytest.fixture(autouse=True)
def _no_experiment_leak():
    """``mlflow.set_experiment`` (run in-process by cosyml's stages) exports MLFLOW_EXPERIMENT_ID for child
    processes; a later test's subprocess with another store would inherit an id that does not exist there."""
    yield
    for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        os.environ.pop(name, None)


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread is 20x faster than two on a busy 2-core machine (and gives the same
    numbers from run to run). Modules that train use it for every test: ``pytestmark``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def kit_dir(tmp_path_factory):
    """A complete tiny model directory (official layout), built once per test session."""
    from cosyml.kit.build import build_kit

    return build_kit(tmp_path_factory.mktemp("kit") / "model").model_dir


@pytest.fixture(scope="session")
def toy_whisper():
    """The tiny Whisper trained on the toy corpus (:func:`cosyml.kit.whisper.trained_toy_whisper`): trained
    once per machine (a few CPU minutes) and cached in ``~/.cache/cosyml/toy-whisper`` by content hash."""
    from cosyml.kit.whisper import trained_toy_whisper

    return trained_toy_whisper()
