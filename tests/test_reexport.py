"""trainer.reexport's rules for refitted refusal statistics (the re-export itself needs the full dataset)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from trainer.reexport import LIMIT_DRIFT, _refitted, _refusal_flips

CARD_REFUSAL: dict[str, Any] = {
    "limit": 1.8015, "refused_share": {"validation": 0.0089, "test half A (development)": 0.0032}}
SHARES = dict(CARD_REFUSAL["refused_share"])


def test_a_reproduced_limit_leaves_the_card_as_it_is() -> None:
    assert _refitted(CARD_REFUSAL, 1.8015 + 1e-5, SHARES) is CARD_REFUSAL


def test_a_limit_moved_by_rounding_is_recorded_with_its_provenance() -> None:
    refit = _refitted(CARD_REFUSAL, 1.8026, SHARES)
    assert refit["limit"] == 1.8026 and "1.8015 -> 1.8026" in refit["refit"]
    assert refit["refused_share"] == CARD_REFUSAL["refused_share"] and CARD_REFUSAL["limit"] == 1.8015


@pytest.mark.parametrize(("limit", "shares"), [
    (1.8026, {"validation": 0.0102, "test half A (development)": 0.0032}),  # refuses other images
    (1.8015 * (1 + 2 * LIMIT_DRIFT), SHARES),  # too far: another model or other data
])
def test_another_model_or_other_data_is_refused(limit: float, shares: dict[str, float]) -> None:
    with pytest.raises(RuntimeError, match="do not reproduce the card's limit"):
        _refitted(CARD_REFUSAL, limit, shares)


def test_refusal_flips_compare_each_graph_with_its_own_limit() -> None:
    before, after = np.array([1.0, 1.79, 1.81, 2.5]), np.array([1.0, 1.80, 1.80, 2.5])
    assert _refusal_flips(before, 1.8015, after, 1.8015) == 1  # 1.81 -> 1.80: no longer refused
    assert _refusal_flips(before, 1.8015, after, 1.7995) == 1  # 1.79 -> 1.80 above the new limit
    assert _refusal_flips(before, 1.8015, before, 1.8015) == 0
    assert _refusal_flips(before, None, after, None) == 0  # a model without refusal


def test_a_float16_card_keeps_the_keras_limit_apart_and_reexports_to_the_same_card() -> None:
    from trainer.reexport import _limit_on_graph

    val = np.linspace(0.5, 2.5, 785)  # 1% refused: the 7 highest
    dev = np.linspace(0.4, 1.9, 313)
    first = _limit_on_graph(CARD_REFUSAL, 1.8026, val, dev, 0.01)
    assert first["keras_limit"] == 1.8026 and np.mean(val > first["limit"]) <= 0.01
    assert first["refused_share"]["validation"] == pytest.approx(7 / 785)
    assert "1.8026" in first["limit_from"]
    # a second re-export fits the same Keras limit: the card is reproduced, not refitted against the graph's limit
    again = _refitted(first, 1.8026 + 1e-6, dict(first["refused_share"]))
    assert again is first
    assert _limit_on_graph(again, 1.8026, val, dev, 0.01) == first
