"""The ``cosyml`` command: one subcommand per stage.

Each module in :mod:`cosyml.commands` defines ``register(subparsers)``, which adds its subparser and
sets ``func`` to a function taking the parsed namespace. User mistakes raise
:class:`cosyml.errors.CosymlError`; they are printed as one line (``cosyml: error: ...``) with exit
status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from cosyml import __version__, commands
from cosyml.errors import CosymlError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cosyml", description="Speaker fine-tuning for CosyVoice2/3: prepare, extract, train, evaluate."
    )
    parser.add_argument("--version", action="version", version=f"cosyml {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except CosymlError as exc:
        print(f"cosyml: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cosyml: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
