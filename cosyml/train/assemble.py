"""Assemble a fine-tuned model directory from a base directory plus chosen llm/flow weights.

The result is an official-layout directory upstream's loader also accepts: chosen ``llm.pt`` /
``flow.pt`` are written as plain fp32 state dicts (checked strictly against the base modules), every
unchanged file is a relative symlink into the base directory (no copy of gigabytes of unchanged
weights), stale exports derived from old weights are never carried over, and ``spk2info.pt`` holds
the speaker's mean campplus embedding as upstream's frontend reads it:
``{speaker: {"embedding": float32 CPU tensor (1, 192)}}``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from cosyml.errors import InputError
from cosyml.fileio import atomic_torch_save
from cosyml.models.keys import SPK2INFO_NAME, WEIGHT_FILE, Part, is_stale_export
from cosyml.models.modeldir import ModelDir, describe_mismatch, load_state_dict_file
from cosyml.train.checkpoint import save_plain_state_dict


@dataclass(frozen=True)
class AssembleResult:
    model_dir: Path
    llm_source: str
    flow_source: str
    speakers: list[str]


def speaker_embedding(spk2embedding: str | Path, speaker: str) -> torch.Tensor:
    """The speaker's mean embedding from ``spk2embedding.pt`` as a (1, 192) float32 CPU tensor."""
    path = Path(spk2embedding)
    if not path.is_file():
        raise InputError(f"{path}: not found; run `cosyml extract` (it writes spk2embedding.pt per split)")
    table = torch.load(path, map_location="cpu", weights_only=True)
    if speaker not in table:
        known = ", ".join(sorted(table)) or "none"
        raise InputError(f"{path}: no speaker '{speaker}' (known: {known}); pass --speaker with one of them")
    return torch.as_tensor(table[speaker], dtype=torch.float32).reshape(1, -1).contiguous()


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink() if not dst.is_dir() or dst.is_symlink() else shutil.rmtree(dst)
    os.symlink(os.path.relpath(src.resolve(), dst.parent.resolve()), dst)


def assemble(
    base_dir: str | Path,
    out_dir: str | Path,
    speaker: str,
    spk2embedding: str | Path,
    llm: str | Path | None = None,
    flow: str | Path | None = None,
) -> AssembleResult:
    """Write ``out_dir``: base files linked, chosen ``llm``/``flow`` weights written, ``spk2info.pt`` added.

    ``llm`` / ``flow``: a weight file (official, averaged, or a training checkpoint with epoch/step
    entries) or ``None`` for the base weights.
    """
    base = ModelDir(base_dir)
    base.check()
    out = Path(out_dir)
    if out.resolve() == base.root.resolve():
        raise InputError(f"{out}: the output must differ from the base model directory")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.iterdir():  # a rerun starts from a clean directory
        stale.unlink() if stale.is_symlink() or stale.is_file() else shutil.rmtree(stale)

    chosen: dict[Part, str | Path | None] = {"llm": llm, "flow": flow}
    for entry in base.root.iterdir():
        # chosen weights and spk2info.pt are written below; exports of the old weights must not follow
        if entry.name in (WEIGHT_FILE["llm"], WEIGHT_FILE["flow"], SPK2INFO_NAME) or is_stale_export(entry.name):
            continue
        _link(entry, out / entry.name)
    for part, source in chosen.items():
        target = out / WEIGHT_FILE[part]
        if source is None:
            _link(base.weight_path(part), target)
            continue
        state = load_state_dict_file(source, part=part)  # official, averaged, or a training checkpoint
        reference = load_state_dict_file(base.weight_path(part), part=part)
        _check_same_layout(Path(source), state, reference)
        save_plain_state_dict(state, target)
    embedding = speaker_embedding(spk2embedding, speaker)
    atomic_torch_save({speaker: {"embedding": embedding}}, out / SPK2INFO_NAME)
    ModelDir(out).check()
    return AssembleResult(out, str(llm or "base"), str(flow or "base"), [speaker])


def _check_same_layout(source: Path, state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    if state.keys() != reference.keys() or any(state[k].shape != reference[k].shape for k in state):
        raise InputError(f"{source}: {describe_mismatch(reference, state)}; pass weights trained from this base model")
