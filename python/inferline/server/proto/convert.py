"""KServe v2 protobuf messages <-> the protocol-neutral types of ``server.types``.

Pure functions, no gRPC: the frontend calls them once per request and the
decode-cost benchmark (bench/server/decode_cost.py) times them on their own.
Every problem with a request raises ``InvalidArgument`` naming the tensor or
parameter at fault (names cut to ``NAME_CHARS`` characters: a status message
travels in a gRPC trailer, which clients limit to a few KiB).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
from google.protobuf import json_format

from ...errors import InvalidArgument
from .. import codec
from ..types import InferInput, InferRequest, InferResponse
from . import inference_pb2 as pb

RAW_ONLY = ("FP16", "BF16")  # no typed-contents field carries these
_INT_PARAMS = ("uint64_param", "int64_param")
MAX_TIMEOUT_US = 1 << 48
"""Longer `timeout` parameters (about 9 years) mean no timeout."""
_DTYPES = {name: np.dtype(np_name) for name, np_name in codec.KSERVE_TO_NUMPY.items()}
MAX_DIMS = 64
"""The most dimensions a tensor may have: NumPy 2's limit (NumPy 1 refuses more than 32, also InvalidArgument)."""
NAME_CHARS = 200
"""Longer names are cut in error messages (see `quote`)."""


def quote(name: str, limit: int = NAME_CHARS) -> str:
    """`name` quoted for an error message; a long one cut, with its length: 'aaa...' (1048576 characters)."""
    if len(name) <= limit:
        return repr(name)
    return f"{name[:limit]!r}... ({len(name)} characters)"


# ---- ModelInferRequest -> InferRequest -----------------------------------------

def decode_infer_request(msg: pb.ModelInferRequest, deadline_us: Optional[int] = None,
                         max_outputs: Optional[int] = None) -> InferRequest:
    """The request in `msg`; `deadline_us` (time left before the client's gRPC deadline) caps `timeout`;
    `max_outputs` (the model's output count) bounds `outputs`, which may name each output once.
    Whatever fails here is the caller's fault: InvalidArgument."""
    try:
        return _decode(msg, deadline_us, max_outputs)
    except InvalidArgument:
        raise
    except (ValueError, TypeError, OverflowError, MemoryError) as e:  # a case the checks below missed
        raise InvalidArgument(f"model {quote(msg.model_name)}: malformed infer request "
                              f"({type(e).__name__}: {e})") from None


def _decode(msg: pb.ModelInferRequest, deadline_us: Optional[int], max_outputs: Optional[int]) -> InferRequest:
    req = InferRequest(msg.model_name, msg.model_version, msg.id)
    if msg.parameters:
        _read_parameters(req, msg.parameters)
    if deadline_us is not None:
        req.timeout_us = deadline_us if req.timeout_us is None else min(req.timeout_us, deadline_us)
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise InvalidArgument(f"model {quote(msg.model_name)}: {len(raw)} raw_input_contents for {len(msg.inputs)} "
                              f"inputs (give one per input, in the order of `inputs`)")
    inputs = req.inputs
    for i, t in enumerate(msg.inputs):
        if t.parameters and "shared_memory_region" in t.parameters:
            raise InvalidArgument(f"{_where(msg, t)}: shared memory is not supported; send the data in the request")
        if raw:
            if t.HasField("contents"):
                raise InvalidArgument(f"{_where(msg, t)}: has both contents and raw_input_contents")
            data = _from_raw(raw[i], t, msg)
        else:
            data = _from_contents(t, _where(msg, t))
        inputs.append(InferInput(t.name, t.datatype, list(data.shape), data))
    if msg.outputs:
        req.outputs = _requested_outputs(msg, max_outputs)
    return req


def _requested_outputs(msg, max_outputs: Optional[int]) -> list:
    """The names in `outputs`, checked before any work: each once, no more than the model has."""
    outputs = msg.outputs
    if max_outputs is not None and len(outputs) > max_outputs:
        raise InvalidArgument(f"model {quote(msg.model_name)}: {len(outputs)} outputs requested, but it has "
                              f"{max_outputs} (name each output at most once)")
    names: list = []
    seen: set = set()
    for o in outputs:  # messages are built only on failure: this runs for every request
        if o.name in seen:
            raise InvalidArgument(f"model {quote(msg.model_name)} output {quote(o.name)}: requested twice "
                                  f"(name each output at most once)")
        if o.parameters and ("classification" in o.parameters or "shared_memory_region" in o.parameters):
            raise InvalidArgument(f"model {quote(msg.model_name)} output {quote(o.name)}: the classification and "
                                  f"shared-memory extensions are not supported")
        seen.add(o.name)
        names.append(o.name)
    return names


def _where(msg, t) -> str:
    return f"model {quote(msg.model_name)} input {quote(t.name)}"


def _from_raw(raw: bytes, t, msg):
    """codec.from_raw with a fast path for well-formed tensors (the checks cost more than the copy)."""
    dtype = _DTYPES.get(t.datatype)
    shape = tuple(t.shape)
    if len(shape) > MAX_DIMS:
        raise InvalidArgument(f"{_where(msg, t)}: shape has {len(shape)} dimensions (at most {MAX_DIMS})")
    try:
        if dtype is not None and len(raw) == dtype.itemsize * math.prod(shape) and min(shape, default=0) >= 0:
            return np.frombuffer(raw, dtype).reshape(shape)
        return codec.from_raw(raw, t.datatype, shape, _where(msg, t))  # says what is wrong
    except (ValueError, OverflowError, MemoryError) as e:  # NumPy refuses the shape (too large an array)
        raise InvalidArgument(f"{_where(msg, t)}: shape {_shape(shape)} cannot be used ({e})") from None


def _shape(shape) -> str:
    """A shape for a message, its middle elided past 16 dimensions."""
    dims = [str(d) for d in shape]
    return "[" + ", ".join(dims if len(dims) <= 16 else dims[:8] + ["..."] + dims[-8:]) + "]"


def _from_contents(t, where: str):
    field = codec.CONTENTS_FIELD.get(t.datatype)
    if field is None:
        if t.datatype in RAW_ONLY:
            raise InvalidArgument(f"{where}: {t.datatype} data must be sent in raw_input_contents")
        codec.numpy_dtype(t.datatype, where)  # raises: unsupported datatype (BYTES, unknown names)
        raise InvalidArgument(f"{where}: {t.datatype} has no typed contents field")
    if not t.HasField("contents"):
        raise InvalidArgument(f"{where}: no data (send raw_input_contents or contents.{field})")
    if len(t.shape) > MAX_DIMS:
        raise InvalidArgument(f"{where}: shape has {len(t.shape)} dimensions (at most {MAX_DIMS})")
    try:
        return codec.from_list(getattr(t.contents, field), t.datatype, t.shape, where)
    except (ValueError, OverflowError, MemoryError) as e:  # NumPy refuses the shape (too large an array)
        raise InvalidArgument(f"{where}: shape {_shape(t.shape)} cannot be used ({e})") from None


def _read_parameters(req: InferRequest, params) -> None:
    """Reads the reserved request parameters; the others go to `req.parameters` as plain values."""
    where = f"model {quote(req.model_name)} parameter"
    for key, p in params.items():
        kind = p.WhichOneof("parameter_choice")
        value = None if kind is None else getattr(p, kind)
        if key == "priority":
            if kind not in _INT_PARAMS or value < 0:
                raise InvalidArgument(f"{where} 'priority': expected a non-negative integer, got {kind} {value!r}")
            req.priority = value
        elif key == "timeout":
            if kind not in _INT_PARAMS or value < 0:
                raise InvalidArgument(f"{where} 'timeout': expected microseconds as int64, got {kind} {value!r}")
            req.timeout_us = value if 0 < value <= MAX_TIMEOUT_US else None  # 0 = no timeout (Triton)
        elif key == "sequence_id":
            if value:
                raise InvalidArgument(f"model {quote(req.model_name)}: sequences (sequence_id {value!r}) "
                                      f"are not supported")
        elif key == "routing_key":
            if kind != "string_param":
                raise InvalidArgument(f"{where} 'routing_key': expected a string_param, got {kind}")
            req.routing_key = value
        else:
            req.parameters[key] = value


# ---- InferResponse -> ModelInferResponse -----------------------------------------

def encode_infer_response(resp: InferResponse) -> pb.ModelInferResponse:
    """Every output in raw_output_contents (row-major bytes), index-aligned with `outputs`."""
    msg = pb.ModelInferResponse(model_name=resp.model_name, model_version=resp.model_version, id=resp.id)
    tensors, raws = msg.outputs, msg.raw_output_contents
    for o in resp.outputs:
        tensors.add(name=o.name, datatype=o.datatype, shape=o.shape)
        raws.append(o.data.tobytes())  # C order whatever the array's strides
    for key, value in resp.parameters.items():
        msg.parameters[key].string_param = value
    return msg


# ---- the other RPCs' answers, from the data plane's plain dicts --------------------

def from_dict(data, message):
    """Fills `message` from plain data (field names as in the .proto); unknown keys are ignored."""
    return json_format.ParseDict(data, message, ignore_unknown_fields=True)


def model_metadata(d: dict) -> pb.ModelMetadataResponse:
    return from_dict(d, pb.ModelMetadataResponse())


def model_config(d: dict) -> pb.ModelConfigResponse:
    return pb.ModelConfigResponse(config=from_dict(d, pb.ModelConfig()))


def model_statistics(stats: list) -> pb.ModelStatisticsResponse:
    return from_dict({"model_stats": stats}, pb.ModelStatisticsResponse())


def repository_index(models: list) -> pb.RepositoryIndexResponse:
    return from_dict({"models": models}, pb.RepositoryIndexResponse())
