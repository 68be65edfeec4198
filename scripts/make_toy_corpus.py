#!/usr/bin/env python3
"""Synthesise the committed toy corpus under ``examples/`` with espeak-ng.

Run once by hand (the output is committed); it is deterministic for a given espeak-ng build:

    apt-get install -y espeak-ng ffmpeg
    source scripts/env.sh && python scripts/make_toy_corpus.py --out examples
    python scripts/make_toy_corpus.py --out examples --only toy_stray     # one folder

What it writes (one "speaker": espeak-ng variant ``+f2``, pitch 60, speed 240 for every line):

- ``toy_speaker/``  the Genshin-style layout, ``<id>.wav`` + ``<id>.lab`` (16 kHz mono 16-bit):
  ``vo_zh_NNN`` Mandarin lines (voice ``cmn-latn-pinyin``, which reads Han characters with the
  right tones; the plain ``cmn`` voice reads tone digits as English) and ``vo_en_NNN`` English
  lines (``en-us``). Plus the junk real corpora have, one file each (``vo_x_*``); the reason
  ``cosyml prepare`` gives for each is in :data:`JUNK_REASONS`.
- ``toy_mp3/``      six mp3 clips with no transcripts (a user who only has audio).
- ``toy_long/``     one ~80 s recording (16 kHz mp3), sentences separated by pauses, for slicing.
- ``toy_stray/``    four ``vo_stray_NNN`` clips (``.wav`` + ``.lab``) of another voice (variant ``+m3``,
  pitch 20, speed 170: a low male voice): the "other character" a game dump mixes in. Tests copy them
  into the toy speaker's folder and expect ``cosyml extract``'s speaker check to flag them. Made from
  their own seed, so ``--only toy_stray`` rewrites them without touching the other folders.

All texts are our own. Audio gets a little seeded noise (-72 dBFS) and 0.08-0.15 s of lead/tail
silence so that trimming has something to do.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from cosyml.audio import resample

VOICE_ZH = "cmn-latn-pinyin+f2"
VOICE_EN = "en-us+f2"
PITCH = 60
SPEED = 240
SAMPLE_RATE = 16000
SEED = 20240601
# The stray voice: another espeak-ng variant, pitch and speed (a different "character").
STRAY_VOICE_ZH = "cmn-latn-pinyin+m3"
STRAY_VOICE_EN = "en-us+m3"
STRAY_PITCH = 20
STRAY_SPEED = 170
STRAY_SEED = 20261203

ZH_LINES = [
    "前面有宝箱，快过去！",
    "哇，这里的风景真美。",
    "我们今天去哪里冒险？",
    "肚子好饿，先吃饭吧。",
    "别担心，有我在呢。",
    "这个谜题有点难哦。",
    "小心，前面有怪物！",
    "你看，天上有流星。",
    "我才不是应急食品！",
    "这条路好像走过了。",
    "要不要休息一下？",
    "任务完成，回城吧！",
    "这把剑看起来很厉害。",
    "今天的委托是什么？",
    "好冷啊，快生火吧。",
    "那座山上有遗迹。",
    "我闻到了烤鱼的香味。",
    "你听，有人在唱歌。",
    "地图上标着一个红点。",
    "这里的人都很热情。",
    "我们去城里买东西吧。",
    "雨停了，出发吧！",
    "那边的灯亮起来了。",
    "别跑，把东西还回来！",
    "晚上的星空真漂亮。",
    "你的剑法进步了呢。",
    "我们一起去钓鱼吧。",
    "这个果子能吃吗？",
    "风车又开始转了。",
    "商人说明天再来。",
    "桥断了，得绕路走。",
    "终于爬到山顶了！",
    "这块石头会发光。",
    "门锁住了，找钥匙吧。",
    "我记得宝藏在北边。",
    "大家都在等我们呢。",
    "这片森林很安静。",
    "船马上就要开了。",
    "你的背包好重啊。",
    "这次一定能赢！",
    "快看，是一只小狐狸。",
    "我想吃甜甜花酿鸡。",
    "这封信是给你的。",
    "天快黑了，快回去吧。",
    "这里有一个秘密通道。",
    "我们迷路了吗？",
    "谢谢你帮了大忙。",
    "下一站是海边小镇。",
    "火把快灭了。",
    "这个声音是从哪来的？",
    "我飞累了，歇一会儿。",
    "那个人好奇怪哦。",
    "一起加油吧，伙伴！",
    "今天运气真好。",
    "书上写着古老的咒语。",
    "这杯茶好香啊。",
    "我们得赶快出发了。",
    "湖面上结冰了。",
    "明天见，晚安！",
    "你相信传说吗？",
]

EN_LINES = [
    "Hey, wait for me!",
    "Look, a treasure chest!",
    "I am not emergency food!",
    "Let's go to the city.",
    "That was a close one.",
    "Where are we going today?",
    "I smell something tasty.",
    "The bridge is broken.",
    "Good night, see you tomorrow.",
    "We make a great team!",
]

#: Junk file stem -> the reject reason ``cosyml prepare`` must give it (tests check this).
JUNK_REASONS = {
    "vo_x_placeholder": "placeholder_text",  # .lab holds "{NICKNAME}"
    "vo_x_empty_lab": "empty_text",  # .lab is empty
    "vo_x_no_lab": "no_text",  # audio, no .lab (transcribed when Whisper is given)
    "vo_x_too_long": "too_long",  # 31 s, 8 kHz mu-law wav, with a .lab
    "vo_x_silence": "mostly_silence",  # noise floor only, with a .lab
    "vo_x_truncated": "undecodable",  # wav cut after 40 bytes
    "vo_x_duplicate": "duplicate_audio",  # same samples as vo_en_003 (which sorts first and is kept)
    "vo_x_clipped": "clipped",  # speech x8, hard-clipped
    "vo_x_too_short": "too_short",  # one syllable, ~0.3 s
    "vo_x_orphan_lab": "no_audio",  # .lab with no audio
}
#: Accepted despite an unusual format: 48 kHz stereo (normalisation path).
STEREO_STEM = "vo_zh_stereo"

MP3_LINES = [
    ("clip_01", VOICE_ZH, "你好呀，旅行者。"),
    ("clip_02", VOICE_ZH, "今天天气真不错。"),
    ("clip_03", VOICE_ZH, "我们去森林里看看。"),
    ("clip_04", VOICE_EN, "Are you ready to go?"),
    ("clip_05", VOICE_ZH, "这个地方好神秘。"),
    ("clip_06", VOICE_ZH, "跟紧我，别走丢了。"),
]

LONG_LINES = [
    "大家好，欢迎来到今天的冒险日志。",
    "早上我们从城里出发，沿着河一直往东走。",
    "路上遇到了一位卖水果的老爷爷。",
    "他说东边的山谷里最近不太平。",
    "我们决定过去看一看。",
    "山谷里的风很大，吹得人睁不开眼睛。",
    "走了一会儿，我们发现了一个山洞。",
    "洞口有一块刻着字的石碑。",
    "上面写着，勇敢的人才能进去。",
    "我有点害怕，但还是跟着进去了。",
    "洞里面很黑，只能听到滴水的声音。",
    "突然，前面亮起了一道蓝色的光。",
    "原来是一只会发光的小精灵。",
    "它带着我们找到了出口。",
    "出来的时候，太阳已经快下山了。",
    "今天的冒险就到这里，我们明天见。",
    "记得早点休息，不要熬夜哦。",
    "晚安，祝你做个好梦。",
    "对了，下次我们去海边吧。",
    "听说那里的贝壳特别漂亮。",
    "还可以在沙滩上烤鱼吃。",
    "好啦，真的要说再见了。",
]


def speak(text: str, voice: str, pitch: int = PITCH, speed: int = SPEED) -> np.ndarray:
    """espeak-ng -> float32 mono at :data:`SAMPLE_RATE`."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(out), text],
            check=True,
        )
        data, sr = sf.read(str(out), dtype="float32")
    return resample(data, sr, SAMPLE_RATE) * 0.8


def with_margins(speech: np.ndarray, rng: np.random.Generator, lead: float, tail: float) -> np.ndarray:
    pad = lambda s: np.zeros(int(s * SAMPLE_RATE), np.float32)  # noqa: E731
    out = np.concatenate([pad(lead), speech, pad(tail)])
    noise = rng.standard_normal(out.shape[0]).astype(np.float32) * 10 ** (-72 / 20)
    return out + noise


def clip(text: str, voice: str, rng: np.random.Generator) -> np.ndarray:
    return with_margins(speak(text, voice), rng, rng.uniform(0.08, 0.15), rng.uniform(0.08, 0.15))


def write_pair(
    folder: Path,
    stem: str,
    audio: np.ndarray | None,
    text: str | None,
    rate: int = SAMPLE_RATE,
    subtype: str = "PCM_16",
) -> None:
    if audio is not None:
        sf.write(str(folder / f"{stem}.wav"), np.clip(audio, -1, 1), rate, subtype=subtype)
    if text is not None:
        (folder / f"{stem}.lab").write_text(text, encoding="utf-8")


def to_mp3(audio: np.ndarray, path: Path, bitrate: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "in.wav"
        sf.write(str(wav), audio, SAMPLE_RATE, subtype="PCM_16")
        subprocess.run(
            [
                "ffmpeg",
                "-nostdin",
                "-v",
                "error",
                "-y",
                "-i",
                str(wav),
                "-ac",
                "1",
                "-ar",
                str(SAMPLE_RATE),
                "-codec:a",
                "libmp3lame",
                "-b:a",
                bitrate,
                "-map_metadata",
                "-1",
                "-fflags",
                "+bitexact",
                "-flags:a",
                "+bitexact",
                str(path),
            ],
            check=True,
        )


def make_speaker(folder: Path, rng: np.random.Generator) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    kept: dict[str, np.ndarray] = {}
    for i, text in enumerate(ZH_LINES):
        kept[f"vo_zh_{i:03d}"] = audio = clip(text, VOICE_ZH, rng)
        write_pair(folder, f"vo_zh_{i:03d}", audio, text)
    for i, text in enumerate(EN_LINES):
        kept[f"vo_en_{i:03d}"] = audio = clip(text, VOICE_EN, rng)
        write_pair(folder, f"vo_en_{i:03d}", audio, text)

    # 48 kHz stereo, slightly different channels: must be accepted and normalised to 24 kHz mono.
    text = "好的，出发！"
    mono = resample(clip(text, VOICE_ZH, rng), SAMPLE_RATE, 48000)
    write_pair(folder, STEREO_STEM, np.stack([mono, mono * 0.9], axis=1), text, rate=48000)

    # Junk.
    write_pair(folder, "vo_x_placeholder", clip("旅行者，你终于来了！", VOICE_ZH, rng), "{NICKNAME}，你终于来了！")
    write_pair(folder, "vo_x_empty_lab", clip("我们走这边。", VOICE_ZH, rng), "")
    write_pair(folder, "vo_x_no_lab", clip("这里好像来过。", VOICE_ZH, rng), None)
    long_speech = np.concatenate([clip(t, VOICE_ZH, rng) for t in LONG_LINES[:8]])
    long_speech = np.concatenate([long_speech] * 2)[: int(31.0 * SAMPLE_RATE)]
    long_speech = np.pad(long_speech, (0, max(0, int(31.0 * SAMPLE_RATE) - long_speech.shape[0])))
    write_pair(
        folder,
        "vo_x_too_long",
        resample(long_speech, SAMPLE_RATE, 8000),
        "".join(LONG_LINES[:8]),
        rate=8000,
        subtype="ULAW",
    )
    silence = with_margins(np.zeros(int(2.0 * SAMPLE_RATE), np.float32), rng, 0.0, 0.0)
    write_pair(folder, "vo_x_silence", silence, "这句话没有声音。")
    write_pair(folder, "vo_x_truncated", clip("这个文件坏掉了。", VOICE_ZH, rng), "这个文件坏掉了。")
    path = folder / "vo_x_truncated.wav"
    path.write_bytes(path.read_bytes()[:40])
    write_pair(folder, "vo_x_duplicate", kept["vo_en_003"], EN_LINES[3])
    write_pair(folder, "vo_x_clipped", np.clip(clip("声音太大了！", VOICE_ZH, rng) * 8.0, -1, 1), "声音太大了！")
    write_pair(
        folder, "vo_x_too_short", with_margins(speak("嗯", VOICE_ZH)[: int(0.3 * SAMPLE_RATE)], rng, 0.02, 0.02), "嗯。"
    )
    write_pair(folder, "vo_x_orphan_lab", None, "这句话的音频丢了。")


def make_mp3(folder: Path, rng: np.random.Generator) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, voice, text in MP3_LINES:
        to_mp3(clip(text, voice, rng), folder / f"{stem}.mp3", "32k")


def make_long(folder: Path, rng: np.random.Generator) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for text in LONG_LINES:  # ~80 s
        parts.append(speak(text, VOICE_ZH))
        parts.append(np.zeros(int(rng.uniform(0.8, 1.4) * SAMPLE_RATE), np.float32))
    audio = with_margins(np.concatenate(parts), rng, 0.5, 0.0)
    to_mp3(audio, folder / "adventure_diary.mp3", "24k")


STRAY_LINES = [
    ("vo_stray_000", STRAY_VOICE_ZH, "站住，把宝物交出来！"),
    ("vo_stray_001", STRAY_VOICE_ZH, "这里是我的地盘。"),
    ("vo_stray_002", STRAY_VOICE_ZH, "哈哈，你们跑不掉了！"),
    ("vo_stray_003", STRAY_VOICE_EN, "Nobody passes this gate."),
]


def make_stray(folder: Path, rng: np.random.Generator) -> None:
    """Clips of another voice in the toy speaker's layout (see the module docstring)."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem, voice, text in STRAY_LINES:
        speech = speak(text, voice, STRAY_PITCH, STRAY_SPEED)
        write_pair(folder, stem, with_margins(speech, rng, rng.uniform(0.08, 0.15), rng.uniform(0.08, 0.15)), text)


PARTS = ("toy_speaker", "toy_mp3", "toy_long", "toy_stray")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="examples", help="output folder (default: examples)")
    parser.add_argument(
        "--only", action="append", choices=PARTS, help="write only this folder (repeatable; default: all)"
    )
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None or shutil.which("ffmpeg") is None:
        raise SystemExit("needs espeak-ng and ffmpeg: apt-get install -y espeak-ng ffmpeg")
    out = Path(args.out)
    parts = args.only or list(PARTS)
    for name in parts:
        if (out / name).exists():
            shutil.rmtree(out / name)
    # The first three share one random stream (in this order), so one of them alone is rebuilt by
    # replaying the others' draws; toy_stray has its own seed.
    if set(parts) & set(PARTS[:3]):
        rng = np.random.default_rng(SEED)
        scratch = Path(tempfile.mkdtemp())
        try:
            make_speaker(out / "toy_speaker" if "toy_speaker" in parts else scratch / "a", rng)
            make_mp3(out / "toy_mp3" if "toy_mp3" in parts else scratch / "b", rng)
            make_long(out / "toy_long" if "toy_long" in parts else scratch / "c", rng)
        finally:
            shutil.rmtree(scratch)
    if "toy_stray" in parts:
        make_stray(out / "toy_stray", np.random.default_rng(STRAY_SEED))
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out}: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
