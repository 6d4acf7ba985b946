"""Exponential backoff with full jitter. Pure: the caller supplies the random source."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long to wait before reconnection attempt ``n`` (0-based).

    ``delay(n) = uniform(0, min(cap, base * factor**n))`` — "full jitter", on every attempt, so
    a thousand clients dropped by one server restart do not come back in lockstep.

    The attempt counter resets only after a connection stayed up ``min_uptime`` seconds: a
    server that accepts and then drops at once keeps the delays growing instead of causing a
    hot loop.
    """

    base: float = 0.5
    factor: float = 2.0
    cap: float = 30.0
    min_uptime: float = 5.0

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0 or self.factor < 1 or self.min_uptime < 0:
            raise ValueError(f"invalid backoff parameters: {self}")

    def ceiling(self, attempt: int) -> float:
        """The largest delay attempt ``attempt`` may wait."""
        # Cap the exponent first: factor**attempt overflows a float after ~1000 attempts.
        exponent = min(attempt, 64)
        return min(self.cap, self.base * self.factor**exponent)

    def delay(self, attempt: int, rng: random.Random) -> float:
        """A random delay in ``[0, ceiling(attempt)]``."""
        return rng.uniform(0.0, self.ceiling(attempt))


NO_DELAY = Backoff(base=0.0, cap=0.0, min_uptime=0.0)
"""For tests that want reconnects without waiting."""
