"""The per-epoch probe: the epoch's weights synthesise a small fixed set of lines, scored with the
evaluation suite's Whisper CER/WER and SS_campplus, so a run shows *when* the voice got worse.

The probe set is fixed for the whole run (:func:`probe_lines`): the first ``in_domain`` dev-split lines
plus out-of-domain zh and en lines (:data:`PROBE_OUT_OF_DOMAIN`, or the user's ``train.probe_texts``), each
with its own seed. Each probed epoch:

1. :class:`~cosyml.train.samples.EpochSampler` (its engine, loaded once per run) synthesises every line in
   sft mode with the combination :meth:`~cosyml.train.samples.EpochSampler.best_combination` picks (the
   other part's best available weights, as the epoch samples use) into ``<out_dir>/epoch_XXX/<utt>.wav``;
   a line that cannot be synthesised is reported and skipped (never scored as missing, never fatal);
2. :func:`cosyml.evaluation.score.score_subset` transcribes (forced language) and embeds them, exactly as
   ``cosyml evaluate`` scores its speaker-SFT set: CER for zh, WER for en (both called ``cer`` here, as in
   ``candidates.json``), SS = cosine to the speaker's mean campplus embedding;
3. the means (overall, per language, in-domain ``dev`` / out-of-domain ``ood``) and ``rank(cer, ss)`` (the
   registry's composite: higher is better) become :class:`ProbeResult`.

Whisper and CAM++ are built on first use and kept (one load per run). Knows nothing of MLflow.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cosyml.evaluation.score import Transcriber, UtteranceScore, score_subset
from cosyml.evaluation.speaker import EmbedFn
from cosyml.evaluation.testset import ItemProblem, TestItem, TestSubset, guess_language
from cosyml.fileio import atomic_write_text
from cosyml.train.samples import EpochSampler

if TYPE_CHECKING:
    from cosyml.synth.weights import WeightSource

#: Out-of-domain lines (language, text): the same for every epoch and every run.
PROBE_OUT_OF_DOMAIN: tuple[tuple[str, str], ...] = (
    ("zh", "今天的风有点大，我们早点回去吧。"),
    ("zh", "请把窗户关上，外面开始下雨了。"),
    ("en", "The bridge is closed, so we will take the long way home."),
    ("en", "Please read the letter aloud before the lights go out."),
)

#: ``(cer, ss) -> composite``, higher is better (the command passes the registry's composite).
Rank = Callable[[float, float], float]


@dataclass(frozen=True)
class ProbeLine:
    """One probe sentence. ``utt`` names its wav; ``kind``: ``dev`` (in-domain) or ``ood``."""

    utt: str
    text: str
    language: str
    kind: str
    seed: int


def parse_probe_text(spec: str) -> tuple[str, str]:
    """``"zh:你好"`` -> ("zh", "你好"); without a ``xx:`` prefix the language is guessed from the script."""
    head, sep, rest = spec.partition(":")
    if sep and 2 <= len(head.strip()) <= 3 and head.strip().isalpha() and head.strip().islower():
        return head.strip(), rest.strip()
    return guess_language(spec), spec.strip()


def probe_lines(
    dev_texts: Sequence[str], in_domain: int, extra: Sequence[str] = (), seed: int = 1986
) -> list[ProbeLine]:
    """The run's probe set: the first ``in_domain`` of ``dev_texts`` (language guessed from the script),
    then ``extra`` (``"lang:text"``) or, when empty, :data:`PROBE_OUT_OF_DOMAIN`. Line ``i`` gets seed
    ``seed + i`` and utt ``p<i>_<kind>_<lang>``."""
    chosen: list[tuple[str, str, str]] = [(guess_language(t), t, "dev") for t in list(dev_texts)[:in_domain]]
    ood = [parse_probe_text(s) for s in extra] if extra else list(PROBE_OUT_OF_DOMAIN)
    chosen += [(lang, text, "ood") for lang, text in ood]
    return [
        ProbeLine(utt=f"p{i:02d}_{kind}_{lang}", text=text, language=lang, kind=kind, seed=seed + i)
        for i, (lang, text, kind) in enumerate(chosen)
    ]


@dataclass
class ProbeResult:
    """One probed epoch. ``scores`` (fractions / cosines, None when no line could be scored):
    ``cer``, ``ss``, ``cer_<lang>``, ``ss_<lang>``, ``cer_dev``/``cer_ood``, ``ss_dev``/``ss_ood``,
    ``composite``, ``n`` (lines scored), ``skipped`` (lines not synthesised), ``seconds``."""

    epoch: int
    label: str  # the combination synthesised: "<part>_only" or "both"
    scores: dict[str, float] | None
    skipped: list[tuple[ProbeLine, str]] = field(default_factory=list)
    wavs: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    synth_seconds: float = 0.0

    def metrics(self) -> dict[str, float]:
        """MLflow metrics: ``probe/<key>`` for every score, plus ``probe/seconds`` and ``probe/skipped``."""
        out = {f"probe/{k}": v for k, v in (self.scores or {}).items() if k not in ("n", "skipped", "seconds")}
        out["probe/seconds"] = self.seconds
        out["probe/skipped"] = float(len(self.skipped))
        return out

    def summary_line(self) -> str:
        """``probe epoch 3 (llm_only): CER 12.5% SS 0.712 composite 0.587 [zh 10.0%/0.70, en 15.0%/0.72]; 6 lines in 4.2 s``"""
        head = f"probe epoch {self.epoch} ({self.label}): "
        s = self.scores
        if s is None:
            body = "nothing scored"
        else:
            langs = sorted(k[4:] for k in s if k.startswith("cer_") and k not in ("cer_dev", "cer_ood"))
            per = ", ".join(
                f"{lang} {100 * s[f'cer_{lang}']:.1f}%/{s.get(f'ss_{lang}', math.nan):.2f}" for lang in langs
            )
            body = f"CER {100 * s['cer']:.1f}% SS {s['ss']:.3f} composite {s['composite']:.3f} [{per}]"
        lines = int(s["n"]) if s else 0
        tail = f"; {lines} lines in {self.seconds:.1f} s (synthesis {self.synth_seconds:.1f} s)"
        if self.skipped:
            tail += f"; skipped {len(self.skipped)}"
        return head + body + tail


def _mean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def aggregate(rows: Sequence[UtteranceScore], lines: Sequence[ProbeLine], rank: Rank) -> dict[str, float] | None:
    """Means over the scored rows: overall, per language and per kind, and ``rank(cer, ss)``."""
    if not rows:
        return None
    kind_of = {line.utt: line.kind for line in lines}
    groups: dict[str, list[UtteranceScore]] = {"": list(rows)}
    for r in rows:
        groups.setdefault(f"_{r.language}", []).append(r)
        groups.setdefault(f"_{kind_of.get(r.utt, 'ood')}", []).append(r)
    scores: dict[str, float] = {}
    for suffix, group in groups.items():
        cer = _mean([r.error for r in group])
        ss = _mean([r.ss for r in group if r.ss is not None])
        if cer is not None:
            scores[f"cer{suffix}"] = cer
        if ss is not None:
            scores[f"ss{suffix}"] = ss
    if "ss" not in scores:
        scores["ss"] = 0.0  # no SS model output: the composite still ranks by CER
    scores["composite"] = float(rank(scores["cer"], scores["ss"]))
    scores["n"] = float(len(rows))
    return scores


class EpochProbe:
    """Probes epochs with models loaded once: the sampler's engine, Whisper and CAM++ (built on first use).

    ``load_asr`` / ``load_embedder`` build a :class:`~cosyml.evaluation.score.Transcriber` and an
    :data:`~cosyml.evaluation.speaker.EmbedFn`; ``scoring`` is the ``evaluate`` section (an
    ``EvaluateConfig``: audio-check limits and flags, as :func:`score_subset` reads them).
    """

    def __init__(
        self,
        sampler: EpochSampler,
        lines: Sequence[ProbeLine],
        load_asr: Callable[[], Transcriber],
        load_embedder: Callable[[], EmbedFn],
        scoring: Any,
        rank: Rank,
        out_dir: str | Path,
        max_tokens: int = 100,
    ) -> None:
        self.sampler = sampler
        self.lines = list(lines)
        self._load_asr = load_asr
        self._load_embedder = load_embedder
        self._asr: Transcriber | None = None
        self._embed: EmbedFn | None = None
        self.scoring = scoring
        self.rank = rank
        self.out_dir = Path(out_dir)
        self.max_tokens = max_tokens
        self.lines_file = self.out_dir / "lines.txt"

    def write_lines(self) -> Path:
        """``utt<TAB>language<TAB>kind<TAB>seed<TAB>text`` per probe line (which text each wav speaks)."""
        rows = [f"{x.utt}\t{x.language}\t{x.kind}\t{x.seed}\t{x.text}" for x in self.lines]
        return atomic_write_text(self.lines_file, "\n".join(rows) + "\n")

    @property
    def models_loaded(self) -> bool:
        return self._asr is not None and self._embed is not None

    def run(self, weights: WeightSource, epoch: int) -> ProbeResult:
        """Synthesise and score the probe set with ``weights``: the trained part's weight file or, during
        training, its :class:`~cosyml.synth.weights.InMemoryWeights` (no file written per epoch)."""
        start = time.perf_counter()
        label, combo = self.sampler.best_combination(weights)
        folder = self.out_dir / f"epoch_{epoch:03d}"
        paths = [folder / f"{line.utt}.wav" for line in self.lines]
        errors = self.sampler.synthesize_lines(
            combo, [x.text for x in self.lines], paths, [x.seed for x in self.lines], self.max_tokens
        )
        synth_seconds = time.perf_counter() - start
        items, problems, skipped, wavs = [], [], [], []
        for line, path, error in zip(self.lines, paths, errors, strict=True):
            if error is None:
                items.append(TestItem(utt=line.utt, text=line.text, language=line.language))
                wavs.append(path)
            else:
                problems.append(ItemProblem(folder.name, line.utt, "synthesis_failed", error))
                skipped.append((line, error))
        rows: list[UtteranceScore] = []
        if items:
            if self._asr is None:
                self._asr = self._load_asr()
            if self._embed is None:
                self._embed = self._load_embedder()
            subset = TestSubset(folder.name, folder, None, items, problems)
            speaker = self.sampler.samples.embedding.detach().float().reshape(-1).numpy()
            rows = score_subset(subset, self.out_dir, self._asr, self._embed, self.scoring, speaker_embedding=speaker)
        scores = aggregate(rows, self.lines, self.rank)
        seconds = time.perf_counter() - start
        if scores is not None:
            scores["skipped"] = float(len(skipped))
            scores["seconds"] = seconds
        return ProbeResult(epoch, label, scores, skipped, wavs, seconds, synth_seconds)


# ------------------------------------------------------------------------------------------ history

HISTORY_FILE = "history.json"  # in the probe folder: the curves, kept when retention deletes checkpoints


def write_history(path: str | Path, epoch: int, entry: Mapping[str, float | None]) -> Path:
    """Record ``entry`` (probe scores, CV loss, ...; None values left out) for ``epoch`` in the JSON history at ``path``.

    Entries of later epochs are dropped (they belong to an earlier run that this one restarted), so the
    file always describes the run that wrote it last. Atomic: a killed run leaves the previous file.
    """
    path = Path(path)
    history = {int(e["epoch"]): e for e in read_history(path) if int(e["epoch"]) < epoch}
    history[epoch] = {"epoch": epoch, **{k: v for k, v in entry.items() if v is not None}}
    rows = [history[e] for e in sorted(history)]
    return atomic_write_text(path, json.dumps(rows, ensure_ascii=False, indent=1) + "\n")


def read_history(path: str | Path) -> list[dict[str, float]]:
    """The entries of a history file, oldest epoch first ([] when absent or unreadable)."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(rows, list):
        return []
    return [r for r in rows if isinstance(r, dict) and isinstance(r.get("epoch"), int)]
