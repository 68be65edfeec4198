"""The ffmpeg fallback of :func:`cosyml.audio.read_audio`: formats libsndfile cannot read (AAC in .m4a
here) decode through the real ffmpeg CLI at their native rate, mono; without ffmpeg, or for a broken
file, the error is one line naming the file."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cosyml.audio import audio_info, read_audio, write_wav
from cosyml.errors import InputError

pytestmark = pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None, reason="needs the ffmpeg CLI"
)

RATE = 22050
HZ = 440.0


@pytest.fixture()
def m4a(tmp_path: Path) -> Path:
    t = np.arange(int(RATE * 1.0)) / RATE
    stereo = np.stack([0.4 * np.sin(2 * np.pi * HZ * t), 0.4 * np.sin(2 * np.pi * HZ * t)]).astype(np.float32)
    wav = tmp_path / "tone.wav"
    write_wav(wav, stereo.T, RATE)  # (n, 2): two identical channels
    out = tmp_path / "tone.m4a"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(wav), "-c:a", "aac", "-b:a", "96k", str(out)], check=True
    )
    return out


def test_an_m4a_file_decodes_through_ffmpeg_mono_at_its_own_rate(m4a: Path) -> None:
    assert audio_info(m4a) is None  # libsndfile cannot read it: the fallback is what decodes it
    audio = read_audio(m4a)
    assert audio.sample_rate == RATE and audio.num_channels == 1 and audio.samples.dtype == np.float32
    assert 0.95 <= audio.duration_s <= 1.1  # AAC adds priming/padding frames
    spectrum = np.abs(np.fft.rfft(audio.samples))
    peak_hz = np.argmax(spectrum) * RATE / len(audio.samples)
    assert abs(peak_hz - HZ) < 5.0
    # ffmpeg's stereo-to-mono downmix is (L + R) / sqrt(2), not the mean: two equal channels of RMS
    # 0.4 / sqrt(2) give 0.4 (3 dB above the soundfile path's mean downmix; prepare peak-normalises clips)
    rms = float(np.sqrt(np.mean(audio.samples**2)))
    assert 0.36 < rms < 0.44


def test_without_ffmpeg_or_with_a_broken_file_the_error_is_one_line(
    m4a: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken.m4a"
    broken.write_bytes(b"\0\0\0\x18ftypM4A " + bytes(64))
    with pytest.raises(InputError) as info:
        read_audio(broken)
    assert str(info.value).startswith(f"{broken}: cannot decode audio") and "\n" not in str(info.value)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no ffmpeg on PATH
    with pytest.raises(InputError, match=r"re-encode it as wav or flac") as info:
        read_audio(m4a)
    assert "\n" not in str(info.value)


def test_the_bytes_of_a_file_decode_as_the_file_does(tmp_path: Path) -> None:
    """One decoder for files and for the wav bytes a parquet shard holds (training batches read those)."""
    import soundfile as sf

    stereo = np.stack([np.linspace(-0.5, 0.5, 2400), np.linspace(0.5, -0.5, 2400)]).astype(np.float32)
    sf.write(tmp_path / "s.wav", stereo.T, 24000, subtype="PCM_16")  # (frames, channels)
    data = (tmp_path / "s.wav").read_bytes()
    from_file, from_bytes = read_audio(tmp_path / "s.wav"), read_audio(data)
    assert from_bytes.sample_rate == from_file.sample_rate == 24000
    assert from_bytes.samples.shape == (2, 2400) and np.array_equal(from_bytes.samples, from_file.samples)
    assert audio_info(data) == audio_info(tmp_path / "s.wav") == (2400, 24000)
    assert audio_info(b"not audio") is None
    with pytest.raises(InputError, match=r"^audio bytes: cannot decode \("):
        read_audio(b"not audio")
