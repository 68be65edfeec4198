"""Value ranges of the evaluate / registry / tune parameters and of the scores in candidates.json
(issue 17.6: the registry accepted ``cer: -3``). Each bad value is one line naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cosyml.config import Params, check_evaluation_params, with_overrides
from cosyml.errors import ConfigError, InputError


@pytest.mark.parametrize(
    "override, needle",
    [
        ("registry.cer_weight=-3", "registry.cer_weight: -3.0 is out of range; it must be >= 0"),
        ("registry.max_missing_ratio=2", "registry.max_missing_ratio: 2.0 is out of range"),
        ("registry.max_cer_regression=nan", "registry.max_cer_regression: nan is not a finite number"),
        ("registry.previous_alias=champion", "registry.previous_alias: 'champion' is also registry.alias"),
        ("registry.alias=' '", "registry.alias: empty"),
        ("evaluate.ci_level=1.5", "evaluate.ci_level: 1.5 is out of range"),
        ("evaluate.ci_level=1", "evaluate.ci_level: 1.0 is out of range; it must be > 0 and < 1"),
        ("evaluate.bootstrap_resamples=0", "evaluate.bootstrap_resamples: 0 is out of range; it must be >= 1"),
        ("evaluate.batch_size=0", "evaluate.batch_size: 0 is out of range"),
        ("evaluate.top_p=0", "evaluate.top_p: 0.0 is out of range; it must be > 0 and <= 1"),
        ("evaluate.top_k=0", "evaluate.top_k: 0 is out of range"),
        ("evaluate.max_token_text_ratio=1", "evaluate.max_token_text_ratio: 1.0 is out of range"),
        ("evaluate.seed=-1", "evaluate.seed: -1 is out of range"),
        ("evaluate.device=gpu", "evaluate.device: 'gpu' is not auto, cpu, cuda"),
        ("tune.n_trials=0", "tune.n_trials: 0 is out of range"),
        ("tune.seed=99999999999", "tune.seed: 99999999999 is out of range"),
        ("tune.direction=up", "tune.direction: 'up' is not maximize or minimize"),
    ],
)
def test_out_of_range_parameters_are_one_line(override: str, needle: str) -> None:
    # refused when the params load (every command), whatever reads them afterwards
    with pytest.raises(ConfigError) as info:
        check_evaluation_params(with_overrides(Params(), [override]))
    assert needle in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_the_defaults_and_the_shipped_params_yaml_pass() -> None:
    from cosyml.config import load_params

    check_evaluation_params(Params())
    check_evaluation_params(load_params(Path(__file__).resolve().parents[1] / "params.yaml"))


def test_the_register_command_refuses_a_negative_weight(tmp_path: Path, capsys) -> None:
    from cosyml.cli import main

    assert main(["register", "--set", "registry.cer_weight=-3", "--candidates", str(tmp_path / "none.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "registry.cer_weight" in err, err


def _summary(**changes) -> dict:
    summary = {"cer": 0.1, "cer_ci": [0.05, 0.2], "ss": 0.6, "ss_ci": [0.5, 0.7], "n": 10, "missing": 1, "over_50": 0.1}
    return {**summary, **changes}


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"cer": -3}, "summary.cer: -3.0 is not an error rate"),
        ({"cer_ci": [-0.1, 0.2]}, "summary.cer_ci: -0.1 is not an interval of error rates"),
        ({"ss": 1.5}, "summary.ss: 1.5 is not a cosine similarity"),
        ({"ss_ci": [0.5, 1.2]}, "summary.ss_ci: 1.2 is not an interval of cosine similarities"),
        ({"n": -1}, "summary.n: -1 is not a count"),
        ({"missing": 11}, "summary.missing: 11 is not a count between 0 and n (10)"),
        ({"over_50": 2}, "summary.over_50: 2.0 is not a share"),
        ({"n": 2.5}, "summary.n: 2.5 is not a whole number"),
    ],
)
def test_impossible_scores_in_candidates_json_are_one_line(tmp_path: Path, changes: dict, needle: str) -> None:
    from cosyml.registry import read_candidates

    path = tmp_path / "candidates.json"
    item = {"name": "a", "llm": "base", "flow": "base", "summary": _summary(**changes), "base": True}
    path.write_text(json.dumps({"speaker": "x", "model_dir": "m", "candidates": [item]}), encoding="utf-8")
    with pytest.raises(InputError) as info:
        read_candidates(path)
    assert needle in str(info.value) and "\n" not in str(info.value), str(info.value)
    item["summary"] = _summary()
    path.write_text(json.dumps({"speaker": "x", "model_dir": "m", "candidates": [item]}), encoding="utf-8")
    assert read_candidates(path).candidates[0].summary.cer == 0.1
