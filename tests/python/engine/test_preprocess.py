"""Preprocessing fused into the gather, compared with NumPy references."""

import numpy as np
import pytest

import inferline as il


def identity_model(name, in_spec, out_spec, prep):
    return il.ModelConfig(name=name, inputs=[in_spec], outputs=[out_spec], preprocessing={in_spec[0]: prep},
                          batching=il.BatchingConfig(max_batch_size=16, max_queue_delay_us=500))


def echo(d):
    return {"y": d["x"].copy()}


@pytest.mark.parametrize("features, per_feature", [(1, True), (7, True), (64, False), (300, True)])
def test_tabular_bitwise_equal_to_numpy(engine, rng, features, per_feature):
    n = features if per_feature else 1
    mean = rng.standard_normal(n).astype(np.float32)
    std = (rng.random(n).astype(np.float32) + np.float32(0.1)) * rng.choice([-1, 1], n).astype(np.float32)
    fill, lo, hi = np.float32(0.25), np.float32(-1.5), np.float32(2.0)
    prep = il.TabularPreprocess(mean=tuple(mean), std=tuple(std), nan_fill=float(fill), clip_lo=float(lo),
                                clip_hi=float(hi))
    engine.load(identity_model("tab", ("x", "float32", (-1, features)), ("y", "float32", (-1, features)), prep),
                echo)
    x = rng.standard_normal((9, features)).astype(np.float32) * np.float32(3)
    x[rng.random(x.shape) < 0.1] = np.nan
    x[0, 0] = np.inf
    got = engine.infer("tab", {"x": x})["y"]
    expected = np.clip((np.where(np.isnan(x), fill, x) - mean) / std, lo, hi)
    assert expected.dtype == np.float32
    assert got.tobytes() == expected.tobytes()


def bilinear_reference(img, out_h, out_w, mean, std):
    """Half-pixel-centre bilinear resize (align_corners=False), then (v - mean) / std, NCHW float32."""
    h, w, c = img.shape

    def axis(n_out, n_in):
        s = np.maximum((np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * np.float32(n_in / n_out)
                       - np.float32(0.5), np.float32(0))
        i0 = np.minimum(np.floor(s).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (s - i0).astype(np.float64)

    y0, y1, wy = axis(out_h, h)
    x0, x1, wx = axis(out_w, w)
    p = img.astype(np.float64)
    top = p[y0][:, x0] * (1 - wx)[None, :, None] + p[y0][:, x1] * wx[None, :, None]
    bot = p[y1][:, x0] * (1 - wx)[None, :, None] + p[y1][:, x1] * wx[None, :, None]
    v = top * (1 - wy)[:, None, None] + bot * wy[:, None, None]
    return ((v - mean) / std).transpose(2, 0, 1)


@pytest.mark.parametrize("size_in, size_out", [((32, 32), (16, 16)), ((10, 7), (24, 24)), ((5, 5), (5, 5)),
                                               ((1, 1), (3, 2)), ((48, 20), (8, 30))])
def test_image_resize_normalize_within_tolerance(engine, rng, size_in, size_out):
    mean = np.array([123.675, 116.28, 103.53])
    std = np.array([58.395, 57.12, 57.375])
    prep = il.ImagePreprocess(height=size_out[0], width=size_out[1], mean=tuple(mean), std=tuple(std))
    engine.load(identity_model("img", ("x", "uint8", (-1, -1, -1, 3)), ("y", "float32", (-1, 3) + size_out), prep),
                echo)
    imgs = rng.integers(0, 256, size=(3,) + size_in + (3,), dtype=np.uint8)
    got = engine.infer("img", {"x": imgs})["y"]
    assert got.shape == (3, 3) + size_out and got.dtype == np.float32
    for i in range(3):
        np.testing.assert_allclose(got[i], bilinear_reference(imgs[i], *size_out, mean, std), rtol=0, atol=1e-4)


def test_image_requests_of_different_sizes_share_a_batch(engine, rng):
    prep = il.ImagePreprocess(height=8, width=8, mean=(0.0,), std=(255.0,))
    handle = engine.load(identity_model("img", ("x", "uint8", (-1, -1, -1, 1)), ("y", "float32", (-1, 1, 8, 8)),
                                        prep), echo)
    imgs = [rng.integers(0, 256, size=(1, h, w, 1), dtype=np.uint8) for h, w in [(8, 8), (30, 12), (3, 40)]]
    futures = [engine.submit("img", {"x": im}) for im in imgs]
    for im, f in zip(imgs, futures):
        ref = bilinear_reference(im[0], 8, 8, np.zeros(1), np.full(1, 255.0))
        np.testing.assert_allclose(f.result(timeout=10)["y"][0], ref, atol=1e-4)
    assert handle.stats()["rows"] == 3


def test_image_channel_mismatch_is_invalid_argument(engine):
    prep = il.ImagePreprocess(height=4, width=4, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    with pytest.raises(il.errors.InvalidArgument, match="preprocessing.image"):
        engine.load(identity_model("bad", ("x", "float32", (-1, 64)), ("y", "float32", (-1, 3, 4, 4)), prep), echo)
