"""One rule for every system's maximum: a rate sweep with a latency bound.

A system's maximum is the highest offered rate it *keeps up with*: every request sent at that
rate is answered, with p99 latency <= :data:`P99_BOUND_MS`. The sweep starts at a rate, multiplies
it by :data:`FACTOR` while the system keeps up (divides it while it does not, from a start that
was too high), then narrows the last kept-up rate and the first failed one down by
:data:`REFINE_STEPS` geometric bisections. The worker (pinned and unpinned), the Quix app and
MLServer are all measured by :func:`find_max` with the same bound, factor and refinement, each
step a fresh process fed at a fixed rate for the same number of seconds
(``worker-dev bench --sweep-step-s``).

A backlog (everything produced first, then drained) measures something else: how fast a
system catches up. A system that answers a backlog quickly can still be unable to keep a latency
bound at a steady rate (MLServer's Kafka mode turns every queued request into a task at once),
so the backlog figures are reported beside the swept maximum, never instead of it.

Pure: the measuring is the caller's ``measure(rate)``; unit-tested with fakes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

#: p99 latency (ms) a kept-up step may not exceed.
P99_BOUND_MS = 1000.0
#: Rate factor between consecutive steps before the first failure (or success).
FACTOR = 1.5
#: Geometric bisections between the last kept-up rate and the first failed one.
REFINE_STEPS = 2

#: ``measure(rate)`` -> a step's figures: ``events`` (sent), ``answered``, ``p99_ms``, and
#: anything else the caller wants kept (``achieved_per_s``, CPU, RSS...).
Measure = Callable[[float], dict[str, Any]]


def kept_up(step: dict[str, Any], *, p99_bound_ms: float = P99_BOUND_MS) -> bool:
    """Every request of the step answered and its p99 within the bound."""
    if step.get("error") is not None:
        return False
    events, answered, p99 = step.get("events"), step.get("answered"), step.get("p99_ms")
    if not events or answered is None or p99 is None:
        return False
    return answered >= events and p99 <= p99_bound_ms


def find_max(
    measure: Measure,
    start: float,
    *,
    factor: float = FACTOR,
    max_steps: int = 8,
    refine: int = REFINE_STEPS,
    p99_bound_ms: float = P99_BOUND_MS,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Sweep ``measure`` over rates from ``start``; see the module docstring.

    ``max_steps`` bounds the steps up (or down) before the refinement. A ``measure`` that raises
    counts as a step not kept up (its error kept in the step).

    Returns:
        ``{"rule", "steps": [...], "max_offered_per_s", "best"}``: every step's figures with
        ``offered_per_s`` and ``kept_up``, the highest kept-up offered rate (``None`` if none
        was) and that step.
    """
    if start <= 0 or factor <= 1:
        raise ValueError(f"start must be > 0 and factor > 1, got {start}, {factor}")
    steps: list[dict[str, Any]] = []

    def step(rate: float) -> bool:
        try:
            figures = dict(measure(rate))
        except Exception as exc:  # a failed step is a step not kept up; the sweep goes on
            figures = {"error": f"{type(exc).__name__}: {exc}"[:1000]}
        figures["offered_per_s"] = round(rate, 1)
        figures["kept_up"] = kept_up(figures, p99_bound_ms=p99_bound_ms)
        steps.append(figures)
        verdict = "kept up" if figures["kept_up"] else "did not keep up"
        error = f", {figures['error']}" if "error" in figures else ""
        say(
            f"sweep at {rate:,.0f}/s: {verdict} (answered {figures.get('answered')}/"
            f"{figures.get('events')}, p99 {figures.get('p99_ms')} ms{error})"
        )
        return bool(figures["kept_up"])

    good: float | None = None
    bad: float | None = None
    rate = float(start)
    if step(rate):
        good = rate
        for _ in range(max_steps - 1):
            rate *= factor
            if not step(rate):
                bad = rate
                break
            good = rate
    else:
        bad = rate
        for _ in range(max_steps - 1):
            rate /= factor
            if step(rate):
                good = rate
                break
            bad = rate
    if good is not None and bad is not None:
        for _ in range(refine):
            mid = math.sqrt(good * bad)
            if step(mid):
                good = mid
            else:
                bad = mid
    best = None
    if good is not None:
        best = next(s for s in steps if s["kept_up"] and s["offered_per_s"] == round(good, 1))
    return {
        "rule": {
            "p99_bound_ms": p99_bound_ms,
            "factor": factor,
            "refine_steps": refine,
            "start_per_s": round(float(start), 1),
        },
        "steps": steps,
        "max_offered_per_s": None if good is None else round(good, 1),
        "best": best,
    }
