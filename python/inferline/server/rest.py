"""KServe v2 REST frontend (aiohttp), wire-compatible with tritonclient.http.

    GET  /v2/health/live | /v2/health/ready          200, or 503 when not; {"live" | "ready": bool}
    GET  /v2                                         server metadata
    GET  /v2/models/{m}[/versions/{v}]               model metadata
    GET  /v2/models/{m}[/versions/{v}]/ready         200 / 503
    GET  /v2/models/{m}[/versions/{v}]/config        Triton ModelConfig (JSON)
    GET  /v2/models[/{m}[/versions/{v}]]/stats       {"model_stats": [...]}
    POST /v2/models/{m}[/versions/{v}]/infer         JSON, or JSON + binary tensors
    POST /v2/repository/index                        [{"name", "version", "state", "reason"}]
    POST /v2/repository/models/{m}/load | /unload    bearer token when settings.admin_token is set
    POST /v2/models/{m}/feedback                     {"labels": [{"id", "label"}]} -> {"accepted", "unknown",
                                                     "unknown_ids"}; open like infer
Rollout admin (bearer token as for load/unload; rollout/lifecycle.py does the work; no gRPC twin):
    POST   /v2/admin/models/{m}/canary               {"version", "steps", "interval", "hold", "skip_gate",
                                                     "gate_seconds"} -> the rollout, with "gate"; runs
                                                     the load-test gate first unless skip_gate
    GET    /v2/admin/models/{m}/canary               rollout, current window, shadow, history
    POST   /v2/admin/models/{m}/canary/promote | /abort    -> the rollout
    POST   /v2/admin/models/{m}/shadow               {"version", "share"} -> the shadow
    DELETE /v2/admin/models/{m}/shadow               -> the shadow as it ran

JSON and binary tensor bodies (Triton's extension) are converted in
rest_convert.py; this module holds the aiohttp app, its routes and handlers; the
data plane checks and runs. Every error becomes ``{"error": message}`` with the
status from ``http_status``.

Hostile input is bounded before it costs (rest_body.py): a body is read up to
settings.max_message_bytes and no further, a compressed one inflated in steps
with the event loop free in between; past the limit the answer is 413 and the
connection stops reading. A malformed HTTP request is one WARNING line, at most
one a second per kind.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from time import perf_counter_ns
from typing import Optional

from aiohttp import web

from ..errors import InferlineError, InvalidArgument, Unauthenticated
from .admission import Overloaded
from .frontend_stats import error_code
from .rest_body import BodyTooLarge, ServerLog, read_body
from .rest_convert import HEADER_LENGTH, decode_infer_request, dumps, encode_infer_response, json_object

log = logging.getLogger("inferline.server.rest")

MAX_BYTES = web.AppKey("max_bytes", int)
MAX_JSON_BYTES = web.AppKey("max_json_bytes", int)

# ---- errors: one mapping --------------------------------------------------------

def http_status(error: InferlineError) -> int:
    """The HTTP status for an inferline error."""
    return error.http_status  # queue full (ResourceExhausted) is 503 there: retryable


def error_response(status: int, message: str, headers: Optional[dict] = None) -> web.Response:
    return web.Response(status=status, body=dumps({"error": message}), content_type="application/json",
                        headers=headers)


@web.middleware
async def _errors(request: web.Request, handler):
    try:
        return await handler(request)
    except Unauthenticated as e:
        return error_response(http_status(e), e.message, {"WWW-Authenticate": 'Bearer realm="inferline"'})
    except BodyTooLarge as e:
        response = error_response(413, e.message)
        response.force_close()  # the connection already reads no more (read_body)
        return response
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


def _error_code(e: BaseException) -> str:
    """The gRPC code name an infer error is counted under (the client gets its HTTP status)."""
    if isinstance(e, web.HTTPException):  # e.g. 413 from aiohttp's own limit
        return "INVALID_ARGUMENT" if e.status < 500 else "INTERNAL"
    if isinstance(e, web.RequestPayloadError):
        return "INVALID_ARGUMENT"
    return error_code(e)


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


# ---- the frontend ---------------------------------------------------------------

class RestFrontend:
    """The aiohttp application and its listening site; ``port`` is the bound port. `health_only`:
    just the health and model-readiness routes, on `port` (control.py's listener)."""

    def __init__(self, dataplane, settings, *, health_only: bool = False, port: Optional[int] = None):
        self.dataplane = dataplane
        self.settings = settings
        self.port: Optional[int] = None
        self._bind_port = settings.http_port if port is None else port
        self.app = web.Application(middlewares=[_errors], client_max_size=settings.max_message_bytes)
        self.app[MAX_BYTES] = settings.max_message_bytes
        self.app[MAX_JSON_BYTES] = min(settings.max_json_bytes, settings.max_message_bytes)
        if health_only:
            self._add_health_routes(self.app.router)
        else:
            self._add_routes(self.app.router)
        self._runner: Optional[web.AppRunner] = None

    def _add_health_routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/v2/health/live", self._live)
        r.add_get("/v2/health/ready", self._ready)
        for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            r.add_get(base + "/ready", self._model_ready)

    def _add_routes(self, r: web.UrlDispatcher) -> None:
        self._add_health_routes(r)
        r.add_get("/v2", self._server_metadata)
        r.add_get("/v2/models/stats", self._stats)  # before /v2/models/{name}
        r.add_post("/v2/repository/index", self._index)
        r.add_post("/v2/repository/models/{name}/load", self._load)
        r.add_post("/v2/repository/models/{name}/unload", self._unload)
        r.add_post("/v2/models/{name}/feedback", self._feedback)
        admin = "/v2/admin/models/{name}"
        r.add_post(admin + "/canary", self._canary_start)
        r.add_get(admin + "/canary", self._canary_status)
        r.add_post(admin + "/canary/promote", self._canary_promote)
        r.add_post(admin + "/canary/abort", self._canary_abort)
        r.add_post(admin + "/shadow", self._shadow_start)
        r.add_delete(admin + "/shadow", self._shadow_stop)
        for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            r.add_get(base, self._model_metadata)
            r.add_get(base + "/config", self._model_config)
            r.add_get(base + "/stats", self._stats)
            r.add_post(base + "/infer", self._infer)

    async def start(self) -> None:
        s = self.settings
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=s.shutdown_grace_s,
                                     logger=ServerLog(), auto_decompress=False)  # read_body inflates
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.host, self._bind_port, ssl_context=_ssl_context(s),
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
        """An inference request; errors are counted in the data plane's frontend_stats, then
        answered by the middleware."""
        try:
            return await self._infer_timed(request)
        except Exception as e:
            self.dataplane.frontend_stats.error("rest", _error_code(e), request.match_info["name"])
            raise

    async def _infer_timed(self, request: web.Request) -> web.Response:
        """Admitted before the body is read; decode (from the read body) and encode timed."""
        name, version = _model(request)
        header = request.headers.get(HEADER_LENGTH)
        limit, what = self._body_limit(header)
        if request.content_length is not None and request.content_length > limit:
            await read_body(request, limit, what)  # refuses at once, without reading
        admission = self.dataplane.admission
        try:
            started = admission.admit(None)  # before the body is read
        except Overloaded as e:
            self.dataplane.frontend_stats.error("rest", error_code(e), name)
            return error_response(503, e.message, {"Retry-After": str(max(1, -(-e.retry_after_ms // 1000)))})
        try:
            body = await read_body(request, limit, what)
            if header is not None and header.isdigit() and int(header) > self.settings.max_json_bytes:
                raise BodyTooLarge(f"the request's JSON part ({HEADER_LENGTH} {header}) exceeds the limit of "
                                   f"{self.settings.max_json_bytes} bytes (--max-json-bytes)")
            t0 = perf_counter_ns()
            req, default, chosen = await decode_infer_request(body, header, name, version,
                                                              max_bytes=self.settings.max_message_bytes)
            t1 = perf_counter_ns()
            response = await self.dataplane.infer(req)
            t2 = perf_counter_ns()
            out, content_type, headers = encode_infer_response(response, default, chosen)
            decode, encode = self.dataplane.frontend_stats.stages(response.model_name, response.model_version)
            decode.observe_ns(t1 - t0)
            encode.observe_ns(perf_counter_ns() - t2)
        finally:
            admission.done(started)
        return web.Response(body=out, content_type=content_type, headers=headers)

    def _body_limit(self, header: Optional[str]) -> tuple:
        """(the byte limit of an infer body, what to say when it is passed): the JSON limit for a
        JSON-only body (its parsing is paid on the event loop), the message limit with binary data."""
        s = self.settings
        if header is not None or s.max_json_bytes >= s.max_message_bytes:
            return s.max_message_bytes, ""
        return s.max_json_bytes, (" for a JSON request (--max-json-bytes); send large tensors as binary data "
                                  f"({HEADER_LENGTH})")

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
        params = json_object(doc.get("parameters"), "load request 'parameters'")
        await self.dataplane.repository_load(name, params.keys(), authorization=auth)
        return web.Response(status=200)

    async def _unload(self, request: web.Request) -> web.Response:
        name, auth = request.match_info["name"], request.headers.get("Authorization")
        self.dataplane.authorize(auth, f"unload {name!r}")
        doc = await _optional_json(request, "unload request")
        json_object(doc.get("parameters"), "unload request 'parameters'")  # unload_dependents: nothing depends
        await self.dataplane.repository_unload(name, authorization=auth)
        return web.Response(status=200)

    # ---- rollouts (admin) and label feedback: the token is checked before the body is read ----
    async def _canary_start(self, request: web.Request) -> web.Response:
        name, auth = _admin(request, self.dataplane, "canary start")
        doc = _fields(await _optional_json(request, "canary request"), "canary request",
                      ("version", "steps", "interval", "hold", "skip_gate", "gate_seconds"), required=("version",))
        options = {k: doc[k] for k in ("steps", "interval") if k in doc}
        if "steps" in doc and not isinstance(doc["steps"], (str, list)):
            raise InvalidArgument(f"canary request 'steps': expected a list of percentages or a string like "
                                  f"\"5,10,25\", got {doc['steps']!r}")
        for flag in ("hold", "skip_gate"):
            options[flag] = _bool(doc, flag, "canary request")
        gate_seconds = doc.get("gate_seconds")
        if gate_seconds is not None and (isinstance(gate_seconds, bool) or not isinstance(gate_seconds, (int, float))):
            raise InvalidArgument(f"canary request 'gate_seconds': expected a number of seconds, got {gate_seconds!r}")
        return _json(await self.dataplane.canary_start(name, doc["version"], gate_seconds=gate_seconds,
                                                       authorization=auth, **options))

    async def _canary_status(self, request: web.Request) -> web.Response:
        name, auth = _admin(request, self.dataplane, "canary status")
        return _json(await self.dataplane.canary_status(name, authorization=auth))

    async def _canary_promote(self, request: web.Request) -> web.Response:
        name, auth = _admin(request, self.dataplane, "canary promote")
        return _json(await self.dataplane.canary_promote(name, authorization=auth))

    async def _canary_abort(self, request: web.Request) -> web.Response:
        name, auth = _admin(request, self.dataplane, "canary abort")
        return _json(await self.dataplane.canary_abort(name, authorization=auth))

    async def _shadow_start(self, request: web.Request) -> web.Response:
        name, auth = _admin(request, self.dataplane, "shadow start")
        doc = _fields(await _optional_json(request, "shadow request"), "shadow request", ("version", "share"),
                      required=("version",))
        return _json(await self.dataplane.shadow_start(name, doc["version"], doc.get("share", 100.0),
                                                       authorization=auth))

    async def _shadow_stop(self, request: web.Request) -> web.Response:
        name, auth = _admin(request, self.dataplane, "shadow stop")
        return _json(await self.dataplane.shadow_stop(name, authorization=auth))

    async def _feedback(self, request: web.Request) -> web.Response:
        doc = _fields(await _optional_json(request, "feedback request"), "feedback request", ("labels",),
                      required=("labels",))
        if not isinstance(doc["labels"], list):
            raise InvalidArgument("feedback request 'labels': expected a list of {\"id\": ..., \"label\": ...}, "
                                  f"got {type(doc['labels']).__name__}")
        return _json(await self.dataplane.feedback(request.match_info["name"], doc["labels"]))


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


def _admin(request: web.Request, dataplane, call: str) -> tuple:
    """(model name, Authorization header) after the admin check, before any body is read."""
    name, auth = request.match_info["name"], request.headers.get("Authorization")
    dataplane.authorize(auth, f"{call} {name!r}")
    return name, auth


def _fields(doc: dict, what: str, allowed: tuple, required: tuple = ()) -> dict:
    """``doc`` if it has every required field and no other than ``allowed`` (a typo is refused,
    not ignored)."""
    unknown = sorted(set(doc) - set(allowed))
    if unknown:
        raise InvalidArgument(f"{what}: unknown field(s) {', '.join(map(repr, unknown))} "
                              f"(allowed: {', '.join(allowed)})")
    for key in required:
        if key not in doc:
            raise InvalidArgument(f"{what}: {key!r} is required")
    return doc


def _bool(doc: dict, key: str, what: str) -> bool:
    value = doc.get(key, False)
    if not isinstance(value, bool):
        raise InvalidArgument(f"{what} {key!r}: expected true or false, got {value!r}")
    return value


async def _optional_json(request: web.Request, what: str) -> dict:
    body = await read_body(request, request.app[MAX_JSON_BYTES], " for a JSON request (--max-json-bytes)")
    if not body.strip():
        return {}
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise InvalidArgument(f"{what}: malformed JSON: {e}") from None
    return json_object(doc, what)


def _json(doc, status: int = 200) -> web.Response:
    return web.Response(body=dumps(doc), status=status, content_type="application/json")
