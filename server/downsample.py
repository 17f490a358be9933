"""Thin a long series for a chart: per bucket keep its min, max and last point.

Storage keeps every point; only what is sent to a chart is thinned, so peaks
and the latest value always survive.
"""

from __future__ import annotations

import numpy as np


def downsample(
    steps: np.ndarray, values: np.ndarray, max_points: int
) -> tuple[np.ndarray, np.ndarray]:
    """At most `max_points` of (steps, values), steps sorted ascending.

    The step range is cut into max_points // 3 equal buckets; from each come
    the point with the smallest value, the one with the largest, and the last.
    NaN values (stored NULLs) never win min or max.
    """
    if len(steps) <= max_points:
        return steps, values
    buckets = max(1, max_points // 3)
    span = float(steps[-1] - steps[0]) + 1.0
    bucket = ((steps - steps[0]) * (buckets / span)).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    ends = np.r_[starts[1:], len(steps)]
    keep = []
    for start, end in zip(starts, ends, strict=True):
        chunk = values[start:end]
        keep.append(end - 1)
        if not np.all(np.isnan(chunk)):
            keep.extend((start + np.nanargmin(chunk), start + np.nanargmax(chunk)))
    index = np.unique(np.asarray(keep))
    return steps[index], values[index]
