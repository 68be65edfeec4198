"""``cosyml train llm|flow``: speaker SFT of one part of a CosyVoice2 or CosyVoice3 model, recorded in MLflow.

The recipe: load the base model directory's part strictly, read the train/dev shards, run the trainer
(:class:`cosyml.train.loop.TrainingRecipe`), average the best checkpoints into an official-format ``<part>.pt``.
Components know nothing of MLflow; the callbacks here forward metrics, checkpoints and per-epoch audio
samples to :mod:`cosyml.tracking`. Works under ``torchrun`` (one MLflow run, written by rank 0).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from cosyml.commands._common import add_params_arguments, resolve_params
from cosyml.config import Params, TrainConfig, as_flat_dict
from cosyml.errors import InputError
from cosyml.models.keys import CAMPPLUS_NAME, Part

if TYPE_CHECKING:
    import torch

    from cosyml.tracking import StageRun
    from cosyml.train.batching import UtteranceSet
    from cosyml.train.callbacks import Callbacks
    from cosyml.train.checkpoint import CheckpointInfo
    from cosyml.train.state import EpochResult

PARTS = ("llm", "flow")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fine-tune the LLM or the flow on one speaker (speaker SFT)")
    p.add_argument("part", choices=PARTS, help="which part to train")
    p.add_argument("--data", default="data/shards", help="shards folder with train/data.list and dev/data.list")
    p.add_argument("--model-dir", default=None, help="base model directory (default: params model_dir)")
    p.add_argument("--output", default=None, help="run folder (default: exp/<part>); checkpoints go in checkpoints/")
    p.add_argument("--max-epochs", type=int, default=None)
    p.add_argument(
        "--no-average", action="store_true", help="leave averaging to `cosyml average` (the DVC pipeline does)"
    )
    p.add_argument(
        "--resume",
        default="auto",
        help="auto (newest checkpoint in the run folder), compatible (auto when the checkpoints come from the same "
        "training params, base weights and shards, else start over: what `dvc repro` uses), none, or a checkpoint path",
    )
    add_params_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    params = resolve_params(args, {"model_dir": args.model_dir, "train.max_epochs": args.max_epochs})
    output = Path(args.output or f"exp/{args.part}")
    from cosyml.train import ddp

    info = ddp.init_distributed(params.train.device)
    try:
        resume = args.resume
        if resume == "compatible":
            resume = ddp.broadcast_object(
                compatible_resume(args.part, params, Path(args.data), output) if info.is_main else None, info
            )
        result = train_part(args.part, params, Path(args.data), output, resume, info, average=not args.no_average)
    finally:
        ddp.shutdown()
    if info.is_main and result.get("complete"):
        print(
            f"{args.part}: {output} is already trained ({result['checkpoint']}: {result['epochs']} epochs, "
            f"{result['steps']} steps); nothing to do (raise train.max_epochs to train on, or --resume none)"
        )
    elif info.is_main:
        print(f"trained {args.part}: {result['epochs']} epochs, {result['steps']} steps -> {result['weights']}")
    return 0


FINGERPRINT_FILE = "fingerprint.txt"  # in the checkpoint folder: what its checkpoints were trained from


def training_fingerprint(part: str, params: Params, data: Path) -> str:
    """sha256 over what a training run's result depends on: the ``train`` params that change what is
    computed (not how long it runs: see ``RUN_CONTROL_FIELDS``), the base model's yaml and ``<part>.pt``
    bytes, and the shard lists and shard files."""
    import hashlib
    import json

    from cosyml.data.shards import read_data_list
    from cosyml.models.modeldir import ModelDir
    from cosyml.train.checkpoint import RUN_CONTROL_FIELDS

    def file_sha(path: Path) -> str:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        return digest.hexdigest()

    md = ModelDir(params.model_dir)
    train_fields = {k: v for k, v in as_flat_dict(params.train).items() if k not in RUN_CONTROL_FIELDS}
    files = [md.yaml_path, md.weight_path(part)]  # type: ignore[arg-type]  # part is 'llm' or 'flow' (the CLI's choices), a str to mypy; weight_path takes the Literal
    for split in ("train", "dev"):
        listing = data / split / "data.list"
        if listing.is_file():
            files.append(listing)
            files.extend(Path(s) for s in read_data_list(listing))
    blob = {"part": part, "train": train_fields, "files": [file_sha(f) for f in files]}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def compatible_resume(part: str, params: Params, data: Path, output: Path) -> str:
    """ "auto" when ``<output>/checkpoints`` was trained from the same fingerprint (a killed or extended run
    continues), else "none" after removing its checkpoints (params, base weights or shards changed: the old
    checkpoints would be refused or, worse, continued on other data). Writes the fingerprint file."""
    import sys

    from cosyml.fileio import atomic_write_text
    from cosyml.train.checkpoint import latest_resumable, list_checkpoints

    folder = output / "checkpoints"
    key = training_fingerprint(part, params, data)
    marker = folder / FINGERPRINT_FILE
    found = marker.read_text(encoding="utf-8").strip() if marker.is_file() else None
    latest = latest_resumable(folder) if folder.is_dir() else None
    if latest is not None and found == key:
        print(
            f"cosyml: resuming {part} from {latest.path} (epoch {latest.next_epoch}, step {latest.step})",
            file=sys.stderr,
        )
        return "auto"
    old = list_checkpoints(folder) if folder.is_dir() else []
    if old:
        print(
            f"cosyml: {folder}: checkpoints come from other train params, base weights or shards; starting over",
            file=sys.stderr,
        )
        for info in old:
            Path(info.path).with_suffix(".json").unlink(missing_ok=True)  # .json first: never a half checkpoint
            Path(info.path).unlink(missing_ok=True)
    atomic_write_text(marker, key + "\n")
    return "none"


def _check_shards(data: Path, speech_tokenizer_name: str, needs_instruct: bool = False) -> tuple[Path, Path | None]:
    import pyarrow.parquet as pq

    from cosyml.data.shards import read_data_list, shard_metadata

    train_list, dev_list = data / "train" / "data.list", data / "dev" / "data.list"
    if not train_list.is_file():
        raise InputError(f"{train_list}: not found; run `cosyml shards --output {data}` first")
    shards = read_data_list(train_list)
    made_with = shard_metadata(shards[0]).get("cosyml.speech_tokenizer") if shards else None
    if made_with and made_with != speech_tokenizer_name:
        raise InputError(
            f"{shards[0]}: speech tokens come from {made_with} but the model needs {speech_tokenizer_name}; "
            "rerun `cosyml extract` and `cosyml shards` with this model directory"
        )
    if needs_instruct and shards and "instruct" not in pq.read_schema(shards[0]).names:
        raise InputError(
            f"{shards[0]}: no instruct column, which CosyVoice3 LLM training needs; set prepare.instruct (e.g. "
            "'You are a helpful assistant.<|endofprompt|>') and rerun `cosyml prepare`, `extract` and `shards`"
        )
    return train_list, dev_list if dev_list.is_file() else None


def load_base_part(model_dir: Any, part: str) -> Any:
    """The model directory's ``part`` (llm or flow) with its official weights, strictly loaded."""
    from cosyml.models.flow import build_flow
    from cosyml.models.llm import load_llm
    from cosyml.models.modeldir import load_strict

    if part == "llm":
        return load_llm(model_dir)
    flow = build_flow(model_dir.config)
    load_strict(flow, model_dir.flow_path, part="flow")
    return flow


def train_part(
    part: str, params: Params, data: Path, output: Path, resume: str, info: Any, average: bool = True
) -> dict[str, Any]:
    """Train ``part``; with ``average``, write ``<output>/<part>.pt`` (the average of the best checkpoints).

    Rank 0 holds ``output``'s lock (:func:`cosyml.fileio.output_lock`) throughout: a second `cosyml train`
    into the same folder stops at once, naming the holder (only rank 0 writes files). A run that already
    reached its end (``resume`` auto) trains nothing, opens no MLflow run and returns ``complete``; its
    averaged weights are rewritten only if they would change.
    """
    import contextlib

    from cosyml.fileio import output_lock

    lock = output_lock(output, f"cosyml train {part}") if info.is_main else contextlib.nullcontext()
    with lock:
        return _train_part(part, params, data, output, resume, info, average)


def _train_part(
    part: str, params: Params, data: Path, output: Path, resume: str, info: Any, average: bool
) -> dict[str, Any]:
    """The recipe: check, load the data and the base part, train (tracked by rank 0), average."""
    from cosyml.models.modeldir import ModelDir
    from cosyml.tracking import stage_run
    from cosyml.train import ddp
    from cosyml.train.average import average_checkpoints
    from cosyml.train.callbacks import TrainCallbacks
    from cosyml.train.loop import completed_checkpoint, train
    from cosyml.versioning import data_version

    cfg = params.train
    if cfg.log_checkpoints not in ("all", "best", "final", "none"):
        raise InputError(f"train.log_checkpoints: unknown value '{cfg.log_checkpoints}'; use all, best, final or none")
    md = ModelDir(params.model_dir)
    md.check(parts=(cast(Part, part),), frontend=False)
    train_list, dev_list = _check_shards(
        data, md.speech_tokenizer_path.name, needs_instruct=md.version == "v3" and part == "llm"
    )
    train_set, cv_set = _utterance_sets(part, md, cfg, train_list, dev_list, info)
    average_by = cfg.average_by
    if cv_set is None and average_by == "cv_loss":
        average_by = "last"  # no dev split: no CV loss to rank by
    if average_by == "probe" and cfg.probe_every_epochs == 0:
        raise InputError("train.average_by: 'probe' needs the probe; set train.probe_every_epochs to 1 (or N)")
    rank = probe_rank(params.registry)
    model = load_base_part(md, part)
    checkpoint_dir = output / "checkpoints"
    weights = output / f"{part}.pt"

    def average_best() -> list[str]:
        averaged = average_checkpoints(checkpoint_dir, weights, num=cfg.average_num, by=average_by, rank=rank)
        return list(averaged.sources)

    done = completed_checkpoint(checkpoint_dir, cfg, model) if resume == "auto" and info.is_main else None
    done = ddp.broadcast_object(done, info)  # every rank takes the same branch
    if done is not None:
        if info.is_main and average:
            average_best()
        return {
            "epochs": done.next_epoch,
            "steps": done.step,
            "weights": weights,
            "complete": True,
            "checkpoint": done.name,
        }

    def body(run: StageRun) -> dict[str, Any]:
        callbacks: Callbacks = TrainCallbacks()  # other ranks: the recipe calls callbacks on rank 0 only
        if info.is_main:
            callbacks = TrackedTraining.start(run, part, params, md, output, dev_list or train_list)
        result = train(
            model,
            train_set,
            cv_set,
            cfg,
            checkpoint_dir,
            model_train_conf=md.config.get("train_conf"),
            dist=info,
            resume=None if resume == "none" else resume,
            callbacks=callbacks,
        )
        if not info.is_main or not average:
            return {"epochs": result.epochs_completed, "steps": result.step, "weights": checkpoint_dir}
        curves = _probe_curves(part, output / "probe")
        if curves is not None:
            run.log_artifact(curves, "probe")  # CER/SS/CV loss against epoch, beside the metrics' own charts
        run.set_tags({"cosyml.averaged_from": ",".join(average_best()), "cosyml.part": part})
        if cfg.log_checkpoints in ("all", "best", "final"):
            run.log_artifact(weights, "weights")
        return {"epochs": result.epochs_completed, "steps": result.step, "weights": weights}

    if not info.is_main:
        from cosyml.tracking import StageRun

        return body(StageRun(active=False))
    logged = {
        **as_flat_dict(cfg, "train."),
        "part": part,
        "model_dir": str(md.root),
        "data": str(data),
        "output": str(output),
    }
    with stage_run(
        f"train_{part}", params.prepare.speaker, logged, data_version=data_version("shards"), system_metrics=True
    ) as run:
        return body(run)


def _utterance_sets(
    part: str, md: Any, cfg: TrainConfig, train_list: Path, dev_list: Path | None, info: Any
) -> tuple[UtteranceSet, UtteranceSet | None]:
    """This rank's share of the train and dev utterances, featurised for ``part`` (the flow needs mels)."""
    from cosyml.features.mel import MelConfig
    from cosyml.text.tokenizer import TextTokenizer
    from cosyml.train.batching import UtteranceSet, default_featurizer

    tokenizer = TextTokenizer(md.qwen_dir, md.hparams.tokenizer_version)
    featurizer = default_featurizer(tokenizer.encode, MelConfig.from_model_config(md.config), with_mel=part == "flow")
    train_set = UtteranceSet.load(train_list, featurizer, cfg.data, info.rank, info.world_size)
    cv_set = UtteranceSet.load(dev_list, featurizer, cfg.data, info.rank, info.world_size) if dev_list else None
    if len(train_set) == 0:
        raise InputError(
            f"{train_list}: every utterance was filtered out ({dict(train_set.dropped)}); check train.data limits"
        )
    return train_set, cv_set


class TrackedTraining:
    """The training recipe's :class:`~cosyml.train.callbacks.Callbacks` on rank 0's stage run: step metrics
    (``data/*`` counts as params, the rest as metric curves), per-epoch curves and probe scores, the probe
    history, per-epoch audio samples, and checkpoints as artifacts by ``train.log_checkpoints``."""

    def __init__(
        self, run: StageRun, part: str, cfg: TrainConfig, output: Path, sampler: Any = None, epoch_probe: Any = None
    ) -> None:
        self.run, self.part, self.cfg, self.output = run, part, cfg, output
        self.sampler = sampler  # EpochSampler, or None when neither samples nor the probe are on
        self.epoch_probe = epoch_probe  # EpochProbe, or None when the probe is off
        self.probed: dict[int, str] = {}  # epoch -> the combination the probe synthesised (not rendered again)

    @classmethod
    def start(cls, run: StageRun, part: str, params: Params, md: Any, output: Path, data_list: Path) -> TrackedTraining:
        """Load the run's sampler and probe when they are on, and log which sentence each sample and probe
        wav speaks."""
        cfg = params.train
        sampler = epoch_probe = None
        if cfg.sample_every_epochs > 0 or cfg.probe_every_epochs > 0:
            sampler, rows = _epoch_sampler(part, md, output, data_list, cfg.sample_max_tokens, cfg.probe_in_domain)
            if cfg.sample_every_epochs > 0:
                run.log_artifact(sampler.write_sentences(), "samples")  # which sentence each sample file speaks
            if cfg.probe_every_epochs > 0:
                epoch_probe = _epoch_probe(params, md, sampler, rows, output / "probe")
                if epoch_probe is not None:
                    run.log_artifact(epoch_probe.write_lines(), "probe")  # which text each probe wav speaks
        return cls(run, part, cfg, output, sampler, epoch_probe)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        # the data summary (data/* counts, logged once) as params: the run page opens with the loss curves
        # instead of one-point bar charts
        counts = {k: int(v) if float(v).is_integer() else v for k, v in metrics.items() if k.startswith("data/")}
        if counts:
            self.run.log_params(counts)
        curves = {k: v for k, v in metrics.items() if not k.startswith("data/")}
        if curves:
            self.run.log_metrics(curves, step=step)

    def probe(self, epoch: int, model: torch.nn.Module) -> dict[str, float] | None:
        if self.epoch_probe is None:
            return None
        from cosyml.synth.weights import InMemoryWeights

        # the engine takes the weights from memory: no per-epoch weight file (up to 2 GB) to write and delete
        result = self.epoch_probe.run(InMemoryWeights.of(model, f"{self.part} after epoch {epoch}"), epoch)
        self.probed[epoch] = result.label
        for line, error in result.skipped:
            print(f"cosyml: probe line {line.utt} ({line.text[:40]!r}) skipped: {error}", file=sys.stderr)
        print(f"cosyml: {result.summary_line()}", file=sys.stderr)
        for wav in result.wavs:  # the probe's audio is that epoch's samples of its combination
            self.run.log_artifact(wav, f"samples/epoch_{epoch:03d}")
        self.run.log_metrics({"probe/seconds": result.seconds, "probe/skipped": float(len(result.skipped))}, step=epoch)
        return result.scores

    def epoch_ended(self, result: EpochResult) -> None:
        from cosyml.train.probe import HISTORY_FILE, write_history

        # curves only (counts such as step and cv_utts would open the run page with flat charts)
        curves = {
            "train_loss": result.train_loss,
            "cv_loss": result.cv_loss,
            "train_acc": result.train_acc,
            "cv_acc": result.cv_acc,
        }
        self.run.log_metrics({f"epoch/{k}": float(v) for k, v in curves.items() if v is not None}, step=result.epoch)
        if result.probe:  # probe/cer, probe/ss, probe/cer_zh ... by epoch, next to epoch/cv_loss
            counts = ("n", "skipped", "seconds")
            self.run.log_metrics(
                {f"probe/{k}": v for k, v in result.probe.items() if k not in counts}, step=result.epoch
            )
            entry = {**result.probe, "cv_loss": result.cv_loss, "train_loss": result.train_loss, "step": result.step}
            write_history(self.output / "probe" / HISTORY_FILE, result.epoch, entry)
        every = self.cfg.sample_every_epochs
        if self.sampler is not None and result.checkpoint and every > 0 and (result.epoch + 1) % every == 0:
            spoken = (self.probed[result.epoch],) if result.epoch in self.probed else ()
            for wav in self.sampler.render(result.checkpoint, result.epoch, spoken):
                self.run.log_artifact(wav, f"samples/epoch_{result.epoch:03d}")

    def checkpoint_written(self, record: CheckpointInfo, is_best: bool) -> None:
        # is_best is the recipe's one rule (early_stop_on, early_stop_min_delta, the best restored on resume).
        # Weights only (no optimizer state, 1/3 of the size): resume reads the run folder, not the store.
        if self.cfg.log_checkpoints == "all":
            self.run.log_weights(record.path, "checkpoints")
        elif self.cfg.log_checkpoints == "best" and is_best:  # one file, replaced when a better epoch comes
            about = {
                "checkpoint": record.name,
                "epoch": record.epoch,
                "step": record.step,
                "cv_loss": record.cv_loss,
                "probe": record.probe,
                "best_by": self.cfg.early_stop_on,
            }
            self.run.log_weights(record.path, "checkpoints", "best.pt", about)


def _epoch_sampler(
    part: str, model_dir: Any, output: Path, data_list: Path, max_tokens: int, probe_rows: int = 0
) -> tuple[Any, list[dict[str, Any]]]:
    """Per-epoch sft samples: the fixed sentences from the first shard rows; the other part's best
    available weights are ``<output>/../<other>/<other>.pt`` (where `cosyml train` averages them).
    Also returns the first ``max(2, probe_rows)`` rows (the probe's in-domain lines)."""
    from cosyml.data.shards import iter_shard_rows, read_data_list
    from cosyml.train.samples import EpochSampler, sample_set_from_rows

    columns = ["text", "spk", "spk_embedding", "utt_embedding"]
    rows = []
    for row in iter_shard_rows(read_data_list(data_list), columns=columns):
        rows.append(row)
        if len(rows) >= max(2, probe_rows):
            break
    other = "flow" if part == "llm" else "llm"
    sampler = EpochSampler(
        model_dir.root,
        part,
        sample_set_from_rows(rows),
        output / "samples",
        other_weights=output.parent / other / f"{other}.pt",
        max_tokens=max_tokens,
    )
    return sampler, rows


def _probe_curves(part: str, probe_dir: Path) -> Path | None:
    """``<probe_dir>/curves.svg`` from the probe history (None when no epoch was probed)."""
    from cosyml.evaluation.report import probe_curves_svg
    from cosyml.fileio import atomic_write_text
    from cosyml.train.probe import HISTORY_FILE, read_history

    history = read_history(probe_dir / HISTORY_FILE)
    if not history:
        return None
    return atomic_write_text(probe_dir / "curves.svg", probe_curves_svg(part, history))


def probe_rank(registry: Any) -> Any:
    """``(cer, ss) -> composite`` with the registry's function and weights (``registry``: a RegistryConfig)."""
    from cosyml.registry.policy import composite_of

    return functools.partial(composite_of, config=registry)


def _epoch_probe(params: Params, model_dir: Any, sampler: Any, rows: list[dict[str, Any]], out_dir: Path) -> Any:
    """The run's :class:`~cosyml.train.probe.EpochProbe`, or None (said once) when no Whisper checkpoint or
    no campplus.onnx is there to score with. Whisper and CAM++ run on the CPU (training keeps the GPU)."""
    from cosyml.train.probe import EpochProbe, probe_lines

    cfg = params.train
    whisper = params.evaluate.whisper_model or params.prepare.whisper_model
    campplus = Path(params.evaluate.campplus_model or Path(model_dir.root) / CAMPPLUS_NAME)
    missing = None
    if not whisper or not Path(whisper).is_file():
        missing = f"no Whisper checkpoint ({whisper or 'evaluate.whisper_model and prepare.whisper_model are empty'})"
    elif not campplus.is_file():
        missing = f"{campplus} not found (set evaluate.campplus_model)"
    if missing:
        print(f"cosyml: train.probe_every_epochs: the probe is off: {missing}", file=sys.stderr)
        return None
    lines = probe_lines([str(r["text"]) for r in rows], cfg.probe_in_domain, cfg.probe_texts, seed=cfg.seed)
    # evaluate.max_tokens, else room for twice the longest line's characters: an honest transcript fits,
    # a hallucinating Whisper (224 tokens a line) does not cost more than the line could hold
    whisper_cap = params.evaluate.max_tokens or min(224, 2 * max((len(x.text) for x in lines), default=0) + 8)

    def load_asr() -> Any:
        from cosyml.evaluation.asr import WhisperASR

        return WhisperASR.load(whisper, device="cpu", batch_size=params.evaluate.batch_size, max_tokens=whisper_cap)

    def load_embedder() -> Any:
        from cosyml.evaluation.speaker import campplus_embedder

        return campplus_embedder(campplus, device="cpu")

    return EpochProbe(
        sampler,
        lines,
        load_asr,
        load_embedder,
        params.evaluate,
        probe_rank(params.registry),
        out_dir,
        max_tokens=cfg.probe_max_tokens,
    )
