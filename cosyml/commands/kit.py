"""``cosyml kit DIR``: write a tiny model directory in the official layout for tests and the demo.

Numbers produced with a kit prove plumbing and learning, never voice quality.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "kit",
        help="write a tiny random-weight model directory in the official layout (tests, demo)",
        description=(
            "Writes cosyvoice2.yaml, llm.pt, flow.pt, hift.pt, campplus.onnx, speech_tokenizer_v2.onnx, "
            "CosyVoice-BlankEN/ and a tiny whisper.pt. Nothing is downloaded."
        ),
    )
    parser.add_argument("dir", help="directory to write into (created if missing)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--frontend-only", action="store_true", help="only the ONNX front end, tokenizer and whisper.pt"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.frontend_only:
        from cosyml.kit.frontend import write_frontend_kit

        write_frontend_kit(args.dir, seed=args.seed)
    else:
        from cosyml.kit.build import build_kit

        build_kit(args.dir, seed=args.seed)
    print(f"tiny model kit written to {args.dir} (random weights: proves plumbing, not voice quality)")
    return 0
