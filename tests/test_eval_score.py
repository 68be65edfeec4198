"""Scoring a folder of outputs: hand-computed rows and summaries, bad input, writers, real CAM++ embeddings."""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from cosyml.audio import write_wav
from cosyml.config import EvaluateConfig
from cosyml.evaluation.asr import Hypothesis, compression_ratio
from cosyml.evaluation.metrics import cosine_similarity
from cosyml.evaluation.score import score_test_set, write_report
from cosyml.evaluation.testset import SubsetLine, read_test_set, write_sft_subset, write_subset

SR = 16000


@pytest.fixture(scope="module")
def campplus_path(tmp_path_factory) -> Path:
    from cosyml.kit.frontend import export_campplus

    return export_campplus(tmp_path_factory.mktemp("kit") / "campplus.onnx")


def _tone(path: Path, seconds: float, amplitude: float = 0.3, freq: float = 200.0, sr: int = SR) -> Path:
    t = np.arange(round(seconds * sr)) / sr
    write_wav(path, (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr)
    return path


class LengthKeyedTranscriber:
    """A stand-in ASR that returns a fixed transcript per audio length (random-weight Whisper output
    cannot be hand-checked; the real Whisper path is covered in test_eval_asr.py)."""

    def __init__(self, by_samples: dict[int, str]) -> None:
        self.by_samples = by_samples
        self.calls: list[list[str]] = []

    def transcribe(
        self, waveforms: Sequence[np.ndarray], languages: Sequence[str], progress: bool = False
    ) -> list[Hypothesis]:
        self.calls.append(list(languages))
        return [
            Hypothesis(self.by_samples[len(w)], lang, -0.1, 0.01, compression_ratio(self.by_samples[len(w)]))
            for w, lang in zip(waveforms, languages, strict=True)
        ]


def peak_embedding(waveforms: Sequence[np.ndarray]) -> np.ndarray:
    """A unit vector (p, sqrt(1 - p^2)) from each waveform's peak p: SS is then hand-computable."""
    peaks = np.array([min(1.0, float(np.max(np.abs(w)))) for w in waveforms])
    return np.stack([peaks, np.sqrt(1 - peaks**2)], axis=1).astype(np.float32)


@pytest.fixture()
def test_set(tmp_path: Path) -> Path:
    root = tmp_path / "set"
    _tone(root / "zero_shot" / "zh" / "waveform" / "p.wav", 1.0, amplitude=0.6)
    write_subset(
        root / "zero_shot" / "zh",
        [
            SubsetLine("z1", "你好，世界！", "提示。", "zero_shot//zh/waveform/p.wav"),  # 4 chars
            SubsetLine("z2", "今天天气很好。", "提示。", "zero_shot//zh/waveform/p.wav"),  # 6 chars
            SubsetLine("z3", "我们走吧。", "提示。", "zero_shot//zh/waveform/p.wav"),  # 4 chars, output missing
            SubsetLine("z4", "坏掉的提示。", "提示。", "zero_shot//zh/waveform/gone.wav"),  # bad prompt: skipped
        ],
    )
    write_subset(
        root / "zero_shot" / "en",
        [
            SubsetLine("e1", "Don't stop, Mr. Smith!", "Hi.", "zero_shot//zh/waveform/p.wav"),  # 4 words
            SubsetLine("e2", "Hello world.", "Hi.", "zero_shot//zh/waveform/p.wav", language="xx"),  # bad code
        ],
    )
    return root


def _outputs(tmp_path: Path) -> Path:
    out = tmp_path / "outputs"
    _tone(out / "zero_shot" / "zh" / "wavs" / "z1.wav", 1.0, amplitude=0.8)  # 16000 samples
    _tone(out / "zero_shot" / "zh" / "wavs" / "z2.wav", 1.5, amplitude=0.6)  # 24000 samples
    (out / "zero_shot" / "zh" / "wavs" / "z4.wav").write_bytes(b"not audio")  # irrelevant: z4 is skipped
    _tone(out / "zero_shot" / "en" / "e1.wav", 0.5, amplitude=0.6, sr=24000)  # flat layout, 24 kHz -> 8000
    return out


def test_scores_rows_and_summaries_by_hand(test_set: Path, tmp_path: Path):
    outputs = _outputs(tmp_path)
    asr = LengthKeyedTranscriber({16000: "你好世介", 24000: "今天天气很好啊", 8000: "dont STOP mister smith"})
    config = EvaluateConfig(bootstrap_resamples=200, seed=3)
    subsets = read_test_set(test_set)
    report = score_test_set(subsets, outputs, asr, peak_embedding, config)

    rows = {r.utt: r for r in report.rows}
    assert sorted(rows) == ["e1", "z1", "z2", "z3"]
    assert asr.calls == [["en"], ["zh", "zh"]]  # one call per subset, languages forced per item
    z1, z2, z3, e1 = rows["z1"], rows["z2"], rows["z3"], rows["e1"]
    assert (z1.metric, z1.error, z1.substitutions, z1.ref_len) == ("cer", 0.25, 1, 4)
    assert z2.error == pytest.approx(1 / 6) and z2.insertions == 1
    assert (z3.status, z3.error, z3.ss, z3.deletions, z3.flags) == ("missing", 1.0, 0.0, 4, ("missing",))
    assert (e1.metric, e1.error, e1.ref_len) == ("wer", 0.5, 4)
    # SS: prompt peak 0.6 -> (0.6, 0.8); outputs at peak 0.8 -> (0.8, 0.6): cos = 0.96; equal peaks: 1.0
    assert z1.ss == pytest.approx(0.96, abs=2e-3)
    assert z2.ss == pytest.approx(1.0, abs=1e-3)
    # expected duration: 4 chars / 4.5 + 0.3 s; z1 lasts 1.0 s
    assert z1.expected_duration_s == pytest.approx(0.3 + 4 / 4.5)
    assert z1.duration_ratio == pytest.approx(1.0 / (0.3 + 4 / 4.5))
    assert e1.duration_s == pytest.approx(0.5)

    zh = next(s for s in report.summaries if s.subset == "zero_shot/zh")
    assert (zh.n_items, zh.n_scored, zh.n_missing, zh.n_skipped) == (4, 2, 1, 1)
    assert zh.skipped_reasons == {"missing_prompt_wav": 1}
    assert zh.mean_error == pytest.approx((0.25 + 1 / 6 + 1.0) / 3)
    assert zh.corpus_error == pytest.approx((1 + 1 + 4) / (4 + 6 + 4))
    assert zh.share_error_over_50 == pytest.approx(1 / 3)
    assert zh.mean_ss == pytest.approx((0.96 + 1.0 + 0.0) / 3, abs=2e-3)
    assert zh.mean_error_ci.contains(zh.mean_error) and zh.corpus_error_ci.contains(zh.corpus_error)
    assert zh.flag_counts["missing"] == 1
    en = next(s for s in report.summaries if s.subset == "zero_shot/en")
    assert (en.n_items, en.n_scored, en.n_skipped, en.skipped_reasons) == (2, 1, 1, {"unknown_language": 1})
    assert {(p.utt, p.reason) for p in report.skipped} == {("z4", "missing_prompt_wav"), ("e2", "unknown_language")}
    assert report.macro()["mean_error"] == pytest.approx((zh.mean_error + 0.5) / 2)

    again = score_test_set(read_test_set(test_set), outputs, asr, peak_embedding, config)
    assert [dataclasses.astuple(s) for s in again.summaries] == [dataclasses.astuple(s) for s in report.summaries]

    csv_path, json_path = write_report(tmp_path / "report", report)
    with csv_path.open(encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 and {r["utt"]: r["status"] for r in table}["z3"] == "missing"
    assert {r["utt"]: r["hypothesis"] for r in table}["z1"] == "你好世介"
    summary = json.loads(json_path.read_text(encoding="utf-8"))
    assert [s["subset"] for s in summary["subsets"]] == ["zero_shot/en", "zero_shot/zh"]
    assert summary["subsets"][1]["n_missing"] == 1 and len(summary["skipped"]) == 2
    assert summary["subsets"][0]["mean_error_ci"]["low"] == pytest.approx(0.5)


def test_broken_audio_is_flagged(tmp_path: Path):
    root = tmp_path / "set"
    _tone(root / "zero_shot" / "en" / "waveform" / "p.wav", 1.0)
    write_subset(
        root / "zero_shot" / "en",
        [SubsetLine(u, "one two three four", None, "waveform/p.wav") for u in ("quiet", "loud", "long", "junk")],
    )
    out = tmp_path / "outputs" / "zero_shot" / "en"
    write_wav(out / "quiet.wav", np.zeros(SR, np.float32), SR)
    _tone(out / "loud.wav", 1.01, amplitude=3.0)
    _tone(out / "long.wav", 9.0)
    (out / "junk.wav").write_bytes(b"RIFF nonsense")
    asr = LengthKeyedTranscriber({16000: "", 16160: "one two three four", 144000: "one two two two two two two two"})
    report = score_test_set(read_test_set(root), tmp_path / "outputs", asr, None, EvaluateConfig())
    rows = {r.utt: r for r in report.rows}
    assert "silent" in rows["quiet"].flags and rows["quiet"].error == 1.0 and rows["quiet"].ss is None
    assert "clipped" in rows["loud"].flags and rows["loud"].error == 0.0
    assert "too_long" in rows["long"].flags  # 9 s for an expected 0.3 + 4 / 2.7 s
    assert rows["junk"].status == "missing" and rows["junk"].flags == ("undecodable",)
    assert report.summaries[0].n_missing == 1 and report.summaries[0].flag_counts["clipped"] == 1


def test_sft_set_scores_against_the_mean_speaker_embedding_with_real_campplus(tmp_path: Path, campplus_path: Path):
    from cosyml.evaluation.speaker import campplus_embedder

    data = tmp_path / "DATA"
    _tone(data / "wavs" / "toy_a.wav", 1.0, freq=180, sr=24000)
    _tone(data / "wavs" / "toy_b.wav", 1.2, freq=240, sr=24000)
    (data / "dev").mkdir()
    (data / "dev" / "wav.scp").write_text("toy_a wavs/toy_a.wav\ntoy_b wavs/toy_b.wav\n", encoding="utf-8")
    (data / "dev" / "text").write_text("toy_a 前面有宝箱。\ntoy_b 快过去！\n", encoding="utf-8")
    subset = write_sft_subset(data, tmp_path / "sets" / "sft")
    outputs = tmp_path / "outputs" / "sft" / "wavs"
    outputs.mkdir(parents=True)
    for utt in ("toy_a", "toy_b"):  # the "synthesis" is the recording itself
        (outputs / f"{utt}.wav").write_bytes((data / "wavs" / f"{utt}.wav").read_bytes())
    embed = campplus_embedder(campplus_path, device="cpu", num_threads=1)
    asr = LengthKeyedTranscriber({16000: "前面有宝箱", 19200: "快过去"})
    report = score_test_set([subset], tmp_path / "outputs", asr, embed, EvaluateConfig(bootstrap_resamples=50))
    rows = {r.utt: r for r in report.rows}
    vectors = embed([np.asarray(_read16(data / "wavs" / f"{u}.wav")) for u in ("toy_a", "toy_b")])
    assert vectors.shape == (2, 192) and np.all(np.isfinite(vectors))
    mean = vectors.mean(axis=0)
    for i, utt in enumerate(("toy_a", "toy_b")):
        assert rows[utt].ss == pytest.approx(cosine_similarity(vectors[i], mean), abs=1e-5)
        assert rows[utt].duration_ratio == pytest.approx(1.0)  # same length as the reference recording
        assert rows[utt].error == 0.0
    assert 0.0 < report.summaries[0].mean_ss <= 1.0


def _read16(path: Path) -> np.ndarray:
    from cosyml.audio import load_mono

    return load_mono(path, SR)
