"""KServe v2 REST frontend (aiohttp), wire-compatible with tritonclient.http.

    GET  /v2/health/live | /v2/health/ready          200, or 503 when not (empty body)
    GET  /v2                                         server metadata
    GET  /v2/models/{m}[/versions/{v}]               model metadata
    GET  /v2/models/{m}[/versions/{v}]/ready         200 / 503
    GET  /v2/models/{m}[/versions/{v}]/config        Triton ModelConfig (JSON)
    GET  /v2/models[/{m}[/versions/{v}]]/stats       {"model_stats": [...]}
    POST /v2/models/{m}[/versions/{v}]/infer         JSON, or JSON + binary tensors
    POST /v2/repository/index                        [{"name", "version", "state", "reason"}]
    POST /v2/repository/models/{m}/load | /unload    bearer token when settings.admin_token is set

Binary tensor data (Triton's extension): the request header
``Inference-Header-Content-Length`` gives the JSON's length; the inputs with the
parameter ``binary_data_size`` follow it, in input order. Outputs asked for with
``binary_data`` (or the request parameter ``binary_data_output``) come back the
same way. This module only converts; the data plane checks and runs. Every error
becomes ``{"error": message}`` with the status from ``http_status``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from typing import Optional

import numpy as np
from aiohttp import web

from ..errors import InferlineError, InvalidArgument, Unauthenticated
from .codec import from_list, from_raw
from .types import InferInput, InferRequest, InferResponse

log = logging.getLogger("inferline.server.rest")

HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_BYTES = web.AppKey("max_bytes", int)
# Request parameters read here; the rest are passed on in InferRequest.parameters.
_READ_PARAMS = ("priority", "timeout", "routing_key", "binary_data_output")
_KIND_NAMES = {"b": "booleans", "i": "integers", "u": "integers", "f": "floating-point numbers", "U": "strings"}

# ---- errors: one mapping --------------------------------------------------------

def http_status(error: InferlineError) -> int:
    """The HTTP status for an inferline error."""
    return error.http_status  # queue full (ResourceExhausted) is 503 there: retryable


def error_response(status: int, message: str, headers: Optional[dict] = None) -> web.Response:
    return web.Response(status=status, body=_dumps({"error": message}), content_type="application/json",
                        headers=headers)


@web.middleware
async def _errors(request: web.Request, handler):
    try:
        return await handler(request)
    except Unauthenticated as e:
        return error_response(http_status(e), e.message, {"WWW-Authenticate": 'Bearer realm="inferline"'})
    except InferlineError as e:
        return error_response(http_status(e), e.message)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _http_exception(request, e)
    except web.RequestPayloadError as e:  # e.g. a gzip body that does not decompress
        return error_response(400, f"the request body could not be read: {getattr(e.__cause__, 'message', e)}")
    except Exception as e:  # a bug: log it, answer, keep serving
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(500, f"internal error: {type(e).__name__}")


def _http_exception(request: web.Request, e: web.HTTPException) -> web.Response:
    if e.status == 404:
        message = f"no endpoint {request.method} {request.path}"
    elif e.status == 405:
        message = f"method {request.method} is not allowed on {request.path}"
    elif e.status == 413:
        message = f"request body exceeds the limit of {request.app[MAX_BYTES]} bytes"
    else:
        message = e.text or e.reason
    headers = {k: v for k, v in e.headers.items() if k in ("Allow", "WWW-Authenticate")}
    return error_response(e.status, message, headers)


# ---- infer: JSON (+ binary) -> InferRequest -------------------------------------

def decode_infer_request(body: bytes, header_length: Optional[str], model: str, version: str = ""):
    """Returns (InferRequest, binary_default, {output name: binary}) or raises InvalidArgument."""
    doc, binary = _split_body(body, header_length)
    if not isinstance(doc, dict):
        raise InvalidArgument("infer request: the JSON body must be an object")
    params = _object(doc.get("parameters"), "infer request 'parameters'")
    tensors = doc.get("inputs")
    if not isinstance(tensors, list):
        raise InvalidArgument(f"model {model!r}: infer request 'inputs' must be a list of tensors")
    inputs, offset = [], 0
    for i, t in enumerate(tensors):
        inp, size = _decode_input(t, i, model, binary, offset, header_length is None)
        inputs.append(inp)
        offset += size
    if offset != len(binary):
        sizes = ", ".join(f"{t['name']!r}: {t['parameters']['binary_data_size']}" for t in tensors
                          if "binary_data_size" in (t.get("parameters") or {}))
        raise InvalidArgument(f"model {model!r}: {len(binary)} bytes of binary data follow the JSON, but the "
                              f"inputs' binary_data_size sum to {offset} ({sizes or 'no binary inputs'})")
    default, chosen = _binary_outputs(doc.get("outputs"), params, model)
    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidArgument("infer request 'id' must be a string")
    priority, timeout_us, routing_key = _request_parameters(params)
    extra = {k: v for k, v in params.items() if k not in _READ_PARAMS}
    req = InferRequest(model, version, request_id, inputs, list(chosen), priority, timeout_us, routing_key, extra)
    return req, default, chosen


def _request_parameters(params: dict) -> tuple:
    """(priority, timeout_us or None, routing_key or None), checked."""
    priority, timeout, routing_key = params.get("priority", 0), params.get("timeout"), params.get("routing_key")
    if not _is_int(priority) or not 0 <= priority < 2**64:  # uint64, as on the gRPC wire
        raise InvalidArgument(f"infer request parameter 'priority' must be an integer >= 0, got {_short(priority)}")
    if timeout is not None and (not _is_int(timeout) or not 0 <= timeout < 2**63):  # int64 µs, as on gRPC
        raise InvalidArgument(f"infer request parameter 'timeout' must be microseconds >= 0, got {_short(timeout)}")
    if routing_key is not None and not isinstance(routing_key, str):
        raise InvalidArgument("infer request parameter 'routing_key' must be a string")
    return priority, timeout or None, routing_key  # timeout 0 = none, as in Triton


def _split_body(body: bytes, header_length: Optional[str]):
    if header_length is None:
        json_part, binary = body, memoryview(b"")
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise InvalidArgument(f"{HEADER_LENGTH} {_short(header_length)} is not an integer") from None
        if not 0 <= n <= len(body):
            raise InvalidArgument(f"{HEADER_LENGTH} {n} is outside the {len(body)}-byte body")
        view = memoryview(body)
        json_part, binary = bytes(view[:n]), view[n:]
    try:
        return json.loads(json_part), binary
    except (ValueError, RecursionError) as e:
        raise InvalidArgument(f"malformed JSON in the request body: {e}") from None


def _decode_input(t, index: int, model: str, binary: memoryview, offset: int, no_header: bool):
    if not isinstance(t, dict) or not isinstance(t.get("name"), str):
        raise InvalidArgument(f"model {model!r}: inputs[{index}] must be an object with a 'name' string")
    where = f"model {model!r} input {_short(t['name'])}"
    datatype, shape = t.get("datatype"), t.get("shape")
    if not isinstance(datatype, str):
        raise InvalidArgument(f"{where}: 'datatype' must be a string, got {_short(datatype)}")
    if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
        raise InvalidArgument(f"{where}: 'shape' must be a list of integers, got {_short(shape)}")
    params = _object(t.get("parameters"), f"{where} 'parameters'")
    if "shared_memory_region" in params:
        raise InvalidArgument(f"{where}: shared-memory tensors are not supported")
    size = params.get("binary_data_size")
    if size is None:
        if "data" not in t:
            raise InvalidArgument(f"{where}: neither 'data' nor the parameter binary_data_size")
        return InferInput(t["name"], datatype, shape, _from_json(t["data"], datatype, shape, where)), 0
    if not _is_int(size) or size < 0:
        raise InvalidArgument(f"{where}: binary_data_size must be an integer >= 0, got {_short(size)}")
    if "data" in t:
        raise InvalidArgument(f"{where}: both 'data' and binary_data_size given")
    if offset + size > len(binary):
        hint = f" (binary data needs the {HEADER_LENGTH} header)" if no_header else ""
        raise InvalidArgument(f"{where}: binary_data_size {size}, but only {len(binary) - offset} bytes "
                              f"of binary data remain{hint}")
    arr = from_raw(binary[offset:offset + size], datatype, shape, where)
    if not arr.flags.aligned:  # the JSON's length sets the offset: realign for the backends
        arr = arr.copy()
    return InferInput(t["name"], datatype, shape, arr), size


def _from_json(values, datatype: str, shape: list, where: str) -> np.ndarray:
    try:
        probe = np.asarray(values)
    except (ValueError, TypeError, OverflowError, RecursionError):
        probe = None  # ragged, huge or odd: from_list names the problem
    if probe is not None and probe.size and probe.dtype.kind not in _json_kinds(datatype) + "O":
        raise InvalidArgument(f"{where}: JSON data of {_KIND_NAMES.get(probe.dtype.kind, 'values')} "
                              f"does not fit {datatype}")
    try:
        with np.errstate(over="raise", invalid="raise"):
            return from_list(values, datatype, shape, where)
    except (OverflowError, FloatingPointError) as e:
        raise InvalidArgument(f"{where}: a value is out of range for {datatype} ({e})") from None
    except RecursionError:
        raise InvalidArgument(f"{where}: data nested too deeply") from None


def _json_kinds(datatype: str) -> str:
    """The numpy kinds of JSON data accepted for a datatype (as Triton: no strings, no float -> int)."""
    if datatype == "BOOL":
        return "b"
    if datatype.startswith("FP"):
        return "iuf"
    return "iu" if datatype.startswith(("INT", "UINT")) else ""


def _binary_outputs(outputs, params: dict, model: str):
    default = params.get("binary_data_output", False)
    if not isinstance(default, bool):
        raise InvalidArgument("infer request parameter 'binary_data_output' must be a boolean")
    if outputs is None:
        return default, {}
    if not isinstance(outputs, list):
        raise InvalidArgument(f"model {model!r}: infer request 'outputs' must be a list")
    chosen = {}
    for i, o in enumerate(outputs):
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise InvalidArgument(f"model {model!r}: outputs[{i}] must be an object with a 'name' string")
        where = f"model {model!r} output {_short(o['name'])}"
        p = _object(o.get("parameters"), f"{where} 'parameters'")
        if p.get("classification") or "shared_memory_region" in p:
            raise InvalidArgument(f"{where}: classification and shared-memory outputs are not supported")
        flag = p.get("binary_data", default)
        if not isinstance(flag, bool):
            raise InvalidArgument(f"{where}: 'binary_data' must be a boolean")
        chosen[o["name"]] = flag
    return default, chosen


# ---- infer: InferResponse -> JSON (+ binary) ------------------------------------

def encode_infer_response(resp: InferResponse, default: bool, chosen: dict) -> web.Response:
    entries, blobs = [], []
    for o in resp.outputs:
        entry = {"name": o.name, "datatype": o.datatype, "shape": o.shape}
        if chosen.get(o.name, default):
            data = np.ascontiguousarray(o.data)
            entry["parameters"] = {"binary_data_size": data.nbytes}
            blobs.append(data.reshape(-1).view(np.uint8).data)
        else:
            entry["data"] = o.data.reshape(-1).tolist()
        entries.append(entry)
    doc = {"model_name": resp.model_name, "model_version": resp.model_version}
    if resp.id:
        doc["id"] = resp.id
    doc["outputs"] = entries
    head = _dumps(doc)
    if not blobs:
        return web.Response(body=head, content_type="application/json")
    return web.Response(body=b"".join([head, *blobs]), content_type="application/octet-stream",
                        headers={HEADER_LENGTH: str(len(head))})


# ---- the frontend ---------------------------------------------------------------

class RestFrontend:
    """The aiohttp application and its listening site; ``port`` is the bound port."""

    def __init__(self, dataplane, settings):
        self.dataplane = dataplane
        self.settings = settings
        self.port: Optional[int] = None
        self.app = web.Application(middlewares=[_errors], client_max_size=settings.max_message_bytes)
        self.app[MAX_BYTES] = settings.max_message_bytes
        self._add_routes(self.app.router)
        self._runner: Optional[web.AppRunner] = None

    def _add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/v2/health/live", self._live)
        r.add_get("/v2/health/ready", self._ready)
        r.add_get("/v2", self._server_metadata)
        r.add_get("/v2/models/stats", self._stats)  # before /v2/models/{name}
        r.add_post("/v2/repository/index", self._index)
        r.add_post("/v2/repository/models/{name}/load", self._load)
        r.add_post("/v2/repository/models/{name}/unload", self._unload)
        for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            r.add_get(base, self._model_metadata)
            r.add_get(base + "/ready", self._model_ready)
            r.add_get(base + "/config", self._model_config)
            r.add_get(base + "/stats", self._stats)
            r.add_post(base + "/infer", self._infer)

    async def start(self) -> None:
        s = self.settings
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=s.shutdown_grace_s)
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.host, s.http_port, ssl_context=_ssl_context(s),
                           reuse_port=s.workers > 1)  # only a server's own workers share its port
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self, grace_s: float) -> None:
        """Stops accepting, lets in-flight requests finish for up to grace_s, then closes."""
        runner = self._runner
        if runner is None:
            return
        self._runner = None
        for site in list(runner.sites):
            await site.stop()
        if runner.server is not None:
            await asyncio.sleep(0)  # let requests that were just accepted start
            runner.server.pre_shutdown()  # idle keep-alive connections close now
            await runner.server.shutdown(grace_s)
        await runner.cleanup()

    # ---- handlers -----------------------------------------------------------------
    async def _live(self, request: web.Request) -> web.Response:
        live = self.dataplane.live()
        return _json({"live": live}, status=200 if live else 503)

    async def _ready(self, request: web.Request) -> web.Response:
        ready = self.dataplane.ready()
        return _json({"ready": ready}, status=200 if ready else 503)

    async def _server_metadata(self, request: web.Request) -> web.Response:
        return _json(self.dataplane.server_metadata())

    async def _model_metadata(self, request: web.Request) -> web.Response:
        return _json(self.dataplane.model_metadata(*_model(request)))

    async def _model_ready(self, request: web.Request) -> web.Response:
        """200 when ready; 503 with the reason when known but not serving; 404 when unknown."""
        name, version = _model(request)
        ready, reason = self.dataplane.model_readiness(name, version)
        doc = {"name": name, "ready": ready}
        if version:
            doc["version"] = version
        if reason:
            doc["reason"] = reason
        return _json(doc, status=200 if ready else 503)

    async def _model_config(self, request: web.Request) -> web.Response:
        return _json(self.dataplane.model_config(*_model(request)))

    async def _stats(self, request: web.Request) -> web.Response:
        name = request.match_info.get("name", "")
        return _json({"model_stats": self.dataplane.model_statistics(name, request.match_info.get("version", ""))})

    async def _infer(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        if request.content_length is not None and request.content_length > self.settings.max_message_bytes:
            raise web.HTTPRequestEntityTooLarge(self.settings.max_message_bytes, request.content_length)
        body = await request.read()
        req, default, chosen = decode_infer_request(body, request.headers.get(HEADER_LENGTH), name, version)
        return encode_infer_response(await self.dataplane.infer(req), default, chosen)

    async def _index(self, request: web.Request) -> web.Response:
        doc = await _optional_json(request, "repository index request")
        ready = doc.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidArgument("repository index request: 'ready' must be a boolean")
        return _json(self.dataplane.repository_index(ready))

    async def _load(self, request: web.Request) -> web.Response:
        name, auth = request.match_info["name"], request.headers.get("Authorization")
        self.dataplane.authorize(auth, f"load {name!r}")  # before the body is read
        doc = await _optional_json(request, "load request")
        params = _object(doc.get("parameters"), "load request 'parameters'")
        await self.dataplane.repository_load(name, params.keys(), authorization=auth)
        return web.Response(status=200)

    async def _unload(self, request: web.Request) -> web.Response:
        name, auth = request.match_info["name"], request.headers.get("Authorization")
        self.dataplane.authorize(auth, f"unload {name!r}")
        doc = await _optional_json(request, "unload request")
        _object(doc.get("parameters"), "unload request 'parameters'")  # unload_dependents: nothing depends
        await self.dataplane.repository_unload(name, authorization=auth)
        return web.Response(status=200)


async def start_rest(dataplane, settings) -> RestFrontend:
    """Serves the REST endpoints on settings.host:settings.http_port (0 = a free port, see ``.port``)."""
    frontend = RestFrontend(dataplane, settings)
    await frontend.start()
    return frontend


# ---- helpers --------------------------------------------------------------------

def _ssl_context(settings) -> Optional[ssl.SSLContext]:
    if not settings.tls:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
    return ctx


def _model(request: web.Request) -> tuple:
    return request.match_info["name"], request.match_info.get("version", "")


async def _optional_json(request: web.Request, what: str) -> dict:
    body = await request.read()
    if not body.strip():
        return {}
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise InvalidArgument(f"{what}: malformed JSON: {e}") from None
    return _object(doc, what)


def _object(value, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object")
    return value


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _dumps(doc) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _json(doc, status: int = 200) -> web.Response:
    return web.Response(body=_dumps(doc), status=status, content_type="application/json")
