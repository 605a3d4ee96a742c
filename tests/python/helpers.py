"""Helpers shared by the test folders (importable: tests/python is on pytest's pythonpath)."""

import os
import shutil
import sys

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


def process_exited(pid: int) -> bool:
    """True once `pid` has exited (a zombie counts: init, its parent now, reaps it when it gets to it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


_PREPARE_AND_EXEC = (
    "import os, resource, signal, sys\n"
    "limit = int(sys.argv[1])\n"
    "if limit:\n"
    "    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))\n"
    "signal.signal(signal.SIGINT, signal.SIG_DFL)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n")


def child_command(cmd: list, address_space_bytes: int = 0) -> list:
    """`cmd` (its first item a path) to run as a child with SIGINT at its default (and RLIMIT_AS, where given).
    A child inherits an ignored SIGINT, and the test run's may be ignored: a shell starts its
    background jobs (`cmd &`) with SIGINT ignored, and Python then leaves it so, without
    KeyboardInterrupt. A small Python process prepares the signal and the limit and execs `cmd`,
    instead of a `preexec_fn`: that makes Python fork, not vfork, and a fork runs grpcio's at-fork
    handlers, whose restarted pollers can abort the child (the test process has gRPC clients)."""
    return [sys.executable, "-c", _PREPARE_AND_EXEC, str(address_space_bytes), *cmd]
