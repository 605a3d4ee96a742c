"""KServe v2 REST request/response conversion: JSON and Triton's binary tensor extension.

The REST twin of proto/convert.py: bytes in, ``types.InferRequest`` out, and
``types.InferResponse`` back to bytes; no aiohttp here (rest.py owns the app).

Binary tensor data: the request header ``Inference-Header-Content-Length``
gives the JSON's length; the inputs with the parameter ``binary_data_size``
follow it, in input order. Outputs asked for with ``binary_data`` (or the
request parameter ``binary_data_output``) come back the same way. Malformed
input raises InvalidArgument naming the model and the tensor; the data plane
checks the rest (names, dtypes and shapes against the model).

Large JSON data is bounded before it costs anything: a JSON array of numbers of
64 KiB or more, flat or nested (no strings or objects inside), is cut out of the
body before the body is parsed (one regular expression), its values are counted
(its commas: nested rows are read row-major, their brackets dropped), and an
input's count and declared shape are checked against the shape and the request
size limit first; only then is the array converted, 1 MiB of text at a time
with the event loop free in between. (``json.loads`` holds the GIL throughout,
so a thread would not let other requests through; cutting the work up does.)
What is still parsed in one go is bounded too: a large array that is not an
input's ``data`` is refused, and the rest of the JSON (names, shapes,
parameters, string data) may be at most MAX_JSON_REST_BYTES.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from typing import Optional, Tuple

import numpy as np

from ..errors import InvalidArgument
from .codec import KSERVE_TO_NUMPY, from_list, from_raw, numpy_dtype
from .types import InferInput, InferRequest, InferResponse

HEADER_LENGTH = "Inference-Header-Content-Length"
# Request parameters read here; the rest are passed on in InferRequest.parameters.
_READ_PARAMS = ("priority", "timeout", "routing_key", "binary_data_output")
_KIND_NAMES = {"b": "booleans", "i": "integers", "u": "integers", "f": "floating-point numbers", "U": "strings"}
MAX_DIMS = 64  # numpy's limit
_SPAN_MIN_BYTES = 64 * 1024  # flat JSON arrays this long are counted before they are parsed
_CHUNK_BYTES = 1 << 20  # and converted this much text at a time, the event loop free in between
_NUMBER_ARRAY = re.compile(rb'\[([^{}"]{%d,})\]' % _SPAN_MIN_BYTES)  # numbers, maybe nested; no strings or objects
MAX_JSON_REST_BYTES = 4 << 20
"""The JSON parsed in one go, once the large number arrays are cut out (about 0.1 s of parsing here)."""


# ---- infer: JSON (+ binary) -> InferRequest -------------------------------------

async def decode_infer_request(body, header_length: Optional[str], model: str, version: str = "",
                               max_bytes: int = 1 << 62):
    """Returns (InferRequest, binary_default, {output name: binary}) or raises InvalidArgument. No
    tensor may describe more than `max_bytes` (the request limit); large JSON data is checked before
    it is converted and converted in steps (see the module docstring)."""
    json_part, binary = _split_body(body, header_length)
    doc, spans = _parse_json(json_part)
    if len(spans) != _placed(doc, spans):
        raise InvalidArgument(f"model {model!r}: the request has a large array (over {_SPAN_MIN_BYTES} bytes of "
                              f"JSON) outside an input's 'data'")
    return await _decode(doc, spans, json_part, binary, header_length, model, version, max_bytes)


async def _decode(doc, spans: dict, text, binary, header_length, model: str, version: str, max_bytes: int):
    if not isinstance(doc, dict):
        raise InvalidArgument("infer request: the JSON body must be an object")
    params = json_object(doc.get("parameters"), "infer request 'parameters'")
    tensors = doc.get("inputs")
    if not isinstance(tensors, list):
        raise InvalidArgument(f"model {model!r}: infer request 'inputs' must be a list of tensors")
    inputs, offset = [], 0
    for i, t in enumerate(tensors):
        inp, size = _decode_input(t, i, model, binary, offset, header_length is None, max_bytes, spans)
        if isinstance(inp.data, _Span):
            inp = InferInput(inp.name, inp.datatype, inp.shape, await _from_span(text, inp.data, inp))
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


def _split_body(body, header_length: Optional[str]):
    """(the JSON part, the binary part as a memoryview)."""
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
    return json_part, binary


class _Span:
    """A JSON array of numbers cut out of the body: text[start:end] holds about `count` values (commas
    + 1); `nested`: it has inner brackets (rows), dropped when it is converted."""

    def __init__(self, start: int, end: int, count: int, nested: bool):
        self.start, self.end, self.count, self.nested = start, end, count, nested
        self.where = ""


def _placed(doc, spans: dict) -> int:
    """How many of the cut-out arrays are an input's 'data' (where they are converted in steps)."""
    tensors = doc.get("inputs") if isinstance(doc, dict) else None
    if not spans or not isinstance(tensors, list):
        return 0
    return sum(isinstance(t, dict) and isinstance(t.get("data"), str) and t["data"] in spans for t in tensors)


def _parse_json(text) -> tuple:
    """(document, {placeholder: _Span}): the JSON with each array of numbers of _SPAN_MIN_BYTES or more
    replaced by a placeholder string (unique to this request), parsed; at most MAX_JSON_REST_BYTES of it."""
    if len(text) < _SPAN_MIN_BYTES:
        return _loads(text), {}
    spans, nonce = {}, os.urandom(8).hex()

    def cut(m: re.Match) -> bytes:
        key = f"\0inferline-span-{nonce}-{len(spans)}"
        start, end = m.start(1), m.end(1)
        spans[key] = _Span(start, end, text.count(b",", start, end) + 1, text.find(b"[", start, end) >= 0)
        return json.dumps(key).encode()
    rest = _NUMBER_ARRAY.sub(cut, text)
    if len(rest) > MAX_JSON_REST_BYTES:
        raise InvalidArgument(f"the request's JSON is {len(rest)} bytes besides its number arrays; at most "
                              f"{MAX_JSON_REST_BYTES} are parsed (send large tensors as binary data)")
    return _loads(rest), spans


def _loads(text):
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise InvalidArgument(f"malformed JSON in the request body: {e}") from None


def _decode_input(t, index: int, model: str, binary: memoryview, offset: int, no_header: bool, max_bytes: int,
                  spans: dict):
    if not isinstance(t, dict) or not isinstance(t.get("name"), str):
        raise InvalidArgument(f"model {model!r}: inputs[{index}] must be an object with a 'name' string")
    where = f"model {model!r} input {_short(t['name'])}"
    datatype, shape = t.get("datatype"), t.get("shape")
    if not isinstance(datatype, str):
        raise InvalidArgument(f"{where}: 'datatype' must be a string, got {_short(datatype)}")
    if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
        raise InvalidArgument(f"{where}: 'shape' must be a list of integers, got {_short(shape)}")
    _check_shape(shape, datatype, where, max_bytes)
    params = json_object(t.get("parameters"), f"{where} 'parameters'")
    if "shared_memory_region" in params:
        raise InvalidArgument(f"{where}: shared-memory tensors are not supported")
    size = params.get("binary_data_size")
    if size is None:
        if "data" not in t:
            raise InvalidArgument(f"{where}: neither 'data' nor the parameter binary_data_size")
        span = spans.get(t["data"]) if isinstance(t["data"], str) else None
        if span is not None:  # converted by the caller, in steps, once the count fits the shape
            _check_count(span.count, datatype, shape, where)
            span.where = where
            return InferInput(t["name"], datatype, shape, span), 0
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


def _check_shape(shape: list, datatype: str, where: str, max_bytes: int) -> None:
    """A shape numpy can hold that describes at most `max_bytes` (zero dimensions aside)."""
    if len(shape) > MAX_DIMS:
        raise InvalidArgument(f"{where}: shape has {len(shape)} dimensions; at most {MAX_DIMS} are supported")
    for d in shape:
        if not 0 <= d < 2**63:
            raise InvalidArgument(f"{where}: shape {_short(shape)} has a dimension out of range "
                                  f"(each is 0 .. 2**63-1)")
    size = np.dtype(KSERVE_TO_NUMPY.get(datatype, "uint8")).itemsize
    for d in shape:
        size *= d or 1
    if size > max_bytes:
        empty = " (empty, but its other dimensions are not)" if 0 in shape else ""
        raise InvalidArgument(f"{where}: shape {_short(shape)} of {datatype} describes {size} bytes{empty}, "
                              f"over the request limit of {max_bytes} bytes")


def _check_count(count: int, datatype: str, shape: list, where: str) -> None:
    needed = 1
    for d in shape:
        needed *= d
    if count != needed:
        raise InvalidArgument(f"{where}: {count} values for {datatype} {list(shape)}, which needs {needed}")


async def _from_span(text, span: _Span, inp: InferInput) -> np.ndarray:
    """The values of a cut-out array, converted _CHUNK_BYTES of text at a time (each step a JSON
    parse and a conversion), yielding to the event loop between steps."""
    where = span.where
    out = np.empty(span.count, numpy_dtype(inp.datatype, where))
    filled, pos = 0, span.start
    while pos < span.end:
        stop = text.find(b",", pos + _CHUNK_BYTES, span.end) if span.end - pos > _CHUNK_BYTES else -1
        stop = span.end if stop < 0 else stop
        chunk = text[pos:stop].translate(None, b"[]") if span.nested else text[pos:stop]
        values = _loads(b"[" + chunk + b"]")  # at most span.count values in all: one per comma, + 1
        out[filled:filled + len(values)] = _from_json(values, inp.datatype, [len(values)], where)
        filled, pos = filled + len(values), stop + 1
        if pos == span.end:  # the text ended with a comma
            raise InvalidArgument("malformed JSON in the request body: a comma ends an array")
        await asyncio.sleep(0)
    _check_count(filled, inp.datatype, inp.shape, where)
    return out.reshape(inp.shape)


def _from_json(values, datatype: str, shape: list, where: str) -> np.ndarray:
    if isinstance(values, list) and not (values and isinstance(values[0], list)):
        _check_count(len(values), datatype, shape, where)  # flat: counted before it is converted
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
    except ValueError as e:  # the final reshape (_check_shape keeps it from happening)
        raise InvalidArgument(f"{where}: shape {_short(shape)} is not a valid tensor shape ({e})") from None
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
        p = json_object(o.get("parameters"), f"{where} 'parameters'")
        if p.get("classification") or "shared_memory_region" in p:
            raise InvalidArgument(f"{where}: classification and shared-memory outputs are not supported")
        flag = p.get("binary_data", default)
        if not isinstance(flag, bool):
            raise InvalidArgument(f"{where}: 'binary_data' must be a boolean")
        chosen[o["name"]] = flag
    return default, chosen


# ---- infer: InferResponse -> JSON (+ binary) ------------------------------------

def encode_infer_response(resp: InferResponse, default: bool, chosen: dict) -> Tuple[bytes, str, dict]:
    """(body, content type, headers): JSON, or JSON + binary outputs as asked by (default, chosen)."""
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
    if resp.parameters:
        doc["parameters"] = resp.parameters
    doc["outputs"] = entries
    head = dumps(doc)
    if not blobs:
        return head, "application/json", {}
    return b"".join([head, *blobs]), "application/octet-stream", {HEADER_LENGTH: str(len(head))}


# ---- JSON helpers (shared with rest.py) ------------------------------------------

def json_object(value, what: str) -> dict:
    """``value`` when it is a JSON object, {} when absent; else InvalidArgument naming ``what``."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object")
    return value


def dumps(doc) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
