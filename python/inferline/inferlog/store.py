"""Where the inference log lives: a local directory or any fsspec URL, and its date partitions.

    ROOT/inference/date=YYYY-MM-DD/model=NAME/part-<worker>-<uuid>.parquet
    ROOT/hardware/date=YYYY-MM-DD/part-<worker>-<uuid>.parquet

A file appears whole: locally it is written under a hidden name (".tmp-...", which pyarrow's
dataset readers skip) and renamed; on an object store a PUT is whole by nature. S3 URLs take
their endpoint from INFERLINE_S3_ENDPOINT_URL when it is set, as the registry's do.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import uuid
from typing import List, Optional, Tuple

import pyarrow as pa
import pyarrow.parquet as pq

DATE_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
TABLES = ("inference", "hardware")


class LogStore:
    """The filesystem and root path of one inference log (``url``: a directory or an fsspec URL)."""

    def __init__(self, url: str, storage_options: Optional[dict] = None):
        import fsspec

        self.url = url
        if "://" in url:
            options = dict(storage_options or {})
            endpoint = os.environ.get("INFERLINE_S3_ENDPOINT_URL")
            if url.startswith(("s3://", "s3a://")) and endpoint and "endpoint_url" not in options:
                options["endpoint_url"] = endpoint
            self.fs, self.root = fsspec.core.url_to_fs(url, **options)
            self.local = False
        else:
            self.fs = fsspec.filesystem("file")
            self.root = os.path.abspath(os.path.expanduser(url))
            self.local = True
        self.root = self.root.rstrip("/")

    def write(self, table: pa.Table, name: str, day: _dt.date, worker: str, model: Optional[str] = None) -> str:
        """Writes `table` as a new part file of `name`'s partition for `day` (and `model`); its path."""
        parts = [self.root, name, f"date={day.isoformat()}"] + ([f"model={model}"] if model is not None else [])
        folder = "/".join(parts)
        filename = f"part-{worker}-{uuid.uuid4().hex}.parquet"
        path = f"{folder}/{filename}"
        if not self.local:
            with self.fs.open(path, "wb") as f:
                pq.write_table(table, f)
            return path
        os.makedirs(folder, exist_ok=True)
        tmp = f"{folder}/.tmp-{filename}"
        try:
            with open(tmp, "wb") as f:
                pq.write_table(table, f)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return path

    def partitions(self, name: str) -> List[Tuple[_dt.date, str]]:
        """(date, path) of `name`'s date partitions, oldest first; [] when there are none."""
        base = f"{self.root}/{name}"
        try:
            entries = self.fs.ls(base, detail=True)
        except FileNotFoundError:
            return []
        self.fs.invalidate_cache(base)
        out = []
        for e in entries:
            if e.get("type") != "directory":
                continue
            m = DATE_DIR.match(e["name"].rstrip("/").rsplit("/", 1)[-1])
            if m:
                try:
                    out.append((_dt.date.fromisoformat(m.group(1)), e["name"].rstrip("/")))
                except ValueError:
                    continue
        return sorted(out)

    def remove(self, path: str) -> None:
        """Removes one partition (a directory or prefix) with everything under it."""
        try:
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass  # another worker's sweep got there first
        self.fs.invalidate_cache(path)
