"""``cosyml promote``: move the ``champion`` alias by the written policy in ``params.yaml`` (``registry``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cosyml.commands._common import add_params_arguments, resolve_params
from cosyml.fileio import atomic_write_text


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "promote",
        help="promote the best registered candidate to the champion alias (policy: params.yaml registry)",
        description=(
            "Ranks the versions registered from candidates.json by ss_weight*SS - cer_weight*CER. A candidate must "
            "not regress CER beyond registry.max_cer_regression against the base model, and must beat the current "
            "champion beyond the confidence intervals. Otherwise nothing moves and the reason is printed and logged."
        ),
    )
    p.add_argument("--candidates", default=None, help="candidates.json (default: registry.candidates)")
    p.add_argument("--register", action="store_true", help="register the candidates first (idempotent)")
    p.add_argument("--dry-run", action="store_true", help="show the decision without moving any alias")
    p.add_argument("--rollback", action="store_true", help="swap the champion and previous aliases")
    p.add_argument("--list", action="store_true", help="list the versions with aliases and scores")
    p.add_argument("--speaker", default=None, help="speaker for --rollback / --list (default: prepare.speaker)")
    p.add_argument("--out", default=None, help="write the decision as JSON here")
    add_params_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cosyml import registry

    params = resolve_params(args, {"registry.candidates": args.candidates, "prepare.speaker": args.speaker})
    cfg = params.registry
    if args.rollback or args.list:
        speaker = params.prepare.speaker
        if args.rollback:
            new, old = registry.rollback(speaker, cfg)
            print(f"{registry.model_name(cfg, speaker)}: {cfg.alias} -> v{new}, {cfg.previous_alias} -> v{old}")
        for line in registry.describe_versions(speaker, cfg):
            print(line)
        return 0
    candidates = registry.read_candidates(cfg.candidates)
    if args.register:
        from cosyml.versioning import data_version

        registry.register_candidates(
            candidates, cfg, sampling=registry.read_sampling(cfg.sampling), data_version=data_version(cfg.data_stage)
        )
    result = registry.promote(candidates, cfg, dry_run=args.dry_run)
    decision = result.decision
    for v in decision.verdicts:
        score = f"{v.composite:+.4f}" if v.composite is not None else "   n/a"
        print(f"  v{v.version:<4} {v.candidate:<24} composite {score}  {v.reason}")
    prefix = "dry run: would " if args.dry_run else ""
    shown = registry.shown_name(result.model_name, candidates.speaker)
    if decision.action == "promote":
        verb = "promote" if args.dry_run else "promoted"
        print(f"{prefix}{verb} {shown} v{decision.target} to {cfg.alias}: {decision.reason}")
    else:
        print(
            f"{prefix}keep {shown} {cfg.alias} at {('v' + decision.champion) if decision.champion else 'none'}: {decision.reason}"
        )
    if args.out:
        payload = {
            "model_name": result.model_name,
            "moved": result.moved,
            "dry_run": result.dry_run,
            **decision.as_dict(),
        }
        atomic_write_text(Path(args.out), json.dumps(payload, indent=1) + "\n")
    return 0
