"""Speed of evaluation ASR: our batched Whisper decoding vs a per-file ``model.transcribe`` loop.

    OMP_NUM_THREADS=2 python bench/evaluate.py [--dims tiny] [--utts 16] [--device cpu]

Both sides run the same random-weight Whisper on the same ``--utts`` toy-speaker clips (zh and en,
16 kHz, 1-2 s each) with the same settings: language forced, temperature 0 (no fallback), no
timestamps, no conditioning on earlier text, exactly ``--max-tokens`` tokens per utterance (end-of-text is
made unreachable in the random weights, so the cap plays the part of a real transcript's length). The loop is
what CV3-Eval's ``run_wer.py`` does (one ``transcribe`` per file); ours pads every clip to the 30 s
window and decodes ``--batch-size`` of them per forward. Rounds alternate between the two and the best
of ``--repeats`` is kept. Random weights: the numbers measure throughput, not accuracy.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cosyml.audio import load_mono
from cosyml.devices import resolve_device
from cosyml.evaluation.asr import WhisperASR, to_simplified

ROOT = Path(__file__).resolve().parents[1]

# (n_audio_state, heads, layers): "kit" is cosyml's tiny test model; the others match Whisper's own sizes.
DIMS = {"kit": (64, 2, 2), "tiny": (384, 6, 4), "base": (512, 8, 6), "small": (768, 12, 12)}


def random_whisper(size: str, device: str, seed: int = 0):
    from whisper.model import ModelDimensions, Whisper

    state, heads, layers = DIMS[size]
    dims = ModelDimensions(
        n_mels=128,
        n_audio_ctx=1500,
        n_audio_state=state,
        n_audio_head=heads,
        n_audio_layer=layers,
        n_vocab=51866,
        n_text_ctx=448,
        n_text_state=state,
        n_text_head=heads,
        n_text_layer=layers,
    )
    torch.manual_seed(seed)
    model = Whisper(dims)
    # TextDecoder.positional_embedding is torch.empty (checkpoints overwrite it): give it real values
    torch.nn.init.normal_(model.decoder.positional_embedding, std=1.0)
    # a zero end-of-text embedding gives that token logit 0, below the top random logit: every utterance
    # then decodes --max-tokens tokens, standing in for a real transcript (random weights would often
    # stop at once, and the bench would time the encoder alone)
    from whisper.tokenizer import get_tokenizer

    eot = get_tokenizer(True, num_languages=model.num_languages).eot
    with torch.no_grad():
        model.decoder.token_embedding.weight[eot] = 0.0
    return model.to(device).eval()  # fp32 weights; whisper's layers cast them to fp16 input on CUDA


def clips(count: int) -> tuple[list[np.ndarray], list[str]]:
    folder = ROOT / "examples" / "toy_speaker"
    files = sorted(folder.glob("vo_zh_0*.wav"))[: count // 2] + sorted(folder.glob("vo_en_0*.wav"))
    files = files[:count]
    return [load_mono(f, 16000) for f in files], ["zh" if "_zh_" in f.name else "en" for f in files]


def loop_transcribe(model, waves, languages, max_tokens: int, fp16: bool) -> list[str]:
    out = []
    for wave, lang in zip(waves, languages, strict=True):
        result = model.transcribe(
            wave,
            language=lang,
            temperature=0.0,
            condition_on_previous_text=False,
            without_timestamps=True,
            sample_len=max_tokens,
            fp16=fp16,
            verbose=None,
            no_speech_threshold=None,
        )
        text = "".join(s["text"] for s in result["segments"]).strip()  # special tokens dropped, as ours
        out.append(to_simplified(text) if lang == "zh" else text)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", choices=sorted(DIMS), default="tiny")
    parser.add_argument("--utts", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = str(resolve_device(args.device))
    model = random_whisper(args.dims, device)
    fp16 = device.startswith("cuda")
    waves, languages = clips(args.utts)
    # the no-speech rule off on both sides, so random-weight transcripts are kept and compared
    asr = WhisperASR(model, batch_size=args.batch_size, max_tokens=args.max_tokens, no_speech_threshold=None)

    def batched() -> list[str]:
        return [h.text for h in asr.transcribe(waves, languages)]

    def looped() -> list[str]:
        return loop_transcribe(model, waves, languages, args.max_tokens, fp16)

    runs = {"batched": batched, "loop": looped}
    texts = {name: fn() for name, fn in runs.items()}  # warm-up
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(args.repeats):
        for name, fn in runs.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            texts[name] = fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - start)
    same = sum(a == b for a, b in zip(texts["batched"], texts["loop"], strict=True))
    n = len(waves)
    print(
        f"device={device} ({torch.cuda.get_device_name() if fp16 else 'cpu'}) threads={torch.get_num_threads()} "
        f"dims={args.dims}{DIMS[args.dims]} utts={n} batch={args.batch_size} max_tokens={args.max_tokens}"
    )
    for name in runs:
        print(f"{name:>8}: {best[name]:7.2f} s  {n / best[name]:7.2f} utt/s")
    print(
        f"speed-up batched/loop: {best['loop'] / best['batched']:.2f}x   identical transcripts: {same}/{n}   "
        f"mean transcript length: {np.mean([len(t) for t in texts['batched']]):.0f} chars"
    )


if __name__ == "__main__":
    main()
