"""The log-bucketed histogram: quantiles within its precision of the exact ones, exact merge."""

import json
import math

import numpy as np
import pytest

from inferline.loadgen import Histogram

QS = (0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0)


def exact(values, q):
    """The sample of rank ceil(q * n) (at least 1): what Histogram.quantile promises to be near.
    numpy's percentile(method="inverted_cdf"), with q * n rounded so that float error cannot move
    the rank (numpy's own q * 100 / 100 does at q = 0.999, n = 18000)."""
    rank = max(1, int(np.ceil(round(q * len(values), 6))))
    return float(np.sort(values)[rank - 1])


@pytest.mark.parametrize("precision", [0.01, 0.001])
def test_quantiles_within_precision_of_numpy(rng, precision):
    values = np.concatenate([rng.lognormal(7, 1.2, 20000), rng.uniform(1, 50, 500), [0.3, 1e7]])
    h = Histogram(precision)
    h.record_many(values.tolist())
    assert h.count == len(values) and h.max == values.max() and h.min == values.min()
    for q in QS:
        want = exact(values, q)
        got = h.quantile(q)
        if want <= 1.0:  # below 1 us all values share bucket 0 (clamped to the recorded min)
            assert got <= 1.0 + 1e-9
        else:
            assert abs(got - want) <= want * precision / 2 * 1.0001, (q, got, want)
    assert h.mean == pytest.approx(values.mean())


def test_merge_is_exact_across_processes(rng):
    parts = [rng.lognormal(6 + i, 0.5 + i / 4, 3000 + 1000 * i) for i in range(4)]
    merged = Histogram()
    for part in parts:  # each "process" keeps its own, sent as a JSON-safe dict
        h = Histogram()
        h.record_many(part.tolist())
        merged.merge(Histogram.from_dict(json.loads(json.dumps(h.to_dict()))))
    whole = Histogram()
    every = np.concatenate(parts)
    whole.record_many(every.tolist())
    assert merged.counts == whole.counts and merged.count == whole.count == len(every)
    assert merged.max == whole.max and merged.min == whole.min
    for q in QS:
        assert merged.quantile(q) == whole.quantile(q)
        want = exact(every, q)
        assert abs(merged.quantile(q) - want) <= want * merged.precision / 2 * 1.0001


def test_empty_and_mismatched():
    h = Histogram()
    assert h.quantile(0.5) is None and h.summary()["max_us"] is None and h.mean is None
    assert Histogram.from_dict(h.to_dict()).count == 0
    h.merge(Histogram())
    assert h.count == 0 and math.isinf(h.min)
    with pytest.raises(ValueError):
        Histogram(0.01).merge(Histogram(0.001))
    with pytest.raises(ValueError):
        Histogram(0)


def test_buckets_stay_few_however_many_samples(rng):
    h = Histogram()
    h.record_many(rng.uniform(100, 100_000, 200_000).tolist())
    # ln(1000) / ln(1.01) ~ 694 buckets cover three decades at 1%
    assert len(h.counts) <= 700
