"""Immutable, content-addressed model packages in a directory or under an fsspec URL.

A package is ``<root>/<name>/<sha256>/<relative name>...`` plus ``MANIFEST.json``. Its sha256 is
the sha256 of the text that ``sha256sum`` prints for its files sorted by relative name
(``"<file sha256>  <relative name>\\n"`` each), so shell tools can check it. A package is
*committed* once its manifest exists: in a local directory it is written under
``<name>/.tmp-*`` and renamed into place (atomic); under a URL its files are uploaded first and
the manifest last (one atomic PUT). Readers ignore packages without a manifest, committed
packages are never rewritten, and ``materialize`` re-hashes every file before handing it out.
``Registry`` (store.py) is the only user; it decides what may be deleted.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

from ..errors import FailedPrecondition, InferlineError, InvalidArgument, Unavailable
from ._records import NAME_RE

MANIFEST = "MANIFEST.json"
TMP_PREFIX = ".tmp-"
"""Names of a local push's temp directories, ``<root>/<name>/.tmp-<sha256[:16]>-<random>``."""
BUCKET_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "oss"})
"""URL schemes whose first path component is a bucket that must already exist."""

_PART_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,254}")
_CHUNK = 1 << 20


class TamperedArtifact(FailedPrecondition):
    """A stored artifact's sha256 does not match the manifest or the registry."""


class ArtifactMissing(FailedPrecondition):
    """A version's package (or one of its files) is missing from the repository."""


def cause(e: BaseException) -> str:
    """``"Type: first line of the message"``, for error messages that wrap a library's error."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def short(sha: str) -> str:
    return f"{sha[:12]}…"


def hash_stream(src, dst=None) -> Tuple[str, int]:
    """sha256 and size of a binary stream, copying it to ``dst`` on the way if given."""
    h, size = hashlib.sha256(), 0
    while True:
        chunk = src.read(_CHUNK)
        if not chunk:
            return h.hexdigest(), size
        h.update(chunk)
        size += len(chunk)
        if dst is not None:
            dst.write(chunk)


def hash_file(path: str) -> Tuple[str, int]:
    with open(path, "rb") as f:
        return hash_stream(f)


def package_sha256(files: Mapping[str, str]) -> str:
    """The package hash for {relative name: file sha256}: sha256 of their sorted sha256sum lines."""
    text = "".join(f"{files[rel]}  {rel}\n" for rel in sorted(files))
    return hashlib.sha256(text.encode()).hexdigest()


def check_rel(rel: Any) -> str:
    """A package-relative file name: '/'-separated parts, none starting with '.', no '..'."""
    parts = rel.split("/") if isinstance(rel, str) else [None]
    if not all(isinstance(p, str) and _PART_RE.fullmatch(p) and ".." not in p for p in parts) \
            or rel == MANIFEST:
        raise InvalidArgument(
            f"files: invalid relative file name {rel!r}: use '/'-separated parts of A-Z a-z 0-9 . _ -, "
            f"not starting with '.', without '..'; {MANIFEST!r} is reserved")
    return rel


def build_manifest(name: str, listing: List[Dict[str, Any]]) -> Tuple[str, bytes]:
    """(package sha256, manifest bytes) for [{"name", "sha256", "size"}] sorted by name."""
    sha = package_sha256({f["name"]: f["sha256"] for f in listing})
    doc = {"format": 1, "name": name, "sha256": sha, "files": listing}
    return sha, json.dumps(doc, indent=1, sort_keys=True).encode()


@dataclass(frozen=True)
class PackageDigest:
    """A package's files, each hashed once: its sha256, what to copy and the manifest to commit.

    ``digest_package`` makes one; a push looks the sha256 up (an identical push skips the work)
    and hands the same digest to ``Registry.put_package``, so no file is hashed twice before the
    copy (which hashes what it copies, to catch a file changing meanwhile).
    """

    name: str
    """Model name the manifest was built for."""
    sha256: str
    """The package hash (see ``package_sha256``)."""
    entries: Tuple[Tuple[str, str, str], ...]
    """(relative name, local path, file sha256), sorted by relative name."""
    manifest: bytes
    """The ``MANIFEST.json`` bytes to commit."""


def digest_package(name: str, files: Mapping[str, str]) -> PackageDigest:
    """Checks the relative names of ``files`` (relative name -> local path) and hashes each file
    once; InvalidArgument naming the file when a name is bad or a file cannot be read."""
    if not isinstance(files, Mapping) or not files:
        raise InvalidArgument("files: a package needs at least one file (relative name -> local path)")
    rels = sorted(check_rel(rel) for rel in files)
    dirs = {"/".join(rel.split("/")[:i]) for rel in rels for i in range(1, rel.count("/") + 1)}
    if dirs & set(rels):
        raise InvalidArgument(f"files: {sorted(dirs & set(rels))[0]!r} is both a file and a directory")
    entries, listing = [], []
    for rel in rels:
        src = os.fspath(files[rel])
        try:
            sha, size = hash_file(src)
        except OSError as e:
            raise InvalidArgument(f"files[{rel!r}]: cannot read {src!r}: {cause(e)}") from None
        entries.append((rel, src, sha))
        listing.append({"name": rel, "sha256": sha, "size": size})
    sha, manifest = build_manifest(name, listing)
    return PackageDigest(name, sha, tuple(entries), manifest)


def parse_manifest(raw: bytes, sha256: str, where: str) -> List[Tuple[str, str]]:
    """[(relative name, sha256)] of a manifest, after checking it hashes to the package sha256."""
    try:
        doc = json.loads(raw)
        files = [(str(f["name"]), str(f["sha256"])) for f in doc["files"]]
        for rel, _ in files:
            check_rel(rel)
    except (ValueError, KeyError, TypeError, InvalidArgument) as e:
        raise TamperedArtifact(f"{where}: {MANIFEST} is not a valid manifest ({cause(e)})") from None
    got = package_sha256(dict(files))
    if got != sha256 or doc.get("sha256") != sha256 or len(dict(files)) != len(files):
        raise TamperedArtifact(f"{where}: {MANIFEST} hashes to {short(got)}, which does not match "
                               f"the registry's {short(sha256)}")
    return files


def _check_artifact(where: str, rel: str, got: str, want: str) -> None:
    if got != want:
        raise TamperedArtifact(f"{where}: artifact {rel} sha256 {short(got)} does not match the "
                               f"registry's {short(want)}; the stored package was modified, refusing it")


def _check_copied(rel: str, src: str, want: str, got: str) -> None:
    if got != want:
        raise InvalidArgument(f"files[{rel!r}]: {src} changed while it was being stored "
                              f"(sha256 {short(want)}, then {short(got)})")


def _mtime(info: Mapping) -> Optional[float]:
    for key in ("mtime", "LastModified", "last_modified", "created"):
        v = info.get(key)
        if isinstance(v, datetime.datetime):
            return v.timestamp()
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return None


def storage_options(protocol: str, user: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """fsspec options: inferline's defaults for s3 (5 s connect timeout, 2 attempts,
    ``$INFERLINE_S3_ENDPOINT_URL``, no listing cache), then the caller's (``config_kwargs`` merged)."""
    options: Dict[str, Any] = {}
    if protocol in ("s3", "s3a"):
        options = {"use_listings_cache": False,
                   "config_kwargs": {"connect_timeout": 5, "read_timeout": 60,
                                     "retries": {"max_attempts": 2, "mode": "standard"}}}
        endpoint = os.environ.get("INFERLINE_S3_ENDPOINT_URL")
        if endpoint:
            options["endpoint_url"] = endpoint
    user = dict(user or {})
    if isinstance(user.get("config_kwargs"), Mapping) and "config_kwargs" in options:
        user["config_kwargs"] = {**options["config_kwargs"], **user["config_kwargs"]}
    options.update(user)
    return options


class ArtifactStore:
    """Packages under one root, ``<root>/<name>/<sha256>/...``, through an fsspec filesystem.

    Every storage failure (network, permissions, a bucket gone) surfaces as Unavailable naming
    the repository; a missing or modified package as ArtifactMissing / TamperedArtifact.
    """

    def __init__(self, fs, root: str, url: str, local: bool):
        self.fs, self.root, self.url, self.local = fs, root.rstrip("/"), url, local

    @classmethod
    def local_dir(cls, path: str) -> "ArtifactStore":
        import fsspec

        return cls(fsspec.filesystem("file"), path, path, True)

    @classmethod
    def remote(cls, url: str, protocol: str, options: Optional[Mapping[str, Any]]) -> "ArtifactStore":
        """The store at an fsspec URL, checked to be reachable (its bucket must exist)."""
        import fsspec

        try:
            fs_cls = fsspec.get_filesystem_class(protocol)
        except ImportError as e:
            extra = " (pip install 'inferline[s3]')" if protocol in ("s3", "s3a") else ""
            raise FailedPrecondition(f"repository {url!r}: {protocol}:// needs a package that is not "
                                     f"installed{extra}: {cause(e)}") from None
        except ValueError:
            raise InvalidArgument(f"repository {url!r}: unknown URL scheme {protocol!r}") from None
        try:
            fs = fs_cls(skip_instance_cache=True, **storage_options(protocol, options))
        except (TypeError, ValueError, KeyError) as e:
            raise InvalidArgument(f"storage_options for {url!r}: {cause(e)}") from None
        store = cls(fs, fs_cls._strip_protocol(url), url, False)
        with store.io("opening the repository"):
            if protocol in BUCKET_PROTOCOLS:
                bucket = store.root.split("/", 1)[0]
                try:
                    fs.info(bucket)
                except FileNotFoundError:
                    raise Unavailable(f"repository {url!r}: bucket {bucket!r} does not exist "
                                      "(or these credentials cannot see it)") from None
            else:
                fs.makedirs(store.root, exist_ok=True)
        return store

    @contextlib.contextmanager
    def io(self, what: str) -> Iterator[None]:
        """Turns any storage failure into Unavailable (inferline errors pass through)."""
        try:
            yield
        except InferlineError:
            raise
        except Exception as e:
            raise Unavailable(f"repository {self.url!r}: {what} failed: {cause(e)}") from None

    def path(self, name: str, sha: str, rel: Optional[str] = None) -> str:
        base = f"{self.root}/{name}/{sha}"
        return base if rel is None else f"{base}/{rel}"

    def uri(self, name: str, sha: str) -> str:
        """A package's model_uri: its local directory, or ``URL/<name>/<sha256>``."""
        return self.path(name, sha) if self.local else f"{self.url}/{name}/{sha}"

    def read_manifest(self, name: str, sha: str) -> Optional[bytes]:
        """The package's manifest, or None if the package is absent or not committed."""
        with self.io(f"reading {name}/{sha}/{MANIFEST}"):
            try:
                return self.fs.cat_file(self.path(name, sha, MANIFEST))
            except FileNotFoundError:
                return None

    def verified_files(self, name: str, sha: str, where: str) -> List[Tuple[str, str]]:
        """[(relative name, sha256)] from the committed manifest, checked against ``sha``."""
        raw = self.read_manifest(name, sha)
        if raw is None:
            raise ArtifactMissing(f"{where}: package {self.uri(name, sha)} is missing from the repository")
        return parse_manifest(raw, sha, f"{where}: package {self.uri(name, sha)}")

    def put(self, name: str, sha: str, entries: List[Tuple[str, str, str]], manifest: bytes) -> None:
        """Stores and commits a package; ``entries`` are (relative name, local path, sha256)."""
        with self.io(f"writing package {name}/{sha}"):
            if self.local:
                self._put_local(name, sha, entries, manifest)
            else:
                for rel, src, want in entries:
                    with open(src, "rb") as f, self.fs.open(self.path(name, sha, rel), "wb") as out:
                        got = hash_stream(f, out)[0]
                    _check_copied(rel, src, want, got)
                self.fs.pipe_file(self.path(name, sha, MANIFEST), manifest)  # the commit point

    def _put_local(self, name: str, sha: str, entries, manifest: bytes) -> None:
        final = self.path(name, sha)
        tmp = f"{self.root}/{name}/{TMP_PREFIX}{sha[:16]}-{uuid.uuid4().hex}"
        try:
            for rel, src, want in entries:
                dst = os.path.join(tmp, *rel.split("/"))
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                with open(src, "rb") as f, open(dst, "xb") as out:
                    _check_copied(rel, src, want, hash_stream(f, out)[0])
                os.chmod(dst, 0o444)
            with open(os.path.join(tmp, MANIFEST), "xb") as out:
                out.write(manifest)
            os.chmod(os.path.join(tmp, MANIFEST), 0o444)
            try:
                os.rename(tmp, final)  # atomic: the package appears whole or not at all
            except OSError:
                if not os.path.exists(os.path.join(final, MANIFEST)):
                    raise
                # A concurrent push of the same content committed first: use that one.
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def materialize(self, name: str, sha: str, where: str, dest: Optional[str]) -> str:
        """A local directory with the package's verified files: the package itself for a local
        store, else ``dest`` after downloading (files already there that verify are kept)."""
        files = self.verified_files(name, sha, where)
        if self.local:
            for rel, want in files:
                path = os.path.join(self.path(name, sha), *rel.split("/"))
                try:
                    got = hash_file(path)[0]
                except FileNotFoundError:
                    raise ArtifactMissing(f"{where}: artifact {rel} is missing from {self.uri(name, sha)}") from None
                except OSError as e:
                    raise Unavailable(f"{where}: cannot read artifact {path}: {cause(e)}") from None
                _check_artifact(where, rel, got, want)
            return self.path(name, sha)
        for rel, want in files:
            self._download(name, sha, rel, want, os.path.join(dest, *rel.split("/")), where)
        return dest

    def _download(self, name: str, sha: str, rel: str, want: str, target: str, where: str) -> None:
        if os.path.isfile(target) and hash_file(target)[0] == want:
            return
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = f"{target}{TMP_PREFIX}{uuid.uuid4().hex}"
        try:
            with self.io(f"downloading {name}/{sha}/{rel}"):
                try:
                    with self.fs.open(self.path(name, sha, rel), "rb") as src, open(tmp, "wb") as out:
                        got = hash_stream(src, out)[0]
                except FileNotFoundError:
                    raise ArtifactMissing(f"{where}: artifact {rel} is missing from {self.uri(name, sha)}") from None
            _check_artifact(where, rel, got, want)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def scan(self) -> List[Tuple[str, str, str]]:
        """(model name, entry name, path) of every directory under ``<root>/<name>/``."""
        out = []
        with self.io("listing the repository"):
            self.fs.invalidate_cache()
            try:
                tops = self.fs.ls(self.root, detail=True)
            except FileNotFoundError:
                return out
            for top in tops:
                name = top["name"].rstrip("/").rsplit("/", 1)[-1]
                if top["type"] != "directory" or not NAME_RE.fullmatch(name) or ".." in name:
                    continue
                for entry in self.fs.ls(top["name"], detail=True):
                    if entry["type"] == "directory":
                        path = entry["name"].rstrip("/")
                        out.append((name, path.rsplit("/", 1)[-1], path))
        return out

    def age_s(self, path: str) -> float:
        """Seconds since anything under ``path`` was last written (0 when unknown)."""
        with self.io(f"listing {path}"):
            times = [_mtime(info) for info in self.fs.find(path, detail=True).values()]
            if self.local:
                times.append(os.path.getmtime(path))
        known = [t for t in times if t is not None]
        return max(0.0, time.time() - max(known)) if known else 0.0

    def remove(self, path: str) -> bool:
        """Deletes a package or temp directory; False if it was not there."""
        with self.io(f"deleting {path}"):
            self.fs.invalidate_cache()
            if not self.fs.exists(path):
                return False
            try:
                self.fs.rm(path, recursive=True)
            except FileNotFoundError:
                return False
            return True
