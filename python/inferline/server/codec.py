"""Tensor data conversions shared by the frontends: KServe datatypes, raw bytes, typed contents."""

from __future__ import annotations

import numpy as np

from ..errors import InvalidArgument

# KServe v2 datatype names (the wire) -> NumPy names (config.DTYPES: configs, engine, backends).
KSERVE_TO_NUMPY = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64",
}
NUMPY_TO_KSERVE = {v: k for k, v in KSERVE_TO_NUMPY.items()}

# Typed-contents field of InferTensorContents for each datatype.
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
}


def numpy_dtype(datatype: str, where: str) -> np.dtype:
    name = KSERVE_TO_NUMPY.get(datatype)
    if name is None:
        raise InvalidArgument(f"{where}: unsupported datatype {datatype!r}")
    return np.dtype(name)


def kserve_datatype(dtype: np.dtype) -> str:
    return NUMPY_TO_KSERVE[np.dtype(dtype).name]


def check_shape(shape, where: str) -> tuple:
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"{where}: shape {list(shape)} has a negative dimension")
    return shape


def element_count(shape: tuple) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def from_raw(raw: bytes, datatype: str, shape, where: str) -> np.ndarray:
    """A tensor from row-major raw bytes; the byte size must match shape x datatype."""
    dtype = numpy_dtype(datatype, where)
    shape = check_shape(shape, where)
    expected = element_count(shape) * dtype.itemsize
    if len(raw) != expected:
        raise InvalidArgument(f"{where}: {len(raw)} bytes of data for {datatype} {list(shape)}, "
                              f"which needs {expected} bytes")
    arr = np.frombuffer(raw, dtype=dtype)
    return arr.reshape(shape)


def from_list(values, datatype: str, shape, where: str) -> np.ndarray:
    """A tensor from a flat (or nested) list of values, e.g. typed contents or REST JSON data."""
    dtype = numpy_dtype(datatype, where)
    shape = check_shape(shape, where)
    try:
        with np.errstate(over="raise", invalid="raise"):
            arr = np.asarray(values, dtype=dtype).reshape(-1)
    except (TypeError, ValueError, OverflowError, FloatingPointError) as e:
        raise InvalidArgument(f"{where}: data does not fit {datatype}: {e}") from None
    if arr.size != element_count(shape):
        raise InvalidArgument(f"{where}: {arr.size} values for {datatype} {list(shape)}, "
                              f"which needs {element_count(shape)}")
    return arr.reshape(shape)
