"""What a version is built from, staged on local disk before anything is stored: each part's weights
(checked against the base model, rewritten as a plain fp32 official state dict, hashed by tensor content),
the speaker's embedding and the tuned sampling defaults. No MLflow calls.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from cosyml.errors import InputError
from cosyml.pyfunc import BASE, SAMPLING_KEYS


def tensors_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """A hash of a state dict's content (names, dtypes, shapes, bytes), whatever file format held it."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous().reshape(-1)  # 0-dim tensors cannot view as bytes
        digest.update(f"{key}\0{tensor.dtype}\0{tuple(state[key].shape)}\n".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


@dataclass(frozen=True)
class PartWeights:
    source: str  # "base" or the resolved source path
    sha256: str  # tensors_sha256, or "base"
    file: Path | None  # the plain fp32 copy to store in the version, or None for "base"


def stage_part(part: Literal["llm", "flow"], source: str, model_dir: str, out_dir: Path, where: str) -> PartWeights:
    """Read a candidate's part (official file, averaged file or checkpoint), check it fits the base, stage it."""
    from cosyml.models.modeldir import ModelDir, describe_mismatch, load_state_dict_file
    from cosyml.synth.weights import read_weights
    from cosyml.train.checkpoint import save_plain_state_dict

    if source == BASE:
        return PartWeights(BASE, BASE, None)
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / f"{part}.pt"
    if not path.is_file():
        raise InputError(f"{where}.{part}: {path} not found; the weights must exist where evaluation read them")
    state = read_weights(path, part)
    reference = load_state_dict_file(ModelDir(model_dir).weight_path(part), part=part)
    mismatch = describe_mismatch(reference, state)
    if mismatch:
        raise InputError(f"{where}.{part}: {path}: {mismatch}; pass weights trained from {model_dir}")
    target = out_dir / f"{part}.pt"
    save_plain_state_dict(state, target)
    return PartWeights(str(path.resolve()), tensors_sha256(state), target)


def speaker_table(speaker: str, speakers_file: str, model_dir: str) -> dict[str, dict[str, torch.Tensor]]:
    """``{speaker: {"embedding": (1, 192)}}`` from spk2embedding.pt / spk2info.pt, else the model dir's spk2info."""
    from cosyml.synth.frontend import load_speaker_file

    tried = []
    for candidate in (speakers_file, str(Path(model_dir) / "spk2info.pt")):
        if not candidate or not Path(candidate).is_file():
            tried.append(candidate)
            continue
        known = load_speaker_file(candidate)
        if speaker in known:
            return {speaker: {"embedding": known[speaker].embedding.reshape(1, -1).float().contiguous()}}
        tried.append(f"{candidate} (no '{speaker}')")
    raise InputError(
        f"speaker '{speaker}': no embedding in {', '.join(t for t in tried if t) or 'registry.speakers'}; "
        "set registry.speakers to the spk2embedding.pt that `cosyml extract` wrote"
    )


def read_sampling(path: str) -> dict[str, float]:
    """Tuned sampling defaults from a JSON/YAML file (keys: top_p, top_k, win_size, tau_r, *_token_text_ratio)."""
    if not path:
        return {}
    import yaml

    file = Path(path)
    if not file.is_file():
        raise InputError(f"registry.sampling: {file} not found; point it at the tuned sampling file or leave it empty")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        raise InputError(f"{file}: not valid JSON/YAML; fix the file") from None
    if isinstance(data, dict) and isinstance(data.get("sampling"), dict):
        data = data["sampling"]
    if not isinstance(data, dict):
        raise InputError(f"{file}: expected an object of sampling parameters")
    unknown = sorted(set(data) - set(SAMPLING_KEYS))
    if unknown:
        raise InputError(f"{file}: unknown sampling key(s) {', '.join(unknown)}; known: {', '.join(SAMPLING_KEYS)}")
    out: dict[str, float] = {}
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"{file}: '{key}' must be a number, got {value!r}")
        out[key] = value
    return out
