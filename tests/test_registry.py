"""Registry, promotion, the pyfunc voice and `mlflow models serve`, against a REAL `mlflow server` process.

One module-scoped `mlflow server` (sqlite backend + local artifact root in a temp folder, on 127.0.0.1 and
a free port) serves every test here; the tests run in order and build on each other's registry state.
The kit's weights are random: audio proves plumbing (which weights, seeds, formats), never quality.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from _servers import MLFLOW, free_port, mlflow_server, process, wait_http

from cosyml.audio import write_wav
from cosyml.cli import main
from cosyml.config import RegistryConfig
from cosyml.errors import CosymlError, InputError, ModelDirError
from cosyml.kit.build import build_kit
from cosyml.kit.model_yaml import KitDims
from cosyml.models.flow import build_flow
from cosyml.models.llm import build_llm
from cosyml.models.modeldir import ModelDir, save_state_dict

SPEAKER = "toy"
NAME = f"cosyml-{SPEAKER}"
CAP = 6.0  # speech tokens per request: keeps synthesis short


def _post(url: str, payload: object | str, timeout: float = 120) -> tuple[int, dict]:
    body = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _decode_wav(text: str) -> tuple[np.ndarray, int]:
    data, sr = sf.read(io.BytesIO(base64.b64decode(text)), dtype="float32")
    return data, sr


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    root = tmp_path_factory.mktemp("mlflow_server")
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "COSYML_CACHE_DIR", "MLFLOW_DISABLE_TELEMETRY")}
    with mlflow_server(f"sqlite:///{root / 'mlflow.db'}", root) as (uri, proc, log):
        os.environ["MLFLOW_TRACKING_URI"] = uri
        os.environ["COSYML_CACHE_DIR"] = str(root / "cache")
        os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
        try:
            yield SimpleNamespace(uri=uri, root=root, artifacts=root / "artifacts", proc=proc, log=log)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A tiny kit, the speaker's embedding, a fine-tuned llm (plain file) and flow (upstream checkpoint)."""
    root = tmp_path_factory.mktemp("registry_kit")
    model_dir = root / "model"
    build_kit(model_dir, seed=0, dims=KitDims())
    md = ModelDir(model_dir)
    gen = torch.Generator().manual_seed(5)
    spk2embedding = root / "spk2embedding.pt"
    torch.save({SPEAKER: torch.randn(192, generator=gen).tolist()}, spk2embedding)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        llm = build_llm(md)
        llm.tie_weights()
        flow = build_flow(md.config)
    llm_pt = save_state_dict(llm, root / "exp" / "llm" / "llm.pt")
    flow_ckpt = root / "exp" / "flow" / "epoch_2_whole.pt"
    flow_ckpt.parent.mkdir(parents=True)
    torch.save({**flow.state_dict(), "epoch": 2, "step": 40}, flow_ckpt)
    t = np.arange(int(16000 * 1.5)) / 16000
    prompt = root / "prompt.wav"
    write_wav(prompt, (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), 16000)
    return SimpleNamespace(
        root=root, model_dir=model_dir, spk2embedding=spk2embedding, llm=llm_pt, flow=flow_ckpt, prompt=prompt
    )


def _scores(
    cer: float, cer_ci: tuple[float, float], ss: float, ss_ci: tuple[float, float], n: int = 40, missing: int = 0
) -> dict:
    return {
        "cer": cer,
        "cer_ci": list(cer_ci),
        "ss": ss,
        "ss_ci": list(ss_ci),
        "n": n,
        "missing": missing,
        "over_50": 0.0,
    }


def _candidates(path: Path, kit: SimpleNamespace, scores: dict[str, dict]) -> Path:
    """candidates.json in the `cosyml evaluate` shape; ``scores``: name -> summary."""
    parts = {
        "base": ("base", "base"),
        "llm_sft": (str(kit.llm), "base"),
        "both_sft": (str(kit.llm), str(kit.flow)),
        "unscored": ("base", str(kit.flow)),  # evaluation scored nothing: summary null
        "flow_sft": ("base", str(kit.flow)),
    }
    items = [
        {
            "name": name,
            "llm": parts[name][0],
            "flow": parts[name][1],
            "summary": summary,
            "subsets": {"sft/dev": summary} if summary else {},
            "base": name == "base",
        }
        for name, summary in scores.items()
    ]
    path.write_text(json.dumps({"speaker": SPEAKER, "model_dir": str(kit.model_dir), "candidates": items}))
    return path


def _config(kit: SimpleNamespace) -> RegistryConfig:
    return RegistryConfig(speakers=str(kit.spk2embedding))


def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient(os.environ["MLFLOW_TRACKING_URI"])


def _versions() -> dict[str, object]:
    return {v.tags["cosyml.candidate"]: v for v in _client().search_model_versions(f"name='{NAME}'")}


def _model_metrics(candidate: str) -> dict[str, float]:
    from cosyml.registry.promotion import model_metrics

    return model_metrics(_client(), _versions()[candidate])


def _voice(version) -> dict:
    """The version's voice.json (its storage lineage: base and weight URIs, hashes)."""
    import tempfile

    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

    repo = ModelsArtifactRepository(f"models:/{NAME}/{version.version}")
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(repo.download_artifacts("artifacts/voice.json", tmp)).read_text(encoding="utf-8"))


def _alias(alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(_client().get_model_version_by_alias(NAME, alias).version)
    except MlflowException:
        return None


FIRST = {
    "base": _scores(0.10, (0.08, 0.12), 0.60, (0.58, 0.62)),
    "llm_sft": _scores(0.06, (0.05, 0.07), 0.70, (0.68, 0.72)),
    # best composite, but CER regresses 0.05 against base (> max_cer_regression 0.02): not eligible
    "both_sft": _scores(0.15, (0.13, 0.17), 0.90, (0.88, 0.92)),
}


# ---------------------------------------------------------------------------------------------- register


def test_register_stores_each_candidate_once_and_the_base_assets_once(server, kit, tmp_path) -> None:
    from cosyml.registry import BASE_EXPERIMENT, WEIGHTS_EXPERIMENT, read_candidates, register_candidates

    cands = read_candidates(_candidates(kit.root / "eval1.json", kit, FIRST))
    out = register_candidates(cands, _config(kit), data_version="md5-of-shards")
    assert [(r.candidate, r.version, r.created) for r in out] == [
        ("base", "1", True),
        ("llm_sft", "2", True),
        ("both_sft", "3", True),
    ]
    versions = _versions()
    tags = versions["llm_sft"].tags
    assert tags["score.cer"] == "0.06" and tags["score.ss"] == "0.7" and tags["score.n"] == "40"
    assert tags["cosyml.data_version"] == "md5-of-shards" and tags["cosyml.is_base"] == "false"
    assert tags["cosyml.llm"] == str(kit.llm.resolve()) and tags["cosyml.flow"] == "base"
    assert versions["base"].tags["cosyml.is_base"] == "true"
    assert max(len(v.tags) for v in versions.values()) <= 12  # a readable registry page (was 78 tags)
    # every score is a model metric of the version and is in its scores.json
    metrics = _model_metrics("llm_sft")
    assert metrics["cer"] == 0.06 and metrics["ss_ci_hi"] == 0.72 and metrics["sft/dev/n"] == 40
    base_runs = _client().search_runs([_client().get_experiment_by_name(BASE_EXPERIMENT).experiment_id])
    assert len(base_runs) == 1 and base_runs[0].data.tags["cosyml.complete"] == "true"
    assert {_voice(v)["base_uri"] for v in versions.values()} == {f"runs:/{base_runs[0].info.run_id}/base_model"}

    import mlflow

    def stored(version: str) -> set[str]:
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/{version}", dst_path=str(tmp_path / version)))
        return {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}

    files = {v: stored(v) for v in ("1", "2", "3")}
    assert {"MLmodel", "artifacts/voice.json", "artifacts/spk2info.pt", "scores.json"} <= files["1"]
    scores = json.loads((tmp_path / "2" / "scores.json").read_text(encoding="utf-8"))
    assert scores["summary"]["cer_ci"] == [0.05, 0.07] and scores["subsets"]["sft/dev"]["n"] == 40
    assert "pyfunc_model.py" in files["1"] and "python_model.pkl" not in files["1"]  # code, not a pickle
    for version in ("1", "2", "3"):  # versions hold no weights: base assets and fine-tuned parts are referenced
        assert not any(f.endswith(("llm.pt", "flow.pt", "hift.pt", ".onnx", "cosyvoice2.yaml")) for f in files[version])
    # the fine-tuned LLM that versions 2 and 3 share is stored once; so is the fine-tuned flow
    weight_runs = _client().search_runs([_client().get_experiment_by_name(WEIGHTS_EXPERIMENT).experiment_id])
    assert sorted(r.data.tags["cosyml.part"] for r in weight_runs) == ["flow", "llm"]
    llm_uri = _voice(versions["llm_sft"])["llm"]
    assert _voice(versions["both_sft"])["llm"] == llm_uri and llm_uri.endswith("/weights/llm.pt")
    assert _voice(versions["base"])["llm"] == "base" and _voice(versions["llm_sft"])["flow"] == "base"
    # the upstream checkpoint was stored as a plain official state dict (no epoch/step entries)
    flow_pt = mlflow.artifacts.download_artifacts(_voice(versions["both_sft"])["flow"], dst_path=str(tmp_path / "f"))
    assert "epoch" not in torch.load(flow_pt, weights_only=True)


#: FIRST again, llm_sft rescored, and a candidate evaluation scored nothing for.
RESCORED = {**FIRST, "llm_sft": _scores(0.061, (0.05, 0.07), 0.70, (0.68, 0.72)), "unscored": None}


@pytest.fixture()
def rescored(server, kit) -> Path:
    """RESCORED's candidates.json, registered (idempotent: after the tests above, nothing new), so that
    the promotion tests also run alone (`-k`), on a registry holding v1 base, v2 llm_sft, v3 both_sft."""
    from cosyml.registry import read_candidates, register_candidates

    path = _candidates(kit.root / "eval1b.json", kit, RESCORED)
    register_candidates(read_candidates(path), _config(kit))
    return path


def test_registering_the_same_weights_again_adds_no_version_and_refreshes_scores(server, kit) -> None:
    from cosyml.registry import read_candidates, register_candidates

    cands = read_candidates(_candidates(kit.root / "eval1b.json", kit, RESCORED))
    out = register_candidates(cands, _config(kit))
    assert [(r.version, r.created, r.skipped) for r in out] == [
        ("1", False, ""),
        ("2", False, ""),
        ("3", False, ""),
        ("", False, "no scores"),
    ]
    assert len(_client().search_model_versions(f"name='{NAME}'")) == 3
    assert _versions()["llm_sft"].tags["score.cer"] == "0.061" and _model_metrics("llm_sft")["cer"] == 0.061


# ---------------------------------------------------------------------------------------------- promote


def test_first_promotion_picks_the_best_candidate_that_does_not_regress_cer(server, kit, rescored, capsys) -> None:
    assert _alias("champion") is None
    code = main(["promote", "--candidates", str(rescored), "--set", f"registry.speakers={kit.spk2embedding}"])
    printed = capsys.readouterr().out
    assert code == 0
    assert _alias("champion") == "2" and _alias("previous") is None  # llm_sft; both_sft regresses CER vs base
    assert "regresses vs base" in printed and "promoted cosyml-toy v2" in printed
    runs = _client().search_runs(
        [_client().get_experiment_by_name(f"cosyml/{SPEAKER}").experiment_id],
        filter_string="tags.`cosyml.stage` = 'promote'",
    )
    assert runs[0].data.tags["cosyml.decision"] == "promote" and runs[0].data.tags["cosyml.champion_after"] == "2"
    assert runs[0].data.params["registry.max_cer_regression"] == "0.02"


def test_overlapping_cis_move_nothing_and_a_clear_win_moves_the_champion(server, kit, rescored) -> None:
    from cosyml.registry import promote, read_candidates, register_candidates, rollback

    config = _config(kit)
    promote(read_candidates(rescored), config)  # the first promotion (a no-op after the test above)
    assert _alias("champion") == "2"
    close = {**FIRST, "both_sft": _scores(0.055, (0.045, 0.065), 0.72, (0.69, 0.75))}
    cands = read_candidates(_candidates(kit.root / "eval2.json", kit, close))
    register_candidates(cands, config)
    result = promote(cands, config)
    assert result.decision.action == "keep" and not result.moved
    assert "overlap" in result.decision.reason and _alias("champion") == "2"

    clear = {**FIRST, "both_sft": _scores(0.03, (0.02, 0.04), 0.80, (0.78, 0.82))}
    cands = read_candidates(_candidates(kit.root / "eval3.json", kit, clear))
    register_candidates(cands, config)
    dry = promote(cands, config, dry_run=True)
    assert dry.decision.action == "promote" and dry.decision.target == "3" and not dry.moved
    assert _alias("champion") == "2"  # a dry run moves nothing
    done = promote(cands, config)
    assert done.moved and _alias("champion") == "3" and _alias("previous") == "2"
    again = promote(cands, config)  # idempotent: the champion is already the best
    assert again.decision.action == "keep" and not again.moved and _alias("champion") == "3"
    assert rollback(SPEAKER, config) == ("2", "3") and _alias("champion") == "2"
    assert rollback(SPEAKER, config) == ("3", "2") and _alias("champion") == "3"


# ---------------------------------------------------------------------------------------------- load + serve


def _requests(kit: SimpleNamespace) -> pd.DataFrame:
    prompt = base64.b64encode(kit.prompt.read_bytes()).decode()
    return pd.DataFrame(
        [
            {"text": "Hello there.", "seed": 1.0, "max_tokens": CAP},
            {"text": "Hello there.", "speaker": "nobody", "max_tokens": CAP},
            {"text": "Hello there.", "mode": "shout", "max_tokens": CAP},
            {"text": "   ", "max_tokens": CAP},
            {"text": "Hello there.", "mode": "cross_lingual", "prompt_wav": prompt, "seed": 2.0, "max_tokens": CAP},
        ]
    )


def test_champion_loads_on_a_fresh_machine_and_bad_rows_get_errors(server, kit, tmp_path) -> None:
    from cosyml.pyfunc import load_voice

    fresh = tmp_path / "fresh_cache"  # only the tracking server and its artifact store are shared
    model = load_voice(f"models:/{NAME}@champion", cache_dir=str(fresh))
    cached = list((fresh / "base").glob("*/.complete"))
    assert len(cached) == 1 and (cached[0].parent / "base_model" / "cosyvoice2.yaml").is_file()
    assert _versions()["both_sft"].version == "3"  # the champion here: both parts fine-tuned, fetched and verified
    assert sorted(p.name for p in (fresh / "weights").glob("*/*.pt")) == ["flow.pt", "llm.pt"]
    assert model.metadata.get_input_schema().input_names()[0] == "text"
    out = model.predict(_requests(kit))
    assert list(out.columns) == ["audio", "sample_rate", "duration_s", "seed", "error"]
    errors = out["error"].tolist()
    assert errors[0] is None and errors[4] is None, errors
    assert "unknown speaker 'nobody'" in errors[1]
    assert "mode 'shout' is not one of" in errors[2]
    assert "text is empty" in errors[3]
    for i in (0, 4):
        wav, sr = _decode_wav(out["audio"][i])
        assert sr == 24000 and wav.ndim == 1 and 0 < len(wav) <= CAP * 960
    assert out["seed"][0] == 1 and out["audio"][1] is None
    server.local_audio = out["audio"][0]


def test_mlflow_models_serve_answers_wavs_and_survives_bad_requests(server, kit, tmp_path) -> None:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COSYML_CACHE_DIR": str(tmp_path / "serve_cache")}
    cmd = [
        MLFLOW,
        "models",
        "serve",
        "-m",
        f"models:/{NAME}@champion",
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-w",
        "1",
    ]
    log = tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    with process(cmd, env, log) as proc:
        wait_http(f"{url}/ping", proc, log, timeout=90)
        good = {"dataframe_records": [{"text": "Hello there.", "seed": 1, "max_tokens": CAP}]}
        status, body = _post(f"{url}/invocations", good)
        assert status == 200, body
        row = body["predictions"][0]
        wav, sr = _decode_wav(row["audio"])
        assert sr == row["sample_rate"] == 24000 and len(wav) > 0 and row["error"] is None
        # the served champion is the model loaded in-process: same seed, same tokens, the same audio up to
        # float rounding (the server runs on another thread count)
        local, _ = _decode_wav(server.local_audio)
        assert len(local) == len(wav) and float(np.abs(local - wav).max()) < 2e-2

        bad = {"dataframe_records": [{"text": "Hi.", "mode": "shout"}, {"text": "Hi.", "speaker": "nobody"}]}
        status, body = _post(f"{url}/invocations", bad)
        assert status == 200, body
        assert "mode 'shout'" in body["predictions"][0]["error"] and body["predictions"][0]["audio"] is None
        assert "unknown speaker 'nobody'" in body["predictions"][1]["error"]

        status, body = _post(f"{url}/invocations", "{not json")
        assert status == 400 and body.get("message")
        assert proc.poll() is None

        status, body = _post(
            f"{url}/invocations",
            {"dataframe_split": {"columns": ["text", "seed", "max_tokens"], "data": [["Again.", 3, CAP]]}},
        )
        assert status == 200 and body["predictions"][0]["error"] is None
        assert _decode_wav(body["predictions"][0]["audio"])[1] == 24000


# ---------------------------------------------------------------------------------------------- bad input


def test_a_missing_alias_or_version_is_one_line(server, kit, capsys) -> None:
    from cosyml.pyfunc import load_voice

    with pytest.raises(ModelDirError, match=r"has no alias 'gold'; run `cosyml promote`"):
        load_voice(f"models:/{NAME}@gold")
    with pytest.raises(ModelDirError, match=r"no registered model 'cosyml-nobody'"):
        load_voice("models:/cosyml-nobody@champion")
    with pytest.raises(ModelDirError, match=r"has no version 99"):
        load_voice(f"models:/{NAME}/99")
    assert main(["serve", "--model-uri", f"models:/{NAME}@gold"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no alias 'gold'" in err[0]


def test_a_version_whose_artifacts_are_missing_is_one_line(server, kit, tmp_path) -> None:
    from cosyml.pyfunc import load_voice

    mlc = _client()
    version = mlc.get_model_version(NAME, "1")
    model_id = version.source.removeprefix("models:/")
    location = mlc.get_logged_model(model_id).artifact_location  # mlflow-artifacts:/<exp>/models/<id>/artifacts
    local = server.artifacts / location.split(":", 1)[1].lstrip("/")
    assert local.is_dir(), location
    shutil.rmtree(local)
    with pytest.raises(ModelDirError, match=r"artifacts cannot be loaded .*re-register") as info:
        load_voice(f"models:/{NAME}/1", cache_dir=str(tmp_path / "c"))
    assert "\n" not in str(info.value)


def test_base_assets_missing_from_the_store_are_one_line(server, kit, tmp_path) -> None:
    from cosyml.pyfunc import fetch_base_assets

    with pytest.raises(ModelDirError, match=r"base model assets runs:/0123/base_model: cannot be downloaded"):
        fetch_base_assets("runs:/0123/base_model", "f" * 64, tmp_path)
    assert not list(tmp_path.rglob(".complete"))


def test_shared_weights_missing_or_altered_in_the_store_are_one_line(server, kit, tmp_path) -> None:
    from cosyml.pyfunc import fetch_weights

    with pytest.raises(ModelDirError, match=r"llm weights runs:/0123/weights/llm.pt: cannot be downloaded"):
        fetch_weights("runs:/0123/weights/llm.pt", "llm", "f" * 64, tmp_path)
    uri = _voice(_versions()["llm_sft"])["llm"]
    with pytest.raises(
        ModelDirError, match=r"llm weights .*: content hash \w+ differs from the registered ffffffffffff"
    ):
        fetch_weights(uri, "llm", "f" * 64, tmp_path)
    assert not list(tmp_path.rglob(".complete")) and not list(tmp_path.rglob("*.pt"))


def test_two_register_processes_at_once_leave_one_version(server, kit) -> None:
    path = _candidates(kit.root / "eval3.json", kit, {"flow_sft": _scores(0.1, (0.08, 0.12), 0.6, (0.58, 0.62))})
    command = [
        sys.executable,
        "-m",
        "cosyml",
        "register",
        "--candidates",
        str(path),
        "--speakers",
        str(kit.spk2embedding),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=kit.root
        )  # no params.yaml there: the built-in defaults
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    same = [
        v for v in _client().search_model_versions(f"name='{NAME}'") if v.tags.get("cosyml.candidate") == "flow_sft"
    ]
    assert len(same) == 1, [v.version for v in same]
    lines = sorted(line for out in outputs for line in out.splitlines() if "flow_sft" in line)
    assert lines == sorted(
        [
            f"{NAME} v{same[0].version}: flow_sft registered",
            f"{NAME} v{same[0].version}: flow_sft already registered (scores refreshed)",
        ]
    ), outputs


def test_bad_candidates_files_are_one_line(tmp_path) -> None:
    from cosyml.registry import read_candidates

    path = tmp_path / "candidates.json"
    cases = [
        ("{", "not valid JSON"),
        (json.dumps({"speaker": "x", "model_dir": "m", "candidates": []}), "'candidates' must be a non-empty list"),
        (
            json.dumps(
                {
                    "speaker": "x",
                    "model_dir": "m",
                    "candidates": [{"name": "a", "llm": "base", "flow": "base", "summary": {"cer": 0.1}}],
                }
            ),
            "candidates[0].summary: missing cer_ci",
        ),
    ]
    for text, needle in cases:
        path.write_text(text)
        with pytest.raises(InputError) as info:
            read_candidates(path)
        assert needle in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(CosymlError, match="candidates file not found"):
        read_candidates(tmp_path / "none.json")


def test_a_part_stored_in_the_version_itself_is_read_from_its_artifacts(tmp_path) -> None:
    from cosyml.pyfunc import VoiceSpec, _part_file

    spec = VoiceSpec(speaker=SPEAKER, candidate="c", base_uri="runs:/x/base_model", base_hash="h", llm="llm.pt")
    (tmp_path / "llm.pt").write_bytes(b"weights")
    context = SimpleNamespace(artifacts={"llm": str(tmp_path / "llm.pt")})
    voice = tmp_path / "voice.json"
    assert _part_file(context, "llm", spec, voice, tmp_path / "cache") == str(tmp_path / "llm.pt")
    assert _part_file(context, "flow", spec, voice, tmp_path / "cache") == "base"
    with pytest.raises(ModelDirError, match=r"the version's llm.pt is missing; re-register"):
        _part_file(SimpleNamespace(artifacts={}), "llm", spec, voice, tmp_path / "cache")


def test_candidate_names_become_distinct_names_mlflow_accepts() -> None:
    from cosyml.registry.names import sanitize

    long = [
        "llm=/tmp/run/exp/llm/checkpoints/epoch_1_whole.pt,flow=base",
        "llm=/tmp/run/exp/llm/checkpoints/epoch_2_whole.pt,flow=base",
    ]
    names = [sanitize(n) for n in [*long, "llm=a.pt,flow=base", "llm=a-pt,flow=base", "base"]]
    assert len(set(names)) == len(names) and names[-1] == "base"
    assert all(len(n) <= 60 and not set(n) & set("./:%'\"") for n in names)
