"""The evaluation grid end to end on the tiny kit: real synthesis engine, real Whisper code, real CAM++,
real files; two good candidates and one with unreadable weights, a test set with bad items, the
speaker-SFT set built from a prepared dev split; cache reuse; candidates.json shape; the CLI with
MLflow; the HTML report rendered by a real headless browser.

Random weights: the numbers prove plumbing only. Sizes are kept tiny (one usable utterance per
subset, 10 speech tokens, 4 Whisper tokens) so the module runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import configparser
import dataclasses
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
import yaml

from cosyml.audio import load_mono
from cosyml.commands.evaluate import suite_config
from cosyml.config import EvaluateConfig, Params, PrepareConfig
from cosyml.evaluation.candidates import select_candidates
from cosyml.evaluation.report import write_outputs
from cosyml.evaluation.suite import SuiteResult, run_suite
from cosyml.evaluation.testset import SubsetLine, write_subset

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "examples" / "toy_speaker"
SUMMARY_KEYS = {"cer", "cer_ci", "ss", "ss_ci", "n", "missing", "over_50"}
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@dataclasses.dataclass
class Setup:
    root: Path
    params: Params
    specs: list[str]
    llm_ft: Path
    kit: Path


def _perturbed_llm(kit: Path, out: Path, seed: int) -> Path:
    """The kit's llm.pt with every float tensor nudged: a stand-in for fine-tuned weights."""
    state = torch.load(kit / "llm.pt", map_location="cpu", weights_only=True)
    gen = torch.Generator().manual_seed(seed)
    tuned = {
        k: (v + 0.02 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v) for k, v in state.items()
    }
    torch.save(tuned, out)
    return out


@pytest.fixture(scope="module")
def setup(kit_dir: Path, tmp_path_factory) -> Setup:
    root = tmp_path_factory.mktemp("evaluate")
    sets = root / "sets"
    subset = sets / "zero_shot" / "en"
    (subset / "waveform").mkdir(parents=True)
    shutil.copyfile(TOY / "vo_en_000.wav", subset / "waveform" / "p.wav")
    prompt_text = (TOY / "vo_en_000.lab").read_text(encoding="utf-8").strip()
    write_subset(
        subset,
        [
            SubsetLine("ok_1", "Good morning to you.", prompt_text, "zero_shot//en/waveform/p.wav"),
            SubsetLine("ok_2", "See you tomorrow.", prompt_text, "zero_shot//en/waveform/p.wav"),  # cut by max_utts
            SubsetLine("gone", "Hello there.", prompt_text, "zero_shot//en/waveform/gone.wav"),  # missing wav
            SubsetLine("klingon", "Hello.", prompt_text, "zero_shot//en/waveform/p.wav", language="xx"),
        ],
    )
    with (subset / "prompt_wav.scp").open("a", encoding="utf-8") as f:
        f.write("orphan zero_shot//en/waveform/p.wav\n")  # an id with no text: mismatched files

    dev = root / "data" / "dev"
    dev.mkdir(parents=True)
    utt = "vo_zh_000"
    (dev / "wav.scp").write_text(f"{utt} {TOY / f'{utt}.wav'}\n", encoding="utf-8")
    (dev / "text").write_text(f"{utt} {(TOY / f'{utt}.lab').read_text(encoding='utf-8').strip()}\n", encoding="utf-8")
    (dev / "utt2spk").write_text(f"{utt} toy\n", encoding="utf-8")

    from cosyml.evaluation.speaker import campplus_embedder

    embed = campplus_embedder(kit_dir / "campplus.onnx", device="cpu")
    train = [load_mono(TOY / f"vo_zh_{i:03d}.wav", 16000) for i in (1, 2)]
    speaker_file = root / "spk2embedding.pt"
    torch.save({"toy": torch.tensor(np.mean(embed(train), axis=0)).tolist()}, speaker_file)

    llm_ft = _perturbed_llm(kit_dir, root / "llm_ft.pt", seed=1)
    broken = root / "broken_llm.pt"
    broken.write_bytes(b"this is not a checkpoint")
    config = EvaluateConfig(
        test_sets=str(sets),
        whisper_model=str(kit_dir / "whisper.pt"),
        device="cpu",
        batch_size=4,
        max_tokens=4,
        bootstrap_resamples=200,
        max_utts=1,
        synth_max_tokens=10,
        synth_batch_size=4,
        speaker_file=str(speaker_file),
        sft_data=str(root / "data"),
        eval_dir=str(root / "eval"),
        report_max_utts=2,
    )
    params = Params(model_dir=str(kit_dir), prepare=PrepareConfig(speaker="toy"), evaluate=config)
    specs = ["llm=base,flow=base", f"llm={llm_ft},flow=base,name=llm-ft", f"llm={broken},flow=base,name=broken"]
    return Setup(root, params, specs, llm_ft, kit_dir)


def _run(setup: Setup) -> SuiteResult:
    cfg = setup.params.evaluate
    candidates = select_candidates(setup.specs, [], [], [], cfg.exp_dir)
    result = run_suite(suite_config(setup.params), candidates, cfg.eval_dir, data_dir=cfg.sft_data, progress=False)
    write_outputs(result, cfg.report_max_utts)
    return result


@pytest.fixture(scope="module")
def first(setup: Setup) -> SuiteResult:
    return _run(setup)


def test_grid_runs_end_to_end_and_reports_bad_input(first: SuiteResult, setup: Setup):
    by_name = {c.candidate.name: c for c in first.candidates}
    assert list(by_name) == ["llm=base,flow=base", "llm-ft", "broken"]
    base, tuned, broken = by_name.values()
    assert base.ok and tuned.ok and not broken.ok
    assert "broken_llm.pt" in broken.error and "torch.load" in broken.error
    for c in (base, tuned):
        assert (c.synthesized, c.reused, c.synth_failures) == (2, 0, [])
        assert {(r.subset, r.utt, r.status) for r in c.report.rows} == {
            ("zero_shot/en", "ok_1", "scored"),
            ("sft", "vo_zh_000", "scored"),
        }
        assert c.summary.n == 2 and c.summary.missing == 0
        assert 0.0 <= c.summary.cer_ci[0] <= c.summary.cer <= c.summary.cer_ci[1]
        assert all(r.ss is not None and -1.0 <= r.ss <= 1.0 for r in c.report.rows)
        for r in c.report.rows:
            assert Path(r.output_wav) == c.output_wav(r.subset, r.utt) and Path(r.output_wav).is_file()
    # same seeds and texts for both candidates; different LLM weights give different audio
    wav = "zero_shot/en/wavs/ok_1.wav"
    assert (base.folder / wav).read_bytes() != (tuned.folder / wav).read_bytes()
    manifests = [json.loads((c.folder / "synth.json").read_text()) for c in (base, tuned)]
    assert manifests[0]["zero_shot/en/ok_1"]["seed"] == manifests[1]["zero_shot/en/ok_1"]["seed"]
    reasons = {(p.utt, p.reason) for p in first.skipped}
    assert reasons == {("gone", "missing_prompt_wav"), ("klingon", "unknown_language"), ("orphan", "no_text_entry")}
    assert first.tiny_kit


def test_candidates_json_has_the_agreed_shape(first: SuiteResult):
    data = json.loads((first.eval_dir / "candidates.json").read_text(encoding="utf-8"))
    assert data["speaker"] == "toy" and data["model_dir"] == str(first.model_dir)
    assert [c["name"] for c in data["candidates"]] == ["llm=base,flow=base", "llm-ft"]
    for entry in data["candidates"]:
        assert set(entry) == {"name", "llm", "flow", "summary", "subsets", "base"}
        assert set(entry["summary"]) == SUMMARY_KEYS
        assert set(entry["subsets"]) == {"zero_shot/en", "sft"}
        assert all(set(s) == SUMMARY_KEYS for s in entry["subsets"].values())
        assert isinstance(entry["summary"]["cer"], float) and len(entry["summary"]["cer_ci"]) == 2
        assert entry["flow"] == "base"
    assert [c["base"] for c in data["candidates"]] == [True, False]
    assert data["candidates"][1]["llm"].endswith("llm_ft.pt")
    assert [f["name"] for f in data["failed"]] == ["broken"]
    assert data["skipped"]["total"] == 3
    assert data["skipped"]["by_reason"] == {"missing_prompt_wav": 1, "unknown_language": 1, "no_text_entry": 1}

    metrics = json.loads((first.eval_dir / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["llm-base_flow-base"]["cer"] == data["candidates"][0]["summary"]["cer"]
    assert metrics["failed_candidates"] == 1 and metrics["skipped_items"] == 3
    plot = (first.eval_dir / "plots" / "candidates.csv").read_text(encoding="utf-8").splitlines()
    assert plot[0].startswith("candidate,cer,") and len(plot) == 3
    rows = (first.eval_dir / "utterances.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0].startswith("candidate,subset,utt") and len(rows) == 5


def _file_stats(root: Path) -> dict[str, tuple[int, int]]:
    return {
        p.relative_to(root).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_rerun_uses_the_cache_and_redoes_only_what_changed(first: SuiteResult, setup: Setup):
    before = json.loads((first.eval_dir / "candidates.json").read_text(encoding="utf-8"))
    stats = _file_stats(first.eval_dir)
    again = _run(setup)
    assert not again.engine_loaded  # nothing to synthesise: no model was even loaded
    # served from the cache: no output is rewritten (report.html, summary.json, caches, plots keep their
    # inode and mtime, so DVC and make see nothing new)
    assert _file_stats(first.eval_dir) == stats
    for c in again.scored:
        assert (c.synthesized, c.reused, c.asr_computed) == (0, 2, 0)
    after = json.loads((first.eval_dir / "candidates.json").read_text(encoding="utf-8"))
    assert after == before

    _perturbed_llm(setup.kit, setup.llm_ft, seed=2)  # new fine-tuned weights: that candidate only is redone
    third = _run(setup)
    counts = {c.candidate.name: (c.synthesized, c.reused) for c in third.scored}
    assert counts == {"llm=base,flow=base": (0, 2), "llm-ft": (2, 0)}


def test_cli_logs_one_mlflow_run_with_metrics_and_artifacts(
    first: SuiteResult, setup: Setup, tmp_path: Path, capsys, monkeypatch
):
    from cosyml.cli import main

    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(dataclasses.asdict(setup.params), allow_unicode=True), encoding="utf-8")
    monkeypatch.setenv("COSYML_TRACKING", "on")
    code = main(
        [
            "evaluate",
            "--params",
            str(params_file),
            "--no-progress",
            *[a for s in setup.specs[:2] for a in ("--candidates", s)],
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "llm-ft" in out and "skipped 3 test items" in out and "tiny kit" in out

    import mlflow

    runs = mlflow.search_runs(experiment_names=["cosyml/toy"], filter_string="tags.`cosyml.stage` = 'evaluate'")
    assert len(runs) >= 1
    run = runs.iloc[0]
    assert run["metrics.cer/llm-base_flow-base"] >= 0.0 and "metrics.ss/llm-ft" in run
    assert "metrics.cer/llm-ft/zero_shot/en" in run
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run["run_id"])}
    assert {"report.html", "candidates.json", "metrics.json"} <= artifacts
    # the logged report plays: every audio file it links was logged beside it, under the same path
    logged = Path(mlflow.artifacts.download_artifacts(run_id=run["run_id"], dst_path=str(tmp_path / "logged")))
    page = (logged / "report.html").read_text(encoding="utf-8")
    sources = [unquote(s) for s in re.findall(r'<audio [^>]*src="([^"]+)"', page)]
    assert len(sources) == 6  # 2 texts x (reference + 2 candidates)
    for src in sources:
        assert (logged / src).is_file(), src


def _chromium() -> str | None:
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_report_renders_in_a_headless_browser(first: SuiteResult):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium not installed (apt-get install -y chromium); the report browser check needs it")
    report = write_outputs(first, 2).report  # the first run's page (later tests rewrite the folder's files)
    html = report.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html  # self-contained: nothing to fetch
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,2000",
    ]
    with tempfile.TemporaryDirectory() as profile:
        shot = first.eval_dir / "report.png"
        base = [browser, *flags, f"--user-data-dir={profile}"]
        subprocess.run(
            [*base, f"--screenshot={shot}", report.as_uri()],
            check=True,
            capture_output=True,
            timeout=60,
            env={**os.environ, "HOME": profile},
        )
        dom = subprocess.run(
            [*base, "--dump-dom", report.as_uri()],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "HOME": profile},
        ).stdout
    assert _png_size(shot) == (1280, 2000) and shot.stat().st_size > 20_000
    table = re.search(r'<table id="candidates">.*?</table>', dom, re.S)
    assert table and table.group(0).count("<tr") == 4  # header + 2 scored + 1 failed
    assert 'id="kit-notice"' in dom and 'id="chart-cer"' in dom and "<svg" in dom
    players = re.findall(r'<audio controls="?"? preload="none" class="(ref|candidate)" src="([^"]+)"', dom)
    # two texts (zero_shot/en ok_1, sft vo_zh_000): a reference and a player per scored candidate each
    assert sorted(kind for kind, _ in players) == ["candidate"] * 4 + ["ref"] * 2
    for _, src in players:
        assert (first.eval_dir / src).is_file(), src


def test_utterances_that_fail_to_synthesise_score_as_missing_and_stay_cached(setup: Setup, kit_dir: Path):
    # an LLM that stops at once (eos bias) with no minimum length: every request fails with "no speech"
    state = torch.load(kit_dir / "llm.pt", map_location="cpu", weights_only=True)
    bias = state["llm_decoder.bias"].clone()
    bias[_eos_index(kit_dir)] = 1e4
    mute = setup.root / "mute_llm.pt"
    torch.save({**state, "llm_decoder.bias": bias}, mute)
    cfg = dataclasses.replace(setup.params.evaluate, min_token_text_ratio=0.0, eval_dir=str(setup.root / "mute_eval"))
    params = dataclasses.replace(setup.params, evaluate=cfg)
    candidates = select_candidates([f"llm={mute},flow=base,name=mute"], [], [], [], cfg.exp_dir)
    for attempt in range(2):
        result = run_suite(suite_config(params), candidates, cfg.eval_dir, data_dir=cfg.sft_data, progress=False)
        (c,) = result.candidates
        assert c.ok and (c.synthesized, c.reused) == ((2, 0) if attempt == 0 else (0, 2))
        assert {(f.subset, f.utt) for f in c.synth_failures} == {("zero_shot/en", "ok_1"), ("sft", "vo_zh_000")}
        assert all("no speech tokens" in f.error for f in c.synth_failures)
        assert (c.summary.n, c.summary.missing, c.summary.cer, c.summary.ss, c.summary.over_50) == (2, 2, 1.0, 0.0, 1.0)
    files = write_outputs(result)
    assert "failed to synthesise" in files.report.read_text(encoding="utf-8")


def _eos_index(kit_dir: Path) -> int:
    from cosyml.models.modeldir import ModelDir

    return ModelDir(kit_dir).hparams.speech_token_size


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--candidates", "llm"], "expected llm=SOURCE,flow=SOURCE"),
        (["--candidates", "llm=base,llm=base"], "given twice"),
        (["--candidates", "llm=base,name=a b", "--candidates", "llm=x.pt,name=a_b"], "same folder"),
    ],
)
def test_bad_candidate_specs_stop_with_one_line(argv, needle, capsys):
    from cosyml.cli import main

    assert main(["evaluate", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and needle in err, err


def test_model_fingerprint_covers_every_file_synthesis_reads(tmp_path: Path):
    """A v3 yaml, the ONNX front ends and the tokenizer are part of the synthesis cache key (issue 12)."""
    from cosyml.evaluation.suite import model_fingerprint

    model = tmp_path / "model"
    files = [
        "cosyvoice3.yaml",
        "hift.pt",
        "campplus.onnx",
        "speech_tokenizer_v3.onnx",
        "speech_tokenizer_v3.batch.onnx",
        "spk2info.pt",
        "CosyVoice-BlankEN/tokenizer_config.json",
        "CosyVoice-BlankEN/vocab.json",
    ]
    for name in files:
        (model / name).parent.mkdir(parents=True, exist_ok=True)
        (model / name).write_text(f"{name} v1", encoding="utf-8")
    (model / "llm.pt").write_text("per-candidate weights", encoding="utf-8")
    before = model_fingerprint(model)
    assert set(before) == set(files)
    for name in files:
        (model / name).write_text(f"{name} v2", encoding="utf-8")
        after = model_fingerprint(model)
        assert after[name] != before[name], name
        before = after
    (model / "CosyVoice-BlankEN" / "added_tokens.json").write_text("{}", encoding="utf-8")
    assert "CosyVoice-BlankEN/added_tokens.json" in model_fingerprint(model)


def test_editing_the_tokenizer_invalidates_cached_audio(setup: Setup, kit_dir: Path, tmp_path: Path):
    """Stale wavs must not be scored after a model-directory file the engine reads changes (issue 12)."""
    kit = tmp_path / "kit"
    shutil.copytree(kit_dir, kit)
    cfg = dataclasses.replace(setup.params.evaluate, eval_dir=str(tmp_path / "eval"))
    params = dataclasses.replace(setup.params, model_dir=str(kit), evaluate=cfg)
    candidates = select_candidates(["llm=base,flow=base"], [], [], [], cfg.exp_dir)

    def synthesized() -> int:
        result = run_suite(suite_config(params), candidates, cfg.eval_dir, data_dir=cfg.sft_data, progress=False)
        return result.candidates[0].synthesized

    assert synthesized() == 2
    assert synthesized() == 0
    config = kit / "CosyVoice-BlankEN" / "tokenizer_config.json"  # same tokens, other bytes
    config.write_text(json.dumps(json.loads(config.read_text(encoding="utf-8")), indent=3), encoding="utf-8")
    assert synthesized() == 2


def test_dvc_plots_and_metrics_declared_in_dvc_yaml_are_readable(first: SuiteResult, tmp_path: Path):
    """Issue 15.12: bars had x/y swapped, the page was blank offline (vega from a CDN) and `dvc metrics
    show` printed one 88-column row. The project's own dvc.yaml declarations, on the real dvc CLI."""
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]["evaluate"]
    repo = tmp_path / "repo"
    (repo / "exp").mkdir(parents=True)
    shutil.copytree(first.eval_dir / "plots", repo / "exp" / "eval" / "plots")
    shutil.copyfile(first.eval_dir / "metrics.json", repo / "exp" / "eval" / "metrics.json")

    def top_level(entries: list) -> list:  # a stage's outputs declared as top-level plots/metrics
        out = []
        for entry in entries:
            ((path, options),) = entry.items()
            options = {k: v for k, v in (options or {}).items() if k != "cache"}
            out.append({path: options} if options else path)
        return out

    (repo / "dvc.yaml").write_text(
        yaml.safe_dump({"metrics": top_level(stage["metrics"]), "plots": top_level(stage["plots"])}), encoding="utf-8"
    )
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=repo, check=True, env=env)
    metrics = json.loads(
        subprocess.run(
            ["dvc", "metrics", "show", "--json"], cwd=repo, check=True, env=env, capture_output=True, text=True
        ).stdout
    )
    data = next(iter(metrics.values()))["data"]["exp/eval/metrics.json"]["data"]
    flat = {f"{k}.{kk}" for k, v in data.items() if isinstance(v, dict) for kk in v} | {
        k for k, v in data.items() if not isinstance(v, dict)
    }
    assert len(flat) == 2 * len(first.scored) + 2, sorted(flat)  # cer and ss per candidate + two counts
    plots = json.loads(
        subprocess.run(
            ["dvc", "plots", "show", "--json"], cwd=repo, check=True, env=env, capture_output=True, text=True
        ).stdout
    )["data"]
    images = {p for p, renders in plots.items() if any(r.get("type") == "image" for r in renders)}
    assert images == {"exp/eval/plots/cer.svg", "exp/eval/plots/ss.svg"}
    for name in ("cer", "ss"):  # standalone SVG: renders in an <img>, no script, nothing fetched
        svg = (repo / "exp" / "eval" / "plots" / f"{name}.svg").read_text(encoding="utf-8")
        assert svg.startswith('<svg xmlns="http://www.w3.org/2000/svg"') and "<script" not in svg
        assert "<rect" in svg
    for path, label in (("candidates.csv", "candidate"), ("subsets.csv", "label")):  # bars: value on x
        encoding = plots[f"exp/eval/plots/{path}"][0]["content"]["encoding"]
        assert (encoding["x"]["field"], encoding["x"]["type"]) == ("cer", "quantitative"), encoding
        assert (encoding["y"]["field"], encoding["y"]["type"]) == (label, "nominal"), encoding
    # the page: DVC's own loads vega from a CDN (blank offline); the repository's .dvc/config names a template
    # that carries it (a `cosyml init` project gets a copy), so the bars draw with no network
    config = configparser.ConfigParser()
    config.read(REPO / ".dvc" / "config")
    template = (REPO / ".dvc" / config["plots"]["html_template"]).resolve()
    assert template.is_file(), template
    subprocess.run(["dvc", "config", "plots.html_template", str(template)], cwd=repo, check=True, env=env)
    subprocess.run(["dvc", "plots", "show", "-o", "page"], cwd=repo, check=True, env=env, capture_output=True)
    page = (repo / "page" / "index.html").read_text(encoding="utf-8")
    assert "<script src=" not in page and "cdn.jsdelivr" not in page
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium not installed (apt-get install -y chromium); the offline page render check needs it")
    dom = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--virtual-time-budget=5000",
            "--dump-dom",
            str(repo / "page" / "index.html"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert dom.count('class="marks"') == 2, dom[-2000:]  # the two bar charts were drawn (vega's canvas)


def test_the_suite_config_takes_the_sampling_the_command_builds(kit_dir: Path):
    """``cosyml evaluate`` builds the suite's settings from params: no sampling key set = the model yaml's
    (None, as before); any set = a full SamplingParams over the yaml's values, which every request carries."""
    from cosyml.commands.evaluate import evaluate_sampling
    from cosyml.evaluation.suite import build_request
    from cosyml.evaluation.testset import TestItem
    from cosyml.models.generation import SamplingParams
    from cosyml.models.modeldir import ModelDir

    params = Params(model_dir=str(kit_dir), prepare=PrepareConfig(speaker="toy", whisper_model="w.pt"))
    suite = suite_config(params)
    assert (suite.model_dir, suite.speaker, suite.whisper_model, suite.sampling) == (kit_dir, "toy", "w.pt", None)
    item = TestItem(utt="u1", text="hello there", language="en")
    request = build_request("sft", item, suite.evaluate, None, suite.sampling)
    assert (request.top_p, request.top_k, request.win_size, request.tau_r) == (None, None, None, None)
    tuned = dataclasses.replace(params, evaluate=dataclasses.replace(params.evaluate, top_p=0.5, tau_r=0.2))
    sampling = evaluate_sampling(tuned)
    assert sampling == dataclasses.replace(ModelDir(kit_dir).hparams.sampling, top_p=0.5, tau_r=0.2)
    assert isinstance(sampling, SamplingParams)
    request = build_request("sft", item, suite.evaluate, None, sampling)
    assert (request.top_p, request.top_k, request.win_size, request.tau_r) == (
        0.5,
        sampling.top_k,
        sampling.win_size,
        0.2,
    )


def test_component_errors_name_the_input_and_the_command_adds_the_flag(tmp_path: Path, capsys):
    """Issue 12: the suite speaks of the model directory it was given; ``cosyml evaluate`` names --model-dir."""
    from cosyml.cli import main
    from cosyml.errors import InputError
    from cosyml.evaluation.candidates import parse_candidate
    from cosyml.evaluation.suite import SuiteConfig

    missing = tmp_path / "no_model"
    with pytest.raises(InputError) as caught:
        run_suite(SuiteConfig(missing, "toy", ""), [parse_candidate("llm=base,flow=base")], tmp_path / "eval")
    assert str(caught.value) == f"{missing}: model directory not found; give a model directory in the official layout"
    assert main(["evaluate", "--model-dir", str(missing), "--candidates", "llm=base,flow=base"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == f"cosyml: error: {missing}: model directory not found; pass --model-dir or set model_dir in params.yaml"
    )
