"""The registry end to end: packages, push/load through real runtimes, the CLI."""

import json
import os
import re
import shutil
import stat

import numpy as np
import pytest

import inferline as il
from inferline.cli import main
from inferline.demo_models import demo_package_path
from inferline.registry import Registry, TamperedArtifact
from inferline.models import loader
from inferline.models.loader import GoldenMismatch, LoadFailed
from inferline.models.package import load_package
from inferline.models.service import load_version, open_registry, push


def cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def copy_demo(tmp_path, name="digits-mlp", dest="pkg"):
    target = tmp_path / dest
    shutil.copytree(demo_package_path(name), target)
    return target


def edit_config(pkg, **changes):
    path = pkg / "model.json"
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def test_default_repository_is_seeded_and_named_one_starts_empty(capsys, repo, home):
    code, out, _ = cli(capsys, "models", "list")
    assert code == 0 and "digits-mlp" in out and "digits-logreg" in out
    assert (home / ".inferline" / "repository" / "registry.db").exists()
    code, out, _ = cli(capsys, "models", "list", "--repository", repo)
    assert code == 0 and "digits" not in out


def test_push_list_show_promote_rollback_set_fallback_gc(capsys, repo, tmp_path):
    assert cli(capsys, "models", "push", demo_package_path("digits-logreg"), "--repository", repo)[1] == "digits-logreg:1\n"
    assert cli(capsys, "models", "push", demo_package_path("digits-mlp"), "--repository", repo)[1] == "digits-mlp:1\n"
    # identical content: the same version
    assert cli(capsys, "models", "push", demo_package_path("digits-mlp"), "--repository", repo)[1] == "digits-mlp:1\n"
    # a second version (different batching) is staged, not live
    pkg = copy_demo(tmp_path)
    edit_config(pkg, batching={"max_batch_size": 16, "max_queue_delay_us": 1000})
    assert cli(capsys, "models", "push", str(pkg), "--repository", repo)[1] == "digits-mlp:2\n"
    show = json.loads(cli(capsys, "models", "show", "digits-mlp", "--repository", repo)[1])
    assert show["version"] == 1 and show["is_live"] and show["fallback_id"] == "digits-logreg"
    assert show["runtime_env"]["backend"] == "onnxruntime" and "onnxruntime" in show["runtime_env"]
    assert len(show["fingerprint"]["sha256"]) == 64 and show["fingerprint"]["batch_invariant"] is True
    assert show["model_load_time_s"] > 0

    assert cli(capsys, "models", "promote", "digits-mlp:2", "--repository", repo)[1] == "digits-mlp:2\n"
    assert json.loads(cli(capsys, "models", "show", "digits-mlp", "--repository", repo)[1])["version"] == 2
    assert cli(capsys, "models", "rollback", "digits-mlp", "--repository", repo)[1] == "digits-mlp:1\n"
    out = cli(capsys, "models", "set-fallback", "digits-mlp:2", "--to", "digits-logreg:1", "--repository", repo)[1]
    assert out == "digits-mlp:2 -> digits-logreg:1\n"
    code, out, _ = cli(capsys, "models", "list", "--repository", repo)
    lines = [line.split() for line in out.splitlines()[1:]]
    assert [(cols[0], cols[1], cols[2]) for cols in lines] == [
        ("digits-logreg", "1", "live"), ("digits-mlp", "1", "live"), ("digits-mlp", "2", "retired")]
    assert cli(capsys, "models", "gc", "--repository", repo)[0] == 0


def test_pushed_version_serves_through_the_engine(repo):
    registry = open_registry(repo)
    push(registry, demo_package_path("digits-logreg"))
    record = push(registry, demo_package_path("digits-mlp"))
    with il.Engine() as engine:
        handle, report = load_version(engine, registry, record)
        golden = np.load(os.path.join(demo_package_path("digits-mlp"), "golden.npz"))
        out = handle.infer({"pixels": golden["inputs/pixels"]})
        np.testing.assert_allclose(out["logits"], golden["outputs/logits"], rtol=1e-4, atol=1e-4)
        assert (out["label"] == golden["outputs/label"]).all()
    assert registry.get("digits-mlp").model_load_time_s == pytest.approx(report.model_load_time_s)


def test_fingerprint_equal_across_two_loads(repo):
    registry = open_registry(repo)
    record = push(registry, demo_package_path("digits-logreg"))
    prints = []
    for _ in range(2):
        with il.Engine() as engine:
            prints.append(load_version(engine, registry, record)[1].fingerprint)
    assert prints[0]["sha256"] == prints[1]["sha256"] == record.fingerprint["sha256"]
    assert prints[0]["batch_invariant"]


def test_bare_onnx_file_serves_with_one_command(capsys, repo, tmp_path):
    bare = tmp_path / "scorer.onnx"
    shutil.copy(os.path.join(demo_package_path("digits-logreg"), "model.onnx"), bare)
    assert cli(capsys, "models", "push", str(bare), "--repository", repo)[1] == "scorer:1\n"
    registry = Registry.open(repo)
    record = registry.get("scorer")
    assert record.config["inputs"] == [{"name": "pixels", "dtype": "float32", "shape": [-1, 64]}]
    with il.Engine() as engine:
        handle, _ = load_version(engine, registry, record)
        assert handle.infer({"pixels": np.zeros((3, 64), np.float32)})["label"].shape == (3, 1)


def test_golden_mismatch_refused_and_leaves_nothing(repo, tmp_path):
    pkg = copy_demo(tmp_path, "digits-logreg")
    golden = dict(np.load(pkg / "golden.npz"))
    golden["outputs/logits"] = golden["outputs/logits"] + 1.0
    np.savez(pkg / "golden.npz", **golden)
    registry = open_registry(repo)
    with pytest.raises(LoadFailed, match="golden.*'logits' differs") as e:
        push(registry, str(pkg))
    assert e.value.step == "golden"
    assert registry.list() == []
    assert not os.path.exists(os.path.join(repo, "artifacts", "digits-logreg")) or \
        os.listdir(os.path.join(repo, "artifacts", "digits-logreg")) == []


def test_tampered_artifact_refused_at_load_and_failure_recorded(capsys, repo):
    registry = open_registry(repo)
    record = push(registry, demo_package_path("digits-logreg"))
    path = os.path.join(registry.fetch(record), "model.onnx")
    os.chmod(path, stat.S_IWUSR | stat.S_IRUSR)
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with il.Engine() as engine, pytest.raises(TamperedArtifact, match="model.onnx"):
        load_version(engine, registry, record)


def test_load_failure_is_recorded_and_shown(capsys, repo, tmp_path, monkeypatch):
    registry = open_registry(repo)
    record = push(registry, demo_package_path("digits-logreg"))
    from inferline.models import loader

    def broken(handle, inputs, expected, spec):
        raise GoldenMismatch("golden output 'logits' differs: simulated hardware drift")

    monkeypatch.setattr(loader, "check_golden", broken)
    with il.Engine() as engine, pytest.raises(LoadFailed, match="simulated hardware drift"):
        load_version(engine, registry, record)
        assert engine.models() == []
    shown = json.loads(cli(capsys, "models", "show", "digits-logreg:1", "--repository", repo)[1])
    assert "simulated hardware drift" in shown["failure"]


@pytest.mark.parametrize("change, match", [
    ({"inputs": [{"name": "pixels", "dtype": "float32"}]}, r"field inputs.0: 'shape' is a required property"),
    ({"inputs": [{"name": "pixels", "dtype": "complex64", "shape": [-1, 64]}]}, r"unknown dtype|unsupported dtype"),
    ({"inputs": [{"name": "pixels", "dtype": "float32", "shape": [-1, 32]}]},
     r"input 'pixels' is float32 \[-1, 32\] in the config"),
    ({"backend": {"name": "tensorflow"}}, r"field backend.name"),
    ({"batching": {"max_batch_size": 0}}, r"field batching.max_batch_size"),
    ({"fallback": "no-such-model"}, r"fallback 'no-such-model' does not exist"),
    ({"fallback": "digits-mlp"}, r"refers to the model itself"),
    ({"name": "../escape"}, r"invalid model name '\.\./escape'"),
    ({"name": "a/b"}, r"invalid model name 'a/b'"),
    ({"golden": {"file": "../golden.npz"}}, r"golden.file"),
    ({"surprise": 1}, r"Additional properties are not allowed \('surprise'"),
])
def test_bad_packages_refused_naming_the_field(capsys, repo, tmp_path, change, match):
    pkg = copy_demo(tmp_path)
    edit_config(pkg, **{"preprocessing": None, "fallback": None, "golden": None, **change})
    code, out, err = cli(capsys, "models", "push", str(pkg), "--repository", repo)
    assert code == 1 and out == ""
    assert re.search(match, err), err
    assert Registry.open(repo).list() == []


def test_missing_artifact_and_unparseable_config(capsys, repo, tmp_path):
    pkg = copy_demo(tmp_path)
    os.remove(pkg / "model.onnx")
    code, _, err = cli(capsys, "models", "push", str(pkg), "--repository", repo)
    assert code == 1 and "artifact 'model.onnx' is missing" in err
    pkg2 = copy_demo(tmp_path, dest="pkg2")
    (pkg2 / "model.json").write_text("{not json")
    code, _, err = cli(capsys, "models", "push", str(pkg2), "--repository", repo)
    assert code == 1 and "cannot parse" in err
    code, _, err = cli(capsys, "models", "push", str(tmp_path / "nothing-here"), "--repository", repo)
    assert code == 1 and "does not exist" in err
    code, _, err = cli(capsys, "models", "push", demo_package_path("digits-mlp"), "--name", "../x",
                       "--repository", repo)
    assert code == 1 and "--name" in err


def test_unreachable_repository_url_is_a_clear_error(capsys, monkeypatch):
    pytest.importorskip("s3fs")
    monkeypatch.setenv("INFERLINE_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    code, _, err = cli(capsys, "models", "list", "--repository", "s3://nobucket/prefix")
    assert code == 1 and "s3://nobucket/prefix" in err and "Traceback" not in err


def test_torchscript_package_end_to_end(repo, tmp_path):
    torch = pytest.importorskip("torch")
    import warnings

    class Affine(torch.nn.Module):
        def forward(self, x):
            return x * 2.0 + 1.0, x.sum(dim=1, keepdim=True)

    pkg = tmp_path / "ts"
    pkg.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(Affine()), str(pkg / "model.pt"))
    (pkg / "model.yaml").write_text(
        "name: affine\nbackend: {name: torchscript, threads: 1}\n"
        "inputs: [{name: x, dtype: float32, shape: [-1, 3]}]\n"
        "outputs: [{name: y, dtype: float32, shape: [-1, 3]}, {name: s, dtype: float32, shape: [-1, 1]}]\n"
        "batching: {max_batch_size: 8, max_queue_delay_us: 500}\n")
    registry = open_registry(repo)
    record = push(registry, str(pkg))
    assert record.runtime_env["backend"] == "torchscript"
    with il.Engine() as engine:
        handle, _ = load_version(engine, registry, record)
        x = np.arange(6, dtype=np.float32).reshape(2, 3)
        out = handle.infer({"x": x})
        np.testing.assert_array_equal(out["y"], x * 2 + 1)
        np.testing.assert_array_equal(out["s"], x.sum(axis=1, keepdims=True))


def test_package_reads_yaml_and_labels(tmp_path):
    pkg = copy_demo(tmp_path)
    data = json.loads((pkg / "model.json").read_text())
    os.remove(pkg / "model.json")
    import yaml
    (pkg / "model.yaml").write_text(yaml.safe_dump(data))
    p = load_package(str(pkg))
    assert p.name == "digits-mlp" and p.labels["dataset"] == "sklearn digits" and p.fallback == "digits-logreg"


def test_push_fallback_follows_the_registry_rule(capsys, repo, tmp_path):
    """The one fallback rule on the push path (set-fallback's is in test_registry_store): an
    older version of the model itself is a valid fallback; the model itself unpinned is not."""
    registry = open_registry(repo)
    first = push(registry, demo_package_path("digits-logreg"))
    pkg = copy_demo(tmp_path, "digits-logreg")
    edit_config(pkg, labels={"retrained": "yes"}, fallback="digits-logreg:1")
    second = push(registry, str(pkg))
    assert (second.version, second.fallback_id) == (2, first.ref)
    pkg3 = copy_demo(tmp_path, "digits-logreg", dest="pkg3")
    edit_config(pkg3, labels={"retrained": "again"})
    code, _, err = cli(capsys, "models", "push", str(pkg3), "--fallback", "digits-logreg", "--repository", repo)
    assert code == 1 and "must name a version" in err
    code, _, err = cli(capsys, "models", "push", str(pkg3), "--fallback", "digits-logreg:9", "--repository", repo)
    assert code == 1 and "fallback 'digits-logreg:9' does not exist" in err
    assert [r.version for r in registry.list("digits-logreg")] == [1, 2]
    registry.close()


def test_push_hashes_each_file_once(monkeypatch, repo):
    """A push hashes its files once (for the identical-push lookup and the store alike); the copy
    then hashes what it writes, which is how a file changing meanwhile is caught."""
    from inferline.registry import _artifacts

    calls = []
    real = _artifacts.hash_file
    monkeypatch.setattr(_artifacts, "hash_file", lambda path: calls.append(path) or real(path))
    registry = open_registry(repo)
    record = push(registry, demo_package_path("digits-logreg"))
    assert sorted(calls) == sorted(set(calls)) and len(calls) == len(load_package(record.model_uri).files)
    registry.close()


def test_fallback_cycles_refused_by_push_and_set_fallback(capsys, repo, tmp_path):
    """digits-mlp's package falls back to "digits-logreg" (its live version): a fallback from that
    version back to digits-mlp closes a cycle, whichever command sets it."""
    assert cli(capsys, "models", "push", demo_package_path("digits-logreg"), "--repository", repo)[0] == 0
    assert cli(capsys, "models", "push", demo_package_path("digits-mlp"), "--repository", repo)[0] == 0
    for to in ("digits-mlp:1", "digits-mlp"):
        code, _, err = cli(capsys, "models", "set-fallback", "digits-logreg:1", "--to", to, "--repository", repo)
        assert code == 1 and "fallback cycle: digits-logreg:1 -> digits-mlp:1 -> digits-logreg:1" in err
    pkg = copy_demo(tmp_path, "digits-logreg")
    edit_config(pkg, labels={"retrained": "yes"})
    code, _, err = cli(capsys, "models", "push", str(pkg), "--fallback", "digits-mlp", "--live", "--repository", repo)
    assert code == 1 and "fallback cycle: digits-logreg:2 -> digits-mlp:1 -> digits-logreg:2" in err
    # staged, the new version is not what "digits-logreg" means: no cycle
    code, out, _ = cli(capsys, "models", "push", str(pkg), "--fallback", "digits-mlp", "--repository", repo)
    assert code == 0 and out == "digits-logreg:2\n"
    registry = open_registry(repo)
    assert [(r.ref, r.fallback_id) for r in registry.list("digits-logreg")] == [
        ("digits-logreg:1", None), ("digits-logreg:2", "digits-mlp")]
    registry.close()


def _batch_dependent_package(tmp_path, cache):
    """A TorchScript model whose rows depend on the rest of the batch (x minus the batch mean)."""
    torch = pytest.importorskip("torch")
    import warnings

    class Centered(torch.nn.Module):
        def forward(self, x):
            return x - x.mean(dim=0, keepdim=True)

    pkg = tmp_path / "centered"
    pkg.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(Centered()), str(pkg / "model.pt"))
    (pkg / "model.json").write_text(json.dumps({
        "name": "centered", "backend": {"name": "torchscript", "threads": 1},
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 3]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 3]}],
        "batching": {"max_batch_size": 8, "max_queue_delay_us": 500}, **({"cache": cache} if cache else {})}))
    return pkg


def test_cache_refused_for_a_version_that_is_not_batch_invariant(capsys, repo, tmp_path):
    registry = open_registry(repo)
    plain = push(registry, str(_batch_dependent_package(tmp_path / "a", None)))
    assert plain.fingerprint["batch_invariant"] is False  # loads without a cache
    pkg = _batch_dependent_package(tmp_path / "b", {"max_bytes": 1 << 20, "mode": "last_resort"})
    with pytest.raises(LoadFailed, match=r"^model 'centered' version 1: cache: cache.max_bytes = 1048576 enables "
                                         r"a prediction cache, but the fingerprint says batch_invariant false") as e:
        push(registry, str(pkg))
    assert e.value.step == "cache" and [r.version for r in registry.list("centered")] == [1]
    # a stored version whose package asks for a cache fails to load, naming the model and version
    with il.Engine() as engine:
        with pytest.raises(LoadFailed, match=r"^model 'centered' version 2: cache: .*batch_invariant false"):
            loader.load_into_engine(engine, load_package(str(pkg)), version=2)
        assert engine.models() == []  # unloaded again
    code, _, err = cli(capsys, "models", "push", str(pkg), "--repository", repo)
    assert code == 1 and "model 'centered' version 1: cache:" in err and "batch_invariant false" in err
    registry.close()


def test_cache_accepted_for_a_batch_invariant_version(repo, tmp_path):
    pkg = copy_demo(tmp_path)
    edit_config(pkg, cache={"max_bytes": 1 << 20}, fallback=None)
    registry = open_registry(repo)
    record = push(registry, str(pkg))
    assert record.fingerprint["batch_invariant"] is True and record.config["cache"] == {"max_bytes": 1 << 20}
    registry.close()
