"""``cosyml tune`` on the tiny kit: real synthesis, real Whisper code, real CAM++, a real sqlite Optuna
study and a real MLflow store. Three trials, then a rerun that grows the same study to five; the
sampling file the registry reads; failed and pruned trials; bad input as one line with exit status 2.

Random weights: the objective values prove plumbing only. One subset, one utterance, 10 speech tokens
and 4 Whisper tokens keep each trial to a few seconds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from _servers import postgres_server

from cosyml.config import EvaluateConfig, Params, PrepareConfig, RegistryConfig, TuneConfig
from cosyml.errors import ConfigError
from cosyml.tune import (
    ParamRange,
    StudySettings,
    TrialFailed,
    TrialPruned,
    TrialScore,
    mask_storage,
    parse_space,
    run_study,
    write_sampling,
)

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "examples" / "toy_speaker"
SPACE = {"top_p": [0.5, 0.95], "top_k": [5, 30], "win_size": [5, 15], "tau_r": [0.05, 0.3]}


@pytest.fixture(scope="module")
def workdir(kit_dir: Path, tmp_path_factory) -> Path:
    """A folder with params.yaml (tiny settings) and a one-item zero-shot test set."""
    from cosyml.evaluation.testset import SubsetLine, write_subset

    root = tmp_path_factory.mktemp("tune")
    subset = root / "sets" / "zero_shot" / "en"
    (subset / "waveform").mkdir(parents=True)
    shutil.copyfile(TOY / "vo_en_000.wav", subset / "waveform" / "p.wav")
    prompt_text = (TOY / "vo_en_000.lab").read_text(encoding="utf-8").strip()
    write_subset(
        subset,
        [
            SubsetLine("ok_1", "Good morning to you.", prompt_text, "zero_shot//en/waveform/p.wav"),
            SubsetLine("ok_2", "See you tomorrow.", prompt_text, "zero_shot//en/waveform/p.wav"),
        ],
    )
    params = Params(
        model_dir=str(kit_dir),
        prepare=PrepareConfig(speaker="toy"),
        evaluate=EvaluateConfig(
            test_sets=str(root / "sets"),
            whisper_model=str(kit_dir / "whisper.pt"),
            device="cpu",
            batch_size=4,
            max_tokens=4,
            bootstrap_resamples=50,
            synth_max_tokens=10,
            sft_data="",
            speaker_file="",
            exp_dir=str(root / "exp"),
        ),
        registry=RegistryConfig(ss_weight=1.0, cer_weight=0.5),
        tune=TuneConfig(
            space=SPACE, n_trials=3, seed=7, subsets=["zero_shot/en"], max_utts=1, out_dir=str(root / "out")
        ),
    )
    _write_params(root / "params.yaml", params)
    return root


def _write_params(path: Path, params: Params) -> Path:
    path.write_text(yaml.safe_dump(dataclasses.asdict(params), allow_unicode=True), encoding="utf-8")
    return path


def _study(root: Path) -> optuna.Study:
    return optuna.load_study(study_name="cosyml-toy-sampling", storage=f"sqlite:///{root / 'out' / 'optuna.db'}")


def _trial_runs(parent_id: str):
    import mlflow

    return mlflow.search_runs(experiment_names=["cosyml/toy"], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


def _tune_runs():
    import mlflow

    return mlflow.search_runs(
        experiment_names=["cosyml/toy"],
        filter_string="tags.`cosyml.stage` = 'tune'",
        order_by=["attributes.start_time DESC"],
    )


@pytest.fixture(scope="module")
def three(workdir: Path):
    """The command run once with three trials: its exit code."""
    from cosyml.cli import main

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COSYML_TRACKING", "on")
        return main(["tune", "--params", str(workdir / "params.yaml")])


def test_three_trials_in_a_real_sqlite_study_with_nested_mlflow_runs(three, workdir: Path, capsys):
    assert three == 0
    study = _study(workdir)
    trials = study.get_trials()
    assert len(trials) == 3 and all(t.state.name == "COMPLETE" for t in trials)
    # trial 0 measures the model yaml's own sampling (the kit writes upstream's values)
    assert trials[0].params == {"top_p": 0.8, "top_k": 25, "win_size": 10, "tau_r": 0.1}
    assert trials[0].user_attrs["baseline"] is True
    for t in trials:
        assert set(t.params) == set(SPACE)
        assert SPACE["top_p"][0] <= t.params["top_p"] <= SPACE["top_p"][1]
        assert isinstance(t.params["top_k"], int)
        # objective = the registry composite with registry.ss_weight / cer_weight from params
        assert t.value == pytest.approx(1.0 * t.user_attrs["ss"] - 0.5 * t.user_attrs["cer"])
        assert (workdir / "out" / "trials" / f"trial-{t.number:04d}" / "llm-base_flow-base" / "synth.json").is_file()
    # different sampling really changed the audio (the caches did not mix)
    wavs = [
        (
            workdir
            / "out"
            / "trials"
            / f"trial-{n:04d}"
            / "llm-base_flow-base"
            / "zero_shot"
            / "en"
            / "wavs"
            / "ok_1.wav"
        ).read_bytes()
        for n in range(3)
    ]
    assert len(set(wavs)) > 1

    parent = _tune_runs().iloc[0]
    assert parent["tags.cosyml.study"] == "cosyml-toy-sampling"
    assert parent["metrics.trials_finished"] == 3 and parent["metrics.trials_run"] == 3
    assert parent["metrics.best_value"] == pytest.approx(study.best_value)
    assert float(parent["params.best.top_p"]) == pytest.approx(study.best_params["top_p"])
    children = _trial_runs(parent["run_id"])
    assert len(children) == 3
    assert set(children["params.top_p"].astype(float)) == {t.params["top_p"] for t in trials}
    assert {"metrics.cer", "metrics.ss", "metrics.objective"} <= set(children.columns)
    import mlflow

    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent["run_id"])}
    assert {"sampling.json", "trials.json"} <= artifacts


def test_sampling_json_holds_the_best_params_in_the_registry_format(three, workdir: Path):
    from cosyml.registry import read_sampling

    study = _study(workdir)
    path = workdir / "out" / "sampling.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["trial"] == study.best_trial.number and data["objective"] == pytest.approx(study.best_value)
    assert read_sampling(str(path)) == study.best_params
    params = Params(registry=RegistryConfig(sampling=str(path)))
    assert read_sampling(params.registry.sampling)["top_k"] == study.best_params["top_k"]


def test_rerun_with_more_trials_resumes_the_same_study(three, workdir: Path, capsys):
    from cosyml.cli import main

    before = {t.number: (t.params, t.value) for t in _study(workdir).get_trials()}
    capsys.readouterr()
    assert main(["tune", "--params", str(workdir / "params.yaml"), "--n-trials", "5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("best trial ") and "of 5: objective=" in out
    after = _study(workdir).get_trials()
    assert len(after) == 5
    assert {t.number: (t.params, t.value) for t in after if t.number in before} == before  # old trials kept
    assert len(_trial_runs(_tune_runs().iloc[0]["run_id"])) == 2  # only the new ones ran
    # a study already full runs nothing
    assert main(["tune", "--params", str(workdir / "params.yaml"), "--n-trials", "4"]) == 0
    assert len(_study(workdir).get_trials()) == 5


def test_a_candidate_whose_weights_do_not_load_fails_every_trial_with_its_reason(three, workdir: Path, capsys):
    from cosyml.cli import main

    broken = workdir / "broken_llm.pt"
    broken.write_bytes(b"not a checkpoint")
    code = main(
        [
            "tune",
            "--params",
            str(workdir / "params.yaml"),
            "--candidate",
            f"llm={broken},flow=base",
            "--study-name",
            "broken",
            "--n-trials",
            "2",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("cosyml: error: study 'broken': no trial completed (2 recorded")
    study = optuna.load_study(study_name="broken", storage=f"sqlite:///{workdir / 'out' / 'optuna.db'}")
    assert [t.state.name for t in study.get_trials()] == ["FAIL", "FAIL"]
    assert "broken_llm.pt" in study.get_trials()[0].user_attrs["fail_reason"]


@pytest.mark.parametrize("case", ["unknown_param", "empty_range", "missing_weights", "bad_direction"])
def test_bad_input_is_one_line_with_exit_status_2(case: str, workdir: Path, tmp_path: Path, capsys):
    from cosyml.cli import main
    from cosyml.config import load_params

    params = load_params(workdir / "params.yaml")
    args: list[str] = []
    if case == "unknown_param":
        params = dataclasses.replace(
            params, tune=dataclasses.replace(params.tune, space={**SPACE, "temperature": [0.5, 1]})
        )
        expect = "tune.space.temperature: unknown sampling parameter"
    elif case == "empty_range":
        params = dataclasses.replace(params, tune=dataclasses.replace(params.tune, space={"top_p": [0.9, 0.9]}))
        expect = "tune.space.top_p: empty range"
    elif case == "missing_weights":
        args = ["--candidate", "llm=sft-avg,flow=base"]
        expect = "llm weights not found"
    else:
        args = ["--set", "tune.direction=sideways"]
        expect = "tune.direction"
    params = dataclasses.replace(params, tune=dataclasses.replace(params.tune, out_dir=str(tmp_path / "out")))
    code = main(["tune", "--params", str(_write_params(tmp_path / "params.yaml", params)), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("cosyml: error: ") and expect in err, err
    assert not (tmp_path / "out" / "optuna.db").exists()  # stopped before any study was opened


def test_the_objective_loads_whisper_and_the_engine_once_for_all_trials(workdir: Path, tmp_path: Path):
    from cosyml.commands.tune import tune_suite_config
    from cosyml.config import load_params
    from cosyml.evaluation.candidates import parse_candidate
    from cosyml.tune import suite_objective

    said: list[str] = []
    params = load_params(workdir / "params.yaml")
    suite = tune_suite_config(params)
    objective = suite_objective(
        suite, parse_candidate("llm=base,flow=base"), tmp_path, params.registry, log=said.append
    )
    first = objective({"top_p": 0.8, "top_k": 25, "win_size": 10, "tau_r": 0.1}, 0)
    second = objective({"top_p": 0.6, "top_k": 9, "win_size": 6, "tau_r": 0.2}, 1)
    loads = [m for m in said if m.startswith("loading")]
    assert len(loads) == 2 and any("Whisper" in m for m in loads) and any("for synthesis" in m for m in loads)
    assert len([m for m in said if m.startswith("candidate")]) == 2
    assert first.n == second.n == 1
    for n in (0, 1):  # both trials synthesised and scored their own audio
        assert (tmp_path / "trials" / f"trial-{n:04d}" / "llm-base_flow-base" / "asr.json").is_file()


# ------------------------------------------------------------------------------------------ the component


def test_parse_space_checks_names_bounds_and_kinds():
    ranges = parse_space({"top_p": [0.5, 0.9], "top_k": [5, 50]})
    assert ranges == [ParamRange("top_p", 0.5, 0.9, False), ParamRange("top_k", 5, 50, True)]
    for space, message in [
        ({"top_p": [0.5, 1.5]}, "outside the valid range"),
        ({"top_k": [2.5, 9]}, "whole numbers"),
        ({"win_size": [9]}, "expected [low, high]"),
        ({"tau_r": [0.3, 0.1]}, "empty range"),
        ({}, "expected a mapping"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
            parse_space(space)


def test_a_trial_gets_a_typed_sampling_over_the_suite_s_own():
    """Tune hands the suite a SamplingParams (issue 12), not params overrides: the searched values over the
    base, ints as ints; a name that is not a sampling parameter is one line."""
    from cosyml.models.generation import SamplingParams
    from cosyml.tune import trial_sampling

    base = SamplingParams(top_p=0.8, top_k=25, win_size=10, tau_r=0.1)
    got = trial_sampling(base, {"top_p": 0.6, "top_k": 9.0})
    assert got == SamplingParams(top_p=0.6, top_k=9, win_size=10, tau_r=0.1) and type(got.top_k) is int
    assert trial_sampling(base, {}) == base
    with pytest.raises(ConfigError, match="temperature: not a sampling parameter"):
        trial_sampling(base, {"temperature": 1.0})


def test_the_tune_suite_config_holds_the_small_set_and_a_full_sampling(workdir: Path):
    from cosyml.commands.tune import tune_suite_config
    from cosyml.config import load_params
    from cosyml.models.generation import SamplingParams
    from cosyml.tune import model_sampling_params

    params = load_params(workdir / "params.yaml")
    params = dataclasses.replace(params, evaluate=dataclasses.replace(params.evaluate, top_k=7, max_utts=0))
    suite = tune_suite_config(params)
    assert (suite.evaluate.max_utts, suite.evaluate.subsets) == (1, ["zero_shot/en"])
    assert suite.whisper_model == params.evaluate.whisper_model and suite.speaker == "toy"
    yaml_sampling = model_sampling_params(params.model_dir)
    assert isinstance(suite.sampling, SamplingParams)
    assert suite.sampling == dataclasses.replace(yaml_sampling, top_k=7)  # evaluate.top_k over the yaml's


def test_failed_and_pruned_trials_are_recorded_and_the_study_goes_on(tmp_path: Path):
    seen: list[str] = []

    def objective(sampling: dict, number: int) -> TrialScore:
        if number == 1:
            raise TrialFailed("synthesis failed for all 1 utterances; first: boom")
        if number == 2:
            raise TrialPruned("1/1 outputs missing")
        return TrialScore(objective=-abs(sampling["top_p"] - 0.7), cer=0.1, ss=0.5, n=1, missing=0)

    settings = StudySettings(f"sqlite:///{tmp_path / 's.db'}", "unit", n_trials=5, seed=3)
    result = run_study(objective, parse_space({"top_p": [0.5, 0.9]}), settings, on_trial=lambda r: seen.append(r.state))
    assert seen == ["COMPLETE", "FAIL", "PRUNED", "COMPLETE", "COMPLETE"]
    assert [t.reason for t in result.trials[1:3]] == [
        "synthesis failed for all 1 utterances; first: boom",
        "1/1 outputs missing",
    ]
    assert result.finished == 5 and result.best is not None and result.best.state == "COMPLETE"
    assert result.best.value == max(t.value for t in result.trials if t.value is not None)
    written = json.loads(write_sampling(result, tmp_path / "sampling.json").read_text())
    assert written["sampling"] == result.best.params
    # the same seed over a fresh study suggests the same parameters (reproducible search)
    again = run_study(
        objective,
        parse_space({"top_p": [0.5, 0.9]}),
        dataclasses.replace(settings, storage=f"sqlite:///{tmp_path / 't.db'}"),
    )
    assert [t.params for t in again.trials] == [t.params for t in result.trials]


def test_a_missing_postgresql_driver_names_the_extra(monkeypatch):
    from cosyml.tune import open_study

    monkeypatch.setitem(sys.modules, "psycopg", None)  # as when the postgres extra is not installed
    with pytest.raises(
        ConfigError,
        match=r"^tune\.storage: cannot open postgresql://bob:\*\*\*@127\.0\.0\.1:1/x: "
        r".*; install the driver: pip install -e \.\[postgres\]$",
    ):
        open_study(StudySettings("postgresql://bob:s3cret@127.0.0.1:1/x", "s", n_trials=1))


def test_an_unreachable_postgresql_server_is_one_line():
    from cosyml.tune import open_study

    pytest.importorskip("psycopg", reason="psycopg not installed: pip install -e .[postgres]")
    with pytest.raises(
        ConfigError,
        match=r"^tune\.storage: cannot open postgresql://bob:\*\*\*@127\.0\.0\.1:1/x: "
        r".*Connection refused",
    ) as info:
        open_study(StudySettings("postgresql://bob:s3cret@127.0.0.1:1/x", "s", n_trials=1))
    assert "s3cret" not in str(info.value)


def test_storage_passwords_are_masked():
    assert mask_storage("postgresql://bob:s3cret@db:5432/optuna") == "postgresql://bob:***@db:5432/optuna"
    assert mask_storage("sqlite:////tmp/optuna.db") == "sqlite:////tmp/optuna.db"


# ------------------------------------------------------------------------------------------ PostgreSQL


@pytest.fixture(scope="module")
def postgres():
    with postgres_server() as url:
        yield url


WORKER = """
import sys, time
from cosyml.tune import StudySettings, TrialScore, parse_space, run_study
def objective(sampling, number):
    time.sleep(0.3)  # long enough for the two workers' trials to interleave
    return TrialScore(objective=-abs(sampling["top_p"] - 0.7), cer=0.1, ss=0.5, n=1, missing=0)
settings = StudySettings(sys.argv[1], "shared", n_trials=8, seed=int(sys.argv[2]))
print(" ".join(map(str, run_study(objective, parse_space({"top_p": [0.5, 0.9]}), settings).ran)))
"""


def test_two_workers_fill_one_study_on_a_real_postgresql_server(postgres):
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, postgres, str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    outputs = [w.communicate(timeout=180) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    ran = [{int(n) for n in out.split()} for out, _ in outputs]
    assert ran[0] and ran[1] and not ran[0] & ran[1]  # both worked, never on the same trial
    trials = optuna.load_study(study_name="shared", storage=postgres).get_trials()
    assert ran[0] | ran[1] == {t.number for t in trials}
    # each worker stops once the study holds n_trials; the other may still finish the trial it is running
    assert 8 <= sum(t.state.name == "COMPLETE" for t in trials) <= 9


def test_cosyml_tune_workers_share_a_postgresql_study(postgres, workdir: Path, tmp_path: Path):
    env = {**os.environ, "COSYML_TRACKING": "off"}
    command = [
        sys.executable,
        "-m",
        "cosyml",
        "tune",
        "--params",
        str(workdir / "params.yaml"),
        "--storage",
        postgres,
        "--study-name",
        "toy-shared",
        "--n-trials",
        "3",
    ]
    workers = [
        subprocess.Popen(
            [*command, "--out", str(tmp_path / f"worker{i}"), "--seed", str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for i in (1, 2)
    ]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    trials = optuna.load_study(study_name="toy-shared", storage=postgres).get_trials()
    complete = {t.number: t for t in trials if t.state.name == "COMPLETE"}
    assert 3 <= len(complete) <= 4
    for i in (1, 2):  # each worker wrote the best trial it saw, which is a trial of the shared study
        written = json.loads((tmp_path / f"worker{i}" / "sampling.json").read_text())
        assert written["sampling"] == complete[written["trial"]].params
        assert "postgresql://cosyml@127.0.0.1" in written["storage"]


def test_a_resumed_study_proposes_new_points_and_says_it_resumed(tmp_path: Path):
    """Issue 15.6: a second call on the same study drew the first call's points again (trial 3 = trial 1)
    and announced "trial 0 of a new study"."""

    def objective(sampling: dict, number: int) -> TrialScore:
        return TrialScore(objective=-abs(sampling["top_p"] - 0.7), cer=0.1, ss=0.5, n=1, missing=0)

    space = parse_space({"top_p": [0.5, 0.9], "tau_r": [0.05, 0.5]})
    settings = StudySettings(f"sqlite:///{tmp_path / 's.db'}", "resume", n_trials=3, seed=5)
    said: list[str] = []
    baseline = {"top_p": 0.8, "tau_r": 0.1}
    run_study(objective, space, settings, baseline=baseline, log=said.append)
    assert said == ["new study resume: searching top_p, tau_r; trial 0 is the model yaml's values"]
    said.clear()
    result = run_study(objective, space, dataclasses.replace(settings, n_trials=6), baseline=baseline, log=said.append)
    assert said == ["resuming study resume: 3 trials in storage (3 finished), searching top_p, tau_r up to 6 finished"]
    points = [tuple(sorted(t.params.items())) for t in result.trials]
    assert len(points) == 6 and len(set(points)) == 6, points
    assert result.trials[0].params == baseline  # the baseline stays trial 0, and is not enqueued again


def test_sampling_json_names_no_password_and_no_absolute_project_path(tmp_path, monkeypatch):
    """Issue 17.10: the storage URL (password, absolute paths) was written as given."""
    from cosyml.tune import StudyResult, TrialRecord, write_sampling

    monkeypatch.chdir(tmp_path)
    best = TrialRecord(number=1, state="COMPLETE", params={"top_p": 0.8}, value=0.5, cer=0.1, ss=0.8)
    for storage, hidden in (
        ("postgresql://tuner:s3cret-pw@127.0.0.1:5432/optuna", "s3cret-pw"),
        (f"sqlite:///{tmp_path}/exp/tune/optuna.db", str(tmp_path)),
    ):
        result = StudyResult(study_name="s", storage=storage, direction="maximize", trials=[best], best=best)
        text = write_sampling(result, tmp_path / "exp" / "tune" / "sampling.json").read_text()
        assert hidden not in text, text
        assert json.loads(text)["sampling"] == {"top_p": 0.8}
