"""Batch buffers of the scoring pipeline (core/batch.py): decoder threads prepare each image straight into
its slot of a preallocated batch, and a full batch goes to the model as it lies (no stacking copy)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

PrepareInto = Callable[[np.ndarray, np.ndarray], object]  # (grey image, slot to fill)


def prepare_into_of(model) -> PrepareInto:
    """The model's in-place preprocessing (PneumoniaModel.prepare_into, or its prepare() copied into the
    slot). Decoder threads call it concurrently: the area averaging is plain numpy on one thread each (no
    BLAS threads to contend with LiteRT's), so no lock."""
    into = getattr(model, "prepare_into", None)

    def prepare_into(grey: np.ndarray, out: np.ndarray) -> None:
        if into is not None:
            into(grey, out)
        else:
            out[...] = model.prepare(grey)

    return prepare_into


class BatchRing:
    """Preallocated batch buffers, reused in turn: item n of a run fills slot n % batch_size of buffer
    (n // batch_size) % count. `count` covers the batch being inferred plus every batch the decoders may
    be filling meanwhile (see score_paths' prefetch), so no slot is overwritten while the model reads it."""

    def __init__(self, batch_size: int, input_size: int, prefetch: int) -> None:
        self.batch_size = batch_size
        count = 2 + (prefetch - 1) // batch_size
        self._buffers = [np.zeros((batch_size, input_size, input_size, 3), np.float32) for _ in range(count)]

    def slot(self, n: int) -> np.ndarray:
        return self._buffers[(n // self.batch_size) % len(self._buffers)][n % self.batch_size]

    def batch(self, first: int, count: int) -> np.ndarray:
        """The buffer view of items first .. first+count-1 (one batch: first is a multiple of batch_size)."""
        return self._buffers[(first // self.batch_size) % len(self._buffers)][:count]
