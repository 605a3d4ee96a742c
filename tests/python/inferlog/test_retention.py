"""Retention: dated partitions past their days go whole, newer ones and today's stay; by hand
(`inferline logs sweep`), locally and on S3 (a real moto server)."""

import datetime as dt
import os
import time

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from inferline.cli import main
from inferline.inferlog import InferenceLog, LogStore, Retention, expired, sweep
from inferline.inferlog.schema import hardware_table, inference_row, inference_table
from inferline.service import Answer

TODAY = dt.datetime.now(dt.timezone.utc).date()


def _fill(store: LogStore, days_back, models=("a", "b")) -> None:
    """One inference file per model and one hardware file for each day `days_back` from today."""
    for back in days_back:
        day = TODAY - dt.timedelta(days=back)
        ts = dt.datetime.combine(day, dt.time(12), dt.timezone.utc).timestamp()
        for m in models:
            row = inference_row(ts, "r", m, 1, "", "sample", {"x": np.ones((1, 2), np.float32)},
                                {"y": np.ones((1, 2), np.float32)}, 1.0, None, f"{m}:1")
            store.write(inference_table([row]), "inference", day, "0", m)
        hw = {"ts": dt.datetime.fromtimestamp(ts, dt.timezone.utc), "worker": 1, "cpu_percent": 1.0,
              "rss_bytes": 1, "gpu_util_percent": None, "gpu_memory_bytes": None}
        store.write(hardware_table([hw]), "hardware", day, "0")


def _days(store: LogStore, table: str) -> list:
    return [(TODAY - day).days for day, _ in store.partitions(table)]


def test_sweep_removes_old_partitions_and_keeps_new_ones(tmp_path):
    store = LogStore(str(tmp_path))
    _fill(store, [0, 1, 13, 14, 15, 29, 30, 31, 45])
    (tmp_path / "inference" / "notes").mkdir()  # not a date partition: never touched
    assert _days(store, "inference") == [45, 31, 30, 29, 15, 14, 13, 1, 0]
    removed = sweep(store, Retention(inference_days=14, hardware_days=30))
    assert len(removed) == 5 + 2  # inference: 45, 31, 30, 29, 15 days old; hardware: 45, 31
    assert _days(store, "inference") == [14, 13, 1, 0]
    assert _days(store, "hardware") == [30, 29, 15, 14, 13, 1, 0]
    assert (tmp_path / "inference" / "notes").is_dir()
    for day, path in store.partitions("inference"):  # what stays is whole: both models, readable
        assert sorted(os.listdir(path)) == ["model=a", "model=b"]
        assert ds.dataset(path, format="parquet", partitioning="hive").count_rows() == 2
    assert sweep(store, Retention()) == []  # nothing more to do


def test_todays_partition_is_never_removed(tmp_path):
    store = LogStore(str(tmp_path))
    _fill(store, [0, 1, 2])
    two_days = TODAY - dt.timedelta(2)
    assert expired(store, Retention(1, 1)) == [p for t in ("inference", "hardware")
                                               for d, p in store.partitions(t) if d == two_days]
    # a clock gone wrong (today earlier than a partition) still leaves it alone
    assert sweep(store, Retention(1, 1), today=TODAY - dt.timedelta(days=10)) == []
    with pytest.raises(Exception, match="at least 1"):
        Retention(inference_days=0)


def test_the_cli_sweeps_by_hand(tmp_path, capsys):
    store = LogStore(str(tmp_path))
    _fill(store, [0, 5, 20])
    assert main(["logs", "sweep", "--root", str(tmp_path), "--days", "3", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("would remove ") == 2 and "2 partition(s) past retention" in out
    assert _days(store, "inference") == [20, 5, 0]
    assert main(["logs", "sweep", "--root", str(tmp_path), "--days", "3", "--hardware-days", "10"]) == 0
    out = capsys.readouterr().out
    assert "3 partition(s) removed" in out
    assert _days(store, "inference") == [0] and _days(store, "hardware") == [5, 0]
    assert main(["logs", "sweep", "--root", str(tmp_path), "--days", "0"]) == 1
    assert "at least 1" in capsys.readouterr().err


def test_s3_log_and_retention(bucket, moto_endpoint, monkeypatch):
    import s3fs

    client, name = bucket
    monkeypatch.setenv("INFERLINE_S3_ENDPOINT_URL", moto_endpoint)
    url = f"s3://{name}/logs"
    ilog = InferenceLog(LogStore(url), worker="3")
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    ilog.sample("m", "req-s3", {"x": x}, Answer({"y": np.array([[0.25, 0.75]], np.float32)}, "m", 2), 0.0)
    ilog.flush()
    assert ilog.stats()["records_written"] == 1 and ilog.stats()["write_failures"] == 0
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=name)["Contents"]]
    assert len(keys) == 1 and keys[0].startswith(f"logs/inference/date={TODAY.isoformat()}/model=m/part-3-")
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": moto_endpoint})
    row = pq.read_table(f"{name}/{keys[0]}", filesystem=fs).to_pylist()[0]
    assert (row["request_id"], row["inputs"], row["predicted"], row["confidence"]) == ("req-s3", [0, 1, 2, 3], 1, 0.75)
    store = LogStore(url)
    _fill(store, [20, 40], models=("m",))
    removed = sweep(store, Retention(14, 30))
    assert len(removed) == 3
    left = sorted(o["Key"].split("/")[2] for o in client.list_objects_v2(Bucket=name)["Contents"])
    past = (TODAY - dt.timedelta(days=20)).isoformat()
    assert left == [f"date={past}", f"date={TODAY.isoformat()}"]  # hardware at 20 days, today's inference


def test_a_server_worker_0_sweeps_soon_after_start(tmp_path, monkeypatch):
    from inferline import inferlog
    from inferline.server.settings import ServerSettings

    store = LogStore(str(tmp_path))
    _fill(store, [0, 20, 40])
    monkeypatch.setattr(inferlog, "FIRST_SWEEP_S", 0.1)
    settings = ServerSettings(inference_log=str(tmp_path), hardware_log_interval_s=0, inference_log_retention_days=14)
    other = inferlog.for_server(settings, 1)  # only worker 0 sweeps
    ilog = inferlog.for_server(settings, 0)
    try:
        deadline = time.time() + 20
        while ilog.stats()["partitions_deleted"] < 3 and time.time() < deadline:
            time.sleep(0.05)
    finally:
        ilog.close()
        other.close()
    assert ilog.stats()["partitions_deleted"] == 3 and other.stats()["partitions_deleted"] == 0
    assert _days(store, "inference") == [0] and _days(store, "hardware") == [20, 0]
