"""Is one system better than another on the same targets? Paired statistics over per-target metrics.

    result = paired_comparison(a, b)   # a, b: (U,) e.g. NDCG@10 of each user's target, same users
    print(result.describe("ndcg@10"))

With one target per user (``../shared/EVALUATION.md``) a metric is a mean over U users, and the users
are the sample: the standard error of one system's mean is std(a) / sqrt(U) (about 0.01 for
NDCG@10 on ML-100K's 943 users). Two systems scored on the same users are compared through the
per-user differences d = a − b, whose spread is usually much smaller than either's:

- the 95% interval of mean(d) is a percentile bootstrap over users (``resamples`` draws);
- the p-value is a paired sign-flip permutation test of mean(d) = 0 (two-sided): each user's
  difference keeps or flips its sign at random, ``resamples`` times;
- ``detectable``: the smallest true mean(d) the comparison finds (p < 1 − level) 80% of the time,
  ``(z_(1+level)/2 + z_0.8) · std(d) / sqrt(U)`` (normal theory; 2.8 s.e. at level 0.95): a gain
  much below it cannot be shown on these users, however many times the runs are repeated.

Both are seeded, so the same inputs give the same figures. Seeds of a model are best averaged per
user before comparing (``recfunnel.significance`` does): the test then speaks of the seed-averaged
systems, and the spread across seeds shows in each user's mean.
"""

from __future__ import annotations

import dataclasses
from statistics import NormalDist

import numpy as np

from recfunnel.utils.errors import RecfunnelError

POWER = 0.8  # the share of repeated comparisons that should find a true difference of ``detectable``


@dataclasses.dataclass(frozen=True)
class PairedResult:
    """``mean_a``, ``mean_b``: each system's mean; ``se_a``, ``se_b``: their standard errors over
    users; ``diff`` = mean_a − mean_b with the bootstrap interval [``low``, ``high``] at ``level``;
    ``p_value``: the permutation test's; ``users``: U; ``a_wins`` / ``b_wins``: users on which each
    scores higher; ``detectable``: the smallest true A − B found at p < 1 − level 80% of the time
    (module docstring)."""

    mean_a: float
    mean_b: float
    se_a: float
    se_b: float
    diff: float
    low: float
    high: float
    level: float
    p_value: float
    users: int
    a_wins: int
    b_wins: int
    detectable: float

    def describe(self, metric: str = "metric") -> str:
        """One line: the means, the difference, its interval and p-value, and who wins how often."""
        return (f"{metric}: A {self.mean_a:.4f} ± {self.se_a:.4f} (s.e.), B {self.mean_b:.4f} ± {self.se_b:.4f}; "
                f"A − B {self.diff:+.4f}, {self.level:.0%} interval [{self.low:+.4f}, {self.high:+.4f}], "
                f"p = {self.p_value:.3g} (paired, {self.users} users; A higher on {self.a_wins}, B on {self.b_wins}); "
                f"these users resolve a true difference of ±{self.detectable:.4f} 80% of the time")


def paired_comparison(a: np.ndarray, b: np.ndarray, resamples: int = 10_000, level: float = 0.95,
                      seed: int = 0, chunk: int = 1_000) -> PairedResult:
    """Compare per-target values ``a`` and ``b`` (U,) of two systems on the same U targets (module
    docstring). ``chunk``: resamples drawn at a time (memory: chunk × U indices)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise RecfunnelError(f"paired values must be two (U,) arrays over the same targets, got shapes {a.shape} and {b.shape}")
    if len(a) < 2:
        raise RecfunnelError(f"a paired comparison needs at least 2 targets, got {len(a)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise RecfunnelError("paired values must be finite (a NaN or inf metric per target)")
    if not 0 < level < 1 or resamples < 1:
        raise RecfunnelError(f"level must be in (0, 1) and resamples >= 1, got level={level}, resamples={resamples}")
    d = a - b
    n = len(d)
    rng = np.random.default_rng(seed)
    boot, flips = [], []
    for lo in range(0, resamples, chunk):
        size = min(chunk, resamples - lo)
        boot.append(d[rng.integers(0, n, size=(size, n))].mean(1))
        flips.append((d * rng.choice(np.array([-1.0, 1.0]), size=(size, n))).mean(1))
    boot_means, null_means = np.concatenate(boot), np.concatenate(flips)
    tail = (1 - level) / 2
    observed = d.mean()
    z = NormalDist().inv_cdf((1 + level) / 2) + NormalDist().inv_cdf(POWER)
    # the observed assignment is one of the permutations: (count + 1) / (resamples + 1), never 0
    p = (np.count_nonzero(np.abs(null_means) >= abs(observed) - 1e-15) + 1) / (resamples + 1)
    return PairedResult(
        mean_a=float(a.mean()), mean_b=float(b.mean()),
        se_a=float(a.std(ddof=1) / np.sqrt(n)), se_b=float(b.std(ddof=1) / np.sqrt(n)),
        diff=float(observed), low=float(np.quantile(boot_means, tail)), high=float(np.quantile(boot_means, 1 - tail)),
        level=level, p_value=float(p), users=n, a_wins=int((d > 0).sum()), b_wins=int((d < 0).sum()),
        detectable=float(z * d.std(ddof=1) / np.sqrt(n)))
