"""CAM++ speaker embeddings (``campplus.onnx``) through onnxruntime, batched without changing results.

Official interface: input 0 ``input`` float32 (B, T, 80) Kaldi fbank with per-utterance CMN
(:func:`cosyml.features.fbank.campplus_features`), output 0 ``output`` float32 (B, 192). Upstream
feeds one utterance at a time and stores the raw (not L2-normalised) vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path

import numpy as np

from cosyml.features.onnx_runtime import (
    batch_dim_is_dynamic,
    make_session,
    padding_is_exact,
    plan_batches,
)

EMBEDDING_DIM = 192


class SpeakerEncoder:
    """Wraps ``campplus.onnx``. ``embed`` maps a list of (T_i, 80) fbanks to (B, 192) float32."""

    def __init__(self, path: str | Path, device: str = "auto", num_threads: int = 0) -> None:
        self.path = Path(path)
        self.session = make_session(self.path, device, num_threads)
        self.input_name = self.session.get_inputs()[0].name
        self.num_bins = int(self.session.get_inputs()[0].shape[2])
        dynamic = batch_dim_is_dynamic(self.session)
        self.padding_exact = dynamic and padding_is_exact(
            self._run_padded, lambda n, rng: rng.standard_normal((n, self.num_bins)).astype(np.float32)
        )
        self.batches_enabled = dynamic

    def _run_padded(self, feats: Sequence[np.ndarray]) -> list[np.ndarray]:
        longest = max(f.shape[0] for f in feats)
        batch = np.zeros((len(feats), longest, self.num_bins), dtype=np.float32)
        for i, f in enumerate(feats):
            batch[i, : f.shape[0]] = f
        out = self.session.run(None, {self.input_name: batch})[0]
        return [out[i].reshape(-1) for i in range(len(feats))]

    def embed(self, feats: Sequence[np.ndarray], batch_size: int = 16, executor: Executor | None = None) -> np.ndarray:
        """(T_i, 80) float32 fbanks -> (B, 192) float32 raw embeddings, in input order.

        Inputs are batched when padding was proven exact for this model, else only equal lengths
        share a batch (the official CAM++ pools over all frames, so it falls in the second case).
        With ``executor``, batches run concurrently on its threads.
        """
        if not feats:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        size = batch_size if self.batches_enabled else 1
        plan = plan_batches([f.shape[0] for f in feats], size, self.padding_exact)
        runs = [executor.submit(self._run_padded, [feats[i] for i in g]) if executor else None for g in plan.groups]
        out: list[np.ndarray | None] = [None] * len(feats)
        for group, run in zip(plan.groups, runs, strict=True):
            vecs = run.result() if run is not None else self._run_padded([feats[i] for i in group])
            for i, vec in zip(group, vecs, strict=True):
                out[i] = vec
        return np.stack(out).astype(np.float32)  # type: ignore[arg-type]  # out (list of ndarray | None) is filled at every index: the groups partition the clips
