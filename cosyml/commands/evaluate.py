"""``cosyml evaluate``: synthesise the test sets with every candidate, score them, report (one MLflow run).

    cosyml evaluate --model-dir models/base --data data/prepared \
        --candidates "llm=base,flow=base" --candidates "llm=exp/llm/llm.pt,flow=base"

Without ``--candidates`` the grid ``evaluate.llm_sources`` x ``evaluate.flow_sources`` from params.yaml
is used (``base``, ``sft-avg``, ``epoch-K``, ``last`` or a weight file). Results go to ``--out``
(``evaluate.eval_dir``): ``candidates.json``, ``metrics.json``, ``plots/``, ``utterances.csv``,
``summary.json``, ``report.html`` and one cached folder per candidate; a rerun synthesises only what
changed. The MLflow run (stage ``evaluate``) gets ``cer/<slug>``, ``ss/<slug>`` ... per candidate and the
report files as artifacts. Exit status 0 when at least one candidate was scored.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cosyml.commands._common import add_params_arguments, resolve_params
from cosyml.config import Params, as_flat_dict
from cosyml.errors import CosymlError, InputError

if TYPE_CHECKING:
    from cosyml.evaluation.suite import SuiteConfig
    from cosyml.models.generation import SamplingParams

#: The ``evaluate`` keys that set the RAS sampling of every utterance (None: the model yaml's value).
SAMPLING_KEYS = ("top_p", "top_k", "win_size", "tau_r")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="synthesise test sets with candidate llm/flow weights and score CER/WER and speaker similarity",
        description="CV3-Eval style evaluation of candidates (llm source x flow source): Whisper CER/WER and "
        "SS_campplus with bootstrap CIs, an HTML report with audio players, candidates.json for the registry.",
    )
    p.add_argument("--model-dir", default=None, help="base model directory (default: params model_dir)")
    p.add_argument(
        "--candidates",
        action="append",
        default=[],
        metavar="llm=SRC,flow=SRC[,name=N]",
        help="a candidate (repeatable, or several separated by ';'); SRC: base, sft-avg, epoch-K, last, "
        "best-probe, or a weight file (default: the params grid evaluate.llm_sources x evaluate.flow_sources)",
    )
    p.add_argument("--out", default=None, metavar="EVAL_DIR", help="output folder (evaluate.eval_dir)")
    p.add_argument(
        "--data",
        default=None,
        metavar="DATA",
        help="prepared data folder: its dev split becomes the speaker-SFT set (evaluate.sft_data; '' for none)",
    )
    p.add_argument(
        "--speaker-file",
        default=None,
        help="spk2embedding.pt / spk2info.pt with the speaker's embedding (evaluate.speaker_file)",
    )
    p.add_argument("--test-sets", default=None, help="test-set root in the CV3-Eval layout (evaluate.test_sets)")
    p.add_argument(
        "--max-utts", type=int, default=None, help="usable utterances per subset, 0 = all (evaluate.max_utts)"
    )
    p.add_argument("--device", default=None, help="auto, cpu or cuda (evaluate.device)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_params_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cosyml.commands.train import probe_rank
    from cosyml.evaluation.candidates import select_candidates
    from cosyml.evaluation.data_checks import read_data_checks
    from cosyml.evaluation.report import write_outputs
    from cosyml.evaluation.suite import run_suite
    from cosyml.tracking import stage_run

    params = resolve_params(
        args,
        {
            "model_dir": args.model_dir,
            "evaluate.eval_dir": args.out,
            "evaluate.sft_data": args.data,
            "evaluate.speaker_file": args.speaker_file,
            "evaluate.test_sets": args.test_sets,
            "evaluate.max_utts": args.max_utts,
            "evaluate.device": args.device,
        },
    )
    cfg = params.evaluate

    def log(message: str) -> None:
        print(f"cosyml: {message}", file=sys.stderr)

    candidates = select_candidates(
        args.candidates,
        cfg.candidates,
        cfg.llm_sources,
        cfg.flow_sources,
        cfg.exp_dir,
        rank=probe_rank(params.registry),
        log=log,
    )
    check_suite_inputs(params, data_dir=cfg.sft_data)
    flat = {
        **as_flat_dict(cfg, "evaluate."),
        "model_dir": params.model_dir,
        "prepare.speaker": params.prepare.speaker,
        "evaluate.candidates": ";".join(c.name for c in candidates),
    }

    with stage_run("evaluate", params.prepare.speaker, flat) as tracked:
        result = run_suite(
            suite_config(params),
            candidates,
            cfg.eval_dir,
            data_dir=cfg.sft_data or None,
            progress=not args.no_progress,
            log=log,
        )
        result.probe_history = _probe_history(Path(cfg.exp_dir))
        # extract writes speaker_check.json at its output root: two folders above <root>/<split>/spk2embedding.pt
        speaker_report = Path(cfg.speaker_file).parent.parent / "speaker_check.json" if cfg.speaker_file else None
        data_checks = read_data_checks(cfg.sft_data or None, speaker_report)
        files = write_outputs(result, cfg.report_max_utts, data_checks)
        metrics: dict[str, float] = {
            "skipped_items": len(result.skipped),
            "failed_candidates": sum(not c.ok for c in result.candidates),
        }
        if data_checks is not None:
            metrics.update({f"data/{reason}": n for reason, n in data_checks.counts.items()})
        for c in result.scored:
            assert c.summary is not None
            values = {
                "cer": c.summary.cer,
                "ss": c.summary.ss,
                "over_50": c.summary.over_50,
                "n": c.summary.n,
                "missing": c.summary.missing,
            }
            if c.summary.cer_ci:
                values.update(cer_lo=c.summary.cer_ci[0], cer_hi=c.summary.cer_ci[1])
            if c.summary.ss_ci:
                values.update(ss_lo=c.summary.ss_ci[0], ss_hi=c.summary.ss_ci[1])
            slug = c.candidate.slug
            metrics.update({f"{key}/{slug}": v for key, v in values.items() if v is not None})
            for subset, sub in c.subsets.items():  # cer/<slug>/<subset>, ss/<slug>/<subset>
                metrics.update(
                    {f"{key}/{slug}/{subset}": v for key, v in (("cer", sub.cer), ("ss", sub.ss)) if v is not None}
                )
        tracked.log_metrics(metrics)
        tracked.set_tags({"cosyml.tiny_kit": result.tiny_kit, "cosyml.candidates": len(result.candidates)})
        for path in (files.report, files.candidates, files.metrics, files.summary, files.utterances, *files.plots):
            tracked.log_artifact(path, "plots" if path.parent.name == "plots" else None)
        for rel in files.media:  # beside report.html under the same relative paths, so its players play
            parent = Path(rel).parent.as_posix()
            tracked.log_artifact(result.eval_dir / rel, None if parent == "." else parent)
    print(format_table(result))
    print(f"report: {files.report}   candidates: {files.candidates}")
    if not result.scored:
        raise CosymlError(
            "no candidate could be evaluated: " + "; ".join(f"{c.candidate.name}: {c.error}" for c in result.candidates)
        )
    return 0


def suite_config(params: Params) -> SuiteConfig:
    """The evaluation suite's settings from params: the ``evaluate`` section, the base model directory, the
    speaker, the Whisper checkpoint (``evaluate.whisper_model``, else ``prepare.whisper_model``) and the
    sampling of :func:`evaluate_sampling`."""
    from cosyml.evaluation.suite import SuiteConfig

    ev = params.evaluate
    return SuiteConfig(
        model_dir=Path(params.model_dir),
        speaker=params.prepare.speaker,
        whisper_model=ev.whisper_model or params.prepare.whisper_model,
        evaluate=ev,
        sampling=evaluate_sampling(params),
        speaker_file=ev.speaker_file or None,
    )


def evaluate_sampling(params: Params, base: SamplingParams | None = None) -> SamplingParams | None:
    """``evaluate.top_p``/``top_k``/``win_size``/``tau_r`` over ``base`` (default: the model yaml's
    values); None when none of them is set and no ``base`` is given (the engine then uses the yaml's)."""
    given = {k: v for k in SAMPLING_KEYS if (v := getattr(params.evaluate, k)) is not None}
    if base is None:
        if not given:
            return None
        from cosyml.models.modeldir import ModelDir

        base = ModelDir(params.model_dir).hparams.sampling
    return dataclasses.replace(base, **given)


def check_suite_inputs(params: Params, data_dir: str | None) -> None:
    """The suite's input checks that name the command-line flags (one line each, before any work)."""
    if not Path(params.model_dir).is_dir():
        raise InputError(
            f"{params.model_dir}: model directory not found; pass --model-dir or set model_dir in params.yaml"
        )
    if not params.evaluate.test_sets and not data_dir:
        raise InputError("evaluate.test_sets is empty and no --data was given; nothing to evaluate")


def _probe_history(exp_dir: Path) -> dict[str, list[dict]]:
    """Each trained part's per-epoch probe history (``<exp_dir>/<part>/probe/history.json``), for the report."""
    from cosyml.train.probe import HISTORY_FILE, read_history

    found = {part: read_history(exp_dir / part / "probe" / HISTORY_FILE) for part in ("llm", "flow")}
    return {part: rows for part, rows in found.items() if rows}


def format_table(result) -> str:
    """Plain-text summary: one line per candidate (errors and SS x100), then skipped items and failures."""
    lines = [f"{'candidate':<40}{'CER/WER%':>9}{'95% CI':>15}{'SS':>7}{'n':>5}{'miss':>5}{'synth':>6}{'cached':>7}"]
    for c in result.candidates:
        if not c.ok:
            lines.append(f"{c.candidate.name:<40} not evaluated: {c.error}")
            continue
        s = c.summary
        ci = f"[{100 * s.cer_ci[0]:.1f},{100 * s.cer_ci[1]:.1f}]" if s.cer_ci else "-"
        cer = f"{100 * s.cer:.2f}" if s.cer is not None else "-"
        ss = f"{100 * s.ss:.1f}" if s.ss is not None else "-"
        lines.append(
            f"{c.candidate.name:<40}{cer:>9}{ci:>15}{ss:>7}{s.n:>5}{s.missing:>5}{c.synthesized:>6}{c.reused:>7}"
        )
    if result.tiny_kit:
        lines.append("(tiny kit: random weights; these numbers prove plumbing, not voice quality)")
    skipped = result.skipped
    if skipped:
        reasons: dict[str, int] = {}
        for p in skipped:
            reasons[p.reason] = reasons.get(p.reason, 0) + 1
        lines.append(
            f"skipped {len(skipped)} test items: "
            + ", ".join(f"{k} {v}" for k, v in reasons.items())
            + f" (see {Path(result.eval_dir) / 'summary.json'})"
        )
    return "\n".join(lines)
