"""``cosyml init DIR --model-dir MODEL --clips CLIPS --speaker NAME``: a project for your own voice.

Checks and reports the model directory, the clips and the Whisper checkpoint, then writes params.yaml,
dvc.yaml, MLproject and .gitignore, runs git init + dvc init with a local remote, and prints the next
commands. Logic in :mod:`cosyml.project.init`.
"""

from __future__ import annotations

import argparse

LANGUAGES = ("zh", "en", "auto")  # same as cosyml.project.init.LANGUAGES (the CLI registers without torch)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "init",
        help="start a project for your own voice: check the model, clips and Whisper; write params and pipeline",
        description="Check a CosyVoice2/3 model directory, your clips and a Whisper checkpoint, then write a "
        "versioned project (params.yaml, dvc.yaml, MLproject, .gitignore, git + DVC with a local remote). "
        "A rerun never overwrites a file you changed unless --force.",
    )
    p.add_argument("dir", metavar="DIR", help="project folder to create (new, empty, or an earlier cosyml init)")
    p.add_argument(
        "--model-dir",
        required=True,
        metavar="MODEL",
        help="official CosyVoice2-0.5B or Fun-CosyVoice3-0.5B model directory",
    )
    p.add_argument(
        "--clips",
        action="append",
        required=True,
        metavar="CLIPS",
        help="folder with your clips, any layout (repeatable)",
    )
    p.add_argument(
        "--speaker",
        required=True,
        metavar="NAME",
        help="speaker name: letters of any script, digits, '-' (e.g. paimon, 派蒙)",
    )
    p.add_argument(
        "--whisper",
        default=None,
        metavar="CKPT",
        help="openai-whisper checkpoint (.pt, e.g. large-v3.pt) to transcribe clips without text "
        "and to score CER; without it such clips are rejected",
    )
    p.add_argument("--language", default="auto", choices=LANGUAGES, help="language of the clips (default: auto)")
    p.add_argument(
        "--test-sets",
        default=None,
        metavar="DIR",
        help="test sets in the CV3-Eval layout (default: a copy of cosyml's eval/)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="overwrite files you changed since the last init / init into a non-empty folder",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cosyml.project.init import init_project, next_commands

    result = init_project(
        args.dir,
        args.model_dir,
        args.clips,
        args.speaker,
        whisper=args.whisper,
        language=args.language,
        test_sets=args.test_sets,
        force=args.force,
    )
    md, clips, whisper = result.model_dir, result.clips, result.whisper
    version = {"v2": "CosyVoice2", "v3": "Fun-CosyVoice3"}[md.version]
    print(
        f"model   {md.path}: {version} ({len(md.files)} files, {sum(s for _, s in md.files) / 1e9:.2f} GB: "
        f"{', '.join(name for name, _ in md.files)})"
    )
    layouts = ", ".join(f"{n} {layout}" for layout, n in sorted(clips.layouts.items()))
    unknown = f" (+{clips.unknown_duration} files of unknown length)" if clips.unknown_duration else ""
    print(
        f"clips   {', '.join(map(str, clips.folders))}: {clips.audio_files} audio files ({layouts}), "
        f"{clips.hours:.2f} h{unknown}, {clips.without_text} without text"
        + (" (Whisper transcribes them)" if whisper else " (rejected: no --whisper)" if clips.without_text else "")
    )
    if whisper:
        kind = "multilingual" if whisper.multilingual else "English-only"
        print(f"whisper {whisper.path}: {kind}, {whisper.layers} layers x {whisper.width}, {whisper.n_mels} mels")
    else:
        print("whisper none: clips without text are rejected and `evaluate` needs evaluate.whisper_model set")
    print(f"tests   {result.test_sets}")
    if result.written:
        print(f"wrote   {', '.join(result.written)} in {result.project}")
    if result.unchanged:
        print(f"kept    {', '.join(result.unchanged)} (already up to date)")
    print("next:")
    for line in next_commands(result):
        print(f"  {line}")
    return 0
