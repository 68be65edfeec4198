"""``cosyml prepare``: raw clips -> normalised clips, kaldi files, manifest, rejects (one MLflow run)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cosyml.commands._common import add_params_arguments, resolve_params
from cosyml.config import as_flat_dict
from cosyml.errors import InputError
from cosyml.fileio import atomic_write_json

#: Clips set aside as transcript_mismatch that the MLflow prepare run holds as audio artifacts.
MAX_LOGGED_MISMATCHES = 50


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="clean and normalise raw clips into a training data folder",
        description="Find clips in any layout (wav+lab, *.normalized.txt, kaldi wav.scp+text, audio only, "
        "nested), normalise them to 24 kHz mono, filter junk (see DATA/rejects.jsonl), transcribe clips "
        "without text with a local Whisper checkpoint, split train/dev and write kaldi files.",
    )
    p.add_argument(
        "--input",
        action="append",
        default=None,
        metavar="RAW",
        help="folder with the raw clips (repeatable; default: prepare.inputs)",
    )
    p.add_argument("--output", required=True, metavar="DATA", help="data folder to write")
    p.add_argument("--speaker", default=None, help="speaker name: letters, digits, '-' (prepare.speaker)")
    p.add_argument("--language", default=None, help="zh, en, ... or auto (prepare.language)")
    p.add_argument(
        "--no-transcribe", action="store_true", help="do not run Whisper; clips without text are rejected as no_text"
    )
    p.add_argument(
        "--whisper",
        default=None,
        metavar="PATH",
        help="local openai-whisper checkpoint .pt for clips without text (prepare.whisper_model)",
    )
    p.add_argument(
        "--review",
        default=None,
        metavar="FILE",
        help="edited transcripts_review.tsv: its texts replace the transcripts of those utts",
    )
    p.add_argument(
        "--metrics",
        default=None,
        metavar="FILE",
        help="also write the counts (utterances, rejects by reason, transcript check) to this JSON file "
        "(the DVC metrics file: `dvc metrics diff` shows them)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_params_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cosyml.data.prepare import check_speaker, prepare
    from cosyml.tracking import stage_run

    params = resolve_params(
        args,
        {
            "prepare.speaker": args.speaker,
            "prepare.language": args.language,
            "prepare.whisper_model": args.whisper,
            "prepare.transcribe": False if args.no_transcribe else None,
        },
    )
    cfg = params.prepare
    check_speaker(cfg.speaker)
    inputs = args.input or list(cfg.inputs)
    if not inputs:
        raise InputError("no clips folder given; pass --input RAW or set prepare.inputs in params.yaml")
    flat = as_flat_dict(cfg, "prepare.")
    flat["prepare.inputs"] = ",".join(inputs)
    with stage_run("prepare", cfg.speaker, flat) as tracked:
        result = prepare(
            [Path(p) for p in inputs],
            Path(args.output),
            cfg,
            review_file=Path(args.review) if args.review else None,
            progress=not args.no_progress,
            warn=lambda m: print(f"cosyml: warning: {m}", file=sys.stderr),
        )
        metrics: dict[str, float] = {}
        for split in result.counts:
            metrics[f"{split}_utts"] = result.counts[split]
            metrics[f"{split}_hours"] = result.hours[split]
        metrics["rejected"] = len(result.rejects)
        metrics["transcribed"] = result.transcribed
        metrics["transcripts_checked"] = result.transcripts_checked
        metrics.update({f"rejects_{reason}": n for reason, n in result.reject_counts.items()})
        tracked.log_metrics(metrics)
        if args.metrics:
            atomic_write_json(metrics, args.metrics)
        tracked.log_artifact(result.summary_path)
        tracked.log_artifact(result.rejects_path)
        tracked.log_artifact(result.review_path)
        for entry in result.entries[:: max(1, len(result.entries) // 3)][:3]:
            tracked.log_artifact(result.output / entry.wav, "samples")
        # the clips set aside by the transcript check, to listen to in the MLflow UI (a few dozen at most)
        mismatched = [Path(r.source) for r in result.rejects if r.reason == "transcript_mismatch"]
        for source in [m for m in mismatched if m.is_file()][:MAX_LOGGED_MISMATCHES]:
            tracked.log_artifact(source, "transcript_mismatch")
    total = sum(result.counts.values())
    if result.transcript_check == "on":
        print(
            f"transcript check: {result.reject_counts.get('transcript_mismatch', 0)} of "
            f"{result.transcripts_checked} transcripts differ from what Whisper hears (prepare.transcript_max_cer="
            f"{cfg.transcript_max_cer:g}); set aside as transcript_mismatch, see {result.review_path}"
        )
    else:
        print(f"transcript check {result.transcript_check}")
    print(
        f"prepared {total} utterances ({result.counts.get('train', 0)} train, {result.counts.get('dev', 0)} dev, "
        f"{sum(result.hours.values()):.3f} h) in {result.output}; rejected {len(result.rejects)} "
        f"(see {result.rejects_path})"
    )
    return 0
