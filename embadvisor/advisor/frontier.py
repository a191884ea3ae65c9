"""Memory-quality frontiers and their knee (pure arithmetic, shared by ``plot`` and ``pareto``).

A point is ``(bytes, metric)``: fewer bytes and a higher metric are better. The frontier is the
set of non-dominated points, sorted by bytes. The knee is the frontier point farthest above the
chord joining the frontier's end points in ``(log10 bytes, metric)`` space (the Kneedle idea):
the place where buying more memory stops paying for itself. The argmax does not depend on how the
two axes are scaled (the point-to-line distance of every point scales by the same factor), so no
normalisation is needed to choose it; the reported ``distance`` is measured after scaling both
axes to [0, 1] so it is comparable across runs. With fewer than three frontier points, or when no
interior point lies above the chord (returns do not diminish), there is no knee.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["knee", "pareto_frontier"]


def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points, by increasing bytes (and strictly increasing metric).

    Args:
        points: ``(bytes, metric)`` pairs; pairs with a non-finite coordinate are ignored.

    Returns:
        Indices into ``points``. Of equal points the first is kept.

    Example:
        >>> pareto_frontier([(10, 0.70), (20, 0.69), (30, 0.75), (5, 0.60)])
        [3, 0, 2]
    """
    order = sorted(
        (i for i, (b, v) in enumerate(points) if math.isfinite(b) and math.isfinite(v)),
        key=lambda i: (points[i][0], -points[i][1], i),
    )
    front: list[int] = []
    best = -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def knee(points: Sequence[tuple[float, float]]) -> tuple[int, float] | None:
    """The knee of a frontier: ``(index into points, normalised distance above the chord)`` or None.

    Args:
        points: frontier points ``(bytes > 0, metric)`` sorted by bytes (e.g. from :func:`pareto_frontier`).

    Example:
        >>> knee([(1e6, 0.70), (1e7, 0.78), (1e8, 0.79)])[0]
        1
    """
    if len(points) < 3:
        return None
    xs = [math.log10(max(b, 1e-12)) for b, _ in points]
    ys = [v for _, v in points]
    xr, yr = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    xs = [(x - min(xs)) / xr for x in xs]
    ys = [(y - min(ys)) / yr for y in ys]
    (x0, y0), (x1, y1) = (xs[0], ys[0]), (xs[-1], ys[-1])
    length = math.hypot(x1 - x0, y1 - y0)
    if length == 0:
        return None
    best: tuple[int, float] | None = None
    for i in range(1, len(points) - 1):
        # signed distance, positive above the chord (a higher metric than the straight line predicts)
        d = ((x1 - x0) * (ys[i] - y0) - (y1 - y0) * (xs[i] - x0)) / length
        if d > 0 and (best is None or d > best[1]):
            best = (i, d)
    return best
