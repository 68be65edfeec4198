"""The promotion policy as a pure function: eligibility against the base model, CI separation, ranking."""

from __future__ import annotations

import dataclasses

import pytest

from cosyml.config import Params, RegistryConfig, with_overrides
from cosyml.errors import ConfigError, InputError
from cosyml.registry import ScoredVersion, Scores, beats, decide


def _s(
    cer: float, cer_ci: tuple[float, float], ss: float, ss_ci: tuple[float, float], n: int = 50, missing: int = 0
) -> Scores:
    return Scores(cer, cer_ci, ss, ss_ci, n, missing, 0.0)


BASE = ScoredVersion("1", "base", _s(0.10, (0.08, 0.12), 0.60, (0.58, 0.62)), is_base=True)
GOOD = ScoredVersion("2", "llm_sft", _s(0.06, (0.05, 0.07), 0.70, (0.68, 0.72)))
REGRESSES = ScoredVersion("3", "both_sft", _s(0.15, (0.13, 0.17), 0.95, (0.93, 0.97)))
CONFIG = RegistryConfig()


def test_no_champion_promotes_the_best_eligible_and_skips_cer_regressions() -> None:
    decision = decide([BASE, GOOD, REGRESSES], None, CONFIG)
    assert decision.action == "promote" and decision.target == "2" and decision.champion is None
    verdicts = {v.version: v for v in decision.verdicts}
    assert not verdicts["3"].eligible and "regresses vs base" in verdicts["3"].reason
    assert verdicts["1"].eligible and verdicts["2"].composite == pytest.approx(0.70 - 0.06)


def test_a_looser_threshold_or_other_weights_change_the_winner() -> None:
    loose = dataclasses.replace(CONFIG, max_cer_regression=0.10)
    assert decide([BASE, GOOD, REGRESSES], None, loose).target == "3"
    cer_heavy = dataclasses.replace(CONFIG, max_cer_regression=0.10, cer_weight=10.0)
    assert decide([BASE, GOOD, REGRESSES], None, cer_heavy).target == "2"


def test_a_challenger_must_clear_the_confidence_intervals() -> None:
    close = ScoredVersion("4", "close", _s(0.055, (0.045, 0.065), 0.72, (0.69, 0.75)))
    decision = decide([BASE, GOOD, close], GOOD, CONFIG)
    assert decision.action == "keep" and decision.champion == "2" and "overlap" in decision.reason
    assert decide([BASE, GOOD, close], GOOD, dataclasses.replace(CONFIG, require_ci_separation=False)).target == "4"
    clear = ScoredVersion("5", "clear", _s(0.03, (0.02, 0.04), 0.71, (0.69, 0.73)))
    decision = decide([BASE, GOOD, close, clear], GOOD, CONFIG)
    assert decision.action == "promote" and decision.target == "5" and "CER" in decision.reason


def test_significantly_worse_on_one_metric_never_wins() -> None:
    champion = _s(0.05, (0.04, 0.06), 0.70, (0.69, 0.71))
    trade = _s(0.09, (0.08, 0.10), 0.90, (0.89, 0.91))  # much better SS, significantly worse CER
    ok, why = beats(trade, champion, CONFIG)
    assert not ok and "significantly worse on CER" in why


def test_the_champion_that_is_still_best_stays_and_missing_outputs_disqualify() -> None:
    assert decide([BASE, GOOD], GOOD, CONFIG).action == "keep"
    lossy = ScoredVersion("6", "lossy", _s(0.01, (0.0, 0.02), 0.9, (0.89, 0.91), n=50, missing=10))
    decision = decide([BASE, GOOD, lossy], GOOD, CONFIG)
    assert decision.action == "keep" and "missing" in next(v.reason for v in decision.verdicts if v.version == "6")


def test_no_base_model_among_the_candidates_is_one_line() -> None:
    with pytest.raises(InputError, match="no evaluated base model"):
        decide([GOOD], None, CONFIG)


def test_registry_section_is_typed_in_params() -> None:
    params = with_overrides(Params(), ["registry.max_cer_regression=0.05", "registry.cer_weight=2"])
    assert params.registry.max_cer_regression == 0.05 and params.registry.cer_weight == 2.0
    with pytest.raises(ConfigError, match=r"registry\.nope"):
        with_overrides(Params(), ["registry.nope=1"])


def test_a_candidate_that_scored_nothing_reads_as_unscored(tmp_path) -> None:
    import json

    from cosyml.registry import read_candidates

    path = tmp_path / "candidates.json"
    item = {"name": "a", "llm": "base", "flow": "base", "summary": None, "subsets": {"x": {"cer": None}}, "base": True}
    path.write_text(json.dumps({"speaker": "s", "model_dir": "m", "candidates": [item], "failed": [], "skipped": {}}))
    (cand,) = read_candidates(path).candidates
    assert cand.summary is None and cand.subsets == {} and cand.base


def test_candidates_json_reads_back_into_the_one_candidate_type(tmp_path) -> None:
    """The registry reads each entry into evaluation's Candidate (issue 12: one Candidate type), its scores
    beside it; a ``base`` flag that contradicts the weights is one line naming the key."""
    import json

    from cosyml.errors import InputError
    from cosyml.evaluation.candidates import Candidate
    from cosyml.registry import read_candidates

    path = tmp_path / "candidates.json"
    items = [
        {"name": "b", "llm": "base", "flow": "base", "summary": None, "base": True},
        {"name": "ft", "llm": "exp/llm/llm.pt", "flow": "base", "summary": None, "base": False, "runs": {"llm": "r1"}},
    ]
    path.write_text(json.dumps({"speaker": "s", "model_dir": "m", "candidates": items}))
    base, tuned = read_candidates(path).candidates
    assert base.candidate == Candidate(name="b", llm="base", flow="base") and base.base and base.name == "b"
    assert tuned.candidate == Candidate(name="ft", llm="exp/llm/llm.pt", flow="base") and not tuned.base
    assert type(tuned.candidate) is Candidate and tuned.runs == {"llm": "r1"}
    items[1]["base"] = True
    path.write_text(json.dumps({"speaker": "s", "model_dir": "m", "candidates": items}))
    with pytest.raises(InputError, match=r"candidates\[1\]\.base: True but llm='exp/llm/llm.pt'"):
        read_candidates(path)


def test_the_policy_imports_without_mlflow_or_torch() -> None:
    """The schema, the policy and the package itself load no MLflow and no torch (issue 12: they cost
    seconds); the MLflow side comes in on first use of one of its names."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import cosyml.registry.policy, cosyml.registry.candidates, cosyml.registry.names\n"
        "from cosyml.registry import composite, decide, read_candidates, speaker_model_name\n"
        "heavy = sorted(m for m in ('mlflow', 'torch', 'pandas') if m in sys.modules)\n"
        "print('heavy:', ','.join(heavy))\n"
        "from cosyml.registry import promote\n"
        "print('lazy:', promote.__module__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["heavy: ", "lazy: cosyml.registry.promotion"], out


def test_the_registry_modules_never_import_mlflow() -> None:
    """Every MLflow call of the registry goes through cosyml.tracking (or the pyfunc flavor)."""
    import ast
    from pathlib import Path

    import cosyml.registry

    found = []
    for path in sorted(Path(cosyml.registry.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            found += [f"{path.name}:{node.lineno} {n}" for n in names if n == "mlflow" or n.startswith("mlflow.")]
    assert found == []
