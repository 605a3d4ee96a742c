"""Exports the demo dense MLP (`dense-demo`, untrained) for the C++ example host.

    python csrc/examples/host/export_demo.py --out digits_demo.bin [--synthetic]

Writes the weights of ``inferline.demo.demo_model()``, its config (name,
version, batching, tabular preprocessing), test inputs, and the outputs the
Python engine (``inferline.Engine`` with the demo's NumPy backend) gives for
those inputs. The host serves the same weights with a C++ backend and checks
its answers against these outputs bit for bit.

Test inputs: the scikit-learn digits test split
(``train_test_split(X, y, test_size=0.25, random_state=0)``, 450 rows of 64
pixels in 0..16) when scikit-learn is importable, else 450 seeded synthetic
digit-like rows (integers 0..16, ``numpy.random.default_rng(0)``); the file
records which, and the host prints it.

File format ("ILDIGIT1"), little-endian, no padding:

    char[8]   magic            b"ILDIGIT1"
    u32       name_len; char[name_len] model name (UTF-8)
    i64       version
    u32       F, H, C          input features (64), hidden units (128), classes (10)
    u32       N                test rows
    u32       max_batch_size
    u64       max_queue_delay_us
    u32       mean_len; f32[mean_len]   tabular preprocessing of input "pixels":
    u32       std_len;  f32[std_len]    NaN -> nan_fill, (x - mean) / std,
    f32       nan_fill, clip_lo, clip_hi     clip to [clip_lo, clip_hi]
    u32       source_len; char[source_len]  where the test inputs came from
    f32[F*H]  w1 (row-major [F][H])
    f32[H*C]  w2 (row-major [H][C])
    f32[N*F]  inputs, raw (before preprocessing)
    f32[N*C]  logits from the Python engine
    i64[N]    labels from the Python engine
"""

from __future__ import annotations

import argparse
import struct
import sys

import numpy as np

import inferline as il
from inferline.demo import demo_model, demo_weights

MAGIC = b"ILDIGIT1"
ROWS = 450  # the size of the digits test split; the synthetic fallback uses the same


def test_inputs(force_synthetic: bool) -> tuple[np.ndarray, str]:
    """(inputs float32 [N, 64], description of where they came from)."""
    if not force_synthetic:
        try:
            from sklearn.datasets import load_digits
            from sklearn.model_selection import train_test_split
        except ImportError:
            pass
        else:
            digits = load_digits()
            _, x_test, _, _ = train_test_split(digits.data, digits.target, test_size=0.25, random_state=0)
            return (np.ascontiguousarray(x_test, dtype=np.float32),
                    "scikit-learn digits test split (train_test_split test_size=0.25, random_state=0)")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 17, size=(ROWS, 64)).astype(np.float32)
    return x, "synthetic digit-like rows (integers 0..16, numpy default_rng(0)); scikit-learn not used"


def python_outputs(config, mlp, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Python engine's answers for every row of x (split into batches by the engine)."""
    with il.Engine() as engine:
        engine.load(config, mlp)
        out = engine.infer(config.name, {"pixels": x})
    return (np.ascontiguousarray(out["logits"], dtype=np.float32),
            np.ascontiguousarray(out["label"], dtype=np.int64).reshape(-1))


def _u32(v: int) -> bytes:
    return struct.pack("<I", v)


def _text(s: str) -> bytes:
    b = s.encode("utf-8")
    return _u32(len(b)) + b


def _f32s(values) -> bytes:
    a = np.asarray(values, dtype="<f4").ravel()
    return _u32(a.size) + a.tobytes()


def serialize(config, w1, w2, x, logits, labels, source: str) -> bytes:
    prep = config.preprocessing["pixels"]
    f, h = w1.shape
    c = w2.shape[1]
    parts = [
        MAGIC, _text(config.name), struct.pack("<q", config.version),
        struct.pack("<4I", f, h, c, x.shape[0]),
        _u32(config.batching.max_batch_size), struct.pack("<Q", config.batching.max_queue_delay_us),
        _f32s(prep.mean), _f32s(prep.std), struct.pack("<3f", prep.nan_fill, prep.clip_lo, prep.clip_hi),
        _text(source),
        w1.astype("<f4").tobytes(), w2.astype("<f4").tobytes(), x.astype("<f4").tobytes(),
        logits.astype("<f4").tobytes(), labels.astype("<i8").tobytes(),
    ]
    return b"".join(parts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="digits_demo.bin", help="output file (default: %(default)s)")
    p.add_argument("--synthetic", action="store_true", help="use synthetic inputs even if scikit-learn is there")
    args = p.parse_args(argv)

    config, mlp = demo_model()
    w1, w2 = demo_weights()
    x, source = test_inputs(args.synthetic)
    logits, labels = python_outputs(config, mlp, x)
    with open(args.out, "wb") as fh:
        fh.write(serialize(config, w1, w2, x, logits, labels, source))
    print(f"exported {config.name} v{config.version}: weights {w1.shape}+{w2.shape}, {x.shape[0]} test rows "
          f"from {source} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
