"""`cosyml init`: the checks, the files, reruns, refusals; the one pipeline template shared by the demo and
generated projects; real-run values (no demo value) in a generated project; Unicode speaker names."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import yaml

from cosyml.cli import main
from cosyml.config import Params, as_flat_dict, from_mapping, load_params
from cosyml.errors import CosymlError, InputError, ModelDirError
from cosyml.project import init as project_init
from cosyml.project.params import undocumented_keys
from cosyml.project.template import stage_names

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "examples" / "toy_speaker"


def _no_repos(cmd: list[str], cwd: Path) -> None:
    """git/dvc init stand-in for the fast tests (the slow test runs the real ones)."""
    (cwd / (".git" if cmd[0] == "git" else ".dvc")).mkdir(exist_ok=True)


@pytest.fixture()
def clips(tmp_path) -> Path:
    folder = tmp_path / "my clips"
    shutil.copytree(TOY, folder)
    return folder


def _init(project: Path, kit_dir: Path, clips: Path, **kw):
    kw.setdefault("whisper", kit_dir / "whisper.pt")
    return project_init.init_project(project, kit_dir, [clips], kw.pop("speaker", "派蒙"), run=_no_repos, **kw)


def test_init_reports_checks_and_writes_a_project(tmp_path, kit_dir, clips):
    project = tmp_path / "p"
    result = _init(project, kit_dir, clips, language="zh")
    assert result.model_dir.version == "v2"
    names = [n for n, _ in result.model_dir.files]
    assert {"cosyvoice2.yaml", "llm.pt", "flow.pt", "hift.pt", "campplus.onnx", "speech_tokenizer_v2.onnx"} <= set(
        names
    )
    wavs = sorted(clips.glob("*.wav"))
    labs = {p.stem for p in clips.glob("*.lab") if p.read_text(encoding="utf-8", errors="replace").strip()}
    assert result.clips.audio_files == len(wavs)
    assert result.clips.without_text == sum(1 for p in wavs if p.stem not in labs)
    assert result.clips.layouts == {
        "wav+lab": sum(1 for p in wavs if (clips / f"{p.stem}.lab").is_file()),
        "audio only": sum(1 for p in wavs if not (clips / f"{p.stem}.lab").is_file()),
    }
    assert 0 < result.clips.hours < 1
    assert result.whisper is not None and result.whisper.n_mels == 128
    assert sorted(result.written) == sorted(project_init.PROJECT_FILES)
    for name in (*project_init.PROJECT_FILES, "eval/zero_shot/zh/text"):
        assert (project / name).is_file(), name
    params = load_params(project / "params.yaml")
    assert params.prepare.speaker == "派蒙" and params.prepare.language == "zh"
    assert params.prepare.inputs == [str(clips.resolve())]
    assert Path(params.model_dir) == kit_dir.resolve()
    assert params.prepare.whisper_model == str((kit_dir / "whisper.pt").resolve())
    assert params.evaluate.test_sets == "eval"
    assert undocumented_keys((project / "params.yaml").read_text()) == []
    # dvc.yaml depends on the clips folder and the Whisper checkpoint through params
    dvc = (project / "dvc.yaml").read_text()
    assert "${prepare.inputs[0]}" in dvc and "${prepare.whisper_model}" in dvc


def test_cli_prints_the_checks_and_next_commands(tmp_path, kit_dir, clips, capsys, monkeypatch):
    monkeypatch.setattr(project_init, "_run", _no_repos)
    code = main(
        [
            "init",
            str(tmp_path / "p"),
            "--model-dir",
            str(kit_dir),
            "--clips",
            str(clips),
            "--speaker",
            "派蒙",
            "--whisper",
            str(kit_dir / "whisper.pt"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "CosyVoice2" in out and "wav+lab" in out and "without text" in out and "dvc repro" in out


def test_rerun_keeps_user_edits_unless_force(tmp_path, kit_dir, clips, capsys):
    project = tmp_path / "p"
    _init(project, kit_dir, clips)
    again = _init(project, kit_dir, clips)
    assert again.written == [] and sorted(again.unchanged) == sorted(project_init.PROJECT_FILES)

    params = project / "params.yaml"
    edited = params.read_text().replace("max_epochs: 20", "max_epochs: 7")
    params.write_text(edited)
    with pytest.raises(InputError, match=r"params\.yaml: changed since `cosyml init` wrote it"):
        _init(project, kit_dir, clips, language="en")
    assert params.read_text() == edited  # nothing overwritten
    code = main(["init", str(project), "--model-dir", str(kit_dir), "--clips", str(clips), "--speaker", "派蒙"])
    assert code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1

    forced = _init(project, kit_dir, clips, language="en", force=True)
    assert "params.yaml" in forced.written
    assert load_params(params).prepare.language == "en" and load_params(params).train.max_epochs == 20

    # a file init wrote and the user left alone is updated by a rerun with new arguments
    updated = _init(project, kit_dir, clips, language="zh")
    assert updated.written == ["params.yaml"] and load_params(params).prepare.language == "zh"


def _mixed(kit_dir: Path, tmp_path: Path) -> Path:
    mixed = tmp_path / "mixed"
    shutil.copytree(kit_dir, mixed)
    shutil.copy(mixed / "cosyvoice2.yaml", mixed / "cosyvoice3.yaml")
    return mixed


def _missing_llm(kit_dir: Path, tmp_path: Path) -> Path:
    broken = tmp_path / "nollm"
    shutil.copytree(kit_dir, broken)
    (broken / "llm.pt").unlink()
    return broken


def _stray_v3(kit_dir: Path, tmp_path: Path) -> Path:
    stray = tmp_path / "stray"
    shutil.copytree(kit_dir, stray)
    (stray / "speech_tokenizer_v2.onnx").rename(stray / "speech_tokenizer_v3.onnx")
    return stray


@pytest.mark.parametrize(
    ("case", "error", "message"),
    [
        ("missing_llm", ModelDirError, r"llm.pt: missing; copy the official llm.pt"),
        ("mixed", ModelDirError, r"both cosyvoice2.yaml and cosyvoice3.yaml"),
        ("stray_v3", ModelDirError, r"speech_tokenizer_v3.onnx: a v3 speech tokenizer in a v2 directory"),
        ("no_audio", InputError, r"no audio files in it"),
        ("bad_whisper", InputError, r"not a Whisper checkpoint"),
        ("foreign_dir", InputError, r"not empty and not a cosyml project"),
        ("bad_speaker", InputError, r"use only letters"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, kit_dir, clips, case, error, message):
    project = tmp_path / "p"
    model, clip_dirs, whisper, speaker = kit_dir, [clips], kit_dir / "whisper.pt", "派蒙"
    if case == "missing_llm":
        model = _missing_llm(kit_dir, tmp_path)
    elif case == "mixed":
        model = _mixed(kit_dir, tmp_path)
    elif case == "stray_v3":
        model = _stray_v3(kit_dir, tmp_path)
    elif case == "no_audio":
        empty = tmp_path / "texts"
        empty.mkdir()
        (empty / "a.lab").write_text("hello")
        clip_dirs = [clips, empty]
    elif case == "bad_whisper":
        whisper = tmp_path / "large-v3.pt"
        whisper.write_bytes(b"<html>not found</html>")
    elif case == "foreign_dir":
        project.mkdir()
        (project / "notes.txt").write_text("mine")
    elif case == "bad_speaker":
        speaker = "my_voice"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(error, match=message) as caught:
        project_init.init_project(project, model, clip_dirs, speaker, whisper=whisper, run=_no_repos)
    assert len(str(caught.value).splitlines()) == 1
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


# ------------------------------------------------------------------------------------------ template


def _demo_params() -> Params:
    return load_params(ROOT / "params.yaml")


def test_repository_files_are_the_template_with_demo_params():
    rendered = project_init.render_demo(_demo_params())
    for name in ("dvc.yaml", "MLproject", "params.yaml"):
        assert (ROOT / name).read_text(encoding="utf-8") == rendered[name], f"{name}: regenerate with render_demo"


def test_demo_and_generated_project_have_the_same_stages(tmp_path, kit_dir, clips):
    project = tmp_path / "p"
    _init(project, kit_dir, clips)
    demo = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    generated = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert stage_names((ROOT / "dvc.yaml").read_text()) == ["kit", *generated]
    demo.pop("kit")
    assert demo == generated  # stage by stage, byte for byte after parsing: the demo cannot drift
    entries = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]
    entries.pop("kit")
    assert entries == yaml.safe_load((project / "MLproject").read_text())["entry_points"]


def test_generated_project_has_real_run_values_and_no_demo_value(tmp_path, kit_dir, clips):
    project = tmp_path / "p"
    _init(project, kit_dir, clips)
    texts = {name: (project / name).read_text() for name in project_init.PROJECT_FILES}
    for name, text in texts.items():
        text = text.replace(str(kit_dir.resolve()), "MODEL").replace(str(clips.resolve()), "CLIPS")  # the user's paths
        for demo_word in ("kit", "examples/", "toy", "models/base"):
            assert demo_word not in text, f"{name} names {demo_word}"
    generated = as_flat_dict(load_params(project / "params.yaml"))
    real = as_flat_dict(Params())
    demo = as_flat_dict(_demo_params())
    project_keys = {"model_dir", "prepare.speaker", "prepare.inputs", "prepare.whisper_model", "prepare.transcribe"}
    for key, value in generated.items():
        if key in project_keys or key.startswith("kit."):
            continue
        assert value == real[key], f"{key}: {value!r} is not the real-run default {real[key]!r}"
        if demo[key] != real[key]:
            assert value != demo[key], key
    # the real run: full test sets, no token caps, upstream's recipe from the model yaml
    assert generated["evaluate.max_utts"] == 0 and generated["evaluate.max_tokens"] == 0
    assert generated["evaluate.synth_max_tokens"] == 0 and generated["evaluate.subsets"] == []
    assert generated["train.lr"] is None and generated["train.accum_grad"] is None  # the model yaml's 1e-5, 2
    assert generated["train.precision"] == "auto" and generated["train.sample_every_epochs"] == 1
    assert "upstream's conf says 200" in texts["params.yaml"]  # a default that differs from upstream says why


def test_every_demo_param_is_documented():
    text = (ROOT / "params.yaml").read_text()
    assert undocumented_keys(text) == []
    assert from_mapping(Params, yaml.safe_load(text)) == _demo_params()


def test_single_string_for_a_list_param_is_one_item():
    params = from_mapping(Params, {"prepare": {"inputs": "raw"}})
    assert params.prepare.inputs == ["raw"]
    assert dataclasses.replace(params.prepare, inputs=[]).inputs == []


# ------------------------------------------------------------------------------------------ speakers


@pytest.mark.parametrize("speaker", ["派蒙", "Zoë", "narrator-2", "パイモン", "toy"])
def test_unicode_speakers_are_valid_utt_prefixes(speaker):
    from cosyml.data.prepare import check_speaker

    check_speaker(speaker)


@pytest.mark.parametrize("speaker", ["my_voice", "a b", "", "a/b", "x:y"])
def test_bad_speakers_are_refused(speaker):
    from cosyml.data.prepare import check_speaker

    with pytest.raises(CosymlError):
        check_speaker(speaker)


def test_registered_model_name_is_safe_stable_and_distinct(tmp_path):
    import mlflow

    from cosyml.registry import speaker_model_name

    assert speaker_model_name("toy") == "cosyml-toy"
    name = speaker_model_name("派蒙")
    assert name.isascii() and name.startswith("cosyml-xn--") and name == speaker_model_name("派蒙")
    names = {speaker_model_name(s) for s in ("派蒙", "パイモン", "Zoë", "xn--nzw411c", "派蒙-2")}
    assert len(names) == 5
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    client.create_registered_model(name, tags={"cosyml.speaker": "派蒙"}, description="cosyml voice of speaker '派蒙'")
    assert client.get_registered_model(name).tags["cosyml.speaker"] == "派蒙"


# ------------------------------------------------------------------------------------------ resume in the pipeline


def test_compatible_resume_continues_only_the_same_training(tmp_path, kit_dir, capsys):
    import json

    from cosyml.commands.train import FINGERPRINT_FILE, compatible_resume
    from cosyml.train.checkpoint import CheckpointInfo

    params = dataclasses.replace(Params(), model_dir=str(kit_dir))
    data, output = tmp_path / "shards", tmp_path / "exp" / "llm"
    data.mkdir()
    folder = output / "checkpoints"
    assert compatible_resume("llm", params, data, output) == "none"  # nothing to resume
    assert (folder / FINGERPRINT_FILE).is_file()

    info = CheckpointInfo(name="epoch_0", kind="epoch", epoch=0, step=2, next_epoch=1, next_batch=0, config_hash="x")
    (folder / "epoch_0.pt").write_bytes(b"weights")
    (folder / "epoch_0.json").write_text(json.dumps(dataclasses.asdict(info)))
    longer = dataclasses.replace(params, train=dataclasses.replace(params.train, max_epochs=40))
    assert compatible_resume("llm", longer, data, output) == "auto"  # more epochs: the same training, continued
    assert "resuming llm" in capsys.readouterr().err

    other_lr = dataclasses.replace(params, train=dataclasses.replace(params.train, lr=1e-6))
    assert compatible_resume("llm", other_lr, data, output) == "none"
    assert "starting over" in capsys.readouterr().err
    assert not (folder / "epoch_0.pt").exists() and not (folder / "epoch_0.json").exists()


def test_train_stages_keep_their_checkpoints_and_resume():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for part in ("llm", "flow"):
        stage = stages[f"train_{part}"]
        assert "--resume compatible" in stage["cmd"]
        assert stage["outs"] == [{f"exp/{part}/checkpoints": {"persist": True, "cache": False}}]


def test_printed_model_name_shows_the_speakers_own_name():
    from cosyml.registry import shown_name, speaker_model_name

    assert shown_name(speaker_model_name("派蒙"), "派蒙").endswith(" (派蒙)")
    assert shown_name("cosyml-toy", "toy") == "cosyml-toy"
