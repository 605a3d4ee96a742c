"""/metrics on the control listener: series read from the core at scrape time, their histograms
re-bucketed exactly on the core's bucket bounds, workers' series combined, and scrapes that keep
answering while versions load and unload. (A taken metrics port: test_control.py.)"""

import random
import threading
import urllib.request

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from inferline.server.control import start_control
from inferline.server.metrics import LATENCY_BOUNDS_US
from inferline.server.metrics_families import Family, combine, from_json, rebucket, to_json
from inferline.server.metrics_workers import render
from inferline.server.rest import start_rest
from inferline.server.settings import ServerSettings
from inferline.server.types import InferInput, InferRequest
from server_fixtures import ServerThread, make_repository


def core_bucket_index(value: int) -> int:
    """stats.h LatencyHistogram::BucketIndex (16 sub-buckets per power of two)."""
    if value < 16:
        return value
    k = value.bit_length() - 1
    return min((k - 4) * 16 + (value >> (k - 4)), 592)


def scrape(port: int) -> dict:
    """{sample name: {frozenset(labels): value}} of one GET /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    out: dict = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return out


def test_latency_bounds_fall_on_the_core_bucket_bounds():
    bounds = list(LATENCY_BOUNDS_US)
    assert bounds == sorted(bounds) and bounds[4] == 1024 and any(190_000 < b < 240_000 for b in bounds)
    dense = [b for b in bounds if 1000 <= b <= 330_000]
    assert len(dense) >= 30 and max(b / a for a, b in zip(dense, dense[1:])) <= 1.25
    for b in bounds:  # b starts a core bucket: b - 1 ends the previous one
        assert core_bucket_index(b) == core_bucket_index(b - 1) + 1, b


def test_rebucket_counts_every_core_bucket_below_each_bound():
    rng = random.Random(3)
    for _ in range(200):
        uppers = sorted(rng.sample(range(0, 20_000_000), rng.randint(0, 40)))
        buckets = [(u, rng.randint(1, 9)) for u in uppers]
        got = rebucket(buckets, LATENCY_BOUNDS_US)
        want = [sum(c for u, c in buckets if u + 1 <= b) for b in LATENCY_BOUNDS_US] + [sum(c for _, c in buckets)]
        assert got == want


def test_workers_combine_as_each_family_means():
    def worker(n):
        req = Family("inferline_requests", "counter", "h", ("model", "version"))
        req.add(("m", 1), 10 * n)
        hist = Family("inferline_request_duration_seconds", "histogram", "h", ("model",), bounds=(0.1, 1.0))
        hist.add_histogram(("m",), [n, 2 * n, 3 * n], 0.5 * n)
        rss = Family("process_resident_memory_bytes", "gauge", "h")
        rss.add((), 100 * n)
        weight = Family("inferline_canary_weight_percent", "gauge", "h", ("model",), combine="max")
        weight.add(("m",), 50.0)
        flight = Family("inferline_requests_in_flight", "gauge", "h", ("model",), combine="sum")
        flight.add(("m",), n)
        return from_json(to_json([req, hist, rss, weight, flight]))  # as it travels between workers

    merged = {f.name: f for f in combine([("0", worker(1)), ("1", worker(2))])}
    assert merged["inferline_requests"].series == {("m", "1"): 30}
    assert merged["inferline_request_duration_seconds"].series == {("m",): ([3, 6, 9], 1.5)}
    assert merged["process_resident_memory_bytes"].labels == ("worker",)
    assert merged["process_resident_memory_bytes"].series == {("0",): 100, ("1",): 200}
    assert merged["inferline_canary_weight_percent"].series == {("m",): 50.0}
    assert merged["inferline_requests_in_flight"].series == {("m",): 3}
    text = render(list(merged.values())).decode()
    assert 'inferline_request_duration_seconds_bucket{le="+Inf",model="m"} 9.0' in text
    assert 'inferline_requests_total{model="m",version="1"} 30.0' in text


def infer(srv, n: int, model: str = "digits-mlp") -> None:
    rng = np.random.default_rng(0)
    for _ in range(n):
        x = rng.random((1, 64), dtype=np.float32)
        srv.call(srv.dataplane.infer(InferRequest(model, inputs=[InferInput("pixels", "FP32", [1, 64], x)])))


def test_a_scrape_reads_the_core_counters_and_histograms(tmp_path):
    settings = ServerSettings(host="127.0.0.1", http_port=0, grpc_port=0, metrics_port=0)
    with ServerThread(make_repository(tmp_path), [start_rest, start_control], settings) as srv:
        infer(srv, 40)
        m = scrape(srv.ports[1])
        mv = frozenset({("model", "digits-mlp"), ("version", "1")})
        assert m["inferline_requests_total"][mv] == 40 and m["inferline_inferences_total"][mv] == 40
        assert m["inferline_request_duration_seconds_count"][mv] == 40
        buckets = sorted(((float(dict(k)["le"]), v) for k, v in m["inferline_request_duration_seconds_bucket"].items()
                          if k >= mv))
        assert buckets[-1] == (float("inf"), 40) and [v for _, v in buckets] == sorted(v for _, v in buckets)
        stats = srv.dataplane.models.engine.stats("digits-mlp", 1)
        assert m["inferline_request_duration_seconds_sum"][mv] == stats["end_to_end_us"]["sum"] / 1e6
        assert m["inferline_batch_size_sum"][mv] == 40 and m["inferline_batch_size_count"][mv] == stats["batches"]
        assert m["inferline_routed_requests_total"][frozenset({("model", "digits-mlp")})] == 40
        assert m["inferline_errors_total"][mv | {("code", "INTERNAL")}] == 0
        assert m["inferline_model_load_time_seconds"][mv] > 0
        assert m["process_resident_memory_bytes"][frozenset()] > 0 and "process_cpu_seconds_total" in m
        assert "inferline_gpu_utilization_ratio" not in m and "inferline_model_gpu_memory_bytes" not in m  # no GPU


def test_scrapes_answer_while_versions_load_and_unload(tmp_path):
    settings = ServerSettings(host="127.0.0.1", http_port=0, grpc_port=0, metrics_port=0)
    with ServerThread(make_repository(tmp_path), [start_rest, start_control], settings) as srv:
        stop, seen, failures = threading.Event(), [], []

        def scraper():
            while not stop.is_set():
                try:
                    seen.append(scrape(srv.ports[1]))
                except Exception as e:  # noqa: BLE001 -- any failure of a scrape is the finding
                    failures.append(repr(e))

        t = threading.Thread(target=scraper)
        t.start()
        try:
            for _ in range(4):
                srv.call(srv.dataplane.repository_unload("digits-mlp"))
                srv.call(srv.dataplane.repository_load("digits-mlp"))
                infer(srv, 5)
        finally:
            stop.set()
            t.join(60)
        assert failures == [] and len(seen) >= 4
        assert any(frozenset({("model", "digits-mlp"), ("version", "1")}) in s.get("inferline_requests_total", {})
                   for s in seen)
