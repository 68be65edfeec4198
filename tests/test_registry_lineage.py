"""Lineage from a registered part back to the run that wrote its weights (issue 12), on a real sqlite
MLflow store holding runs tagged the way `cosyml train` and `cosyml average` tag theirs."""

from __future__ import annotations

from pathlib import Path

import pytest

SPEAKER = "lineage"


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    mlc = MlflowClient(tracking_uri=uri)
    exp = mlc.create_experiment(f"cosyml/{SPEAKER}", artifact_location=(tmp_path / "mlruns").as_uri())
    clock = iter(range(1_700_000_000_000, 1_800_000_000_000, 1000))  # ms: distinct, increasing start times

    def run(stage: str, params: dict[str, str], tags: dict[str, str] | None = None) -> str:
        run_id = mlc.create_run(exp, start_time=next(clock), tags={"cosyml.stage": stage, **(tags or {})}).info.run_id
        for key, value in params.items():
            mlc.log_param(run_id, key, value)
        mlc.set_terminated(run_id)
        return run_id

    return mlc, run


def test_the_run_that_wrote_the_weights_is_found_and_no_other(store) -> None:
    from cosyml.registry.lineage import producer_run

    mlc, run = store
    names = {"cosyml.averaged_from": "epoch_1_whole.pt,epoch_2_whole.pt", "cosyml.part": "llm"}
    trained = run("train_llm", {"output": "exp/llm", "part": "llm"}, names)
    run("train_llm", {"output": "exp/other_llm", "part": "llm"})  # did not average: wrote no llm.pt
    averaged = run(
        "average_llm",
        {"out": "exp/avg/llm.pt", "checkpoints": "exp/llm/checkpoints"},
        {"cosyml.averaged_from": "epoch_2_whole.pt"},
    )
    assert producer_run(mlc, SPEAKER, "llm", "exp/llm/llm.pt") == trained
    assert producer_run(mlc, SPEAKER, "llm", str(Path("exp/llm/llm.pt").resolve())) == trained
    assert producer_run(mlc, SPEAKER, "llm", "exp/avg/llm.pt") == averaged
    # an unrelated file beside the checkpoint names, or beside a produced file, is nobody's output
    assert producer_run(mlc, SPEAKER, "llm", "my_llm.pt") is None
    assert producer_run(mlc, SPEAKER, "llm", "exp/llm/my_llm.pt") is None
    assert producer_run(mlc, SPEAKER, "llm", "exp/other_llm/llm.pt") is None
    assert producer_run(mlc, SPEAKER, "flow", "exp/llm/llm.pt") is None  # another part's stage
    assert producer_run(mlc, SPEAKER, "llm", "base") is None


def test_the_newest_writer_of_a_file_wins(store) -> None:
    from cosyml.registry.lineage import producer_run

    mlc, run = store
    run("average_flow", {"out": "exp/flow/flow.pt"})
    newer = run("average_flow", {"out": "exp/flow/flow.pt"})
    assert producer_run(mlc, SPEAKER, "flow", "exp/flow/flow.pt") == newer


def test_promote_list_shows_the_champion_and_previous_aliases(store, capsys) -> None:
    """`cosyml promote --list` reads aliases from the registered model (issue 15.7)."""
    from cosyml.cli import main

    mlc, _ = store
    name = f"cosyml-{SPEAKER}"
    mlc.create_registered_model(name)
    for candidate in ("base", "llm_sft", "both_sft"):
        mlc.create_model_version(name, source=(Path.cwd() / "model").as_uri(), tags={"cosyml.candidate": candidate})
    mlc.set_registered_model_alias(name, "champion", "2")
    mlc.set_registered_model_alias(name, "previous", "1")
    assert main(["promote", "--list", "--speaker", SPEAKER]) == 0
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}
    assert lines["v1"][1:3] == ["previous", "base"]
    assert lines["v2"][1:3] == ["champion", "llm_sft"]
    assert lines["v3"][1:3] == ["-", "both_sft"]


def test_promote_list_of_an_unknown_model_is_one_line(store, capsys) -> None:
    from cosyml.cli import main

    assert main(["promote", "--list", "--speaker", "nobody"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no registered model 'cosyml-nobody'" in err, err


RACE = """
import sys, time
from cosyml.tracking import registry_client
start = float(sys.argv[1])
while time.time() < start:
    time.sleep(0.001)
registry_client().search_registered_models(max_results=1)
print("store ready")
"""


def test_two_processes_opening_a_fresh_sqlite_store_at_once_both_work(tmp_path: Path) -> None:
    """Issue 17.8: two `cosyml register` on a fresh sqlite store crashed one with a migration traceback."""
    import os
    import subprocess
    import sys
    import time

    for attempt in range(2):
        db = tmp_path / f"fresh{attempt}" / "mlflow.db"
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}", "COSYML_TRACKING": "on"}
        start = str(time.time() + 6.0)  # both processes past their imports, then released together
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", RACE, start], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [err[-600:] for _, err in outs]
        assert all("store ready" in out for out, _ in outs)
        assert (db.parent / ".mlflow.db.lock").is_file()


def test_weights_the_average_stage_uploaded_are_stored_once(store, tmp_path: Path) -> None:
    """The full-size rehearsal stored the 2 GB averaged LLM twice: in the average run and again in the
    registry's content-addressed weights run. The average run's upload is now the stored copy."""
    import torch
    from train_helpers import TinyLM

    from cosyml.cli import main
    from cosyml.pyfunc import file_sha256
    from cosyml.registry.register import WEIGHTS_EXPERIMENT, ensure_weights
    from cosyml.registry.staging import PartWeights, tensors_sha256
    from cosyml.synth.weights import read_weights
    from cosyml.train.checkpoint import CheckpointInfo, save_checkpoint

    mlc, _ = store
    checkpoints = tmp_path / "checkpoints"
    for i in (1, 2):
        model = TinyLM()
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float(i))
        save_checkpoint(
            checkpoints,
            CheckpointInfo(f"epoch_{i}", "epoch", i, i, i, 0, "h", cv_loss=float(i)),
            {"model": model.state_dict()},
        )
    out = tmp_path / "exp" / "llm" / "llm.pt"
    argv = ["average", "--checkpoints", str(checkpoints), "--out", str(out), "--set", f"prepare.speaker={SPEAKER}"]
    assert main([*argv, "--set", "train.log_checkpoints=best"]) == 0
    (average,) = [r for r in mlc.search_runs([mlc.get_experiment_by_name(f"cosyml/{SPEAKER}").experiment_id])]
    sha = tensors_sha256(read_weights(out, "llm"))
    assert average.data.tags["cosyml.weights_sha256"] == sha
    assert average.data.tags["cosyml.file_sha256"] == file_sha256(out)

    shared = ensure_weights(mlc, "llm", PartWeights(str(out.resolve()), sha, out), SPEAKER)
    assert (shared.run_id, shared.created) == (average.info.run_id, False)
    assert shared.uri == f"runs:/{average.info.run_id}/weights/llm.pt" and shared.file_sha256 == file_sha256(out)
    assert mlc.get_experiment_by_name(WEIGHTS_EXPERIMENT) is None  # nothing stored a second time

    # other tensors, or an average that uploaded nothing, are stored by the registry as before
    other = tmp_path / "other" / "llm.pt"
    torch.save({k: v + 1 for k, v in read_weights(out, "llm").items()}, other.parent.mkdir() or other)
    other_sha = tensors_sha256(read_weights(other, "llm"))
    assert ensure_weights(mlc, "llm", PartWeights(str(other), other_sha, other), SPEAKER).created
    assert main([*argv, "--set", "train.log_checkpoints=none"]) == 0  # same tensors, no upload, no tags
    assert ensure_weights(mlc, "llm", PartWeights(str(out.resolve()), sha, out), SPEAKER).run_id == average.info.run_id
