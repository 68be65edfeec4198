"""Batched Whisper ASR with the real openai-whisper code on a tiny random checkpoint, and the full stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cosyml.audio import load_mono
from cosyml.config import Params, with_overrides
from cosyml.errors import InputError
from cosyml.evaluation.asr import WhisperASR, compression_ratio, to_simplified
from cosyml.evaluation.score import evaluate_outputs, format_summary

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "examples" / "toy_speaker"
CLIPS = [("vo_zh_001", "zh"), ("vo_en_005", "en"), ("vo_en_008", "en")]


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory) -> Path:
    import torch

    from cosyml.kit.whisper import write_tiny_whisper

    path = write_tiny_whisper(tmp_path_factory.mktemp("whisper") / "whisper.pt")
    # the kit initialises every tensor (whisper allocates the decoder's positional table with torch.empty)
    table = torch.load(path, weights_only=True)["model_state_dict"]["decoder.positional_embedding"]
    assert torch.isfinite(table).all() and table.abs().max() < 10.0
    return path


def test_batched_decoding_of_three_real_clips(tiny_whisper: Path):
    waves = [load_mono(TOY / f"{name}.wav", 16000) for name, _ in CLIPS]
    languages = [lang for _, lang in CLIPS]
    asr = WhisperASR.load(tiny_whisper, device="cpu", batch_size=3, max_tokens=12)
    hyps = asr.transcribe(waves, languages)
    assert [h.language for h in hyps] == languages
    assert all(isinstance(h.text, str) and np.isfinite(h.avg_logprob) for h in hyps)
    assert all(0.0 <= h.no_speech_prob <= 1.0 and not h.long_form for h in hyps)
    assert all(h.compression_ratio == pytest.approx(compression_ratio(h.text)) for h in hyps)
    # batching changes no result: one at a time, and a per-file model.transcribe loop with the same
    # settings (CV3's run_wer.py way), give the same transcripts
    single = WhisperASR(asr.model, batch_size=1, max_tokens=12).transcribe(waves, languages)
    assert [h.text for h in single] == [h.text for h in hyps]
    loop = [  # segment texts: transcribe drops special tokens there (its "text" keeps those below timestamps)
        "".join(
            s["text"]
            for s in asr.model.transcribe(
                w,
                language=lang,
                temperature=0.0,
                condition_on_previous_text=False,
                without_timestamps=True,
                sample_len=12,
                fp16=False,
                verbose=None,
            )["segments"]
        ).strip()
        for w, lang in zip(waves, languages, strict=True)
    ]
    assert [to_simplified(t) if lang == "zh" else t for t, lang in zip(loop, languages, strict=True)] == [
        h.text for h in hyps
    ]
    assert any(h.text for h in hyps)  # random weights still produce some text here
    # over 30 s: the long-form path (model.transcribe), input order kept
    long = np.tile(waves[1], 31 * 16000 // len(waves[1]) + 1)
    mixed = asr.transcribe([waves[1], long], ["en", "en"])
    assert [h.long_form for h in mixed] == [False, True] and mixed[0].text == hyps[1].text
    settings = asr.settings()
    assert settings["temperature"] == 0.0 and settings["language"] == "forced" and settings["max_tokens"] == 12
    with pytest.raises(InputError, match="not a Whisper language code"):
        asr.transcribe(waves[:1], ["xx"])
    with pytest.raises(InputError, match="not found"):
        WhisperASR.load(tiny_whisper.parent / "missing.pt")


def test_evaluate_stage_on_our_eval_set(tiny_whisper: Path, tmp_path: Path):
    from cosyml.kit.frontend import export_campplus

    campplus = export_campplus(tmp_path / "campplus.onnx")
    outputs = tmp_path / "outputs" / "hard" / "hard_en" / "wavs"
    outputs.mkdir(parents=True)
    for name, utt in (("vo_en_005", "hard_en_001"), ("vo_en_008", "hard_en_002")):
        (outputs / f"{utt}.wav").write_bytes((TOY / f"{name}.wav").read_bytes())
    params = with_overrides(
        Params(),
        {
            "evaluate.test_sets": str(REPO / "eval"),
            "evaluate.subsets": ["hard/hard_en"],
            "evaluate.whisper_model": str(tiny_whisper),
            "evaluate.campplus_model": str(campplus),
            "evaluate.device": "cpu",
            "evaluate.max_tokens": 8,
            "evaluate.bootstrap_resamples": 50,
        },
    )
    cfg = params.evaluate
    report = evaluate_outputs(
        tmp_path / "outputs", cfg, cfg.whisper_model, cfg.campplus_model, out_dir=tmp_path / "report", progress=False
    )
    (summary,) = report.summaries
    assert (summary.subset, summary.n_items, summary.n_scored, summary.n_missing) == ("hard/hard_en", 12, 2, 10)
    assert summary.mean_ss is not None and summary.metric == "wer"
    saved = json.loads((tmp_path / "report" / "summary.json").read_text(encoding="utf-8"))
    assert saved["settings"]["ss_name"] == "SS_campplus" and saved["subsets"][0]["n_missing"] == 10
    assert "hard/hard_en" in format_summary(report)
