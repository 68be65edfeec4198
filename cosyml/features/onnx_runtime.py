"""onnxruntime sessions for the front-end models (CAM++ and the speech tokenizer), and batch planning.

Provider choice: ``device="auto"`` takes the CUDA provider when onnxruntime offers it, else the CPU
(one line on stderr says so when a GPU was asked for or torch sees one). ``"cpu"`` and ``"cuda"`` force it.

Batching must never change results. A model may or may not ignore padding (CAM++ pools statistics over
all frames and cannot; a tokenizer that masks by ``feats_length`` can), so :func:`plan_batches` pads only
when a probe proved padded and one-at-a-time runs agree; otherwise it batches only equal-length inputs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cosyml.errors import CosymlError, ModelDirError

_noted: set[str] = set()


def _note(message: str) -> None:
    if message not in _noted:
        _noted.add(message)
        print(f"cosyml: {message}", file=sys.stderr)


ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")


def installed_onnxruntime() -> list[str]:
    """The onnxruntime distributions pip installed here (``onnxruntime`` and/or ``onnxruntime-gpu``)."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ORT_DISTRIBUTIONS:
        try:
            version(name)
        except PackageNotFoundError:
            continue
        found.append(name)
    return found


def _import_onnxruntime():
    """``onnxruntime``, or one line saying how to install it; a note when both builds are installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise CosymlError(
            "onnxruntime is not installed; run `pip install -e .[cpu]` (or `.[gpu]` on a CUDA machine)"
        ) from None
    if len(installed_onnxruntime()) > 1:
        _note(
            "both onnxruntime and onnxruntime-gpu are installed and overwrite each other's files; keep one: "
            "`pip uninstall -y onnxruntime onnxruntime-gpu && pip install -e .[gpu]`"
        )
    return ort


def providers_for(device: str) -> list[str]:
    """onnxruntime providers for ``device`` in {"auto", "cpu", "cuda"}."""
    ort = _import_onnxruntime()

    available = ort.get_available_providers()
    has_cuda = "CUDAExecutionProvider" in available
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if has_cuda:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda" or _torch_sees_gpu():
        _note("onnxruntime has no CUDA provider here (install onnxruntime-gpu); running ONNX models on the CPU")
    return ["CPUExecutionProvider"]


def _torch_sees_gpu() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # a broken CUDA install must not stop a CPU run
        return False


def make_session(path: str | Path, device: str = "auto", num_threads: int = 0):
    """An ``onnxruntime.InferenceSession`` with full graph optimisation.

    ``num_threads`` sets intra-op threads (0 = all cores onnxruntime sees, or ``OMP_NUM_THREADS``).
    """
    ort = _import_onnxruntime()

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    threads = num_threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads > 0:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    # Idle intra-op threads sleep instead of spinning: feature threads and other jobs share the cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers_for(device))
    except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, NoSuchFile)
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise ModelDirError(f"{path}: not a loadable ONNX model ({reason}); copy the official file again") from None


def batch_dim_is_dynamic(session) -> bool:
    """True when input 0's first axis is symbolic (the model accepts batches larger than one)."""
    first = session.get_inputs()[0].shape[0]
    return not isinstance(first, int) or first != 1


@dataclass(frozen=True)
class BatchPlan:
    """Index groups to run together; ``padded`` tells whether groups mix lengths."""

    groups: list[list[int]]
    padded: bool


def plan_batches(lengths: Sequence[int], batch_size: int, padding_exact: bool) -> BatchPlan:
    """Group utterance indices into batches of at most ``batch_size``.

    Sorted by length so padding is small. When padding is not exact, only equal lengths share a batch.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batch_size = max(1, batch_size)
    groups: list[list[int]] = []
    for i in order:
        last = groups[-1] if groups else None
        fits = last is not None and len(last) < batch_size
        if last is not None and fits and not padding_exact:
            fits = lengths[last[0]] == lengths[i]
        if last is not None and fits:
            last.append(i)
        else:
            groups.append([i])
    return BatchPlan(groups, padding_exact)


def padding_is_exact(
    run: Callable[[Sequence[np.ndarray]], list[np.ndarray]],
    make_input: Callable[[int, np.random.Generator], np.ndarray],
    lengths: tuple[int, int] = (61, 97),
    atol: float = 1e-4,
) -> bool:
    """Probe a model: do a padded batch of two and two single runs give the same outputs?

    ``run`` maps a list of unpadded inputs to a list of per-input outputs (padding internally);
    ``make_input(length, rng)`` builds one random input.
    """
    rng = np.random.default_rng(0)
    inputs = [make_input(n, rng) for n in lengths]
    try:
        together = run(inputs)
    except Exception:  # a model with a fixed batch axis refuses batches: not exact
        return False
    for x, batched in zip(inputs, together, strict=True):
        alone = run([x])[0]
        if alone.shape != batched.shape:
            return False
        if alone.dtype.kind in "iu":
            if not np.array_equal(alone, batched):
                return False
        elif not np.allclose(alone, batched, atol=atol, rtol=1e-4):
            return False
    return True
