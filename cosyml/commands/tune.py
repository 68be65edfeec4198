"""``cosyml tune``: search the sampling parameters (top_p, top_k, win_size, tau_r) of one candidate with Optuna.

    cosyml tune --candidate "llm=sft-avg,flow=sft-avg" --n-trials 30 --out exp/tune
    cosyml tune --storage postgresql://user@db/optuna --n-trials 100     # one per machine: same study

Every trial synthesises the small fixed test set ``tune.subsets`` (``tune.max_utts`` utterances each, the
same seeds as ``cosyml evaluate``) and scores it with the registry composite ``ss_weight*SS - cer_weight*CER``.
The study (``cosyml-<speaker>-sampling``) lives in ``--storage`` (default ``sqlite:///<out>/optuna.db``)
and resumes on rerun; ``--n-trials`` is the total it should reach. The best parameters go to
``<out>/sampling.json``, the file ``registry.sampling`` reads. MLflow: one run (stage ``tune``) with a
nested run per trial and the best parameters, value and ``sampling.json`` on the parent.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cosyml.commands._common import add_params_arguments, resolve_params
from cosyml.config import Params, as_flat_dict

if TYPE_CHECKING:
    from cosyml.evaluation.suite import SuiteConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tune",
        help="search the synthesis sampling parameters (top_p, top_k, win_size, tau_r) with Optuna",
        description="Optuna (TPE) search of the RAS sampling parameters for one candidate on a small fixed test "
        "set, scored by the registry composite; writes <out>/sampling.json for registry.sampling.",
    )
    p.add_argument(
        "--candidate",
        default=None,
        metavar="llm=SRC,flow=SRC",
        help="weights to tune for (tune.candidate; default: sft-avg for each part that exists, else base)",
    )
    p.add_argument("--model-dir", default=None, help="base model directory (default: params model_dir)")
    p.add_argument("--out", default=None, metavar="DIR", help="trial folders, optuna.db, sampling.json (tune.out_dir)")
    p.add_argument(
        "--n-trials",
        type=int,
        default=None,
        help="finished trials the study should hold in all; a rerun adds only the missing ones (tune.n_trials)",
    )
    p.add_argument(
        "--storage",
        default=None,
        help="Optuna storage URL (tune.storage; default sqlite:///<out>/optuna.db); a shared "
        "postgresql://user@host/db lets workers on many machines run the same study",
    )
    p.add_argument("--study-name", default=None, help="study name (tune.study_name; default cosyml-<speaker>-sampling)")
    p.add_argument("--seed", type=int, default=None, help="TPE sampler seed (tune.seed)")
    p.add_argument(
        "--data",
        default=None,
        metavar="DATA",
        help="prepared data folder whose dev split joins the test set as the speaker-SFT subset "
        "(evaluate.sft_data; '' for none)",
    )
    p.add_argument("--test-sets", default=None, help="test-set root in the CV3-Eval layout (evaluate.test_sets)")
    p.add_argument("--max-utts", type=int, default=None, help="utterances per subset (tune.max_utts)")
    p.add_argument("--device", default=None, help="auto, cpu or cuda (evaluate.device)")
    add_params_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cosyml.commands.evaluate import check_suite_inputs
    from cosyml.evaluation.candidates import parse_candidate
    from cosyml.tracking import stage_run
    from cosyml.tune import (
        StudySettings,
        check_candidate,
        default_candidate,
        describe_best,
        mask_storage,
        model_sampling,
        parse_space,
        run_study,
        suite_objective,
        write_sampling,
    )

    params = resolve_params(
        args,
        {
            "model_dir": args.model_dir,
            "tune.candidate": args.candidate,
            "tune.out_dir": args.out,
            "tune.n_trials": args.n_trials,
            "tune.storage": args.storage,
            "tune.study_name": args.study_name,
            "tune.seed": args.seed,
            "tune.max_utts": args.max_utts,
            "evaluate.sft_data": args.data,
            "evaluate.test_sets": args.test_sets,
            "evaluate.device": args.device,
        },
    )
    cfg = params.tune
    speaker = params.prepare.speaker
    space = parse_space(cfg.space)
    exp_dir = params.evaluate.exp_dir
    check_suite_inputs(params, data_dir=params.evaluate.sft_data)
    candidate = parse_candidate(cfg.candidate, exp_dir) if cfg.candidate.strip() else default_candidate(exp_dir)
    check_candidate(candidate, params.model_dir)
    out = Path(cfg.out_dir)
    settings = StudySettings(
        storage=cfg.storage or f"sqlite:///{(out / 'optuna.db').resolve()}",
        study_name=cfg.study_name or f"cosyml-{speaker}-sampling",
        n_trials=cfg.n_trials,
        seed=cfg.seed,
        direction=cfg.direction,
    )
    settings.check()

    def log(message: str) -> None:
        print(f"cosyml: {message}", file=sys.stderr)

    flat = {
        **as_flat_dict(cfg, "tune."),
        "tune.storage": mask_storage(settings.storage),
        "tune.study_name": settings.study_name,
        "tune.candidate": candidate.name,
        "model_dir": params.model_dir,
        "prepare.speaker": speaker,
        "registry.ss_weight": params.registry.ss_weight,
        "registry.cer_weight": params.registry.cer_weight,
        "evaluate.test_sets": params.evaluate.test_sets,
        "evaluate.sft_data": params.evaluate.sft_data,
    }
    log(f"tuning {candidate.name}: study {settings.study_name} in {mask_storage(settings.storage)}")
    with stage_run("tune", speaker, flat, run_name=f"tune {candidate.slug}") as tracked:

        def on_trial(record) -> None:
            value = f"{record.value:.4f}" if record.value is not None else record.state
            log(f"trial {record.number}: {value} {record.params}" + (f" ({record.reason})" if record.reason else ""))
            tags = {
                "cosyml.stage": "tune-trial",
                "cosyml.study": settings.study_name,
                "optuna.trial": record.number,
                "optuna.state": record.state,
            }
            if record.reason:
                tags["optuna.reason"] = record.reason[:5000]
            metrics = {
                k: v for k, v in (("objective", record.value), ("cer", record.cer), ("ss", record.ss)) if v is not None
            }
            tracked.log_child_run(f"trial-{record.number:04d}", record.params, metrics, tags)

        objective = suite_objective(
            tune_suite_config(params),
            candidate,
            out,
            params.registry,
            data_dir=params.evaluate.sft_data or None,
            log=log,
        )
        result = run_study(
            objective, space, settings, on_trial=on_trial, baseline=model_sampling(params.model_dir), log=log
        )
        states = [t.state for t in result.trials]
        tracked.log_metrics(
            {
                "trials_finished": result.finished,
                "trials_run": len(result.ran),
                "trials_failed": states.count("FAIL"),
                "trials_pruned": states.count("PRUNED"),
            }
        )
        tracked.set_tags({"cosyml.study": settings.study_name})
        if result.best is not None:
            best = result.best
            tracked.log_params({f"best.{k}": v for k, v in best.params.items()} | {"best.trial": best.number})
            tracked.log_metrics(
                {
                    k: v
                    for k, v in (("best_value", best.value), ("best_cer", best.cer), ("best_ss", best.ss))
                    if v is not None
                }
            )
        tracked.log_dict([t.as_dict() for t in result.trials], "trials.json")
        sampling_file = write_sampling(result, out / "sampling.json")  # no completed trial: one-line error
        tracked.log_artifact(sampling_file)
    print(describe_best(result))
    print(f"sampling: {sampling_file}  (set registry.sampling to it)")
    return 0


def tune_suite_config(params: Params) -> SuiteConfig:
    """The suite settings every trial starts from: ``cosyml evaluate``'s, on ``tune``'s small fixed test set
    (``tune.max_utts``, ``tune.subsets``, ``tune.synth_max_tokens`` where set), with the sampling
    ``evaluate.top_p`` ... over the model yaml's values (a trial replaces the values it searches)."""
    from cosyml.commands.evaluate import evaluate_sampling, suite_config
    from cosyml.tune import model_sampling_params

    tune, ev = params.tune, params.evaluate
    evaluate = dataclasses.replace(
        ev,
        max_utts=tune.max_utts,
        subsets=list(tune.subsets) or ev.subsets,
        synth_max_tokens=tune.synth_max_tokens or ev.synth_max_tokens,
    )
    return dataclasses.replace(
        suite_config(params),
        evaluate=evaluate,
        sampling=evaluate_sampling(params, base=model_sampling_params(params.model_dir)),
    )
