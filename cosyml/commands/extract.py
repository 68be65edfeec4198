"""``cosyml extract``: CAM++ embeddings and speech tokens for the prepared splits (upstream file formats)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from cosyml.commands._common import add_params_arguments, resolve_params
from cosyml.config import ExtractConfig, as_flat_dict
from cosyml.fileio import atomic_write_text

if TYPE_CHECKING:
    from cosyml.features.extract import ExtractResult
    from cosyml.features.speaker_check import SpeakerCheckConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "extract",
        help="speaker embeddings and speech tokens for DATA/train and DATA/dev",
        description=(
            "Writes utt2embedding.pt, spk2embedding.pt, utt2speech_token.pt and extract_report.json into "
            "each split directory, and speaker_check.json (clips that do not sound like their speaker) at the "
            "output root. Resumable: rerun after an interruption to continue."
        ),
    )
    parser.add_argument("--data", required=True, help="prepared data directory (holds train/ and dev/)")
    parser.add_argument("--model-dir", default=None, help="base model directory (default: params model_dir)")
    parser.add_argument("--output", default=None, help="write <split>/*.pt here instead of into --data")
    parser.add_argument("--metrics", default=None, help="also write the counts as flat JSON here (DVC metrics)")
    add_params_arguments(parser)
    parser.set_defaults(func=run)


def speaker_check_config(cfg: ExtractConfig) -> SpeakerCheckConfig:
    """The component config of the speaker check, from the ``extract`` params."""
    from cosyml.features.speaker_check import SpeakerCheckConfig

    return SpeakerCheckConfig(
        min_similarity=cfg.speaker_min_similarity,
        max_z=cfg.speaker_max_z,
        min_clips=cfg.speaker_min_clips,
        drop=cfg.drop_speaker_outliers,
    )


def run(args: argparse.Namespace) -> int:
    from cosyml.features.extract import extract, find_frontend_models
    from cosyml.tracking import stage_run

    params = resolve_params(args, {"model_dir": args.model_dir})
    find_frontend_models(params.model_dir)  # a wrong model directory stops before a run is recorded
    logged = {**as_flat_dict(params.extract, "extract."), "model_dir": params.model_dir, "data": args.data}
    with stage_run("extract", params.prepare.speaker, logged) as run_:
        result = extract(
            args.data,
            params.model_dir,
            params.extract,
            output_dir=args.output,
            speaker_check=speaker_check_config(params.extract),
        )
        run_.log_metrics(result.metrics())
        if result.speaker_report is not None:
            run_.log_artifact(result.speaker_report)
        if args.metrics:
            atomic_write_text(Path(args.metrics), json.dumps(result.dvc_metrics(), indent=1, sort_keys=True) + "\n")
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
    for line in speaker_check_lines(result):
        print(line)
    return 0


def speaker_check_lines(result: ExtractResult) -> list[str]:
    """What the speaker check found, for the terminal (README "Speaker check" quotes these lines)."""
    check, report = result.speaker_check, result.speaker_report
    if check is None:
        return ["speaker check: not run (extraction is incomplete; rerun `cosyml extract` to finish)"]
    cfg = check.config
    lines = [
        f"speaker check: speaker '{s.speaker}' has {s.clips} clips (fewer than {cfg.min_clips}): no outlier verdicts"
        for s in check.unchecked
    ]
    outliers = check.outliers
    checked = sum(s.clips for s in check.speakers if s.checked)
    rule = f"cosine < {cfg.min_similarity:g}" + (f" or robust z < -{cfg.max_z:g}" if cfg.max_z > 0 else "")
    lines.append(f"speaker check: {len(outliers)} of {checked} clips are speaker_outlier ({rule}); see {report}")
    if outliers:
        dropped = sum(result.excluded.values())
        if cfg.drop:
            lines.append(
                f"speaker check: {dropped} outliers left out of the shards (listed in <split>/excluded_utts) "
                "and of spk2embedding.pt"
            )
        else:
            lines.append(
                "speaker check: outliers stay in the shards (set extract.drop_speaker_outliers: true to leave "
                "them out); spk2embedding.pt is computed without them"
            )
    return lines
