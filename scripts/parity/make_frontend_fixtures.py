"""Write the front-end parity fixtures from upstream CosyVoice code (run by hand, never from tests).

Run with the upstream environment (torch + torchaudio + openai-whisper + wetext + inflect) after
writing a kit with OUR code:

    cosyml kit /tmp/kit                       # project venv
    /work/upstream/venv/bin/python scripts/parity/make_frontend_fixtures.py \
        --upstream /work/upstream/CosyVoice --kit /tmp/kit --out tests/fixtures/parity/frontend

What it records (inputs and upstream outputs, < 1 MB):
- three small wav files (16 kHz mono, 24 kHz stereo, 22.05 kHz mono) and the two kit ONNX files;
- torchaudio ``Resample`` (default sinc_interp_hann, width 6, rolloff 0.99) of each clip to 16 kHz and
  of the 16 kHz clip to 24 kHz;
- ``kaldi.fbank`` (upstream's CAM++ settings) + CMN and ``whisper.log_mel_spectrogram`` on the
  upstream-resampled audio;
- upstream ``CosyVoiceFrontEnd._extract_spk_embedding`` / ``_extract_speech_token`` on the wav files with
  the kit ONNX files (``load_wav`` is replaced by an equivalent soundfile reader, because torchaudio.load
  needs torchcodec in this torchaudio release);
- upstream ``CosyVoice2Tokenizer`` / ``CosyVoice3Tokenizer`` ids on the kit tokenizer, its special-token
  lists, and ``text_normalize`` (wetext) results for a few zh/en sentences.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

TEXTS = [
    "你好，世界！Hello world 123.",
    "今天是2024年3月5日，气温-3.5度。",
    "I have 3 apples and 1234 oranges, that's 2.5 kg.",
    "用四川话说这句话<|endofprompt|>[breath]好的。",
    "You are a helpful assistant.<|endofprompt|>Hi there [laughter] <strong>ok</strong>",
]
NORMALIZE_TEXTS = [
    "今天是2024年3月5日，气温-3.5度，面积是10m²。我们（大家）一起去【公园】散步吧，",
    "你好 世界 hello world. 这是第1句——第2句 - 结束",
    "It costs $12.30 on Jan 5, 2024 at 3:30pm. I have 1001 ideas.",
    "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。" * 4,
    "This is sentence one. This is sentence two! And is this three? " * 6,
    "Hello <|endofprompt|> 123",
]


def _clips() -> dict[str, tuple[np.ndarray, int]]:
    rng = np.random.default_rng(1234)

    def voice(n: int, sr: int, f0: float) -> np.ndarray:
        t = np.arange(n) / sr
        x = sum(np.sin(2 * np.pi * f0 * k * t * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))) / k for k in range(1, 6))
        env = 0.5 + 0.5 * np.sin(2 * np.pi * 1.7 * t) ** 2
        return (0.2 * x * env + 0.01 * rng.standard_normal(n)).astype(np.float32)

    stereo = np.stack([voice(24000 + 1234, 24000, 180.0), voice(24000 + 1234, 24000, 190.0)], axis=1)
    return {
        "a16k": (voice(16000 + 777, 16000, 120.0), 16000),
        "b24k_stereo": (stereo, 24000),
        "c22k": (voice(22050 - 333, 22050, 210.0), 22050),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", default="/work/upstream/CosyVoice")
    parser.add_argument("--matcha", default="/work/upstream/paimon/third_party/Matcha-TTS")
    parser.add_argument("--kit", required=True, help="a directory written by `cosyml kit`")
    parser.add_argument("--out", default="tests/fixtures/parity/frontend")
    args = parser.parse_args()
    sys.path[:0] = [args.upstream, args.matcha]

    import cosyvoice.cli.frontend as upstream_frontend
    import torchaudio
    import torchaudio.compliance.kaldi as kaldi
    import whisper
    from cosyvoice.tokenizer.tokenizer import get_qwen_tokenizer

    out, kit = Path(args.out), Path(args.kit)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("campplus.onnx", "speech_tokenizer_v2.onnx"):
        shutil.copy(kit / name, out / name)

    arrays: dict[str, np.ndarray] = {}
    for name, (samples, sr) in _clips().items():
        sf.write(out / f"{name}.wav", samples, sr, subtype="PCM_16")
        decoded, _ = sf.read(out / f"{name}.wav", dtype="float32", always_2d=True)  # what a reader sees
        audio = torch.from_numpy(decoded.T.copy())  # (channels, n)
        mono = audio.mean(dim=0, keepdim=True)
        wav16 = mono if sr == 16000 else torchaudio.transforms.Resample(sr, 16000)(mono)
        arrays[f"{name}.resampled_16k"] = wav16[0].numpy()
        if sr == 16000:
            arrays[f"{name}.resampled_24k"] = torchaudio.transforms.Resample(16000, 24000)(mono)[0].numpy()
        fbank = kaldi.fbank(wav16, num_mel_bins=80, dither=0, sample_frequency=16000)
        arrays[f"{name}.fbank_cmn"] = (fbank - fbank.mean(dim=0, keepdim=True)).numpy()
        arrays[f"{name}.whisper_mel"] = whisper.log_mel_spectrogram(wav16, n_mels=128)[0].numpy()

    def load_wav(path: str, target_sr: int) -> torch.Tensor:  # upstream load_wav without torchcodec
        data, sr = sf.read(path, dtype="float32", always_2d=True)
        speech = torch.from_numpy(data.T.copy()).mean(dim=0, keepdim=True)
        assert sr >= target_sr
        return torchaudio.transforms.Resample(sr, target_sr)(speech) if sr != target_sr else speech

    upstream_frontend.load_wav = load_wav
    import onnxruntime

    front = object.__new__(upstream_frontend.CosyVoiceFrontEnd)
    front.device = torch.device("cpu")
    option = onnxruntime.SessionOptions()
    option.intra_op_num_threads = 1
    front.campplus_session = onnxruntime.InferenceSession(
        str(out / "campplus.onnx"), option, providers=["CPUExecutionProvider"]
    )
    front.speech_tokenizer_session = onnxruntime.InferenceSession(
        str(out / "speech_tokenizer_v2.onnx"), option, providers=["CPUExecutionProvider"]
    )
    results: dict[str, object] = {"embeddings": {}, "speech_tokens": {}}
    for name in _clips():
        wav = str(out / f"{name}.wav")
        results["embeddings"][name] = front._extract_spk_embedding(wav)[0].tolist()
        results["speech_tokens"][name] = front._extract_speech_token(wav)[0][0].tolist()

    tokenizer_dir = str(kit / "CosyVoice-BlankEN")
    tok2 = get_qwen_tokenizer(tokenizer_dir, skip_special_tokens=True, version="cosyvoice2")
    tok3 = get_qwen_tokenizer(tokenizer_dir, skip_special_tokens=True, version="cosyvoice3")
    results["tokenizer"] = {
        "texts": TEXTS,
        "cosyvoice2_ids": [tok2.encode(t) for t in TEXTS],
        "cosyvoice3_ids": [tok3.encode(t) for t in TEXTS],
        "cosyvoice2_len": len(tok2.tokenizer),
        "cosyvoice3_len": len(tok3.tokenizer),
        "cosyvoice2_specials": tok2.special_tokens["additional_special_tokens"],
        "cosyvoice3_specials": tok3.special_tokens["additional_special_tokens"],
        "decoded": [tok2.decode(tok2.encode(t)) for t in TEXTS],
    }

    from wetext import Normalizer

    front.tokenizer = tok2
    front.allowed_special = "all"
    front.zh_tn_model = Normalizer(remove_erhua=False)
    front.en_tn_model = Normalizer()
    front.text_frontend = "wetext"
    import inflect

    front.inflect_parser = inflect.engine()
    results["normalize"] = {
        "texts": NORMALIZE_TEXTS,
        "no_split": [front.text_normalize(t, split=False) for t in NORMALIZE_TEXTS],
        "split": [front.text_normalize(t, split=True) for t in NORMALIZE_TEXTS],
    }
    numbers = [
        "0",
        "7",
        "13",
        "21",
        "100",
        "101",
        "999",
        "1000",
        "1001",
        "1100",
        "1234",
        "2024",
        "1000001",
        "12345678",
        "007",
        "123456789012",
    ]
    results["inflect"] = {n: inflect.engine().number_to_words(n) for n in numbers}

    commit = subprocess.run(["git", "-C", args.upstream, "rev-parse", "HEAD"], capture_output=True, text=True)
    results["meta"] = {
        "upstream": "FunAudioLLM/CosyVoice",
        "upstream_commit": commit.stdout.strip(),
        "torch": torch.__version__,
        "torchaudio": torchaudio.__version__,
        "whisper": getattr(whisper, "__version__", "unknown"),
        "note": "embeddings/tokens: upstream frontend methods with load_wav replaced by a soundfile reader",
    }
    np.savez_compressed(out / "features.npz", **arrays)
    (out / "upstream.json").write_text(json.dumps(results, ensure_ascii=False, indent=1), encoding="utf-8")
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {out} ({total / 1024:.0f} KiB), upstream commit {results['meta']['upstream_commit'][:7]}")


if __name__ == "__main__":
    main()
