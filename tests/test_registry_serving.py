"""Serving memory (issue 17.9): a served voice gets every prompt wav in a new temporary file; the prompt
feature cache must neither grow with requests nor recompute a prompt it has seen."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from cosyml.audio import write_wav


def test_prompt_features_are_cached_by_content_and_the_cache_is_bounded(kit_dir: Path, tmp_path: Path) -> None:
    from cosyml.synth.engine import SynthEngine
    from cosyml.synth.frontend import PROMPT_CACHE_SIZE

    frontend = SynthEngine.load(kit_dir, device="cpu").prompt
    t = np.arange(16000) / 16000
    first = tmp_path / "prompt.wav"
    write_wav(first, (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), 16000)
    for i in range(5):  # the same prompt in a new temporary file per request: one entry, computed once
        copy = tmp_path / f"request-{i}" / "prompt-0.bin"
        copy.parent.mkdir()
        shutil.copyfile(first, copy)
        frontend.features(copy)
    assert len(frontend._cache) == 1
    for i in range(PROMPT_CACHE_SIZE + 5):  # many distinct prompts: bounded
        other = tmp_path / f"other-{i}.wav"
        write_wav(other, (0.3 * np.sin(2 * np.pi * (100 + 7 * i) * t)).astype(np.float32), 16000)
        frontend.features(other)
    assert len(frontend._cache) == PROMPT_CACHE_SIZE


def register_base_voice(kit_dir: Path, tmp_path: Path) -> tuple[str, Path]:
    """Register the kit's base voice in a sqlite store under ``tmp_path``; (model URI, downloaded folder)."""
    import mlflow
    import torch

    from cosyml.config import RegistryConfig
    from cosyml.registry import read_candidates, register_candidates

    speakers = tmp_path / "spk2embedding.pt"
    torch.save({"toy": torch.randn(192, generator=torch.Generator().manual_seed(1)).tolist()}, speakers)
    summary = {
        "cer": 0.1,
        "cer_ci": [0.05, 0.15],
        "ss": 0.5,
        "ss_ci": [0.4, 0.6],
        "n": 10,
        "missing": 0,
        "over_50": 0.0,
    }
    candidates = tmp_path / "candidates.json"
    candidates.write_text(
        json.dumps(
            {
                "speaker": "toy",
                "model_dir": str(kit_dir),
                "candidates": [{"name": "base", "llm": "base", "flow": "base", "summary": summary, "base": True}],
            }
        ),
        encoding="utf-8",
    )
    (version,) = register_candidates(read_candidates(candidates), RegistryConfig(speakers=str(speakers)))
    uri = f"models:/{version.name}/{version.version}"
    return uri, Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "voice")))


def test_a_registered_voice_carries_installable_requirements(
    kit_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Issue 15.11: requirements named ``torch==2.13.0+cpu`` and a bare ``cosyml`` (no index serves either).
    Now cosyml travels as a wheel inside the model and every pin is a public version; pip resolves the
    requirements file offline (``--no-index``) against the model's wheel and this environment."""
    import subprocess
    import sys

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("COSYML_TRACKING", "on")
    monkeypatch.chdir(tmp_path)
    uri, model = register_base_voice(kit_dir, tmp_path)
    lines = (model / "requirements.txt").read_text(encoding="utf-8").split()
    assert not [line for line in lines if "==" in line and "+" in line], lines  # no local builds (2.13.0+cpu)
    assert any(line.startswith("torch==") for line in lines)
    (wheel,) = [line for line in lines if line.endswith(".whl")]
    assert wheel.startswith("wheels/cosyml-") and (model / wheel).is_file()
    assert "cosyml" not in lines  # no bare name that no index serves
    # what MLflow's virtualenv manager installs first is in the requirements too: `pip download -r
    # requirements.txt` fills a wheelhouse an offline `mlflow models serve` can build the environment from
    import yaml

    python_env = yaml.safe_load((model / "python_env.yaml").read_text(encoding="utf-8"))
    assert python_env["build_dependencies"] and set(python_env["build_dependencies"]) <= set(lines), python_env
    pip = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--find-links", str(model / "wheels")]
    done = subprocess.run([*pip, "-r", "requirements.txt"], cwd=model, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    fresh = subprocess.run(
        [*pip, "--no-deps", "--ignore-installed", "--target", str(tmp_path / "t"), wheel],
        cwd=model,
        capture_output=True,
        text=True,
    )
    assert fresh.returncode == 0 and "Would install cosyml" in fresh.stdout, fresh.stdout + fresh.stderr

    # serving it with MLflow's default env manager where pyenv lacks its Python: one line, before MLflow
    # tries a download (pyenv itself, on an empty PYENV_ROOT)
    if shutil.which("pyenv"):
        from cosyml.cli import main

        monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "no-pythons"))
        python = yaml.safe_load((model / "python_env.yaml").read_text(encoding="utf-8"))["python"]
        assert main(["serve", "--env-manager", "virtualenv", "--model-uri", uri]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"the voice needs Python {python} (its python_env.yaml) and pyenv has no Python" in err, err


def test_error_replies_name_no_server_paths(kit_dir: Path, tmp_path: Path) -> None:
    """Issue 17.10: a served reply said where the server keeps its temporary files."""
    import base64

    from cosyml.pyfunc import VoiceModel, VoiceSpec
    from cosyml.synth.engine import SynthEngine

    voice = VoiceModel()
    voice.spec = VoiceSpec(speaker="toy", candidate="base", base_uri="runs:/x/base_model", base_hash="h")
    voice.engine = SynthEngine.load(kit_dir, device="cpu")
    voice.batch_size = 4
    voice._lock = __import__("threading").Lock()
    short = tmp_path / "short.wav"
    write_wav(short, np.zeros(80, dtype=np.float32), 16000)  # 5 ms: too short for one speech token
    frame = __import__("pandas").DataFrame(
        [
            {
                "text": "Hello.",
                "mode": "zero_shot",
                "prompt_text": "Hi.",
                "prompt_wav": base64.b64encode(short.read_bytes()).decode(),
            }
        ]
    )
    error = voice.predict(None, frame)["error"][0]
    assert error.startswith("prompt_wav: prompt wav is") and "too short" in error, error
    assert "/" not in error.split("prompt wav is", 1)[0] and "/tmp" not in error and "cosyml-voice" not in error


def test_an_environment_manager_that_cannot_work_here_is_one_line(monkeypatch, capsys) -> None:
    from cosyml.cli import main

    monkeypatch.setenv("PATH", "/nonexistent")
    assert main(["serve", "--env-manager", "conda", "--model-uri", "runs:/x/model"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--env-manager conda: `conda` is not on PATH" in err, err


def test_the_cosyml_wheel_builds_from_an_installed_package_without_a_checkout(tmp_path):
    """A `cosyml init` project runs an installed cosyml (no pyproject.toml beside it): `promote --register`
    failed there ("no pyproject.toml beside the cosyml package"). The wheel is written from the package files,
    and the installed copy gives the same bytes as the checkout."""
    from cosyml.registry import build_cosyml_wheel

    wheel = build_cosyml_wheel(tmp_path / "from_checkout")
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target", str(site)]
    subprocess.run([*pip, str(wheel)], check=True, capture_output=True)
    script = (
        "import sys, cosyml; from pathlib import Path; from cosyml.registry import build_cosyml_wheel;"
        f"assert Path(cosyml.__file__).is_relative_to({str(site)!r}), cosyml.__file__;"
        f"print(build_cosyml_wheel(Path({str(tmp_path / 'from_installed')!r})))"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    rebuilt = Path(done.stdout.strip().splitlines()[-1])
    assert rebuilt.read_bytes() == wheel.read_bytes()


def test_the_cosyml_wheel_version_changes_with_the_code(tmp_path):
    """MLflow keys a virtualenv by the text of the requirements; with a fixed ``cosyml-0.1.0`` wheel a later
    version carrying other cosyml code reused the old environment and served stale code. The wheel's
    version carries a hash of the package files (``0.1.0+g<12 hex>``): the same files give the same name
    and bytes, one changed byte gives another name, so the requirements (the environment's key) change."""
    import cosyml
    from cosyml.registry import requirements

    package = Path(cosyml.__file__).resolve().parent
    copies = {}
    for label in ("same", "changed"):
        root = tmp_path / label
        shutil.copytree(package, root / "cosyml", ignore=shutil.ignore_patterns("__pycache__"))
        copies[label] = root
    code = copies["changed"] / "cosyml" / "audio.py"
    code.write_text(code.read_text(encoding="utf-8") + "\n# a later version of the code\n", encoding="utf-8")

    def build(root: Path) -> Path:
        script = (
            "from pathlib import Path; from cosyml.registry import build_cosyml_wheel;"
            f"print(build_cosyml_wheel(Path({str(root / 'out')!r})))"
        )
        env = {**os.environ, "PYTHONPATH": str(root)}
        done = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        return Path(done.stdout.strip().splitlines()[-1])

    from cosyml.registry import build_cosyml_wheel

    here = build_cosyml_wheel(tmp_path / "here")
    same, changed = build(copies["same"]), build(copies["changed"])
    assert same.name == here.name and same.read_bytes() == here.read_bytes()
    assert changed.name != here.name
    assert re.fullmatch(rf"cosyml-{re.escape(cosyml.__version__)}\+g[0-9a-f]{{12}}-py3-none-any\.whl", here.name)
    assert requirements(f"wheels/{changed.name}") != requirements(f"wheels/{here.name}")
    with zipfile.ZipFile(changed) as archive:  # the version inside the wheel is the one in its name
        version = changed.name.split("-")[1]
        assert f"\nVersion: {version}\n" in archive.read(f"cosyml-{version}.dist-info/METADATA").decode()


def test_a_new_serving_environment_is_not_shadowed_by_the_checkout(tmp_path, monkeypatch):
    """`cosyml serve --env-manager virtualenv` from a clone after `source scripts/env.sh` served the clone's
    code, not the version's wheel: the server inherited PYTHONPATH=<clone> and ran in the clone, whose
    `cosyml/` uvicorn puts first on sys.path. Only `local` keeps them; relative paths become absolute."""
    from cosyml.commands.serve import serving_environment

    monkeypatch.chdir(tmp_path)
    (tmp_path / "cosyml").mkdir()  # a checkout's package in the working directory
    environ = {
        "PYTHONPATH": str(tmp_path),
        "MLFLOW_TRACKING_URI": "sqlite:///mlflow.db",
        "PIP_FIND_LINKS": "wheelhouse https://example.org/wheels",
        "PIP_NO_INDEX": "1",
    }
    assert serving_environment("local", environ) == (environ, None)
    env, cwd = serving_environment("virtualenv", environ)
    assert "PYTHONPATH" not in env and env["PIP_NO_INDEX"] == "1"
    assert cwd is not None and Path(cwd).is_dir() and not os.listdir(cwd) and Path(cwd) != tmp_path
    assert env["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert env["PIP_FIND_LINKS"] == f"{tmp_path / 'wheelhouse'} https://example.org/wheels"
    os.rmdir(cwd)
