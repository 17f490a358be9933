"""server.downsample against a naive per-bucket reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from server.downsample import downsample


def reference_buckets(steps: list[int], max_points: int) -> dict[int, list[int]]:
    """Indices of the points in each of max_points // 3 equal step ranges."""
    buckets = max(1, max_points // 3)
    first, span = steps[0], steps[-1] - steps[0] + 1
    grouped: dict[int, list[int]] = {}
    for index, step in enumerate(steps):
        grouped.setdefault(math.floor((step - first) * buckets / span), []).append(
            index
        )
    return grouped


def series(seed: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Random increasing steps with gaps, random values with some NaN."""
    rng = np.random.default_rng(seed)
    steps = np.cumsum(rng.integers(1, 5, size=length))
    values = rng.normal(size=length)
    values[rng.random(length) < 0.05] = np.nan
    return steps, values


def test_short_series_is_returned_whole():
    """A series no longer than max_points comes back unchanged."""
    steps, values = np.arange(10), np.linspace(0.0, 1.0, 10)
    kept_steps, kept_values = downsample(steps, values, 10)
    assert np.array_equal(kept_steps, steps)
    assert np.array_equal(kept_values, values)


@pytest.mark.parametrize(("seed", "max_points"), [(0, 3), (1, 30), (2, 99), (3, 500)])
def test_each_bucket_keeps_its_min_max_and_last(seed: int, max_points: int):
    """Every bucket's smallest, largest and last point survive; nothing else."""
    steps, values = series(seed, 2000)
    kept_steps, kept_values = downsample(steps, values, max_points)
    kept = set(kept_steps.tolist())
    expected = set()
    for indices in reference_buckets(steps.tolist(), max_points).values():
        expected.add(int(steps[indices[-1]]))
        finite = [i for i in indices if not np.isnan(values[i])]
        if finite:
            expected.add(int(steps[min(finite, key=lambda i: values[i])]))
            expected.add(int(steps[max(finite, key=lambda i: values[i])]))
    assert kept == expected
    assert len(kept_steps) <= max_points
    assert np.all(np.diff(kept_steps) > 0)
    lookup = dict(zip(steps.tolist(), values.tolist(), strict=True))
    assert np.array_equal(
        kept_values, [lookup[s] for s in kept_steps.tolist()], equal_nan=True
    )


def test_nan_never_wins_but_a_nan_last_point_is_kept():
    """NaN is neither a minimum nor a maximum, yet the newest point always stays."""
    steps = np.arange(9)
    values = np.array([np.nan, 1.0, np.nan, 5.0, -2.0, np.nan, np.nan, 0.5, np.nan])
    kept_steps, kept_values = downsample(steps, values, 3)  # one bucket
    assert kept_steps.tolist() == [3, 4, 8]
    assert np.array_equal(kept_values, [5.0, -2.0, np.nan], equal_nan=True)


def test_all_nan_bucket_keeps_only_its_last_point():
    """A bucket of NaN alone contributes its last point."""
    steps = np.arange(6)
    values = np.full(6, np.nan)
    kept_steps, _ = downsample(steps, values, 3)
    assert kept_steps.tolist() == [5]
