"""ONNX Runtime backend: one InferenceSession per loaded version, run once per batch.

    backend = make_backend(BackendSpec("onnxruntime", threads=2), "model.onnx")
    engine.load(config, backend)

At ``create`` the session is built from the BackendSpec (threads, graph
optimisation level, session config entries, execution providers) and the
declared signature is checked against the graph, so a wrong config is refused
at load instead of failing every batch.

Two ways to run a batch, the same library and kernels (results bit for bit equal):
- native (the default where this build has ``_core.OrtBackend``, for the CPU provider without
  provider options): the core's executor threads call ONNX Runtime's C API, the library inside
  this onnxruntime package loaded with dlopen; no Python and no GIL per batch.
- the Python API (``native: false``, other providers, a CUDA device, or a build without the C API
  header): one ``session.run`` per batch, called with the GIL (released while it computes).

Serving defaults (a spec that leaves them unset, e.g. a bare ``.onnx``): ONNX Runtime's own
defaults (intra-op threads = every core, idle threads spinning) suit one big batch on an idle
machine, not micro-batches beside an event loop that needs a core: its spinning threads take
the cores the server's frontends run on. So intra-op threads default to ``serving_threads()``
(1 on up to 4 cores, a quarter of the cores above, at most 8) and thread-pool spinning to off
(``session.intra_op.allow_spinning`` / ``session.inter_op.allow_spinning`` = 0); a package that
sets ``threads`` or those options gets what it sets.

Batch dimension: the graph's dim 0 must be symbolic (or unknown) for inputs and
outputs, since batches have any number of rows up to max_batch_size. A graph
exported with a fixed batch dim is refused, except a fixed 1 when the config
sets ``batching.max_batch_size = 1`` (every batch then has one row).

External data: a graph over 2 GB keeps its tensors' bytes in files beside it (``location``
relative to the model's directory). ``external_data_locations`` lists them, so that a package
stores them with the graph; ONNX Runtime reads them from the directory the model is opened in.

CUDA: ``device`` "cuda[:N]" without ``providers`` binds the core's device buffers (ort_cuda.py,
untested); explicit providers keep host arrays. ``cuda_graphs`` is torchscript's only.

``onnxruntime`` (and ``onnx``, for ``signature_from_onnx`` and ``external_data_locations``) are
imported when needed, so this module imports without them.
"""

from __future__ import annotations

import logging
import mmap
import os
import reprlib
from typing import Any, Iterator, List, Mapping, Optional, Tuple

import numpy as np

from .. import _core
from ..config import ModelConfig, TensorSpec
from ..errors import FailedPrecondition, InvalidArgument
from . import gpu
from .signature import backend_inputs, describe, preprocess_note, shape_text
from .spec import BackendSpec, serving_threads

# ONNX element type names (TensorProto.DataType names, lower case, as in ORT's
# "tensor(float)") -> NumPy dtype names the core supports.
_ONNX_TYPES = {
    "float": "float32", "double": "float64", "float16": "float16", "bool": "bool",
    "int8": "int8", "int16": "int16", "int32": "int32", "int64": "int64",
    "uint8": "uint8", "uint16": "uint16", "uint32": "uint32", "uint64": "uint64",
}

_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
               "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}

_OPT_CODES = {"disable": 0, "basic": 1, "extended": 2, "all": 99}
"""GraphOptimizationLevel's values, for the native backend."""

_CPU = "CPUExecutionProvider"

log = logging.getLogger(__name__)

_SHORT = reprlib.Repr()
_SHORT.maxstring = 80


def _import_ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise FailedPrecondition("the onnxruntime backend needs ONNX Runtime: pip install onnxruntime "
                                 "(or pip install 'inferline[onnx]')") from e
    return onnxruntime


class OnnxRuntimeBackend:
    """Backend factory for an ONNX model file; ``create(config)`` builds a session per load."""

    name = "onnxruntime"

    def __init__(self, spec: BackendSpec, artifact_path):
        self.spec = spec
        self.artifact_path = os.fspath(artifact_path)
        self.session = None
        """The Python API session of the latest create() (for inspection), None before or when native."""
        self.native = None
        """The _core.OrtBackend of the latest create() when it went native, else None."""

    @property
    def gpu_device(self) -> Optional[int]:
        """The CUDA device of the IO-binding path (ort_cuda.py), None for host arrays."""
        if self.spec.providers or gpu.stream_synchronizer(0) is None:
            return None
        try:
            return gpu.cuda_index(self.spec.device, "onnxruntime backend")
        except InvalidArgument:
            return None  # create() refuses it, naming the model

    def create(self, config: ModelConfig) -> _core.Backend:
        ort = _import_ort()
        where = config.where
        if self.spec.cuda_graphs not in (None, "off"):
            raise InvalidArgument(f"{where}: backend.cuda_graphs is for the torchscript backend (ONNX Runtime has "
                                  f"its own: backend.providers options)")
        providers = _providers(ort, self.spec, where)
        library = self._native_library(ort, where)
        if library is not None:
            try:
                backend = _open_native(library, self.artifact_path, self.spec, config, where)
            except FailedPrecondition as e:  # the library cannot be loaded (too old, say)
                if self.spec.native:
                    raise
                log.warning("%s; serving through the onnxruntime Python API instead", e)
            else:
                check_signature(config, [_Arg(*a) for a in backend.inputs], [_Arg(*a) for a in backend.outputs],
                                os.path.basename(self.artifact_path))
                self.session, self.native = None, backend
                return backend
        options = _session_options(ort, self.spec, where)
        session = _open_session(ort, self.artifact_path, options, providers, where)
        check_signature(config, session.get_inputs(), session.get_outputs(),
                        os.path.basename(self.artifact_path))
        self.session, self.native = session, None
        if self.gpu_device is not None:
            from .ort_cuda import device_backend
            return device_backend(session, config, self.gpu_device)
        names = list(config.output_names)
        run = session.run

        def run_batch(inputs):  # inputs: {name: array}, exactly the graph's inputs
            return run(names, inputs)

        return _core.python_backend(run_batch, names)

    def _native_library(self, ort, where: str) -> Optional[str]:
        """The ONNX Runtime library for the native backend, or None for the Python API (see
        BackendSpec.native): native needs this build's _core.OrtBackend, the CPU provider alone on
        the host, and the library inside the onnxruntime package."""
        wanted = self.spec.native
        if wanted is False:
            return None
        why = None
        if _core.NATIVE_ORT:
            why = _core.NATIVE_ORT
        elif self.gpu_device is not None or self.spec.device != "cpu" or self.spec.providers not in ((), (_CPU,)):
            why = ("it runs on ONNX Runtime's CPU provider without provider options only (this model sets "
                   "backend.providers or backend.device)")
        else:
            library = ort_library(ort)
            if library is not None:
                return library
            why = f"no libonnxruntime.so inside the onnxruntime {ort.__version__} package"
        if wanted:
            raise FailedPrecondition(f"{where}: backend.native is true but the native ONNX Runtime backend cannot "
                                     f"serve it: {why}")
        return None

    def describe(self) -> dict:
        """runtime_env facts. providers: those the session uses (requested ones before create());
        api: "native" (the core calls ONNX Runtime's C API) or "python" (the onnxruntime module)."""
        ort = _import_ort()
        if self.session is not None:
            providers = list(self.session.get_providers())
        elif self.native is not None:
            providers = [_CPU]
        else:
            providers = [p if isinstance(p, str) else p[0] for p in _providers(ort, self.spec, "onnxruntime backend")]
        return {"backend": self.name, "onnxruntime": ort.__version__, "providers": providers,
                "api": "native" if self.native is not None else "python", "numpy": np.__version__}


def ort_library(ort) -> Optional[str]:
    """The path of the ONNX Runtime shared library inside the onnxruntime package, None if absent."""
    capi = os.path.join(os.path.dirname(ort.__file__), "capi")
    try:
        names = sorted(n for n in os.listdir(capi) if n.startswith("libonnxruntime.so"))
    except OSError:
        return None
    return os.path.join(capi, names[-1]) if names else None


def _open_native(library: str, path: str, spec: BackendSpec, config: ModelConfig, where: str):
    """A _core.OrtBackend with the session options _session_options gives the Python API."""
    if not os.path.isfile(path):
        raise InvalidArgument(f"{where}: ONNX model {path} does not exist")
    entries = [(key, "0") for key in SPIN_OPTIONS if key not in spec.options]
    entries += [(str(k), ("1" if v else "0") if isinstance(v, bool) else str(v)) for k, v in dict(spec.options).items()]
    inter = int(spec.inter_op_threads) if spec.inter_op_threads is not None else 0
    try:
        return _core.ort_backend(
            library, path, intra_op_threads=int(spec.threads) if spec.threads is not None else serving_threads(),
            inter_op_threads=inter, parallel=inter > 1, graph_optimization=_OPT_CODES[spec.graph_optimization],
            config_entries=entries, output_names=list(config.output_names))
    except _core.CoreError as e:
        raise (FailedPrecondition if e.code == 9 else InvalidArgument)(f"{where}: {e.message}") from e


# ---- session ----------------------------------------------------------------------
def _providers(ort, spec: BackendSpec, where: str) -> list:
    """ORT's providers argument: names, or (name, options) pairs, checked against what is installed.

    No providers: CPU, or CUDA (device_id N, then CPU) when spec.device is "cuda[:N]".
    """
    wanted = list(spec.providers)
    if not wanted:
        if spec.device == "cpu":
            wanted = [_CPU]
        elif spec.device == "cuda" or spec.device.startswith("cuda:"):
            index = spec.device.partition(":")[2] or "0"
            wanted = [("CUDAExecutionProvider", {"device_id": index}), _CPU]
        else:
            raise InvalidArgument(f"{where}: backend.device must be 'cpu', 'cuda' or 'cuda:N', got {spec.device!r}")
    entries = [_provider_entry(p, where) for p in wanted]
    available = list(ort.get_available_providers())
    missing = [name for name, _ in entries if name not in available]
    if missing:
        raise InvalidArgument(f"{where}: backend.providers: {', '.join(missing)} not available in this "
                              f"onnxruntime {ort.__version__} (available: {', '.join(available)})")
    return [name if opts is None else (name, opts) for name, opts in entries]


def _provider_entry(p: Any, where: str) -> Tuple[str, Any]:
    if isinstance(p, str):
        return p, None
    if isinstance(p, Mapping) and isinstance(p.get("name"), str) and set(p) <= {"name", "options"}:
        return p["name"], {str(k): str(v) for k, v in dict(p.get("options") or {}).items()}
    if isinstance(p, (tuple, list)) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], Mapping):
        return p[0], {str(k): str(v) for k, v in p[1].items()}
    raise InvalidArgument(f"{where}: backend.providers entries are names, (name, options) pairs or "
                          f"{{name, options}} mappings, got {p!r}")


SPIN_OPTIONS = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")


def _session_options(ort, spec: BackendSpec, where: str):
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(spec.threads) if spec.threads is not None else serving_threads()
    for key in SPIN_OPTIONS:
        if key not in spec.options:
            so.add_session_config_entry(key, "0")
    if spec.inter_op_threads is not None:
        so.inter_op_num_threads = int(spec.inter_op_threads)
        if spec.inter_op_threads > 1:  # inter-op threads only run in parallel execution mode
            so.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[spec.graph_optimization])
    for key, value in dict(spec.options).items():
        text = ("1" if value else "0") if isinstance(value, bool) else str(value)
        try:
            so.add_session_config_entry(str(key), text)
        except Exception as e:  # ORT raises its own exception types
            raise InvalidArgument(f"{where}: backend.options.{key} = {_SHORT.repr(value)} refused by onnxruntime: "
                                  f"{e}") from e
    return so


def _open_session(ort, path: str, options, providers: list, where: str):
    if not os.path.isfile(path):
        raise InvalidArgument(f"{where}: ONNX model {path} does not exist")
    try:
        return ort.InferenceSession(path, sess_options=options, providers=providers)
    except Exception as e:  # InvalidProtobuf, Fail, NotImplemented, ... from onnxruntime
        raise InvalidArgument(f"{where}: onnxruntime {ort.__version__} cannot load {path}: "
                              f"{type(e).__name__}: {e}") from e


# ---- signature ----------------------------------------------------------------------
def check_signature(config: ModelConfig, graph_inputs, graph_outputs, artifact: str) -> None:
    """Refuses a config whose inputs/outputs differ from the graph's (names, dtypes, ranks, fixed dims).

    graph_inputs/graph_outputs: objects with .name, .type ("tensor(float)") and .shape (ints,
    strings for symbolic dims, None for unknown ones), as ORT's NodeArg. Inputs are compared in
    their backend-facing form (after preprocessing). Extra graph outputs are allowed (not fetched);
    every graph input must be declared, since ONNX Runtime needs them all.
    """
    problems: List[str] = []
    batch_one_ok = config.batching.max_batch_size == 1
    by_name = {a.name: a for a in graph_inputs}
    for spec in backend_inputs(config):
        arg = by_name.pop(spec.name, None)
        label = f"input {spec.name!r}{preprocess_note(config, spec.name)}"
        if arg is None:
            problems.append(f"{label} is not an input of {artifact} "
                            f"(its inputs: {', '.join(a.name for a in graph_inputs)})")
        else:
            problems += _compare(label, spec, arg, artifact, batch_one_ok)
    for arg in by_name.values():
        problems.append(f"{artifact} input {arg.name!r} ({_arg_text(arg)}) is not declared in the config")
    outs = {a.name: a for a in graph_outputs}
    for spec in config.outputs:
        arg = outs.get(spec.name)
        if arg is None:
            problems.append(f"output {spec.name!r} is not an output of {artifact} "
                            f"(its outputs: {', '.join(a.name for a in graph_outputs)})")
        else:
            problems += _compare(f"output {spec.name!r}", spec, arg, artifact, batch_one_ok)
    if problems:
        raise InvalidArgument(f"{config.where}: " + "; ".join(problems))


def _compare(label: str, spec: TensorSpec, arg, artifact: str, batch_one_ok: bool) -> List[str]:
    mismatch = f"{label} is {describe(spec.dtype, spec.shape)} in the config but {_arg_text(arg)} in {artifact}"
    dtype = _onnx_dtype(arg.type)
    shape = arg.shape  # None: rank unknown to the graph, nothing more to check
    if dtype != spec.dtype or (shape is not None and len(shape) != len(spec.shape)):
        return [mismatch]
    if shape is None:
        return []
    batch = shape[0] if shape else None
    if _fixed(batch) and not (batch == 1 and batch_one_ok):
        return [f"{label} has a fixed batch dim {batch} in {artifact} ({_arg_text(arg)}): re-export it with a "
                f"symbolic first dim (e.g. dynamic_axes), or, for a fixed 1, set batching.max_batch_size = 1"]
    for want, got in zip(spec.shape[1:], shape[1:]):
        if want != -1 and _fixed(got) and want != got:
            return [mismatch]
    return []


def _fixed(dim) -> bool:
    return isinstance(dim, (int, np.integer)) and dim > 0


def _onnx_dtype(type_text: str):
    """'tensor(float)' -> 'float32'; None for non-tensors and element types the core lacks."""
    if not isinstance(type_text, str) or not type_text.startswith("tensor(") or not type_text.endswith(")"):
        return None
    return _ONNX_TYPES.get(type_text[len("tensor("):-1])


def _arg_text(arg) -> str:
    dtype = _onnx_dtype(arg.type)
    return f"{dtype or arg.type} {shape_text(arg.shape)}"


# ---- signature of a bare .onnx file ---------------------------------------------------
def signature_from_onnx(path) -> Tuple[list, list]:
    """(inputs, outputs) of an ONNX model as TensorSpec lists: dim 0 -> -1, symbolic/unknown dims -> -1.

    Reads the graph with the ``onnx`` package when installed (no session, weights left on disk
    when external), else from an onnxruntime CPU session's metadata. Non-batch dims that are
    symbolic come back as -1; the core accepts those for outputs only (inputs need fixed sizes).
    """
    path = os.fspath(path)
    where = f"ONNX model {path}"
    if not os.path.isfile(path):
        raise InvalidArgument(f"{where} does not exist")
    try:
        import onnx
    except ImportError:
        onnx = None
    if onnx is not None:
        args_in, args_out = _graph_args_onnx(onnx, path, where)
    else:
        ort = _import_ort()
        session = _open_session(ort, path, ort.SessionOptions(), [_CPU], where)
        args_in, args_out = session.get_inputs(), session.get_outputs()
    return ([_spec_from_arg(a, where, "input") for a in args_in],
            [_spec_from_arg(a, where, "output") for a in args_out])


class _Arg:
    """A graph input/output in ORT NodeArg's terms (name, "tensor(float)", dims)."""

    def __init__(self, name: str, type_text: str, shape):
        self.name, self.type, self.shape = name, type_text, shape


def _graph_args_onnx(onnx, path: str, where: str):
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:  # DecodeError and friends
        raise InvalidArgument(f"{where} is not a readable ONNX model: {type(e).__name__}: {e}") from e
    graph = model.graph
    initializers = {t.name for t in graph.initializer}  # listed as inputs by IR < 4 exporters
    return ([_arg_from_value_info(onnx, v) for v in graph.input if v.name not in initializers],
            [_arg_from_value_info(onnx, v) for v in graph.output])


def _arg_from_value_info(onnx, vi) -> _Arg:
    if vi.type.WhichOneof("value") != "tensor_type":
        return _Arg(vi.name, str(vi.type.WhichOneof("value")), None)
    tt = vi.type.tensor_type
    type_text = f"tensor({onnx.TensorProto.DataType.Name(tt.elem_type).lower()})"
    if not tt.HasField("shape"):
        return _Arg(vi.name, type_text, None)
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
    return _Arg(vi.name, type_text, dims)


def _spec_from_arg(arg, where: str, kind: str) -> TensorSpec:
    dtype = _onnx_dtype(arg.type)
    if dtype is None:
        raise InvalidArgument(f"{where}: {kind} {arg.name!r} is {arg.type}, which inferline cannot serve "
                              f"(supported: tensors of {', '.join(sorted(set(_ONNX_TYPES.values())))})")
    if arg.shape is None or len(arg.shape) == 0:
        what = "has no declared shape" if arg.shape is None else "is a scalar (no batch dim)"
        raise InvalidArgument(f"{where}: {kind} {arg.name!r} {what}; declare the signature in a config file")
    dims = [-1] + [int(d) if _fixed(d) else -1 for d in arg.shape[1:]]
    return TensorSpec(arg.name, dtype, tuple(dims))



# ---- external data ------------------------------------------------------------------
_LOCATION_ENTRY = b"\n\x08location"
"""How a tensor's external_data entry {key: "location"} starts in the protobuf bytes."""


def external_data_locations(path) -> List[Tuple[str, Any]]:
    """(tensor, location) for every tensor of the ONNX model at ``path`` whose data is external:
    initializers (sparse ones too) and node attributes, in subgraphs and functions as well.
    ``tensor`` names it ("initializer 'w'"); ``location`` is the file as the graph gives it
    (relative to the model's directory), None when the tensor names none. The weights are not read;
    an unreadable graph lists nothing (loading it fails later, saying why).

    Needs the ``onnx`` package; without it a model whose bytes show an external-data entry is
    refused (FailedPrecondition), since its files could not be listed and stored.
    """
    path = os.fspath(path)
    try:
        import onnx
    except ImportError:
        if _mentions_external_data(path):
            raise FailedPrecondition(f"ONNX model {path} seems to keep tensors in external data files; listing "
                                     f"them needs the onnx package: pip install onnx") from None
        return []
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception:  # not a readable graph: loading it says why, naming the step
        return []
    external = onnx.TensorProto.EXTERNAL
    return [(label, {e.key: e.value for e in t.external_data}.get("location"))
            for label, t in _all_tensors(model) if t.data_location == external]


def _all_tensors(model) -> Iterator[Tuple[str, Any]]:
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        yield from _node_tensors(function.node)


def _graph_tensors(graph) -> Iterator[Tuple[str, Any]]:
    for t in graph.initializer:
        yield f"initializer {t.name!r}", t
    for s in graph.sparse_initializer:
        yield f"sparse initializer {s.values.name!r}", s.values
        yield f"sparse initializer {s.values.name!r} (indices)", s.indices
    yield from _node_tensors(graph.node)


def _node_tensors(nodes) -> Iterator[Tuple[str, Any]]:
    for node in nodes:
        for a in node.attribute:
            label = f"node {node.name or node.op_type!r} attribute {a.name!r}"
            tensors = ([a.t] if a.HasField("t") else []) + list(a.tensors)
            sparse = ([a.sparse_tensor] if a.HasField("sparse_tensor") else []) + list(a.sparse_tensors)
            yield from ((label, t) for t in tensors + [s.values for s in sparse] + [s.indices for s in sparse])
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _graph_tensors(g)


def _mentions_external_data(path: str) -> bool:
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return False
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return m.find(_LOCATION_ENTRY) >= 0
