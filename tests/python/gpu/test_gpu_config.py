"""The CPU side of the GPU serving path: the gpu config section and cuda_graphs (dataclasses, core
dict, package schema), refusals that need no device, out-of-memory errors, and the
--gpu-memory-budget flag. Runs everywhere; a test that expects no device skips where one is."""

import json

import pytest

import inferline as il
from inferline.backends import BackendSpec, make_backend
from inferline.backends import gpu
from inferline.cli import build_parser
from inferline.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from inferline.models.loader import LoadFailed
from inferline.models.package import load_package
from inferline.server.settings import ServerSettings, SettingsError

from gpu.device import gpu_missing


def config(**kw):
    return il.ModelConfig(name="m", inputs=[("x", "float32", (-1, 4))], outputs=[("y", "float32", (-1, 3))], **kw)


# ---- config -------------------------------------------------------------------------------
def test_the_core_gets_gpu_only_for_a_model_on_a_gpu():
    shared, isolated = config(), config(gpu={"isolation": "isolated"})
    assert shared.gpu == il.config.GpuConfig("shared") and "gpu" not in shared.to_core()
    assert "gpu" not in isolated.to_core()  # on the CPU the section is ignored
    assert shared.to_core(gpu_device=0)["gpu"] == {"device": 0, "high_priority": False}
    assert isolated.to_core(gpu_device=3)["gpu"] == {"device": 3, "high_priority": True}


def test_unset_instances_are_one_on_the_cpu_and_two_on_a_gpu():
    c = config()
    assert c.instances is None
    assert (c.to_core()["instances"], c.to_core(gpu_device=0)["instances"]) == (1, 2)
    assert (c.placed(None).instances, c.placed(0).instances) == (1, 2)
    assert config(instances=1).to_core(gpu_device=0)["instances"] == 1  # set explicitly: kept
    assert config(instances=3).placed(0).instances == 3


def test_the_engine_resolves_instances_for_a_cpu_model(engine):
    handle = engine.load(config(), lambda batch: {"y": batch["x"][:, :3]})
    assert handle.config.instances == 1 and engine.model("m").config.instances == 1


@pytest.mark.parametrize("value", ["dedicated", 1, None])
def test_isolation_must_be_shared_or_isolated(value):
    with pytest.raises(InvalidArgument, match=r"model 'm' version 1: gpu.isolation: .* is not one of 'shared', "
                                              r"'isolated'"):
        config(gpu={"isolation": value})
    with pytest.raises(InvalidArgument, match=r"gpu: unknown field\(s\) device"):
        config(gpu={"device": 0})


def _package(tmp_path, **extra):
    doc = {"inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}],
           "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 4]}], **extra}
    (tmp_path / "model.json").write_text(json.dumps(doc))
    (tmp_path / "model.pt").write_bytes(b"")
    return str(tmp_path)


def test_a_package_takes_gpu_and_cuda_graphs(tmp_path):
    pkg = load_package(_package(tmp_path, backend={"name": "torchscript", "device": "cuda:1", "cuda_graphs": "fixed"},
                                gpu={"isolation": "isolated"}))
    assert pkg.backend.cuda_graphs == "fixed" and pkg.config.gpu.isolation == "isolated"
    assert pkg.data["gpu"] == {"isolation": "isolated"}


@pytest.mark.parametrize("extra, message", [
    ({"gpu": {"isolation": "alone"}}, "field gpu.isolation: 'alone' is not one of"),
    ({"gpu": {"priority": 1}}, "field gpu: Additional properties are not allowed"),
    ({"backend": {"name": "torchscript", "cuda_graphs": "always"}},
     "field backend.cuda_graphs: 'always' is not one of"),
])
def test_the_package_schema_refuses_bad_gpu_settings(tmp_path, extra, message):
    with pytest.raises(InvalidArgument, match=message):
        load_package(_package(tmp_path, **extra))


def test_cuda_graphs_values():
    assert [BackendSpec(cuda_graphs=m).cuda_graphs for m in (None, "off", "buckets", "fixed")] == \
        [None, "off", "buckets", "fixed"]
    with pytest.raises(InvalidArgument, match="backend.cuda_graphs must be off|buckets|fixed, got 'on'"):
        BackendSpec(cuda_graphs="on")


@pytest.mark.parametrize("device, index", [("cpu", None), ("cuda", 0), ("cuda:0", 0), ("cuda:3", 3)])
def test_device_names(device, index):
    assert gpu.cuda_index(device, "w") == index
    assert make_backend(BackendSpec("torchscript", device=device), "model.pt").gpu_device == index


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cpu:0", "cuda:-1"])
def test_bad_device_names(device):
    with pytest.raises(InvalidArgument, match="w: backend.device must be 'cpu', 'cuda' or 'cuda:N'"):
        gpu.cuda_index(device, "w")
    assert make_backend(BackendSpec("torchscript", device=device), "model.pt").gpu_device is None  # create() says


def test_a_gpu_model_needs_fixed_dims():
    gpu.check_fixed_dims(config())
    free = il.ModelConfig(name="m", inputs=[("x", "float32", (-1, -1))], outputs=[("y", "float32", (-1, 2, -1))])
    with pytest.raises(InvalidArgument, match=r"model 'm' version 1: a model on a GPU needs fixed dims past dim 0 "
                                              r".*free dims in input 'x' float32 \[-1, -1\], output 'y' float32 "
                                              r"\[-1, 2, -1\]"):
        gpu.check_fixed_dims(free)


# ---- refusals without a device --------------------------------------------------------------
torch_needed = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.(script|save)` is deprecated:DeprecationWarning")


@pytest.fixture
def scripted(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    path = str(tmp_path / "model.pt")
    torch.jit.save(torch.jit.script(torch.nn.Linear(4, 3)), path)
    return path


@torch_needed
def test_cuda_graphs_on_the_cpu_are_refused(engine, scripted):
    with pytest.raises(InvalidArgument, match="model 'm' version 1: backend.cuda_graphs = 'fixed' needs "
                                              "backend.device 'cuda' or 'cuda:N' \\(it is 'cpu'\\)"):
        engine.load(config(), make_backend(BackendSpec("torchscript", cuda_graphs="fixed"), scripted))
    engine.load(config(), make_backend(BackendSpec("torchscript", cuda_graphs="off"), scripted))  # harmless


@torch_needed
def test_a_cuda_model_without_a_device_is_refused_naming_what_is_missing(engine, scripted):
    if not gpu_missing():
        pytest.skip("a usable CUDA device is present")
    with pytest.raises(FailedPrecondition, match=r"model 'm' version 1: backend.device is 'cuda:0' but (torch .* "
                                                 r"sees no CUDA device|.+)"):
        engine.load(config(), make_backend(BackendSpec("torchscript", device="cuda:0"), scripted))
    assert engine.models() == []


def test_the_cores_gpu_requirement_names_what_is_missing():
    status = gpu.core_cuda_status()
    if status["devices"] > 0:
        pytest.skip("the core sees a CUDA device")
    assert status["reason"]
    with pytest.raises(FailedPrecondition) as e:
        gpu.require_core_device(0, "model 'm' version 1")
    assert str(e.value) == f"model 'm' version 1: backend.device is 'cuda:0' but {status['reason']}"


# ---- out of memory ----------------------------------------------------------------------
class OutOfMemoryError(RuntimeError):
    """Named like torch's."""


def test_out_of_memory_is_resource_exhausted():
    assert gpu.is_out_of_memory(OutOfMemoryError("CUDA error"))
    assert gpu.is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    try:
        try:
            raise OutOfMemoryError("Tried to allocate 20.00 MiB")
        except OutOfMemoryError as inner:
            raise RuntimeError("The following operation failed in the TorchScript interpreter") from inner
    except RuntimeError as outer:
        assert gpu.is_out_of_memory(outer)
    assert not gpu.is_out_of_memory(ValueError("shapes do not match"))
    e = gpu.out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore"),
                          "model 'm' version 1", 0, "loading model.pt")
    assert isinstance(e, ResourceExhausted) and e.grpc_code == "RESOURCE_EXHAUSTED"
    assert str(e).startswith("model 'm' version 1: cuda:0 ran out of memory while loading model.pt")
    assert "CUDA out of memory. Tried to allocate 2.00 GiB; unload other versions" in str(e)
    failed = LoadFailed("model 'm' version 1: create backend: " + str(e), "backend", e)
    assert (failed.grpc_code, failed.http_status, failed.step) == ("RESOURCE_EXHAUSTED", 503, "backend")
    assert LoadFailed("x", "golden", InvalidArgument("y")).grpc_code == "FAILED_PRECONDITION"


def test_format_bytes():
    assert [gpu.format_bytes(n) for n in (0, 1023, 1536, 5 << 20, 3 << 30)] == \
        ["0 B", "1023 B", "1.5 KiB", "5.0 MiB", "3.0 GiB"]


# ---- the flag -----------------------------------------------------------------------------
def test_the_serve_flag_takes_a_size():
    parse = build_parser().parse_args
    assert parse(["serve"]).gpu_memory_budget is None
    assert parse(["serve", "--gpu-memory-budget", "40GiB"]).gpu_memory_budget == 40 << 30
    assert parse(["serve", "--gpu-memory-budget", "1500000"]).gpu_memory_budget == 1_500_000


def test_a_bad_flag_value_is_one_line(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--gpu-memory-budget", "lots"])
    err = capsys.readouterr().err
    assert "argument --gpu-memory-budget: 'lots' is not a size: give bytes, or a number with K, M, G" in err


def test_the_environment_variable_and_precedence():
    env = {"INFERLINE_GPU_MEMORY_BUDGET": "512MiB"}
    assert ServerSettings.from_env(environ=env).gpu_memory_budget == 512 << 20
    assert ServerSettings.from_env(environ=env, gpu_memory_budget=1 << 30).gpu_memory_budget == 1 << 30
    assert ServerSettings.from_env(environ={}).gpu_memory_budget is None
    with pytest.raises(SettingsError, match=r"INFERLINE_GPU_MEMORY_BUDGET='8 apples': '8 apples' is not a size"):
        ServerSettings.from_env(environ={"INFERLINE_GPU_MEMORY_BUDGET": "8 apples"})
    with pytest.raises(SettingsError, match="--gpu-memory-budget 0: at least 1 byte"):
        ServerSettings(gpu_memory_budget=0).check()


# ---- ONNX Runtime with IO binding (ort_cuda.py: untested on a device, no onnxruntime-gpu here) -----
def test_onnxruntime_on_cuda_is_refused_without_the_cuda_provider(engine):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("the CUDA provider is present")
    from inferline.demo_models import demo_package_path
    pkg = load_package(demo_package_path("digits-logreg"))
    backend = make_backend(BackendSpec(device="cuda:0"), pkg.artifact_path)
    assert backend.gpu_device == (0 if gpu.stream_synchronizer(0) is not None else None)
    assert make_backend(BackendSpec(device="cuda:0", providers=("CUDAExecutionProvider",)), "m.onnx").gpu_device is None
    with pytest.raises(InvalidArgument, match=r"model 'digits-logreg' version 1: backend.providers: "
                                              r"CUDAExecutionProvider not available in this onnxruntime"):
        engine.load(pkg.config, backend)
    with pytest.raises(InvalidArgument, match="backend.cuda_graphs is for the torchscript backend"):
        engine.load(pkg.config, make_backend(BackendSpec(cuda_graphs="fixed"), pkg.artifact_path))
    assert engine.models() == []
