"""A real Prometheus (Debian's `prometheus`) scraping a real `inferline serve` under load.

The test generates a config from deploy/prometheus/prometheus.yml (scrape every 0.5 s, the shipped
rule files), starts Prometheus on loopback with a temporary data dir, sends a known number of
gRPC requests (and a canary's REST traffic), then asks Prometheus's HTTP API: the request counter
equals what was sent, p99 lies within what the client measured, and every recording rule and
every dashboard query of deploy/grafana/inferline.json returns series with plausible values. Also
with --workers 2, where one scrape must cover both workers; each with both gRPC frontends (the
native one's decode histograms and errors come from C++). promtool checks the shipped files.

Without the binary the tests skip, except under CI (env CI set), where that is a failure.
"""

import json
import math
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml

from inferline.models.service import open_registry, push
from helpers import external_tool
from server_fixtures import ServerProcess, free_port, make_repository, steady_package

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "..")
DEPLOY = os.path.join(ROOT, "deploy")
PROM_CONFIG = os.path.join(DEPLOY, "prometheus", "prometheus.yml")
DASHBOARD = os.path.join(DEPLOY, "grafana", "inferline.json")
NO_SERIES_EXPECTED = {"model_version:inferline_canary_accuracy_delta:max"}
"""Needs labelled requests (label feedback), which this test does not send: absent, checked as such."""
RATIOS = ("ratio", "availability", "fill")


def binary(name: str) -> str:
    return external_tool(name, "Debian: apt-get install prometheus")


def test_promtool_accepts_the_shipped_config_and_rules():
    promtool = binary("promtool")
    rules = [os.path.join(DEPLOY, "prometheus", "rules", f) for f in ("inferline-recording.yml", "inferline-alerts.yml")]
    for args in (["check", "rules", *rules], ["check", "config", PROM_CONFIG]):
        done = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
    recorded = set()
    for path in rules:
        with open(path) as f:
            recorded |= {r["record"] for g in yaml.safe_load(f)["groups"] for r in g["rules"] if "record" in r}
    for expr in dashboard_queries():  # the dashboard reads the recording rules, nothing raw
        assert expr.split("{")[0] in recorded, expr


def dashboard_queries() -> list:
    with open(DASHBOARD) as f:
        return [t["expr"] for p in json.load(f)["panels"] for t in p["targets"]]


class Prometheus:
    def __init__(self, tmp_path, target_port: int):
        with open(PROM_CONFIG) as f:
            config = yaml.safe_load(f)
        config["global"] = {"scrape_interval": "500ms", "evaluation_interval": "500ms"}
        config["rule_files"] = [os.path.abspath(os.path.join(os.path.dirname(PROM_CONFIG), r)) for r in config["rule_files"]]
        config["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{target_port}"]}]
        path = tmp_path / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.port = free_port()
        prometheus = binary("prometheus")  # skips (outside CI) before anything is opened
        self.log = open(tmp_path / "prometheus.log", "w+")
        self.proc = subprocess.Popen(
            [prometheus, f"--config.file={path}", f"--storage.tsdb.path={tmp_path / 'data'}",
             "--storage.tsdb.retention.time=30d", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.wait(lambda: self.get("/-/ready") is not None, 60, "Prometheus ready")

    def get(self, path: str):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                return r.read()
        except (urllib.error.URLError, ConnectionError):
            return None

    def query(self, expr: str) -> list:
        body = self.get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        doc = json.loads(body)
        assert doc["status"] == "success", doc
        return [(r["metric"], float(r["value"][1])) for r in doc["data"]["result"]]

    def wait(self, cond, timeout: float, what: str):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                break
            if cond():
                return
            time.sleep(0.25)
        self.log.seek(0)
        raise AssertionError(f"timed out waiting for {what}; Prometheus log:\n{self.log.read()[-4000:]}")

    def close(self):
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def load(server, n: int, clients: int) -> list:
    """n ModelInfer calls to digits-mlp over `clients` channels (so --workers share them); latencies (s)."""
    channels = [grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}") for _ in range(clients)]
    rng = np.random.default_rng(7)
    latencies = []
    for i in range(n):
        x = grpcclient.InferInput("pixels", [1, 64], "FP32")
        x.set_data_from_numpy(rng.random((1, 64), dtype=np.float32))
        t0 = time.perf_counter()
        channels[i % clients].infer("digits-mlp", [x])
        latencies.append(time.perf_counter() - t0)
    for c in channels:
        c.close()
    return latencies


def rest(server, method: str, path: str, doc: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{server.http}{path}", data=json.dumps(doc).encode(), method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def unknown_model(server) -> None:
    """One REST inference request naming a model that is not loaded (404)."""
    with pytest.raises(urllib.error.HTTPError) as e:
        rest(server, "POST", "/v2/models/no-such-model/infer", {"inputs": []})
    e.value.close()
    assert e.value.code == 404


def canary_traffic(server, prom, n: int) -> None:
    """A canary of `steady` at 50% (version 2 over 1), then n keyed REST requests once Prometheus
    has seen its series at zero (a series first seen high would show no increase)."""
    started = rest(server, "POST", "/v2/admin/models/steady/canary",
                   {"version": 2, "steps": "50,100", "interval": 3600, "hold": True, "skip_gate": True})
    assert started["weight"] == 50.0
    time.sleep(1.0)  # every worker's registry poll (0.2 s) has seen it
    prom.wait(lambda: prom.query('inferline_canary_pairs_total{arm="canary"}'), 20, "the canary's series")
    for i in range(n):
        rest(server, "POST", "/v2/models/steady/infer",
             {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, i]}],
              "parameters": {"routing_key": f"user-{i}"}})


def plausible(name: str, value: float) -> bool:
    if "canary_weight" in name:
        return value == 50.0
    if any(k in name for k in RATIOS):
        return 0.0 <= value <= 1.0
    return value >= 0.0


def two_version_repository(tmp_path) -> str:
    """A repository with `steady` v1 live and v2 staged (a canary candidate)."""
    repo = make_repository(tmp_path)
    registry = open_registry(repo)
    try:
        push(registry, steady_package(tmp_path / "v1", name="steady"), live=True)
        push(registry, steady_package(tmp_path / "v2", name="steady", max_batch=4), live=False)
    finally:
        registry.close()
    return repo


@pytest.mark.parametrize("workers", [1, 2])
def test_real_prometheus_scrapes_a_loaded_server(tmp_path, workers, grpc_frontend):
    repo = two_version_repository(tmp_path)
    server = ServerProcess(repo, workers=workers, ports=(free_port(), free_port()), frontend=grpc_frontend)
    prom = None
    try:
        prom = Prometheus(tmp_path, server.control)
        # the first scrape before the load: a counter first seen high would show no increase
        prom.wait(lambda: prom.query('up{job="inferline"} == 1'), 30, "the first scrape")
        unknown_model(server)  # one error series, seen early: the error rules have a (zero) rate
        sent = 300
        latencies = load(server, sent, clients=4 * workers)
        canary_traffic(server, prom, 60)
        requests = 'sum(inferline_requests_total{model="digits-mlp"})'
        prom.wait(lambda: prom.query(requests) == [({}, float(sent))], 30, f"{requests} == {sent}")
        decoded = 'sum(inferline_decode_duration_seconds_count{model="digits-mlp"})'
        assert prom.query(decoded) == [({}, float(sent))]  # timed once per request, summed over workers
        errors = prom.query('sum by (protocol, code, model) (inferline_request_errors_total)')
        assert errors == [({"protocol": "rest", "code": "NOT_FOUND", "model": "_unknown"}, 1.0)], errors
        if workers > 1:
            assert prom.query('inferline_metrics_workers{state="answered"}')[0][1] == workers
            assert prom.query('inferline_metrics_workers{state="missing"}')[0][1] == 0
            assert len(prom.query("process_resident_memory_bytes")) == workers  # a gauge per worker
        p99 = 'model_version:inferline_request_duration_seconds:p99_rate5m{model="digits-mlp"}'
        prom.wait(lambda: prom.query(p99), 20, "the p99 recording rule")
        (_, server_p99), = prom.query(p99)
        # The core's time is part of the client's; a bucket is at most 25% wide.
        assert 0.0 < server_p99 <= max(latencies) * 1.25, (server_p99, np.percentile(latencies, [50, 99, 100]))
        rules = json.loads(prom.get("/api/v1/rules"))["data"]["groups"]
        recorded = [r["name"] for g in rules for r in g["rules"] if r["type"] == "recording"]
        assert len(recorded) >= 15
        def finite(rule):
            return any(math.isfinite(v) for _, v in prom.query(rule))
        prom.wait(lambda: all(finite(r) for r in recorded if r not in NO_SERIES_EXPECTED), 20, "every rule")
        for name in recorded:
            series = prom.query(name)
            if name in NO_SERIES_EXPECTED:
                assert series == [], (name, series)
                continue
            values = [v for _, v in series if math.isfinite(v)]
            assert values and all(plausible(name, v) for v in values), (name, series)
        assert prom.query('model_version:inferline_requests:rate5m{model="digits-mlp"}')[0][1] > 0
        assert prom.query('model_version:inferline_error_ratio:rate5m{model="digits-mlp"}')[0][1] == 0
        for expr in dashboard_queries():
            series = prom.query(expr.replace("$model", ".+"))
            if expr.split("{")[0] in NO_SERIES_EXPECTED:
                continue
            assert any(math.isfinite(v) for _, v in series), (expr, series)
        alerts = json.loads(prom.get("/api/v1/alerts"))["data"]["alerts"]
        assert [a for a in alerts if a["labels"].get("severity") == "page"] == []  # nothing near the SLOs here
    finally:
        if prom is not None:
            prom.close()
        assert server.stop() == 0
