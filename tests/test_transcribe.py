"""Whisper transcription inside prepare, with a tiny random-weight checkpoint (garbage text by design:
these tests prove the code path, the confidence, the cache and the review feed-back, not accuracy)."""

from __future__ import annotations

import csv
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from _data_fixtures import lab_corpus, utterance, write

from cosyml.config import PrepareConfig
from cosyml.data.prepare import prepare
from cosyml.data.transcribe import REVIEW_HEADER, WhisperTranscriber, confidence, read_review
from cosyml.errors import InputError

# A few tokens are enough to prove the path; the tiny model writes repetitive garbage.
CFG = PrepareConfig(speaker="spk", whisper_max_tokens=12, whisper_device="cpu", min_confidence=0.0)


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cosyml.kit.whisper import write_tiny_whisper

    return write_tiny_whisper(tmp_path_factory.mktemp("whisper") / "tiny.pt")


@pytest.fixture(scope="module")
def transcribed(tmp_path_factory: pytest.TempPathFactory, tiny_whisper: Path):
    raw = tmp_path_factory.mktemp("raw")
    lab_corpus(raw, 3)
    write(raw / "mp3" / "a.mp3", utterance(1.2, seed=70), format="MP3")
    write(raw / "mp3" / "b.wav", utterance(1.4, seed=71))
    out = raw.parent / (raw.name + "-data")
    # a random Whisper hears nothing: checking the .lab clips against it would only cost time
    cfg = replace(CFG, whisper_model=str(tiny_whisper), check_transcripts="off")
    return raw, out, cfg, prepare([raw], out, cfg, progress=False)


def test_confidence_formula() -> None:
    assert confidence(0.0, 0.0) == 1.0
    assert confidence(-0.5, 0.2) == pytest.approx(0.6065 * 0.8, abs=1e-4)
    assert confidence(-0.1, 0.0, compression_ratio=3.0) == 0.0  # repetitive output: hallucination
    assert confidence(float("nan"), 0.1) == 0.0


def test_clips_without_text_are_transcribed(transcribed) -> None:
    _, out, _, result = transcribed
    assert result.transcribed == 2
    whisper_entries = [e for e in result.entries if e.text_source == "whisper"]
    assert {Path(e.source).name for e in whisper_entries} == {"a.mp3", "b.wav"}, result.rejects
    for e in whisper_entries:
        assert e.text and e.confidence is not None and 0.0 <= e.confidence <= 1.0
        assert e.language and e.language != "unknown"  # detected by Whisper
        assert "<|" not in e.text
    assert all(e.text_source == "lab" for e in result.entries if e not in whisper_entries)
    with result.review_path.open(encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert tuple(rows[0]) == REVIEW_HEADER
    assert {r[0] for r in rows[1:]} == {e.utt for e in whisper_entries}
    assert all(0.0 <= float(r[1]) <= 1.0 for r in rows[1:])
    assert (out / "whisper_cache.jsonl").is_file()


def test_a_rerun_reads_the_whisper_cache_and_never_loads_the_model(transcribed, tmp_path: Path) -> None:
    """The cache key is (audio hash, model name/size/mtime, language, max tokens): a file with the same
    name, size and mtime but garbage bytes is the same key, so a rerun that used the cache never loads it;
    one nanosecond of mtime later it is another model, which must be decoded, and that fails."""
    raw, out, cfg, first = transcribed
    model = Path(cfg.whisper_model)
    stat = model.stat()
    unloadable = tmp_path / "models" / model.name
    unloadable.parent.mkdir()
    unloadable.write_bytes(b"\0" * stat.st_size)
    os.utime(unloadable, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    rerun = tmp_path / "rerun"
    rerun.mkdir()
    shutil.copyfile(out / "whisper_cache.jsonl", rerun / "whisper_cache.jsonl")  # the cache of the first run

    def whisper_texts(result) -> dict[str, tuple[str, float | None]]:
        return {e.utt: (e.text, e.confidence) for e in result.entries if e.text_source == "whisper"}

    again = prepare([raw], rerun, replace(cfg, whisper_model=str(unloadable)), progress=False)
    assert len(whisper_texts(first)) == 2 and whisper_texts(again) == whisper_texts(first)
    os.utime(unloadable, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    with pytest.raises(InputError, match="not a Whisper checkpoint"):
        prepare([raw], tmp_path / "rerun2", replace(cfg, whisper_model=str(unloadable)), progress=False)


def test_transcripts_cached_from_other_windows_are_not_reused(transcribed, tmp_path: Path) -> None:
    """Cache lines keyed without the windows (an older cosyml decoded 30 s of padded audio) are stale:
    prepare decodes those clips again instead of reading them."""
    import json

    from cosyml.data.transcribe import WINDOWS

    raw, out, cfg, first = transcribed
    stale = []
    for line in (out / "whisper_cache.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        assert f":{WINDOWS}:" in row["key"]
        stale.append(json.dumps({**row, "key": row["key"].replace(f":{WINDOWS}", ""), "text": "stale text"}))
    rerun = tmp_path / "rerun"
    rerun.mkdir()
    (rerun / "whisper_cache.jsonl").write_text("\n".join(stale) + "\n", encoding="utf-8")
    again = prepare([raw], rerun, cfg, progress=False)
    texts = {e.utt: e.text for e in again.entries if e.text_source == "whisper"}
    assert texts == {e.utt: e.text for e in first.entries if e.text_source == "whisper"} and len(texts) == 2


def test_low_confidence_then_review_feedback(transcribed, tmp_path: Path) -> None:
    raw, out, cfg, first = transcribed
    strict = replace(cfg, min_confidence=0.5)
    rejected = prepare([raw], tmp_path / "strict", strict, progress=False)
    # A new output folder has its own Whisper cache, so this decodes again.
    low = {r.utt for r in rejected.rejects if r.reason == "low_confidence"}
    assert low == {e.utt for e in first.entries if e.text_source == "whisper" and e.confidence < 0.5}
    assert (tmp_path / "strict" / "transcripts_review.tsv").is_file()

    # The user corrects the review file (and fixes one lab transcript too); corrected text wins.
    review = tmp_path / "review.tsv"
    whisper_utts = sorted(e.utt for e in first.entries if e.text_source == "whisper")
    lab_utt = next(e.utt for e in first.entries if e.text_source == "lab")
    review.write_text(
        "utt\tconfidence\ttext\n"
        f"{whisper_utts[0]}\t0.000\t人工校对的文本。\n"
        f"{whisper_utts[1]}\t0.000\t\n"  # emptied: the user drops this clip
        f"{lab_utt}\t\t 改过的 文本 \n",
        encoding="utf-8",
    )
    again = prepare([raw], out, strict, review_file=review, progress=False)  # reviewed: no clip needs Whisper
    entries = {e.utt: e for e in again.entries}
    assert entries[whisper_utts[0]].text == "人工校对的文本。"
    assert entries[whisper_utts[0]].text_source == "review"
    assert entries[lab_utt].text == "改过的 文本" and entries[lab_utt].text_source == "review"
    assert {r.utt: r.reason for r in again.rejects} == {whisper_utts[1]: "empty_text"}
    assert again.transcribed == 0


def test_transcripts_equal_whisper_transcribe(tiny_whisper: Path) -> None:
    """prepare decodes the windows ``whisper.transcribe`` builds and detects the language where it does:
    text, language and decoding statistics equal a per-clip ``model.transcribe`` with the same settings
    (one clip per batch: the same tensors through the same ops, so the floats are equal, not close). The
    statistics follow every change of the window (prepare's old one, 30 s of padded audio, fails here)."""
    import whisper

    from cosyml.audio import load_mono

    toy = Path(__file__).resolve().parents[1] / "examples" / "toy_speaker"
    clips = [load_mono(toy / f"{name}.wav", 16000) for name in ("vo_zh_001", "vo_en_005", "vo_en_008")]
    transcriber = WhisperTranscriber(tiny_whisper, None, "cpu", batch_size=1, max_tokens=12)
    ours = transcriber.transcribe(clips)
    model = transcriber.model
    no_timestamps = whisper.tokenizer.get_tokenizer(True, num_languages=model.num_languages).no_timestamps
    for clip, transcript in zip(clips, ours, strict=True):
        reference = model.transcribe(
            clip,
            temperature=0.0,
            condition_on_previous_text=False,
            without_timestamps=True,
            suppress_tokens=[-1, no_timestamps],  # as prepare: <|notimestamps|> belongs in the prompt only
            sample_len=12,
            no_speech_threshold=None,  # prepare keeps Whisper's text and discounts its confidence instead
            fp16=False,
            verbose=None,
        )
        (segment,) = reference["segments"]
        assert (transcript.text, transcript.language) == (segment["text"].strip(), reference["language"])
        assert (transcript.avg_logprob, transcript.no_speech_prob) == (
            segment["avg_logprob"],
            segment["no_speech_prob"],
        )
    assert any(t.text for t in ours)


def test_forced_language_and_bad_checkpoint(tiny_whisper: Path, tmp_path: Path) -> None:
    (result,) = WhisperTranscriber(tiny_whisper, "zh", "cpu", max_tokens=4).transcribe([utterance(1.0)])
    assert result.language == "zh"
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a Whisper checkpoint"):
        _ = WhisperTranscriber(bad).model
    with pytest.raises(InputError, match="header"):
        (tmp_path / "r.tsv").write_text("a\tb\n")
        read_review(tmp_path / "r.tsv")
