"""Traffic policy: which served version answers a request that names none.

Production takes what the canaries leave: with canaries at 10% and 5%, production gets 85%.
A request with a routing key is assigned by weighted rendezvous hashing: every arm draws a
score from a stable hash of (key, arm), scaled by the arm's weight, and the best score wins.
So the same key lands on the same arm while the weights stay the same, and raising a canary's
share moves keys only *to* that canary: its scores improve, no other canary's change, so
nobody on a canary ever moves anywhere else. (With several canaries, production's shrinking
share can also hand a few of its own users to the other canaries; no assignment can avoid
that for three or more arms.) A request without a key takes a random draw in proportion to
the weights.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

_SCALE = float(1 << 64)


@dataclass(frozen=True, slots=True)
class Arm(Generic[T]):
    """One way a request can go, with its share of traffic in percent."""

    target: T
    key: str  # stable identity for hashing: the version, never its position in the list
    weight: float


class TrafficSplit(Generic[T]):
    """A fixed set of arms; immutable, so a new split replaces the old one whole."""

    __slots__ = ("_arms", "_cumulative", "_only", "_total")

    def __init__(self, arms: Sequence[Arm[T]]) -> None:
        self._arms = tuple(arm for arm in arms if arm.weight > 0)
        self._total = sum(arm.weight for arm in self._arms)
        self._only = self._arms[0].target if len(self._arms) == 1 else None
        running = 0.0
        cumulative = []
        for arm in self._arms:
            running += arm.weight
            cumulative.append(running)
        self._cumulative = tuple(cumulative)

    @classmethod
    def primary_with_canaries(
        cls, primary: tuple[T, str] | None, canaries: Sequence[tuple[T, str, float]]
    ) -> TrafficSplit[T]:
        """Canaries at their shares (percent); the primary takes the rest of 100."""
        arms = [Arm(target, key, share) for target, key, share in canaries]
        if primary is not None:
            rest = max(0.0, 100.0 - sum(share for _, _, share in canaries))
            arms.append(Arm(primary[0], primary[1], rest))
        return cls(arms)

    @property
    def arms(self) -> tuple[Arm[T], ...]:
        return self._arms

    def __bool__(self) -> bool:
        return bool(self._arms)

    def choose(self, routing_key: str | None = None) -> T | None:
        """The arm for a request (None when there is nowhere to go)."""
        if self._only is not None:
            return self._only
        if not self._arms:
            return None
        if routing_key is None:
            draw = random.random() * self._total
            for arm, bound in zip(self._arms, self._cumulative, strict=True):
                if draw < bound:
                    return arm.target
            return self._arms[-1].target
        best: T | None = None
        best_score = math.inf
        for arm in self._arms:
            score = -math.log(_unit_hash(routing_key, arm.key)) / arm.weight
            if score < best_score:
                best, best_score = arm.target, score
        return best


def _unit_hash(routing_key: str, arm_key: str) -> float:
    """A stable, uniform number in (0, 1] for (routing key, arm)."""
    digest = hashlib.blake2b(
        routing_key.encode(), digest_size=8, key=arm_key.encode()[:64]
    ).digest()
    return (int.from_bytes(digest, "little") + 1) / _SCALE
