"""Per-epoch audio samples: what the voice sounds like after each epoch, in sft mode.

For the part being trained (``llm`` or ``flow``) the epoch's checkpoint is rendered twice: alone (the
other part at its base weights) and combined with the other part's best available weights (its
averaged ``<part>.pt`` when a run of it exists). The sentence set is fixed for the whole run:
in-domain lines from the dev split and out-of-domain zh and en lines, so epochs compare like for like.
Knows nothing of MLflow: :meth:`EpochSampler.render` returns the wav paths it wrote.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cosyml.audio import write_wav
from cosyml.fileio import atomic_torch_save, atomic_write_text

if TYPE_CHECKING:
    from cosyml.synth.weights import WeightSource

#: Out-of-domain sentences (zh and en), the same for every epoch and every run.
OUT_OF_DOMAIN = ("今天的风有点大，我们早点回去吧。", "The bridge is closed, so we will take the long way home.")


def sentence_slug(text: str, limit: int = 24) -> str:
    """A short file-name-safe name for a sentence: its first words (letters, digits and CJK kept), lower
    case, joined by '-', at most ``limit`` characters; ``"The bridge is closed, ..."`` -> ``the-bridge-is-closed-so``."""
    words = re.findall(r"\w+", text.lower())
    slug = "-".join(words)[:limit].strip("-_")
    return slug or "sentence"


@dataclass(frozen=True)
class SampleSet:
    """The fixed sentences and the speaker of a training run."""

    texts: tuple[str, ...]
    speaker: str
    embedding: torch.Tensor  # (192,) float32, the speaker's mean campplus embedding


def sample_set_from_rows(rows: list[dict], in_domain: int = 1) -> SampleSet:
    """Sentences and speaker from shard rows (``text``, ``spk``, ``spk_embedding`` columns)."""
    if not rows:
        raise ValueError("no shard rows to take sample sentences from")
    texts = tuple(r["text"] for r in rows[:in_domain]) + OUT_OF_DOMAIN
    vector = rows[0].get("spk_embedding") or rows[0].get("utt_embedding")
    return SampleSet(texts, str(rows[0]["spk"]), torch.tensor(vector, dtype=torch.float32))


class EpochSampler:
    """Renders a checkpoint's sample sentences with a synthesis engine loaded once per run."""

    def __init__(
        self,
        model_dir: str | Path,
        part: str,
        samples: SampleSet,
        out_dir: str | Path,
        other_weights: str | Path | None = None,
        max_tokens: int = 250,
        seed: int = 0,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.part = part
        self.other = "flow" if part == "llm" else "llm"
        self.samples = samples
        self.out_dir = Path(out_dir)
        self.other_weights = other_weights
        self.max_tokens = max_tokens
        self.seed = seed
        self._engine: Any = None  # a SynthEngine once loaded
        self._speaker_file = self.out_dir / "speaker_embedding.pt"
        #: ``index<TAB>file-name slug<TAB>sentence`` per line: which sentence each sample file speaks.
        self.sentences_file = self.out_dir / "sentences.txt"

    def write_sentences(self) -> Path:
        """Write :attr:`sentences_file` and return it."""
        lines = [f"{i}\t{sentence_slug(t)}\t{t}" for i, t in enumerate(self.samples.texts)]
        return atomic_write_text(self.sentences_file, "\n".join(lines) + "\n")

    def _load(self) -> Any:  # a SynthEngine, imported lazily (heavy)
        if self._engine is None:
            from cosyml.synth.engine import SynthEngine

            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_torch_save({self.samples.speaker: self.samples.embedding}, self._speaker_file)
            self._engine = SynthEngine.load(self.model_dir, device="cpu")
        return self._engine

    def combinations(self, checkpoint: WeightSource) -> dict[str, dict[str, WeightSource]]:
        """``{label: {"llm": source, "flow": source}}`` to render for ``checkpoint`` (a weight file, or the
        trained part's :class:`~cosyml.synth.weights.InMemoryWeights`)."""
        trained = str(checkpoint) if isinstance(checkpoint, str | Path) else checkpoint
        combos: dict[str, dict[str, WeightSource]] = {f"{self.part}_only": {self.part: trained, self.other: "base"}}
        if self.other_weights is not None and Path(self.other_weights).is_file():
            combos["both"] = {self.part: trained, self.other: str(self.other_weights)}
        return combos

    def best_combination(self, checkpoint: WeightSource) -> tuple[str, dict[str, WeightSource]]:
        """The combination the probe scores: ``both`` (the other part's best available weights) when they
        exist, else ``<part>_only`` (the other part at its base weights)."""
        combos = self.combinations(checkpoint)
        label = "both" if "both" in combos else f"{self.part}_only"
        return label, combos[label]

    def synthesize_lines(
        self,
        weights: Mapping[str, WeightSource],
        texts: Sequence[str],
        paths: Sequence[Path],
        seeds: Sequence[int],
        max_tokens: int | None = None,
    ) -> list[str | None]:
        """Synthesise ``texts[i]`` (sft mode, seed ``seeds[i]``) with ``weights`` into ``paths[i]``.

        Returns one entry per line: None when written, else the one-line reason it could not be
        synthesised (the line is skipped; training never stops for it). The engine is back on its base
        weights afterwards.
        """
        from cosyml.synth.request import SynthRequest

        engine = self._load()
        errors: list[str | None] = []
        try:
            engine.swap(llm=weights["llm"], flow=weights["flow"])
            for text, path, seed in zip(texts, paths, seeds, strict=True):
                try:
                    request = SynthRequest(
                        text=text,
                        mode="sft",
                        speaker=self.samples.speaker,
                        speaker_file=self._speaker_file,
                        max_tokens=max_tokens or self.max_tokens,
                        seed=seed,
                    )
                    result = engine.synthesize(request)
                except Exception as exc:  # any failure of one line: reported, skipped, training goes on
                    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    errors.append(f"{type(exc).__name__}: {reason}"[:300])
                    continue
                write_wav(path, result.wav, result.sample_rate)
                errors.append(None)
        finally:
            engine.swap(llm="base", flow="base")
        return errors

    def render(self, checkpoint: str | Path, epoch: int, skip: Sequence[str] = ()) -> list[Path]:
        """Write ``<out_dir>/epoch_XXX/<label>_<i>_<slug>.wav`` for every combination and sentence ``i``
        (``slug``: :func:`sentence_slug` of the sentence, whose full text is in :attr:`sentences_file`).
        Combinations named in ``skip`` are not rendered (the probe already spoke with them this epoch).
        A sentence that cannot be synthesised is left out (one line on stderr)."""
        written: list[Path] = []
        texts = self.samples.texts
        seeds = [self.seed + i for i in range(len(texts))]
        for label, weights in self.combinations(checkpoint).items():
            if label in skip:
                continue
            paths = [
                self.out_dir / f"epoch_{epoch:03d}" / f"{label}_{i}_{sentence_slug(t)}.wav" for i, t in enumerate(texts)
            ]
            for path, error in zip(paths, self.synthesize_lines(weights, texts, paths, seeds), strict=True):
                if error is None:
                    written.append(path)
                else:
                    print(f"cosyml: sample {path.name} (epoch {epoch}) skipped: {error}", file=sys.stderr)
        return written
