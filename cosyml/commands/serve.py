"""``cosyml serve``: ``mlflow models serve`` of a registered voice (default ``models:/cosyml-<speaker>@champion``)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping

from cosyml.commands._common import add_params_arguments, resolve_params


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a registered voice over HTTP (mlflow models serve, current environment)",
        description='POST /invocations with {"dataframe_records": [{"text": ...}]}; answers base64 wavs.',
    )
    p.add_argument("--model-uri", default=None, help="model URI (default: models:/<registry model>@<alias>)")
    p.add_argument("--speaker", default=None, help="speaker (default: prepare.speaker)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=5001)
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes, each with its own copy of the voice (RSS per worker ~1 GB on the kit); "
        "requests to one worker run one at a time (default 1; also MLFLOW_MODELS_WORKERS)",
    )
    p.add_argument(
        "--env-manager",
        choices=("local", "virtualenv", "uv", "conda"),
        default="local",
        help="local: this environment (default); virtualenv/uv/conda: a new one built from the "
        "version's requirements (cosyml comes as a wheel inside the model; pip needs an index or "
        "PIP_NO_INDEX=1 PIP_FIND_LINKS=<wheelhouse>)",
    )
    add_params_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cosyml.errors import CosymlError
    from cosyml.pyfunc import check_model_uri
    from cosyml.registry import model_name
    from cosyml.tracking import registry_client

    check_env_manager(args.env_manager)  # before anything is opened or downloaded
    params = resolve_params(args, {"prepare.speaker": args.speaker})
    uri = args.model_uri or f"models:/{model_name(params.registry, params.prepare.speaker)}@{params.registry.alias}"
    if args.env_manager != "local" and ":" not in uri.split("/", 1)[0]:
        uri = os.path.abspath(uri)  # a model folder; the server starts in another directory
    registry_client()  # sets the tracking URI (MLFLOW_TRACKING_URI or ./mlflow.db) the server inherits
    check_model_uri(uri)
    if args.env_manager == "virtualenv":
        check_pyenv_python(uri)
    mlflow_cli = shutil.which("mlflow")
    if mlflow_cli is None:
        raise CosymlError(
            "the `mlflow` command is not on PATH; activate the project environment (source scripts/env.sh)"
        )
    command = [
        mlflow_cli,
        "models",
        "serve",
        "-m",
        uri,
        "--env-manager",
        args.env_manager,
        "-h",
        args.host,
        "-p",
        str(args.port),
        "-w",
        str(args.workers),
    ]
    print("serving:", " ".join(command), file=sys.stderr)
    import mlflow

    os.environ["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
    environ, cwd = serving_environment(args.env_manager, os.environ)
    if cwd is not None:
        os.chdir(cwd)
    os.execve(mlflow_cli, command, environ)
    return 0  # pragma: no cover - execve does not return


def serving_environment(manager: str, environ: Mapping[str, str]) -> tuple[dict[str, str], str | None]:
    """(environment variables, working directory or None: this one) of the ``mlflow models serve`` process.

    ``local`` serves this environment's cosyml, found through ``PYTHONPATH`` (``scripts/env.sh`` puts the
    clone there). Any other manager must serve the wheel its new environment installed from the version,
    but ``PYTHONPATH`` and the working directory (uvicorn puts it first on ``sys.path``) would shadow it with
    a checkout's ``cosyml/``: ``PYTHONPATH`` is dropped and the server starts in a new empty directory, with
    the relative paths it is given (tracking URI, caches, wheelhouse) made absolute first.
    """
    out = dict(environ)
    if manager == "local":
        return out, None
    out.pop("PYTHONPATH", None)
    uri = out.get("MLFLOW_TRACKING_URI", "")
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        out["MLFLOW_TRACKING_URI"] = f"sqlite:///{os.path.abspath(uri.removeprefix('sqlite:///'))}"
    elif uri and "://" not in uri and not uri.startswith("file:"):
        out["MLFLOW_TRACKING_URI"] = os.path.abspath(uri)  # a plain folder of a file store
    for key in ("COSYML_CACHE_DIR", "MLFLOW_ENV_ROOT"):
        if out.get(key):
            out[key] = os.path.abspath(out[key])
    if out.get("PIP_FIND_LINKS"):
        links = out["PIP_FIND_LINKS"].split()
        out["PIP_FIND_LINKS"] = " ".join(p if "://" in p else os.path.abspath(p) for p in links)
    return out, tempfile.mkdtemp(prefix="cosyml-serve-")


def check_env_manager(manager: str) -> None:
    """One line, before MLflow starts building anything, when ``manager`` cannot work on this machine."""
    from cosyml.errors import CosymlError

    tools = {"virtualenv": "pyenv", "uv": "uv", "conda": "conda"}
    if manager == "local":
        return
    if shutil.which(tools[manager]) is None:
        raise CosymlError(
            f"--env-manager {manager}: `{tools[manager]}` is not on PATH (MLflow builds the {manager} environment "
            "with it); install it, or serve from this environment with --env-manager local"
        )
    if os.environ.get("PIP_NO_INDEX"):
        links = [p for p in os.environ.get("PIP_FIND_LINKS", "").split() if p]
        missing = [p for p in links if not p.startswith(("http://", "https://")) and not os.path.isdir(p)]
        if not links or missing:
            raise CosymlError(
                f"--env-manager {manager}: PIP_NO_INDEX is set but PIP_FIND_LINKS "
                f"{'is empty' if not links else 'names missing folders: ' + ', '.join(missing)}; point it at a "
                "wheelhouse holding the voice's requirements (pip download -r requirements.txt -d <wheelhouse>)"
            )


def check_pyenv_python(model_uri: str) -> None:
    """One line when pyenv has not the exact Python of the version's ``python_env.yaml``: MLflow would try
    ``pyenv install`` (a download; offline, a long traceback). Nothing when the file cannot be read here."""
    import subprocess

    import mlflow
    import yaml
    from mlflow.exceptions import MlflowException

    from cosyml.errors import CosymlError

    try:
        path = mlflow.artifacts.download_artifacts(f"{model_uri.rstrip('/')}/python_env.yaml")
        with open(path, encoding="utf-8") as f:
            python = str(yaml.safe_load(f)["python"])
    except (MlflowException, OSError, KeyError, TypeError, yaml.YAMLError):
        return  # MLflow reports it itself
    pyenv = shutil.which("pyenv") or "pyenv"
    root = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=False).stdout.strip()
    versions = os.path.join(root, "versions")
    if root and os.path.isfile(os.path.join(versions, python, "bin", "python")):
        return
    have = sorted(os.listdir(versions)) if os.path.isdir(versions) else []
    raise CosymlError(
        f"--env-manager virtualenv: the voice needs Python {python} (its python_env.yaml) and pyenv has "
        f"{', '.join(have) if have else 'no Python'}; run `pyenv install {python}` (a download, once) or serve "
        "with --env-manager local"
    )
