"""The math of `inferline stats` on two scrapes: counter increases (and resets), percentiles from
histogram bucket increases the way Prometheus's histogram_quantile computes them, the ratios."""

import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from inferline.report.rates import bucket_increase, increase, quantile, rows
from inferline.report.scrape import parse

BOUNDS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256)


class FakeServer:
    """Real prometheus-client metrics under the server's series names, exposed as text."""

    def __init__(self):
        self.registry = CollectorRegistry()
        mv = ("model", "version")
        self.latency = Histogram("inferline_request_duration_seconds", "", mv, buckets=BOUNDS, registry=self.registry)
        self.requests = Counter("inferline_requests", "", mv, registry=self.registry)
        self.errors = Counter("inferline_errors", "", mv + ("code",), registry=self.registry)
        self.batch = Histogram("inferline_batch_size", "", mv, buckets=(1, 2, 4, 8), registry=self.registry)
        self.slots = Counter("inferline_batch_slots", "", mv, registry=self.registry)
        self.routed = Counter("inferline_routed_requests", "", ("model",), registry=self.registry)
        self.fallbacks = Counter("inferline_fallbacks", "", ("model", "reason"), registry=self.registry)
        self.in_flight = Gauge("inferline_requests_in_flight", "", mv, registry=self.registry)
        self.queue_rows = Gauge("inferline_queue_rows", "", mv, registry=self.registry)

    def serve(self, model, version, latencies, errors=0, batches=(), max_batch=8, fallbacks=0):
        v = str(version)
        for s in latencies:
            self.latency.labels(model, v).observe(s)
        self.requests.labels(model, v).inc(len(latencies) + errors)
        self.errors.labels(model, v, "INTERNAL").inc(errors)
        for b in batches:
            self.batch.labels(model, v).observe(b)
        self.slots.labels(model, v).inc(len(batches) * max_batch)
        self.routed.labels(model).inc(len(latencies) + errors)
        self.fallbacks.labels(model, "error").inc(fallbacks)

    def scrape(self, at):
        return parse(generate_latest(self.registry).decode(), at)


def test_quantile_interpolates_like_histogram_quantile():
    buckets = [(0.1, 10.0), (0.2, 30.0), (0.4, 40.0), (math.inf, 40.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.1 + 0.1 * (20 - 10) / 20)   # rank 20 in (0.1, 0.2]
    assert quantile(0.25, buckets) == pytest.approx(0.1 * 10 / 10)               # first bucket starts at 0
    assert quantile(0.99, buckets) == pytest.approx(0.2 + 0.2 * (39.6 - 30) / 10)
    assert quantile(0.99, [(0.1, 1.0), (math.inf, 100.0)]) == 0.1                 # rank in +Inf: highest bound
    assert quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]) is None


def test_increase_counts_a_reset_from_zero():
    assert increase(10.0, 25.0) == 15.0
    assert increase(10.0, 4.0) == 4.0     # restarted, then counted 4
    assert increase(None, 4.0) is None


def test_percentiles_come_from_the_interval_not_the_whole_history():
    rng = np.random.default_rng(3)
    server = FakeServer()
    server.serve("m", 1, rng.uniform(0.100, 0.250, 500))       # slow history before the first scrape
    first = server.scrape(100.0)
    interval = rng.lognormal(np.log(0.005), 0.4, 2000)         # fast traffic between the scrapes
    server.serve("m", 1, interval)
    second = server.scrape(102.0)
    (row,) = rows(first, second)
    assert row.rate == pytest.approx(2000 / 2.0)
    # Within the bucket that holds the true percentile (bounds double: at most a factor 2 off).
    for got, q in ((row.p50, 50), (row.p99, 99)):
        true = np.percentile(interval, q)
        le = next(b for b in BOUNDS if b >= true)
        assert le / 2 <= got <= le, (q, got, true)
    # The increase of every bucket is exactly the interval's observations at or below it.
    for le, n in bucket_increase(first, second, "inferline_request_duration_seconds", model="m", version="1"):
        assert n == np.count_nonzero(interval <= le)
    assert rows(None, second)[0].p99 is None and rows(None, second)[0].rate is None


def test_error_fallback_and_fill_ratios_over_the_interval():
    server = FakeServer()
    server.serve("m", 1, [0.001] * 50, errors=50, batches=[8] * 10, fallbacks=50)   # history: bad
    server.serve("m", 2, [0.001] * 10)
    first = server.scrape(0.0)
    server.serve("m", 1, [0.001] * 98, errors=2, batches=[2, 2, 4, 8], fallbacks=1)
    server.in_flight.labels("m", "1").set(7)
    server.queue_rows.labels("m", "1").set(12)
    second = server.scrape(4.0)
    by_version = {r.version: r for r in rows(first, second)}
    one, two = by_version["1"], by_version["2"]
    assert one.rate == pytest.approx(100 / 4.0)
    assert one.error_ratio == pytest.approx(0.02)
    assert one.fallback_ratio == pytest.approx(1 / 100)
    assert one.batch_fill == pytest.approx(16 / 32)
    assert one.in_flight == 7
    assert one.queued_rows == 12
    assert two.rate == 0.0 and two.error_ratio is None and two.p50 is None and two.batch_fill is None


def test_a_reset_between_scrapes_counts_the_new_process_only():
    before = FakeServer()
    before.serve("m", 1, [0.2] * 1000)
    first = before.scrape(0.0)
    after = FakeServer()                                        # the server restarted
    after.serve("m", 1, [0.003] * 30)
    (row,) = rows(first, after.scrape(1.0))
    assert row.rate == pytest.approx(30.0)
    assert 0.002 < row.p99 <= 0.004


def test_canary_state_from_the_rollout_series():
    text = "\n".join([
        'inferline_requests_total{model="s",version="1"} 10',
        'inferline_requests_total{model="s",version="2"} 10',
        'inferline_canary_weight_percent{model="s",version="2"} 25',
        'inferline_canary_requests_total{arm="stable",model="s",version="1"} 8',
        'inferline_canary_requests_total{arm="canary",model="s",version="2"} 2',
        'inferline_canary_pairs_total{arm="canary",model="s",version="2"} 40',
        'inferline_canary_agreements_total{arm="canary",model="s",version="2"} 39',
        'inferline_canary_accuracy_delta{model="s",version="2"} -0.0125', ""])
    states = {r.version: r.canary for r in rows(None, parse(text, 0.0))}
    assert states == {"1": "stable", "2": "canary 25% agree 97.5% Δacc -0.013"}
