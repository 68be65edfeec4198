"""The prepare stage: reject reasons, trimming, slicing, split, invariants, outputs, CLI errors."""

from __future__ import annotations

import itertools
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from _data_fixtures import RATE, lab_corpus, silence, syllables, utterance, write

from cosyml.cli import main
from cosyml.config import PrepareConfig
from cosyml.data.clean import trim_silence
from cosyml.data.kaldi import read_kaldi_map
from cosyml.data.prepare import prepare
from cosyml.data.records import REJECT_REASONS, read_manifest, read_rejects
from cosyml.data.slicing import slice_at_pauses
from cosyml.data.split import assign_splits
from cosyml.errors import InputError

REPO = Path(__file__).resolve().parents[1]
CFG = PrepareConfig(speaker="spk", transcribe=False)


def run(tmp_path: Path, inputs: list[Path], cfg: PrepareConfig = CFG, name: str = "data", **kw):
    return prepare(inputs, tmp_path / name, cfg, progress=False, warn=lambda m: None, **kw)


def all_entries(out: Path):
    return [e for split in ("train", "dev") for e in read_manifest(out / split / "manifest.jsonl")]


# -- pure pieces ------------------------------------------------------------------------------------
def test_trim_never_cuts_a_long_enough_clip_below_min_keep() -> None:
    x = np.concatenate([silence(1.0), syllables(0.6)])  # 1.6 s, 1 s of it silence
    t = trim_silence(x, RATE, top_db=40, floor_dbfs=-60, pad_s=0.1, min_keep_s=1.5)
    assert (t.end - t.start) / RATE == pytest.approx(1.5, abs=1e-3)
    assert t.end == x.shape[0]  # the window grows into the silence, keeping all the speech
    y = np.concatenate([silence(2.0), syllables(2.0), silence(2.0)])
    t = trim_silence(y, RATE, top_db=40, floor_dbfs=-60, pad_s=0.1, min_keep_s=1.5)
    assert 2.0 <= (t.end - t.start) / RATE <= 2.3  # plain trimming when the speech is long enough
    short = np.concatenate([silence(0.5), syllables(0.5)])  # 1.0 s < min_keep: kept whole
    t = trim_silence(short, RATE, top_db=40, floor_dbfs=-60, pad_s=0.1, min_keep_s=1.5)
    assert (t.start, t.end) == (0, short.shape[0])


def test_slicing_cuts_at_pauses_within_bounds() -> None:
    parts = []
    for i in range(12):  # 12 "sentences" of 2.4-4.6 s separated by 0.8 s pauses: ~50 s
        parts += [syllables(2.4 + 0.2 * i, seed=i), silence(0.8, seed=i)]
    x = np.concatenate(parts)
    ranges = slice_at_pauses(x, RATE, min_s=3.0, max_s=15.0, top_db=40, floor_dbfs=-60)
    assert ranges[0][0] == 0 and ranges[-1][1] == x.shape[0]
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))  # no gaps or overlaps
    lengths = [(b - a) / RATE for a, b in ranges]
    assert all(3.0 <= s <= 15.0 for s in lengths), lengths
    assert len(ranges) >= 8  # mostly one sentence each
    for a, _ in ranges[1:]:  # every cut is inside a pause
        assert np.abs(x[a - 160 : a + 160]).max() < 1e-3
    # No pause at all: cut at the quietest frame, still within bounds.
    ranges = slice_at_pauses(syllables(40.0), RATE, min_s=3.0, max_s=15.0, top_db=40, floor_dbfs=-60)
    assert all(3.0 <= (b - a) / RATE <= 15.0 for a, b in ranges)


def test_split_is_deterministic_and_stable_when_adding_clips() -> None:
    utts = [f"spk_{i:04d}" for i in range(200)]
    a = assign_splits(utts, seed=7, dev_ratio=0.1)
    assert a == assign_splits(list(reversed(utts)), seed=7, dev_ratio=0.1)
    assert 8 <= sum(v == "dev" for v in a.values()) <= 35
    b = assign_splits([*utts, *(f"spk_new{i}" for i in range(50))], seed=7, dev_ratio=0.1)
    assert all(b[u] == a[u] for u in utts)
    assert assign_splits(utts, seed=8, dev_ratio=0.1) != a
    # Small corpora too: a clip's split is a function of its id alone (no top-up that others can move).
    small = assign_splits(["spk_a", "spk_b", "spk_c"], seed=7, dev_ratio=0.5)
    for extra in (["spk_d"], [f"spk_{i}" for i in range(40)]):
        grown = assign_splits(["spk_a", "spk_b", "spk_c", *extra], seed=7, dev_ratio=0.5)
        assert {u: grown[u] for u in small} == small


# -- the stage --------------------------------------------------------------------------------------
def test_every_reject_reason(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    lab_corpus(raw, 4)  # good clips
    write(raw / "placeholder.wav", utterance(1.0, seed=11), text="{NICKNAME}，你好")
    write(raw / "empty.wav", utterance(1.0, seed=12), text=" \n")
    write(raw / "notext.wav", utterance(1.0, seed=13))
    write(raw / "short.wav", utterance(0.2, 0.05, 0.05, seed=14), text="嗯")
    write(raw / "long.wav", utterance(31.0, seed=15), text="很长")
    (raw / "broken.wav").write_bytes(b"RIFF\x00\x00")
    write(raw / "zdup.wav", utterance(1.0, seed=0), text="重复")  # same audio as vo_000 (sorted first)
    write(raw / "silent.wav", silence(2.0), text="安静")
    write(raw / "quiet.wav", utterance(1.5, seed=16, level=0.004), text="小声")
    write(raw / "clipped.wav", np.clip(utterance(1.5, seed=17) * 20, -1, 1), text="太响")
    (raw / "orphan.lab").write_text("没有音频", encoding="utf-8")
    result = run(tmp_path, [raw])
    reasons = {Path(r.source).stem: r.reason for r in result.rejects}
    assert reasons == {
        "placeholder": "placeholder_text",
        "empty": "empty_text",
        "notext": "no_text",
        "short": "too_short",
        "long": "too_long",
        "broken": "undecodable",
        "zdup": "duplicate_audio",
        "silent": "mostly_silence",
        "quiet": "too_quiet",
        "clipped": "clipped",
        "orphan": "no_audio",
    }
    # The text, kaldi and noise reasons have their kinds in tests/_bad_inputs.py (test_bad_inputs.py).
    covered_elsewhere = {
        "low_confidence",
        "bad_kaldi_line",
        "text_too_long",
        "bad_characters",
        "special_token",
        "no_words",
        "noise",
        "transcript_mismatch",  # tests/test_transcript_check.py (needs the trained toy Whisper)
    }
    assert set(reasons.values()) | covered_elsewhere == set(REJECT_REASONS)
    assert sum(result.counts.values()) == 4
    assert all(r.detail and "\n" not in r.detail for r in result.rejects)
    assert result.warnings and "transcription is off" in result.warnings[0]
    on_disk = read_rejects(result.rejects_path)
    assert on_disk == result.rejects


def test_outputs_kaldi_manifest_and_normalised_audio(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    lab_corpus(raw, 6)
    stereo = np.stack([utterance(1.2, seed=40), utterance(1.2, seed=40) * 0.5], axis=1)
    write(raw / "sub" / "stereo 48k.wav", stereo, rate=48000, text="  立体声\n 测试。 ")
    cfg = replace(CFG, instruct="You are a helpful assistant.<|endofprompt|>", dev_ratio=0.5, min_dev=2)
    result = run(tmp_path, [raw], cfg)
    out = result.output
    assert sum(result.counts.values()) == 7 and min(result.counts.values()) >= 1
    entries = all_entries(out)
    assert {e.utt for e in entries} == {e.utt for e in result.entries}
    stereo_entry = next(e for e in entries if "stereo" in e.source)
    assert stereo_entry.text == "立体声 测试。"
    assert stereo_entry.utt.startswith("spk_sub-stereo-48k-")  # renamed characters get a hash suffix
    for e in entries:
        assert e.spk == "spk" and e.utt.startswith("spk_") and e.utt.count(" ") == 0
        info = sf.info(str(out / e.wav))
        assert (info.samplerate, info.channels, info.subtype) == (24000, 1, "PCM_16")
        assert info.duration == pytest.approx(e.duration_s, abs=1e-3)
        assert e.text_source == "lab" and e.language == "zh"
        peak = np.abs(sf.read(str(out / e.wav))[0]).max()
        assert peak == pytest.approx(cfg.target_peak, abs=1e-3)
    for split in ("train", "dev"):
        scp, text = read_kaldi_map(out / split / "wav.scp"), read_kaldi_map(out / split / "text")
        utt2spk, spk2utt = read_kaldi_map(out / split / "utt2spk"), read_kaldi_map(out / split / "spk2utt")
        instruct = read_kaldi_map(out / split / "instruct")
        assert set(scp) == set(text) == set(utt2spk) == set(instruct)
        assert spk2utt == {"spk": " ".join(sorted(scp))}
        assert all((out / p).is_file() for p in scp.values())
        assert set(instruct.values()) == {cfg.instruct}
    summary = json.loads(result.summary_path.read_text())
    assert summary["counts"] == result.counts and summary["rejects"]["too_short"] == 0
    assert (REPO / "examples").exists()  # sanity: originals are never touched
    assert sf.info(str(raw / "sub" / "stereo 48k.wav")).channels == 2


def test_nothing_is_lost(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(REPO / "examples" / "toy_speaker", raw / "genshin")
    write(raw / "kaldi" / "a.wav", utterance(1.0, seed=50))
    (raw / "kaldi" / "wav.scp").write_text("a a.wav\nb missing.wav\n")
    (raw / "kaldi" / "text").write_text("a 一\nb 二\n", encoding="utf-8")
    write(raw / "libri" / "x.flac", utterance(1.0, seed=51), text="三", text_suffix=".normalized.txt", format="FLAC")
    result = run(tmp_path, [raw])
    accepted = {e.source for e in all_entries(result.output)}
    rejected = {r.source for r in result.rejects}
    inputs = {str(raw / p.relative_to(raw)) for p in raw.rglob("*") if p.is_file()}
    inputs -= {str(raw / "kaldi" / n) for n in ("wav.scp", "text", "a.wav")}
    inputs |= {f"{raw}/kaldi/wav.scp:a", f"{raw}/kaldi/wav.scp:b"}
    transcripts = {s for s in inputs if s.endswith(".lab") or s.endswith(".normalized.txt")}
    covered = accepted | rejected
    for s in inputs - covered:  # a transcript is covered by its audio file
        assert s in transcripts, f"input lost: {s}"
        assert any(c.startswith(s.rsplit(".", 2 if s.endswith(".normalized.txt") else 1)[0] + ".") for c in covered), (
            f"transcript lost: {s}"
        )
    assert not accepted & rejected
    assert next(r for r in result.rejects if r.source.endswith("wav.scp:b")).reason == "no_audio"


def test_toy_speaker_corpus(tmp_path: Path) -> None:
    """The committed corpus: each junk file gets its reason, every other clip is accepted."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_toy_corpus", REPO / "scripts" / "make_toy_corpus.py")
    toy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(toy)  # type: ignore[union-attr]
    result = run(tmp_path, [REPO / "examples" / "toy_speaker"], replace(CFG, speaker="toy", dev_ratio=0.1))
    reasons = {Path(r.source).stem: r.reason for r in result.rejects}
    assert reasons == toy.JUNK_REASONS
    accepted = {Path(e.source).stem for e in result.entries}
    assert len(accepted) == len(toy.ZH_LINES) + len(toy.EN_LINES) + 1
    assert toy.STEREO_STEM in accepted
    assert result.counts["dev"] >= 2
    langs = {e.language for e in result.entries}
    assert langs == {"zh", "en"}
    assert all(1.0 <= e.duration_s <= 6.0 for e in result.entries)


def test_long_recording_is_sliced(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    parts = []
    for i in range(8):
        parts += [syllables(3.0 + 0.3 * i, seed=60 + i), silence(0.9, seed=i)]
    write(raw / "diary.flac", np.concatenate(parts), format="FLAC")  # ~37 s
    cfg = replace(CFG, long_recording_s=20.0)
    result = run(tmp_path, [raw], cfg)
    assert result.counts == {"train": 0, "dev": 0}
    slices = [r for r in result.rejects if r.reason == "no_text"]
    assert len(slices) >= 6 and all(r.utt and "-p0" in r.utt for r in slices)
    assert all(r.source_start_s is not None and r.source_end_s > r.source_start_s for r in slices)


def test_rerun_is_identical_and_adding_clips_keeps_splits(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    lab_corpus(raw, 20)
    cfg = replace(CFG, dev_ratio=0.2, min_dev=0)
    first = {e.utt: e.split for e in run(tmp_path, [raw], cfg).entries}
    again = {e.utt: e.split for e in run(tmp_path, [raw], cfg).entries}
    assert first == again and "dev" in first.values()
    lab_corpus(raw, 10, start_seed=100, prefix="new")
    grown = {e.utt: e.split for e in run(tmp_path, [raw], cfg, name="data2").entries}
    assert all(grown[u] == s for u, s in first.items())


def test_bad_inputs_raise_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        run(tmp_path, [tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no audio or transcript"):
        run(tmp_path, [tmp_path / "empty"])
    lab_corpus(tmp_path / "raw", 1)
    with pytest.raises(InputError, match="inside the input"):
        prepare([tmp_path / "raw"], tmp_path / "raw" / "out", CFG, progress=False)
    with pytest.raises(InputError, match="speaker"):
        run(tmp_path, [tmp_path / "raw"], replace(CFG, speaker="bad_name"))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--input", "{tmp}/missing", "--output", "{tmp}/o", "--speaker", "s"], "does not exist"),
        (["--input", "{tmp}/raw", "--output", "{tmp}/o", "--speaker", "a b"], "speaker"),
        (["--input", "{tmp}/raw", "--output", "{tmp}/raw/o", "--speaker", "s"], "inside the input"),
        (["--input", "{tmp}/raw", "--output", "{tmp}/o", "--whisper", "{tmp}/none.pt"], "Whisper checkpoint"),
        (["--input", "{tmp}/raw", "--output", "{tmp}/o", "--set", "prepare.nope=1"], "prepare.nope"),
        (["--input", "{tmp}/raw", "--output", "{tmp}/o", "--review", "{tmp}/r.tsv"], "review file"),
    ],
)
def test_cli_errors_are_one_line(tmp_path: Path, capsys, monkeypatch, argv, expected) -> None:
    monkeypatch.setenv("COSYML_TRACKING", "off")
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "raw" / "a.wav", utterance(1.0))  # no text: needs Whisper when --whisper is given
    code = main(["prepare", "--no-progress", *(a.format(tmp=tmp_path) for a in argv)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("cosyml: error:") and expected in err, err


def test_cli_runs_and_tracks(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    uri = (tmp_path / "mlruns").as_uri()  # a file store: much faster to create than sqlite in a test
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    lab_corpus(tmp_path / "raw", 5)
    write(tmp_path / "raw" / "notext.wav", utterance(1.0, seed=9))
    code = main(
        [
            "prepare",
            "--input",
            "raw",
            "--output",
            "data",
            "--speaker",
            "cli-spk",
            "--no-progress",
            "--set",
            "prepare.min_dev=1",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "prepared 5 utterances" in captured.out
    assert "no_text" in captured.err and "--whisper" in captured.err
    import mlflow

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["cosyml/cli-spk"])
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row["metrics.train_utts"] + row["metrics.dev_utts"] == 5
    assert row["metrics.rejects_no_text"] == 1 and row["params.prepare.speaker"] == "cli-spk"
    client = mlflow.MlflowClient()
    names = {a.path for a in client.list_artifacts(row["run_id"])}
    assert {"summary.json", "rejects.jsonl", "samples"} <= names
    assert len(client.list_artifacts(row["run_id"], "samples")) == 3


def test_small_corpus_split_does_not_move_when_clips_are_added(tmp_path: Path) -> None:
    """The old min_dev top-up made a clip's split depend on the others: on a small corpus, added clips
    (or accepted junk) moved good clips from dev back to train."""
    raw = tmp_path / "raw"
    lab_corpus(raw, 6)
    cfg = replace(CFG, dev_ratio=0.2, min_dev=2)
    first = {e.utt: e.split for e in run(tmp_path, [raw], cfg).entries}
    lab_corpus(raw, 20, start_seed=100, prefix="new")
    grown = {e.utt: e.split for e in run(tmp_path, [raw], cfg, name="data2").entries}
    assert {u: grown[u] for u in first} == first
