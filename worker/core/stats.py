"""Is one hit rate really above another? A two-proportion z-test, for comparing model versions on
live or offline outcomes without deciding a promotion on noise."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ProportionComparison:
    """``b`` against ``a``: the difference of their rates, its 95 % confidence interval (Wald,
    unpooled), and the two-sided p-value of "the rates are equal" (pooled z-test)."""

    rate_a: float
    rate_b: float
    n_a: int
    n_b: int
    difference: float
    ci95_low: float
    ci95_high: float
    p_value: float

    @property
    def significant(self) -> bool:
        """The difference is unlikely to be noise at the 5 % level."""
        return self.p_value < 0.05

    def statement(self, name_a: str = "a", name_b: str = "b") -> str:
        """One line a person can act on."""
        if self.n_a == 0 or self.n_b == 0:
            return f"{name_b} vs {name_a}: no lines to compare yet"
        side = "above" if self.difference > 0 else "below"
        verdict = (
            f"{name_b} {side} {name_a} (p = {self.p_value:.3f})"
            if self.significant
            else f"no significant difference (p = {self.p_value:.2f}): not enough evidence yet"
        )
        return (
            f"{name_b} {self.rate_b:.3f} on {self.n_b:,} vs {name_a} {self.rate_a:.3f} on "
            f"{self.n_a:,}: difference {self.difference:+.3f} "
            f"(95 % CI {self.ci95_low:+.3f} .. {self.ci95_high:+.3f}); {verdict}"
        )


def compare_proportions(hits_a: int, n_a: int, hits_b: int, n_b: int) -> ProportionComparison:
    """Compare ``hits_b / n_b`` with ``hits_a / n_a``.

    An empty side gives rates of 0, an interval of (-1, 1) and a p-value of 1 (no evidence).
    """
    if not (0 <= hits_a <= n_a and 0 <= hits_b <= n_b):
        raise ValueError(f"hits must lie in 0..n: {hits_a}/{n_a}, {hits_b}/{n_b}")
    p_a = hits_a / n_a if n_a else 0.0
    p_b = hits_b / n_b if n_b else 0.0
    diff = p_b - p_a
    if n_a == 0 or n_b == 0:
        return ProportionComparison(p_a, p_b, n_a, n_b, diff, -1.0, 1.0, 1.0)
    se = math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    pooled = (hits_a + hits_b) / (n_a + n_b)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se_pooled == 0.0:  # both all hits or all misses: identical rates
        p_value = 1.0
    else:
        z = diff / se_pooled
        p_value = math.erfc(abs(z) / math.sqrt(2))
    return ProportionComparison(
        p_a, p_b, n_a, n_b, diff, max(-1.0, diff - 1.96 * se), min(1.0, diff + 1.96 * se), p_value
    )


def mcnemar_p_value(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar test for two rankers scored on the *same* events: ``only_a``
    events hit by ``a`` alone, ``only_b`` by ``b`` alone (events both or neither hit carry no
    evidence). Under "equally good" each discordant event is a fair coin."""
    if only_a < 0 or only_b < 0:
        raise ValueError(f"counts must not be negative: {only_a}, {only_b}")
    n = only_a + only_b
    if n == 0:
        return 1.0
    low = min(only_a, only_b)
    # P(X <= low) for X ~ Binomial(n, 1/2), doubled, in log space so that large n stays finite.
    log_half_n = -n * math.log(2)
    tail = sum(
        math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half_n)
        for i in range(low + 1)
    )
    return min(1.0, 2 * tail)
