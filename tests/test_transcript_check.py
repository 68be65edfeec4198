"""prepare's transcript check: clips whose transcript is not what Whisper hears are set aside as
``transcript_mismatch`` (both texts in the review file), every good clip stays, the review loop brings a
corrected clip back, and without a Whisper checkpoint the check says it is off, once.

Uses the tiny Whisper trained on the toy corpus (the ``toy_whisper`` session fixture): it hears the
corpus' espeak clips, so planted wrong transcripts are found by measurement, not by construction.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from _data_fixtures import lab_corpus

from cosyml.cli import main
from cosyml.config import PrepareConfig
from cosyml.data.prepare import prepare
from cosyml.data.records import read_rejects

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "examples" / "toy_speaker"
#: Pairs of clips whose .lab files the test swaps: each becomes a clip with another clip's transcript.
SWAPS = [("vo_zh_003", "vo_zh_041"), ("vo_en_002", "vo_zh_017")]
PLANTED = {name for pair in SWAPS for name in pair}


def _toy_copy(folder: Path) -> Path:
    """The toy corpus' speech clips (not the vo_x_* junk) with the SWAPS' transcripts exchanged."""
    folder.mkdir(parents=True)
    for path in sorted(TOY.glob("vo_[ze][hn]_*")):
        shutil.copy(path, folder / path.name)
    for a, b in SWAPS:
        text_a = (folder / f"{a}.lab").read_text(encoding="utf-8")
        (folder / f"{a}.lab").write_text((folder / f"{b}.lab").read_text(encoding="utf-8"), encoding="utf-8")
        (folder / f"{b}.lab").write_text(text_a, encoding="utf-8")
    return folder


def _review_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory, toy_whisper: Path):
    raw = _toy_copy(tmp_path_factory.mktemp("check") / "raw")
    cfg = PrepareConfig(speaker="toy", whisper_model=str(toy_whisper), whisper_device="cpu", dev_ratio=0.1)
    out = raw.parent / "data"
    result = prepare([raw], out, cfg, progress=False, warn=lambda m: None)
    # the tests below rerun prepare into ``out``: keep the first run's review file and summary
    review = Path(shutil.copy(result.review_path, raw.parent / "first_review.tsv"))
    summary = json.loads(result.summary_path.read_text(encoding="utf-8"))
    return raw, out, cfg, result, review, summary


def test_planted_transcripts_are_set_aside_and_every_good_clip_stays(checked) -> None:
    raw, _, _, result, _, summary = checked
    assert result.transcript_check == "on"
    mismatched = {Path(r.source).stem for r in result.rejects if r.reason == "transcript_mismatch"}
    assert mismatched == PLANTED
    accepted = {Path(e.source).stem for e in result.entries}
    assert accepted == {p.stem for p in raw.glob("*.wav")} - PLANTED
    assert result.transcripts_checked == len(accepted) + len(PLANTED)
    assert result.transcribed == 0  # every clip had text: checked, not transcribed
    detail = next(r.detail for r in result.rejects if r.reason == "transcript_mismatch")
    assert "Whisper heard" in detail and "transcript_max_cer=0.5" in detail and "\n" not in detail
    assert summary["transcript_mismatches"] == len(PLANTED) and summary["transcript_check"] == "on"


def test_review_file_holds_both_texts(checked) -> None:
    raw, _, _, _, first_review, _ = checked
    rows = {Path(r["source"]).stem: r for r in _review_rows(first_review)}
    assert set(rows) == PLANTED
    for stem, row in rows.items():
        assert row["reason"] == "transcript_mismatch"
        assert row["transcript"] == (raw / f"{stem}.lab").read_text(encoding="utf-8").strip()  # the planted text
        assert row["text"] == (TOY / f"{stem}.lab").read_text(encoding="utf-8").strip()  # what is spoken


def test_review_brings_the_clips_back_without_transcribing_again(checked, tmp_path: Path) -> None:
    raw, out, cfg, _, first_review, _ = checked
    cache = out / "whisper_cache.jsonl"
    lines_before = cache.read_text(encoding="utf-8").count("\n")
    review = tmp_path / "review.tsv"
    shutil.copy(first_review, review)  # Whisper's text is the right one here: accept it as it is
    again = prepare([raw], out, cfg, review_file=review, progress=False, warn=lambda m: None)
    assert not [r for r in again.rejects if r.reason == "transcript_mismatch"]
    by_stem = {Path(e.source).stem: e for e in again.entries}
    assert set(by_stem) >= PLANTED
    for stem in PLANTED:
        assert by_stem[stem].text_source == "review"
        assert by_stem[stem].text == (TOY / f"{stem}.lab").read_text(encoding="utf-8").strip()
    assert cache.read_text(encoding="utf-8").count("\n") == lines_before  # every clip came from the cache


def test_a_dropped_review_entry_stays_out(checked, tmp_path: Path) -> None:
    raw, _, cfg, _, first_review, _ = checked
    rows = _review_rows(first_review)
    review = tmp_path / "review.tsv"
    with review.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "text": ""})  # emptied: drop these clips
    again = prepare([raw], tmp_path / "data", cfg, review_file=review, progress=False, warn=lambda m: None)
    assert {Path(r.source).stem for r in again.rejects if r.reason == "empty_text"} == PLANTED


def test_no_whisper_says_off_once_and_metrics_count_it(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COSYML_TRACKING", "off")
    lab_corpus(tmp_path / "raw", 4)
    args = ["prepare", "--input", "raw", "--output", "data", "--speaker", "spk", "--no-progress"]
    code = main([*args, "--metrics", "exp/prepare/metrics.json", "--set", "prepare.min_dev=0"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = [line for line in (captured.out + captured.err).splitlines() if "transcript check" in line]
    assert lines == [
        "transcript check off: no Whisper checkpoint (set prepare.whisper_model or pass --whisper to check transcripts)"
    ]
    metrics = json.loads((tmp_path / "exp" / "prepare" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["rejects_transcript_mismatch"] == 0 and metrics["transcripts_checked"] == 0
    assert metrics["train_utts"] + metrics["dev_utts"] == 4


def test_check_on_without_whisper_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COSYML_TRACKING", "off")
    lab_corpus(tmp_path / "raw", 2)
    code = main(
        ["prepare", "--input", "raw", "--output", "data", "--no-progress", "--set", "prepare.check_transcripts=on"]
    )
    err = capsys.readouterr().err
    assert code != 0 and "prepare.check_transcripts=on needs a Whisper checkpoint" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "data").exists()


def test_a_whisper_that_disagrees_with_most_clips_sets_nothing_aside(tmp_path: Path) -> None:
    """A random Whisper (the default kit's) hears nothing: the check must not empty the corpus on its word."""
    from cosyml.kit.whisper import write_tiny_whisper

    whisper = write_tiny_whisper(tmp_path / "random.pt")
    raw = tmp_path / "raw"
    lab_corpus(raw, 4)
    cfg = replace(
        PrepareConfig(speaker="spk", whisper_model=str(whisper), whisper_device="cpu", min_dev=0),
        whisper_max_tokens=4,
    )
    warnings: list[str] = []
    result = prepare([raw], tmp_path / "data", cfg, progress=False, warn=warnings.append)
    assert result.transcripts_checked == 4 and len(result.entries) == 4
    assert not read_rejects(result.rejects_path)
    assert any("Whisper disagrees with 4 of 4 transcripts" in w for w in warnings)


def test_check_state_follows_the_whisper_settings() -> None:
    from cosyml.data.prepare import transcript_check_state

    with_whisper = PrepareConfig(whisper_model="w.pt")
    assert transcript_check_state(with_whisper) == "on"
    assert transcript_check_state(PrepareConfig()).startswith("off: no Whisper checkpoint")
    assert transcript_check_state(replace(with_whisper, check_transcripts="off")).startswith("off")
    assert transcript_check_state(replace(with_whisper, transcribe=False)).startswith("off: Whisper is off")
    assert transcript_check_state(replace(with_whisper, transcribe=False, check_transcripts="on")) == "on"


def test_yaml_on_and_off_are_the_choices(tmp_path: Path) -> None:
    """YAML reads an unquoted on/off as a boolean; the parameter still gets the word."""
    from cosyml.config import load_params

    params = tmp_path / "params.yaml"
    params.write_text("prepare:\n  check_transcripts: off\n", encoding="utf-8")
    assert load_params(params).prepare.check_transcripts == "off"
    params.write_text("prepare:\n  check_transcripts: on\n", encoding="utf-8")
    assert load_params(params).prepare.check_transcripts == "on"


def test_cli_logs_the_mismatches_to_listen_to(toy_whisper: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    import mlflow

    monkeypatch.chdir(tmp_path)
    uri = (tmp_path / "mlruns").as_uri()  # a file store: faster to create than sqlite in a test
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    raw = tmp_path / "raw"
    raw.mkdir()
    for stem in ("vo_zh_003", "vo_zh_041", "vo_zh_010", "vo_zh_011", "vo_zh_012", "vo_en_007"):
        shutil.copy(TOY / f"{stem}.wav", raw / f"{stem}.wav")
        shutil.copy(TOY / f"{stem}.lab", raw / f"{stem}.lab")
    shutil.copy(TOY / "vo_zh_041.lab", raw / "vo_zh_003.lab")
    shutil.copy(TOY / "vo_zh_003.lab", raw / "vo_zh_041.lab")
    args = ["prepare", "--input", "raw", "--output", "data", "--speaker", "cli", "--whisper", str(toy_whisper)]
    code = main([*args, "--no-progress", "--metrics", "m.json", "--set", "prepare.min_dev=0"])
    out = capsys.readouterr().out
    assert code == 0
    assert "transcript check: 2 of 6 transcripts differ from what Whisper hears" in out
    assert json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))["rejects_transcript_mismatch"] == 2
    mlflow.set_tracking_uri(uri)
    row = mlflow.search_runs(experiment_names=["cosyml/cli"]).iloc[0]
    assert row["metrics.rejects_transcript_mismatch"] == 2 and row["metrics.transcripts_checked"] == 6
    logged = mlflow.MlflowClient().list_artifacts(row["run_id"], "transcript_mismatch")
    assert sorted(Path(a.path).name for a in logged) == ["vo_zh_003.wav", "vo_zh_041.wav"]
