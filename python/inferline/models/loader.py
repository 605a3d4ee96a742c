"""Loading a model version: backend -> warm-up -> golden check -> determinism fingerprint -> cache check.

Fetching the artifact and verifying its sha256 is the store's job
(``Registry.fetch``); this module takes a local package and makes it serve.
A version that fails any step is unloaded again and the error says which step
and why; the caller records it.

A version whose backend runs on a CUDA device is held to the engine's GPU memory budget
(``engine.gpu_memory``, engine/gpu_memory.py): refused before loading when its estimate does not
fit in what is left, measured across the whole load (backend, warm-up, golden, fingerprint), and
unloaded and refused when the measurement does not fit either (step "gpu memory"). Its charge is
``LoadReport.gpu_memory_bytes`` and ``runtime_env["gpu_memory_bytes"]``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import platform
import sys
import time
from typing import Optional

import numpy as np

from .. import __version__
from ..backends.gpu import gpu_device
from ..backends.spec import make_backend
from ..config import ModelConfig
from ..engine import Engine, ModelHandle
from ..engine.gpu_memory import estimate_load
from ..errors import FailedPrecondition, InferlineError, ResourceExhausted
from .package import ModelPackage


class GoldenMismatch(FailedPrecondition):
    """The golden inputs did not produce the golden outputs."""


class CacheNotAllowed(FailedPrecondition):
    """The config enables a prediction cache but the version's outputs depend on the batch."""


class LoadFailed(FailedPrecondition):
    """A step of loading failed; ``step`` names it. Out of (GPU) memory keeps its code:
    RESOURCE_EXHAUSTED (``grpc_code``/``http_status`` of the cause)."""

    def __init__(self, message: str, step: str, cause: Optional[BaseException] = None):
        super().__init__(message)
        self.step = step
        if isinstance(cause, ResourceExhausted):
            self.grpc_code, self.http_status = cause.grpc_code, cause.http_status


@dataclasses.dataclass(frozen=True)
class LoadReport:
    model_load_time_s: float
    fingerprint: dict
    runtime_env: dict
    gpu_memory_bytes: int = 0
    """What loading took on the GPU (the budget's charge); 0 for a model on the CPU."""


def load_into_engine(engine: Engine, package: ModelPackage, version: int, *, root: Optional[str] = None):
    """Loads `package` as `version` into `engine`. `root`: where its files are (default: package.files).

    Returns (handle, LoadReport). Raises LoadFailed naming the step at fault.
    """
    config = dataclasses.replace(package.config, version=int(version))
    where = config.where
    artifact = os.path.join(root, package.artifact) if root else package.artifact_path
    t0 = time.perf_counter()
    try:
        factory = make_backend(package.backend, artifact)
    except InferlineError as e:
        raise LoadFailed(f"{where}: create backend: {e}", "backend", e) from e
    device = gpu_device(factory)
    if device is None:
        handle, fp = _load_checked(engine, package, config, factory, root)
        charged = 0
    else:
        handle, fp, charged = _load_on_gpu(engine, package, config, factory, root, device, artifact)
    env = runtime_env(factory)
    if device is not None:
        env["gpu_memory_bytes"] = charged
    return handle, LoadReport(time.perf_counter() - t0, fp, env, charged)


def _load_checked(engine: Engine, package: ModelPackage, config: ModelConfig, factory, root: Optional[str],
                  settle=None) -> tuple:
    """(handle, fingerprint): loads, warms up, checks; `settle(handle)` last (the GPU budget)."""
    where = config.where
    try:
        handle = engine.load(config, factory)
    except InferlineError as e:
        raise LoadFailed(f"{where}: create backend: {e}", "backend", e) from e
    try:
        step = "warm-up"
        warm_up(handle)
        step = "golden"
        golden = package.golden_arrays(root)
        if golden is not None:
            check_golden(handle, golden[0], golden[1], package.golden)
        step = "fingerprint"
        fp = fingerprint(handle, golden[0] if golden is not None else None)
        step = "cache"
        check_cache(config, fp)
        if settle is not None:
            step = "gpu memory"
            settle(handle)
        handle.reset_stats()  # the statistics count served traffic, not the loader's own
    except InferlineError as e:
        engine.unload(config.name, config.version)
        raise LoadFailed(f"{where}: {step}: {e}", step, e) from e
    return handle, fp


def _load_on_gpu(engine: Engine, package: ModelPackage, config: ModelConfig, factory, root: Optional[str],
                 device: int, artifact: str) -> tuple:
    """(handle, fingerprint, bytes charged): the load within the engine's GPU memory budget."""
    try:
        size = os.path.getsize(artifact)
    except OSError:
        size = 0  # the backend says what is wrong with the artifact
    estimate = estimate_load(config, size, device)
    budget = engine.gpu_memory
    try:
        with budget.loading(config.name, config.version, device, estimate, loaded=engine.models()) as load:
            handle, fp = _load_checked(engine, package, config, factory, root,
                                       settle=lambda h: load.settle(h.gpu_memory()["device_bytes"]))
    except ResourceExhausted as e:  # the estimate did not fit: nothing was loaded
        raise LoadFailed(f"{config.where}: gpu memory: {e}", "gpu memory", e) from e
    return handle, fp, load.charged


def synthetic_inputs(config: ModelConfig, rows: int, seed: int = 0) -> dict:
    """Seeded inputs that fit the signature (free inner dims become 16)."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec in config.inputs:
        shape = (rows,) + tuple(16 if d == -1 else d for d in spec.shape[1:])
        dt = np.dtype(spec.dtype)
        if dt.kind == "f":
            out[spec.name] = rng.standard_normal(shape).astype(dt)
        elif dt.kind == "b":
            out[spec.name] = rng.random(shape) < 0.5
        elif dt == np.uint8:
            out[spec.name] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        else:
            out[spec.name] = rng.integers(0, 16, size=shape).astype(dt)
    return out


def warm_up(handle: ModelHandle) -> None:
    """Runs one batch of every configured size (1, the preferred sizes, the max)."""
    b = handle.config.batching
    for size in sorted({1, b.max_batch_size, *b.preferred_batch_sizes}):
        handle.infer(synthetic_inputs(handle.config, size, seed=size))


def check_golden(handle: ModelHandle, inputs: dict, expected: dict, spec) -> None:
    got = handle.infer(inputs)
    for name, want in expected.items():
        have = got[name]
        if have.shape != want.shape or have.dtype != want.dtype:
            raise GoldenMismatch(f"golden output {name!r}: got {have.dtype} {list(have.shape)}, "
                                 f"expected {want.dtype} {list(want.shape)}")
        if spec.bitwise:
            same = have.tobytes() == want.tobytes()
        else:
            same = np.allclose(have, want, rtol=spec.rtol, atol=spec.atol, equal_nan=True)
        if not same:
            diff = np.abs(have.astype(np.float64) - want.astype(np.float64))
            bad = int(np.count_nonzero(have != want))
            raise GoldenMismatch(f"golden output {name!r} differs{' bitwise' if spec.bitwise else ''}: {bad} of "
                                 f"{have.size} values, max abs diff {float(np.nanmax(diff)):.3g}")


def fingerprint(handle: ModelHandle, inputs: Optional[dict] = None, rows: int = 8) -> dict:
    """Runs a fixed input set alone and packed inside larger batches at several positions.

    Returns {"sha256": hash of the outputs of each row run alone, "batch_invariant": whether
    every packed run gave the same bytes, "rows": n, "positions": [...], "hardware": ...}.
    Two loads of one version on the same hardware class give the same sha256.
    """
    config = handle.config
    max_batch = config.batching.max_batch_size
    if inputs is None:
        inputs = synthetic_inputs(config, rows, seed=20240229)
    n = min(len(next(iter(inputs.values()))), max_batch)
    inputs = {k: np.ascontiguousarray(v[:n]) for k, v in inputs.items()}
    alone = [handle.infer({k: v[i:i + 1] for k, v in inputs.items()}) for i in range(n)]
    digest = hashlib.sha256()
    for row in alone:
        for name in config.output_names:
            digest.update(np.ascontiguousarray(row[name]).tobytes())

    filler = synthetic_inputs(config, max_batch, seed=7)
    positions = sorted({0, 1, (max_batch - n) // 2, max_batch - n} & set(range(max_batch - n + 1)))
    invariant = True
    for pos in positions:
        packed = {k: np.concatenate([filler[k][:pos], inputs[k], filler[k][:max_batch - n - pos]]) for k in inputs}
        out = handle.infer(packed)
        for i in range(n):
            for name in config.output_names:
                invariant &= out[name][pos + i].tobytes() == alone[i][name][0].tobytes()
    return {"sha256": digest.hexdigest(), "batch_invariant": bool(invariant), "rows": n,
            "positions": positions, "hardware": hardware_class()}


def check_cache(config: ModelConfig, fp: dict) -> None:
    """CacheNotAllowed if ``config`` enables the prediction cache while the fingerprint ``fp``
    says the outputs are not batch-invariant: a cached answer would then depend on the batch
    that first computed it, and differ from what the version answers now."""
    if config.cache.enabled and not fp.get("batch_invariant", False):
        raise CacheNotAllowed(
            f"cache.max_bytes = {config.cache.max_bytes} enables a prediction cache, but the fingerprint "
            f"says batch_invariant false (the outputs of a row depend on the batch it is run in, so a "
            f"cached answer could differ from a fresh one); set cache.max_bytes to 0 or use a "
            f"batch-invariant backend")


def hardware_class() -> str:
    """CPU model and architecture: what bitwise reproducibility is promised across."""
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{platform.machine()} {model}".strip()


def runtime_env(factory) -> dict:
    env = {"python": sys.version.split()[0], "numpy": np.__version__, "inferline": __version__,
           "platform": f"{platform.system()} {platform.machine()}"}
    describe = getattr(factory, "describe", None)
    if callable(describe):
        env.update(describe())
    return env
