"""Full-jitter exponential backoff."""

from __future__ import annotations

import random

import pytest

from resume.net.backoff import Backoff


def test_ceiling_grows_exponentially_then_caps() -> None:
    """base * factor**n until the cap, and never overflows for huge n."""
    backoff = Backoff(base=0.5, factor=2.0, cap=10.0)
    assert [backoff.ceiling(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert backoff.ceiling(100_000) == 10.0


def test_full_jitter_spreads_over_the_whole_range() -> None:
    """Every delay lies in [0, ceiling], and they spread from near 0 to near the ceiling."""
    backoff = Backoff(base=1.0, cap=8.0)
    rng = random.Random(1)
    delays = [backoff.delay(3, rng) for _ in range(2000)]
    assert all(0.0 <= d <= 8.0 for d in delays)
    assert min(delays) < 0.5 and max(delays) > 7.5


def test_invalid_parameters_are_refused() -> None:
    """A shrinking factor or negative delays make no sense."""
    with pytest.raises(ValueError):
        Backoff(factor=0.5)
    with pytest.raises(ValueError):
        Backoff(base=-1)
