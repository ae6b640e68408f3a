"""The batch scoring pipeline's buffers: images prepared straight into batch slots are exactly the shared
preprocessing's output, and the ring never hands one slot to two images that can be in flight together."""

from __future__ import annotations

import numpy as np
import pytest

from pneumo_desktop.core.batch_buffers import BatchRing, prepare_into_of
from pneumo_desktop.core.preprocess import prepare_input, prepare_input_into
from tests.imaging_helpers import sample_grey


@pytest.mark.parametrize("size", [224, 96])
def test_prepare_input_into_is_bit_identical_to_prepare_input(size: int) -> None:
    grey = sample_grey()
    slot = np.full((size, size, 3), -1.0, np.float32)
    assert prepare_input_into(grey, size, slot) is slot
    assert np.array_equal(slot, prepare_input(grey, size))
    tiny = np.arange(50 * 40, dtype=np.uint8).reshape(50, 40)  # a side must grow: bilinear
    assert np.array_equal(prepare_input_into(tiny, size, slot), prepare_input(tiny, size))
    with pytest.raises(ValueError):
        prepare_input_into(grey, size, np.zeros((size, size, 3), np.float64))


def test_a_model_without_prepare_into_gets_its_prepare_copied() -> None:
    class OnlyPrepare:
        def prepare(self, grey: np.ndarray) -> np.ndarray:
            return prepare_input(grey, 32)

    grey = sample_grey()
    slot = np.zeros((32, 32, 3), np.float32)
    prepare_into_of(OnlyPrepare())(grey, slot)
    assert np.array_equal(slot, prepare_input(grey, 32))


@pytest.mark.parametrize(("batch_size", "prefetch"), [(8, 18), (4, 12), (1, 6), (16, 20)])
def test_ring_slots_of_items_in_flight_never_overlap(batch_size: int, prefetch: int) -> None:
    ring = BatchRing(batch_size, 8, prefetch)
    # score_paths: while batch k (items k*B .. k*B+B-1) is inferred, the decoders may hold every item up to
    # (k+1)*B + prefetch - 1; all of those need distinct slots
    for k in range(5):
        in_flight = range(k * batch_size, (k + 1) * batch_size + prefetch)
        addresses = {ring.slot(n).__array_interface__["data"][0] for n in in_flight}
        assert len(addresses) == len(in_flight)
    # a batch view is the slots of its items, in order
    view = ring.batch(2 * batch_size, batch_size)
    for j in range(batch_size):
        assert np.shares_memory(view[j], ring.slot(2 * batch_size + j))
