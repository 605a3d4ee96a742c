"""The README's examples, run as written (only the ports change: the server here takes free ones)."""

import json
import os
import re
import subprocess
import sys

import pytest

from inferline.server.grpc_frontend import start_grpc
from inferline.server.rest import start_rest
from inferline.server.settings import ServerSettings
from server_fixtures import ServerThread, make_repository

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")


def blocks(language: str) -> list:
    with open(README, encoding="utf-8") as f:
        return re.findall(rf"```{language}\n(.*?)```", f.read(), flags=re.S)


def the_block(language: str, marker: str) -> str:
    found = [b for b in blocks(language) if marker in b]
    assert len(found) == 1, f"expected one {language} block with {marker!r} in the README"
    return found[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    settings = ServerSettings(http_port=0, grpc_port=0)
    with ServerThread(make_repository(tmp_path_factory.mktemp("readme")), [start_rest, start_grpc], settings) as srv:
        yield srv


def on_ports(text: str, server) -> str:
    http, grpc_port = server.ports
    return text.replace("127.0.0.1:8000", f"127.0.0.1:{http}").replace("127.0.0.1:8001", f"127.0.0.1:{grpc_port}")


def test_curl_example(server):
    command = on_ports(the_block("sh", "curl "), server).replace("\\\n", " ")
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60, check=True)
    outputs = {o["name"]: o for o in json.loads(out.stdout)["outputs"]}
    assert outputs["label"]["data"] == [2]  # the README says so


def test_tritonclient_example(server):
    pytest.importorskip("tritonclient.grpc")
    code = on_ports(the_block("python", "tritonclient.grpc"), server)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert re.fullmatch(r"\[\[\d\]\]\n", out.stdout), out.stdout


def test_service_example(tmp_path):
    code = the_block("python", "inferline.Service()")
    env = {**os.environ, "HOME": str(tmp_path)}  # the default repository, seeded fresh
    env.pop("INFERLINE_REPOSITORY", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                         env=env)
    assert re.fullmatch(r"\[\[\d\]\] digits-mlp:1 None\n", out.stdout), out.stdout


def test_python_api_example():
    code = the_block("python", "il.Engine()")
    subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
