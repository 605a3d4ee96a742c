"""The gRPC frontend: KServe v2 ``inference.GRPCInferenceService`` on grpc.aio, tritonclient-compatible.

    frontend = await start_grpc(dataplane, settings)   # binds settings.host:settings.grpc_port
    frontend.port                                      # the bound port (grpc_port 0 = a free one)
    await frontend.stop(grace_s)

Handlers are registered generically with bytes in and bytes out: each one
parses its request, asks the ``DataPlane`` and serializes the answer, and every
exception goes through one mapping (``grpc_status``) to a gRPC status. Per
inference request Python does one parse, one ``await dataplane.infer`` and one
serialize (bench/server/decode_cost.py measures that share). ModelStreamInfer
streams are bounded in number (`max_streams`), in work in hand (grpc_stream.py)
and in idle time (`stream_idle_timeout_s`). Also served:
``grpc.health.v1.Health`` (SERVING while the data plane is ready; a model name
as the service asks about that model) and server reflection.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Optional

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from ..errors import InferlineError, Unimplemented
from .admission import Overloaded
from .dataplane import DataPlane
from .grpc_stream import Stream
from .proto import convert
from .proto import inference_pb2 as pb
from .settings import ServerSettings

log = logging.getLogger("inferline.server.grpc")

SERVICE = "inference.GRPCInferenceService"
PYTHON_MAX_CONCURRENT_STREAMS = 128
"""--max-concurrent-streams 0 here: calls beyond it wait in the client and never reach the event loop."""
FEW_OUTPUTS = 16
"""A request naming more outputs than this is checked against the model's output count before decoding."""
MAX_STATUS_BYTES = 1024
"""Status messages are cut to this many UTF-8 bytes: they travel in a trailer, percent-encoded (up to
3 KiB), and one over the client's metadata limit (8 KiB by default) reaches it as RESOURCE_EXHAUSTED."""

UNIMPLEMENTED_RPCS = {
    "SystemSharedMemoryStatus": pb.SystemSharedMemoryStatusRequest,
    "SystemSharedMemoryRegister": pb.SystemSharedMemoryRegisterRequest,
    "SystemSharedMemoryUnregister": pb.SystemSharedMemoryUnregisterRequest,
    "CudaSharedMemoryStatus": pb.CudaSharedMemoryStatusRequest,
    "CudaSharedMemoryRegister": pb.CudaSharedMemoryRegisterRequest,
    "CudaSharedMemoryUnregister": pb.CudaSharedMemoryUnregisterRequest,
    "TraceSetting": pb.TraceSettingRequest,
    "LogSettings": pb.LogSettingsRequest,
}


# Where the gRPC code differs from the error class's own (issue 4, item 6): a full queue is
# UNAVAILABLE (retry later or elsewhere); RESOURCE_EXHAUSTED stays grpc's own answer to an
# oversize message.
GRPC_CODE_OVERRIDES = {"RESOURCE_EXHAUSTED": grpc.StatusCode.UNAVAILABLE}


def grpc_status(exc: BaseException) -> tuple:
    """(grpc.StatusCode, message) for any exception a handler raised: the one error mapping."""
    if isinstance(exc, InferlineError):
        code = GRPC_CODE_OVERRIDES.get(exc.grpc_code) or getattr(grpc.StatusCode, exc.grpc_code, None)
        return code or grpc.StatusCode.UNKNOWN, clip_message(exc.message)
    if isinstance(exc, DecodeError):
        return grpc.StatusCode.INVALID_ARGUMENT, clip_message(f"malformed request message: {exc}")
    log.error("internal error in a gRPC handler", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the server log"


def clip_message(message: str, limit: int = MAX_STATUS_BYTES) -> str:
    """`message`, or about `limit` UTF-8 bytes of it: its start and its end (which says what is wrong)."""
    data = message.encode("utf-8", "backslashreplace")
    if len(data) <= limit:
        return message
    head = data[:limit * 3 // 4].decode("utf-8", "ignore")
    tail = data[-(limit // 4):].decode("utf-8", "ignore")
    return f"{head} ...[{len(message)} characters in all]... {tail}"


async def answer_unary(method, request_type, raw: bytes, context) -> bytes:
    """The serialized answer of a unary RPC: parse `raw`, call `method`, serialize; any error is
    mapped (``grpc_status``) and ends the call through ``context.abort``. Both gRPC frontends answer
    their unary RPCs through this (the native one's control calls with native.ControlContext)."""
    try:
        response = await method(request_type.FromString(raw), context)
        return response.SerializeToString()
    except grpc.aio.AbortError:
        raise
    except Exception as e:  # CancelledError is a BaseException: a cancelled call stays cancelled
        await context.abort(*grpc_status(e))


def _unary(method, request_type):
    """A grpc.aio unary handler over raw bytes (answer_unary)."""
    async def handler(raw: bytes, context):
        return await answer_unary(method, request_type, raw, context)

    return grpc.unary_unary_rpc_method_handler(handler)


CONTROL_RPCS = {
    "ServerLive": ("server_live", pb.ServerLiveRequest),
    "ServerReady": ("server_ready", pb.ServerReadyRequest),
    "ModelReady": ("model_ready", pb.ModelReadyRequest),
    "ServerMetadata": ("server_metadata", pb.ServerMetadataRequest),
    "ModelMetadata": ("model_metadata", pb.ModelMetadataRequest),
    "ModelConfig": ("model_config", pb.ModelConfigRequest),
    "ModelStatistics": ("model_statistics", pb.ModelStatisticsRequest),
    "RepositoryIndex": ("repository_index", pb.RepositoryIndexRequest),
    "RepositoryModelLoad": ("repository_model_load", pb.RepositoryModelLoadRequest),
    "RepositoryModelUnload": ("repository_model_unload", pb.RepositoryModelUnloadRequest),
}
"""The unary RPCs other than ModelInfer, by name: (InferenceService method, request type). Besides
UNIMPLEMENTED_RPCS; the native frontend hands these to Python (native.py) and answers them alike."""


class InferenceService:
    """The RPCs of inference.GRPCInferenceService, each a thin conversion around the DataPlane."""

    def __init__(self, dataplane: DataPlane, settings: Optional[ServerSettings] = None):
        settings = settings or ServerSettings()
        self.dp = dataplane
        self.max_streams = settings.max_streams
        self.stream_idle_s = settings.stream_idle_timeout_s or None
        self.open_streams = 0

    def generic_handler(self):
        handlers = {name: _unary(method, request_type) for name, (method, request_type) in self.unary_rpcs().items()}
        handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(self.model_infer_raw)
        handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(self.model_stream_infer)
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    def unary_rpcs(self) -> dict:
        """{RPC name: (bound method, request type)} of every unary RPC but ModelInfer (CONTROL_RPCS and
        UNIMPLEMENTED_RPCS): what answer_unary serves, on either frontend."""
        out = {name: (getattr(self, method), request_type) for name, (method, request_type) in CONTROL_RPCS.items()}
        for name, request_type in UNIMPLEMENTED_RPCS.items():
            out[name] = (_unimplemented(name), request_type)
        return out

    # ---- health and metadata ------------------------------------------------
    async def server_live(self, request, context):
        return pb.ServerLiveResponse(live=self.dp.live())

    async def server_ready(self, request, context):
        return pb.ServerReadyResponse(ready=self.dp.ready())

    async def model_ready(self, request, context):
        return pb.ModelReadyResponse(ready=self.dp.model_ready(request.name, request.version))

    async def server_metadata(self, request, context):
        return pb.ServerMetadataResponse(**self.dp.server_metadata())

    async def model_metadata(self, request, context):
        return convert.model_metadata(self.dp.model_metadata(request.name, request.version))

    async def model_config(self, request, context):
        return convert.model_config(self.dp.model_config(request.name, request.version))

    async def model_statistics(self, request, context):
        return convert.model_statistics(self.dp.model_statistics(request.name, request.version))

    # ---- inference ------------------------------------------------------------
    async def model_infer_raw(self, raw: bytes, context):
        """ModelInfer: admitted (or refused, before anything is decoded), then answered. Decode and
        encode are timed, and errors counted, into the data plane's frontend_stats."""
        admission = self.dp.admission
        try:
            started = admission.admit(context.time_remaining())
        except InferlineError as e:
            if isinstance(e, Overloaded):
                context.set_trailing_metadata((("retry-after-ms", str(e.retry_after_ms)),))
            await context.abort(*self._failed(e, "grpc", None))
        request = None
        try:
            t0 = perf_counter_ns()
            request = pb.ModelInferRequest.FromString(raw)
            return await self._infer_timed(request, t0, context, stream=False)
        except grpc.aio.AbortError:
            raise
        except Exception as e:  # CancelledError is a BaseException: a cancelled call stays cancelled
            await context.abort(*self._failed(e, "grpc", request))
        finally:
            admission.done(started)

    async def _infer_timed(self, request, t0: int, context, stream: bool) -> bytes:
        """The serialized answer to `request` (parsing began at perf_counter_ns `t0`)."""
        decoded = self._decode(request, context)
        t1 = perf_counter_ns()
        response = await self.dp.infer(decoded)
        t2 = perf_counter_ns()
        message = convert.encode_infer_response(response)
        out = (pb.ModelStreamInferResponse(infer_response=message) if stream else message).SerializeToString()
        decode, encode = self.dp.frontend_stats.stages(response.model_name, response.model_version)
        decode.observe_ns(t1 - t0)
        encode.observe_ns(perf_counter_ns() - t2)
        return out

    def _failed(self, exc: BaseException, protocol: str, request) -> tuple:
        """grpc_status(exc), counted in the frontend stats under the request's model."""
        code, message = grpc_status(exc)
        self.dp.frontend_stats.error(protocol, code.name, request.model_name if request is not None else None)
        return code, message

    def _decode(self, request, context):
        """The InferRequest in `request`; a long `outputs` list is first held to the model's output count."""
        max_outputs = None
        if len(request.outputs) > FEW_OUTPUTS:
            max_outputs = len(self.dp.model_metadata(request.model_name, request.model_version)["outputs"])
        return convert.decode_infer_request(request, _deadline_us(context), max_outputs)

    async def model_stream_infer(self, requests, context):
        """Answers each request of the stream as soon as it completes (not in order); a failed
        request gets `error_message` and the stream goes on. Past `max_streams` open streams, UNAVAILABLE."""
        if self.open_streams >= self.max_streams:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"ModelStreamInfer: this worker has {self.open_streams} streams open, its limit "
                                f"(--max-streams); retry later, or send unary ModelInfer calls")
        self.open_streams += 1
        try:
            await Stream(self._stream_answer, requests, context, self.stream_idle_s).run()
        finally:
            self.open_streams -= 1

    async def _stream_answer(self, raw: bytes, context) -> bytes:
        request = None
        admission = self.dp.admission
        try:
            started = admission.admit(context.time_remaining())
        except InferlineError as e:  # refused before decoding: the client matches it by order only
            _, message = self._failed(e, "grpc_stream", None)
            return pb.ModelStreamInferResponse(error_message=message).SerializeToString()
        try:
            t0 = perf_counter_ns()
            request = pb.ModelInferRequest.FromString(raw)
            return await self._infer_timed(request, t0, context, stream=True)
        except Exception as e:
            _, message = self._failed(e, "grpc_stream", request)
            out = pb.ModelStreamInferResponse(error_message=message)
            if request is not None:  # lets a pipelining client match the error to its request
                out.infer_response.model_name = request.model_name
                out.infer_response.model_version = request.model_version
                out.infer_response.id = request.id
        finally:
            admission.done(started)
        return out.SerializeToString()

    # ---- repository -------------------------------------------------------------
    async def repository_index(self, request, context):
        return convert.repository_index(self.dp.repository_index(ready_only=request.ready))

    async def repository_model_load(self, request, context):
        await self.dp.repository_load(request.model_name, request.parameters.keys(),
                                      authorization=_authorization(context))
        return pb.RepositoryModelLoadResponse()

    async def repository_model_unload(self, request, context):
        await self.dp.repository_unload(request.model_name, authorization=_authorization(context))
        return pb.RepositoryModelUnloadResponse()


def _authorization(context) -> Optional[str]:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            return value
    return None


def _deadline_us(context) -> Optional[int]:
    """Microseconds left before the call's gRPC deadline (None: no deadline)."""
    left_s = context.time_remaining()
    return None if left_s is None else max(int(left_s * 1e6), 1)


def _unimplemented(rpc: str):
    async def method(request, context):
        raise Unimplemented(f"{rpc} is not supported by inferline (no shared memory, trace or log settings)")
    return method


class HealthService(health.aio.HealthServicer):
    """grpc.health.v1.Health. Check: "" and the inference service follow DataPlane.ready(); a model
    name is SERVING while a version of it serves, NOT_SERVING while it is only in the repository.
    Watch (the base class) of "" and the inference service follows DataPlane.accepting (as the native
    frontend's does), and is NOT_SERVING once `stop` begins."""

    def __init__(self, dataplane: DataPlane):
        super().__init__()
        self.dp = dataplane
        self._loop = asyncio.get_running_loop()
        dataplane.on_accepting(self._follow)

    def _follow(self, accepting: bool) -> None:
        """DataPlane.accepting changed (any thread): the watched status follows, on the loop."""
        if self._gracefully_shutting_down:
            return
        status = health_pb2.HealthCheckResponse.SERVING if accepting else health_pb2.HealthCheckResponse.NOT_SERVING

        async def publish():
            for service in ("", SERVICE):
                await self.set(service, status)
        try:
            self._loop.call_soon_threadsafe(lambda: self._loop.create_task(publish()))
        except RuntimeError:  # the loop is closed: the server is gone
            pass

    async def Check(self, request, context):
        return await health_check(self.dp, request, context, self._gracefully_shutting_down)


async def health_check(dataplane: DataPlane, request, context, shutting_down: bool = False):
    """grpc.health.v1.Health/Check's answer (HealthService's; the native frontend's for model names)."""
    service = request.service
    if service in ("", SERVICE):
        ok = dataplane.ready() and not shutting_down
    elif dataplane.model_ready(service):
        ok = True
    elif any(m["name"] == service for m in dataplane.repository_index()):
        ok = False
    else:
        await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {service!r}")
    status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
    return health_pb2.HealthCheckResponse(status=status)


def reflection_pool() -> descriptor_pool.DescriptorPool:
    """A private pool with inference.proto as package `inference` (its wire name), plus health and reflection."""
    fdp = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(fdp)
    old, new = "." + fdp.package + ".", ".inference."
    fdp.name, fdp.package = "inference.proto", "inference"
    for msg in fdp.message_type:
        _rename_refs(msg, old, new)
    for service in fdp.service:
        for m in service.method:
            m.input_type = m.input_type.replace(old, new, 1)
            m.output_type = m.output_type.replace(old, new, 1)
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(fdp.SerializeToString())
    for module in (health_pb2, reflection_pb2):
        other = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(other)
        pool.AddSerializedFile(other.SerializeToString())
    return pool


def _rename_refs(msg, old: str, new: str) -> None:
    for f in msg.field:
        if f.type_name.startswith(old):
            f.type_name = new + f.type_name[len(old):]
    for nested in msg.nested_type:
        _rename_refs(nested, old, new)


@dataclass
class GrpcFrontend:
    server: grpc.aio.Server
    port: int
    health: HealthService

    async def stop(self, grace_s: Optional[float] = None) -> None:
        """Health turns NOT_SERVING, new calls are refused, in-flight calls get `grace_s` to finish."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)


async def start_grpc(dataplane: DataPlane, settings: ServerSettings) -> GrpcFrontend:
    limit = int(settings.max_message_bytes)
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", limit),  # larger requests: RESOURCE_EXHAUSTED from grpc
        ("grpc.max_send_message_length", limit),
        ("grpc.so_reuseport", int(settings.workers > 1)),  # only a server's own workers share its port
        ("grpc.max_concurrent_streams", int(settings.max_concurrent_streams or PYTHON_MAX_CONCURRENT_STREAMS)),
    ])
    server.add_generic_rpc_handlers((InferenceService(dataplane, settings).generic_handler(),))
    health_service = HealthService(dataplane)
    await health_service.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)  # for Watch; Check asks live
    health_pb2_grpc.add_HealthServicer_to_server(health_service, server)
    names = (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server, pool=reflection_pool())
    port = _bind(server, settings)
    await server.start()
    return GrpcFrontend(server, port, health_service)


def _bind(server: grpc.aio.Server, settings: ServerSettings) -> int:
    host = settings.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 literal
    address = f"{host}:{settings.grpc_port}"
    try:
        if settings.tls:
            with open(settings.tls_key, "rb") as f:
                key = f.read()
            with open(settings.tls_cert, "rb") as f:
                cert = f.read()
            return server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
        return server.add_insecure_port(address)
    except RuntimeError as e:  # grpc reports a failed bind this way
        raise OSError(f"gRPC: cannot bind {address}: {e}") from None
