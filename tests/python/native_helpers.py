"""Helpers of the tests of _core.NativeFrontend (test_native_binding.py, test_native_tap.py; their
fixtures `router` and `start` are in server/conftest.py): model "a" computes y = 2x."""

from __future__ import annotations

import numpy as np


def double(inputs):
    return {"y": inputs["x"] * np.float32(2)}


def infer(client, x, model="a", **kw):
    import tritonclient.grpc as tc

    inp = tc.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp], **kw)


def rows(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)
