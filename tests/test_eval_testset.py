"""The CV3-Eval layout reader: CV3's own quirks, bad input per item, our eval/ sets, the SFT set writer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cosyml.audio import write_wav
from cosyml.errors import InputError
from cosyml.evaluation.testset import (
    find_subsets,
    language_from_path,
    read_kaldi,
    read_subset,
    read_test_set,
    write_sft_subset,
)

REPO = Path(__file__).resolve().parents[1]


def _tone(path: Path, seconds: float = 0.5, sr: int = 16000) -> Path:
    t = np.arange(int(seconds * sr)) / sr
    write_wav(path, (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), sr)
    return path


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


@pytest.fixture()
def cv3_clone(tmp_path: Path) -> Path:
    """A miniature CV3-Eval checkout: repo-root-relative prompt paths with '//', a subset without `text`."""
    repo = tmp_path / "CV3-Eval"
    zh = repo / "data" / "zero_shot" / "zh"
    _tone(zh / "waveform" / "prompt_audio_1.wav")
    _tone(zh / "waveform" / "prompt_audio_2.wav")
    _write(zh / "text", "uttid_1 你好，世界。\nuttid_2\t今天  天气 很好\n\n")
    _write(zh / "prompt_text", "uttid_1 前面有宝箱。\nuttid_2 快过去！\n")
    _write(
        zh / "prompt_wav.scp",
        "uttid_1 data/zero_shot//zh/waveform/prompt_audio_1.wav\n"
        "uttid_2 data/zero_shot//zh/waveform/prompt_audio_2.wav\n",
    )
    en = repo / "data" / "zero_shot" / "en"  # as in the copy the reference read: no `text` here
    _tone(en / "waveform" / "prompt_audio_1.wav")
    _write(en / "prompt_text", "uttid_1 Hey look, a flying pig!\n")
    _write(en / "prompt_wav.scp", "uttid_1 data/zero_shot//en/waveform/prompt_audio_1.wav\n")
    to_en = repo / "data" / "cross_lingual_zeroshot" / "to_en"
    _write(to_en / "text", 'uttid_1 He said ""hello"" twice.\n')
    _write(to_en / "prompt_wav.scp", "uttid_1 data/zero_shot//zh/waveform/prompt_audio_1.wav\n")
    happy = repo / "data" / "emotion_zeroshot" / "zh" / "happy"
    _write(happy / "text", "uttid_1 太好了！\n")
    _write(happy / "prompt_wav.scp", "uttid_1 waveform/prompt_audio_9.wav\n")
    _tone(happy / "waveform" / "prompt_audio_9.wav")
    return repo


def test_reads_a_cv3_clone_with_double_slash_paths(cv3_clone: Path):
    subsets = {s.name: s for s in read_test_set(cv3_clone / "data")}
    assert sorted(subsets) == [
        "cross_lingual_zeroshot/to_en",
        "emotion_zeroshot/zh/happy",
        "zero_shot/en",
        "zero_shot/zh",
    ]
    zh = subsets["zero_shot/zh"]
    assert zh.language == "zh" and not zh.problems
    assert [i.utt for i in zh.items] == ["uttid_1", "uttid_2"]
    assert zh.items[1].text == "今天  天气 很好"  # split on the first whitespace (a tab here) only
    assert zh.items[0].prompt_text == "前面有宝箱。"
    assert zh.items[0].prompt_wav.resolve() == (cv3_clone / "data/zero_shot/zh/waveform/prompt_audio_1.wav").resolve()
    assert subsets["cross_lingual_zeroshot/to_en"].language == "en"  # the TARGET language
    assert subsets["cross_lingual_zeroshot/to_en"].items[0].prompt_wav.name == "prompt_audio_1.wav"
    assert subsets["emotion_zeroshot/zh/happy"].items[0].language == "zh"
    en = subsets["zero_shot/en"]
    assert not en.items and [(p.utt, p.reason) for p in en.problems] == [("uttid_1", "no_text_file")]
    # the subset folder itself as the root works too (paths still resolve through its parents)
    alone = read_subset(cv3_clone / "data" / "zero_shot" / "zh")
    assert alone.name == "zh" and len(alone.items) == 2 and alone.language == "zh"


def test_language_from_folder_names(tmp_path: Path):
    for rel, code in [("zero_shot/hard_zh", "zh"), ("x/to_ja", "ja"), ("emotion/en/sad", "en"), ("ko", "ko")]:
        (tmp_path / rel).mkdir(parents=True)
        assert language_from_path(tmp_path / rel, tmp_path) == code
    (tmp_path / "sft").mkdir()
    assert language_from_path(tmp_path / "sft", tmp_path) is None


def test_bad_items_are_reported_and_the_rest_is_usable(tmp_path: Path):
    sub = tmp_path / "set" / "zero_shot" / "zh"
    _tone(sub / "waveform" / "a.wav")
    _write(sub / "text", "u1 第一句。\nu2 第二句。\nu3 第三句。\nu4 第四句。\nu5 ！？\n")
    _write(
        sub / "prompt_wav.scp",
        "u1 waveform/a.wav\nu2 waveform/gone.wav\nu4 waveform/a.wav\nu5 waveform/a.wav\nu9 waveform/a.wav\n",
    )
    _write(sub / "language", "u4 xx\n")  # per-utterance codes; the others fall back to the folder name
    subset = read_subset(sub, tmp_path / "set")
    assert [i.utt for i in subset.items] == ["u1"]
    assert {p.utt: p.reason for p in subset.problems} == {
        "u2": "missing_prompt_wav",
        "u3": "no_prompt_entry",
        "u4": "unknown_language",
        "u5": "empty_text",
        "u9": "no_text_entry",
    }
    assert subset.size == 6
    assert "gone.wav" in next(p.detail for p in subset.problems if p.utt == "u2")
    with pytest.raises(InputError, match="no subset 'nope'"):
        read_test_set(tmp_path / "set", ["nope"])
    with pytest.raises(InputError, match="not found"):
        find_subsets(tmp_path / "missing")


def test_unknown_language_for_a_whole_subset(tmp_path: Path):
    sub = tmp_path / "misc"
    _write(sub / "text", "u1 hello\n")
    subset = read_subset(sub, tmp_path)
    assert subset.problems[0].reason == "unknown_language" and "language" in subset.problems[0].detail
    _write(sub / "language", "en\n")
    assert read_subset(sub, tmp_path).items[0].language == "en"


def test_our_eval_sets_are_complete():
    subsets = read_test_set(REPO / "eval")
    counts = {s.name: (s.language, len(s.items), len(s.problems)) for s in subsets}
    assert counts == {
        "cross_lingual/to_en": ("en", 10, 0),
        "cross_lingual/to_zh": ("zh", 10, 0),
        "expressive/en": ("en", 12, 0),
        "expressive/zh": ("zh", 12, 0),
        "hard/hard_en": ("en", 12, 0),
        "hard/hard_zh": ("zh", 14, 0),
        "instruct/en": ("en", 6, 0),
        "instruct/zh": ("zh", 10, 0),
        "zero_shot/en": ("en", 16, 0),
        "zero_shot/zh": ("zh", 16, 0),
    }
    inst = next(s for s in subsets if s.name == "instruct/zh")
    assert all(i.instruct and i.instruct.endswith("<|endofprompt|>") for i in inst.items)
    cross = next(s for s in subsets if s.name == "cross_lingual/to_en")
    assert all(i.prompt_wav is not None and "zh" in i.prompt_wav.name for i in cross.items)
    size = sum(p.stat().st_size for p in (REPO / "eval").rglob("*") if p.is_file())
    assert size < 1_000_000
    assert not list((REPO / "eval").rglob("*.py"))


def test_sft_subset_from_a_dev_split(tmp_path: Path):
    data = tmp_path / "DATA"
    for utt in ("toy_a", "toy_b", "toy_c"):
        _tone(data / "wavs" / f"{utt}.wav", 0.8, 24000)
    _write(data / "dev" / "wav.scp", "toy_a wavs/toy_a.wav\ntoy_b wavs/toy_b.wav\ntoy_c wavs/toy_c.wav\n")
    _write(data / "dev" / "text", "toy_a 前面有宝箱。\ntoy_b Look out!\ntoy_c 小心！\n")
    _write(data / "dev" / "utt2spk", "toy_a toy\ntoy_b toy\ntoy_c toy\n")
    _write(data / "dev" / "manifest.jsonl", json.dumps({"utt": "toy_c", "language": "ja"}) + "\n")
    subset = write_sft_subset(data, tmp_path / "out" / "sft")
    assert subset.name == "sft" and not subset.problems
    assert [(i.utt, i.language, i.speaker) for i in subset.items] == [
        ("toy_a", "zh", "toy"),
        ("toy_b", "en", "toy"),
        ("toy_c", "ja", "toy"),
    ]  # manifest language wins
    assert all(i.prompt_wav is None and i.reference_wav is not None and i.reference_wav.is_file() for i in subset.items)
    assert read_kaldi(tmp_path / "out" / "sft" / "text")["toy_b"] == "Look out!"
    with pytest.raises(InputError, match=r"wav\.scp"):
        write_sft_subset(tmp_path / "nothing", tmp_path / "out2")
