"""``cosyml shards``: parquet shards + data.list per split, recorded as an MLflow run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cosyml.commands._common import add_params_arguments, resolve_params
from cosyml.config import as_flat_dict
from cosyml.errors import InputError
from cosyml.fileio import atomic_write_text, output_lock

SPLITS = ("train", "dev")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shards", help="write parquet shards and data.list files for training")
    p.add_argument("--data", required=True, help="prepared data folder (holds train/ and dev/ kaldi files)")
    p.add_argument(
        "--features", default=None, help="folder with <split>/utt2*.pt from `cosyml extract` (default: --data)"
    )
    p.add_argument("--output", default=None, help="where <split>/data.list and shards go (default: --data)")
    p.add_argument("--utts-per-shard", type=int, default=None)
    p.add_argument("--min-shards", type=int, default=None, help="at least this many shards (ranks x workers)")
    p.add_argument(
        "--absolute-paths",
        action="store_true",
        default=None,
        help="write absolute paths in data.list (for upstream's trainer)",
    )
    add_params_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cosyml.data.shards import write_shards  # imports torch: keep `cosyml --help` fast
    from cosyml.tracking import stage_run

    params = resolve_params(
        args,
        {
            "shards.utts_per_shard": args.utts_per_shard,
            "shards.min_shards": args.min_shards,
            "shards.absolute_paths": args.absolute_paths,
        },
    )
    cfg = params.shards
    data = Path(args.data)
    features = Path(args.features) if args.features else data
    output = Path(args.output) if args.output else data
    splits = [s for s in SPLITS if (data / s / "wav.scp").is_file() and (data / s / "wav.scp").stat().st_size]
    if not splits:
        raise InputError(f"{data}: no train/wav.scp or dev/wav.scp; run `cosyml prepare --output {data}` first")
    metadata = _extract_metadata(features)
    with (
        output_lock(output, "cosyml shards"),
        stage_run("shards", params.prepare.speaker, as_flat_dict(cfg, "shards.")) as run_,
    ):
        summary = {}
        for split in splits:
            result = write_shards(
                data / split,
                out_dir=output / split,
                feature_dir=features / split,
                utts_per_shard=cfg.utts_per_shard,
                min_shards=cfg.min_shards,
                absolute_paths=cfg.absolute_paths,
                metadata=metadata,
            )
            summary[split] = {
                "utts": result.num_utts,
                "shards": len(result.shard_files),
                "columns": result.columns,
                "missing_features": result.missing_features,
            }
            run_.log_metrics({f"{split}_utts": result.num_utts, f"{split}_shards": len(result.shard_files)})
            for name, count in result.missing_features.items():
                print(f"cosyml shards: warning: {split}: {count} utterances have no entry in {name}")
            if result.excluded:
                reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(result.excluded.items()))
                print(f"cosyml shards: {split}: left out {reasons} listed in {result.excluded_file}")
                run_.log_metrics({f"{split}_excluded": sum(result.excluded.values())})
                summary[split]["excluded"] = result.excluded
            print(
                f"{split}: {result.num_utts} utterances in {len(result.shard_files)} shards -> {output / split / 'data.list'}"
            )
        atomic_write_text(output / "shards_summary.json", json.dumps(summary, indent=2))
        run_.log_dict(summary, "shards_summary.json")
    return 0


def _extract_metadata(data: Path) -> dict[str, str]:
    """Provenance of the features (written by `cosyml extract`), stored in every shard's schema."""
    info = data / "extract_info.json"
    if not info.is_file():
        return {}
    values = json.loads(info.read_text())
    return {f"cosyml.{k}": str(v) for k, v in values.items() if isinstance(v, str | int | float)}
