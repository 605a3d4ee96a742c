"""Helpers shared by the test folders (importable: tests/python is on pytest's pythonpath)."""

import os
import shutil

import numpy as np
import pytest

import inferline as il


def make_config(name="m", features=4, max_batch=32, delay_us=2000, outputs=None, **kw):
    outputs = outputs or [("y", "float32", (-1, features))]
    batching = kw.pop("batching", None) or il.BatchingConfig(max_batch_size=max_batch, max_queue_delay_us=delay_us)
    return il.ModelConfig(name=name, inputs=[("x", "float32", (-1, features))], outputs=outputs,
                          batching=batching, **kw)


def rowwise(inputs):
    """A row-independent backend: y = tanh(x) * 3 + row sum, computed per row."""
    x = inputs["x"]
    return {"y": np.tanh(x) * np.float32(3) + x.sum(axis=1, keepdims=True)}


def external_tool(name: str, install: str) -> str:
    """Path of an external program; skip without it, except under CI (env CI set): there, fail."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found ({install}; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message + " -- required in CI")
        pytest.skip(message)
    return path


def interruptible() -> None:
    """`preexec_fn` for a child a test stops with SIGINT (Ctrl-C): SIGINT back to its default.
    A child inherits an ignored SIGINT, and the test run's may be ignored: a shell starts its
    background jobs (`cmd &`) with SIGINT ignored, and Python then leaves it so, without
    KeyboardInterrupt."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
