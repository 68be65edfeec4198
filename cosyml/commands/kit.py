"""``cosyml kit DIR [--version cosyvoice2|cosyvoice3]``: write a tiny model directory in the official layout.

For tests and the demo. Numbers produced with a kit prove plumbing and learning, never voice quality.
"""

from __future__ import annotations

import argparse

#: Same names as cosyml.kit.build.KIT_VERSIONS (not imported here: the CLI registers without torch).
KIT_VERSIONS = ("cosyvoice2", "cosyvoice3")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "kit",
        help="write a tiny random-weight model directory in the official layout (tests, demo)",
        description=(
            "Writes cosyvoice2.yaml (or cosyvoice3.yaml), llm.pt, flow.pt, hift.pt, campplus.onnx, "
            "speech_tokenizer_v2.onnx (or _v3), CosyVoice-BlankEN/ and a tiny whisper.pt. "
            "Nothing is downloaded."
        ),
    )
    parser.add_argument("dir", help="directory to write into (created if missing)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--version",
        choices=KIT_VERSIONS,
        default="cosyvoice2",
        help="CosyVoice2-0.5B layout (default) or Fun-CosyVoice3-0.5B layout",
    )
    parser.add_argument(
        "--size",
        choices=("tiny", "full"),
        default="tiny",
        help="tiny (default: tests, demo) or full: the official 0.5B dimensions and the official 151936-row text "
        "vocabulary with the official special-token ids (random weights, ~6 GB; the full-size dress rehearsal)",
    )
    parser.add_argument(
        "--official-text-ids",
        action="store_true",
        help="pad the tiny text vocabulary so special tokens get their official ids (<|endofprompt|> = 151646); "
        "needed to run upstream CosyVoice3 inference on the kit; adds ~80 MB",
    )
    parser.add_argument(
        "--whisper",
        choices=("random", "trained"),
        default="random",
        help="whisper.pt: random (default; recognises nothing) or trained on the toy corpus (hears its "
        "espeak clips; a few CPU minutes the first time, then cached in ~/.cache/cosyml/toy-whisper)",
    )
    parser.add_argument(
        "--frontend-only", action="store_true", help="only the ONNX front end, tokenizer and whisper.pt"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    version = getattr(args, "version", "cosyvoice2")
    official = getattr(args, "official_text_ids", False)
    if args.frontend_only:
        from cosyml.kit.frontend import write_frontend_kit

        write_frontend_kit(args.dir, seed=args.seed, version=version, official_text_ids=official)
    else:
        from cosyml.kit.build import build_kit, kit_dims

        size = getattr(args, "size", "tiny")
        build_kit(
            args.dir,
            seed=args.seed,
            version=version,
            dims=kit_dims(version, size),
            official_text_ids=official or size == "full",
        )
    whisper = getattr(args, "whisper", "random")
    if whisper == "trained":
        from cosyml.kit.whisper import install_trained_toy_whisper

        install_trained_toy_whisper(args.dir)
    print(
        f"{getattr(args, 'size', 'tiny')} {version} model kit written to {args.dir} "
        f"(random weights: proves plumbing, not voice quality; {whisper} whisper.pt)"
    )
    return 0
