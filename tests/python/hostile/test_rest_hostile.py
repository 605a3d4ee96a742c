"""REST hostile input (issue 19: findings 1, 2, 5 and 11): compressed bodies over the limit, JSON
data longer than its shape, shapes numpy cannot hold, floods of malformed requests. Each case is
answered with a clear error while normal REST and gRPC calls keep answering (harness.Watch).

The servers are real `inferline serve` processes on loopback: one with the default limit
(64 MiB), one with a 64 KiB limit for the fuzz.
"""

import concurrent.futures as cf
import http.client
import json
import socket
import time
import zlib

import pytest
from hypothesis import given, settings, strategies as st

from hostile.harness import ROW, HostileServer, Watch

LIMIT = 64 << 20  # settings.max_message_bytes, the default
SMALL_LIMIT = 64 << 10
INFER = "/v2/models/digits-mlp/infer"
ENCODINGS = ["gzip", "deflate"]
try:
    import brotli
    ENCODINGS.append("br")  # aiohttp inflates br when Brotli is installed
except ImportError:
    brotli = None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """JSON allowed up to the whole message limit, so that 64 MiB of JSON reaches the decoder."""
    srv = HostileServer(tmp_path_factory.mktemp("rest-hostile"), "--max-json-bytes", str(LIMIT))
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def default(tmp_path_factory):
    """The default limits: 8 MiB of JSON, 64 MiB in all."""
    srv = HostileServer(tmp_path_factory.mktemp("rest-default"))
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    srv = HostileServer(tmp_path_factory.mktemp("rest-small"), "--max-message-bytes", str(SMALL_LIMIT))
    yield srv
    assert srv.stop() == 0


def post(port, body, headers=None, path=INFER, timeout=60):
    """One POST on its own connection: (status, headers, body), or (exception name, {}, b"")."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def error_of(answer):
    status, headers, body = answer
    assert headers["Content-Type"].startswith("application/json"), answer
    return status, json.loads(body)["error"]


def compress(data: bytes, encoding: str, level: int = 9) -> bytes:
    if encoding == "br":
        return brotli.compress(data, quality=min(level, 11))
    c = zlib.compressobj(level, zlib.DEFLATED, 31 if encoding == "gzip" else 15)
    return c.compress(data) + c.flush()


_BOMBS = {}


def bomb(encoding: str, inflated: int = 2 << 30) -> bytes:
    """`inflated` bytes of '0' compressed (2 GiB: about 2 MB of gzip or deflate, 3 KB of brotli)."""
    if (encoding, inflated) not in _BOMBS:
        block = b"0" * (1 << 20)
        if encoding == "br":
            c = brotli.Compressor(quality=5)
            parts = [c.process(block) for _ in range(inflated >> 20)] + [c.finish()]
        else:
            c = zlib.compressobj(9, zlib.DEFLATED, 31 if encoding == "gzip" else 15)
            parts = [c.compress(block) for _ in range(inflated >> 20)] + [c.flush()]
        _BOMBS[encoding, inflated] = b"".join(parts)
    return _BOMBS[encoding, inflated]


def tensor_doc(shape, data=None, **parameters) -> dict:
    t = {"name": "pixels", "datatype": "FP32", "shape": shape}
    if data is not None:
        t["data"] = data
    if parameters:
        t["parameters"] = parameters
    return {"inputs": [t]}


def zeros_body(size: int = LIMIT - 1024) -> bytes:
    """An infer request of `size` bytes whose 'data' is a flat list of zeros, declared [1, 64]."""
    head, tail = b'{"inputs":[{"name":"pixels","shape":[1,64],"datatype":"FP32","data":[', b'0]}]}'
    return head + b"0," * ((size - len(head) - len(tail)) // 2) + tail


# ---- 1: compressed bodies over the limit ----------------------------------------------------

@pytest.mark.parametrize("encoding", ENCODINGS)
def test_compressed_body_over_the_limit_is_413_and_inflating_stops(server, encoding):
    body = bomb(encoding)
    with Watch(server) as watch:
        t0 = time.perf_counter()
        status, message = error_of(post(server.http, body, {"Content-Encoding": encoding}))
        answered_s = time.perf_counter() - t0
        time.sleep(1.5)  # what the server does after answering counts too (aiohttp lingered, inflating)
    assert status == 413 and message == f"request body exceeds the limit of {LIMIT} bytes once decompressed " \
                                        f"({encoding})", message
    assert answered_s < 2.0, answered_s
    watch.check(max_stall_s=1.0, max_rss_growth_mb=200)


def test_sixteen_compressed_bombs_at_once(server):
    body = bomb("gzip")
    with Watch(server) as watch:
        with cf.ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda _: post(server.http, body, {"Content-Encoding": "gzip"}), range(16)))
        time.sleep(1.5)
    for answer in answers:
        status, message = error_of(answer)
        if status == 503:  # admission may refuse some at once: that costs nothing either
            assert message.startswith("server overloaded: "), message
        else:
            assert status == 413 and "once decompressed (gzip)" in message, message
    # each reads at most the limit before it is refused; 16 x 64 MiB at once is the worst case
    watch.check(max_stall_s=1.0, max_rss_growth_mb=16 * 64 + 100)


def test_declared_length_over_the_limit_is_413_without_reading(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.http, timeout=10)
    try:
        conn.putrequest("POST", INFER)
        conn.putheader("Content-Length", str(LIMIT + 1))
        conn.endheaders(b"{")  # and nothing more: the answer must not wait for the rest
        status, message = error_of((lambda r: (r.status, dict(r.getheaders()), r.read()))(conn.getresponse()))
    finally:
        conn.close()
    assert status == 413 and message == f"request body of {LIMIT + 1} bytes exceeds the limit of {LIMIT} bytes"


# ---- 2: JSON data longer than its shape ------------------------------------------------------

@pytest.mark.parametrize("encoding", [None, "gzip"])
def test_json_data_longer_than_its_shape_is_400_before_it_is_converted(server, encoding):
    body = zeros_body()
    values = (len(body) - 64) // 2 + 1
    headers = {}
    if encoding:
        body, headers = compress(body, encoding), {"Content-Encoding": encoding}  # 65 KB of gzip
    with Watch(server) as watch:
        status, message = error_of(post(server.http, body, headers))
    assert status == 400, message
    assert message.startswith("model 'digits-mlp' input 'pixels': ") and message.endswith(
        " values for FP32 [1, 64], which needs 64"), message
    assert abs(int(message.split(": ")[1].split()[0]) - values) < 64, message
    # the 64 MiB body and the request's own buffers; the 32 Mi values are never converted
    watch.check(max_stall_s=1.0, max_rss_growth_mb=250)


def test_four_such_json_bodies_at_once(server):
    body = compress(zeros_body(), "gzip")
    with Watch(server) as watch:
        with cf.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: post(server.http, body, {"Content-Encoding": "gzip"}), range(4)))
    for answer in answers:
        status, message = error_of(answer)
        assert status in (400, 503) and ("which needs 64" in message or status == 503), message
    watch.check(max_stall_s=1.0, max_rss_growth_mb=4 * 64 * 2 + 100)


def test_large_json_data_that_fits_is_converted_in_steps(server):
    rows = 20_000  # 1.28 M values, 5 MB of JSON: converted 1 MiB at a time
    body = json.dumps(tensor_doc([rows, 64], ROW.ravel().tolist() * rows)).encode()
    with Watch(server) as watch:
        status, headers, answer = post(server.http, body)
    assert status == 200, answer[:300]
    labels = {o["name"]: o for o in json.loads(answer)["outputs"]}["label"]
    assert labels["shape"] == [rows, 1] and len(set(labels["data"])) == 1
    watch.check(max_stall_s=1.0, max_rss_growth_mb=300)


def nested_zeros_body(rows: int) -> bytes:
    """An infer request whose 'data' is `rows` nested rows of 64 zeros, declared [1, 64]."""
    row = b"[" + b",".join([b"0"] * 64) + b"]"
    return (b'{"inputs":[{"name":"pixels","shape":[1,64],"datatype":"FP32","data":[' + b",".join([row] * rows)
            + b']}]}')


def test_nested_json_data_longer_than_its_shape_is_400_before_it_is_parsed(server):
    body = nested_zeros_body(450_000)  # 56 MiB, 28.8 M values in rows
    with Watch(server) as watch:
        status, message = error_of(post(server.http, body))
    assert status == 400 and message == "model 'digits-mlp' input 'pixels': 28800000 values for FP32 [1, 64], " \
                                        "which needs 64", message
    watch.check(max_stall_s=1.0, max_rss_growth_mb=250)


def test_nested_json_data_that_fits_is_read_row_major_like_flat_data(server):
    rows = 600  # 77 KB of JSON: over the size from which arrays are cut out and converted in steps
    nested = tensor_doc([rows, 64], [ROW.ravel().tolist()] * rows)
    flat = tensor_doc([rows, 64], ROW.ravel().tolist() * rows)
    answers = [post(server.http, json.dumps(doc).encode()) for doc in (nested, flat)]
    assert [a[0] for a in answers] == [200, 200], [a[2][:200] for a in answers]
    outputs = [{o["name"]: o["data"] for o in json.loads(a[2])["outputs"]} for a in answers]
    assert outputs[0] == outputs[1] and len(outputs[0]["label"]) == rows


def test_a_large_array_outside_the_inputs_data_is_refused(server):
    doc = tensor_doc([1, 64], ROW.ravel().tolist())
    doc["parameters"] = {"extra": [[0] * 64] * 2000}  # 260 KB of numbers where no tensor is
    status, message = error_of(post(server.http, json.dumps(doc).encode()))
    assert status == 400 and "a large array (over 65536 bytes of JSON) outside an input's 'data'" in message, message


def test_more_than_the_bound_of_other_json_is_refused_before_it_is_parsed(server):
    doc = tensor_doc([1, 64], ROW.ravel().tolist())
    doc["parameters"] = {"notes": ["x" * 100] * 50_000}  # 5 MB of strings: not number arrays
    with Watch(server) as watch:
        status, message = error_of(post(server.http, json.dumps(doc).encode()))
    assert status == 400 and "bytes besides its number arrays; at most 4194304 are parsed" in message, message
    watch.check(max_stall_s=1.0, max_rss_growth_mb=100)


JSON_LIMIT = 8 << 20  # settings.max_json_bytes, the default


@pytest.mark.parametrize("encoding", [None, "gzip"])
def test_by_default_json_over_8_mib_is_413_and_reading_stops_there(default, encoding):
    body, headers = zeros_body(), {}
    if encoding:
        body, headers = compress(body, encoding), {"Content-Encoding": encoding}
    with Watch(default) as watch:
        status, message = error_of(post(default.http, body, headers))
    assert status == 413 and message.endswith(
        f"{JSON_LIMIT} bytes{' once decompressed (gzip)' if encoding else ''} for a JSON request "
        f"(--max-json-bytes); send large tensors as binary data (Inference-Header-Content-Length)"), message
    watch.check(max_stall_s=1.0, max_rss_growth_mb=100)


def test_control_and_feedback_json_is_held_to_the_json_limit(default):
    """/feedback is open to any client that may infer; its JSON, like the admin calls', is parsed whole."""
    labels = json.dumps({"labels": [{"id": "r" * 20, "label": 1}] * 400_000}).encode()  # 16 MB
    with Watch(default) as watch:
        status, message = error_of(post(default.http, labels, path="/v2/models/digits-mlp/feedback"))
    assert status == 413 and message.endswith(f"{JSON_LIMIT} bytes for a JSON request (--max-json-bytes)"), message
    watch.check(max_stall_s=1.0, max_rss_growth_mb=100)


def test_by_default_binary_data_is_not_held_to_the_json_limit(default):
    rows = (JSON_LIMIT // 256) + 1000  # 64 FP32 values a row: 8.2 MiB of binary data
    doc = json.dumps(tensor_doc([rows, 64], binary_data_size=rows * 256)).encode()
    data = ROW.tobytes() * rows
    status, _, answer = post(default.http, doc + data, {"Inference-Header-Content-Length": str(len(doc))})
    assert status == 200, answer[:300]
    assert len({o["name"]: o for o in json.loads(answer)["outputs"]}["label"]["data"]) == rows
    big = json.dumps({**tensor_doc([1, 64], binary_data_size=256), "id": "x" * JSON_LIMIT}).encode()
    headers = {"Inference-Header-Content-Length": str(len(big))}
    status, message = error_of(post(default.http, big + ROW.tobytes(), headers))
    assert status == 413 and "JSON part (Inference-Header-Content-Length" in message and "--max-json-bytes" in message


def test_data_too_large_for_the_limit_is_400_before_it_is_read(server):
    rows = LIMIT // 256 + 1  # 64 FP32 values a row: one row over the limit
    status, message = error_of(post(server.http, json.dumps(tensor_doc([rows, 64], [0.0])).encode()))
    assert status == 400 and message == (f"model 'digits-mlp' input 'pixels': shape [{rows}, 64] of FP32 describes "
                                         f"{rows * 256} bytes, over the request limit of {LIMIT} bytes"), message


# ---- 5: shapes numpy cannot hold -------------------------------------------------------------

SHAPES = {
    "65 dimensions": ([1] * 65, "shape has 65 dimensions; at most 64 are supported"),
    "2**62 x 4 x 0": ([2**62, 4, 0], f"describes {2**62 * 4 * 4} bytes (empty, but its other dimensions are not)"),
    "2**64 x 0": ([2**64, 0], "has a dimension out of range (each is 0 .. 2**63-1)"),
    "2**63-1 x 0": ([2**63 - 1, 0], f"describes {(2**63 - 1) * 4} bytes (empty, but its other dimensions are not)"),
    "-1": ([-1, 64], "has a dimension out of range"),
}


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("case", sorted(SHAPES))
def test_shapes_numpy_cannot_hold_are_400(server, case, binary):
    shape, words = SHAPES[case]
    if binary:
        head = json.dumps(tensor_doc(shape, binary_data_size=0)).encode()
        answer = post(server.http, head, {"Inference-Header-Content-Length": str(len(head))})
    else:
        answer = post(server.http, json.dumps(tensor_doc(shape, [])).encode())
    status, message = error_of(answer)
    assert status == 400 and message.startswith("model 'digits-mlp' input 'pixels': ") and words in message, message


# ---- 11: malformed HTTP requests in the log --------------------------------------------------

def send_raw(port: int, data: bytes) -> bytes:
    """`data` on a connection of its own; what comes back until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        return b"".join(iter(lambda: s.recv(65536), b""))


MALFORMED = [
    b"POST /v2/models/digits-mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
]


def test_malformed_requests_are_a_few_warning_lines_not_tracebacks(server):
    start = len(server.lines)
    t0 = time.perf_counter()
    for i in range(200):
        answer = send_raw(server.http, MALFORMED[i % len(MALFORMED)])
        assert answer.split(b"\r\n")[0].endswith(b" 400 Bad Request"), (i, answer[:100])
    elapsed = time.perf_counter() - t0
    time.sleep(0.3)
    lines = server.lines[start:]
    assert not [line for line in lines if "Traceback" in line or " ERROR " in line], "".join(lines[:20])
    warnings = [line for line in lines if "malformed HTTP request" in line]
    assert all(" WARNING " in line and line.count("\n") == 1 for line in warnings), warnings
    # at most one a second for each kind of malformation, and the first of each kind
    assert 1 <= len(warnings) <= len(MALFORMED) * (int(elapsed) + 2), (elapsed, warnings)
    assert len(lines) == len(warnings), lines


# ---- fuzz: compressed bodies and JSON data lengths -------------------------------------------

def valid_body() -> bytes:
    return json.dumps(tensor_doc([1, 64], ROW.ravel().tolist())).encode()


@st.composite
def compressed_bodies(draw):
    """A valid request, a truncated one, a bomb over the small limit or noise, compressed (or not) as
    the Content-Encoding says, or says wrongly."""
    encoding = draw(st.sampled_from(ENCODINGS))
    kind = draw(st.sampled_from(["valid", "truncated", "bomb", "noise", "mislabelled"]))
    if kind == "bomb":
        inflated = draw(st.integers(SMALL_LIMIT - 8, 4 * SMALL_LIMIT))
        body = compress(b"[" * inflated if draw(st.booleans()) else b"0" * inflated, encoding)
    elif kind == "noise":
        body = draw(st.binary(max_size=300))
    else:
        body = compress(valid_body(), encoding, draw(st.integers(1, 9)))
        if kind == "truncated":
            body = body[:draw(st.integers(0, len(body) - 1))]
        elif kind == "mislabelled":
            encoding = draw(st.sampled_from([e for e in ENCODINGS if e != encoding]))
    return kind, encoding, body


@settings(max_examples=60, deadline=None, database=None)
@given(case=compressed_bodies())
def test_fuzz_compressed_bodies_never_break_the_server(small, case):
    kind, encoding, body = case
    status, headers, answer = post(small.http, body, {"Content-Encoding": encoding}, timeout=20)
    if kind == "valid":
        assert status == 200, answer
        return
    assert status in (400, 413), (status, answer)  # never 500
    assert headers["Content-Type"].startswith("application/json") and json.loads(answer)["error"]
    if kind == "bomb":
        assert status in (400, 413)


@settings(max_examples=40, deadline=None, database=None)
@given(values=st.integers(0, 30_000), rows=st.integers(0, 400), width=st.sampled_from([64, 63, 1]),
       spaced=st.booleans())
def test_fuzz_json_data_lengths_against_declared_shapes(server, values, rows, width, spaced):
    sep = ", " if spaced else ","
    data = "[" + sep.join(["0.25"] * values) + "]"  # up to ~150 KB: both the short and the stepped path
    body = ('{"inputs":[{"name":"pixels","datatype":"FP32","shape":[%d,%d],"data":%s}]}'
            % (rows, width, data)).encode()
    status, message = error_of(post(server.http, body)) if True else None
    if values != rows * width:
        assert status == 400 and message.endswith(f"{values} values for FP32 [{rows}, {width}], "
                                                  f"which needs {rows * width}"), message
    else:
        assert status in (200, 400), message  # 400: a shape the model does not take ([n, 63], [0, 64])
        if status == 400:
            assert "'pixels'" in message and "values for" not in message, message


def test_server_still_answers_after_the_fuzz(server, small):
    for srv in (server, small):
        status, _, answer = post(srv.http, valid_body())
        assert status == 200, answer
