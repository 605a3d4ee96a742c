"""Registry storage: versions in SQLite (and, through the ``reg`` and ``metadata`` fixtures, in
PostgreSQL), content-addressed packages in a directory, an fsspec memory filesystem, or S3 (a real
moto server started on 127.0.0.1 by the fixture)."""

import hashlib
import json
import multiprocessing as mp
import os
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from inferline import errors
from inferline.registry import (ArtifactMissing, GcReport, Registry, TamperedArtifact, VersionNotFound,
                                default_metadata_path, package_sha256)
from inferline.registry import _metadata, store

from store_helpers import ENV, INTEGRITY_ERRORS, make_files, push, push_worker, raw_sql, versions


# ----------------------------------------------------------------------------- round trips

def test_push_get_list_fetch_round_trip(reg, src, tmp_path):
    v1 = push(reg, src, "m", b"weights-1", config={"name": "m"}, labels={"team": "vision"})
    assert (v1.version, v1.state, v1.is_live, v1.ref) == (1, "live", True, "m:1")
    assert v1.runtime_env == ENV and v1.labels == {"team": "vision"} and v1.config == {"name": "m"}
    assert v1.model_uri == str(tmp_path / "repo" / "artifacts" / "m" / v1.sha256)
    v2 = push(reg, src, "m", b"weights-2")
    assert (v2.version, v2.state, v2.is_live) == (2, "staged", False)
    assert reg.get("m") == v1 and reg.get("m", 2) == v2 and reg.resolve("m:2") == v2
    assert reg.list() == [v1, v2] and reg.list("m") == [v1, v2] and reg.models() == ["m"]
    assert reg.find("m", v2.sha256) == v2 and reg.find("m", "0" * 64) is None
    path = reg.fetch(v2)
    assert path == v2.model_uri
    assert sorted(os.listdir(path)) == ["MANIFEST.json", "config.json", "golden", "model.onnx"]
    assert Path(path, "model.onnx").read_bytes() == b"weights-2"
    assert os.stat(Path(path, "model.onnx")).st_mode & 0o222 == 0  # stored read-only
    assert json.loads(json.dumps(v2.to_dict()))["created_at_iso"].endswith("+00:00")


def test_package_sha256_is_what_sha256sum_prints(reg, src):
    files = make_files(src, b"abc")
    uri, sha = reg.put_package("m", files)
    hashes = {rel: hashlib.sha256(Path(p).read_bytes()).hexdigest() for rel, p in files.items()}
    lines = "".join(f"{hashes[rel]}  {rel}\n" for rel in sorted(files))  # `sha256sum FILES | sha256sum`
    assert sha == hashlib.sha256(lines.encode()).hexdigest() == package_sha256(hashes)
    manifest = json.loads(Path(uri, "MANIFEST.json").read_text())
    assert manifest["sha256"] == sha and [f["name"] for f in manifest["files"]] == sorted(files)


def test_identical_push_returns_the_same_version(reg, src):
    v1 = push(reg, src, "m", b"same")
    manifest = Path(v1.model_uri, "MANIFEST.json")
    before = manifest.stat().st_mtime_ns
    uri, sha = reg.put_package("m", make_files(src, b"same"))  # other source dir, same content
    assert (uri, sha) == (v1.model_uri, v1.sha256)
    assert manifest.stat().st_mtime_ns == before  # reused, not rewritten
    again = reg.add_version("m", sha, uri, runtime_env={"other": "env"})
    assert again == v1 and again.runtime_env == ENV  # runtime_env is immutable
    assert versions(reg, "m") == [1]
    v2 = push(reg, src, "m", b"second")
    assert v2.state == "staged"
    promoted = push(reg, src, "m", b"second", live=True)  # identical push with --live promotes it
    assert (promoted.version, promoted.is_live) == (2, True)
    assert reg.get("m", 1).state == "retired"


def test_promote_and_rollback_walk_the_live_history(reg, src):
    for i in range(4):
        push(reg, src, "m", b"v%d" % i)
    assert reg.get("m").version == 1
    assert reg.promote("m", 3).is_live
    assert reg.promote("m", 3).is_live  # promoting the live version changes nothing
    assert reg.get("m", 1).state == "retired"
    reg.promote("m", 4)
    assert [r.state for r in reg.list("m")] == ["retired", "staged", "retired", "live"]
    assert reg.rollback("m").version == 3
    assert reg.get("m", 4).state == "retired"
    assert reg.rollback("m").version == 1
    with pytest.raises(errors.FailedPrecondition, match="no earlier live version.*version 1 is live"):
        reg.rollback("m")
    reg.promote("m", 2)
    assert reg.rollback("m").version == 1
    with raw_sql(reg) as db:
        actions = [a for (a,) in db.execute("SELECT action FROM live_history ORDER BY seq")]
    assert actions == ["add", "promote", "promote", "rollback", "rollback", "promote", "rollback"]


def test_failed_versions_are_recorded_and_never_live(reg, src):
    bad = push(reg, src, "m", b"bad", failure="golden outputs differ: y[0] 0.5 != 0.25")
    assert (bad.state, bad.is_live, bad.failure) == ("failed", False, "golden outputs differ: y[0] 0.5 != 0.25")
    with pytest.raises(VersionNotFound, match="model 'm' has no live version"):
        reg.get("m")
    good = push(reg, src, "m", b"good")
    assert good.is_live  # the first version that did not fail becomes live
    with pytest.raises(errors.FailedPrecondition, match="failed to load"):
        reg.promote("m", 1)
    with pytest.raises(errors.InvalidArgument, match="live: a failed version is never live"):
        push(reg, src, "m", b"x", failure="boom", live=True)
    with pytest.raises(errors.InvalidArgument, match="failure: a failed version must record its cause"):
        push(reg, src, "m", b"x", state="failed")


def test_state_changes_and_record_load(reg, src):
    push(reg, src, "m", b"1")
    push(reg, src, "m", b"2")
    assert reg.set_state("m", 2, "canary").state == "canary"
    assert reg.set_state("m", 2, "retired").state == "retired"
    with pytest.raises(errors.InvalidArgument, match="state: cannot set 'live': use promote"):
        reg.set_state("m", 2, "live")
    with pytest.raises(errors.FailedPrecondition, match="model 'm' version 1 is live"):
        reg.set_state("m", 1, "staged")
    rec = reg.record_load("m", 2, model_load_time_s=0.25, fingerprint={"hash": "ab", "batch_invariant": True})
    assert (rec.model_load_time_s, rec.fingerprint["hash"], rec.state) == (0.25, "ab", "retired")
    rec = reg.record_load("m", 2, failure="backend: missing input x")
    assert (rec.state, rec.failure, rec.model_load_time_s) == ("failed", "backend: missing input x", 0.25)
    with pytest.raises(errors.FailedPrecondition, match="failed to load"):
        reg.set_state("m", 2, "staged")
    rec = reg.record_load("m", 2, model_load_time_s=0.5)
    assert (rec.state, rec.failure, rec.model_load_time_s) == ("staged", None, 0.5)
    live = reg.record_load("m", 1, failure="out of memory on replica 3")
    assert (live.state, live.is_live, live.failure) == ("live", True, "out of memory on replica 3")
    assert reg.get("m", 2).runtime_env == ENV


def test_immutable_fields_are_enforced_by_the_database(reg, src):
    push(reg, src, "m", b"1")
    with pytest.raises(TypeError):
        reg.record_load("m", 1, runtime_env={"x": 1})
    with raw_sql(reg) as db:
        for column in ("sha256", "model_uri", "runtime_env", "config", "labels", "version"):
            with pytest.raises(INTEGRITY_ERRORS, match="immutable"):
                db.execute(f"UPDATE versions SET {column} = '1' WHERE name = 'm'")
        db.execute("UPDATE versions SET fallback_id = NULL WHERE name = 'm'")  # mutable


def test_add_version_checks_the_package(reg, src, tmp_path):
    uri, sha = reg.put_package("m", make_files(src, b"1"))
    with pytest.raises(errors.InvalidArgument, match="model_uri: '/elsewhere' is not where"):
        reg.add_version("m", sha, "/elsewhere", runtime_env=ENV)
    with pytest.raises(ArtifactMissing, match="is not stored"):
        reg.add_version("other", sha, uri.replace("/m/", "/other/"), runtime_env=ENV)
    with pytest.raises(errors.InvalidArgument, match="runtime_env: expected a mapping"):
        reg.add_version("m", sha, uri, runtime_env=None)
    with pytest.raises(errors.InvalidArgument, match="labels: not JSON-serialisable"):
        reg.add_version("m", sha, uri, runtime_env=ENV, labels={"x": object()})
    assert reg.models() == []


# ------------------------------------------------------------------------------- fallbacks

def test_set_fallback(reg, src):
    push(reg, src, "a", b"a1")
    push(reg, src, "a", b"a2")
    push(reg, src, "b", b"b1")
    assert reg.set_fallback("a", None, "b").fallback_id == "b"  # follows b's live version
    assert reg.resolve(reg.get("a").fallback_id).ref == "b:1"
    assert reg.set_fallback("a", 2, "b:1").fallback_id == "b:1"
    assert reg.set_fallback("a", 2, "a:1").fallback_id == "a:1"  # an older version of itself
    with pytest.raises(errors.InvalidArgument, match="fallback_id: 'a:1' refers to model 'a' version 1 itself"):
        reg.set_fallback("a", 1, "a:1")
    with pytest.raises(errors.InvalidArgument, match="must name a version"):
        reg.set_fallback("a", 1, "a")
    with pytest.raises(errors.ModelNotFound, match="fallback_id: model 'nope' not found"):
        reg.set_fallback("a", 1, "nope:1")
    with pytest.raises(VersionNotFound, match="fallback_id: model 'b' version 7 not found"):
        reg.set_fallback("a", 1, "b:7")
    with pytest.raises(errors.InvalidArgument, match="fallback_id: version in 'b:x'"):
        reg.set_fallback("a", 1, "b:x")
    push(reg, src, "b", b"b-bad", failure="boom")
    with pytest.raises(errors.FailedPrecondition, match="model 'b' version 2 failed to load"):
        reg.set_fallback("a", 1, "b:2")
    assert reg.set_fallback("a", 2, None).fallback_id is None


def test_add_version_with_a_missing_fallback_records_nothing(reg, src):
    push(reg, src, "m", b"1")
    with pytest.raises(errors.ModelNotFound, match="fallback_id: model 'ghost'"):
        push(reg, src, "m", b"2", fallback_id="ghost:1")
    assert versions(reg, "m") == [1]
    assert push(reg, src, "m", b"3", fallback_id="m:1").version == 2  # no version number lost


# ------------------------------------------------------------------------ retention and gc

def test_retention_keeps_the_last_ten_after_twelve_pushes(reg, src):
    recs = [push(reg, src, "plain", b"plain-%d" % i, live=True) for i in range(12)]
    assert versions(reg, "plain") == list(range(3, 13))
    assert [os.path.exists(r.model_uri) for r in recs] == [False] * 2 + [True] * 10
    # Rollback walks back through the live history and stops where retention deleted versions.
    for expected in range(11, 2, -1):
        assert reg.rollback("plain").version == expected
    with pytest.raises(errors.FailedPrecondition, match="no earlier live version"):
        reg.rollback("plain")


def test_retention_keeps_live_and_fallback_targets(reg, src):
    push(reg, src, "m", b"m-1")  # v1: live
    push(reg, src, "m", b"m-2")  # v2: a fallback target
    push(reg, src, "fb", b"fb-1", fallback_id="m:2")
    for i in range(3, 13):
        push(reg, src, "m", b"m-%d" % i)
    assert versions(reg, "m") == list(range(1, 13))  # 10 newest + live + fallback target
    push(reg, src, "m", b"m-13")
    assert versions(reg, "m") == [1, 2] + list(range(4, 14))
    reg.set_fallback("fb", 1, None)
    assert reg.gc().versions == ["m:2"]
    reg.promote("m", 13)
    report = reg.gc()
    assert report.versions == ["m:1"] and len(report.packages) == 1
    assert versions(reg, "m") == list(range(4, 14))


def test_gc_removes_orphans_and_temp_leftovers(reg, src, tmp_path):
    kept = push(reg, src, "m", b"kept")
    orphan_uri, _ = reg.put_package("m", make_files(src, b"never added"))
    old_uri, _ = reg.put_package("m", make_files(src, b"old orphan"))
    incomplete = tmp_path / "repo" / "artifacts" / "m" / ("f" * 64)  # an upload without a manifest
    incomplete.mkdir()
    (incomplete / "model.onnx").write_bytes(b"partial")
    temp = tmp_path / "repo" / "artifacts" / "m" / ".tmp-0123456789abcdef-dead"
    temp.mkdir()
    (temp / "model.onnx").write_bytes(b"partial")
    (tmp_path / "repo" / "artifacts" / "m" / "README").mkdir()  # not ours: never touched
    two_hours_ago = time.time() - 7200
    for p in Path(old_uri).rglob("*"):
        os.utime(p, (two_hours_ago, two_hours_ago))
    os.utime(old_uri, (two_hours_ago, two_hours_ago))
    assert reg.gc() == GcReport(packages=[old_uri])  # younger than an hour: a push may be running
    report = reg.gc(min_age_s=0)
    assert sorted(report.packages) == sorted([orphan_uri, str(incomplete)])
    assert report.temp == [str(temp)] and report.versions == []
    assert not os.path.exists(orphan_uri) and not incomplete.exists() and not temp.exists()
    assert (tmp_path / "repo" / "artifacts" / "m" / "README").exists()
    assert reg.fetch(kept) == kept.model_uri
    assert reg.gc(min_age_s=0) == GcReport()


def test_discard_package(reg, src):
    kept = push(reg, src, "m", b"kept")
    uri, sha = reg.put_package("m", make_files(src, b"validation failed"))
    assert reg.discard_package("m", sha) is True and not os.path.exists(uri)
    assert reg.discard_package("m", sha) is False
    assert reg.discard_package("m", kept.sha256) is False and os.path.exists(kept.model_uri)


# ------------------------------------------------------------------------------ tampering

def test_tampered_artifact_is_refused(reg, src):
    rec = push(reg, src, "m", b"weights")
    path = Path(reg.fetch(rec), "model.onnx")
    os.chmod(path, 0o644)
    path.write_bytes(b"evil weights")
    with pytest.raises(TamperedArtifact, match=r"model 'm' version 1: artifact model.onnx sha256 "
                                                r"[0-9a-f]{12}… does not match the registry's [0-9a-f]{12}…") as e:
        reg.fetch(rec)
    assert e.value.grpc_code == "FAILED_PRECONDITION"


def test_tampered_manifest_and_missing_file_are_refused(reg, src):
    rec = push(reg, src, "m", b"weights")
    model, manifest = Path(rec.model_uri, "model.onnx"), Path(rec.model_uri, "MANIFEST.json")
    # Swap the model and update its manifest entry consistently: the package hash still differs.
    doc = json.loads(manifest.read_text())
    for f in doc["files"]:
        if f["name"] == "model.onnx":
            f["sha256"] = hashlib.sha256(b"evil").hexdigest()
    os.chmod(model, 0o644)
    os.chmod(manifest, 0o644)
    model.write_bytes(b"evil")
    manifest.write_text(json.dumps(doc))
    with pytest.raises(TamperedArtifact, match="MANIFEST.json hashes to .* does not match the registry's"):
        reg.fetch(rec)
    manifest.write_text("{not json")
    with pytest.raises(TamperedArtifact, match="MANIFEST.json is not a valid manifest"):
        reg.fetch(rec)
    other = push(reg, src, "m", b"other")
    os.remove(Path(other.model_uri, "golden", "inputs.npz"))
    with pytest.raises(ArtifactMissing, match="model 'm' version 2: artifact golden/inputs.npz is missing"):
        reg.fetch(other)


# ------------------------------------------------------------------------------ bad input

BAD_NAMES = ["../x", "a/b", "", "..", "a..b", ".hidden", "-x", "a\\b", "a b", "x" * 129, "/abs", None, 3]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_model_names_are_refused_naming_the_field(reg, src, bad):
    with pytest.raises(errors.InvalidArgument, match=r"^name: invalid model name"):
        reg.put_package(bad, make_files(src, b"x"))
    with pytest.raises(errors.InvalidArgument, match=r"^name: invalid model name"):
        reg.get(bad)
    with pytest.raises(errors.InvalidArgument, match=r"^name: invalid model name"):
        reg.add_version(bad, "0" * 64, "/x", runtime_env=ENV)


@pytest.mark.parametrize("bad", ["../x", "a/b:1", "", ":1", "m:0", "m:-1", "m:1:2", 3])
def test_bad_fallback_refs_are_refused_naming_the_field(reg, src, bad):
    push(reg, src, "m", b"x")
    with pytest.raises(errors.InvalidArgument, match=r"^fallback_id: "):
        reg.set_fallback("m", 1, bad)


@pytest.mark.parametrize("bad", ["../model.onnx", "/etc/passwd", "a//b", "./x", ".env", "a/../b",
                                 "MANIFEST.json", "", "a\\b"])
def test_bad_package_file_names_are_refused(reg, src, bad):
    files = make_files(src, b"x")
    with pytest.raises(errors.InvalidArgument, match=r"^files: invalid relative file name"):
        reg.put_package("m", {bad: files["model.onnx"]})


def test_bad_package_contents_are_refused(reg, src, tmp_path):
    with pytest.raises(errors.InvalidArgument, match="files: a package needs at least one file"):
        reg.put_package("m", {})
    with pytest.raises(errors.InvalidArgument, match=r"files\['model.onnx'\]: cannot read"):
        reg.put_package("m", {"model.onnx": str(tmp_path / "missing.onnx")})
    files = make_files(src, b"x")
    with pytest.raises(errors.InvalidArgument, match="'a' is both a file and a directory"):
        reg.put_package("m", {"a": files["model.onnx"], "a/b": files["config.json"]})
    assert not any(Path(tmp_path, "repo", "artifacts").rglob("*.onnx"))


@pytest.mark.parametrize("bad", [0, -1, True, "1", 1.5, None])
def test_bad_versions_are_refused(reg, src, bad):
    push(reg, src, "m", b"x")
    with pytest.raises(errors.InvalidArgument, match=r"^version: version must be a positive integer"):
        reg.promote("m", bad)
    if bad is not None:
        with pytest.raises(errors.InvalidArgument, match=r"^version: "):
            reg.get("m", bad)


def test_unknown_models_and_versions_are_not_found(reg, src):
    push(reg, src, "m", b"x")
    for call in (lambda: reg.get("nope"), lambda: reg.list("nope"), lambda: reg.rollback("nope"),
                 lambda: reg.promote("nope", 1), lambda: reg.resolve("nope:2")):
        with pytest.raises(errors.ModelNotFound, match="model 'nope' not found in repository") as e:
            call()
        assert e.value.grpc_code == "NOT_FOUND" and not isinstance(e.value, VersionNotFound)
    for call in (lambda: reg.get("m", 9), lambda: reg.set_state("m", 9, "canary"),
                 lambda: reg.record_load("m", 9, model_load_time_s=1.0)):
        with pytest.raises(VersionNotFound, match="model 'm' version 9 not found"):
            call()


def test_open_refuses_bad_repositories(tmp_path):
    with pytest.raises(errors.InvalidArgument, match="repository: expected a directory or URL"):
        Registry.open("")
    (tmp_path / "file").write_text("x")
    with pytest.raises(errors.InvalidArgument, match="is not a directory"):
        Registry.open(str(tmp_path / "file"))
    with pytest.raises(errors.InvalidArgument, match="unknown URL scheme 'nosuch'"):
        Registry.open("nosuch://bucket/x")
    with pytest.raises(errors.InvalidArgument, match="keep_versions"):
        Registry.open(str(tmp_path / "r"), keep_versions=0)


def test_file_url_is_a_local_repository_with_wal_metadata(tmp_path):
    with Registry.open(f"file://{tmp_path}/repo") as reg:
        assert not reg.is_remote and reg.metadata_path == str(tmp_path / "repo" / "registry.db")
        assert reg.artifacts_root == str(tmp_path / "repo" / "artifacts")
    db = sqlite3.connect(tmp_path / "repo" / "registry.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"meta", "models", "versions", "live_history"} <= tables
    db.close()


def test_a_busy_writer_gives_unavailable_and_readers_go_on(tmp_path, monkeypatch, src):
    monkeypatch.setattr(_metadata, "BUSY_TIMEOUT_S", 0.2)
    reg = Registry.open(str(tmp_path / "repo"))
    push(reg, src, "m", b"1")
    holder = sqlite3.connect(reg.metadata_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        assert reg.get("m").version == 1  # WAL: readers never wait for the writer
        with pytest.raises(errors.Unavailable, match="registry metadata .*locked"):
            reg.promote("m", 1)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert reg.promote("m", 1).is_live
    reg.close()


# ----------------------------------------------------------------- remote (fsspec memory)

def test_memory_url_is_a_remote_repository(tmp_path, monkeypatch, src):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("INFERLINE_REGISTRY_DB", raising=False)
    url = f"memory://inferline-test-{uuid.uuid4().hex}/repo"
    with Registry.open(url + "/") as reg:
        assert reg.is_remote and reg.repository == url
        assert reg.metadata_path == default_metadata_path(url)
        assert reg.metadata_path.startswith(str(tmp_path / "home" / ".inferline" / "registries"))
        rec = push(reg, src, "m", b"remote weights")
        assert rec.model_uri == f"{url}/m/{rec.sha256}"
        dest = reg.fetch(rec, str(tmp_path / "dl"))
        assert Path(dest, "model.onnx").read_bytes() == b"remote weights"
        assert Path(dest, "golden", "inputs.npz").read_bytes() == b"golden"
        fs = reg._artifacts.fs
        fs.pipe_file(reg._artifacts.path("m", rec.sha256, "model.onnx"), b"evil")
        with pytest.raises(TamperedArtifact, match="artifact model.onnx sha256"):
            reg.fetch(rec, str(tmp_path / "dl2"))
        assert not Path(tmp_path, "dl2", "model.onnx").exists()
        assert reg.gc(min_age_s=0) == GcReport()
    monkeypatch.setenv("INFERLINE_REGISTRY_DB", str(tmp_path / "env.db"))
    with Registry.open(url) as reg:
        assert reg.metadata_path == str(tmp_path / "env.db") and reg.list() == []
    with Registry.open(url, str(tmp_path / "explicit.db")) as reg:
        assert reg.metadata_path == str(tmp_path / "explicit.db")
    with pytest.raises(errors.FailedPrecondition, match="belongs to repository"):
        Registry.open(url + "-other", str(tmp_path / "explicit.db"))


# -------------------------------------------------------------------- several processes

def test_concurrent_pushes_from_processes_get_distinct_versions(tmp_path, metadata):
    repo = str(tmp_path / "repo")  # created by the workers, all at once
    ctx = mp.get_context("spawn")
    jobs = [("m", [f"p{i}-{j}" for j in range(3)]) for i in range(4)] + [("same", ["identical"])] * 2
    barrier, out = ctx.Barrier(len(jobs)), ctx.Queue()
    procs = [ctx.Process(target=push_worker, args=(repo, metadata, name, contents, barrier, out))
             for name, contents in jobs]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert not [r for r in results if isinstance(r, str)]
    assert sorted(v for r in results if len(r) == 3 for v in r) == list(range(1, 13))
    assert [r for r in results if len(r) == 1] == [[1], [1]]  # identical content: one version
    with Registry.open(repo, metadata, keep_versions=100) as reg:
        assert versions(reg, "m") == list(range(1, 13)) and versions(reg, "same") == [1]


def _reader_worker(repo, metadata, ready, stop, out):
    loops, seen, problems, sizes = 0, set(), [], [0]
    try:
        reg = Registry.open(repo, metadata)
        ready.set()
        while not stop.is_set() or loops == 0:
            loops += 1
            try:
                recs = reg.list()
                if len(recs) < sizes[-1]:
                    problems.append(f"versions went from {sizes[-1]} to {len(recs)}")
                if len(recs) != sizes[-1]:
                    sizes.append(len(recs))
                for rec in recs:
                    if rec.ref not in seen:  # every version that is visible is whole
                        assert Path(reg.fetch(rec), "model.onnx").read_bytes().startswith(b"w-")
                        seen.add(rec.ref)
                if recs:
                    live = reg.get("m")
                    assert live.is_live and live.state == "live"
            except BaseException as e:
                problems.append(f"{type(e).__name__}: {e}")
    except BaseException as e:
        problems.append(f"{type(e).__name__}: {e}")
    ready.set()
    out.put((loops, sorted(seen), problems, sizes))


def test_a_reader_process_never_sees_errors_or_partial_versions(tmp_path, src, metadata):
    repo = str(tmp_path / "repo")
    reg = Registry.open(repo, metadata, keep_versions=100)
    ctx = mp.get_context("spawn")
    ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    reader = ctx.Process(target=_reader_worker, args=(repo, metadata, ready, stop, out))
    reader.start()
    assert ready.wait(60)
    for i in range(12):
        push(reg, src, "m", b"w-%d" % i + os.urandom(1 << 16), live=(i % 3 == 0))
        if i % 4 == 3:
            reg.rollback("m")
        time.sleep(0.01)  # let the reader poll between pushes
    stop.set()
    loops, seen, problems, sizes = out.get(timeout=60)
    reader.join(30)
    assert problems == []
    assert set(seen) <= {f"m:{v}" for v in range(1, 13)}
    assert len(sizes) > 3, f"the reader saw too few intermediate states: {sizes} in {loops} polls"
    reg.close()


# ---------------------------------------------------------------------- S3 (moto server)

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def moto_endpoint():
    """A real moto S3 server in a subprocess on 127.0.0.1 (skipped only if moto is missing)."""
    pytest.importorskip("moto")
    pytest.importorskip("s3fs")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto server did not start (exit code {proc.poll()})")
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def s3_env(monkeypatch, tmp_path):
    """Credentials and settings that keep boto away from the machine's own AWS configuration."""
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "HOME": str(tmp_path / "home"),
                       "AWS_CONFIG_FILE": str(tmp_path / "none"),
                       "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                "INFERLINE_REGISTRY_DB", "INFERLINE_S3_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def bucket(moto_endpoint, s3_env):
    import boto3

    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    name = f"models-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=name)
    yield client, name
    client.close()


def test_s3_push_fetch_and_tamper_detection(bucket, moto_endpoint, monkeypatch, tmp_path, src):
    client, name = bucket
    monkeypatch.setenv("INFERLINE_S3_ENDPOINT_URL", moto_endpoint)
    url = f"s3://{name}/registry"
    with Registry.open(url) as reg:
        assert reg.is_remote and reg.metadata_path == default_metadata_path(url)
        v1 = push(reg, src, "m", b"s3 weights")
        assert v1.model_uri == f"{url}/m/{v1.sha256}" and v1.is_live
        keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=name)["Contents"])
        prefix = f"registry/m/{v1.sha256}/"
        assert keys == [prefix + k for k in ("MANIFEST.json", "config.json", "golden/inputs.npz", "model.onnx")]
        assert push(reg, src, "m", b"s3 weights") == v1  # identical push: same version
        v2 = push(reg, src, "m", b"s3 weights 2")
        assert (v2.version, v2.state) == (2, "staged")
        dest = reg.fetch(v2, str(tmp_path / "dl"))
        assert Path(dest, "model.onnx").read_bytes() == b"s3 weights 2"
        default_dest = reg.fetch(v1)
        assert default_dest.startswith(str(tmp_path / "home" / ".inferline"))
        client.put_object(Bucket=name, Key=prefix + "model.onnx", Body=b"evil")
        with pytest.raises(TamperedArtifact, match=r"model 'm' version 1: artifact model.onnx sha256 "
                                                    r"[0-9a-f]{12}… does not match the registry's"):
            reg.fetch(v1, str(tmp_path / "dl-tampered"))
        client.delete_object(Bucket=name, Key=prefix + "MANIFEST.json")
        with pytest.raises(ArtifactMissing, match="model 'm' version 1: package s3://"):
            reg.fetch(v1, str(tmp_path / "dl-missing"))


def test_s3_gc_discard_and_storage_options(bucket, moto_endpoint, tmp_path, src):
    client, name = bucket
    options = {"endpoint_url": moto_endpoint, "key": "testing", "secret": "testing",
               "config_kwargs": {"connect_timeout": 2}}
    url = f"s3://{name}/r"
    with Registry.open(url, str(tmp_path / "meta.db"), storage_options=options) as reg:
        kept = push(reg, src, "m", b"kept")
        orphan_uri, _ = reg.put_package("m", make_files(src, b"orphan"))
        _, discard_sha = reg.put_package("m", make_files(src, b"discard"))
        assert reg.discard_package("m", discard_sha) is True
        client.put_object(Bucket=name, Key=f"r/m/{'e' * 64}/model.onnx", Body=b"upload cut short")
        report = reg.gc(min_age_s=0)
        assert sorted(report.packages) == sorted([orphan_uri, f"{url}/m/{'e' * 64}"])
        keys = {o["Key"] for o in client.list_objects_v2(Bucket=name)["Contents"]}
        assert {k.split("/")[2] for k in keys} == {kept.sha256}
        assert Path(reg.fetch(kept, str(tmp_path / "dl")), "model.onnx").read_bytes() == b"kept"
        for i in range(11):
            push(reg, src, "m", b"m-%d" % i, live=True)
        assert versions(reg, "m") == list(range(3, 13))
        assert len({o["Key"].split("/")[2] for o in client.list_objects_v2(Bucket=name)["Contents"]}) == 10


def test_s3_missing_bucket_is_unavailable(moto_endpoint, s3_env, monkeypatch, tmp_path):
    monkeypatch.setenv("INFERLINE_S3_ENDPOINT_URL", moto_endpoint)
    with pytest.raises(errors.Unavailable, match=r"repository 's3://no-such-bucket/x': bucket "
                                                  r"'no-such-bucket' does not exist"):
        Registry.open("s3://no-such-bucket/x", str(tmp_path / "m.db"))
    with pytest.raises(errors.InvalidArgument, match="expected s3://BUCKET"):
        Registry.open("s3://", str(tmp_path / "m.db"))


def test_s3_unreachable_endpoint_is_unavailable_quickly(s3_env, tmp_path):
    pytest.importorskip("s3fs")
    endpoint = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    start = time.monotonic()
    with pytest.raises(errors.Unavailable, match=r"repository 's3://models/x': opening the repository "
                                                  r"failed: .*[Cc]onnect"):
        Registry.open("s3://models/x", str(tmp_path / "m.db"),
                      storage_options={"endpoint_url": endpoint,
                                       "config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}}})
    assert time.monotonic() - start < 15
    assert not (tmp_path / "m.db").exists()


def test_one_fallback_rule_for_push_and_set_fallback(reg, src):
    """check_fallback (what a push asks before loading) and set_fallback apply the same rule: any
    existing, non-failed version of any model, never the version itself; within the same model
    the fallback must pin a version."""
    push(reg, src, "a", b"a1")
    assert reg.check_fallback("a", "a:1") == "a:1"  # for the version being pushed: an older one
    assert push(reg, src, "a", b"a2", fallback_id="a:1").fallback_id == "a:1"
    for check in (lambda ref: reg.check_fallback("a", ref), lambda ref: reg.set_fallback("a", 2, ref)):
        with pytest.raises(errors.InvalidArgument, match="refers to the model itself.*must name a version"):
            check("a")
        with pytest.raises(VersionNotFound, match="fallback 'a:9' does not exist"):
            check("a:9")
        with pytest.raises(errors.ModelNotFound, match="fallback_id: model 'zz' not found.*'zz' does not exist"):
            check("zz")
    with pytest.raises(errors.InvalidArgument, match="refers to model 'a' version 2 itself"):
        reg.set_fallback("a", 2, "a:2")
