"""inferline.Service: the same routing and answers as the server, in-process."""

import asyncio
import json
import os
import shutil
import time

import numpy as np
import pytest

import inferline
from inferline import errors
from inferline.demo_models import demo_package_path
from inferline.models.service import open_registry, push
from server_fixtures import make_repository

GOLDEN = np.load(os.path.join(demo_package_path("digits-mlp"), "golden.npz"))
PIXELS = GOLDEN["inputs/pixels"]


def test_default_repository_in_process(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("INFERLINE_REPOSITORY", raising=False)
    with inferline.Service(poll_interval_s=0) as svc:
        answer = svc.infer("digits-mlp", {"pixels": PIXELS})
        np.testing.assert_array_equal(answer["label"], GOLDEN["outputs/label"])
        assert (answer.model, answer.version, answer.routed_to, answer.fallback_reason) == \
            ("digits-mlp", 1, "digits-mlp:1", None)
        assert asyncio.run(svc.infer_async("digits-mlp", {"pixels": PIXELS[:1]}, routing_key="u-1")).version == 1
        with pytest.raises(errors.ModelNotFound, match="'nope'"):
            svc.infer("nope", {"pixels": PIXELS[:1]})
        with pytest.raises(errors.InvalidArgument, match="'pixels'"):
            svc.infer("digits-mlp", {"pixels": PIXELS[:1].astype(np.float64)})


def test_polling_serves_a_new_live_version(tmp_path):
    repo = make_repository(tmp_path)
    with inferline.Service(repo, poll_interval_s=0.1) as svc:
        assert svc.infer("digits-logreg", {"pixels": PIXELS[:1]}).version == 1
        pkg = tmp_path / "v2"
        shutil.copytree(demo_package_path("digits-logreg"), pkg)
        data = json.loads((pkg / "model.json").read_text())
        data["labels"]["note"] = "v2"
        (pkg / "model.json").write_text(json.dumps(data))
        registry = open_registry(repo)
        push(registry, str(pkg), live=True)
        registry.close()
        deadline = time.time() + 30
        while svc.infer("digits-logreg", {"pixels": PIXELS[:1]}).version != 2:
            assert time.time() < deadline, "the new live version was never served"
            time.sleep(0.05)
        assert svc.infer("digits-logreg", {"pixels": PIXELS[:1]}, version=2).routed_to == "digits-logreg:2"


def test_from_model_file_or_package(tmp_path):
    onnx_file = tmp_path / "scorer.onnx"
    shutil.copy(os.path.join(demo_package_path("digits-logreg"), "model.onnx"), onnx_file)
    with inferline.Service.from_model(str(onnx_file)) as svc:  # a bare .onnx: named after its file
        answer = svc.infer("scorer", {"pixels": PIXELS[:3]})
        assert answer.routed_to == "scorer:1" and set(answer.outputs) >= {"logits"}
        private = svc._cleanup
        assert private and os.path.isdir(private)
    assert not os.path.exists(private)  # the private repository goes with the service
    with inferline.Service.from_model(demo_package_path("digits-logreg"), name="mine") as svc:
        assert svc.infer("mine", {"pixels": PIXELS}).routed_to == "mine:1"
    with pytest.raises(errors.FailedPrecondition, match="declares a fallback model"):
        inferline.Service.from_model(demo_package_path("digits-mlp"))  # its fallback is digits-logreg
    with pytest.raises(errors.InvalidArgument, match="no such model file"):
        inferline.Service.from_model(str(tmp_path / "missing.onnx"))
