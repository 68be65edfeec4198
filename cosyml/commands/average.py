"""``cosyml average``: average training checkpoints into an official-format llm.pt / flow.pt."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal, cast

from cosyml.commands._common import add_params_arguments, resolve_params


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "average",
        help="average the best (by CV loss or by the probe's CER/SS) or last checkpoints into one weight file",
    )
    p.add_argument("--checkpoints", required=True, help="a run's checkpoints/ folder (from `cosyml train`)")
    p.add_argument("--out", required=True, help="weight file to write, e.g. exp/llm/llm.pt")
    p.add_argument("--num", type=int, default=None, help="how many checkpoints (default: train.average_num)")
    p.add_argument(
        "--by",
        choices=("cv_loss", "last", "probe"),
        default=None,
        help="cv_loss (lowest CV losses), last (newest epochs), probe (highest registry composite of the "
        "per-epoch probe's CER and SS; needs train.probe_every_epochs); default: train.average_by",
    )
    add_params_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cosyml.commands.train import probe_rank
    from cosyml.config import as_flat_dict
    from cosyml.pyfunc import file_sha256
    from cosyml.registry.staging import tensors_sha256
    from cosyml.synth.weights import read_weights
    from cosyml.tracking import stage_run
    from cosyml.train.average import average_checkpoints

    params = resolve_params(args, {"train.average_num": args.num, "train.average_by": args.by})
    cfg = params.train
    logged = {**as_flat_dict(cfg, "train."), "checkpoints": args.checkpoints, "out": args.out}
    part = Path(args.out).stem
    with stage_run(f"average_{part}", params.prepare.speaker, logged) as run_:
        result = average_checkpoints(
            args.checkpoints, args.out, num=cfg.average_num, by=cfg.average_by, rank=probe_rank(params.registry)
        )
        run_.set_tags({"cosyml.averaged_from": ",".join(result.sources), "cosyml.average_by": result.by})
        if cfg.log_checkpoints in ("all", "best", "final"):
            if part in ("llm", "flow"):  # an official part: the registry may reference this upload
                state = read_weights(result.path, cast(Literal["llm", "flow"], part))
                digests = {
                    "cosyml.weights_sha256": tensors_sha256(state),
                    "cosyml.file_sha256": file_sha256(result.path),
                }
                run_.set_tags(digests)  # the content hashes the registry looks this upload up by
                del state
            run_.log_artifact(result.path, "weights")
    print(f"averaged {len(result.sources)} checkpoints ({result.by}: {', '.join(result.sources)}) -> {result.path}")
    return 0
