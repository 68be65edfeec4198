"""Packaging a voice: the pyfunc folder of one version (:func:`cosyml.pyfunc.save_voice`), the pip
requirements it declares and the cosyml wheel it carries, logged as an MLflow logged model."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from pathlib import Path

from cosyml.features.onnx_runtime import ORT_DISTRIBUTIONS
from cosyml.pyfunc import save_voice
from cosyml.registry.names import sanitize
from cosyml.tracking import log_model_artifacts, logged_model

#: Folder of a logged voice that holds the cosyml wheel its requirements.txt installs.
WHEELS_DIR = "wheels"


def log_voice(
    stage: Path, artifacts: dict[str, str], speaker: str, candidate: str, run_id: str | None, wheel: Path
) -> str:
    """Log one voice as an MLflow logged model (files staged under ``stage/model``); returns its
    ``models:/<model_id>`` URI."""
    tags = {"cosyml.candidate": candidate, "cosyml.speaker": speaker}
    with logged_model(f"voice-{sanitize(candidate)}", run_id, "cosyml-voice", tags) as logged:
        local = stage / "model"
        wheel_path = f"{WHEELS_DIR}/{wheel.name}"
        save_voice(
            local, artifacts, speaker, requirements(wheel_path), run_id, logged.model_id, logged.artifact_location
        )
        (local / WHEELS_DIR).mkdir()
        shutil.copyfile(wheel, local / wheel_path)  # requirements.txt names it by this path
        log_model_artifacts(logged.model_id, local)
    return f"models:/{logged.model_id}"


#: What MLflow's virtualenv manager installs before the requirements (``build_dependencies`` of
#: ``python_env.yaml``, the versions installed here): listed in the requirements too, so that
#: ``pip download -r requirements.txt -d <wheelhouse>`` fills a wheelhouse an offline serve can build from.
BUILD_DISTRIBUTIONS = ("pip", "setuptools", "wheel")


def requirements(cosyml_wheel: str) -> list[str]:
    """The pip requirements of a voice: the installed versions of what the pyfunc imports, as public
    versions (``torch==2.13.0``, not the ``+cpu`` local build, which no index serves), the build tools
    MLflow pins in ``python_env.yaml`` (:data:`BUILD_DISTRIBUTIONS`), and cosyml itself as the wheel carried
    in the model (``cosyml_wheel``: its path relative to the model folder)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in (
        "mlflow",
        "torch",
        "numpy",
        "pandas",
        "soundfile",
        *ORT_DISTRIBUTIONS,
        "transformers",
        "wetext",
        "PyYAML",
        *BUILD_DISTRIBUTIONS,
    ):  # the onnxruntime build installed here (cpu or gpu)
        with contextlib.suppress(PackageNotFoundError):
            out.append(f"{dist}=={version(dist).split('+', 1)[0]}")
    return [*out, cosyml_wheel]


def build_cosyml_wheel(out_dir: Path) -> Path:
    """A wheel (PEP 427, pure Python, no dependencies declared: the voice's requirements list them) of the
    cosyml package this process runs, written directly from its files.

    Its version is ``<cosyml.__version__>+g<12 hex>``, a local version naming the package files' content
    (:func:`code_hash`), so two versions of the code never share a wheel name, nor a requirements text.
    Works the same from a checkout and from an installed cosyml (a ``cosyml init`` project has no
    pyproject.toml), needs no network and no build backend, and the same files give the same bytes (sorted
    entries, fixed timestamps), so re-registering the same code uploads nothing new.
    """
    import base64
    import zipfile

    import cosyml

    package = Path(cosyml.__file__).resolve().parent
    files: list[tuple[str, bytes]] = []
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo"):
            files.append((f"cosyml/{path.relative_to(package).as_posix()}", path.read_bytes()))
    # MLflow keys a model's virtualenv by its requirements text: a version that names the code's content
    # makes a version with other code get its own environment instead of reusing one with stale code.
    version = f"{cosyml.__version__}+g{code_hash(files)[:12]}"
    dist_info = f"cosyml-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: cosyml\nVersion: {version}\nRequires-Python: >=3.11\n"
    wheel_info = "Wheel-Version: 1.0\nGenerator: cosyml\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    entry_points = "[console_scripts]\ncosyml = cosyml.cli:main\n"
    files += [
        (f"{dist_info}/METADATA", metadata.encode()),
        (f"{dist_info}/WHEEL", wheel_info.encode()),
        (f"{dist_info}/entry_points.txt", entry_points.encode()),
    ]

    def record_line(name: str, data: bytes) -> str:
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        return f"{name},sha256={digest},{len(data)}"

    record = "\n".join([*(record_line(n, d) for n, d in files), f"{dist_info}/RECORD,,"]) + "\n"
    files.append((f"{dist_info}/RECORD", record.encode()))
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = out_dir / f"cosyml-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return wheel


def code_hash(files: list[tuple[str, bytes]]) -> str:
    """sha256 (hex) over the (archive name, bytes) of the package files, in the order given (sorted)."""
    digest = hashlib.sha256()
    for name, data in files:
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()
