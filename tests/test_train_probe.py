"""The per-epoch probe (CER/SS of each epoch's weights) and choosing checkpoints by it: a real short training
on the tiny kit (real Whisper and campplus code, real MLflow on sqlite), and the selection logic on
checkpoints with planted probe scores (the kit's random Whisper recognises nothing, so its numbers prove
plumbing only)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from train_helpers import TinyLM, load_set, write_cli_shards, write_corpus

from cosyml.cli import main
from cosyml.errors import ConfigError, InputError
from cosyml.train.checkpoint import CheckpointInfo, apply_retention, list_checkpoints, load_checkpoint, save_checkpoint
from cosyml.train.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_cli_shards(tmp_path_factory.mktemp("probe_train"), num_train=6, num_dev=2)


#: two speakable lines and one that cannot be synthesised (only punctuation)
PROBE_TEXTS = ["zh:你好。", "en:Hello there.", "zh:……"]


def params_file(folder: Path, kit_dir: Path, speaker: str, **train: object) -> Path:
    settings = {"max_epochs": 2, "lr": 0.001, "precision": "fp32", "device": "cpu", "log_every_steps": 1,
                "average_num": 1, "sample_every_epochs": 0, "accum_grad": 1, "seed": 5, "probe_every_epochs": 1,
                "probe_in_domain": 1, "probe_max_tokens": 8, "probe_texts": json.dumps(PROBE_TEXTS, ensure_ascii=False)}  # fmt: skip
    settings.update(train)
    lines = [f"model_dir: {kit_dir}", "prepare:", f"  speaker: {speaker}", "evaluate:",
             f"  whisper_model: {kit_dir / 'whisper.pt'}", "  batch_size: 4", "train:"]  # fmt: skip
    lines += [f"  {k}: {v}" for k, v in settings.items()]
    path = folder / f"params_{speaker}_{len(list(folder.glob('params_*')))}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def train_args(shards: Path, output: Path, params: Path, *extra: str) -> list[str]:
    return ["train", "llm", "--data", str(shards), "--output", str(output), "--params", str(params), *extra]


def run_of(speaker: str):
    import mlflow

    runs = mlflow.search_runs(experiment_names=[f"cosyml/{speaker}"], output_format="list")
    return sorted(runs, key=lambda r: r.info.start_time)


def weights_of(checkpoint_dir: Path, name: str) -> dict[str, torch.Tensor]:
    return load_checkpoint(checkpoint_dir / f"{name}.pt")["model"]


# ------------------------------------------------------------------------------------ a real short training


@pytest.fixture(scope="module")
def probed_run(shards, kit_dir, tmp_path_factory):
    """Two epochs of the kit LLM with the probe after each; the captured stderr."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("probed")
    out = root / "exp" / "llm"
    err = io.StringIO()
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests' own runs (autouse _one_thread): the same float sums, the same audio
    try:
        with contextlib.redirect_stderr(err):
            assert main(train_args(shards, out, params_file(root, kit_dir, "probed"))) == 0
    finally:
        torch.set_num_threads(before)
    return out, err.getvalue()


def test_each_epoch_logs_probe_cer_and_ss_to_mlflow(probed_run):
    from mlflow import MlflowClient

    _, _ = probed_run
    (run,) = run_of("probed")
    client = MlflowClient()
    for key in ("probe/cer", "probe/ss", "probe/cer_zh", "probe/cer_en", "probe/composite", "epoch/cv_loss"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == [0, 1], (key, history)
    cer = [m.value for m in client.get_metric_history(run.info.run_id, "probe/cer")]
    assert all(math.isfinite(v) and v >= 0.0 for v in cer)  # CER can pass 1 (insertions)
    assert client.get_metric_history(run.info.run_id, "probe/seconds")[0].value > 0
    logged = [a.path for a in client.list_artifacts(run.info.run_id, "samples/epoch_001")]
    # 1 dev line + 2 speakable lines, as that epoch's audio samples (sample_every_epochs is 0 here)
    assert sorted(Path(p).name for p in logged) == ["p00_dev_en.wav", "p01_ood_zh.wav", "p02_ood_en.wav"], logged
    probe_files = [a.path for a in client.list_artifacts(run.info.run_id, "probe")]
    assert {"probe/lines.txt", "probe/curves.svg"} <= set(probe_files), probe_files


def test_probe_scores_are_stored_with_each_epoch_checkpoint(probed_run):
    from cosyml.train.probe import read_history

    out, _ = probed_run
    history = read_history(out / "probe" / "history.json")  # the curves outlive checkpoint retention
    assert [r["epoch"] for r in history] == [0, 1] and all("cv_loss" in r and "cer" in r for r in history)
    epochs = {i.name: i for i in list_checkpoints(out / "checkpoints") if i.kind == "epoch"}
    assert set(epochs) == {"epoch_0", "epoch_1"}
    for info in epochs.values():
        assert info.probe is not None
        assert {"cer", "ss", "cer_zh", "cer_en", "cer_dev", "cer_ood", "composite"} <= set(info.probe)
        assert info.probe["n"] == 3 and info.probe["skipped"] == 1
        # the registry's composite with its default weights (1, 1)
        assert info.probe["composite"] == pytest.approx(info.probe["ss"] - info.probe["cer"])


def test_an_unsynthesisable_probe_line_is_reported_and_skipped(probed_run):
    out, err = probed_run
    skipped = [line for line in err.splitlines() if "probe line" in line and "skipped" in line]
    assert len(skipped) == 2, err[-3000:]  # once per epoch
    assert "p03_ood_zh" in skipped[0] and "EmptyTextError" in skipped[0]
    assert not (out / "probe" / "epoch_000" / "p03_ood_zh.wav").exists()
    summary = [line for line in err.splitlines() if "probe epoch 1" in line]
    assert summary and "CER" in summary[0] and " s (synthesis" in summary[0], err[-2000:]
    assert not (out / "probe" / "llm.pt").exists()  # the engine takes the weights from memory: no file


def test_the_probe_synthesises_from_memory_what_the_epoch_file_gives(probed_run, shards, kit_dir, tmp_path):
    """Training probes the weights in memory (no per-epoch weight file); probing the epoch's checkpoint file
    afterwards gives the same wavs, byte for byte, and the same scores."""
    from cosyml.commands.train import _epoch_probe, _epoch_sampler
    from cosyml.config import load_params
    from cosyml.models.modeldir import ModelDir

    out, _ = probed_run
    params = load_params(params_file(tmp_path, kit_dir, "probed"))  # the probed run's settings
    md = ModelDir(kit_dir)
    cfg = params.train
    sampler, rows = _epoch_sampler("llm", md, tmp_path, shards / "dev" / "data.list", 8, cfg.probe_in_domain)
    probe = _epoch_probe(params, md, sampler, rows, tmp_path / "probe")
    result = probe.run(out / "checkpoints" / "epoch_1.pt", 1)
    stored = {i.name: i.probe for i in list_checkpoints(out / "checkpoints")}["epoch_1"]
    timing = ("seconds",)
    assert {k: v for k, v in result.scores.items() if k not in timing} == {
        k: v for k, v in stored.items() if k not in timing
    }
    assert [w.name for w in result.wavs] == sorted(w.name for w in (out / "probe" / "epoch_001").glob("*.wav"))
    for wav in result.wavs:
        assert wav.read_bytes() == (out / "probe" / "epoch_001" / wav.name).read_bytes(), wav.name


def test_average_by_probe_uses_the_stored_scores(probed_run, kit_dir, tmp_path, capsys):
    out, _ = probed_run
    epochs = [i for i in list_checkpoints(out / "checkpoints") if i.kind == "epoch"]
    best = max(epochs, key=lambda i: (i.probe["ss"] - i.probe["cer"], i.step))
    params = params_file(tmp_path, kit_dir, "probed_avg")
    target = tmp_path / "llm.pt"
    args = ["average", "--checkpoints", str(out / "checkpoints"), "--out", str(target), "--num", "1"]
    assert main([*args, "--by", "probe", "--params", str(params)]) == 0
    assert f"(probe: {best.name})" in capsys.readouterr().out
    averaged = torch.load(target, weights_only=True)
    expected = weights_of(out / "checkpoints", best.name)
    assert all(torch.equal(averaged[k], expected[k].float()) for k in averaged)


def test_the_probe_changes_nothing_in_training_and_resume_stays_exact(probed_run, shards, kit_dir, tmp_path):
    """The probe loads Whisper and CAM++ and synthesises between epochs: the training's RNG stream, and a run
    resumed after epoch 0 (probe on), must give the same weights as the uninterrupted probed run."""
    out, _ = probed_run
    reference = weights_of(out / "checkpoints", "epoch_1")

    plain = tmp_path / "plain" / "llm"
    params = params_file(tmp_path, kit_dir, "probe_off", probe_every_epochs=0)
    assert main(train_args(shards, plain, params, "--no-average")) == 0
    resumed = tmp_path / "resumed" / "llm"
    assert main(train_args(shards, resumed, params_file(tmp_path, kit_dir, "probe_re", max_epochs=1))) == 0
    assert main(train_args(shards, resumed, params_file(tmp_path, kit_dir, "probe_re"))) == 0
    for folder in (plain, resumed):
        got = weights_of(folder / "checkpoints", "epoch_1")
        assert got.keys() == reference.keys()
        assert all(torch.equal(got[k], reference[k]) for k in reference), folder
    resumed_info = {i.name: i for i in list_checkpoints(resumed / "checkpoints")}
    assert resumed_info["epoch_1"].probe is not None


# ------------------------------------------------------------------------------------ planted scores


def plant(folder: Path, scores: dict[int, tuple[float, float] | None], cv: dict[int, float] | None = None) -> None:
    """Epoch checkpoints ``epoch_E`` whose one tensor holds E, with probe (cer, ss) and CV losses planted."""
    for epoch, pair in scores.items():
        probe = None if pair is None else {"cer": pair[0], "ss": pair[1], "composite": pair[1] - pair[0]}
        info = CheckpointInfo(
            name=f"epoch_{epoch}", kind="epoch", epoch=epoch, step=epoch + 1, next_epoch=epoch + 1, next_batch=0,
            config_hash="h", cv_loss=(cv or {}).get(epoch, 1.0), probe=probe,
        )  # fmt: skip
        save_checkpoint(folder, info, {"model": {"w": torch.full((2,), float(epoch))}})


SCORES = {0: (0.50, 0.60), 1: (0.10, 0.50), 2: (0.30, 0.90), 3: None}  # composites 0.1, 0.4, 0.6, -


def test_select_by_probe_ranks_by_the_registry_composite(tmp_path):
    from cosyml.train.average import best_probe_checkpoint, select_checkpoints

    plant(tmp_path, SCORES)
    assert [i.name for i in select_checkpoints(tmp_path, 2, "probe")] == ["epoch_1", "epoch_2"]  # oldest first
    assert best_probe_checkpoint(tmp_path).name == "epoch_2"

    def cer_heavy(cer: float, ss: float) -> float:  # registry.cer_weight 5: epoch_1 (lowest CER) wins
        return ss - 5 * cer

    assert [i.name for i in select_checkpoints(tmp_path, 1, "probe", cer_heavy)] == ["epoch_1"]
    assert best_probe_checkpoint(tmp_path, cer_heavy).name == "epoch_1"


def test_average_by_probe_on_the_command_line_follows_registry_weights(tmp_path, capsys):
    ckpts = tmp_path / "checkpoints"
    plant(ckpts, SCORES)
    out = tmp_path / "llm.pt"
    base = ["average", "--checkpoints", str(ckpts), "--out", str(out), "--num", "1", "--by", "probe"]
    assert main(base) == 0
    assert "(probe: epoch_2)" in capsys.readouterr().out
    assert torch.load(out, weights_only=True)["w"].tolist() == [2.0, 2.0]
    assert main([*base, "--set", "registry.cer_weight=5"]) == 0
    assert "(probe: epoch_1)" in capsys.readouterr().out


def test_average_by_probe_without_scores_says_what_to_do(tmp_path, capsys):
    ckpts = tmp_path / "checkpoints"
    plant(ckpts, {0: None, 1: None})
    code = main(["average", "--checkpoints", str(ckpts), "--out", str(tmp_path / "x.pt"), "--by", "probe"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1, err
    assert "no epoch checkpoint has probe scores" in err[0] and "probe_every_epochs" in err[0]


def test_best_probe_and_epoch_sources_resolve(tmp_path):
    from cosyml.evaluation.candidates import parse_candidate, select_candidates

    plant(tmp_path / "exp" / "llm" / "checkpoints", SCORES)
    cand = parse_candidate("llm=best-probe,flow=base", tmp_path / "exp")
    assert Path(cand.llm).name == "epoch_2.pt" and cand.llm_label == "best-probe" and cand.flow == "base"
    assert Path(parse_candidate("llm=epoch-1", tmp_path / "exp").llm).name == "epoch_1.pt"
    # without probe scores (the flow here), the grid drops the part's best-probe candidates with one line
    said: list[str] = []
    grid = select_candidates([], [], ["base", "best-probe"], ["base", "best-probe"], tmp_path / "exp", log=said.append)
    assert [(Path(c.llm).name if c.llm != "base" else "base", c.flow) for c in grid] == [
        ("base", "base"),
        ("epoch_2.pt", "base"),
    ]
    assert len(said) == 1 and "flow" in said[0] and "no probe scores" in said[0]
    # named on the command line it is kept, and reported missing like any absent file
    (named,) = select_candidates(["llm=base,flow=best-probe"], [], [], [], tmp_path / "exp")
    assert not Path(named.flow).exists()


def test_retention_keeps_the_best_probe_epochs(tmp_path):
    # CV loss prefers epoch_0; the probe prefers epoch_2: keep_best 1 keeps both (weights only), drops epoch_1
    plant(tmp_path, {0: (0.9, 0.1), 1: (0.5, 0.5), 2: (0.1, 0.9), 3: (0.9, 0.1), 4: (0.9, 0.1)},
          cv={0: 0.1, 1: 0.5, 2: 0.9, 3: 0.9, 4: 0.9})  # fmt: skip
    apply_retention(tmp_path, keep_last=2, keep_best=1)
    assert [i.name for i in list_checkpoints(tmp_path)] == ["epoch_0", "epoch_2", "epoch_3", "epoch_4"]


def test_early_stopping_on_the_probe_composite(tmp_path):
    from cosyml.train.callbacks import TrainCallbacks
    from cosyml.train.loop import train

    data = write_corpus(tmp_path / "c", 6, durations=[1.2] * 6)
    composites = [0.5, 0.7, 0.6, 0.65, 0.9]  # best at epoch 1, then two epochs without improvement
    seen: list[tuple[int, bool]] = []

    def on_probe(epoch: int, model: torch.nn.Module) -> dict[str, float]:
        assert isinstance(model, TinyLM)
        return {"cer": 1 - composites[epoch], "ss": 0.0, "composite": composites[epoch]}

    def on_checkpoint(info: CheckpointInfo, is_best: bool) -> None:
        if info.kind == "epoch":
            seen.append((info.epoch, is_best))

    cfg = TrainConfig(lr=0.01, max_epochs=5, accum_grad=1, precision="fp32", device="cpu", probe_every_epochs=1,
                      early_stop_on="probe", early_stop_patience=2, keep_last=5)  # fmt: skip
    torch.manual_seed(0)
    result = train(TinyLM(), load_set(data), load_set(data), cfg, tmp_path / "ck", resume=None,
                   callbacks=TrainCallbacks(on_probe=on_probe, on_checkpoint=on_checkpoint))  # fmt: skip
    assert result.stopped_early and result.epochs_completed == 4
    assert seen == [(0, True), (1, True), (2, False), (3, False)]
    assert [h.probe["composite"] for h in result.history] == composites[:4]
    stored = {i.name: i.probe for i in list_checkpoints(tmp_path / "ck")}
    assert stored["epoch_1"]["composite"] == 0.7


def test_probe_every_n_epochs_and_a_failing_probe_never_stop_training(tmp_path):
    from cosyml.train.callbacks import TrainCallbacks
    from cosyml.train.loop import train

    data = write_corpus(tmp_path / "c", 6, durations=[1.2] * 6)
    probed: list[int] = []

    def on_probe(epoch: int, model: torch.nn.Module) -> None:
        probed.append(epoch)
        return None  # nothing scored (every line failed): the epoch is not judged

    cfg = TrainConfig(lr=0.01, max_epochs=4, accum_grad=1, precision="fp32", device="cpu", probe_every_epochs=2,
                      early_stop_on="probe", early_stop_patience=1)  # fmt: skip
    result = train(TinyLM(), load_set(data), None, cfg, tmp_path / "ck", resume=None,
                   callbacks=TrainCallbacks(on_probe=on_probe))  # fmt: skip
    assert probed == [1, 3] and result.epochs_completed == 4 and not result.stopped_early


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"early_stop_on": "probe"}, "train.early_stop_on: 'probe' needs the probe; set train.probe_every_epochs"),
        ({"probe_every_epochs": -1}, "train.probe_every_epochs: -1 is out of range"),
        ({"probe_max_tokens": 0}, "train.probe_max_tokens: 0 is out of range"),
        ({"early_stop_on": "wer"}, "train.early_stop_on: 'wer' is not one of cv_loss, probe"),
    ],
)
def test_probe_params_are_checked(train, message):
    from cosyml.config import Params, with_overrides

    with pytest.raises(ConfigError) as err:
        with_overrides(Params(), {f"train.{k}": v for k, v in train.items()})
    assert str(err.value).startswith(message), str(err.value)


def test_probe_lines_are_fixed_and_take_the_users_lines():
    from cosyml.train.probe import PROBE_OUT_OF_DOMAIN, parse_probe_text, probe_lines

    lines = probe_lines(["第一句。", "second line", "third"], 2, seed=10)
    assert [(x.utt, x.language, x.kind, x.seed) for x in lines[:3]] == [
        ("p00_dev_zh", "zh", "dev", 10),
        ("p01_dev_en", "en", "dev", 11),
        ("p02_ood_zh", "zh", "ood", 12),
    ]
    assert [(x.language, x.text) for x in lines[2:]] == list(PROBE_OUT_OF_DOMAIN)
    assert lines == probe_lines(["第一句。", "second line", "third"], 2, seed=10)
    assert parse_probe_text("en:Hi: there") == ("en", "Hi: there")
    assert parse_probe_text("好的：明天见") == ("zh", "好的：明天见")
    assert parse_probe_text("Note: words") == ("en", "Note: words")  # not a language code
    custom = probe_lines([], 3, ["yue:早晨"], seed=0)
    assert [(x.utt, x.language) for x in custom] == [("p00_ood_yue", "yue")]


def test_selection_helpers_reject_bad_input(tmp_path):
    from cosyml.train.average import select_checkpoints

    plant(tmp_path, SCORES)
    with pytest.raises(ConfigError, match="use cv_loss, last or probe"):
        select_checkpoints(tmp_path, 1, "wer")
    with pytest.raises(InputError):
        select_checkpoints(tmp_path / "none", 1, "probe")
    assert math.isclose(select_checkpoints(tmp_path, 4, "probe")[0].probe["ss"], 0.6)


def test_history_keeps_one_entry_per_epoch_of_the_latest_run(tmp_path):
    from cosyml.train.probe import read_history, write_history

    path = tmp_path / "probe" / "history.json"
    for epoch, cer in ((0, 0.5), (1, 0.4), (2, 0.3)):
        write_history(path, epoch, {"cer": cer, "ss": 0.5, "composite": 0.5 - cer, "cv_loss": None})
    write_history(path, 1, {"cer": 0.9, "ss": 0.1, "composite": -0.8})  # a restarted run reached epoch 1 again
    assert [(r["epoch"], r["cer"]) for r in read_history(path)] == [(0, 0.5), (1, 0.9)]
    assert "cv_loss" not in read_history(path)[0]
    path.write_text("not json")
    assert read_history(path) == []


def test_the_report_plots_cer_and_ss_against_epoch_per_part(tmp_path):
    from cosyml.evaluation.report import probe_curves_svg, render_html, write_plots
    from cosyml.evaluation.suite import SuiteResult

    history = [
        {"epoch": 0, "cer": 0.30, "ss": 0.60, "composite": 0.30, "cv_loss": 2.0},
        {"epoch": 1, "cer": 0.10, "ss": 0.70, "composite": 0.60, "cv_loss": 2.2},
        {"epoch": 2, "cer": 0.40, "ss": 0.65, "composite": 0.25, "cv_loss": 2.4},
    ]
    svg = probe_curves_svg("llm", history)
    assert svg.count("<polyline") == 3 and "best probe composite: epoch 1" in svg
    assert "CER/WER %: 10.0" in svg and "SS ×100: 70.0" in svg
    result = SuiteResult(tmp_path, "spk", tmp_path, True, [], [], {}, probe_history={"llm": history})
    page = render_html(result)
    assert 'id="probe-llm"' in page and "Training curves" in page and '<tr class="best"><td>1</td>' in page
    assert [p.name for p in write_plots(result, tmp_path / "plots")][-1] == "probe_llm.svg"
    empty = render_html(SuiteResult(tmp_path, "spk", tmp_path, True, [], [], {}))
    assert "train.probe_every_epochs: 1" in empty


def test_without_a_whisper_checkpoint_the_probe_says_once_that_it_is_off(kit_dir, tmp_path, capsys):
    from types import SimpleNamespace

    from cosyml.commands.train import _epoch_probe
    from cosyml.config import Params, with_overrides

    params = with_overrides(Params(), {"model_dir": str(kit_dir), "train.probe_every_epochs": 1})
    assert _epoch_probe(params, SimpleNamespace(root=kit_dir), None, [], tmp_path) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "cosyml: train.probe_every_epochs: the probe is off: no Whisper checkpoint "
        "(evaluate.whisper_model and prepare.whisper_model are empty)"
    ]


def test_under_torchrun_rank_0_probes_and_every_rank_stops_on_its_composite(shards, kit_dir, tmp_path):
    """Two gloo ranks: only rank 0 synthesises and scores; the composite reaches rank 1 through a broadcast
    outside the rank-0 block (a collective inside it would fail at once), so early stopping on the probe
    stops both ranks at the same epoch."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "ddp" / "llm"
    # min_delta this large: no epoch after the first improves, patience 1 stops after epoch 1 of 4
    params = params_file(tmp_path, kit_dir, "probe_ddp", max_epochs=4, early_stop_on="probe", early_stop_patience=1,
                         early_stop_min_delta=1e9, keep_last=4)  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "cosyml",
           *train_args(shards, out, params)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-5000:]
    assert "trained llm: 2 epochs" in done.stdout, done.stdout[-2000:]
    summaries = [line for line in done.stderr.splitlines() if "probe epoch" in line]
    assert [line.split("probe epoch ")[1][:1] for line in summaries] == ["0", "1"], summaries  # rank 0 only
    records = {i.name: i for i in list_checkpoints(out / "checkpoints")}
    assert set(records) == {"epoch_0", "epoch_1"} and all(r.probe for r in records.values())
