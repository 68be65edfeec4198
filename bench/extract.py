"""Benchmark: our ``extract`` vs upstream's one-utterance-at-a-time tools, same ONNX files.

    python bench/extract.py [--utts 48] [--threads 2] [--baseline-workers 8]

Baseline = the loop shape of upstream ``tools/extract_embedding.py`` then ``tools/extract_speech_token.py``:
two passes over ``wav.scp``; per utterance a job in a thread pool (upstream default 8 workers) that
reads the file, resamples to 16 kHz, computes the features and runs a batch-of-one ONNX call on a
shared CPU session with ``intra_op_num_threads=1``; then the same ``torch.save`` dict files. Run it in
an environment with torchaudio (an upstream venv, with this repo on PYTHONPATH) and the baseline computes
features with upstream's own calls (a fresh torchaudio ``Resample`` per clip, ``kaldi.fbank``,
``whisper.log_mel_spectrogram``); elsewhere it uses our bit-identical, faster functions, which makes
the ratio conservative.

    PYTHONPATH=. /path/to/upstream-venv/bin/python bench/extract.py --utts 96

Models: the kit's tiny ONNX files take microseconds, which would time only the work around the models
(``--models kit`` does that). By default the bench therefore exports wider stand-ins with the same interfaces: CAM++ as 6 conv layers of width 256 over
100 Hz frames; the tokenizer as 2 stride-2 convs + 6 conv layers of width 512 at 25 Hz. That is still
lighter than the real models (the real v2 tokenizer is ~124 M parameters), so real runs spend a larger
share in ONNX. Numbers are CPU timings on this machine; they are not assertions.

The last line times the ONNX calls alone (one clip per call, one thread) and prints the bound they set:
both methods must make them to produce the same numbers, so no method can beat the baseline by more than
baseline time / (ONNX CPU time / cores) on the CPU. On a GPU the tokenizer batches, and that bound does
not apply.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch

from cosyml.audio import load_mono, write_wav
from cosyml.config import ExtractConfig
from cosyml.data.kaldi import read_kaldi_map
from cosyml.features.extract import extract
from cosyml.features.fbank import campplus_features
from cosyml.features.onnx_runtime import make_session
from cosyml.features.whisper_mel import log_mel
from cosyml.kit.frontend import export_campplus, export_speech_tokenizer


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def make_corpus(root: Path, utts: int, seed: int = 0) -> Path:
    """``utts`` clips of 1-8 s at 24 kHz (the prepare stage's output format) in root/train."""
    rng = np.random.default_rng(seed)
    split = root / "train"
    split.mkdir(parents=True)
    scp, u2s = [], []
    for i in range(utts):
        dur = float(rng.uniform(1.0, 8.0))
        t = np.arange(int(24000 * dur)) / 24000
        f0 = rng.uniform(100, 250)
        wav = 0.2 * np.sin(2 * np.pi * f0 * t * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(1, 4) * t)))
        write_wav(split / f"u{i:04d}.wav", wav + 0.01 * rng.standard_normal(len(t)), 24000)
        scp.append(f"spk_{i:04d} {(split / f'u{i:04d}.wav').resolve()}")
        u2s.append(f"spk_{i:04d} spk")
    (split / "wav.scp").write_text("\n".join(scp) + "\n")
    (split / "utt2spk").write_text("\n".join(u2s) + "\n")
    return split


def _our_features() -> tuple[Callable[[str], np.ndarray], Callable[[str], np.ndarray | None]]:
    def fbank(path: str) -> np.ndarray:
        return campplus_features([load_mono(path, 16000)])[0]

    def mel(path: str) -> np.ndarray | None:
        wav16 = load_mono(path, 16000)
        return None if len(wav16) / 16000 > 30 else log_mel(wav16)[None]

    return fbank, mel


def _torchaudio_features() -> tuple[Callable[[str], np.ndarray], Callable[[str], np.ndarray | None]]:
    """Upstream's per-clip feature path: decode, a fresh torchaudio Resample per clip, kaldi.fbank + CMN;
    whisper.log_mel_spectrogram on a torch tensor. Only in an environment with torchaudio (the upstream venv)."""
    import soundfile as sf
    import torchaudio
    import whisper

    def load16(path: str) -> torch.Tensor:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
        audio = torch.from_numpy(data.T.copy())
        if sr != 16000:
            audio = torchaudio.transforms.Resample(orig_freq=sr, new_freq=16000)(audio)
        return audio.mean(dim=0, keepdim=True) if audio.shape[0] > 1 else audio

    def fbank(path: str) -> np.ndarray:
        feat = torchaudio.compliance.kaldi.fbank(load16(path), num_mel_bins=80, dither=0, sample_frequency=16000)
        return (feat - feat.mean(dim=0, keepdim=True)).numpy()

    def mel(path: str) -> np.ndarray | None:
        audio = load16(path)
        if audio.shape[1] / 16000 > 30:
            return None
        return whisper.log_mel_spectrogram(audio, n_mels=128).numpy()

    return fbank, mel


def upstream_style(split: Path, model_dir: Path, workers: int, torchaudio_path: bool) -> float:
    """Two one-at-a-time passes like upstream's tools; returns seconds."""
    started = time.perf_counter()
    utt2wav, utt2spk = read_kaldi_map(split / "wav.scp"), read_kaldi_map(split / "utt2spk")
    campplus = make_session(model_dir / "campplus.onnx", "cpu", num_threads=1)
    tokenizer = make_session(model_dir / "speech_tokenizer_v2.onnx", "cpu", num_threads=1)
    fbank_of, mel_of = _torchaudio_features() if torchaudio_path else _our_features()

    def embedding_job(utt: str) -> tuple[str, list[float]]:
        feat = fbank_of(utt2wav[utt])
        out = campplus.run(None, {campplus.get_inputs()[0].name: feat[None]})[0]
        return utt, out.flatten().tolist()

    def token_job(utt: str) -> tuple[str, list[int]]:
        mel = mel_of(utt2wav[utt])
        if mel is None:
            return utt, []
        inputs = tokenizer.get_inputs()
        out = tokenizer.run(None, {inputs[0].name: mel, inputs[1].name: np.array([mel.shape[2]], np.int32)})[0]
        return utt, out.flatten().tolist()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        utt2embedding: dict[str, list[float]] = {}
        spk2vecs: dict[str, list[list[float]]] = {}
        for future in as_completed([pool.submit(embedding_job, u) for u in utt2wav]):
            utt, vec = future.result()
            utt2embedding[utt] = vec
            spk2vecs.setdefault(utt2spk[utt], []).append(vec)
        spk2embedding = {k: torch.tensor(v).mean(dim=0).tolist() for k, v in spk2vecs.items()}
        torch.save(utt2embedding, split / "base_utt2embedding.pt")
        torch.save(spk2embedding, split / "base_spk2embedding.pt")
        utt2speech_token = dict(f.result() for f in as_completed([pool.submit(token_job, u) for u in utt2wav]))
        torch.save(utt2speech_token, split / "base_utt2speech_token.pt")
    return time.perf_counter() - started


def onnx_seconds(split: Path, model_dir: Path) -> float:
    """Single-thread CPU seconds of the ONNX calls alone (both models, one clip per call): work that any
    method producing the same numbers from the same files must do, whatever it does around it."""
    fbank_of, mel_of = _our_features()
    paths = list(read_kaldi_map(split / "wav.scp").values())
    fbanks, mels = [fbank_of(p) for p in paths], [m for m in map(mel_of, paths) if m is not None]
    campplus = make_session(model_dir / "campplus.onnx", "cpu", num_threads=1)
    tokenizer = make_session(model_dir / "speech_tokenizer_v2.onnx", "cpu", num_threads=1)
    started = time.process_time()
    for f in fbanks:
        campplus.run(None, {campplus.get_inputs()[0].name: f[None]})
    inputs = tokenizer.get_inputs()
    for m in mels:
        tokenizer.run(None, {inputs[0].name: m, inputs[1].name: np.array([m.shape[2]], np.int32)})
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utts", type=int, default=48)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="our worker threads")
    parser.add_argument("--baseline-workers", type=int, default=8, help="upstream's --num_thread default")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--models",
        choices=("wide", "kit"),
        default="wide",
        help="wide stand-ins (default) or the tiny kit's ONNX files (`cosyml kit`)",
    )
    parser.add_argument(
        "--baseline-features",
        choices=("auto", "torchaudio", "ours"),
        default="auto",
        help="baseline feature code: upstream's torchaudio/whisper calls (needs torchaudio: run in an upstream "
        "venv) or ours (bit-identical, faster, so the ratio is conservative); auto = torchaudio when importable",
    )
    args = parser.parse_args()
    torchaudio_path = args.baseline_features == "torchaudio" or (
        args.baseline_features == "auto" and importlib.util.find_spec("torchaudio") is not None
    )
    os.environ["COSYML_TRACKING"] = "off"

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = root / "model"
        if args.models == "wide":
            export_campplus(model_dir / "campplus.onnx", seed=0, width=256, depth=6, kind="random")
            export_speech_tokenizer(model_dir / "speech_tokenizer_v2.onnx", seed=0, width=512, depth=6)
        else:  # the tiny kit's own files: ONNX is nearly free, so this times everything around it
            export_campplus(model_dir / "campplus.onnx")
            export_speech_tokenizer(model_dir / "speech_tokenizer_v2.onnx")
        split = make_corpus(root / "data", args.utts)
        audio_s = sum(len(load_mono(p, 24000)) / 24000 for p in read_kaldi_map(split / "wav.scp").values())
        cfg = ExtractConfig(batch_size=args.batch_size, num_threads=1, workers=args.workers, device="cpu")
        base_times, ours_times, base_cpu, ours_cpu = [], [], [], []
        for _ in range(args.repeats):  # interleaved, so both see the same background load
            cpu = time.process_time()
            base_times.append(upstream_style(split, model_dir, args.baseline_workers, torchaudio_path))
            base_cpu.append(time.process_time() - cpu)
            for name in ("utt2embedding.pt", "spk2embedding.pt", "utt2speech_token.pt", "extract_report.json"):
                (split / name).unlink(missing_ok=True)
            started, cpu = time.perf_counter(), time.process_time()
            extract(root / "data", model_dir, cfg, splits=("train",), progress=False)
            ours_times.append(time.perf_counter() - started)
            ours_cpu.append(time.process_time() - cpu)

        with _one_torch_thread():
            onnx_cpu = onnx_seconds(split, model_dir)
        ours_tok = torch.load(split / "utt2speech_token.pt", weights_only=True)
        base_tok = torch.load(split / "base_utt2speech_token.pt", weights_only=True)
        ours_emb = torch.load(split / "utt2embedding.pt", weights_only=True)
        base_emb = torch.load(split / "base_utt2embedding.pt", weights_only=True)
        same_tokens = all(ours_tok[u] == base_tok[u] for u in base_tok)
        emb_err = max(float(np.abs(np.array(ours_emb[u]) - np.array(base_emb[u])).max()) for u in base_emb)

    base, ours = min(base_times), min(ours_times)
    load = os.getloadavg()[0]
    print(
        f"models: {args.models}; clips: {args.utts} ({audio_s:.0f} s of audio), cores: {os.cpu_count()}, load average: {load:.1f}; "
        f"ours: {args.workers} workers x 1 ORT thread, batch {args.batch_size}; "
        f"baseline: pool of {args.baseline_workers} x intra_op 1, "
        f"features by {'torchaudio/whisper (upstream code path)' if torchaudio_path else 'our functions'}"
    )
    fmt = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    print(
        f"upstream-style one at a time: wall {base:.2f} s ({audio_s / base:.0f}x realtime) [{fmt(base_times)}], "
        f"CPU {min(base_cpu):.2f} s"
    )
    print(
        f"cosyml extract:               wall {ours:.2f} s ({audio_s / ours:.0f}x realtime) [{fmt(ours_times)}], "
        f"CPU {min(ours_cpu):.2f} s"
    )
    print(
        f"speed-up: wall {base / ours:.2f}x, CPU time {min(base_cpu) / min(ours_cpu):.2f}x; "
        f"identical tokens: {same_tokens}; max |embedding diff|: {emb_err:.2e}"
    )
    cores = min(os.cpu_count() or 1, args.workers)
    print(
        f"ONNX calls alone: CPU {onnx_cpu:.2f} s = {onnx_cpu / min(base_cpu):.0%} of the baseline's CPU time; "
        f"bound for any method making the same ONNX calls on {cores} cores: wall {base / (onnx_cpu / cores):.2f}x, "
        f"CPU time {min(base_cpu) / onnx_cpu:.2f}x"
    )


if __name__ == "__main__":
    main()
