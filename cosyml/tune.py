"""Search the synthesis sampling parameters (RAS: top_p, top_k, win_size, tau_r) with Optuna.

    space = parse_space(params.tune.space)
    objective = suite_objective(suite, candidate, out_dir="exp/tune", registry=params.registry)
    result = run_study(objective, space, StudySettings(storage, "cosyml-toy-sampling", n_trials=20))
    write_sampling(result, "exp/tune/sampling.json")     # what registry.sampling reads

A trial suggests one value per searched parameter, synthesises a small fixed test set with ONE
candidate and the same per-utterance seeds as ``cosyml evaluate`` (:func:`~cosyml.evaluation.suite.run_suite`
with the trial's :class:`~cosyml.models.generation.SamplingParams`: the searched values over the suite
config's own sampling), and scores it with the registry's composite
``ss_weight * SS - cer_weight * CER`` (:func:`cosyml.registry.composite`, so tuning and promotion agree).
Each trial writes into its own folder ``<out_dir>/trials/trial-NNNN`` so the synthesis caches of two
settings never mix.

The study lives in real Optuna storage (sqlite by default, PostgreSQL/MySQL for many workers): it is
opened with ``load_if_exists``, so a rerun or a second worker continues the same study. ``n_trials`` is
the number of finished trials the study should hold in all, not per call. A trial whose synthesis failed
entirely (or whose candidate could not be loaded) is recorded as FAIL with its reason in the user
attribute ``fail_reason``; one whose share of missing outputs is above ``registry.max_missing_ratio``
(a setting the registry would never promote) is PRUNED. Neither stops the study.

Nothing here talks to MLflow or the command line: :func:`run_study` calls ``on_trial`` after every
trial this process ran, and the caller logs it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cosyml.config import RegistryConfig
from cosyml.errors import ConfigError, CosymlError
from cosyml.evaluation.candidates import BASE, PARTS, Candidate, parse_candidate, weight_file
from cosyml.fileio import write_if_changed
from cosyml.tracking import mask

if TYPE_CHECKING:
    from cosyml.evaluation.suite import SuiteConfig
    from cosyml.models.generation import SamplingParams

#: Searchable sampling parameters: (kind, lowest allowed, highest allowed) as SynthRequest.validate checks them.
SEARCHABLE: dict[str, tuple[type, float, float]] = {
    "top_p": (float, 1e-6, 1.0),
    "top_k": (int, 1, 10_000),
    "win_size": (int, 1, 10_000),
    "tau_r": (float, 0.0, 100.0),
}
DIRECTIONS = ("maximize", "minimize")
FINISHED = ("COMPLETE", "PRUNED", "FAIL")


class TrialFailed(CosymlError):
    """A trial that produced nothing to score (recorded as FAIL; the study goes on)."""


class TrialPruned(CosymlError):
    """A trial scored but not usable (too many missing outputs): recorded as PRUNED."""


# ------------------------------------------------------------------------------------------ space


@dataclass(frozen=True)
class ParamRange:
    """One searched parameter: ``low <= value <= high``; ints are searched as ints."""

    name: str
    low: float
    high: float
    integer: bool

    def suggest(self, trial: Any) -> float | int:
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high))
        return trial.suggest_float(self.name, float(self.low), float(self.high))


def parse_space(space: Mapping[str, Any], where: str = "tune.space") -> list[ParamRange]:
    """``{"top_p": [0.5, 0.95], "top_k": [5, 50]}`` -> ranges; one-line :class:`ConfigError` for an
    unknown name, a malformed or empty range, or bounds outside what the synthesis engine accepts."""
    if not isinstance(space, Mapping) or not space:
        raise ConfigError(f"{where}: expected a mapping NAME: [low, high] with NAME in {', '.join(SEARCHABLE)}")
    ranges: list[ParamRange] = []
    for name, bounds in space.items():
        if name not in SEARCHABLE:
            raise ConfigError(
                f"{where}.{name}: unknown sampling parameter; searchable ones are: {', '.join(SEARCHABLE)}"
            )
        kind, lowest, highest = SEARCHABLE[name]
        ok = isinstance(bounds, list | tuple) and len(bounds) == 2
        ok = ok and all(isinstance(b, int | float) and not isinstance(b, bool) and math.isfinite(b) for b in bounds)
        if not ok:
            raise ConfigError(f"{where}.{name}: expected [low, high], got {bounds!r}")
        low, high = float(bounds[0]), float(bounds[1])
        if kind is int and not (low.is_integer() and high.is_integer()):
            raise ConfigError(f"{where}.{name}: expected whole numbers, got {bounds!r}")
        if not low < high:
            raise ConfigError(f"{where}.{name}: empty range {bounds!r}; give low < high")
        if low < lowest or high > highest:
            raise ConfigError(f"{where}.{name}: {bounds!r} is outside the valid range [{lowest:g}, {highest:g}]")
        ranges.append(ParamRange(name, low, high, kind is int))
    return ranges


# ------------------------------------------------------------------------------------------ objective


@dataclass(frozen=True)
class TrialScore:
    """What one trial measured: the objective (higher is better for ``maximize``), CER and SS means."""

    objective: float
    cer: float
    ss: float
    n: int
    missing: int


#: ``objective(sampling, trial_number) -> TrialScore``; raises TrialFailed / TrialPruned.
Objective = Callable[[dict[str, float | int], int], TrialScore]


def default_candidate(exp_dir: str | Path) -> Candidate:
    """The champion-like choice: ``sft-avg`` for each part whose averaged weights exist, else ``base``."""
    labels = {part: "sft-avg" if (Path(exp_dir) / part / f"{part}.pt").is_file() else BASE for part in PARTS}
    return parse_candidate(f"llm={labels['llm']},flow={labels['flow']}", exp_dir)


def check_candidate(candidate: Candidate, model_dir: str | Path) -> None:
    """One-line :class:`~cosyml.errors.ModelDirError` when a part's weights do not exist."""
    for part in PARTS:
        weight_file(candidate.source(part), part, model_dir)


def trial_sampling(base: SamplingParams, sampling: Mapping[str, float | int]) -> SamplingParams:
    """``base`` with one trial's searched values (``{"top_p": 0.7, "top_k": 12}``; others unchanged)."""
    unknown = sorted(set(sampling) - set(SEARCHABLE))
    if unknown:
        raise ConfigError(f"{unknown[0]}: not a sampling parameter; searchable ones are: {', '.join(SEARCHABLE)}")
    values: dict[str, Any] = {k: int(v) if SEARCHABLE[k][0] is int else float(v) for k, v in sampling.items()}
    return dataclasses.replace(base, **values)


def suite_objective(
    suite: SuiteConfig,
    candidate: Candidate,
    out_dir: str | Path,
    registry: RegistryConfig,
    data_dir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> Objective:
    """The objective that runs the evaluation suite (``suite``: the small test set, its caps) for
    ``candidate`` with one trial's sampling: the searched values over ``suite.sampling`` (None: the model
    yaml's values). Composite weights and the missing-output limit come from ``registry``."""
    from cosyml.evaluation.suite import SuiteModels, run_suite
    from cosyml.registry import Scores, composite

    base = suite.sampling if suite.sampling is not None else model_sampling_params(suite.model_dir)
    models = SuiteModels()  # Whisper, CAM++ and the engine load once for the whole study

    def objective(sampling: dict[str, float | int], number: int) -> TrialScore:
        trial_dir = Path(out_dir) / "trials" / f"trial-{number:04d}"
        result = run_suite(
            dataclasses.replace(suite, sampling=trial_sampling(base, sampling)),
            [candidate],
            trial_dir,
            data_dir=data_dir or None,
            progress=False,
            log=log,
            models=models,
        )
        outcome = result.candidates[0]
        if outcome.error is not None:
            raise TrialFailed(outcome.error)
        summary = outcome.summary
        if summary is None or summary.n == 0:
            raise TrialFailed("nothing was scored")
        if summary.missing >= summary.n:
            first = outcome.synth_failures[0].error if outcome.synth_failures else "no usable audio"
            raise TrialFailed(f"synthesis failed for all {summary.n} utterances; first: {first}")
        scores = Scores.from_dict(summary.as_dict(), str(trial_dir))
        if scores is None:
            raise TrialFailed("no CER/SS could be computed")
        if summary.missing / summary.n > registry.max_missing_ratio:
            raise TrialPruned(
                f"{summary.missing}/{summary.n} outputs missing, above registry.max_missing_ratio "
                f"{registry.max_missing_ratio}"
            )
        return TrialScore(composite(scores, registry), scores.cer, scores.ss, summary.n, summary.missing)

    return objective


# ------------------------------------------------------------------------------------------ study


@dataclass(frozen=True)
class StudySettings:
    """Where the study lives and how long it runs. ``n_trials``: finished trials the study should hold."""

    storage: str
    study_name: str
    n_trials: int
    seed: int = 1986
    direction: str = "maximize"
    # a worker's trial counts as dead (FAIL, then re-run once with the same parameters) when it has not
    # sent a heartbeat for grace_s seconds; the next trial any worker starts does that check
    heartbeat_s: int = 60
    grace_s: int = 180

    def check(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ConfigError(f"tune.direction: {self.direction!r} is not one of {', '.join(DIRECTIONS)}")
        if self.n_trials < 1:
            raise ConfigError(f"tune.n_trials: must be at least 1, got {self.n_trials}")
        if not self.study_name:
            raise ConfigError("tune.study_name: empty; name the study or leave it to the default")


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the storage holds it. ``state``: COMPLETE, PRUNED, FAIL, RUNNING or WAITING."""

    number: int
    state: str
    params: dict[str, float | int]
    value: float | None = None
    cer: float | None = None
    ss: float | None = None
    reason: str | None = None  # why it failed or was pruned

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class StudyResult:
    """The study after this call: every trial in storage, those this call ran, and the best one."""

    study_name: str
    storage: str  # with any password masked
    direction: str
    trials: list[TrialRecord] = field(default_factory=list)
    ran: list[int] = field(default_factory=list)  # trial numbers this process ran
    best: TrialRecord | None = None

    @property
    def finished(self) -> int:
        return sum(t.state in FINISHED for t in self.trials)


def mask_storage(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db`` (safe to print and log)."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in creds:
        return url
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"


def _record(trial: Any) -> TrialRecord:
    attrs = trial.user_attrs
    return TrialRecord(
        number=trial.number,
        state=trial.state.name,
        params=dict(trial.params),
        value=trial.value if trial.state.name == "COMPLETE" else None,
        cer=attrs.get("cer"),
        ss=attrs.get("ss"),
        reason=attrs.get("fail_reason") or attrs.get("prune_reason"),
    )


def _rdb_storage(url: str, attempts: int = 5, heartbeat_s: int = 60, grace_s: int = 180) -> Any:
    """Optuna's RDB storage at ``url``, or one line saying why it cannot be opened.

    Heartbeats on: a trial whose worker died (killed, OOM, machine lost) stops beating; ``grace_s``
    seconds later the next trial started on the study marks it FAIL and queues one retry with the same
    parameters (``RetryFailedTrialCallback``), so no trial stays RUNNING forever.

    Workers started together on an empty database race to create the schema; the loser sees a
    unique-key error from the server and simply tries again once the winner is done.
    """
    import optuna
    import sqlalchemy.exc

    def fail(exc: BaseException, hint: str = "") -> ConfigError:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        return ConfigError(
            f"tune.storage: cannot open {mask_storage(url)}: {(reason or [type(exc).__name__])[0][:200]}{hint}"
        )

    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # heartbeats are marked experimental in optuna 5
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    heartbeat_interval=heartbeat_s,
                    grace_period=grace_s,
                    failed_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=1),
                )
        except (ImportError, ValueError, optuna.exceptions.StorageInternalError) as exc:
            missing_driver = url.startswith("postgresql") and "import" in str(exc).lower()
            raise fail(exc, "; install the driver: pip install -e .[postgres]" if missing_driver else "") from None
        except sqlalchemy.exc.OperationalError as exc:  # server down, wrong host/port/database, refused login
            raise fail(exc) from None
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
            if attempt == attempts - 1:
                raise fail(exc) from None
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def open_study(settings: StudySettings) -> Any:
    """Create the study or load the existing one of that name (RDB storage with heartbeats, so a worker
    killed mid-trial leaves a FAIL, not a trial RUNNING forever)."""
    import optuna

    settings.check()
    if settings.storage.startswith("sqlite:///"):
        Path(settings.storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    storage = _rdb_storage(settings.storage, heartbeat_s=settings.heartbeat_s, grace_s=settings.grace_s)
    sampler = optuna.samplers.TPESampler(seed=settings.seed)
    study = optuna.create_study(
        storage=storage,
        study_name=settings.study_name,
        sampler=sampler,
        direction=optuna.study.StudyDirection[settings.direction.upper()],
        load_if_exists=True,
    )
    if study.direction.name.lower() != settings.direction:
        raise ConfigError(
            f"tune.direction: study '{settings.study_name}' was created to "
            f"{study.direction.name.lower()}; use that or another study name"
        )
    return study


def run_study(
    objective: Objective,
    space: Sequence[ParamRange],
    settings: StudySettings,
    on_trial: Callable[[TrialRecord], None] | None = None,
    baseline: Mapping[str, float | int] | None = None,
    log: Callable[[str], None] | None = None,
) -> StudyResult:
    """Run trials until the study holds ``settings.n_trials`` finished ones (other workers' included).

    ``baseline`` (the model yaml's own sampling) becomes the first trial of a new study, so the search
    always measures the defaults it has to beat; values outside the searched ranges are sampled instead."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    say = log or (lambda _msg: None)
    study = open_study(settings)
    existing = study.get_trials(deepcopy=False)
    # The sampler's random stream must continue, not restart, when a study is resumed: seeded with
    # tune.seed alone, a second call would draw the first call's points again (trial 3 = trial 1).
    # A fresh study keeps tune.seed, so a search is still reproducible from scratch.
    study.sampler = optuna.samplers.TPESampler(seed=resumed_seed(settings.seed, len(existing)))
    names = ", ".join(r.name for r in space)
    if not existing:
        fixed = {
            r.name: baseline[r.name]
            for r in space
            if baseline and r.name in baseline and r.low <= baseline[r.name] <= r.high
        }
        if fixed:
            study.enqueue_trial(fixed, user_attrs={"baseline": True}, skip_if_exists=True)
        say(
            f"new study {settings.study_name}: searching {names}"
            + ("; trial 0 is the model yaml's values" if fixed else "")
        )
    else:
        finished = sum(t.state.name in FINISHED for t in existing)
        say(
            f"resuming study {settings.study_name}: {len(existing)} trials in storage ({finished} finished), "
            f"searching {names} up to {settings.n_trials} finished"
        )
    ran: list[int] = []

    def optuna_objective(trial: Any) -> float:
        sampling = {r.name: r.suggest(trial) for r in space}
        try:
            score = objective(sampling, trial.number)
        except TrialPruned as exc:
            trial.set_user_attr("prune_reason", str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        except CosymlError as exc:  # nothing to score: record why, the study goes on
            trial.set_user_attr("fail_reason", str(exc))
            raise TrialFailed(str(exc)) from None
        trial.set_user_attr("cer", score.cer)
        trial.set_user_attr("ss", score.ss)
        trial.set_user_attr("n", score.n)
        trial.set_user_attr("missing", score.missing)
        return score.objective

    def after(study: Any, frozen: Any) -> None:
        ran.append(frozen.number)
        if on_trial is not None:
            on_trial(_record(frozen))
        finished = len(study.get_trials(deepcopy=False, states=_states(FINISHED)))
        if finished >= settings.n_trials:
            study.stop()  # other workers filled the study

    remaining = settings.n_trials - len(study.get_trials(deepcopy=False, states=_states(FINISHED)))
    if remaining > 0:
        study.optimize(
            optuna_objective, n_trials=remaining, catch=(TrialFailed,), callbacks=[after], gc_after_trial=True
        )
    trials = [_record(t) for t in study.get_trials(deepcopy=False)]
    complete = [t for t in trials if t.state == "COMPLETE" and t.value is not None]
    best = None
    if complete:
        pick = max if settings.direction == "maximize" else min
        best = pick(complete, key=lambda t: t.value)  # type: ignore[arg-type, return-value]  # complete holds only trials with a value (filtered above), which mypy cannot see in the key; max/min as one name loses their overloads
    return StudyResult(settings.study_name, mask_storage(settings.storage), settings.direction, trials, ran, best)


def resumed_seed(seed: int, trials_in_storage: int) -> int:
    """The sampler seed of a call that finds ``trials_in_storage`` trials: ``seed`` for a new study, a
    different (still deterministic) stream for each resumption."""
    if trials_in_storage == 0:
        return seed
    return (seed * 1_000_003 + trials_in_storage * 7_919) % (2**32)


def model_sampling_params(model_dir: str | Path) -> SamplingParams:
    """The sampling defaults in ``<model_dir>``'s yaml (``llm.sampling``)."""
    from cosyml.models.modeldir import ModelDir

    return ModelDir(model_dir).hparams.sampling


def model_sampling(model_dir: str | Path) -> dict[str, float | int]:
    """:func:`model_sampling_params` as a mapping: the baseline trial."""
    return dataclasses.asdict(model_sampling_params(model_dir))


def _states(names: Sequence[str]) -> tuple[Any, ...]:
    from optuna.trial import TrialState

    return tuple(TrialState[n] for n in names)


# ------------------------------------------------------------------------------------------ output


def write_sampling(result: StudyResult, path: str | Path) -> Path:
    """Write the best trial's parameters as the tuned sampling file ``registry.sampling`` reads:
    ``{"sampling": {"top_p": ..., ...}, "objective": ..., "trial": N, "study": ...}``. Raises
    :class:`CosymlError` when no trial completed."""
    if result.best is None:
        reasons = [f"trial {t.number}: {t.reason}" for t in result.trials if t.reason][:1]
        raise CosymlError(
            f"study '{result.study_name}': no trial completed ({len(result.trials)} recorded"
            + (f"; {reasons[0]}" if reasons else "")
            + "); nothing to write"
        )
    best = result.best
    data = {
        "sampling": dict(sorted(best.params.items())),
        "objective": best.value,
        "cer": best.cer,
        "ss": best.ss,
        "trial": best.number,
        "study": result.study_name,
        # the storage URL as tracking shows it: no password, project paths relative (the file is versioned
        # by DVC and read on other machines)
        "storage": mask(result.storage),
        "finished_trials": result.finished,
    }
    path = Path(path)
    write_if_changed(path, (json.dumps(data, indent=1) + "\n").encode("utf-8"))
    return path


def describe_best(result: StudyResult) -> str:
    """One line: the best trial, its value, CER/SS and parameters."""
    best = result.best
    if best is None:
        return f"study {result.study_name}: no completed trial ({len(result.trials)} recorded)"
    values = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(best.params.items()))
    cer = f"{best.cer:.4f}" if best.cer is not None else "-"
    ss = f"{best.ss:.4f}" if best.ss is not None else "-"
    return (
        f"best trial {best.number} of {result.finished}: objective={best.value:.4f} cer={cer} ss={ss} "
        f"{values} (study {result.study_name})"
    )
