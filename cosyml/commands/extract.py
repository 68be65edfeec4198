"""``cosyml extract``: CAM++ embeddings and speech tokens for the prepared splits (upstream file formats)."""

from __future__ import annotations

import argparse

from cosyml.commands._common import add_params_arguments, resolve_params
from cosyml.config import as_flat_dict


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "extract",
        help="speaker embeddings and speech tokens for DATA/train and DATA/dev",
        description=(
            "Writes utt2embedding.pt, spk2embedding.pt, utt2speech_token.pt and extract_report.json into "
            "each split directory. Resumable: rerun after an interruption to continue."
        ),
    )
    parser.add_argument("--data", required=True, help="prepared data directory (holds train/ and dev/)")
    parser.add_argument("--model-dir", default=None, help="base model directory (default: params model_dir)")
    parser.add_argument("--output", default=None, help="write <split>/*.pt here instead of into --data")
    add_params_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cosyml.features.extract import extract, find_frontend_models
    from cosyml.tracking import stage_run

    params = resolve_params(args, {"model_dir": args.model_dir})
    find_frontend_models(params.model_dir)  # a wrong model directory stops before a run is recorded
    logged = {**as_flat_dict(params.extract, "extract."), "model_dir": params.model_dir, "data": args.data}
    with stage_run("extract", params.prepare.speaker, logged) as run_:
        result = extract(args.data, params.model_dir, params.extract, output_dir=args.output)
        run_.log_metrics(result.metrics())
        run_.set_tags(
            {
                "cosyml.speech_tokenizer": result.models.speech_tokenizer.name,
                "cosyml.model_version": result.models.version,
            }
        )
        run_.log_dict(result.as_dict(), "extract_result.json")
    for s in result.splits:
        state = "up to date" if s.skipped_up_to_date else f"{s.seconds:.1f} s"
        print(
            f"{s.split}: {s.num_embeddings}/{s.num_utts} embeddings, {s.num_with_tokens} with tokens "
            f"({len(s.no_tokens)} over 30 s without tokens, {s.num_token_mel_mismatch} token/mel length "
            f"mismatches trimmed in training, {s.num_resumed} resumed) [{state}]"
        )
    return 0
