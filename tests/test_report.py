"""Report writers on hand-built results (no models): escaping, charts, JSON shapes, failed-only runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

from cosyml.evaluation.candidates import parse_candidate, select_candidates, slugify
from cosyml.evaluation.report import bar_chart_svg, candidates_dict, metrics_dict, render_html, write_outputs
from cosyml.evaluation.suite import CandidateResult, MetricSummary, SuiteResult
from cosyml.evaluation.testset import ItemProblem
from cosyml.evaluation.testset import TestSubset as Subset


def _result(tmp_path: Path) -> SuiteResult:
    evil = parse_candidate('llm=base,flow=base,name=<script>alert("x")</script>')
    broken = CandidateResult(evil, tmp_path / evil.slug, error="weights do not load: <bad> & worse")
    subset = Subset(
        "zero_shot/en", tmp_path, "en", [], [ItemProblem("zero_shot/en", "u1", "missing_prompt_wav", "p.wav not found")]
    )
    return SuiteResult(
        eval_dir=tmp_path / "eval",
        speaker="toy",
        model_dir=tmp_path,
        tiny_kit=False,
        subsets=[subset],
        candidates=[broken],
        settings={"ci_level": 0.9},
    )


def test_names_and_errors_are_escaped_and_a_failed_only_run_still_reports(tmp_path: Path):
    result = _result(tmp_path)
    page = render_html(result)
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;bad&gt; &amp; worse" in page
    assert 'id="kit-notice"' not in page  # not a kit model directory
    assert "1 test items could not be scored (missing_prompt_wav: 1)" in page
    data = candidates_dict(result)
    assert data["candidates"] == [] and data["failed"][0]["error"].startswith("weights do not load")
    assert data["skipped"]["by_reason"] == {"missing_prompt_wav": 1}
    files = write_outputs(result)
    assert json.loads(files.metrics.read_text()) == {"skipped_items": 1, "failed_candidates": 1}


def test_bar_chart_scales_bars_draws_whiskers_and_survives_missing_values():
    svg = bar_chart_svg("CER", ["a", "b & c", "none"], [0.1, 0.2, None], [(0.05, 0.15), (0.1, 0.4), None], unit="%")
    widths = [float(w) for w in re.findall(r'<rect [^>]*width="([\d.]+)"', svg)]
    assert len(widths) == 2 and abs(widths[1] / widths[0] - 2.0) < 1e-6  # proportional to the values
    assert svg.count("<line") == 1 + 2 * 3  # axis + (whisker + 2 caps) per bar with a CI
    assert "b &amp; c" in svg and "no score" in svg and "40.0%" in svg  # scale runs to the highest CI end
    assert svg.count('fill="#3d9a5b"') == 1  # the lower error is highlighted


def test_metrics_are_headline_numbers_per_slug(tmp_path: Path):
    c = parse_candidate("llm=exp/llm/llm.pt,flow=base")
    summary = MetricSummary(0.25, (0.2, 0.3), 0.7, (0.6, 0.8), 10, 1, 0.1)
    scored = CandidateResult(c, tmp_path, summary=summary, subsets={"sft": summary})
    result = SuiteResult(tmp_path, "toy", tmp_path, True, [], [scored], {})
    metrics = metrics_dict(result)  # what `dvc metrics show` prints: two columns per candidate (issue 15.12)
    assert metrics == {c.slug: {"cer": 0.25, "ss": 0.7}, "skipped_items": 0, "failed_candidates": 0}
    assert candidates_dict(result)["candidates"][0]["summary"]["cer_ci"] == [0.2, 0.3]


def test_candidate_aliases_grid_and_slugs(tmp_path: Path):
    (tmp_path / "llm" / "checkpoints").mkdir(parents=True)
    for epoch in (2, 10):
        (tmp_path / "llm" / "checkpoints" / f"epoch_{epoch}.pt").write_bytes(b"")
    grid = select_candidates([], [], ["base", "sft-avg", "epoch-3", "last"], ["base"], tmp_path)
    assert [c.llm for c in grid] == [
        "base",
        str(tmp_path / "llm" / "llm.pt"),
        str(tmp_path / "llm" / "checkpoints" / "epoch_3.pt"),
        str(tmp_path / "llm" / "checkpoints" / "epoch_10.pt"),
    ]
    assert grid[0].is_base and not grid[1].is_base and grid[1].name == "llm=sft-avg,flow=base"
    assert slugify("llm=sft-avg,flow=base") == "llm-sft-avg_flow-base"
    long = slugify("llm=" + "x" * 200)
    assert len(long) <= 60 and long != slugify("llm=" + "x" * 199)
    # ';' separates several candidates in one value (mlflow run -P candidates=...); same weights collapse
    both = select_candidates(["llm=base,flow=base;llm=base"], [], [], [], tmp_path)
    assert [c.name for c in both] == ["llm=base,flow=base"]


def test_data_checks_section_counts_every_reason_and_plays_flagged_clips(tmp_path: Path):
    from cosyml.evaluation.data_checks import read_data_checks

    prepared = tmp_path / "prepared"
    prepared.mkdir()
    clip = tmp_path / "raw" / "vo_x.wav"
    clip.parent.mkdir()
    clip.write_bytes(b"RIFF-not-really-audio")
    stray = tmp_path / "stray.wav"
    stray.write_bytes(b"RIFF-stray")
    rejects = [
        {"source": str(clip), "reason": "transcript_mismatch", "detail": "lab 'a' vs heard 'b'", "utt": "toy_1"},
        {"source": "gone.wav", "reason": "too_short", "detail": "0.3 s", "utt": None},
        {"source": "gone2.wav", "reason": "too_short", "detail": "0.2 s", "utt": None},
    ]
    (prepared / "rejects.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rejects))
    report = tmp_path / "speaker_check.json"
    report.write_text(
        json.dumps({"outliers": [{"utt": "toy_2", "similarity": 0.21, "split": "train", "wav": str(stray)}]})
    )
    checks = read_data_checks(prepared, report)
    assert checks is not None
    assert checks.counts == {"too_short": 2, "transcript_mismatch": 1, "speaker_outlier": 1}
    result = _result(tmp_path)
    files = write_outputs(result, data_checks=checks)
    page = files.report.read_text()
    assert "<h2>Data checks</h2>" in page and "lab &#x27;a&#x27; vs heard &#x27;b&#x27;" in page
    assert set(files.media) == {"data_checks/transcript_mismatch/toy_1.wav", "data_checks/speaker_outlier/toy_2.wav"}
    assert (result.eval_dir / "data_checks/speaker_outlier/toy_2.wav").read_bytes() == b"RIFF-stray"
    summary = json.loads(files.summary.read_text())["data_checks"]
    assert summary["counts"]["speaker_outlier"] == 1 and len(summary["clips"]) == 2
    assert read_data_checks(tmp_path / "nowhere", None) is None
    assert "No data-check files found" in render_html(result)


def test_the_data_checks_read_rejects_through_the_data_reader_and_skip_what_they_cannot_read(tmp_path):
    """One reader of rejects.jsonl (cosyml.data.records): a line torn by a kill, or written by another version
    with other fields, is skipped or read for what it holds, never fatal to the report."""
    import json

    from cosyml.data.records import read_rejects
    from cosyml.evaluation.data_checks import read_data_checks

    lines = [
        json.dumps({"source": "a.wav", "reason": "too_short", "detail": "0.2 s"}),
        json.dumps({"source": "b.wav", "reason": "transcript_mismatch", "detail": "CER 0.9", "utt": "b", "new": 1}),
        '{"source": "c.wav", "reas',  # torn
    ]
    (tmp_path / "rejects.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    rejects = read_rejects(tmp_path / "rejects.jsonl")
    assert [(r.source, r.reason, r.utt) for r in rejects] == [
        ("a.wav", "too_short", None),
        ("b.wav", "transcript_mismatch", "b"),
    ]
    checks = read_data_checks(tmp_path, None)
    assert checks is not None and checks.counts == {"too_short": 1, "transcript_mismatch": 1}
    assert [(c.reason, c.utt, c.detail) for c in checks.clips] == [("transcript_mismatch", "b", "CER 0.9")]
