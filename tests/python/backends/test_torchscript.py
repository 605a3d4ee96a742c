"""TorchScript backend: small scripted modules saved here, served through the engine.

torch 2.9+ deprecates torch.jit.script/save with a DeprecationWarning; the tests build
their models with them, so exactly those two warnings are ignored here. The backend
itself silences the matching torch.jit.load warning (torchscript.py says why).
"""

import asyncio
import pickle
import os
import sys
from typing import Dict, Tuple

import numpy as np
import pytest

import inferline as il
from inferline.backends import BackendSpec, make_backend
from inferline.backends.spec import serving_threads
from inferline.backends.torchscript import TorchScriptBackend
from inferline.errors import FailedPrecondition, InvalidArgument

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.(script|save)` is deprecated:DeprecationWarning")


class TupleNet(torch.nn.Module):
    """(relu(linear(x)), k * 3 + 1): float32 [N, 4] + int64 [N, 2] -> float32 [N, 3], int64 [N, 2]."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, k: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return torch.relu(self.linear(x)), k * 3 + 1


class DictNet(torch.nn.Module):
    """{"y": linear(x), "norm": |x|, "unused": x}: extra keys are ignored."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"y": self.linear(x), "norm": (x * x).sum(dim=1, keepdim=True).sqrt(), "unused": x}


class Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def save(module, path):
    torch.manual_seed(0)
    scripted = torch.jit.script(module)
    torch.jit.save(scripted, str(path))
    return str(path)


@pytest.fixture
def tuple_net(tmp_path):
    torch.manual_seed(0)
    net = TupleNet().eval()
    return save(net, tmp_path / "model.pt"), net


def tuple_config(name="t", **kw):
    return il.ModelConfig(name=name, inputs=[("x", "float32", (-1, 4)), ("k", "int64", (-1, 2))],
                          outputs=[("y", "float32", (-1, 3)), ("c", "int64", (-1, 2))],
                          batching=il.BatchingConfig(max_batch_size=16, max_queue_delay_us=5000), **kw)


@pytest.fixture(autouse=True)
def restore_torch_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def eager(net, x, k):
    with torch.no_grad():
        y, c = net(torch.from_numpy(x), torch.from_numpy(k))
    return y.numpy(), c.numpy()


# ---- end to end -------------------------------------------------------------------------
async def test_tuple_outputs_from_many_tasks(engine, rng, tuple_net):
    path, net = tuple_net
    handle = engine.load(tuple_config(), make_backend(BackendSpec("torchscript"), path))
    xs = [rng.standard_normal((1, 4)).astype(np.float32) for _ in range(200)]
    ks = [rng.integers(-100, 100, (1, 2)).astype(np.int64) for _ in range(200)]
    batched = await asyncio.gather(*(engine.infer_async("t", {"x": x, "k": k}) for x, k in zip(xs, ks)))
    assert handle.stats()["mean_batch_size"] > 1
    for x, k, r in zip(xs, ks, batched):
        y_ref, c_ref = eager(net, x, k)
        np.testing.assert_allclose(r["y"], y_ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(r["c"], c_ref)
        assert r["y"].dtype == np.float32 and r["c"].dtype == np.int64
    for x, k, r in list(zip(xs, ks, batched))[:30]:  # one row at a time gives the same answers
        alone = engine.infer("t", {"x": x, "k": k})
        np.testing.assert_allclose(alone["y"], r["y"], rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(alone["c"], r["c"])


def test_dict_outputs_by_name(engine, rng, tmp_path):
    torch.manual_seed(0)
    net = DictNet().eval()
    path = save(net, tmp_path / "dict.pt")
    config = il.ModelConfig(name="d", inputs=[("x", "float32", (-1, 4))],
                            outputs=[("norm", "float32", (-1, 1)), ("y", "float32", (-1, 2))])
    engine.load(config, make_backend(BackendSpec("torchscript", threads=1), path))
    x = rng.standard_normal((5, 4)).astype(np.float32)
    out = engine.infer("d", x)
    assert set(out) == {"norm", "y"}
    with torch.no_grad():
        ref = net(torch.from_numpy(x))
    np.testing.assert_allclose(out["y"], ref["y"].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["norm"], np.linalg.norm(x, axis=1, keepdims=True), rtol=1e-5)


def test_identity_output_is_a_copy_of_the_batch(engine, rng, tmp_path):
    path = save(Identity(), tmp_path / "id.pt")
    config = il.ModelConfig(name="id", inputs=[("x", "float32", (-1, 3))], outputs=[("x_out", "float32", (-1, 3))])
    engine.load(config, make_backend(BackendSpec("torchscript"), path))
    xs = [rng.standard_normal((2, 3)).astype(np.float32) for _ in range(20)]
    futures = [engine.submit("id", x) for x in xs]
    for x, f in zip(xs, futures):
        np.testing.assert_array_equal(f.result(timeout=10)["x_out"], x)


# ---- signature checks ---------------------------------------------------------------------
@pytest.mark.parametrize("outputs, expected", [
    ([("y", "float64", (-1, 3)), ("c", "int64", (-1, 2))],
     "output 'y' is float64 [-1, 3] in the config but model.pt returned float32 [1, 3] for a 1-row batch"),
    ([("y", "float32", (-1, 5)), ("c", "int64", (-1, 2))],
     "output 'y' is float32 [-1, 5] in the config but model.pt returned float32 [1, 3] for a 1-row batch"),
    ([("y", "float32", (-1, 3)), ("c", "int64", (-1, 2, 1))],
     "output 'c' is int64 [-1, 2, 1] in the config but model.pt returned int64 [1, 2] for a 1-row batch"),
    ([("y", "float32", (-1, 3))], "the module returned 2 output(s), the config declares 1 ('y')"),
])
def test_output_mismatch_is_refused_naming_the_tensor(engine, tuple_net, outputs, expected):
    config = il.ModelConfig(name="t", version=3, inputs=[("x", "float32", (-1, 4)), ("k", "int64", (-1, 2))],
                            outputs=outputs)
    with pytest.raises(InvalidArgument) as e:
        engine.load(config, make_backend(BackendSpec("torchscript"), tuple_net[0]))
    assert str(e.value).startswith("model 't' version 3: ")
    assert expected in str(e.value)
    assert "'x' float32 [1, 4], 'k' int64 [1, 2]" in str(e.value)  # the inputs it was run on
    assert engine.models() == []


def test_inputs_the_module_cannot_take_are_refused(engine, tuple_net):
    config = il.ModelConfig(name="t", inputs=[("x", "float32", (-1, 5)), ("k", "int64", (-1, 2))],
                            outputs=[("y", "float32", (-1, 3)), ("c", "int64", (-1, 2))])
    with pytest.raises(InvalidArgument) as e:
        engine.load(config, make_backend(BackendSpec("torchscript"), tuple_net[0]))
    msg = str(e.value)
    assert msg.startswith("model 't' version 1: model.pt failed on a 1-row zero batch of the declared inputs "
                          "('x' float32 [1, 5], 'k' int64 [1, 2])")
    assert "1x5" in msg and "4x3" in msg  # torch's own words on the shapes


def test_missing_dict_key_is_refused(engine, tmp_path):
    path = save(DictNet(), tmp_path / "dict.pt")
    config = il.ModelConfig(name="d", inputs=[("x", "float32", (-1, 4))], outputs=[("logits", "float32", (-1, 2))])
    with pytest.raises(InvalidArgument, match=r"dict has no output\(s\) 'logits' \(its keys: 'y', 'norm', 'unused'\)"):
        engine.load(config, make_backend(BackendSpec("torchscript"), path))


# ---- never unpickle ----------------------------------------------------------------------------
def test_loading_never_unpickles(engine, rng, tmp_path, tuple_net, monkeypatch):
    pickled = tmp_path / "weights.pt"
    torch.save({"linear.weight": torch.zeros(3, 4), "note": "a plain pickled object"}, str(pickled))

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling was attempted")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    with pytest.raises(InvalidArgument) as e:
        engine.load(tuple_config(), make_backend(BackendSpec("torchscript"), pickled))
    msg = str(e.value)
    assert f"model 't' version 1: {pickled} is not a TorchScript archive" in msg
    assert "inferline never unpickles" in msg
    # a real TorchScript archive still loads and serves with torch.load and pickle out of reach
    engine.load(tuple_config(), make_backend(BackendSpec("torchscript"), tuple_net[0]))
    x, k = np.ones((1, 4), np.float32), np.ones((1, 2), np.int64)
    np.testing.assert_array_equal(engine.infer("t", {"x": x, "k": k})["c"], [[4, 4]])


def test_missing_file_is_refused(engine, tmp_path):
    with pytest.raises(InvalidArgument, match=r"TorchScript model .*nope.pt does not exist"):
        engine.load(tuple_config(), make_backend(BackendSpec("torchscript"), tmp_path / "nope.pt"))


# ---- settings -------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_device_is_a_failed_precondition(tuple_net):
    with pytest.raises(FailedPrecondition, match="backend.device is 'cuda:0' but torch .* sees no CUDA device"):
        make_backend(BackendSpec("torchscript", device="cuda:0"), tuple_net[0]).create(tuple_config())


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cpu:0"])
def test_bad_device_names_are_refused(tuple_net, device):
    with pytest.raises(InvalidArgument, match="backend.device must be 'cpu', 'cuda' or 'cuda:N'"):
        make_backend(BackendSpec("torchscript", device=device), tuple_net[0]).create(tuple_config())


def test_threads_and_describe(tuple_net):
    backend = make_backend(BackendSpec("torchscript", threads=1), tuple_net[0])
    assert isinstance(backend, TorchScriptBackend)
    torch.set_num_threads(2)
    backend.create(tuple_config())
    assert torch.get_num_threads() == 1
    assert not backend.module.training
    assert backend.describe() == {"backend": "torchscript", "torch": torch.__version__, "device": "cpu",
                                  "numpy": np.__version__}


def test_unset_threads_get_the_serving_default(tuple_net, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        make_backend(BackendSpec("torchscript"), tuple_net[0]).create(tuple_config())
        assert torch.get_num_threads() == serving_threads(16) == 4  # not torch's every core
    finally:
        torch.set_num_threads(before)


def test_missing_torch_is_a_failed_precondition(monkeypatch, tuple_net):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(FailedPrecondition, match=r"pip install 'inferline\[torch\]'"):
        make_backend(BackendSpec("torchscript"), tuple_net[0]).create(tuple_config())
