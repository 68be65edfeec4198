"""Shared command-line plumbing: ``--params`` / ``--set`` handling, and the checks every stage makes first."""

from __future__ import annotations

import argparse

from cosyml.config import Params, load_params, with_overrides


def add_params_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default=None, help="parameters file (default: ./params.yaml if present)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one parameter from params.yaml (repeatable)",
    )


def resolve_params(args: argparse.Namespace, flags: dict[str, object] | None = None) -> Params:
    """params.yaml, then ``--set`` overrides, then explicit flags (``{"prepare.speaker": ...}``).

    Every tracked stage starts here, so this is also where an unreachable tracking store is reported (one
    line, before any work) rather than after minutes of MLflow retries.
    """
    from cosyml.tracking import check_tracking

    check_tracking()
    params = load_params(args.params)
    if args.overrides:
        params = with_overrides(params, list(args.overrides))
    explicit = {k: v for k, v in (flags or {}).items() if v is not None}
    if explicit:
        params = with_overrides(params, explicit)
    return params
