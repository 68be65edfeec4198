"""Layout detection: wav+lab, *.normalized.txt, kaldi, audio only, nested and mixed formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _data_fixtures import utterance, write

from cosyml.data.layouts import scan_inputs


def by_rel(scan):
    return {c.rel: c for c in scan.clips}


def test_wav_lab_pairs_and_orphans(tmp_path: Path) -> None:
    write(tmp_path / "a.wav", utterance(1.0), text="  你好\n世界 ")
    write(tmp_path / "b.wav", utterance(1.0))
    (tmp_path / "c.lab").write_text("没有音频", encoding="utf-8")
    (tmp_path / "notes.md").write_text("hello", encoding="utf-8")
    scan = scan_inputs([tmp_path], ["raw"])
    clips = by_rel(scan)
    assert set(clips) == {"a", "b", "c"}
    assert clips["a"].text == "  你好\n世界 " and clips["a"].text_source == "lab"
    assert clips["a"].source == "raw/a.wav"
    assert clips["b"].text is None and clips["b"].audio is not None
    assert clips["c"].audio is None and clips["c"].text == "没有音频"
    assert scan.ignored == ["raw/notes.md"]


def test_normalized_txt_layout_nested(tmp_path: Path) -> None:
    write(
        tmp_path / "103" / "1241" / "103_1241_000000_000001.wav",
        utterance(1.0),
        text="Hello there.",
        text_suffix=".normalized.txt",
    )
    (tmp_path / "103" / "1241" / "103_1241_000000_000001.original.txt").write_text("hello there")
    scan = scan_inputs([tmp_path])
    (clip,) = scan.clips
    assert clip.rel == "103/1241/103_1241_000000_000001"
    assert clip.text == "Hello there." and clip.text_source == "normalized"
    assert scan.ignored == []


def test_kaldi_layout(tmp_path: Path) -> None:
    audio = write(tmp_path / "kaldi" / "audio" / "u1.flac", utterance(1.0), format="FLAC")
    write(tmp_path / "kaldi" / "audio" / "u2.wav", utterance(1.0, seed=3))
    (tmp_path / "kaldi" / "wav.scp").write_text(f"u1 {audio}\nu2 audio/u2.wav\nu3 sox x.wav -t wav - |\n")
    (tmp_path / "kaldi" / "text").write_text("u1 第一句\nu2 第二 句\nu4 没有音频\n", encoding="utf-8")
    (tmp_path / "kaldi" / "utt2spk").write_text("u1 s\nu2 s\n")
    scan = scan_inputs([tmp_path])
    clips = by_rel(scan)
    assert set(clips) == {"kaldi/u1", "kaldi/u2", "kaldi/u3", "kaldi/u4"}
    assert clips["kaldi/u1"].audio == audio and clips["kaldi/u1"].text == "第一句"
    assert clips["kaldi/u2"].audio == tmp_path / "kaldi" / "audio" / "u2.wav"
    assert clips["kaldi/u2"].text == "第二 句" and clips["kaldi/u2"].text_source == "kaldi"
    assert clips["kaldi/u3"].text_error and "pipe" in clips["kaldi/u3"].text_error
    assert clips["kaldi/u4"].audio is None
    assert scan.ignored == []  # listed audio is claimed by wav.scp, kaldi files are consumed


def test_mixed_formats_and_audio_only(tmp_path: Path) -> None:
    x = utterance(1.0)
    write(tmp_path / "a.flac", x, format="FLAC", text="一")
    write(tmp_path / "sub" / "b.ogg", x, format="OGG", subtype="VORBIS")
    write(tmp_path / "sub" / "deeper" / "c.mp3", x, format="MP3")
    scan = scan_inputs([tmp_path])
    clips = by_rel(scan)
    assert set(clips) == {"a", "sub/b", "sub/deeper/c"}
    assert scan.layouts == {"wav+lab": 1, "audio only": 2}


def test_gb18030_transcript_is_read(tmp_path: Path) -> None:
    write(tmp_path / "a.wav", utterance(1.0))
    (tmp_path / "a.lab").write_bytes("你好".encode("gb18030"))
    (clip,) = scan_inputs([tmp_path]).clips
    assert clip.text == "你好" and clip.text_error is None


@pytest.mark.parametrize("n", [0, 3])
def test_scan_is_sorted_and_deterministic(tmp_path: Path, n: int) -> None:
    for name in ["z", "a", "m"][: n or 3]:
        write(tmp_path / f"{name}.wav", np.zeros(1600, np.float32))
    rels = [c.rel for c in scan_inputs([tmp_path]).clips]
    assert rels == sorted(rels)
