"""``cosyml track flush [--dry-run]``: upload the artifacts that earlier stages could not log.

A stage whose artifact store (or tracking server) went away keeps a list of the files it could not upload
(paths, not copies; see :func:`cosyml.tracking.pending_dir`); this uploads them to their runs once the
store is back, in order, and removes what got through from the lists.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "track",
        help="tracking chores: upload the artifacts a store outage left behind",
        description=(
            "flush: upload the artifacts (checkpoints, samples) that stages could not log while the tracking "
            "server or its artifact store was away, to their runs in the store of MLFLOW_TRACKING_URI. "
            "The lists live in $COSYML_PENDING_DIR (default ~/.local/state/cosyml/pending-uploads)."
        ),
    )
    parser.add_argument("action", choices=("flush",), help="flush: upload the pending artifacts")
    parser.add_argument("--dry-run", action="store_true", help="list what is pending, upload nothing")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cosyml.tracking import flush_pending, human_size, mask, pending_dir

    results = flush_pending(dry_run=args.dry_run)
    if not results:
        print(f"track flush: nothing pending in {mask(pending_dir())}")
        return 0
    left = 0
    for r in results:
        if r.other_store:
            print(
                f"track flush: run {r.run_id}: {len(r.left)} artifacts for {r.other_store}: set MLFLOW_TRACKING_URI to it"
            )
        elif args.dry_run:
            print(
                f"track flush: run {r.run_id}: {len(r.left)} artifacts pending ({', '.join(r.left[:3])}{', ...' if len(r.left) > 3 else ''})"
            )
        else:
            gone = f"; {len(r.gone)} dropped, their files are gone" if r.gone else ""
            still = f"; {len(r.left)} still pending (the store refused {r.left[0]}: {mask(r.error)})" if r.left else ""
            print(
                f"track flush: run {r.run_id}: {len(r.uploaded)} artifacts uploaded ({human_size(r.uploaded_bytes)}){gone}{still}"
            )
        left += len(r.left)
    return 1 if left and not args.dry_run else 0
