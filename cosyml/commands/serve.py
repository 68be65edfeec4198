"""``cosyml serve``: ``mlflow models serve`` of a registered voice (default ``models:/cosyml-<speaker>@champion``)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from cosyml.commands._common import add_params_arguments, resolve_params


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a registered voice over HTTP (mlflow models serve, current environment)",
        description="POST /invocations with {\"dataframe_records\": [{\"text\": ...}]}; answers base64 wavs.",
    )
    p.add_argument("--model-uri", default=None, help="model URI (default: models:/<registry model>@<alias>)")
    p.add_argument("--speaker", default=None, help="speaker (default: prepare.speaker)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=5001)
    p.add_argument("--workers", type=int, default=1, help="server processes (each loads the voice once)")
    add_params_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cosyml.errors import CosymlError
    from cosyml.pyfunc import check_model_uri
    from cosyml.registry import client, model_name

    params = resolve_params(args, {"prepare.speaker": args.speaker})
    uri = args.model_uri or f"models:/{model_name(params.registry, params.prepare.speaker)}@{params.registry.alias}"
    client()  # sets the tracking URI (MLFLOW_TRACKING_URI or ./mlflow.db) the server inherits
    check_model_uri(uri)
    mlflow_cli = shutil.which("mlflow")
    if mlflow_cli is None:
        raise CosymlError("the `mlflow` command is not on PATH; activate the project environment (source scripts/env.sh)")
    command = [
        mlflow_cli, "models", "serve", "-m", uri, "--env-manager", "local",
        "-h", args.host, "-p", str(args.port), "-w", str(args.workers),
    ]
    print("serving:", " ".join(command), file=sys.stderr)
    import mlflow

    os.environ["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
    os.execv(mlflow_cli, command)
    return 0  # pragma: no cover - execv does not return
