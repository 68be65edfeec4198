"""The extract stage end to end on the tiny kit: file formats, resume, errors, CLI and tracking."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cosyml.audio import load_mono, write_wav
from cosyml.cli import main
from cosyml.config import ExtractConfig
from cosyml.errors import InputError, ModelDirError
from cosyml.features.campplus import SpeakerEncoder
from cosyml.features.extract import CACHE_FILE, _tokens_per_clip, extract, find_frontend_models
from cosyml.features.fbank import campplus_features
from cosyml.features.speaker_check import SpeakerCheckConfig
from cosyml.features.speech_tokens import SpeechTokenizer
from cosyml.features.whisper_mel import log_mel
from cosyml.kit.frontend import export_campplus, export_speech_tokenizer

DURATIONS = {"train": [1.0, 1.7, 2.3, 1.0, 0.8, 31.0], "dev": [1.2, 2.0]}


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kit")
    export_campplus(root / "campplus.onnx")
    export_speech_tokenizer(root / "speech_tokenizer_v2.onnx")
    return root


def _make_data(root: Path) -> Path:
    rng = np.random.default_rng(7)
    for split, durations in DURATIONS.items():
        d = root / "data" / split
        d.mkdir(parents=True)
        scp, u2s = [], []
        for i, dur in enumerate(durations):
            sr = 24000 if i % 2 == 0 else 22050
            t = np.arange(int(sr * dur)) / sr
            wav = 0.3 * np.sin(2 * np.pi * (140 + 40 * i) * t * (1 + 0.3 * np.sin(2 * np.pi * 2 * t)))
            write_wav(d / f"{split}_{i}.wav", wav + 0.01 * rng.standard_normal(len(t)), sr)
            spk = "spkA" if i % 3 else "spkB"
            scp.append(f"{spk}_{split}{i} {split}_{i}.wav")  # relative to the split directory
            u2s.append(f"{spk}_{split}{i} {spk}")
        (d / "wav.scp").write_text("\n".join(scp) + "\n")
        (d / "utt2spk").write_text("\n".join(u2s) + "\n")
    return root / "data"


@pytest.fixture()
def data(tmp_path) -> Path:
    return _make_data(tmp_path)


CFG = ExtractConfig(batch_size=4, num_threads=1, device="cpu", checkpoint_every=2, workers=2)


@pytest.mark.parametrize("token_batches", ["off", "on"])
def test_outputs_match_one_at_a_time_upstream_method(kit, data, token_batches):
    cfg = dataclasses.replace(CFG, token_batches=token_batches)  # per clip in the workers / padded batches
    result = extract(data, kit, cfg, progress=False)
    assert result.complete and [s.split for s in result.splits] == ["train", "dev"]
    train = data / "train"
    utt2emb = torch.load(train / "utt2embedding.pt", weights_only=True)
    spk2emb = torch.load(train / "spk2embedding.pt", weights_only=True)
    utt2tok = torch.load(train / "utt2speech_token.pt", weights_only=True)
    utts = [line.split()[0] for line in (train / "wav.scp").read_text().splitlines()]
    assert list(utt2emb) == utts and list(utt2tok) == utts

    encoder = SpeakerEncoder(kit / "campplus.onnx", "cpu", 1)
    tokenizer = SpeechTokenizer(kit / "speech_tokenizer_v2.onnx", "cpu", 1)
    for i, utt in enumerate(utts):
        wav16 = load_mono(train / f"train_{i}.wav", 16000)
        single = encoder.embed(campplus_features([wav16]))[0]
        assert isinstance(utt2emb[utt], list) and len(utt2emb[utt]) == 192
        np.testing.assert_allclose(utt2emb[utt], single, atol=1e-5)
        expected = [] if len(wav16) > 30 * 16000 else tokenizer.tokenize([log_mel(wav16)])[0]
        assert utt2tok[utt] == expected
    # The speaker's mean leaves out the clips the speaker check flags (these sines differ in pitch).
    outliers = {o["utt"] for o in json.loads((data / "speaker_check.json").read_text())["outliers"]}
    spk_a = [u for u in utts if u.startswith("spkA") and u not in outliers]
    np.testing.assert_allclose(spk2emb["spkA"], np.mean([utt2emb[u] for u in spk_a], axis=0), atol=1e-6)

    s = result.splits[0]
    assert s.num_utts == 6 and s.num_embeddings == 6 and s.num_with_tokens == 5 and s.no_tokens == ["spkA_train5"]
    report = json.loads((train / "extract_report.json").read_text())
    first = report["utterances"][utts[1]]  # 1.7 s at 22.05 kHz
    assert first["flow_mel_frames"] == int(np.ceil(int(22050 * 1.7) * 24000 / 22050)) // 480
    assert first["usable_tokens"] == min(first["flow_mel_frames"] // 2, first["tokens"])
    assert not (train / CACHE_FILE).exists()


def test_resume_after_interruption(kit, data, tmp_path):
    first = extract(data, kit, CFG, stop_after=3, progress=False)
    assert not first.complete
    assert first.speaker_check is None and not (data / "speaker_check.json").exists()
    train = data / "train"
    assert (train / CACHE_FILE).is_file() and not (train / "utt2embedding.pt").exists()
    cache = torch.load(train / CACHE_FILE, weights_only=True)
    assert len(cache["utt2embedding"]) == 3
    # poison the cached vector of one clip: a resumed run must keep it, proving it was not recomputed
    poisoned = next(iter(cache["utt2embedding"]))
    cache["utt2embedding"][poisoned] = [7.0] * 192
    torch.save(cache, train / CACHE_FILE)

    second = extract(data, kit, CFG, progress=False)
    assert second.complete and second.splits[0].num_resumed == 3
    assert torch.load(train / "utt2embedding.pt", weights_only=True)[poisoned] == [7.0] * 192

    fresh = _make_data(tmp_path / "fresh")
    extract(fresh, kit, CFG, progress=False)
    ref = torch.load(fresh / "train" / "utt2speech_token.pt", weights_only=True)
    assert torch.load(train / "utt2speech_token.pt", weights_only=True) == ref

    third = extract(data, kit, CFG, progress=False)
    assert third.splits[0].skipped_up_to_date
    # Up to date, the speaker check still runs with the thresholds given now (features are reused).
    assert third.speaker_check is not None and (data / "speaker_check.json").is_file()
    strict = extract(data, kit, CFG, progress=False, speaker_check=SpeakerCheckConfig(min_similarity=1.0, drop=True))
    assert strict.splits[0].skipped_up_to_date and len(strict.speaker_check.outliers) == 5  # spkA's 5 clips
    listed = [line.split() for line in (data / "train" / "excluded_utts").read_text().splitlines()]
    assert {reason for _, reason in listed} == {"speaker_outlier"} and len(listed) == 4  # 4 of them in train


def test_wrong_model_dir_names_the_missing_file(kit, data, tmp_path):
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "campplus.onnx").write_bytes((kit / "campplus.onnx").read_bytes())
    with pytest.raises(ModelDirError, match=r"speech_tokenizer_v2\.onnx: missing.*cosyml kit"):
        extract(data, tmp_path / "partial", CFG, progress=False)
    (tmp_path / "partial" / "cosyvoice3.yaml").write_text("{}")
    with pytest.raises(ModelDirError, match=r"speech_tokenizer_v3\.onnx"):
        find_frontend_models(tmp_path / "partial")
    with pytest.raises(InputError, match="no train/dev split"):
        extract(tmp_path / "nothing", kit, CFG, progress=False)
    with pytest.raises(InputError, match=r"extract\.token_batches: 'sometimes' is not one of auto, on, off"):
        extract(data, kit, dataclasses.replace(CFG, token_batches="sometimes"), progress=False)


def test_token_batching_follows_the_provider():
    assert _tokens_per_clip("auto", "CPUExecutionProvider") is True
    assert _tokens_per_clip("auto", "CUDAExecutionProvider") is False
    assert _tokens_per_clip("on", "CPUExecutionProvider") is False
    assert _tokens_per_clip("off", "CUDAExecutionProvider") is True


def test_cli_extract_records_a_run(kit, data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    code = main(
        [
            "extract",
            "--data",
            str(data),
            "--model-dir",
            str(kit),
            "--set",
            "extract.num_threads=1",
            "--set",
            "extract.device=cpu",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "train: 6/6 embeddings, 5 with tokens" in out

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["cosyml/speaker"])
    assert len(runs) == 1 and runs.iloc[0]["metrics.train.num_utts"] == 6
    assert runs.iloc[0]["tags.cosyml.stage"] == "extract"
    # The speaker check's counts and report are on the run (spkA: 5 clips over both splits, checked).
    report = json.loads((data / "speaker_check.json").read_text())
    assert runs.iloc[0]["metrics.speaker_outliers"] == len(report["outliers"])
    assert runs.iloc[0]["metrics.speakers_unchecked"] == 1  # spkB: 3 clips
    client = mlflow.MlflowClient()
    assert "speaker_check.json" in [a.path for a in client.list_artifacts(runs.iloc[0]["run_id"])]


def test_cli_wrong_model_dir_is_one_line(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COSYML_TRACKING", "off")
    assert main(["extract", "--data", str(data), "--model-dir", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cosyml: error:") and "\n" not in err


def test_missing_onnxruntime_is_one_line_naming_the_extra(kit, data, monkeypatch, capsys):
    monkeypatch.setenv("COSYML_TRACKING", "off")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # the import fails as when it is not installed
    assert main(["extract", "--data", str(data), "--model-dir", str(kit)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == "cosyml: error: onnxruntime is not installed; run `pip install -e .[cpu]` (or `.[gpu]` on a CUDA machine)"
    )


def test_rewritten_wavs_are_not_up_to_date(kit, data):
    """Re-preparing (e.g. another target_peak) rewrites the wavs under the same names and the same
    wav.scp: extract must recompute instead of saying 'up to date'."""
    from cosyml.audio import read_audio

    first = extract(data, kit, CFG, progress=False)
    assert first.complete
    before = torch.load(data / "train" / "utt2embedding.pt", weights_only=True)
    wav = data / "train" / "train_1.wav"
    audio = read_audio(wav)
    write_wav(wav, audio.samples * 0.3, audio.sample_rate)
    again = extract(data, kit, CFG, progress=False)
    assert not again.splits[0].skipped_up_to_date and again.splits[1].skipped_up_to_date
    after = torch.load(data / "train" / "utt2embedding.pt", weights_only=True)
    changed = [u for u in before if before[u] != after[u]]
    assert changed == ["spkA_train1"]


def test_second_extract_into_a_locked_folder_is_one_line(kit, data):
    from cosyml.fileio import output_lock

    with output_lock(data, "another extract"), pytest.raises(InputError, match="in use by"):
        extract(data, kit, CFG, progress=False)
