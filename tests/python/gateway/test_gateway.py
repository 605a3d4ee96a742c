"""The gateway (`inferline serve --ray file:POOLS`) in front of real pinned replicas (`inferline serve --pin`).

Every process is a real server on loopback; the pools come from a JSON file that the tests rewrite,
the way the Ray directory changes as replicas come and go (tests/python/ray covers Ray itself)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families

from inferline.demo_models import demo_package_path
from inferline.models.service import open_registry, push

from server_fixtures import ServerProcess, free_port, serve_once, with_config

ROWS = np.load(os.path.join(demo_package_path("digits-mlp"), "golden.npz"))["inputs/pixels"]  # 16 rows


def metrics(port: int) -> dict:
    """{(sample name, sorted label items): value} of one scrape."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


class Replica:
    """`inferline serve --pin NAME:VERSION` on ports it picks itself (--ready-file tells them)."""

    def __init__(self, repo, pin: str):
        self.dir = tempfile.mkdtemp(prefix="replica-")
        ready = os.path.join(self.dir, "ready.json")
        cmd = [sys.executable, "-m", "inferline", "serve", "--repository", str(repo), "--pin", pin,
               "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0", "--ready-file", ready,
               "--drain-seconds", "0", "--inference-log", "off"]
        with open(os.path.join(self.dir, "log"), "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.time() + 60
        while not os.path.exists(ready):
            assert self.proc.poll() is None, open(os.path.join(self.dir, "log")).read()
            assert time.time() < deadline, "replica did not start"
            time.sleep(0.05)
        with open(ready) as f:
            ports = json.load(f)
        self.endpoint = f"127.0.0.1:{ports['grpc_port']}"
        self.metrics_port = ports["metrics_port"]

    def requests(self, model: str, version: int) -> float:
        """Requests this replica answered for model:version (its own metrics)."""
        key = ("inferline_request_duration_seconds_count", (("model", model), ("version", str(version))))
        return metrics(self.metrics_port).get(key, 0.0)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def write_pools(path, pools: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({k: [r.endpoint for r in v] for k, v in pools.items()}, f)
    os.replace(tmp, path)


def infer(port: int, model: str, rows: np.ndarray, key=None):
    """(logits, response parameters) of one request."""
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        x = grpcclient.InferInput("pixels", list(rows.shape), "FP32")
        x.set_data_from_numpy(rows)
        result = client.infer(model, [x], parameters={"routing_key": key} if key is not None else None,
                              client_timeout=10)
        params = {k: v.string_param for k, v in result.get_response().parameters.items()}
        return result.as_numpy("logits"), params
    finally:
        client.close()


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / "repo"
    registry = open_registry(str(path))
    push(registry, demo_package_path("digits-logreg"))
    push(registry, demo_package_path("digits-mlp"))  # falls back to digits-logreg
    registry.close()
    return path


@pytest.fixture
def cluster(repo, tmp_path):
    """Starts replicas and a gateway on demand; stops them all at the end."""
    started = []

    class Cluster:
        pools_file = str(tmp_path / "pools.json")
        pools: dict = {}

        def replica(self, pin: str) -> Replica:
            r = Replica(repo, pin)
            started.append(r)
            return r

        def publish(self, pools: dict) -> None:
            self.pools = pools
            write_pools(self.pools_file, pools)

        def gateway(self, ports=None) -> ServerProcess:
            g = ServerProcess(repo, "--ray", f"file:{self.pools_file}", "--inference-log", "off", ports=ports)
            started.append(g)
            return g

    yield Cluster()
    for p in started:
        p.stop()


def test_answers_are_the_replicas_own_and_spread_over_the_pool(cluster):
    a, b = cluster.replica("digits-logreg:1"), cluster.replica("digits-logreg:1")
    cluster.publish({"digits-logreg:1": [a, b]})
    gateway = cluster.gateway()
    direct, _ = infer(int(a.endpoint.rsplit(":", 1)[1]), "digits-logreg", ROWS)
    for n in (1, 5, 16):
        via, params = infer(gateway.grpc, "digits-logreg", ROWS[:n])
        assert np.array_equal(via, direct[:n])  # bit-identical, whatever the batch
        assert "fallback_reason" not in params
    body = json.dumps({"inputs": [{"name": "pixels", "shape": [2, 64], "datatype": "FP32",
                                   "data": ROWS[:2].ravel().tolist()}]}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{gateway.http}/v2/models/digits-logreg/infer", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:  # REST through the gateway too
        outputs = {o["name"]: o for o in json.loads(r.read())["outputs"]}
    assert np.array_equal(np.array(outputs["logits"]["data"], np.float32).reshape(2, -1), direct[:2])
    for _ in range(40):
        infer(gateway.grpc, "digits-logreg", ROWS[:1])
    served = [a.requests("digits-logreg", 1), b.requests("digits-logreg", 1)]
    assert min(served) >= 5, served  # both replicas take a share


def test_a_replica_killed_under_load_loses_no_request(cluster):
    a, b = cluster.replica("digits-logreg:1"), cluster.replica("digits-logreg:1")
    cluster.publish({"digits-logreg:1": [a, b]})
    gateway = cluster.gateway()
    expected, _ = infer(gateway.grpc, "digits-logreg", ROWS)
    outcomes, stop = [], threading.Event()

    def load(i: int) -> None:
        while not stop.is_set():
            row = i % len(ROWS)
            try:
                got, _ = infer(gateway.grpc, "digits-logreg", ROWS[row:row + 1])
                outcomes.append(np.array_equal(got, expected[row:row + 1]))
            except Exception as e:  # counted, not raised: the assertion below names them
                outcomes.append(repr(e))

    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    before = len(outcomes)
    a.kill()  # the directory still lists it: the gateway finds out by forwarding to it
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join(30)
    failures = [o for o in outcomes if o is not True]
    assert before > 20 and len(outcomes) > before + 20, (before, len(outcomes))
    assert failures == [], failures[:5]
    seen = metrics(gateway.control)
    assert seen[("inferline_gateway_retries_total", (("pool", "digits-logreg:1"),))] >= 1
    assert seen[("inferline_gateway_forward_failures_total", (("pool", "digits-logreg:1"),))] == 0
    assert sum(seen[("inferline_gateway_replicas", (("pool", "digits-logreg:1"), ("state", s)))]
               for s in ("up", "down")) == 2  # the file still lists the dead one: set aside, retried later


def test_a_pool_without_replicas_falls_back_then_serves_once_one_reports(cluster):
    logreg = cluster.replica("digits-logreg:1")
    cluster.publish({"digits-logreg:1": [logreg]})
    gateway = cluster.gateway()
    stable, _ = infer(gateway.grpc, "digits-logreg", ROWS[:4])
    got, params = infer(gateway.grpc, "digits-mlp", ROWS[:4])  # no mlp pool: its fallback answers
    assert np.array_equal(got, stable) and params.get("fallback_reason") == "unavailable", params
    mlp = cluster.replica("digits-mlp:1")
    cluster.publish({"digits-logreg:1": [logreg], "digits-mlp:1": [mlp]})
    own, _ = infer(int(mlp.endpoint.rsplit(":", 1)[1]), "digits-mlp", ROWS[:4])
    deadline = time.time() + 20
    while time.time() < deadline:
        got, params = infer(gateway.grpc, "digits-mlp", ROWS[:4])
        if "fallback_reason" not in params:
            break
        time.sleep(0.2)
    assert np.array_equal(got, own) and not np.array_equal(own, stable)


def test_the_canary_split_follows_the_key_and_a_lost_canary_pool_answers_from_stable(cluster, repo, tmp_path):
    mlp = shutil.copytree(demo_package_path("digits-mlp"), tmp_path / "mlp")
    with_config(str(mlp), name="digits-logreg", fallback=None)
    registry = open_registry(str(repo))
    push(registry, str(mlp), name="digits-logreg", live=False)  # version 2: another model's weights
    registry.rollouts.begin("digits-logreg", 2, steps=[50], interval_s=3600, hold=True)
    registry.close()
    stable, canary = cluster.replica("digits-logreg:1"), cluster.replica("digits-logreg:2")
    cluster.publish({"digits-logreg:1": [stable], "digits-logreg:2": [canary]})
    gateway = cluster.gateway()
    v1, _ = infer(int(stable.endpoint.rsplit(":", 1)[1]), "digits-logreg", ROWS[:1])
    v2, _ = infer(int(canary.endpoint.rsplit(":", 1)[1]), "digits-logreg", ROWS[:1])
    assert not np.array_equal(v1, v2)
    deadline = time.time() + 20
    while time.time() < deadline:  # the gateway loads the canary's forwarder at its next poll
        arms = {k: infer(gateway.grpc, "digits-logreg", ROWS[:1], key=f"user-{k}")[0] for k in range(24)}
        on_canary = [k for k, got in arms.items() if np.array_equal(got, v2)]
        if on_canary:
            break
        time.sleep(0.2)
    assert 0 < len(on_canary) < 24, on_canary
    again = {k: infer(gateway.grpc, "digits-logreg", ROWS[:1], key=f"user-{k}")[0] for k in range(24)}
    assert [k for k, got in again.items() if np.array_equal(got, v2)] == on_canary  # sticky
    beside = cluster.gateway()  # a second gateway, as behind a TCP balancer: the same key, the same arm
    deadline = time.time() + 20
    while time.time() < deadline:
        other = {k: infer(beside.grpc, "digits-logreg", ROWS[:1], key=f"user-{k}")[0] for k in range(24)}
        if [k for k, got in other.items() if np.array_equal(got, v2)] == on_canary:
            break
        time.sleep(0.2)
    assert [k for k, got in other.items() if np.array_equal(got, v2)] == on_canary
    canary.kill()
    for k in on_canary:  # the canary's chain starts with stable: answered there, and marked
        got, params = infer(gateway.grpc, "digits-logreg", ROWS[:1], key=f"user-{k}")
        assert np.array_equal(got, v1) and params.get("fallback_reason"), params


def test_an_unreachable_ray_cluster_is_a_one_line_error(repo):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'inferline[ray]')")
    out = serve_once(repo, "--ray", f"127.0.0.1:{free_port()}", "--grpc-port", "0", "--http-port", "0")
    assert out.returncode != 0 and "cannot reach the Ray cluster" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_a_missing_or_malformed_pools_file_is_a_one_line_error(repo, tmp_path):
    bad = tmp_path / "pools.json"
    bad.write_text('["127.0.0.1:1"]')
    for source, says in ((tmp_path / "missing.json", "No such file"), (bad, 'expected {"name:version"')):
        out = serve_once(repo, "--ray", f"file:{source}", "--grpc-port", "0", "--http-port", "0")
        assert out.returncode != 0 and says in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_clients_of_a_killed_gateway_recover_when_it_is_back(cluster):
    replica = cluster.replica("digits-logreg:1")
    cluster.publish({"digits-logreg:1": [replica]})
    ports = (free_port(), free_port())
    gateway = cluster.gateway(ports=ports)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{ports[1]}")  # one channel, kept throughout
    x = grpcclient.InferInput("pixels", [1, 64], "FP32")
    x.set_data_from_numpy(ROWS[:1])
    expected = client.infer("digits-logreg", [x]).as_numpy("logits")
    gateway.proc.kill()
    gateway.proc.wait(10)
    with pytest.raises(Exception, match="UNAVAILABLE|unavailable|failed to connect|Connection refused"):
        client.infer("digits-logreg", [x], client_timeout=2)
    cluster.gateway(ports=ports)  # the same ports, as a restarted pod would have
    deadline, got = time.time() + 30, None
    while time.time() < deadline and got is None:
        try:
            got = client.infer("digits-logreg", [x], client_timeout=2).as_numpy("logits")
        except Exception:
            time.sleep(0.1)
    client.close()
    assert got is not None and np.array_equal(got, expected)


def test_a_pinned_server_serves_its_version_whatever_its_state_and_is_ready_only_with_it(repo, tmp_path):
    mlp = shutil.copytree(demo_package_path("digits-mlp"), tmp_path / "mlp")
    with_config(str(mlp), name="digits-logreg", fallback=None)
    registry = open_registry(str(repo))
    assert push(registry, str(mlp), name="digits-logreg", live=False).state == "staged"  # version 2
    registry.close()
    staged, missing = Replica(repo, "digits-logreg:2"), Replica(repo, "digits-logreg:9")
    try:
        own, params = infer(int(staged.endpoint.rsplit(":", 1)[1]), "digits-logreg", ROWS[:2])
        live = ServerProcess(repo, "--inference-log", "off")
        try:
            served, _ = infer(live.grpc, "digits-logreg", ROWS[:2])
        finally:
            live.stop()
        assert not np.array_equal(own, served) and "fallback_reason" not in params  # v2, not the live v1
        for replica, status in ((staged, 200), (missing, 503)):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{replica.metrics_port}/v2/health/ready",
                                            timeout=10) as r:
                    code = r.status
            except urllib.error.HTTPError as e:
                code = e.code
            assert code == status, (replica.endpoint, code)
    finally:
        staged.stop()
        missing.stop()


KSERVE_SDK = """
import asyncio, json, sys
import numpy as np
import kserve

rest, grpc_target, rows = sys.argv[1], sys.argv[2], np.array(json.loads(sys.argv[3]), np.float32)

async def run():
    out = {}
    rest_client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", retries=0, timeout=30))
    grpc_client = kserve.InferenceGRPCClient(grpc_target, channel_args=[("grpc.enable_retries", 0)], timeout=30)
    try:
        for name, call in (("rest", lambda r: rest_client.infer(rest, r, model_name="digits-mlp")),
                           ("grpc", lambda r: grpc_client.infer(r))):
            inp = kserve.InferInput("pixels", list(rows.shape), "FP32")
            inp.set_data_from_numpy(rows, binary_data=False)
            result = await call(kserve.InferRequest("digits-mlp", [inp], request_id="sdk"))
            out[name] = {o.name: o.as_numpy().tolist() for o in result.outputs}["logits"]
    finally:
        await rest_client.close()
        await grpc_client.close()
    print(json.dumps(out))

asyncio.run(run())
"""


def test_the_kserve_sdk_reaches_the_gateway_unchanged(cluster):
    """In its own interpreter: kserve's protos and tritonclient's both define `inference.*` messages."""
    if subprocess.run([sys.executable, "-c", "import kserve"], capture_output=True).returncode != 0:
        pytest.skip("the KServe SDK (pip install kserve) is not installed")
    logreg, mlp = cluster.replica("digits-logreg:1"), cluster.replica("digits-mlp:1")
    cluster.publish({"digits-logreg:1": [logreg], "digits-mlp:1": [mlp]})
    gateway = cluster.gateway()
    direct, _ = infer(int(mlp.endpoint.rsplit(":", 1)[1]), "digits-mlp", ROWS[:3])
    out = subprocess.run([sys.executable, "-c", KSERVE_SDK, f"http://127.0.0.1:{gateway.http}",
                          f"127.0.0.1:{gateway.grpc}", json.dumps(ROWS[:3].tolist())],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    for via in ("rest", "grpc"):
        assert np.array_equal(np.array(got[via], np.float32), direct), via
