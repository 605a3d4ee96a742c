"""REST rollout admin (/v2/admin/models/{m}/canary|shadow) and label feedback
(/v2/models/{m}/feedback), against a server in this process with an admin token.

Each test rolls out its own model (version 1 live, version 2 staged), so tests share one server.
"""

import http.client
import json
import os
import re
import subprocess

import pytest

from inferline.models.service import open_registry, push
from inferline.server.rest import start_rest
from inferline.server.settings import ServerSettings
from server_fixtures import ServerThread, make_repository, steady_package, with_config

TOKEN = "rollout-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
README = os.path.join(os.path.dirname(__file__), "..", "..", "..", "README.md")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("rest-rollouts")
    settings = ServerSettings(http_port=0, grpc_port=0, admin_token=TOKEN)
    with ServerThread(make_repository(root), frontends=[start_rest], settings=settings) as srv:
        srv.url = f"127.0.0.1:{srv.ports[0]}"
        yield srv


def two_versions(server, tmp_path, name: str, slo=None) -> None:
    """Model `name`: version 1 live, version 2 staged (bigger batches: other bytes)."""
    registry = open_registry(server.repository)
    try:
        push(registry, steady_package(tmp_path / "v1", name=name), live=True)
        v2 = steady_package(tmp_path / "v2", name=name, max_batch=4)
        if slo:
            with_config(v2, slo=slo)
        push(registry, v2, live=False)
    finally:
        registry.close()


def call(server, method, path, doc=None, headers=None, raw=None):
    """(status, parsed JSON body) of one request."""
    host, port = server.url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        body = raw if raw is not None else (b"" if doc is None else json.dumps(doc).encode())
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return r.status, (json.loads(data) if data else None)
    finally:
        conn.close()


def json_documents(text: str) -> list:
    """The JSON documents of `text`, one after another (curl adds no newline after a body)."""
    decoder, out, at = json.JSONDecoder(), [], 0
    while text[at:].strip():
        doc, at = decoder.raw_decode(text, len(text) - len(text[at:].lstrip()))
        out.append(doc)
    return out


def admin(server, method, name, tail="", doc=None):
    return call(server, method, f"/v2/admin/models/{name}/{tail}", doc, AUTH)


def infer(server, name, request_id=None):
    doc = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    if request_id:
        doc["id"] = request_id
    return call(server, "POST", f"/v2/models/{name}/infer", doc)


def states(server, name):
    registry = open_registry(server.repository)
    try:
        return {r.version: r.state for r in registry.list(name)}
    finally:
        registry.close()


ADMIN_ROUTES = [("POST", "canary"), ("GET", "canary"), ("POST", "canary/promote"), ("POST", "canary/abort"),
                ("POST", "shadow"), ("DELETE", "shadow")]


@pytest.mark.parametrize("method, tail", ADMIN_ROUTES)
def test_admin_routes_need_the_token(server, method, tail):
    for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        status, body = call(server, method, f"/v2/admin/models/digits-mlp/{tail}", {"version": 1}, headers)
        assert status == 401 and "requires 'Authorization: Bearer <admin token>'" in body["error"], body
    assert states(server, "digits-mlp") == {1: "live"}


def test_start_status_promote(server, tmp_path):
    two_versions(server, tmp_path, "rest-a")
    status, r = admin(server, "POST", "rest-a", "canary",
                      {"version": 2, "steps": "50,100", "interval": 3600, "hold": True, "skip_gate": True})
    assert status == 200, r
    assert (r["name"], r["version"], r["base_version"], r["status"], r["weight"]) == ("rest-a", 2, 1, "canary", 50.0)
    assert r["steps"] == [50.0, 100.0] and r["interval_s"] == 3600.0 and r["hold"] and r["skip_gate"]
    assert r["gate"] == "skipped by request (--skip-gate)"
    # applied by this server at once (no poll waited for): keys now reach both versions
    versions = {call(server, "POST", "/v2/models/rest-a/infer",
                     {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
                      "parameters": {"routing_key": f"user-{i}"}})[1]["model_version"] for i in range(40)}
    assert versions == {"1", "2"}

    status, doc = admin(server, "GET", "rest-a", "canary")
    assert status == 200 and doc["model"] == "rest-a" and doc["rollout"]["id"] == r["id"]
    assert doc["window"]["canary"]["version"] == 2 and doc["window"]["stable"]["version"] == 1
    assert [e["action"] for e in doc["history"]] == ["start"]

    status, done = admin(server, "POST", "rest-a", "canary/promote")
    assert status == 200 and done["status"] == "promoted" and done["reason"] == "promoted by the operator"
    assert states(server, "rest-a") == {1: "retired", 2: "live"}
    assert infer(server, "rest-a")[1]["model_version"] == "2"  # the sync ran before the answer
    status, body = admin(server, "POST", "rest-a", "canary/promote")
    assert status == 400 and body["error"] == "model 'rest-a' has no canary running"


def test_start_then_abort_and_refusals(server, tmp_path):
    two_versions(server, tmp_path, "rest-b")
    for doc, message in [
        ({}, "canary request: 'version' is required"),
        ({"version": 2, "skipgate": True}, "canary request: unknown field(s) 'skipgate'"),
        ({"version": 2, "hold": "yes"}, "canary request 'hold': expected true or false, got 'yes'"),
        ({"version": 2, "gate_seconds": "1"}, "canary request 'gate_seconds': expected a number of seconds"),
        ({"version": 2, "steps": [10, 5]}, "steps: weights must increase strictly, got 10, 5"),
        ({"version": 2, "steps": "0,150"}, "steps: weight 0 is outside 0-100"),
        ({"version": 2, "steps": 5}, "canary request 'steps': expected a list of percentages or a string"),
        ({"version": 2, "steps": ["5", None]}, "steps: expected comma-separated percentages"),
        ({"version": 2, "interval": "soon"}, "interval: expected a duration like 60s"),
        ({"version": "two"}, "version"),
        ({"version": 1, "skip_gate": True}, "model 'rest-b' version 1 is already live"),
    ]:
        status, body = admin(server, "POST", "rest-b", "canary", doc)
        assert status == 400 and message in body["error"], (doc, body)
    status, body = call(server, "POST", "/v2/admin/models/rest-b/canary", headers=AUTH, raw=b"{not json")
    assert status == 400 and "canary request: malformed JSON" in body["error"]
    assert admin(server, "POST", "nope", "canary", {"version": 1, "skip_gate": True})[0] == 404

    assert admin(server, "POST", "rest-b", "canary", {"version": 2, "skip_gate": True})[0] == 200
    status, body = admin(server, "POST", "rest-b", "canary", {"version": 2, "skip_gate": True})
    assert status == 400 and "already has a canary" in body["error"]
    status, done = admin(server, "POST", "rest-b", "canary/abort")
    assert status == 200 and done["status"] == "aborted"
    assert states(server, "rest-b") == {1: "live", 2: "retired"}
    assert admin(server, "GET", "nope", "canary")[0] == 404


def test_start_with_the_gate(server, tmp_path):
    two_versions(server, tmp_path, "rest-c", slo={"p99_ms": 1000.0})
    status, r = admin(server, "POST", "rest-c", "canary", {"version": 2, "gate_seconds": 0.5})
    assert status == 200, r
    gate = r["gate"]
    assert gate["passed"] and gate["sent"] == 20 and gate["rate_rps"] == 40.0 and gate["seconds"] == 0.5
    assert gate["p99_ms"] <= 1000.0 and "floor" in gate["rate_basis"]
    assert admin(server, "POST", "rest-c", "canary/abort")[0] == 200


def test_shadow_start_and_stop(server, tmp_path):
    two_versions(server, tmp_path, "rest-d")
    status, body = admin(server, "POST", "rest-d", "shadow", {"version": 2, "share": 150})
    assert status == 400 and "share" in body["error"]
    assert admin(server, "POST", "rest-d", "shadow", {"version": 2, "shares": 5})[0] == 400
    status, s = admin(server, "POST", "rest-d", "shadow", {"version": 2, "share": 25})
    assert status == 200 and (s["name"], s["version"], s["share"]) == ("rest-d", 2, 25.0)
    assert admin(server, "GET", "rest-d", "canary")[1]["shadow"]["id"] == s["id"]
    status, stopped = admin(server, "DELETE", "rest-d", "shadow")
    assert status == 200 and stopped["id"] == s["id"]
    status, body = admin(server, "DELETE", "rest-d", "shadow")
    assert status == 400 and body["error"] == "model 'rest-d' has no running shadow to stop"


def test_feedback_counts_known_and_unknown_ids(server, tmp_path):
    two_versions(server, tmp_path, "rest-e")
    assert admin(server, "POST", "rest-e", "canary", {"version": 2, "skip_gate": True, "interval": 3600})[0] == 200
    assert infer(server, "rest-e", request_id="req-1")[0] == 200  # recorded: the model has a canary
    labels = [{"id": "req-1", "label": 3}, {"id": "never-seen", "label": "cat"}]
    status, body = call(server, "POST", "/v2/models/rest-e/feedback", {"labels": labels})  # no token needed
    assert (status, body) == (200, {"accepted": 2, "unknown": 1, "unknown_ids": ["never-seen"]})
    assert call(server, "POST", "/v2/models/rest-e/feedback", {"labels": []})[1] == \
        {"accepted": 0, "unknown": 0, "unknown_ids": []}
    assert admin(server, "POST", "rest-e", "canary/abort")[0] == 200


@pytest.mark.parametrize("raw, message", [
    (b"", "feedback request: 'labels' is required"),
    (b"[1]", "feedback request"),
    (b"{oops", "feedback request: malformed JSON"),
    (b'{"labels": {"id": "a"}}', "feedback request 'labels': expected a list"),
    (b'{"labels": [], "extra": 1}', "feedback request: unknown field(s) 'extra'"),
    (b'{"labels": [{"id": "", "label": 1}]}', "labels[0].id"),
    (b'{"labels": [{"id": "a", "label": 1.5}]}', "labels[0].label"),
    (b'{"labels": [{"id": "a"}]}', "labels[0].label"),
])
def test_malformed_feedback_is_a_400_naming_the_field(server, raw, message):
    status, body = call(server, "POST", "/v2/models/digits-mlp/feedback", raw=raw)
    assert status == 400 and message in body["error"], body


def test_feedback_for_an_unknown_model_is_a_404(server):
    status, body = call(server, "POST", "/v2/models/nope/feedback", {"labels": [{"id": "a", "label": 1}]})
    assert status == 404 and "'nope'" in body["error"]


def test_the_readme_rest_example_runs_as_written(server, tmp_path):
    """The README's REST block (only the port changes) on a repository where digits-mlp has a
    second version; the token comes from INFERLINE_ADMIN_TOKEN as the README says."""
    registry = open_registry(server.repository)
    try:
        v2 = os.path.join(str(tmp_path), "digits-mlp")
        import shutil
        from inferline.demo_models import demo_package_path
        shutil.copytree(demo_package_path("digits-mlp"), v2)
        with_config(v2, slo={"p99_ms": 1000.0})
        assert push(registry, v2, live=False).version == 2
    finally:
        registry.close()
    with open(README, encoding="utf-8") as f:
        block = next(b for b in re.findall(r"```bash\n(.*?)```", f.read(), flags=re.S) if "/v2/admin/" in b)
    command = block.replace("127.0.0.1:8000", server.url).replace("\\\n", " ")
    env = {**os.environ, "INFERLINE_ADMIN_TOKEN": TOKEN}
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60, check=True, env=env)
    started, status, feedback, promoted = json_documents(out.stdout)
    assert started["status"] == "canary" and started["gate"]["passed"], started
    assert status["rollout"]["id"] == started["id"] and feedback["accepted"] == 1
    assert promoted["status"] == "promoted" and states(server, "digits-mlp")[2] == "live"
