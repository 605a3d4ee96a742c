"""The inference log's writer on real filesystems: rows as answered, the schema exactly, a bounded
buffer that drops and counts, and writes that fail (read-only, vanished, full) without harm."""

import datetime as dt
import logging
import os
import threading
import time

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from inferline import inferlog
from inferline.inferlog import INFERENCE, InferenceLog, LogStore
from inferline.service import Answer


def _answer(model="m", version=3, rows=1, reason=None, rng=None):
    rng = rng or np.random.default_rng(0)
    p = rng.random((rows, 5)).astype(np.float32)
    return Answer({"probs": p / p.sum(axis=1, keepdims=True), "label": np.argmax(p, axis=1)}, model, version, reason)


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_samples_and_pairs_are_written_as_answered(tmp_path, rng):
    ilog = InferenceLog(LogStore(str(tmp_path)), worker="7", arm_of=lambda m, v: "canary" if v == 3 else "stable")
    x = rng.random((1, 8), dtype=np.float32)
    a = _answer(rng=rng)
    ilog.sample("m", "req-1", {"x": x}, a, time.perf_counter() - 0.002)
    ilog.sample("m", "", {"x": x}, _answer("fallback", 1, reason="error", rng=rng), time.perf_counter())
    other = {"probs": a.outputs["probs"][:, ::-1].copy()}
    ilog.pair(model="m", arm="shadow", request_id=None, inputs={"x": x}, returned=a.outputs, returned_version=2,
              returned_latency_ms=1.5, other=other, other_version=4, other_latency_ms=2.5, agree=False)
    ilog.flush()
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    files = _files(tmp_path)
    assert len(files) == 1 and files[0].startswith(f"inference/date={today}/model=m/part-7-"), files
    table = pq.read_table(tmp_path / files[0])
    assert table.schema == INFERENCE
    rows = table.to_pylist()
    assert [r["kind"] for r in rows] == ["sample", "sample", "shadow_pair", "shadow_pair"]
    s = rows[0]
    assert (s["request_id"], s["model"], s["version"], s["arm"], s["answered_by"]) == ("req-1", "m", 3, "canary", "m:3")
    assert np.array_equal(np.float32(s["inputs"]), x.reshape(-1)) and s["input_shape"] == [1, 8]
    assert np.array_equal(np.float32(s["outputs"]), a.outputs["probs"].reshape(-1))
    assert s["predicted"] == int(a.outputs["label"][0])
    assert s["confidence"] == pytest.approx(float(a.outputs["probs"].max()), rel=1e-6)
    assert s["latency_ms"] >= 2.0 and s["fallback_reason"] is None and s["agree"] is None and s["label"] is None
    f = rows[1]  # answered by another model's fallback: the requested model, version unknown (0)
    assert (f["model"], f["version"], f["fallback_reason"], f["answered_by"]) == ("m", 0, "error", "fallback:1")
    stable, shadow = rows[2], rows[3]
    assert stable["request_id"] == shadow["request_id"] and stable["request_id"].startswith("pair-")
    assert (stable["arm"], stable["version"], stable["latency_ms"]) == ("stable", 2, 1.5)
    assert (shadow["arm"], shadow["version"], shadow["latency_ms"], shadow["answered_by"]) == ("shadow", 4, 2.5, "m:4")
    assert stable["agree"] is False and shadow["agree"] is False
    assert np.array_equal(np.float32(shadow["outputs"]), other["probs"].reshape(-1))
    assert ilog.stats()["records_written"] == 4 and ilog.stats()["files_written"] == 1
    # what the report reads: the whole log as one hive-partitioned dataset
    whole = ds.dataset(str(tmp_path / "inference"), format="parquet", partitioning="hive").to_table()
    assert whole.num_rows == 4 and set(whole.column("model").to_pylist()) == {"m"}


def test_non_probabilities_and_batches(tmp_path):
    ilog = InferenceLog(LogStore(str(tmp_path)))
    logits = Answer({"logits": np.array([[2.0, -1.0, 5.0]], np.float32)}, "m", 1)
    batch = Answer({"y": np.ones((4, 3), np.float32) / 3}, "m", 1)
    ints = Answer({"total": np.array([[7]], np.int64)}, "m", 1)
    for a in (logits, batch, ints):
        ilog.sample("m", "r", {"x": np.zeros((4, 2), np.float32)}, a, time.perf_counter())
    ilog.flush()
    rows = ds.dataset(str(tmp_path / "inference"), format="parquet").to_table().to_pylist()
    assert [(r["predicted"], r["confidence"]) for r in rows] == [(2, None), (-1, None), (-1, None)]
    assert rows[1]["outputs"] == [pytest.approx(1 / 3)] * 12 and rows[2]["outputs"] == [7.0]


def test_a_full_buffer_drops_and_counts_without_waiting(tmp_path):
    ilog = InferenceLog(LogStore(str(tmp_path)), capacity=100)
    a, x = _answer(), {"x": np.zeros((1, 4), np.float32)}
    t0 = time.perf_counter()
    for _ in range(1000):
        ilog.sample("m", "r", x, a, t0)
    ilog.pair(model="m", arm="canary", request_id="p", inputs=x, returned=a.outputs, returned_version=2,
              returned_latency_ms=1.0, other=a.outputs, other_version=1, other_latency_ms=1.0, agree=True)
    assert ilog.stats()["buffered"] == 100 and ilog.stats()["records_dropped"] == 902  # the pair's two rows
    ilog.flush()
    assert ilog.stats()["records_written"] == 100
    by_bytes = InferenceLog(LogStore(str(tmp_path)), max_bytes=4096)
    big = {"x": np.zeros((1, 512), np.float32)}  # 2 KiB each, with the outputs
    for _ in range(5):
        by_bytes.sample("m", "r", big, a, t0)
    assert by_bytes.stats()["buffered"] == 1 and by_bytes.stats()["records_dropped"] == 4


def _logged(caplog):
    return [r for r in caplog.records if "inference log: writing under" in r.getMessage()]


def test_a_vanished_log_directory_is_counted_reported_once_and_recovers(tmp_path, caplog):
    root = tmp_path / "logs"
    ilog = InferenceLog(LogStore(str(root)), report_interval_s=3600)
    a, x = _answer(), {"x": np.zeros((1, 4), np.float32)}
    root.write_text("not a directory")  # the directory is gone and cannot be made again
    with caplog.at_level(logging.WARNING, logger="inferline.inferlog"):
        for _ in range(3):
            ilog.sample("m", "r", x, a, time.perf_counter())
            ilog.flush()
    stats = ilog.stats()
    assert (stats["write_failures"], stats["records_failed"], stats["records_written"]) == (3, 3, 0)
    assert len(_logged(caplog)) == 1 and "serving is unaffected" in _logged(caplog)[0].getMessage()
    root.unlink()  # it comes back: the next flush writes
    ilog.sample("m", "r", x, a, time.perf_counter())
    ilog.flush()
    assert ilog.stats()["records_written"] == 1 and len(_files(root)) == 1


def test_a_read_only_log_directory(tmp_path, caplog, tmpfs):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as root:
        ilog = InferenceLog(LogStore(str(root)), report_interval_s=0.2)
        a, x = _answer(), {"x": np.zeros((1, 4), np.float32)}
        with caplog.at_level(logging.WARNING, logger="inferline.inferlog"):
            for i in range(4):
                ilog.sample("m", "r", x, a, time.perf_counter())
                ilog.flush()
                time.sleep(0.25 if i == 1 else 0)
        assert ilog.stats()["write_failures"] == 4 and ilog.stats()["records_written"] == 0
        reports = _logged(caplog)
        assert len(reports) == 2, [r.getMessage() for r in reports]  # the first, and one after the interval
        assert "Read-only file system" in reports[0].getMessage()
        assert "2 record(s) lost" in reports[1].getMessage()


def test_a_full_disk(tmp_path, tmpfs):
    with tmpfs(tmp_path / "full", "size=64k") as root:
        ilog = InferenceLog(LogStore(str(root)))
        big = {"x": np.random.default_rng(1).random((1, 4096), dtype=np.float32)}  # 16 KiB, incompressible
        a = _answer()
        for _ in range(20):
            ilog.sample("m", "r", big, a, time.perf_counter())
        ilog.flush()
        assert ilog.stats()["write_failures"] == 1 and ilog.stats()["records_failed"] == 20
        assert _files(root) == []  # nothing half-written is left behind
        ilog.sample("m", "r", {"x": np.zeros((1, 4), np.float32)}, a, time.perf_counter())
        ilog.flush()  # small enough to fit: written
        assert ilog.stats()["records_written"] == 1 and len(_files(root)) == 1


def test_the_thread_flushes_samples_hardware_and_stats_sum(tmp_path):
    sampler = inferlog.HardwareSampler()
    ilog = InferenceLog(LogStore(str(tmp_path)), flush_interval_s=0.1)
    ilog.start((inferlog.Job("hardware", 0.05, lambda: ilog.add_hardware(sampler())),))
    inferlog._live.add(ilog)
    busy = threading.Thread(target=lambda: sum(i * i for i in range(2_000_000)))
    busy.start()
    ilog.sample("m", "r", {"x": np.zeros((1, 4), np.float32)}, _answer(), time.perf_counter())
    busy.join()
    deadline = time.time() + 10
    while time.time() < deadline and not (ilog.stats()["records_written"] and ilog.stats()["hardware_written"] >= 3):
        time.sleep(0.05)
    ilog.close()
    assert inferlog.stats()["records_written"] >= 1
    hw = ds.dataset(str(tmp_path / "hardware"), format="parquet", partitioning="hive").to_table()
    assert hw.schema.field("ts").type == inferlog.HARDWARE.field("ts").type and hw.num_rows >= 3
    rows = hw.to_pylist()
    assert {r["worker"] for r in rows} == {os.getpid()}
    assert all(r["rss_bytes"] > 10 << 20 and r["cpu_percent"] >= 0 for r in rows)
    assert max(r["cpu_percent"] for r in rows) > 10  # the busy thread shows
    assert all(r["gpu_util_percent"] is None and r["gpu_memory_bytes"] is None for r in rows)  # no GPU here
