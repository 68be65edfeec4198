"""``cosyml init``: check a model directory, clips and a Whisper checkpoint, then write a project.

A project is a folder a user versions with git + DVC: ``params.yaml`` (every key commented, real-run
values, this user's paths), ``dvc.yaml``, ``MLproject`` and ``.gitignore`` from the one template
(:mod:`cosyml.project.template`), the test sets (copied unless a CV3-Eval folder is given), a git
repository and a DVC repository with a local directory remote inside the project.

A rerun rewrites only files that still hold what ``init`` wrote (their hashes are kept in
``.cosyml/init.json``); a file the user changed stops the run with one line unless ``force``.
Every check runs before anything is written, and nothing is written outside the project folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cosyml.config import Params
from cosyml.errors import InputError, ModelDirError
from cosyml.fileio import atomic_write_json, atomic_write_text
from cosyml.project.params import render_params
from cosyml.project.template import GITIGNORE, render_dvc_yaml, render_mlproject

STATE_FILE = Path(".cosyml") / "init.json"
LANGUAGES = ("zh", "en", "auto")
#: What init writes besides the test sets; each is checked for user edits on a rerun.
PROJECT_FILES = ("params.yaml", "dvc.yaml", "MLproject", ".gitignore")
# DVC's plots page with vega inlined (scripts/make_plots_template.py); the repository's .dvc/config names it
OFFLINE_PLOTS_TEMPLATE = Path(__file__).with_name("dvc_plots_offline.html")
OFFLINE_PLOTS_PAGE = "plots/offline.html"  # relative to the project's .dvc folder, as DVC resolves it

PARAMS_HEADER = """\
cosyml parameters: the one source of truth for this project. CLI flags (--set section.key=value) and
`mlflow run -P` override them; `dvc repro` reruns the stages whose params changed.
Written by `cosyml init` with real-run values (upstream's SFT recipe where it has one; where we differ,
the comment says why). Edit freely: a rerun of `cosyml init` never overwrites your changes without --force.
"""

#: Real-run values that differ from upstream's recipe or from cosyml's own defaults, and why.
REAL_RUN_NOTES = {
    "train.max_epochs": "upstream's conf says 200 (written for corpus-scale training); one voice's SFT "
    "reaches its best CV loss within ~5-20 epochs, and averaging picks the best ones",
    "train.precision": "auto = bf16 autocast on a GPU (upstream's --use_amp), fp32 on a CPU",
    "train.log_every_steps": "upstream logs every 100 batches; a few hundred clips give only tens of steps per epoch",
    "train.sample_every_epochs": "audio samples per epoch in MLflow (listen: CV loss alone misleads in small-data SFT)",
    "evaluate.max_utts": "0 = every utterance of every subset (the full test sets)",
    "evaluate.max_tokens": "0 = Whisper's own limit (no cap): full transcripts for CER",
    "evaluate.synth_max_tokens": "0 = no cap: only upstream's text-ratio limits end an utterance",
}


@dataclass
class ModelDirReport:
    path: Path
    version: str  # "v2" | "v3"
    files: list[tuple[str, int]]  # (name, bytes) of the official files found


@dataclass
class ClipsReport:
    folders: list[Path]
    layouts: dict[str, int]  # layout -> clips found that way
    audio_files: int
    without_text: int
    hours: float  # of the files whose header gives a duration
    unknown_duration: int = 0


@dataclass
class WhisperReport:
    path: Path
    n_mels: int
    layers: int
    width: int
    multilingual: bool


@dataclass
class InitResult:
    project: Path
    model_dir: ModelDirReport
    clips: ClipsReport
    whisper: WhisperReport | None
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    test_sets: str = ""


# ------------------------------------------------------------------------------------------ checks


def check_model_dir(path: str | Path) -> ModelDirReport:
    """The version and the official files of a model directory; one line for a missing file or a
    directory that mixes CosyVoice2 and CosyVoice3 files."""
    from cosyml.models import keys
    from cosyml.models.modeldir import ModelDir

    root = Path(path).expanduser()
    yamls = [name for name in keys.YAML_NAME.values() if (root / name).is_file()]
    if len(yamls) > 1:
        raise ModelDirError(
            f"{root}: holds both {' and '.join(yamls)} (CosyVoice2 and CosyVoice3 files mixed); "
            "use one official release's folder as it was downloaded"
        )
    md = ModelDir(root)
    other = "v3" if md.version == "v2" else "v2"
    stray = root / keys.SPEECH_TOKENIZER_NAME[other]  # type: ignore[index]  # other is 'v2' or 'v3' (a str to mypy); the table is keyed by those Literal values
    if stray.is_file() and not md.speech_tokenizer_path.is_file():
        raise ModelDirError(
            f"{stray}: a {other} speech tokenizer in a {md.version} directory ({md.yaml_path.name}); "
            f"copy {md.speech_tokenizer_path.name} from the same release as {md.yaml_path.name}"
        )
    md.check()
    names = [
        md.yaml_path,
        md.llm_path,
        md.flow_path,
        md.hift_path,
        md.campplus_path,
        md.speech_tokenizer_path,
        md.speech_tokenizer_batch_path,
        md.spk2info_path,
    ]
    files = [(p.name, p.stat().st_size) for p in names if p.is_file()]
    files.append((f"{md.qwen_dir.name}/", sum(p.stat().st_size for p in md.qwen_dir.rglob("*") if p.is_file())))
    return ModelDirReport(md.root, md.version, files)


def check_clips(folders: Sequence[str | Path]) -> ClipsReport:
    """Clips per detected layout, hours and clips without text; one line for a folder without audio."""
    from cosyml.audio import audio_info
    from cosyml.data.layouts import scan_inputs

    roots = [Path(f).expanduser() for f in folders]
    if not roots:
        raise InputError("no clips folder given; pass --clips with the folder that holds your clips")
    for root in roots:
        if not root.is_dir():
            raise InputError(f"{root}: clips folder not found; pass --clips with the folder that holds your clips")
    scan = scan_inputs(roots)
    audio = [c for c in scan.clips if c.audio is not None]
    for root in roots:
        if not any(c.source.startswith(str(root)) for c in audio):
            raise InputError(
                f"{root}: no audio files in it ({', '.join(e.lstrip('.') for e in _audio_exts())}); "
                "pass --clips with the folder that holds your clips"
            )
    seconds, unknown = 0.0, 0
    for path in [c.audio for c in audio if c.audio is not None]:
        info = audio_info(path)  # None for compressed formats prepare decodes with ffmpeg
        if info is None:
            unknown += 1
        else:
            seconds += info[0] / info[1]
    return ClipsReport(
        folders=roots,
        layouts=dict(scan.layouts),
        audio_files=len(audio),
        without_text=sum(1 for c in audio if not c.text),
        hours=seconds / 3600.0,
        unknown_duration=unknown,
    )


def _audio_exts() -> tuple[str, ...]:
    from cosyml.audio import AUDIO_EXTENSIONS

    return AUDIO_EXTENSIONS


def check_whisper(path: str | Path) -> WhisperReport:
    """Dimensions of an openai-whisper checkpoint (memory-mapped, not read whole); one line if it is not one."""
    import torch

    path = Path(path).expanduser()
    hint = "pass --whisper with an openai-whisper checkpoint such as large-v3.pt"
    if not path.is_file():
        raise InputError(f"{path}: Whisper checkpoint not found; {hint}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        raise InputError(f"{path}: not a Whisper checkpoint (torch cannot read it); {hint}") from None
    dims = data.get("dims") if isinstance(data, dict) else None
    if not isinstance(dims, dict) or not isinstance(data.get("model_state_dict"), dict):
        raise InputError(f"{path}: not a Whisper checkpoint (no dims/model_state_dict); {hint}")
    try:
        return WhisperReport(
            path,
            int(dims["n_mels"]),
            int(dims["n_audio_layer"]),
            int(dims["n_audio_state"]),
            int(dims["n_vocab"]) >= 51865,
        )
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{path}: Whisper checkpoint with incomplete dims; {hint}") from None


def bundled_test_sets() -> Path | None:
    """The repository's ``eval/`` test sets (present in a clone or an editable install)."""
    root = Path(__file__).resolve().parents[2] / "eval"
    return root if root.is_dir() else None


# ------------------------------------------------------------------------------------------ writing


def project_params(
    speaker: str, model_dir: str, inputs: Sequence[str], whisper: str, language: str, test_sets: str
) -> Params:
    """Real-run params (:mod:`cosyml.config` defaults) with this project's paths and names."""
    base = Params()
    return dataclasses.replace(
        base,
        model_dir=model_dir,
        prepare=dataclasses.replace(
            base.prepare,
            speaker=speaker,
            inputs=list(inputs),
            whisper_model=whisper,
            language=language,
            transcribe=bool(whisper),
        ),
        evaluate=dataclasses.replace(base.evaluate, test_sets=test_sets),
    )


def render_project(params: Params) -> dict[str, str]:
    """The text of every project file for ``params``."""
    return {
        "params.yaml": render_params(params, PARAMS_HEADER, notes=REAL_RUN_NOTES),
        "dvc.yaml": render_dvc_yaml(params.prepare.inputs, whisper=bool(params.prepare.whisper_model)),
        "MLproject": render_mlproject(),
        ".gitignore": GITIGNORE,
    }


def _sha(text: str | bytes) -> str:
    return hashlib.sha256(text.encode("utf-8") if isinstance(text, str) else text).hexdigest()


def _path_for_project(path: Path, project: Path) -> str:
    """``path`` relative to the project when it is inside it, else absolute (params must work from the project)."""
    resolved = path.expanduser().resolve()
    try:
        return resolved.relative_to(project.resolve()).as_posix()
    except ValueError:
        return str(resolved)


def init_project(
    project: str | Path,
    model_dir: str | Path,
    clips: Sequence[str | Path],
    speaker: str,
    whisper: str | Path | None = None,
    language: str = "auto",
    test_sets: str | Path | None = None,
    force: bool = False,
    run: Callable[[list[str], Path], None] | None = None,
) -> InitResult:
    """Check everything, then write or update the project in ``project``. See the module docstring."""
    from cosyml.data.prepare import check_speaker

    project = Path(project).expanduser()
    check_speaker(speaker)
    if language not in LANGUAGES:
        raise InputError(f"--language {language}: use one of {', '.join(LANGUAGES)}")
    if project.exists() and not project.is_dir():
        raise InputError(f"{project}: exists and is not a folder; choose a new or empty folder for the project")
    state_path = project / STATE_FILE
    state: dict[str, Any] = {}
    if state_path.is_file():
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
        except ValueError:
            state = {}
    elif project.is_dir() and any(project.iterdir()) and not force:
        raise InputError(
            f"{project}: not empty and not a cosyml project; choose a new or empty folder "
            "(or pass --force to add a project to it)"
        )
    md = check_model_dir(model_dir)
    clip_report = check_clips(clips)
    whisper_report = check_whisper(whisper) if whisper else None
    sets_src: Path | None
    if test_sets is not None:
        sets_src = Path(test_sets).expanduser()
        if not sets_src.is_dir():
            raise InputError(f"{sets_src}: test-set folder not found; pass --test-sets with a CV3-Eval data/ folder")
    else:
        sets_src = bundled_test_sets()
        if sets_src is None and not (project / "eval").is_dir():
            raise InputError("no test sets found next to cosyml; pass --test-sets with a CV3-Eval data/ folder")

    params = project_params(
        speaker,
        _path_for_project(md.path, project),
        [_path_for_project(Path(c), project) for c in clips],
        _path_for_project(whisper_report.path, project) if whisper_report else "",
        language,
        "eval" if test_sets is None else _path_for_project(sets_src, project),  # type: ignore[arg-type]  # sets_src is set whenever test_sets is not None (above); mypy does not relate the two
    )
    texts = render_project(params)
    written_before: dict[str, str] = state.get("files", {})
    plan: list[str] = []
    unchanged: list[str] = []
    for name, text in texts.items():
        target = project / name
        if not target.is_file():
            plan.append(name)
            continue
        current = _sha(target.read_bytes())
        if current == _sha(text):
            unchanged.append(name)
        elif current == written_before.get(name) or force:
            plan.append(name)
        else:
            raise InputError(
                f"{target}: changed since `cosyml init` wrote it, so nothing was written; keep your edits "
                "(edit the file by hand) or pass --force to overwrite it"
            )

    project.mkdir(parents=True, exist_ok=True)
    for name in plan:
        atomic_write_text(project / name, texts[name])
    if test_sets is None and not (project / "eval").exists():
        assert sets_src is not None
        tmp = project / ".eval.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(sets_src, tmp)
        os.replace(tmp, project / "eval")
    _init_repositories(project, run or _run)
    atomic_write_json({"files": {n: _sha(t) for n, t in texts.items()}}, project / STATE_FILE)
    return InitResult(project, md, clip_report, whisper_report, plan, unchanged, params.evaluate.test_sets)


def _run(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    try:
        result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    except FileNotFoundError:
        raise InputError(
            f"`{cmd[0]}` not found; install it (git, and dvc comes with cosyml) and rerun cosyml init"
        ) from None
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()
        raise InputError(f"{cwd}: `{' '.join(cmd)}` failed: {last[-1] if last else result.returncode}")


def _init_repositories(project: Path, run: Callable[[list[str], Path], None]) -> None:
    """git init, dvc init and a local DVC remote in ``<project>/dvc-remote`` (each only when missing)."""
    if not (project / ".git").exists():
        run(["git", "init", "-q"], project)
    if not (project / ".dvc").is_dir():
        run(["dvc", "init", "-q"], project)
        run(["dvc", "config", "core.analytics", "false"], project)
    config = project / ".dvc" / "config"
    if "remote" not in (config.read_text(encoding="utf-8") if config.is_file() else ""):
        run(["dvc", "remote", "add", "-d", "local", "dvc-remote"], project)
    # `dvc plots show` loads vega from a CDN: a page that carries it renders without internet
    page = project / ".dvc" / OFFLINE_PLOTS_PAGE
    if not page.is_file():
        page.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(page, OFFLINE_PLOTS_TEMPLATE.read_text(encoding="utf-8"))
    if "html_template" not in (config.read_text(encoding="utf-8") if config.is_file() else ""):
        run(["dvc", "config", "plots.html_template", OFFLINE_PLOTS_PAGE], project)


def next_commands(result: InitResult) -> list[str]:
    """What to run after init (printed by the CLI)."""
    cd = f"cd {result.project}"
    return [
        cd,
        "git add -A && git commit -m 'cosyml project'",
        "dvc repro                      # prepare -> extract -> shards -> train -> evaluate -> tune -> promote",
        "mlflow ui --backend-store-uri sqlite:///$(pwd)/mlflow.db   # watch loss, listen to samples",
        "dvc push                       # data versions to the local remote (dvc-remote/)",
    ]


DEMO_HEADER = """\
The demo's parameters: cosyml's one pipeline template (see `cosyml init`) run on the tiny random-weight kit
and the committed toy corpus, on a CPU in minutes. The small values below (3 epochs, 1 utterance per test
subset, capped token counts, 3 tuning trials) are the demo's only: a project from `cosyml init` gets the
real-run values (cosyml/config.py). Tiny-kit numbers prove plumbing, not quality.
CLI flags (--set section.key=value) and `mlflow run -P` override these.
"""


def render_demo(params: Params) -> dict[str, str]:
    """The repository's own ``params.yaml``, ``dvc.yaml`` and ``MLproject`` for the demo ``params``: the
    project template plus the kit stage (``tests/test_init.py`` checks the committed files equal this)."""
    return {
        "params.yaml": render_params(params, DEMO_HEADER, include_kit=True),
        "dvc.yaml": render_dvc_yaml(params.prepare.inputs, whisper=bool(params.prepare.whisper_model), kit=True),
        "MLproject": render_mlproject(kit=True),
    }
