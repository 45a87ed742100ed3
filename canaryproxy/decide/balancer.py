"""Which backend inside a pool: nginx's smooth weighted round robin (pure).

Rules this module keeps:

- Each backend ``i`` has a fixed integer weight and a *current weight*, all
  starting at 0. On every pick, each eligible backend's current weight grows by
  its weight; the eligible backend with the largest current weight wins (the
  lowest index on a tie) and its current weight drops by the sum of the
  eligible weights. Over any run with a fixed eligible set, each backend is
  chosen exactly in proportion to its weight, interleaved rather than in
  bursts: weights ``[5, 1, 1]`` give ``a a b a c a a`` (nginx's
  ``ngx_http_upstream_get_peer``), ``[3, 1]`` give ``a a b a``.
- An ineligible backend (unhealthy, ejected, or already tried for this request)
  is skipped and its current weight is *frozen*: it neither earns credit while
  down -- so it does not come back with a burst of consecutive picks -- nor is
  it reset. The eligible backends keep running the same algorithm among
  themselves, so one backend going down changes the others' sequence only in
  that its share is spread over them. This is nginx's behaviour for ``down``
  and failed peers; Traefik's EDF balancer instead lets a down server consume
  its turn and then skips it, which the interleaving does not need.
- Weight 0 means "never chosen" (a drained backend kept in the list so indices
  stay aligned with the pool's configuration), as Traefik ignores
  non-positive weights. Negative weights are a programming error.

The balancer holds no clock and no randomness: the sequence is a pure function
of the weights and the eligibility answers, so tests assert exact counts.
``pick`` runs on every request, so it allocates nothing but ints.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["SmoothWeightedRoundRobin"]


class SmoothWeightedRoundRobin:
    """nginx's smooth weighted round robin over a fixed list of weights; deterministic."""

    __slots__ = ("_current", "_only", "_positive", "_weights")

    def __init__(self, weights: Sequence[int]) -> None:
        for i, weight in enumerate(weights):
            if weight < 0:
                raise ValueError(f"weight of backend {i} must be >= 0, got {weight}")
        self._weights: list[int] = list(weights)
        self._current: list[int] = [0] * len(self._weights)
        # Indices that can ever win, fixed at startup so pick() skips weight 0 for free.
        self._positive: tuple[int, ...] = tuple(i for i, w in enumerate(weights) if w > 0)
        # With one candidate there is nothing to balance: pick() only asks about it.
        self._only: int | None = self._positive[0] if len(self._positive) == 1 else None

    @property
    def weights(self) -> tuple[int, ...]:
        return tuple(self._weights)

    @property
    def current_weights(self) -> tuple[int, ...]:
        """The running current weights, for STATE and tests."""
        return tuple(self._current)

    def pick(self, is_eligible: Callable[[int], bool]) -> int | None:
        """Index of the chosen backend among eligible ones, None if none is eligible.

        ``is_eligible(i)`` is asked at most once per backend of positive weight,
        in index order.
        """
        only = self._only
        if only is not None:
            return only if is_eligible(only) else None
        weights = self._weights
        current = self._current
        total = 0
        best = -1
        best_current = 0
        for i in self._positive:
            if not is_eligible(i):
                continue
            weight = weights[i]
            value = current[i] + weight
            current[i] = value
            total += weight
            # Strictly greater: the lowest index wins a tie, as in nginx.
            if best < 0 or value > best_current:
                best = i
                best_current = value
        if best < 0:
            return None
        current[best] = best_current - total
        return best

    def __repr__(self) -> str:
        return f"SmoothWeightedRoundRobin(weights={self._weights}, current={self._current})"
