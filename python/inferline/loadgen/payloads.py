"""What the load generator sends: the model's inputs from its metadata, filled with seeded random
data or with rows of an `.npz`, encoded once per protocol before the run starts.

Metadata comes from the server itself (gRPC ModelMetadata, or REST GET /v2/models/{name}), so any
KServe v2 server works. The encoded requests are plain bytes: a serialized ModelInferRequest
(gRPC unary and stream) or a JSON body (REST); the client processes send them as they are.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from ..errors import InferlineError

METADATA = "/inference.GRPCInferenceService/ModelMetadata"

DTYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
          "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
          "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_}


@dataclass
class Target:
    """Where and what to send: the server's address, the protocol and the model."""
    url: str                 # host:port (gRPC) or http://host:port (REST)
    protocol: str            # "grpc", "stream" or "rest"
    model: str
    version: str = ""

    @property
    def rest_base(self) -> str:
        base = self.url if "://" in self.url else f"http://{self.url}"
        path = f"/v2/models/{self.model}" + (f"/versions/{self.version}" if self.version else "")
        return base.rstrip("/") + path


def fetch_metadata(target: Target, timeout_s: float = 10.0) -> dict:
    """{"name", "inputs": [{"name", "datatype", "shape"}], ...} from the server."""
    if target.protocol == "rest":
        try:
            with urllib.request.urlopen(target.rest_base, timeout=timeout_s) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise InferlineError(f"model metadata: GET {target.rest_base} answered HTTP {e.code}: "
                                 f"{e.read()[:200].decode(errors='replace')}") from None
        except (urllib.error.URLError, OSError) as e:
            raise InferlineError(f"model metadata: cannot reach {target.rest_base}: {e}") from None
    import grpc
    from ..server.proto import inference_pb2 as pb

    with grpc.insecure_channel(target.url) as channel:
        call = channel.unary_unary(METADATA, request_serializer=pb.ModelMetadataRequest.SerializeToString,
                                   response_deserializer=pb.ModelMetadataResponse.FromString)
        try:
            m = call(pb.ModelMetadataRequest(name=target.model, version=target.version), timeout=timeout_s)
        except grpc.RpcError as e:
            raise InferlineError(f"model metadata from {target.url}: {e.code().name}: {e.details()}") from None
    return {"name": m.name, "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                                       for t in m.inputs]}


def random_inputs(metadata: dict, batch: int, count: int, seed: int) -> List[Dict[str, np.ndarray]]:
    """`count` seeded random requests of `batch` rows fitting the metadata's inputs (a -1 in the
    first dimension is the batch, any other -1 is 1). Floats in [0, 1), integers in [0, 10)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        arrays = {}
        for spec in metadata["inputs"]:
            shape = [batch if (i == 0 and d == -1) else (1 if d == -1 else d) for i, d in enumerate(spec["shape"])]
            arrays[spec["name"]] = _random_array(rng, spec["datatype"], shape)
        out.append(arrays)
    return out


def _random_array(rng, datatype: str, shape) -> np.ndarray:
    if datatype not in DTYPES:
        raise InferlineError(f"cannot make random data of datatype {datatype}")
    if datatype == "BYTES":
        return np.array([b"x%07d" % v for v in rng.integers(0, 10**7, int(np.prod(shape)))],
                        dtype=np.object_).reshape(shape)
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(np.bool_)
    if datatype.startswith("FP"):
        return rng.random(shape).astype(DTYPES[datatype])
    return rng.integers(0, 10, shape).astype(DTYPES[datatype])


def npz_inputs(path: str, metadata: dict, batch: int) -> List[Dict[str, np.ndarray]]:
    """Requests of `batch` rows taken in turn from the arrays of an `.npz` (one per input name,
    rows along the first axis), cycling through the rows."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise InferlineError(f"--inputs {path}: {e}") from None
    names = [s["name"] for s in metadata["inputs"]]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise InferlineError(f"--inputs {path}: no array for input(s) {missing} (it has {sorted(arrays)})")
    rows = {len(arrays[n]) for n in names}
    if len(rows) != 1 or 0 in rows:
        raise InferlineError(f"--inputs {path}: the inputs' arrays need the same, non-zero number of rows")
    n = rows.pop()
    count = n // batch if n % batch == 0 else n
    out = []
    for i in range(count):
        idx = np.arange(i * batch, i * batch + batch) % n
        out.append({s["name"]: arrays[s["name"]][idx].astype(DTYPES[s["datatype"]]) for s in metadata["inputs"]})
    return out


def npz_metadata(path: str) -> dict:
    """Inputs as the `.npz` has them: its arrays' names, datatypes, and shapes with a batch axis."""
    names = {v: k for k, v in DTYPES.items() if k != "BYTES"}
    try:
        with np.load(path, allow_pickle=False) as z:
            inputs = [{"name": k, "datatype": names.get(z[k].dtype.type, "BYTES"), "shape": [-1, *z[k].shape[1:]]}
                      for k in z.files]
    except (OSError, ValueError) as e:
        raise InferlineError(f"--inputs {path}: {e}") from None
    return {"name": None, "inputs": inputs}


def encode(target: Target, requests: List[Dict[str, np.ndarray]], datatypes: Dict[str, str]) -> List[bytes]:
    """Each request as the bytes its protocol sends."""
    if target.protocol == "rest":
        return [_rest_body(r, datatypes) for r in requests]
    return [_grpc_request(target, r, datatypes) for r in requests]


def _grpc_request(target: Target, arrays: Dict[str, np.ndarray], datatypes: Dict[str, str]) -> bytes:
    from ..server.proto import inference_pb2 as pb

    req = pb.ModelInferRequest(model_name=target.model, model_version=target.version)
    for name, a in arrays.items():
        req.inputs.add(name=name, datatype=datatypes[name], shape=list(a.shape))
        if datatypes[name] == "BYTES":
            raw = b"".join(len(v).to_bytes(4, "little") + bytes(v) for v in a.reshape(-1))
        else:
            raw = np.ascontiguousarray(a).tobytes()
        req.raw_input_contents.append(raw)
    return req.SerializeToString()


def _rest_body(arrays: Dict[str, np.ndarray], datatypes: Dict[str, str]) -> bytes:
    inputs = []
    for name, a in arrays.items():
        flat = a.reshape(-1)
        data = [v.decode() if isinstance(v, bytes) else v for v in flat] if datatypes[name] == "BYTES" \
            else flat.tolist()
        inputs.append({"name": name, "shape": list(a.shape), "datatype": datatypes[name], "data": data})
    return json.dumps({"inputs": inputs}).encode()


def with_id(payload: bytes, request_id: int) -> bytes:
    """`payload` (a serialized ModelInferRequest) with its `id` (field 3) set: a protobuf parser
    keeps the last value of a field, so appending the field is enough."""
    value = str(request_id).encode()
    return payload + b"\x1a" + bytes([len(value)]) + value  # ids are < 128 bytes long


def prepare(target: Target, inputs: Optional[str], batch: int, distinct: int, seed: int) -> List[bytes]:
    """Fetches the metadata, makes the requests and encodes them. With an `.npz`, a server that
    gives no metadata (an unknown model, say) still gets the file's arrays: the answers' errors are
    then counted like any others."""
    try:
        metadata = fetch_metadata(target)
    except InferlineError:
        if not inputs:
            raise
        metadata = npz_metadata(inputs)
    if not metadata.get("inputs"):
        raise InferlineError(f"model {target.model}: the server's metadata lists no inputs")
    datatypes = {s["name"]: s["datatype"] for s in metadata["inputs"]}
    requests = npz_inputs(inputs, metadata, batch) if inputs else random_inputs(metadata, batch, distinct, seed)
    return encode(target, requests, datatypes)
