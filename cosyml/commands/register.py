"""``cosyml register``: every evaluated candidate becomes a version of the speaker's registered model."""

from __future__ import annotations

import argparse

from cosyml.commands._common import add_params_arguments, resolve_params


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "register",
        help="register evaluated candidates as versions of the speaker's MLflow model",
        description=(
            "Reads candidates.json (from `cosyml evaluate`) and registers each candidate as a version of "
            "cosyml-<speaker> (pyfunc flavor; base assets stored once and referenced). Registering the same "
            "weights again refreshes the score tags instead of adding a version."
        ),
    )
    p.add_argument("--candidates", default=None, help="candidates.json (default: registry.candidates)")
    p.add_argument("--speakers", default=None, help="spk2embedding.pt / spk2info.pt (default: registry.speakers)")
    p.add_argument("--sampling", default=None, help="tuned sampling JSON/YAML (default: registry.sampling)")
    p.add_argument(
        "--only", action="append", default=None, metavar="NAME", help="register only this candidate (repeatable)"
    )
    add_params_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cosyml.registry import read_candidates, read_sampling, register_candidates
    from cosyml.versioning import data_version

    params = resolve_params(
        args,
        {
            "registry.candidates": args.candidates,
            "registry.speakers": args.speakers,
            "registry.sampling": args.sampling,
        },
    )
    cfg = params.registry
    candidates = read_candidates(cfg.candidates)
    registered = register_candidates(
        candidates, cfg, sampling=read_sampling(cfg.sampling), data_version=data_version(cfg.data_stage), only=args.only
    )
    for item in registered:
        if item.skipped:
            print(f"{item.name}: {item.candidate} not registered ({item.skipped})")
            continue
        state = "registered" if item.created else "already registered (scores refreshed)"
        print(f"{item.name} v{item.version}: {item.candidate} {state}")
    return 0
