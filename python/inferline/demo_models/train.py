"""Trains the demo models on scikit-learn's bundled digits data and writes their packages.

    python python/inferline/demo_models/train.py      # needs scikit-learn, onnx, onnxruntime

digits-mlp:    64 -> 64 (ReLU) -> 10 MLP, inputs standardised by the core's tabular preprocessing.
digits-logreg: logistic regression distilled from the MLP (trained on the MLP's labels); the MLP's fallback.
Both export to ONNX with outputs "logits" (float32 [-1, 10]) and "label" (int64 [-1, 1]), golden
inputs/outputs from the held-out split, and the held-out accuracy in their labels.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 0
CLIP = 10.0


def standardise(x, mean, std):
    return np.clip((x - mean) / std, np.float32(-CLIP), np.float32(CLIP)).astype(np.float32)


def dense_graph(name, layers):
    """ONNX graph: pixels -> (MatMul + Add [+ Relu])* -> logits, ArgMax -> label."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, x = [], [], "pixels"
    for i, (w, b, relu) in enumerate(layers):
        inits += [numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(b.astype(np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"mm{i}"]),
                  helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"z{i}"])]
        x = f"z{i}"
        if relu:
            nodes.append(helper.make_node("Relu", [x], [f"h{i}"]))
            x = f"h{i}"
    nodes[-1].output[0] = "logits"
    nodes.append(helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=1))
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10]),
         helper.make_tensor_value_info("label", TensorProto.INT64, ["batch", 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="inferline-demo")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_package(name, model, mean, std, x_golden, fallback, labels):
    import onnx
    import onnxruntime as ort

    root = os.path.join(HERE, name)
    os.makedirs(root, exist_ok=True)
    onnx.save(model, os.path.join(root, "model.onnx"))
    sess = ort.InferenceSession(os.path.join(root, "model.onnx"), providers=["CPUExecutionProvider"])
    logits, label = sess.run(["logits", "label"], {"pixels": standardise(x_golden, mean, std)})
    np.savez(os.path.join(root, "golden.npz"), **{"inputs/pixels": x_golden, "outputs/logits": logits,
                                                 "outputs/label": label})
    config = {
        "name": name,
        "inputs": [{"name": "pixels", "dtype": "float32", "shape": [-1, 64]}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, 10]},
                    {"name": "label", "dtype": "int64", "shape": [-1, 1]}],
        "backend": {"name": "onnxruntime", "threads": 1},
        "batching": {"max_batch_size": 32, "max_queue_delay_us": 2000},
        "preprocessing": {"pixels": {"kind": "tabular", "mean": [float(v) for v in mean],
                                     "std": [float(v) for v in std], "clip_lo": -CLIP, "clip_hi": CLIP}},
        "golden": {"file": "golden.npz", "bitwise": False, "rtol": 1e-4, "atol": 1e-4},
        "labels": labels,
    }
    if fallback:
        config["fallback"] = fallback
    with open(os.path.join(root, "model.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")


def main() -> int:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    digits = load_digits()
    x = digits.data.astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, digits.target, test_size=0.25, random_state=SEED,
                                              stratify=digits.target)
    mean = x_tr.mean(axis=0).astype(np.float32)
    std = x_tr.std(axis=0).astype(np.float32)
    std[std == 0] = 1.0
    z_tr, z_te = standardise(x_tr, mean, std), standardise(x_te, mean, std)

    mlp = MLPClassifier(hidden_layer_sizes=(64,), max_iter=400, random_state=SEED).fit(z_tr, y_tr)
    mlp_acc = float((mlp.predict(z_te) == y_te).mean())
    student = LogisticRegression(max_iter=2000, C=0.5).fit(z_tr, mlp.predict(z_tr))  # distilled
    lr_acc = float((student.predict(z_te) == y_te).mean())

    mlp_model = dense_graph("digits-mlp", [(mlp.coefs_[0], mlp.intercepts_[0], True),
                                           (mlp.coefs_[1], mlp.intercepts_[1], False)])
    lr_model = dense_graph("digits-logreg", [(student.coef_.T, student.intercept_, False)])
    common = {"dataset": "sklearn digits", "split": "test_size=0.25 random_state=0 stratified"}
    write_package("digits-logreg", lr_model, mean, std, x_te[:16],
                  None, {**common, "holdout_accuracy": f"{lr_acc:.4f}", "distilled_from": "digits-mlp"})
    write_package("digits-mlp", mlp_model, mean, std, x_te[:16], "digits-logreg",
                  {**common, "holdout_accuracy": f"{mlp_acc:.4f}"})
    print(f"digits-mlp    held-out accuracy {mlp_acc:.4f} ({len(y_te)} samples)")
    print(f"digits-logreg held-out accuracy {lr_acc:.4f} (distilled from the MLP)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
