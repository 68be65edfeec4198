"""A bad-input corpus, made at test time: each kind of junk from issues 15 (items 14-16) and 17
(items 6-7), written next to a copy of a good corpus.

``make_good(folder)`` copies a subset of ``examples/toy_speaker`` (clean wav+lab clips). ``KINDS`` maps
a kind to a function that adds that junk to an input folder and returns what ``prepare`` must do with
it: ``Expect(rejects={source suffix: reason}, accepted={source suffix: text})``. Everything is small
and deterministic (fixed seeds), so the files are never committed.
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "examples" / "toy_speaker"
RATE = 24000


@dataclass
class Expect:
    """Outcome of one kind. Keys are endings of ``source`` fields (as printed: non-UTF-8 bytes as \\xNN)."""

    rejects: dict[str, str] = field(default_factory=dict)  # source suffix -> reason
    accepted: dict[str, str | None] = field(default_factory=dict)  # source suffix -> exact text (None: any)
    either: list[str] = field(default_factory=list)  # accepted or rejected, but accounted for


def make_good(folder: Path, count: int = 12) -> list[str]:
    """Copy ``count`` clean toy clips (zh and en alternately) into ``folder``; returns their stems."""
    stems = sorted(p.stem for p in TOY.glob("vo_zh_*.wav"))[: count // 2]
    stems += sorted(p.stem for p in TOY.glob("vo_en_*.wav"))[: count - len(stems)]
    folder.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        for ext in (".wav", ".lab"):
            shutil.copyfile(TOY / f"{stem}{ext}", folder / f"{stem}{ext}")
    return stems


def speech(seconds: float = 1.5, seed: int = 0, rate: int = RATE) -> np.ndarray:
    """Speech-like float32 (n,): harmonic bursts with gaps, 0.2 s silence at both ends."""
    rng = np.random.default_rng(seed)
    n, burst, gap = int(seconds * rate), int(0.18 * rate), int(0.06 * rate)
    out = np.zeros(n, np.float32)
    t = np.arange(burst) / rate
    envelope = np.sin(np.pi * t / t[-1]) ** 0.5
    pos = 0
    while pos + burst <= n:
        f0 = rng.uniform(120, 300)
        wave = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.28)) / k for k in range(1, 6))
        out[pos : pos + burst] = wave * envelope
        pos += burst + gap
    out = out / np.abs(out).max() * 0.4
    pad = np.zeros(int(0.2 * rate), np.float32)
    return np.concatenate([pad, out, pad])


def _wav(path: Path, samples: np.ndarray, text: str | None = None, subtype: str = "PCM_16", rate: int = RATE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, rate, subtype=subtype)
    if text is not None:
        path.with_suffix(".lab").write_text(text, encoding="utf-8")


def _bytes_name(folder: Path, name: bytes) -> Path:
    """A path whose file name is these raw bytes (not UTF-8: Python holds it as surrogate escapes)."""
    return Path(os.fsdecode(os.path.join(os.fsencode(folder), name)))


# -- the kinds ------------------------------------------------------------------------------------
def latin1_name(raw: Path) -> Expect:
    wav = _bytes_name(raw, b"caf\xe9.wav")
    sf.write(os.fsencode(wav), speech(seed=1), RATE, subtype="PCM_16")
    _bytes_name(raw, b"caf\xe9.lab").write_text("咖啡馆", encoding="utf-8")
    return Expect(accepted={"caf\\xe9.wav": "咖啡馆"})


def gbk_name(raw: Path) -> Expect:
    sf.write(os.fsencode(_bytes_name(raw, "声音".encode("gbk") + b".wav")), speech(seed=2), RATE)
    _bytes_name(raw, "声音".encode("gbk") + b".lab").write_bytes("声音测试".encode("gbk"))
    return Expect(accepted={"\\xc9\\xf9\\xd2\\xf4.wav": "声音测试"})


def gbk_wav_scp(raw: Path) -> Expect:
    kaldi = raw / "kaldi_gbk"
    _wav(kaldi / "音频" / "一.wav", speech(seed=3))
    (kaldi / "wav.scp").write_bytes("k1 音频/一.wav\n".encode("gbk"))
    (kaldi / "text").write_bytes("k1 第一句话\n".encode("gbk"))
    return Expect(accepted={"kaldi_gbk/wav.scp:k1": "第一句话"})


def undecodable_kaldi_line(raw: Path) -> Expect:
    kaldi = raw / "kaldi_bad"
    _wav(kaldi / "a.wav", speech(seed=4))
    (kaldi / "wav.scp").write_bytes(b"ka a.wav\n\xff\xfe\xff bad.wav\n")
    (kaldi / "text").write_text("ka 好的\n", encoding="utf-8")
    return Expect(rejects={"kaldi_bad/wav.scp:line2": "bad_kaldi_line"}, accepted={"kaldi_bad/wav.scp:ka": "好的"})


def duplicate_kaldi_keys(raw: Path) -> Expect:
    kaldi = raw / "kaldi_dup"
    _wav(kaldi / "x.wav", speech(seed=5))
    _wav(kaldi / "y.wav", speech(seed=6))
    _wav(kaldi / "z.wav", speech(seed=7))
    (kaldi / "wav.scp").write_text("d x.wav\nd y.wav\ne z.wav\n", encoding="utf-8")
    (kaldi / "text").write_text("d 第一\ne 第三\ne 第三遍\n", encoding="utf-8")
    return Expect(rejects={"kaldi_dup/wav.scp:d": "bad_kaldi_line", "kaldi_dup/wav.scp:e": "bad_kaldi_line"})


def empty_kaldi_path(raw: Path) -> Expect:
    kaldi = raw / "kaldi_empty"
    kaldi.mkdir(parents=True)
    (kaldi / "wav.scp").write_text("nopath\n", encoding="utf-8")
    (kaldi / "text").write_text("nopath 没有路径\n", encoding="utf-8")
    return Expect(rejects={"kaldi_empty/wav.scp:nopath": "bad_kaldi_line"})


def kaldi_segments(raw: Path) -> Expect:
    kaldi = raw / "kaldi_seg"
    _wav(kaldi / "rec.wav", np.concatenate([speech(1.6, seed=8), speech(1.8, seed=9)]))
    (kaldi / "wav.scp").write_text("rec rec.wav\n", encoding="utf-8")
    (kaldi / "segments").write_text("s1 rec 0.0 2.0\ns2 rec 2.0 4.2\ns3 rec 9.0 10.0\ns4 nope 0 1\n", encoding="utf-8")
    (kaldi / "text").write_text("s1 第一段\ns2 第二段\ns3 不存在\ns4 无\n", encoding="utf-8")
    return Expect(
        accepted={"kaldi_seg/segments:s1": "第一段", "kaldi_seg/segments:s2": "第二段"},
        rejects={"kaldi_seg/segments:s3": "bad_kaldi_line", "kaldi_seg/segments:s4": "bad_kaldi_line"},
    )


def float32_wav(raw: Path) -> Expect:
    _wav(raw / "float.wav", speech(seed=10), "浮点", subtype="FLOAT")
    return Expect(accepted={"float.wav": "浮点"})


def nan_wav(raw: Path) -> Expect:
    x = speech(seed=11)
    x[1000:1100] = np.nan
    _wav(raw / "nan.wav", x, "坏数", subtype="FLOAT")
    return Expect(rejects={"nan.wav": "undecodable"})


def lying_header(raw: Path) -> Expect:
    """A RIFF header whose data chunk claims 10x the bytes the file holds."""
    pcm = (speech(seed=12) * 32767).astype("<i2").tobytes()
    header = (
        b"RIFF"
        + struct.pack("<I", 36 + len(pcm) * 10)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, RATE, RATE * 2, 2, 16)
        + b"data"
        + struct.pack("<I", len(pcm) * 10)
    )
    (raw / "liar.wav").write_bytes(header + pcm)
    (raw / "liar.lab").write_text("说谎", encoding="utf-8")
    return Expect(either=["liar.wav"])


def one_hz_header(raw: Path) -> Expect:
    """A valid wav of 24000 samples whose header says 1 Hz (6.7 hours): rejected before decoding."""
    sf.write(str(raw / "onehz.wav"), speech(seed=13)[:24000], 1, subtype="PCM_16")
    (raw / "onehz.lab").write_text("一赫兹", encoding="utf-8")
    return Expect(rejects={"onehz.wav": "undecodable"})


def directory_named_wav(raw: Path) -> Expect:
    (raw / "folder.wav").mkdir()
    (raw / "folder.wav" / "inside.txt").write_text("not audio", encoding="utf-8")
    return Expect()


def name_with_spaces(raw: Path) -> Expect:
    _wav(raw / "with  spaces here.wav", speech(seed=14), "空格")
    return Expect(accepted={"with  spaces here.wav": "空格"})


def name_with_newline(raw: Path) -> Expect:
    _wav(raw / "line\nbreak.wav", speech(seed=15), "换行")
    return Expect(accepted={"line\nbreak.wav": "换行"})


def utf16_no_bom(raw: Path) -> Expect:
    _wav(raw / "u16en.wav", speech(seed=16))
    (raw / "u16en.lab").write_bytes("Hello there.".encode("utf-16-le"))
    _wav(raw / "u16zh.wav", speech(seed=17))
    (raw / "u16zh.lab").write_bytes("你好，世界。".encode("utf-16-le"))
    return Expect(accepted={"u16en.wav": "Hello there.", "u16zh.wav": "你好，世界。"})


def punctuation_only(raw: Path) -> Expect:
    _wav(raw / "punct.wav", speech(seed=18), "……！？")
    return Expect(rejects={"punct.wav": "no_words"})


def emoji_only(raw: Path) -> Expect:
    _wav(raw / "emoji.wav", speech(seed=19), "😀🎉")
    return Expect(rejects={"emoji.wav": "no_words"})


def control_characters(raw: Path) -> Expect:
    _wav(raw / "ctrl.wav", speech(seed=20), "你\x07好\x7f")
    _wav(raw / "ansi.wav", speech(seed=21), "\x1b[31m红色\x1b[0m")
    _wav(raw / "escaped.wav", speech(seed=22), "第一行\\n第二行")
    return Expect(rejects={"ctrl.wav": "bad_characters", "ansi.wav": "bad_characters", "escaped.wav": "bad_characters"})


def special_tokens(raw: Path) -> Expect:
    _wav(raw / "tok1.wav", speech(seed=23), "你好<|endofprompt|>世界")
    _wav(raw / "tok2.wav", speech(seed=24), "<|im_start|>hello")
    return Expect(rejects={"tok1.wav": "special_token", "tok2.wav": "special_token"})


def huge_transcript(raw: Path) -> Expect:
    _wav(raw / "huge.wav", speech(seed=25))
    (raw / "huge.lab").write_text("很长" * (5 * 1024 * 1024 // 3), encoding="utf-8")  # ~10 MB
    return Expect(rejects={"huge.wav": "text_too_long"})


def white_noise(raw: Path) -> Expect:
    rng = np.random.default_rng(26)
    _wav(raw / "noise.wav", (rng.standard_normal(RATE * 2) * 0.2).astype(np.float32), "Noise.")
    return Expect(rejects={"noise.wav": "noise"})


def dc_offset(raw: Path) -> Expect:
    _wav(raw / "dc.wav", speech(seed=27) * 0.5 + 0.4, "直流")
    return Expect(accepted={"dc.wav": "直流"})


def same_stem_other_format(raw: Path) -> Expect:
    """``vo_zh_000.flac`` beside the good ``vo_zh_000.wav``: both kept, the wav keeps its id."""
    sf.write(str(raw / "vo_zh_000.flac"), speech(seed=28), RATE, format="FLAC")
    return Expect(either=["vo_zh_000.flac"])  # it shares the .lab: accepted with that text


def symlink_loop(raw: Path) -> Expect:
    (raw / "loop").mkdir()
    os.symlink("..", raw / "loop" / "up")
    os.symlink(".", raw / "loop" / "self")
    return Expect()


def empty_wav(raw: Path) -> Expect:
    _wav(raw / "empty.wav", np.zeros(0, np.float32), "空")
    return Expect(rejects={"empty.wav": "undecodable"})


def more_good_clips(raw: Path) -> Expect:
    """Plain new good clips (their ids sort before and after the old ones)."""
    for i, name in enumerate(("aaa_new", "zzz_new", "vo_zh_0005b")):
        _wav(raw / f"{name}.wav", speech(seed=30 + i), f"新句子{i}")
    return Expect(accepted={f"{n}.wav": f"新句子{i}" for i, n in enumerate(("aaa_new", "zzz_new", "vo_zh_0005b"))})


KINDS: dict[str, Callable[[Path], Expect]] = {
    f.__name__: f
    for f in (
        latin1_name,
        gbk_name,
        gbk_wav_scp,
        undecodable_kaldi_line,
        duplicate_kaldi_keys,
        empty_kaldi_path,
        kaldi_segments,
        float32_wav,
        nan_wav,
        lying_header,
        one_hz_header,
        directory_named_wav,
        name_with_spaces,
        name_with_newline,
        utf16_no_bom,
        punctuation_only,
        emoji_only,
        control_characters,
        special_tokens,
        huge_transcript,
        white_noise,
        dc_offset,
        same_stem_other_format,
        symlink_loop,
        empty_wav,
        more_good_clips,
    )
}


def make_all(raw: Path) -> Expect:
    """Every kind in one folder (the good corpus must already be there)."""
    total = Expect()
    for make in KINDS.values():
        e = make(raw)
        total.rejects.update(e.rejects)
        total.accepted.update(e.accepted)
        total.either.extend(e.either)
    return total
