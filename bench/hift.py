"""CPU speed of the HiFT vocoder: ours vs upstream ``HiFTGenerator.inference`` on the same weights.

Full-size CosyVoice2 HiFT (20.8 M parameters) with random weights, one mel of ``--seconds`` seconds.
Upstream is optional: run with the upstream venv to compare (our package imports there too),

    OMP_NUM_THREADS=1 /work/upstream/venv/bin/python bench/hift.py --upstream /work/upstream/CosyVoice

or with the project venv to time ours alone (``python bench/hift.py``). Both sides use the same weights,
mel and seed, so the script also prints the max abs difference of the waveforms.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cosyml.models.hift import HiFT, HiFTConfig

FRAMES_PER_SECOND = 50


def _time_interleaved(
    runs: dict[str, Callable[[], torch.Tensor]], repeats: int
) -> tuple[dict[str, tuple[float, float]], dict[str, torch.Tensor]]:
    """Best (wall, process CPU) seconds per entry. Entries alternate within each round so load changes
    hit all alike; CPU time is the fairer number on a shared machine (with one thread it excludes the
    time the process waited for a core)."""
    outputs = {name: fn() for name, fn in runs.items()}  # warm-up (allocator, oneDNN kernels)
    best = {name: (float("inf"), float("inf")) for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            outputs[name] = fn()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best, outputs


def _upstream_model(root: Path) -> torch.nn.Module:
    sys.path[:0] = [str(root), str(root.parent / "paimon" / "third_party" / "Matcha-TTS")]
    from cosyvoice.hifigan.f0_predictor import ConvRNNF0Predictor
    from cosyvoice.hifigan.generator import HiFTGenerator

    return HiFTGenerator(
        in_channels=80,
        base_channels=512,
        nb_harmonics=8,
        sampling_rate=24000,
        nsf_alpha=0.1,
        nsf_sigma=0.003,
        nsf_voiced_threshold=10,
        upsample_rates=[8, 5, 3],
        upsample_kernel_sizes=[16, 11, 7],
        istft_params={"n_fft": 16, "hop_len": 4},
        resblock_kernel_sizes=[3, 7, 11],
        resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        source_resblock_kernel_sizes=[7, 7, 11],
        source_resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        lrelu_slope=0.1,
        audio_limit=0.99,
        f0_predictor=ConvRNNF0Predictor(num_class=1, in_channels=80, cond_channels=512),
    ).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", type=Path, default=None, help="upstream CosyVoice checkout (optional)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    ours = HiFT(HiFTConfig()).eval()
    with torch.no_grad():  # keep f0 in a realistic range so the voiced path runs
        ours.f0_predictor.classifier.bias.fill_(120.0)
    mel = torch.randn(1, 80, int(args.seconds * FRAMES_PER_SECOND)) - 5.0
    seed = 1234

    # A separate instance: torch parametrizations share their class between deep copies, so folding a
    # deepcopy would also strip the original's weight property.
    folded = HiFT(HiFTConfig()).eval()
    folded.load_state_dict(ours.state_dict(), strict=True)
    folded.fold_weight_norm()
    runs: dict[str, Callable[[], torch.Tensor]] = {}
    if args.upstream is not None:
        upstream = _upstream_model(args.upstream.resolve())
        upstream.load_state_dict(ours.state_dict(), strict=True)

        def run_upstream() -> torch.Tensor:
            torch.manual_seed(seed)  # upstream draws its source noise from the global RNG
            return upstream.inference(speech_feat=mel)[0]

        runs["upstream"] = run_upstream
    for name, model in (("ours", ours), ("ours (weight norm folded)", folded)):
        runs[name] = lambda m=model: m.inference(mel, generator=torch.Generator().manual_seed(seed))[0]
    results, outputs = _time_interleaved(runs, args.repeats)

    audio_s = mel.shape[2] / FRAMES_PER_SECOND
    print(f"torch {torch.__version__}, {args.threads} thread(s), {audio_s:.1f} s of audio, best of {args.repeats}")
    for name, (wall, cpu) in results.items():
        line = f"{name:26s} wall {wall:6.3f} s  cpu {cpu:6.3f} s  RTF(cpu) {cpu / audio_s:.3f}"
        if "upstream" in results and name != "upstream":
            line += f"  upstream/ours(cpu) {results['upstream'][1] / cpu:.2f}x"
            line += f"  max|diff| {(outputs[name] - outputs['upstream']).abs().max().item():.2e}"
        print(line)


if __name__ == "__main__":
    main()
