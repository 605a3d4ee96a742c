"""The GPU serving path on a device: a TorchScript MLP on cuda:0 through the engine (the core's
device backend), each CUDA graph mode, the fused preprocessing, errors, out-of-memory, measured
memory, the budget and a swap that does not fit. Every test here is marked gpu (conftest.py:
skipped without a device, failed under INFERLINE_REQUIRE_GPU=1). Requests wait at most
TIMEOUT_S, so that a hang fails instead of stalling the run.
"""

import json
import os
import warnings

import numpy as np
import pytest

import inferline as il
from inferline.backends import BackendSpec, make_backend
from inferline.engine.gpu_memory import estimate_load
from inferline.errors import InternalError, ResourceExhausted
from inferline.models import load_into_engine, load_package
from inferline.models.loader import LoadFailed
from inferline.models.service import push
from inferline.registry import Registry

torch = pytest.importorskip("torch")

# Warnings from torch in executor threads are shown, not raised (pytest's "error" would fail the batch).
pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("default::UserWarning"),
              pytest.mark.filterwarnings(r"ignore:`torch\.jit\.(script|save)` is deprecated:DeprecationWarning")]

IN, HIDDEN, OUT, MAX_BATCH = 32, 64, 10, 16
TIMEOUT_S = 120


class MLP(torch.nn.Module):
    def __init__(self, n_in=IN, hidden=HIDDEN, n_out=OUT):
        super().__init__()
        self.fc1 = torch.nn.Linear(n_in, hidden)
        self.fc2 = torch.nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class Picky(torch.nn.Module):
    """2x, but refuses a batch with a value above 1000 (the check synchronises: no graph capture)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x > 1000.0).any()):
            raise RuntimeError("input above 1000")
        return x * 2.0


def save(module, path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module), str(path))
    return str(path)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    torch.manual_seed(0)
    net = MLP().eval()
    return save(net, tmp_path_factory.mktemp("mlp") / "model.pt"), net


def mlp_config(name="mlp", version=1, **kw):
    return il.ModelConfig(name=name, version=version, inputs=[("x", "float32", (-1, IN))],
                          outputs=[("y", "float32", (-1, OUT))],
                          batching=il.BatchingConfig(max_batch_size=MAX_BATCH, max_queue_delay_us=1000), **kw)


def cuda_backend(path, **kw):
    return make_backend(BackendSpec("torchscript", device="cuda:0", **kw), path)


def infer(handle, x) -> np.ndarray:
    return handle.submit({"x": x}).result(timeout=TIMEOUT_S)["y"]


def on_cpu(net, x) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


# ---- serving ----------------------------------------------------------------------------
def test_fixed_graphs_answer_bitwise_alike_at_every_batch_size(engine, rng, mlp):
    path, net = mlp
    backend = cuda_backend(path, cuda_graphs="fixed")
    handle = engine.load(mlp_config(), backend)
    assert handle.config.instances == 2  # unset: 2 on a GPU
    x = rng.standard_normal((MAX_BATCH, IN)).astype(np.float32)
    whole = infer(handle, x)
    alone = np.concatenate([infer(handle, x[i:i + 1]) for i in range(MAX_BATCH)])
    parts = np.concatenate([infer(handle, x[:5]), infer(handle, x[5:12]), infer(handle, x[12:])])
    assert whole.dtype == np.float32 and whole.shape == (MAX_BATCH, OUT)
    close(whole, on_cpu(net, x))
    stats = backend.cuda_graph_stats()
    assert stats["capture_failures"] == 0 and 1 <= stats["graphs_captured"] <= 2, stats  # one per executor
    assert stats["graph_replays"] == 1 + MAX_BATCH + 3 and stats["eager_runs"] == 0, stats
    assert whole.tobytes() == alone.tobytes(), "rows differ between a 16-row batch and 1-row batches"
    assert whole.tobytes() == parts.tobytes(), "rows differ between a 16-row batch and 5/7/4-row batches"


@pytest.mark.parametrize("mode", ["off", "buckets", "fixed"])
def test_every_graph_mode_answers_like_torch_on_the_cpu(engine, rng, mlp, mode):
    path, net = mlp
    backend = cuda_backend(path, cuda_graphs=mode)
    handle = engine.load(mlp_config(), backend)
    for rows in (1, 2, 3, 5, 8, 13, 16, 20, 33):  # 20 and 33: split into batches of at most 16
        x = rng.standard_normal((rows, IN)).astype(np.float32)
        close(infer(handle, x), on_cpu(net, x))
    stats = backend.cuda_graph_stats()
    assert stats["mode"] == mode and stats["capture_failures"] == 0, stats
    if mode == "off":
        assert stats["graphs_captured"] == 0 and stats["graph_replays"] == 0 and stats["eager_runs"] >= 9, stats
    else:
        assert stats["graphs_captured"] >= 1 and stats["graph_replays"] >= 9 and stats["eager_runs"] == 0, stats
    assert handle.stats()["gpu_memory_bytes"] > 0  # the core's buffers at least


def test_isolated_model_with_fused_preprocessing(engine, rng, mlp):
    path, net = mlp
    mean, std = np.float32(3.0), np.float32(2.0)
    config = mlp_config(gpu={"isolation": "isolated"},
                        preprocessing={"x": il.TabularPreprocess(mean=(float(mean),), std=(float(std),))})
    handle = engine.load(config, cuda_backend(path))
    x = (rng.standard_normal((7, IN)) * 4 + 3).astype(np.float32)
    close(infer(handle, x), on_cpu(net, (x - mean) / std))


def test_a_failing_batch_is_internal_and_the_model_serves_on(engine, rng, tmp_path):
    path = save(Picky(), tmp_path / "picky.pt")
    config = il.ModelConfig(name="picky", inputs=[("x", "float32", (-1, 4))], outputs=[("y", "float32", (-1, 4))],
                            batching=il.BatchingConfig(max_batch_size=8))
    handle = engine.load(config, cuda_backend(path, cuda_graphs="off"))
    with pytest.raises(InternalError, match="input above 1000"):
        handle.submit({"x": np.full((1, 4), 5000.0, np.float32)}).result(timeout=TIMEOUT_S)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(handle.submit({"x": x}).result(timeout=TIMEOUT_S)["y"], x * 2)


def test_out_of_memory_at_load_is_resource_exhausted(engine, tmp_path):
    torch.manual_seed(0)
    path = save(MLP(2048, 4096, 16), tmp_path / "big.pt")  # 32 MiB of weights
    config = il.ModelConfig(name="big", inputs=[("x", "float32", (-1, 2048))], outputs=[("y", "float32", (-1, 16))])
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_reserved(0) + (4 << 20)) / total), 0)
    try:
        with pytest.raises(ResourceExhausted, match=r"model 'big' version 1: cuda:0 ran out of memory while "
                                                    r"loading big.pt"):
            engine.load(config, cuda_backend(path))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
    assert engine.models() == []


# ---- memory, budget, swaps ------------------------------------------------------------------
def package(directory, net, **config) -> str:
    os.makedirs(directory, exist_ok=True)
    save(net, os.path.join(directory, "model.pt"))
    doc = {"name": "mlp", "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, IN]}],
           "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, OUT]}],
           "backend": {"name": "torchscript", "device": "cuda:0"},
           "batching": {"max_batch_size": MAX_BATCH, "max_queue_delay_us": 1000}, **config}
    with open(os.path.join(directory, "model.json"), "w") as f:
        json.dump(doc, f)
    return str(directory)


def test_a_loaded_version_reports_its_gpu_memory(engine, mlp, tmp_path):
    pkg = load_package(package(tmp_path / "p", mlp[1]))
    handle, report = load_into_engine(engine, pkg, 1)
    charged = report.gpu_memory_bytes
    assert charged >= os.path.getsize(tmp_path / "p" / "model.pt") and charged > 0
    assert report.runtime_env["gpu_memory_bytes"] == charged and report.runtime_env["cuda_graphs"] == "buckets"
    assert handle.stats()["gpu_memory_bytes"] == charged == engine.gpu_memory.charged("mlp", 1)
    memory = handle.gpu_memory()
    assert memory["device"] == 0 and memory["device_bytes"] > 0 and memory["charged_bytes"] == charged
    engine.unload("mlp", 1)
    assert engine.gpu_memory.charges() == {}


def test_a_budget_too_small_refuses_the_load(mlp, tmp_path):
    pkg = load_package(package(tmp_path / "p", mlp[1]))
    with il.Engine(gpu_memory_budget=1024) as engine:
        with pytest.raises(LoadFailed) as e:
            load_into_engine(engine, pkg, 1)
        assert engine.models() == []
    msg = str(e.value)
    assert e.value.step == "gpu memory" and e.value.grpc_code == "RESOURCE_EXHAUSTED"
    assert msg.startswith("model 'mlp' version 1: gpu memory: loading needs an estimated ")
    assert "on cuda:0, but the GPU memory budget (--gpu-memory-budget 1.0 KiB) has 1.0 KiB left there " \
           "(in use: nothing)" in msg


def test_a_swap_that_does_not_fit_keeps_the_old_version_serving(rng, mlp, tmp_path):
    registry = Registry.open(str(tmp_path / "repo"))
    v1 = package(tmp_path / "v1", mlp[1])
    torch.manual_seed(1)
    v2 = package(tmp_path / "v2", MLP().eval())  # other weights: another version
    x = rng.standard_normal((3, IN)).astype(np.float32)
    try:
        push(registry, v1, name="mlp", live=True)
        with il.Service(str(tmp_path / "repo"), poll_interval_s=0, engine=il.Engine()) as svc:
            before = svc.infer("mlp", {"x": x})
            assert before.version == 1
            charged = svc.engine.gpu_memory.charged("mlp", 1)
            assert charged and charged > 0
            push(registry, v2, name="mlp", live=True)
            need = estimate_load(load_package(v2).config, os.path.getsize(os.path.join(v2, "model.pt")), 0).total
            svc.engine.gpu_memory.limit_bytes = charged + need - 1  # v2 fits alone, not beside v1
            svc.models.sync_blocking()
            after = svc.infer("mlp", {"x": x})
            assert after.version == 1
            np.testing.assert_allclose(after["y"], before["y"], rtol=1e-5, atol=1e-6)
            ready, reason = svc.models.readiness("mlp", "2")
            assert not ready and "failed to load" in reason and "--gpu-memory-budget" in reason, reason
            assert "it would replace version 1 of 'mlp', which keeps serving" in reason, reason
            assert svc.engine.models() == [("mlp", 1)]
    finally:
        registry.close()


def test_a_failed_capture_falls_back_to_eager(engine, rng, tmp_path):
    """Picky's check synchronises, which a CUDA graph cannot capture: its batches must still be right."""
    path = save(Picky(), tmp_path / "picky.pt")
    config = il.ModelConfig(name="picky", inputs=[("x", "float32", (-1, 4))], outputs=[("y", "float32", (-1, 4))],
                            batching=il.BatchingConfig(max_batch_size=8))
    backend = cuda_backend(path, cuda_graphs="buckets")
    handle = engine.load(config, backend)
    for rows in (1, 3, 8, 2, 5):
        x = rng.standard_normal((rows, 4)).astype(np.float32)
        np.testing.assert_array_equal(handle.submit({"x": x}).result(timeout=TIMEOUT_S)["y"], x * 2)
    stats = backend.cuda_graph_stats()
    assert stats["capture_failures"] >= 1 and stats["eager_runs"] == 5 and stats["graph_replays"] == 0, stats
    # torch leaves the device's default generator in capture mode when ending a failed capture
    # raises; the backend releases it, so random ops in the same process still work.
    torch = pytest.importorskip("torch")
    assert torch.randn(4, device="cuda").shape == (4,)
