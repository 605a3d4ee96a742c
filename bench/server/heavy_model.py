"""digits-heavy: digits-mlp's signature and preprocessing in front of a deliberately costly body,
for load tests that must offer many times a server's capacity from this small machine.

Its logits are a linear function of the (standardised) pixels plus a term computed by a chain of
per-row matrix products: each row becomes a 128 x 128 matrix X, then `layers` times
X <- tanh(X @ X / sqrt(128)), then the flattened X is projected onto the 10 logits. The chain is
contractive (its term ends near zero, so answers agree across servers and batch sizes to
float32 rounding) but every product is computed, about 25 us per row and layer on one core, and
batching saves nothing: unlike digits-mlp, whose cost per request is mostly the server's own
per-request overhead, the model's compute sets the capacity. Untrained: the labels mean nothing.
"""

from __future__ import annotations

import json
import os

import numpy as np

SIDE = 128  # each row's matrix is SIDE x SIDE
NAME = "digits-heavy"


def heavy_onnx(layers: int, seed: int = 0):
    """The ONNX graph: pixels [N, 64] -> logits [N, 10] (float32), label [N, 1] (int64)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    tensors = {
        "w_lin": (rng.standard_normal((64, 10)) / 8).astype(np.float32),
        "w_in": (rng.standard_normal((64, SIDE * SIDE)) / 8).astype(np.float32),
        "w_out": (rng.standard_normal((SIDE * SIDE, 10)) / SIDE).astype(np.float32),
        "scale": np.array(1.0 / np.sqrt(SIDE), np.float32),
        "square": np.array([-1, SIDE, SIDE], np.int64),
        "flat": np.array([-1, SIDE * SIDE], np.int64),
    }
    node = helper.make_node
    nodes = [node("MatMul", ["pixels", "w_in"], ["p"]), node("Reshape", ["p", "square"], ["x0"])]
    for k in range(layers):
        nodes += [node("MatMul", [f"x{k}", f"x{k}"], [f"y{k}"]), node("Mul", [f"y{k}", "scale"], [f"z{k}"]),
                  node("Tanh", [f"z{k}"], [f"x{k + 1}"])]
    nodes += [node("Reshape", [f"x{layers}", "flat"], ["f"]), node("MatMul", ["f", "w_out"], ["chain"]),
              node("MatMul", ["pixels", "w_lin"], ["linear"]), node("Add", ["linear", "chain"], ["logits"]),
              node("ArgMax", ["logits"], ["label"], axis=1, keepdims=1)]
    graph = helper.make_graph(
        nodes, NAME, [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 10]),
         helper.make_tensor_value_info("label", TensorProto.INT64, [None, 1])],
        [numpy_helper.from_array(v, k) for k, v in tensors.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def standardise(x: np.ndarray, pre: dict) -> np.ndarray:
    """What the tabular preprocessing does: NaN -> nan_fill, (x - mean) / std, clip."""
    x = np.nan_to_num(x.astype(np.float32), nan=float(pre.get("nan_fill", 0.0)))
    x = (x - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)
    return np.clip(x, pre.get("clip_lo", -np.inf), pre.get("clip_hi", np.inf)).astype(np.float32)


def build_package(dest: str, source_package: str, layers: int = 60) -> str:
    """Writes the package (model.json, model.onnx, golden.npz) under dest/digits-heavy and returns
    its path. `source_package`: digits-mlp's, for the signature, preprocessing and golden inputs."""
    import onnxruntime as ort

    path = os.path.join(dest, NAME)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(source_package, "model.json"), encoding="utf-8") as f:
        config = json.load(f)
    config.update(name=NAME, golden={"file": "golden.npz", "bitwise": False, "rtol": 1e-4, "atol": 1e-4},
                  labels={"note": f"untrained load-test model: {layers} chained {SIDE}x{SIDE} products per row"})
    config.pop("fallback", None)
    with open(os.path.join(path, "model.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    model = heavy_onnx(layers)
    with open(os.path.join(path, "model.onnx"), "wb") as f:
        f.write(model.SerializeToString())
    inputs = np.load(os.path.join(source_package, "golden.npz"))["inputs/pixels"]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    logits, label = session.run(None, {"pixels": standardise(inputs, config["preprocessing"]["pixels"])})
    np.savez(os.path.join(path, "golden.npz"), **{"inputs/pixels": inputs, "outputs/logits": logits,
                                                   "outputs/label": label})
    return path
