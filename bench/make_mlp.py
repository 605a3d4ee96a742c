"""Builds the benchmark MLP as an ONNX file: float32 512 -> 2048 -> 2048 -> 2048 -> 10, ReLU between layers.

    python bench/make_mlp.py [PATH]      # default bench/models/mlp.onnx (git-ignored)

Input "x" [-1, 512], output "y" [-1, 10], dynamic batch dim. Weights are seeded
He-scaled normals, so the file is the same on every run; an existing file with
the same content is left alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LAYERS = (512, 2048, 2048, 2048, 10)
SEED = 0
DEFAULT_PATH = Path(__file__).resolve().parent / "models" / "mlp.onnx"


def build_mlp(layers=LAYERS, seed: int = SEED, input_name: str = "x", output_name: str = "y",
              label: str = "") -> onnx.ModelProto:
    """The MLP with these layer widths (Gemm + ReLU between layers), input `input_name` [batch,
    layers[0]] and output `output_name` [batch, layers[-1]]; `label`: also that output, the int64
    argmax of the last layer [batch, 1] (as the demo digits models have)."""
    rng = np.random.default_rng(seed)
    nodes, weights = [], []
    prev = input_name
    for i, (fan_in, fan_out) in enumerate(zip(layers[:-1], layers[1:])):
        w = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        b = np.zeros(fan_out, dtype=np.float32)
        weights += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(layers) - 2
        out = output_name if last else f"h{i}"
        gemm_out = out if last else f"g{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [gemm_out], name=f"fc{i}"))
        if not last:
            nodes.append(helper.make_node("Relu", [gemm_out], [out], name=f"relu{i}"))
        prev = out
    outputs = [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", layers[-1]])]
    if label:
        nodes.append(helper.make_node("ArgMax", [output_name], [label], axis=1, keepdims=1, name="argmax"))
        outputs.append(helper.make_tensor_value_info(label, TensorProto.INT64, ["batch", 1]))
    graph = helper.make_graph(
        nodes, "bench_mlp",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", layers[0]])], outputs,
        initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="inferline-bench")
    model.ir_version = 8  # readable by onnxruntime >= 1.14
    onnx.checker.check_model(model)
    return model


def write_model(path: Path) -> bool:
    """Writes the MLP to `path` unless an identical file is there; True if it wrote."""
    data = build_mlp().SerializeToString()
    if path.exists() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")  # atomic: no half-written model
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH)
    args = parser.parse_args(argv)
    wrote = write_model(args.path)
    print(f"{'wrote' if wrote else 'up to date'}: {args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
